//! Reliability under faults: a seeded fault plan in the test server (503
//! SlowDown, resets mid-body, stalls, failing LIST pages), a proxy that
//! takes the server away, and hostile keys. Real server, real mount.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::proxy::Proxy;
use common::*;
use cwfs_testserver::faults::{FaultAction, RequestInfo};

/// A small seeded generator (splitmix64), one per plan, behind a mutex.
struct Seeded(Mutex<u64>);

impl Seeded {
    fn new(seed: u64) -> Seeded {
        Seeded(Mutex::new(seed))
    }
    fn next(&self) -> u64 {
        let mut s = self.0.lock().unwrap();
        *s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// A GetObject (the SDK adds `?x-id=GetObject`; listings carry `list-type`).
fn is_object_get(req: &RequestInfo) -> bool {
    req.method.as_str() == "GET"
        && req.path.trim_start_matches('/').contains('/')
        && !req.query.as_deref().unwrap_or("").contains("list-type")
}

#[derive(Default)]
struct Injected {
    slowdowns: AtomicU64,
    resets: AtomicU64,
    stalls: AtomicU64,
    list_errors: AtomicU64,
}

#[test]
fn slowdowns_resets_and_stalls_cost_no_read() {
    let server = Server::start();
    let big = pattern(42, 1 << 30);
    server.put("big.bin", big.clone());
    let small: Vec<Vec<u8>> = (0..2000)
        .map(|i| pattern(1000 + i, 4096 + (i as usize % 7) * 1000))
        .collect();
    for (i, d) in small.iter().enumerate() {
        server.put(&format!("small/{i:04}"), d.clone());
    }
    let injected = Arc::new(Injected::default());
    let rng = Seeded::new(7);
    let inj = injected.clone();
    // 10 % SlowDown, 5 % reset after a random number of body bytes, 2 %
    // stall longer than the stall timeout (1 s below).
    server.s3.set_fault_plan(move |req: &RequestInfo| {
        if !is_object_get(req) {
            return FaultAction::None;
        }
        let r = rng.next();
        match r % 100 {
            0..=9 => {
                inj.slowdowns.fetch_add(1, Ordering::Relaxed);
                FaultAction::SlowDown
            }
            10..=14 => {
                inj.resets.fetch_add(1, Ordering::Relaxed);
                FaultAction::ResetAfter((r >> 32) % (1 << 20))
            }
            15..=16 => {
                inj.stalls.fetch_add(1, Ordering::Relaxed);
                FaultAction::Stall(Duration::from_millis(2500))
            }
            _ => FaultAction::None,
        }
    });
    let m = server.mount(
        BUCKET,
        &[
            "--stall-timeout",
            "1",
            "--max-attempts",
            "20",
            "--retry-timeout",
            "120",
        ],
    );

    let mut f = fs::File::open(m.path("big.bin")).unwrap();
    let mut buf = vec![0u8; 4 << 20];
    let mut off = 0usize;
    loop {
        let n = f
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("read at {off} failed: {e}"));
        if n == 0 {
            break;
        }
        assert!(buf[..n] == big[off..off + n], "bytes differ at {off}");
        off += n;
    }
    assert_eq!(off, big.len());

    let threads: Vec<_> = (0..8)
        .map(|t| {
            let root = m.mountpoint.clone();
            let small = small.clone();
            std::thread::spawn(move || {
                for i in (t..2000).step_by(8) {
                    let got = fs::read(root.join(format!("small/{i:04}")))
                        .unwrap_or_else(|e| panic!("small/{i:04}: {e}"));
                    assert!(got == small[i], "small/{i:04} differs");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let (s, r, st) = (
        injected.slowdowns.load(Ordering::Relaxed),
        injected.resets.load(Ordering::Relaxed),
        injected.stalls.load(Ordering::Relaxed),
    );
    eprintln!("injected: {s} SlowDown, {r} resets, {st} stalls");
    assert!(
        s > 50 && r > 20 && st > 5,
        "the faults happened: {s} {r} {st}"
    );
}

#[test]
fn failing_list_pages_still_list_completely_once() {
    let server = Server::start();
    for i in 0..10_000 {
        server.put(&format!("dir/k{i:05}"), Vec::new());
    }
    let injected = Arc::new(Injected::default());
    let (rng, inj) = (Seeded::new(3), injected.clone());
    server.s3.set_fault_plan(move |req: &RequestInfo| {
        let is_list = req.method.as_str() == "GET"
            && req
                .query
                .as_deref()
                .is_some_and(|q| q.contains("list-type=2"));
        if is_list && rng.next() % 100 < 30 {
            inj.list_errors.fetch_add(1, Ordering::Relaxed);
            return FaultAction::Status {
                status: 500,
                code: "InternalError".into(),
            };
        }
        FaultAction::None
    });
    let m = server.mount(BUCKET, &["--metadata-ttl", "0"]);
    for _ in 0..2 {
        let names: Vec<String> = fs::read_dir(m.path("dir"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        let unique: BTreeSet<&String> = names.iter().collect();
        assert_eq!(names.len(), 10_000, "complete");
        assert_eq!(unique.len(), 10_000, "no duplicates");
    }
    assert!(
        injected.list_errors.load(Ordering::Relaxed) > 3,
        "LIST pages did fail"
    );
}

#[test]
fn server_away_for_30s_fails_reads_in_bounded_time_then_recovers() {
    let server = Server::start();
    let data = pattern(5, 64 << 20);
    server.put("d/file.bin", data.clone());
    server.put("d/other.bin", data.clone());
    let mut proxy = Proxy::start(server.s3.port());
    let m = Mount::spawn(|mp| {
        let mut cmd = server.mount_cmd_via(&proxy.endpoint(), BUCKET, mp);
        cmd.args([
            "--retry-timeout",
            "8",
            "--stall-timeout",
            "2",
            "--metadata-ttl",
            "0",
            "--cache-size",
            "8MiB",
        ]);
        cmd
    });
    let mut f = fs::File::open(m.path("d/file.bin")).unwrap();
    let mut head = vec![0u8; 1 << 20];
    f.read_exact(&mut head).unwrap();
    proxy.down();
    let down_at = Instant::now();

    // A read of data not cached fails with EIO, in bounded time.
    let t = Instant::now();
    let mut rest = Vec::new();
    let err = f
        .read_to_end(&mut rest)
        .expect_err("reading with the server away must fail");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "EIO took {:?}",
        t.elapsed()
    );
    // stat and ls do not hang either.
    let t = Instant::now();
    let _ = fs::metadata(m.path("d/other.bin"));
    let _ = fs::read_dir(m.path("d")).map(|d| d.count());
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "stat/ls took {:?}",
        t.elapsed()
    );

    let remaining = Duration::from_secs(30).saturating_sub(down_at.elapsed());
    std::thread::sleep(remaining);
    proxy.up();
    // New reads succeed, without a remount.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match fs::read(m.path("d/other.bin")) {
            Ok(got) => {
                assert!(got == data);
                break;
            }
            Err(e) => assert!(
                Instant::now() < deadline,
                "no recovery after the server came back: {e}"
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        m.log_text().contains("giving up"),
        "the failure was logged with op, key and attempts"
    );
}

#[test]
fn hostile_keys_never_break_the_mount() {
    let server = Server::start();
    let deep: String = (0..20)
        .map(|i| format!("level{i:02}-{}/", "n".repeat(40)))
        .collect();
    let long_key = format!("h/{deep}{}", "f".repeat(1024 - 2 - deep.len()));
    assert_eq!(long_key.len(), 1024);
    let readable = [
        "h/ünïcødé ✓.txt",
        "h/with space",
        "h/plus+sign",
        "h/per%25cent%2F",
        "h/ctrl\u{1}char",
        "h/tab\there",
        "h/del\u{7f}",
        "h/x",
        long_key.as_str(),
    ];
    for (i, k) in readable.iter().enumerate() {
        server.put(k, format!("content {i}").into_bytes());
    }
    // Unreachable or shadowed: never a crash, never an error for the directory.
    for k in [
        "h/a//b",
        "h/./dot",
        "h/../up",
        "h/x/inside",
        "h/dir-with-data/",
    ] {
        server.put(k, b"hidden".to_vec());
    }
    server.put("h/dir-with-data/child", b"child".to_vec());
    let m = server.mount(BUCKET, &[]);
    let list = || -> BTreeSet<String> {
        fs::read_dir(m.path("h"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect()
    };
    let first = list();
    assert_eq!(first, list(), "listing is consistent");
    let want: BTreeSet<String> = [
        "ünïcødé ✓.txt",
        "with space",
        "plus+sign",
        "per%25cent%2F",
        "ctrl\u{1}char",
        "tab\there",
        "del\u{7f}",
        "x",
        "a",
        "dir-with-data",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([deep.split('/').next().unwrap().to_string()])
    .collect();
    assert_eq!(first, want);
    for (i, k) in readable.iter().enumerate() {
        let rel = k.strip_prefix("h/").unwrap();
        if *k == "h/x" {
            assert!(
                fs::metadata(m.path("h/x")).unwrap().is_dir(),
                "x/ wins over x"
            );
            continue;
        }
        assert_eq!(
            fs::read_to_string(m.path(&format!("h/{rel}"))).unwrap(),
            format!("content {i}"),
            "{k:?}"
        );
    }
    assert!(fs::metadata(m.path("h/dir-with-data")).unwrap().is_dir());
    assert_eq!(
        fs::read_to_string(m.path("h/dir-with-data/child")).unwrap(),
        "child"
    );
    assert_eq!(
        fs::read_dir(m.path("h/a")).unwrap().count(),
        0,
        "a//b is skipped"
    );
    // The mount is alive after all of it.
    assert_eq!(
        fs::read_to_string(m.path("h/with space")).unwrap(),
        "content 1"
    );
}

#[test]
fn a_million_entry_directory_lists_completely() {
    let server = Server::start();
    for i in 0..1_000_000u32 {
        server.put(&format!("huge/{i:07}"), Vec::new());
    }
    let m = server.mount(BUCKET, &[]);
    let pid = m.pid();
    let before_kb = status_kb(pid, "VmRSS:");
    let t = Instant::now();
    let mut count = 0usize;
    let mut last = String::new();
    for e in fs::read_dir(m.path("huge")).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        assert!(name > last, "entries come once, in order");
        last = name;
        count += 1;
    }
    assert_eq!(count, 1_000_000);
    let hwm_kb = status_kb(pid, "VmHWM:");
    let nodes = inodes_in_use(&m.path(""));
    eprintln!(
        "listed 1,000,000 entries in {:?}; daemon RSS {} MiB before, peak {} MiB; {nodes} nodes in the table",
        t.elapsed(),
        before_kb / 1024,
        hwm_kb / 1024
    );
    // Pages are streamed, and names the kernel does not hold are dropped
    // past 100,000 (about 550 bytes each), so the listing costs tens of
    // MiB, not the 540 MiB one node per name took. The kernel holds the
    // entries of its first reply, a readdirplus of up to 1 MiB (some 6,500
    // entries); the later ones are plain readdir.
    assert!(
        nodes <= 100_000 + 10_000,
        "{nodes} nodes kept after listing"
    );
    assert!(
        hwm_kb < before_kb + 160 * 1024,
        "peak RSS {hwm_kb} KiB from {before_kb} KiB"
    );
}

/// A line of /proc/PID/status, in KiB.
fn status_kb(pid: u32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

/// Inodes in use as `df -i` shows them: the mount's inode-table size.
fn inodes_in_use(path: &std::path::Path) -> u64 {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st.f_files - st.f_ffree
}

#[test]
fn inodes_the_kernel_forgets_are_released() {
    let server = Server::start();
    for i in 0..3000u32 {
        server.put(&format!("d/{i:05}"), b"x".to_vec());
    }
    let m = server.mount(
        BUCKET,
        &["--metadata-ttl", "3600", "--max-idle-inodes", "100"],
    );
    let base = inodes_in_use(&m.path(""));
    // stat of every name: each is a lookup the kernel holds.
    for i in 0..3000u32 {
        let md = fs::metadata(m.path(&format!("d/{i:05}"))).unwrap();
        assert_eq!(md.len(), 1);
    }
    let held = inodes_in_use(&m.path(""));
    assert!(held >= base + 3000, "{held} in use from {base}");
    // Reclaiming dentries and inodes makes the kernel send FORGETs: the
    // nodes become idle and all but 100 are dropped. Forgets are queued by
    // the kernel, so wait a little for them.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut now = held;
    while now > base + 100 && Instant::now() < deadline {
        fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
        std::thread::sleep(Duration::from_millis(200));
        now = inodes_in_use(&m.path(""));
    }
    eprintln!("inodes in use: {base} at mount, {held} after 3,000 stats, {now} after drop_caches");
    assert!(
        now <= base + 100,
        "{now} in use after the kernel forgot (base {base})"
    );
    // Dropped names still answer, with the same data.
    let md = fs::metadata(m.path("d/00042")).unwrap();
    assert_eq!(md.len(), 1);
    let mut buf = String::new();
    fs::File::open(m.path("d/02999"))
        .unwrap()
        .read_to_string(&mut buf)
        .unwrap();
    assert_eq!(buf, "x");
    // Every listed name is still there, once.
    let names: BTreeSet<String> = fs::read_dir(m.path("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 3000);
}

#[test]
fn malformed_answers_fail_one_request_never_the_mount() {
    let server = Server::start();
    server.put("ok.txt", b"fine".to_vec());
    server.put("huge", b"0123456789".to_vec());
    server.put("neg", b"x".to_vec());
    server.put("bad/x", b"x".to_vec());
    server.put("loop/a", b"a".to_vec());
    let looping = r#"<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>testbucket</Name><Prefix>loop/</Prefix><KeyCount>1</KeyCount><MaxKeys>1000</MaxKeys><Delimiter>/</Delimiter><IsTruncated>true</IsTruncated><NextContinuationToken>SAME</NextContinuationToken><Contents><Key>loop/a</Key><Size>1</Size><ETag>"e"</ETag><LastModified>2026-01-01T00:00:00.000Z</LastModified></Contents></ListBucketResult>"#;
    let xml = |body: &str| FaultAction::Raw {
        status: 200,
        headers: vec![("content-type".into(), "application/xml".into())],
        body: bytes::Bytes::from(body.to_string()),
    };
    server.s3.set_fault_plan(move |req: &RequestInfo| {
        let q = req.query.as_deref().unwrap_or("");
        let m = req.method.as_str();
        if m == "GET" && q.contains("list-type=2") && q.contains("prefix=loop") {
            return xml(looping);
        }
        if m == "GET" && q.contains("list-type=2") && q.contains("prefix=bad%2F") {
            return xml("<ListBucketResult><Contents><Key>unclosed");
        }
        if req.path.ends_with("/huge") && m == "GET" && !q.contains("list-type") {
            // Announces far more than the range asked for, sends a little.
            return FaultAction::Raw {
                status: 206,
                headers: vec![
                    ("content-length".into(), "99999999999".into()),
                    ("content-range".into(), "bytes 0-9/10".into()),
                ],
                body: bytes::Bytes::from_static(b"0123"),
            };
        }
        if req.path.ends_with("/neg") && m == "HEAD" {
            return FaultAction::Raw {
                status: 200,
                headers: vec![("content-length".into(), "-5".into())],
                body: bytes::Bytes::new(),
            };
        }
        FaultAction::None
    });
    let m = server.mount(
        BUCKET,
        &[
            "--max-attempts",
            "2",
            "--retry-timeout",
            "5",
            "--metadata-ttl",
            "0",
        ],
    );

    // A listing whose continuation token repeats: EIO, not an endless loop.
    let t = Instant::now();
    let r: std::io::Result<Vec<_>> = fs::read_dir(m.path("loop")).and_then(|d| d.collect());
    assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EIO));
    assert!(t.elapsed() < Duration::from_secs(30));
    // Malformed XML: the SDK's parser may fail (EIO) or be lenient; either
    // way one request's outcome, never a crash.
    let _ = fs::read_dir(m.path("bad")).map(|d| d.count());
    // A lying Content-Length and a negative one: EIO.
    let e = fs::read(m.path("huge")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    let e = fs::metadata(m.path("neg")).unwrap_err();
    assert!(
        matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::ENOENT)),
        "{e}"
    );
    // The mount lives on.
    assert_eq!(fs::read(m.path("ok.txt")).unwrap(), b"fine");
    assert!(
        !m.log_text().contains("internal error"),
        "no panic on hostile answers"
    );
}
