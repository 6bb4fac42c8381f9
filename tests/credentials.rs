//! Credentials end to end: a fake token-exchange endpoint issuing short-lived
//! keys, the test S3 server accepting only currently valid issued keys, and a
//! real mount reading through renewals, outages and token rotation.

mod common;

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::exchange::Exchange;
use common::*;

const API_TOKEN: &str = "cw-api-token-0123456789-do-not-log";
const FILE_MIB: usize = 24;

struct Setup {
    server: Server,
    exchange: Exchange,
    data: Vec<u8>,
    dir: TempDir,
    token_file: std::path::PathBuf,
}

fn setup(lifetime: Duration) -> Setup {
    let server = Server::start();
    let data = pattern(11, FILE_MIB << 20);
    server.put("stream/data.bin", data.clone());
    let exchange = Exchange::start(server.s3.clone(), API_TOKEN, lifetime);
    let dir = TempDir::new("creds");
    let token_file = dir.path().join("token");
    fs::write(&token_file, format!("{API_TOKEN}\n")).unwrap();
    fs::set_permissions(&token_file, fs::Permissions::from_mode(0o600)).unwrap();
    Setup {
        server,
        exchange,
        data,
        dir,
        token_file,
    }
}

/// A mount whose credentials come only from the exchange, with a cache much
/// smaller than the file so every pass reads from the store.
fn mount(s: &Setup, extra: &[&str]) -> Mount {
    Mount::spawn(|mp| {
        let mut cmd = s.server.mount_cmd(BUCKET, mp);
        cmd.env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .arg("--credentials-uri")
            .arg(s.exchange.uri())
            .arg("--token-file")
            .arg(&s.token_file)
            .args([
                "--cache-size",
                "4MiB",
                "--block-size",
                "1MiB",
                "--metadata-ttl",
                "0",
            ])
            .args(extra);
        cmd
    })
}

/// Read the whole file once; Err on any failure or wrong bytes.
fn read_pass(path: &Path, want: &[u8]) -> Result<(), String> {
    let mut f = fs::File::open(path).map_err(|e| format!("open: {e}"))?;
    let mut got = Vec::with_capacity(want.len());
    f.read_to_end(&mut got).map_err(|e| format!("read: {e}"))?;
    if got != want {
        return Err("wrong bytes".into());
    }
    Ok(())
}

#[test]
fn renews_ahead_of_expiry_while_streaming_for_a_minute() {
    let s = setup(Duration::from_secs(5));
    let m = mount(&s, &["--log-level", "trace"]);
    let file = m.path("stream/data.bin");
    let start = Instant::now();
    let (mut passes, mut failures) = (0, Vec::new());
    while start.elapsed() < Duration::from_secs(62) {
        match read_pass(&file, &s.data) {
            Ok(()) => passes += 1,
            Err(e) => failures.push(format!("{:?}: {e}", start.elapsed())),
        }
    }
    let ex = s.exchange.exchanges();
    eprintln!(
        "renewal timeline ({} exchanges, {passes} passes of {FILE_MIB} MiB):",
        ex.len()
    );
    for (i, e) in ex.iter().enumerate() {
        let gap = if i > 0 {
            format!(
                "{:>6.2}s after the previous",
                (e.at - ex[i - 1].at).as_secs_f64()
            )
        } else {
            String::new()
        };
        eprintln!(
            "  t={:>6.2}s  {}  {gap}",
            (e.at - ex[0].at).as_secs_f64(),
            e.access_key
        );
    }
    assert!(failures.is_empty(), "failed reads: {failures:?}");
    assert!(
        ex.len() >= 11,
        "at least 10 renewals in 60 s of 5 s keys, got {}",
        ex.len() - 1
    );
    for w in ex.windows(2) {
        assert!(
            w[1].at < w[0].expires,
            "renewed before the previous keys expired: {:?} vs {:?}",
            w[1].at,
            w[0].expires
        );
        let gap = w[1].at - w[0].at;
        // Expiration has whole seconds, so a gap may be up to 1 s shorter than 2/3 of 5 s minus jitter.
        assert!(
            gap >= Duration::from_millis(1500),
            "renewal came too early ({gap:?}): should be when a third is left"
        );
    }
    assert!(passes > 5, "the stream kept reading ({passes} passes)");

    // No secret in the trace-level log, nor in any process's arguments.
    let log = m.log_text();
    assert!(log.contains("renewed credentials"));
    let ps = String::from_utf8(
        Command::new("ps")
            .args(["-eo", "args"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    for secret in s
        .exchange
        .secrets()
        .iter()
        .map(String::as_str)
        .chain([API_TOKEN])
    {
        assert!(!log.contains(secret), "a secret leaked into the log");
        assert!(!ps.contains(secret), "a secret leaked into ps");
    }
}

#[test]
fn short_outage_of_the_exchange_costs_no_read() {
    let s = setup(Duration::from_secs(12));
    let m = mount(&s, &[]);
    let file = m.path("stream/data.bin");
    let start = Instant::now();
    let mut failures = Vec::new();
    let mut outage = false;
    while start.elapsed() < Duration::from_secs(16) {
        // Down from 5 s to 10 s: the renewal due at 7-8 s fails, and is
        // retried before the keys expire at 12 s.
        let t = start.elapsed();
        let down = t >= Duration::from_secs(5) && t < Duration::from_secs(10);
        if down != outage {
            s.exchange.set_down(down);
            outage = down;
        }
        if let Err(e) = read_pass(&file, &s.data) {
            failures.push(format!("{:?}: {e}", start.elapsed()));
        }
    }
    s.exchange.set_down(false);
    assert!(failures.is_empty(), "failed reads: {failures:?}");
    assert!(
        s.exchange.dropped() >= 1,
        "the outage overlapped a renewal attempt"
    );
    assert!(
        s.exchange.exchanges().len() >= 2,
        "renewed after the outage"
    );
    assert!(
        m.log_text().contains("renewing credentials failed"),
        "each failure is logged"
    );
}

#[test]
fn long_outage_fails_reads_fast_then_recovers_without_remount() {
    let s = setup(Duration::from_secs(4));
    let m = mount(&s, &[]);
    let file = m.path("stream/data.bin");
    read_pass(&file, &s.data).unwrap();
    s.exchange.set_down(true);
    let down_at = Instant::now();
    // The keys expire within 4 s; reads must then fail, quickly and clearly.
    let failed_at = loop {
        let t0 = Instant::now();
        let r = read_pass(&file, &s.data);
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "a read hung for {:?}",
            t0.elapsed()
        );
        if let Err(e) = r {
            assert!(
                e.contains("Permission denied") || e.contains("Input/output error"),
                "{e}"
            );
            break Instant::now();
        }
        assert!(
            down_at.elapsed() < Duration::from_secs(30),
            "reads kept succeeding with expired keys"
        );
    };
    assert!(failed_at - down_at < Duration::from_secs(30));
    assert!(m.log_text().contains("expired"), "the log says why");
    std::thread::sleep(Duration::from_secs(2));
    s.exchange.set_down(false);
    let back = Instant::now();
    loop {
        if read_pass(&file, &s.data).is_ok() {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(45),
            "the mount did not recover after the endpoint came back"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn rotated_token_file_is_used_at_the_next_renewal() {
    let s = setup(Duration::from_secs(4));
    let m = mount(&s, &[]);
    let file = m.path("stream/data.bin");
    read_pass(&file, &s.data).unwrap();
    let new_token = "cw-api-token-rotated-42";
    // Write the new token the way a secret manager would (rename into place).
    let tmp = s.dir.path().join("token.new");
    fs::write(&tmp, format!("Bearer {new_token}\n")).unwrap();
    fs::rename(&tmp, &s.token_file).unwrap();
    s.exchange.rotate_to(new_token);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        read_pass(&file, &s.data).unwrap();
    }
    let ex = s.exchange.exchanges();
    assert!(
        ex.iter().any(|e| e.token == new_token),
        "the new token was used"
    );
    assert_eq!(
        s.exchange.rejected(),
        0,
        "the revoked token was never sent again"
    );
    assert!(ex.iter().rev().take(1).all(|e| e.token == new_token));
}

#[test]
fn bad_token_unreachable_or_cleartext_uri_fail_the_mount() {
    let s = setup(Duration::from_secs(60));
    let mp = s.dir.path().join("m");
    fs::create_dir(&mp).unwrap();
    let run = |uri: &str, token_file: &Path| {
        let mut cmd = s.server.mount_cmd(BUCKET, &mp);
        cmd.env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env("AWS_CONTAINER_CREDENTIALS_FULL_URI", uri)
            .env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", token_file);
        let out = run_bounded(cmd, Duration::from_secs(60));
        assert!(!out.status.success());
        assert!(!is_mounted(&mp));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let bad = s.dir.path().join("bad-token");
    fs::write(&bad, "not-the-token\n").unwrap();
    let e = run(&s.exchange.uri(), &bad);
    assert!(
        e.contains("rejected the token") && e.contains("token file"),
        "{e}"
    );
    assert!(!e.contains("not-the-token"), "{e}");

    let e = run("http://127.0.0.1:1/creds", &s.token_file);
    assert!(
        e.contains("cannot reach the credentials endpoint")
            && e.contains("AWS_CONTAINER_CREDENTIALS_FULL_URI"),
        "{e}"
    );

    let e = run("http://169.254.170.2/creds", &s.token_file);
    assert!(e.contains("loopback"), "{e}");

    // Environment-only token (no file), as CoreWeave's docs set it.
    let mut cmd = s.server.mount_cmd(BUCKET, &mp);
    cmd.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("AWS_CONTAINER_CREDENTIALS_FULL_URI", s.exchange.uri())
        .env(
            "AWS_CONTAINER_AUTHORIZATION_TOKEN",
            format!("Bearer {API_TOKEN}"),
        )
        .arg("--log-file")
        .arg(s.dir.path().join("env.log"));
    let out = run_bounded(cmd, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ok = fs::read(mp.join("stream/data.bin")).map(|d| d == s.data);
    force_unmount(&mp);
    assert!(ok.unwrap(), "bytes through env-token credentials");
    let log = fs::read_to_string(s.dir.path().join("env.log")).unwrap();
    assert!(
        log.contains("token exchange at"),
        "the log names the source"
    );
    assert!(!log.contains(API_TOKEN));
}

#[test]
fn world_readable_token_file_is_warned_about() {
    let s = setup(Duration::from_secs(60));
    fs::set_permissions(&s.token_file, fs::Permissions::from_mode(0o644)).unwrap();
    let m = mount(&s, &[]);
    read_pass(&m.path("stream/data.bin"), &s.data).unwrap();
    assert!(m.log_text().contains("chmod 600"));
}
