//! mount(8), fstab and the daemon lifecycle, through the real `mount`
//! command and the `mount.cwfs` helper.
//!
//! The helper must be found as /sbin/mount.cwfs. These tests never install
//! anything into the machine's /sbin and never touch /etc/fstab: each runs
//! in a private mount namespace (`unshare --mount`) in which a directory
//! holding a `mount.cwfs` symlink is bind-mounted over /usr/sbin (Debian's
//! /sbin points there), and fstab entries come from a test file
//! (`mount --fstab FILE`). The mounts made inside die with the namespace.

mod common;

use std::fs;
use std::process::Command;
use std::time::Duration;

use common::exchange::Exchange;
use common::*;

const TOKEN: &str = "helper-test-token";

struct Env {
    server: Server,
    exchange: Exchange,
    dir: TempDir,
}

impl Env {
    fn new() -> Env {
        let server = Server::start();
        server.put("train/hello.txt", b"hello from fstab\n".to_vec());
        server.put("train/sub/x.bin", vec![7u8; 100_000]);
        let exchange = Exchange::start(server.s3.clone(), TOKEN, Duration::from_secs(900));
        let dir = TempDir::new("helper");
        fs::create_dir(dir.path().join("m")).unwrap();
        fs::create_dir(dir.path().join("sbin")).unwrap();
        std::os::unix::fs::symlink(cwfs_bin(), dir.path().join("sbin/mount.cwfs")).unwrap();
        fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
        Env {
            server,
            exchange,
            dir,
        }
    }

    fn mp(&self) -> std::path::PathBuf {
        self.dir.path().join("m")
    }

    /// Everything an fstab line needs, as options (no environment).
    fn options(&self) -> String {
        format!(
            "endpoint_url={},region={},force_path_style,credentials_uri={},token_file={},log_file={}",
            self.server.s3.endpoint(),
            self.server.s3.region(),
            self.exchange.uri(),
            self.dir.path().join("token").display(),
            self.dir.path().join("cwfs.log").display()
        )
    }

    /// Run `script` with sh in a private mount namespace where
    /// /sbin/mount.cwfs is our helper, with an empty environment (as fstab
    /// mounts have).
    fn in_namespace(&self, script: &str) -> std::process::Output {
        let full = format!(
            "set -e\nmount --bind \"$SBIN\" /usr/sbin\ntrap 'umount -l \"$MP\" 2>/dev/null || true' EXIT\n{script}"
        );
        let mut cmd = clean_command("unshare");
        cmd.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("SBIN", self.dir.path().join("sbin"))
            .env("MP", self.mp())
            .env("DIR", self.dir.path())
            .env("OPTS", self.options())
            .args(["--mount", "--propagation", "private", "sh", "-c", &full]);
        run_bounded(cmd, Duration::from_secs(120))
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("cwfs.log")).unwrap_or_default()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Shell: wait (bounded) until the daemon whose pid the log names is gone.
const WAIT_DAEMON_GONE: &str = r#"
pid=$(sed -n 's/.*pid=\([0-9]*\).*/\1/p' "$DIR/cwfs.log" | tail -1)
[ -n "$pid" ] || { echo "no pid in the log"; exit 1; }
for i in $(seq 1 300); do
  [ -d "/proc/$pid" ] && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null || { echo "daemon gone"; exit 0; }
  sleep 0.1
done
echo "daemon still running"; exit 1
"#;

#[test]
fn mount_t_cwfs_with_options_then_umount_ends_the_daemon() {
    let e = Env::new();
    let out = e.in_namespace(&format!(
        r#"
        mount -t cwfs -o "ro,nosuid,nodev,noexec,$OPTS" {BUCKET}/train "$MP"
        grep " $MP " /proc/self/mounts | grep -q '^{BUCKET}/train ' && echo "type ok"
        grep " $MP " /proc/self/mounts | grep -q 'noexec' && echo "noexec ok"
        cat "$MP/hello.txt"
        ls "$MP/sub"
        umount "$MP"
        grep -q " $MP " /proc/self/mounts && echo "still mounted" || echo "unmounted"
        {WAIT_DAEMON_GONE}
        "#
    ));
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}\nlog:\n{}",
        text(&out.stderr),
        e.log()
    );
    assert!(
        stdout.contains("type ok") && stdout.contains("noexec ok"),
        "{stdout}"
    );
    assert!(
        stdout.contains("hello from fstab") && stdout.contains("x.bin"),
        "{stdout}"
    );
    assert!(
        stdout.contains("unmounted") && stdout.contains("daemon gone"),
        "{stdout}"
    );
    assert!(
        e.log().contains("token exchange"),
        "credentials came from the options"
    );
}

#[test]
fn fstab_entry_with_systemd_options_mounts_by_mountpoint() {
    let e = Env::new();
    let fstab = e.dir.path().join("fstab");
    fs::write(
        &fstab,
        format!(
            "# test fstab\n{BUCKET}/train {} cwfs _netdev,nofail,ro,allow_other,x-systemd.automount,x-systemd.requires=network-online.target,comment=cwfs,{} 0 0\n",
            e.mp().display(),
            e.options()
        ),
    )
    .unwrap();
    let out = e.in_namespace(&format!(
        r#"
        mount --fstab "$DIR/fstab" "$MP"
        cat "$MP/hello.txt"
        umount "$MP"
        {WAIT_DAEMON_GONE}
        "#
    ));
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}\nlog:\n{}",
        text(&out.stderr),
        e.log()
    );
    assert!(
        stdout.contains("hello from fstab") && stdout.contains("daemon gone"),
        "{stdout}"
    );
}

#[test]
fn helper_errors_are_clear_and_fail() {
    let e = Env::new();
    let helper = e.dir.path().join("sbin/mount.cwfs");
    let run = |args: &[&str], extra_opts: &str| {
        let mut cmd = clean_command(&helper);
        let opts = if extra_opts.is_empty() {
            e.options()
        } else {
            format!("{},{extra_opts}", e.options())
        };
        cmd.args(args).arg(e.mp()).arg("-o").arg(opts);
        let out = run_bounded(cmd, Duration::from_secs(60));
        assert!(!is_mounted(&e.mp()));
        (out.status.code(), text(&out.stderr))
    };
    let (code, err) = run(&[BUCKET], "bogus_option=1");
    assert_eq!(code, Some(1));
    assert!(err.contains("bogus_option"), "{err}");
    let (code, err) = run(&[BUCKET], "uid=abc");
    assert_eq!(code, Some(1));
    assert!(err.contains("uid"), "{err}");
    let (code, err) = run(&["no-such-bucket"], "");
    assert_eq!(code, Some(32), "mount failure status");
    assert!(
        err.contains("no-such-bucket") && err.contains("does not exist"),
        "{err}"
    );
    fs::write(e.dir.path().join("token"), "wrong-token\n").unwrap();
    let (code, err) = run(&[BUCKET], "");
    assert_eq!(code, Some(32));
    assert!(err.contains("rejected the token"), "{err}");
    // -f (fake) checks everything but mounts nothing.
    let mut cmd = clean_command(&helper);
    cmd.args([BUCKET])
        .arg(e.mp())
        .args(["-f", "-v", "-o", "region=r,_netdev,ro"]);
    let out = run_bounded(cmd, Duration::from_secs(30));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!is_mounted(&e.mp()));
}

#[test]
fn killed_daemon_leaves_a_mountpoint_that_umount_clears() {
    let server = Server::start();
    server.put("f", b"x".to_vec());
    let m = server.mount(BUCKET, &[]);
    assert_eq!(fs::read(m.path("f")).unwrap(), b"x");
    let st = Command::new("kill")
        .arg("-KILL")
        .arg(m.pid().to_string())
        .status()
        .unwrap();
    assert!(st.success());
    std::thread::sleep(Duration::from_millis(300));
    let err = fs::metadata(m.path("f")).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::ENOTCONN),
        "the dead mount: {err}"
    );
    let out = Command::new("umount").arg(&m.mountpoint).output().unwrap();
    assert!(
        out.status.success(),
        "umount of a dead mount: {}",
        text(&out.stderr)
    );
    assert!(!is_mounted(&m.mountpoint));
    assert!(
        fs::read_dir(&m.mountpoint).is_ok(),
        "the mountpoint is a plain directory again"
    );
    // And it can be mounted again.
    let again = server.mount(BUCKET, &[]);
    assert_eq!(fs::read(again.path("f")).unwrap(), b"x");
}
