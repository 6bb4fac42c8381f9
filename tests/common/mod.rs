//! The integration-test harness: a real S3 server on 127.0.0.1 (the
//! project's `cwfs-testserver`, in-process) and real FUSE mounts of the real
//! `cwfs` binary in temporary directories.
//!
//! Cleanup is by RAII: a [`Mount`] unmounts (lazily if busy) and reaps the
//! `cwfs` process it started, by PID, even when the test panics; a
//! [`TempDir`] removes itself. Every wait is bounded, so a stuck mount fails
//! the test instead of hanging the suite.
#![allow(dead_code)]

pub mod exchange;
pub mod proxy;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use cwfs_testserver::{ServerConfig, TestServer};

pub const ACCESS_KEY: &str = "cwfs-test-key";
pub const SECRET_KEY: &str = "cwfs-test-secret-do-not-log";
pub const BUCKET: &str = "testbucket";

/// How long a mount may take to come up before the test fails.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(60);

pub fn cwfs_bin() -> &'static str {
    env!("CARGO_BIN_EXE_cwfs")
}

/// A uniquely named directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "cwfs-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Never recurse into something still mounted.
        if !is_mounted(&self.0) && !has_mount_below(&self.0) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), fast enough for GiBs.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A private CA and a server certificate it signed for 127.0.0.1 and
/// localhost, made with the `openssl` command in `dir`.
pub struct TestCerts {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl TestCerts {
    pub fn generate(dir: &Path) -> TestCerts {
        let p = |name: &str| dir.join(name).to_str().expect("UTF-8 temp dir").to_string();
        let openssl = |args: &[&str]| {
            let mut cmd = Command::new("openssl");
            cmd.args(args);
            let out = run_bounded(cmd, Duration::from_secs(30));
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        let (ca_key, ca, key, csr, cert, ext) = (
            p("ca.key"),
            p("ca.pem"),
            p("server.key"),
            p("server.csr"),
            p("server.pem"),
            p("ext.cnf"),
        );
        let mut args: Vec<&str> = vec!["req", "-x509"];
        args.extend(ec.split(' '));
        args.extend(["-keyout", &ca_key, "-out", &ca, "-days", "2"]);
        args.extend(["-subj", "/CN=cwfs test CA"]);
        openssl(&args);
        let mut args: Vec<&str> = vec!["req"];
        args.extend(ec.split(' '));
        args.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=localhost"]);
        openssl(&args);
        std::fs::write(
            &ext,
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n\
             subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:*.localhost\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &cert,
            "-days",
            "2",
            "-extfile",
            &ext,
        ]);
        TestCerts {
            ca_cert: ca.into(),
            server_cert: cert.into(),
            server_key: key.into(),
        }
    }
}

/// A running test server with one bucket and one key pair.
pub struct Server {
    pub s3: Arc<TestServer>,
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(ServerConfig::default())
    }

    /// An https server whose certificate `certs` signed (see [`TestCerts`]).
    pub fn start_tls(certs: &TestCerts) -> Server {
        Server::start_with(ServerConfig {
            tls: Some(cwfs_testserver::TlsFiles {
                cert_chain: certs.server_cert.clone(),
                key: certs.server_key.clone(),
            }),
            ..ServerConfig::default()
        })
    }

    pub fn start_with(config: ServerConfig) -> Server {
        let s3 = TestServer::start(config).expect("start the test S3 server");
        s3.add_credentials(ACCESS_KEY, SECRET_KEY, None, None);
        s3.create_bucket(BUCKET);
        Server { s3: Arc::new(s3) }
    }

    pub fn put(&self, key: &str, data: impl Into<bytes::Bytes>) {
        self.s3.put_object(BUCKET, key, data);
    }

    /// A `cwfs mount` command for this server with a clean environment:
    /// path-style addressing on 127.0.0.1, static test keys.
    pub fn mount_cmd(&self, source: &str, mountpoint: &Path) -> Command {
        self.mount_cmd_via(&self.s3.endpoint(), source, mountpoint)
    }

    /// Like [`Server::mount_cmd`], through another endpoint (a proxy).
    pub fn mount_cmd_via(&self, endpoint: &str, source: &str, mountpoint: &Path) -> Command {
        let mut cmd = clean_command(cwfs_bin());
        cmd.arg("mount")
            .arg("--endpoint-url")
            .arg(endpoint)
            .arg("--region")
            .arg(self.s3.region())
            .arg("--force-path-style")
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .arg(source)
            .arg(mountpoint);
        cmd
    }

    /// Mount `source` in the foreground (as a child we own) with `extra`
    /// options, and wait until the mount is live.
    pub fn mount(&self, source: &str, extra: &[&str]) -> Mount {
        let dir = TempDir::new("mnt");
        let mountpoint = dir.path().join("m");
        std::fs::create_dir(&mountpoint).unwrap();
        let log = dir.path().join("cwfs.log");
        let mut cmd = self.mount_cmd(source, &mountpoint);
        cmd.args(extra)
            .arg("--foreground")
            .arg("--log-level")
            .arg("debug");
        Mount::start(cmd, dir, mountpoint, log)
    }
}

/// A command with no AWS settings inherited from the machine, and no IMDS.
pub fn clean_command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent/cwfs-test/config")
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/cwfs-test/credentials",
        )
        .stdin(Stdio::null());
    cmd
}

/// A live mount served by a `cwfs --foreground` child process.
pub struct Mount {
    pub mountpoint: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    _dir: TempDir,
}

impl Mount {
    /// Mount in the foreground with the command `build` makes for a fresh
    /// mountpoint; waits until the mount is live.
    pub fn spawn(build: impl FnOnce(&Path) -> Command) -> Mount {
        let dir = TempDir::new("mnt");
        let mountpoint = dir.path().join("m");
        std::fs::create_dir(&mountpoint).unwrap();
        let log = dir.path().join("cwfs.log");
        let mut cmd = build(&mountpoint);
        cmd.arg("--foreground");
        Mount::start(cmd, dir, mountpoint, log)
    }

    fn start(mut cmd: Command, dir: TempDir, mountpoint: PathBuf, log: PathBuf) -> Mount {
        let stderr = std::fs::File::create(&log).unwrap();
        cmd.stdout(Stdio::null()).stderr(stderr);
        let child = cmd.spawn().expect("spawn cwfs");
        let mut m = Mount {
            mountpoint,
            log,
            child: Some(child),
            _dir: dir,
        };
        let deadline = Instant::now() + MOUNT_TIMEOUT;
        while !is_mounted(&m.mountpoint) {
            if let Some(status) = m.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("cwfs exited ({status}) before mounting:\n{}", m.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "mount did not come up:\n{}",
                m.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mountpoint.join(rel)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// Wait (bounded) for the daemon to exit by itself; returns its status.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let status = wait_bounded(self.child.as_mut().unwrap(), Duration::from_secs(30))
            .unwrap_or_else(|| panic!("cwfs did not exit:\n{}", self.log_text()));
        self.child = None;
        status
    }

    /// Unmount with umount(8) and wait (bounded) for the daemon to exit;
    /// returns its exit status.
    pub fn unmount(&mut self) -> std::process::ExitStatus {
        let out = Command::new("umount")
            .arg(&self.mountpoint)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "umount failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let status = wait_bounded(self.child.as_mut().unwrap(), Duration::from_secs(30))
            .unwrap_or_else(|| panic!("cwfs did not exit after umount:\n{}", self.log_text()));
        self.child = None;
        assert!(!is_mounted(&self.mountpoint));
        status
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if is_mounted(&self.mountpoint) {
            force_unmount(&self.mountpoint);
        }
        if let Some(mut child) = self.child.take() {
            if wait_bounded(&mut child, Duration::from_secs(10)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "--- cwfs log ({}) ---\n{}",
                self.log.display(),
                self.log_text()
            );
        }
    }
}

/// Unmount, lazily when busy (never hangs).
pub fn force_unmount(path: &Path) {
    let ok = Command::new("umount")
        .arg(path)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(path)
            .stderr(Stdio::null())
            .status();
    }
}

/// A child process killed (by its PID) and reaped if the test ends, or
/// fails, while it still runs.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The PID a daemon wrote in its `mounted ... pid=N` log line.
pub fn daemon_pid(log: &Path) -> u32 {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.split(" pid=").nth(1))
        .and_then(|p| p.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {}", log.display()))
}

/// Wait (bounded) until process `pid` has exited (gone, or a zombie its
/// new parent has not reaped yet); false if it outlived `limit`.
pub fn wait_pid_gone(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let running = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| !stat.contains(") Z"))
    };
    while running() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

pub fn wait_bounded(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().ok().flatten() {
            return Some(s);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn mount_points() -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape)
        .collect()
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

pub fn is_mounted(path: &Path) -> bool {
    let p = path.to_string_lossy();
    mount_points().iter().any(|m| *m == p)
}

fn has_mount_below(path: &Path) -> bool {
    let p = format!("{}/", path.to_string_lossy());
    mount_points().iter().any(|m| m.starts_with(&p))
}

/// Run a command to completion with a time bound; panics on timeout.
pub fn run_bounded(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut v).ok();
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut stderr, &mut v).ok();
        v
    });
    let status = match wait_bounded(&mut child, limit) {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("command did not finish within {limit:?}");
        }
    };
    Output {
        status,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    }
}
