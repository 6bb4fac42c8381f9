//! End-to-end tests of a read-only mount: a real S3 server on 127.0.0.1, the
//! real `cwfs` binary, a real FUSE mount, and plain std::fs on top.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::process::Command;
use std::time::{Duration, SystemTime};

use common::*;

fn names(dir: &std::path::Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| {
            let e = e.unwrap();
            let suffix = if e.file_type().unwrap().is_dir() {
                "/"
            } else {
                ""
            };
            format!("{}{suffix}", e.file_name().to_string_lossy())
        })
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn tree_markers_and_attributes() {
    let server = Server::start();
    server.put("top.txt", b"hello\n".to_vec());
    server.put("empty.bin", Vec::new());
    server.put("marker/", Vec::new());
    server.put("a/b/c/deep.txt", b"deep".to_vec());
    server.put("a/sibling", b"s".to_vec());
    let m = server.mount(
        BUCKET,
        &[
            "--uid",
            "1234",
            "--gid",
            "4321",
            "--file-mode",
            "0640",
            "--dir-mode",
            "0750",
        ],
    );

    assert_eq!(
        names(&m.mountpoint),
        set(&["a/", "empty.bin", "marker/", "top.txt"])
    );
    assert_eq!(names(&m.path("a")), set(&["b/", "sibling"]));
    assert_eq!(
        names(&m.path("marker")),
        set(&[]),
        "a dir/ marker is an empty directory"
    );
    assert_eq!(fs::read(m.path("a/b/c/deep.txt")).unwrap(), b"deep");
    assert_eq!(fs::read(m.path("top.txt")).unwrap(), b"hello\n");
    assert_eq!(fs::read(m.path("empty.bin")).unwrap(), b"");

    let md = fs::metadata(m.path("top.txt")).unwrap();
    assert!(md.is_file());
    assert_eq!(md.len(), 6);
    assert_eq!((md.uid(), md.gid()), (1234, 4321));
    assert_eq!(md.permissions().mode() & 0o7777, 0o640);
    let dmd = fs::metadata(m.path("a/b")).unwrap();
    assert!(dmd.is_dir());
    assert_eq!(dmd.permissions().mode() & 0o7777, 0o750);
    assert_eq!(md.mtime_nsec(), 0, "mtimes are whole seconds");
    let age = SystemTime::now()
        .duration_since(md.modified().unwrap())
        .unwrap();
    assert!(
        age < Duration::from_secs(600),
        "mtime is the object's LastModified"
    );

    // Stable inode numbers while mounted.
    let ino = md.ino();
    let _ = names(&m.mountpoint);
    assert_eq!(fs::metadata(m.path("top.txt")).unwrap().ino(), ino);

    // Missing names are ENOENT.
    assert_eq!(
        fs::metadata(m.path("nope")).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        fs::metadata(m.path("a/b/nope")).unwrap_err().kind(),
        ErrorKind::NotFound
    );

    // statfs answers with large sane values.
    let out = Command::new("stat")
        .arg("-f")
        .arg("-c")
        .arg("%b %a %S %l")
        .arg(&m.mountpoint)
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    let v: Vec<u64> = s.split_whitespace().map(|x| x.parse().unwrap()).collect();
    assert!(
        v[0] > 1 << 30 && v[1] > 1 << 30 && v[2] == 4096 && v[3] == 255,
        "statfs: {s}"
    );
}

#[test]
fn attributes_agree_between_list_and_head() {
    // LIST reports milliseconds, HEAD whole seconds; a file must look the
    // same whichever one cwfs saw (tar's "file changed as we read it").
    let server = Server::start();
    server.put("d/f.txt", b"abc".to_vec());
    let listed = server.mount(BUCKET, &[]);
    let _ = names(&listed.path("d")); // attributes from LIST
    let a = fs::metadata(listed.path("d/f.txt")).unwrap();
    let headed = server.mount(BUCKET, &["--metadata-ttl", "0"]);
    let b = fs::metadata(headed.path("d/f.txt")).unwrap(); // attributes from HEAD
    assert_eq!(
        (a.mtime(), a.mtime_nsec(), a.len()),
        (b.mtime(), b.mtime_nsec(), b.len())
    );
}

#[test]
fn large_object_byte_exact_and_random_reads() {
    let server = Server::start();
    let size = 256 << 20;
    let data = pattern(7, size);
    server.put("big/blob.bin", data.clone());
    let m = server.mount(BUCKET, &[]);

    let mut f = fs::File::open(m.path("big/blob.bin")).unwrap();
    assert_eq!(f.metadata().unwrap().len(), size as u64);
    let mut got = Vec::with_capacity(size);
    f.read_to_end(&mut got).unwrap();
    assert!(got == data, "sequential read differs from the object");
    drop(got);

    let mut rng = 0x1234_5678_9abc_def0u64;
    let mut buf = vec![0u8; 3 << 20];
    for _ in 0..200 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let off = (rng % size as u64) as usize;
        let len = 1 + (rng >> 40) as usize % buf.len();
        let n = f.read_at(&mut buf[..len], off as u64).unwrap();
        let want = len.min(size - off);
        assert_eq!(n, want, "short read at {off}+{len}");
        assert!(
            buf[..n] == data[off..off + n],
            "bytes differ at {off}+{len}"
        );
    }
    // Reads at and past the end.
    f.seek(SeekFrom::Start(size as u64)).unwrap();
    assert_eq!(f.read(&mut buf).unwrap(), 0);
    assert_eq!(f.read_at(&mut buf, size as u64 + 100).unwrap(), 0);
}

#[test]
fn odd_names_and_unrepresentable_keys() {
    let server = Server::start();
    let long = "L".repeat(255);
    let too_long = "T".repeat(256);
    let ok_keys = [
        "with space.txt",
        "ünïcødé-文件.txt",
        "plus+sign",
        "per%cent%20x",
        long.as_str(),
    ];
    for (i, k) in ok_keys.iter().enumerate() {
        server.put(&format!("odd/{k}"), format!("content {i}").into_bytes());
    }
    for k in ["odd/a//b", "odd/./dot", "odd/../up", "odd/x/../y"] {
        server.put(k, b"skipped".to_vec());
    }
    server.put(&format!("odd/{too_long}"), b"skipped".to_vec());
    server.put(&format!("odd/{too_long}/inner"), b"skipped".to_vec());
    let m = server.mount(BUCKET, &[]);

    let mut want: BTreeSet<String> = ok_keys.iter().map(|s| s.to_string()).collect();
    want.insert("a/".into()); // a real directory whose only key is unreachable
    want.insert("x/".into());
    assert_eq!(names(&m.path("odd")), want);
    for (i, k) in ok_keys.iter().enumerate() {
        assert_eq!(
            fs::read_to_string(m.path(&format!("odd/{k}"))).unwrap(),
            format!("content {i}"),
            "{k}"
        );
    }
    assert_eq!(names(&m.path("odd/a")), set(&[]), "a//b is skipped");
    assert_eq!(names(&m.path("odd/x")), set(&[]), "x/../y is skipped");
    let err = fs::metadata(m.path(&format!("odd/{too_long}"))).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENAMETOOLONG));
}

#[test]
fn ten_thousand_entries_list_completely() {
    let server = Server::start();
    for i in 0..10_000 {
        server.put(&format!("many/f{i:05}"), Vec::new());
    }
    for i in 0..50 {
        server.put(&format!("many/sub{i:02}/x"), b"x".to_vec());
    }
    let m = server.mount(BUCKET, &[]);
    let listed = names(&m.path("many"));
    assert_eq!(listed.len(), 10_050);
    assert!(listed.contains("f00000") && listed.contains("f09999") && listed.contains("sub49/"));
    // `ls -l` too (stats every entry).
    let out = Command::new("ls")
        .arg("-l")
        .arg(m.path("many"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        10_051,
        "total line + entries"
    );
}

#[test]
fn file_and_directory_with_one_name() {
    let server = Server::start();
    server.put("x", b"the file".to_vec());
    server.put("x/y", b"inside".to_vec());
    server.put("x-1", b"neighbour".to_vec());
    let m = server.mount(BUCKET, &[]);
    assert_eq!(names(&m.mountpoint), set(&["x-1", "x/"]));
    assert!(
        fs::metadata(m.path("x")).unwrap().is_dir(),
        "the directory wins"
    );
    assert_eq!(fs::read(m.path("x/y")).unwrap(), b"inside");
    assert!(
        m.log_text().contains("directory wins"),
        "the shadowed file is logged"
    );
}

#[test]
fn prefix_mount() {
    let server = Server::start();
    server.put("datasets/train/a.txt", b"A".to_vec());
    server.put("datasets/train/sub/b.txt", b"B".to_vec());
    server.put("datasets/other.txt", b"no".to_vec());
    for source in [
        format!("{BUCKET}/datasets/train"),
        format!("s3://{BUCKET}/datasets/train/"),
    ] {
        let m = server.mount(&source, &[]);
        assert_eq!(names(&m.mountpoint), set(&["a.txt", "sub/"]), "{source}");
        assert_eq!(fs::read(m.path("sub/b.txt")).unwrap(), b"B");
        assert!(fs::metadata(m.path("other.txt")).is_err());
    }
}

fn assert_erofs<T: std::fmt::Debug>(r: std::io::Result<T>, what: &str) {
    let e = r.expect_err(what);
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{what}: {e}");
}

#[test]
fn writes_fail_with_erofs() {
    let server = Server::start();
    server.put("f.txt", b"keep".to_vec());
    for extra in [&[][..], &["--read-only"][..]] {
        let m = server.mount(BUCKET, extra);
        assert_erofs(fs::write(m.path("new.txt"), b"x"), "create");
        assert_erofs(
            fs::OpenOptions::new().write(true).open(m.path("f.txt")),
            "open for write",
        );
        assert_erofs(
            fs::OpenOptions::new().append(true).open(m.path("f.txt")),
            "open for append",
        );
        assert_erofs(fs::create_dir(m.path("newdir")), "mkdir");
        assert_erofs(fs::remove_file(m.path("f.txt")), "unlink");
        assert_erofs(fs::rename(m.path("f.txt"), m.path("g.txt")), "rename");
        assert_erofs(
            fs::set_permissions(m.path("f.txt"), fs::Permissions::from_mode(0o600)),
            "chmod",
        );
        assert_eq!(fs::read(m.path("f.txt")).unwrap(), b"keep", "{extra:?}");
    }
}

#[test]
fn daemon_returns_once_mounted_and_umount_ends_it() {
    let server = Server::start();
    server.put("hello.txt", b"hi".to_vec());
    let dir = TempDir::new("daemon");
    let mp = dir.path().join("m");
    fs::create_dir(&mp).unwrap();
    let log = dir.path().join("daemon.log");
    let mut cmd = server.mount_cmd(BUCKET, &mp);
    cmd.arg("--log-file").arg(&log);
    let out = run_bounded(cmd, Duration::from_secs(60));
    struct Cleanup<'a>(&'a std::path::Path);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            if is_mounted(self.0) {
                force_unmount(self.0);
            }
        }
    }
    let _cleanup = Cleanup(&mp);
    assert!(
        out.status.success(),
        "daemon mount failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Mounted the moment the command returned.
    assert!(is_mounted(&mp));
    assert_eq!(fs::read(mp.join("hello.txt")).unwrap(), b"hi");
    let pid = daemon_pid(&log);
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());

    // A second mount on the same mountpoint fails clearly.
    let out = run_bounded(server.mount_cmd(BUCKET, &mp), Duration::from_secs(60));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already a mount point"));

    let st = Command::new("umount").arg(&mp).status().unwrap();
    assert!(st.success());
    assert!(
        wait_pid_gone(pid, Duration::from_secs(30)),
        "daemon still running after umount"
    );
    assert!(!is_mounted(&mp));
    assert!(fs::read_to_string(&log).unwrap().contains("unmounted"));
}

#[test]
fn foreground_sigterm_unmounts_cleanly() {
    let server = Server::start();
    server.put("f", b"x".to_vec());
    let mut m = server.mount(BUCKET, &[]);
    assert_eq!(fs::read(m.path("f")).unwrap(), b"x");
    // SAFETY-free: kill(1) on the PID of the child this test started.
    let st = Command::new("kill")
        .arg("-TERM")
        .arg(m.pid().to_string())
        .status()
        .unwrap();
    assert!(st.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while is_mounted(&m.mountpoint) {
        assert!(
            std::time::Instant::now() < deadline,
            "still mounted after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(m.wait_exit().success(), "exit status 0 after SIGTERM");
    assert!(m.log_text().contains("unmounted"));
}

#[test]
fn umount_ends_foreground_daemon_with_status_zero() {
    let server = Server::start();
    let mut m = server.mount(BUCKET, &[]);
    let status = m.unmount();
    assert!(status.success(), "exit status {status}");
}

#[test]
fn mount_failures_are_clear() {
    let server = Server::start();
    let dir = TempDir::new("fail");
    let mp = dir.path().join("m");
    fs::create_dir(&mp).unwrap();
    let stderr_of = |cmd: Command| {
        let out = run_bounded(cmd, Duration::from_secs(90));
        assert!(!out.status.success(), "mount should fail");
        assert!(!is_mounted(&mp));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    let e = stderr_of(server.mount_cmd("no-such-bucket", &mp));
    assert!(
        e.contains("does not exist") && e.contains("no-such-bucket"),
        "{e}"
    );
    assert!(
        !e.contains("panicked") && !e.contains("stack backtrace"),
        "{e}"
    );

    let mut cmd = server.mount_cmd(BUCKET, &mp);
    cmd.env("AWS_SECRET_ACCESS_KEY", "wrong-secret");
    let e = stderr_of(cmd);
    assert!(e.contains("denied") && e.contains("credentials"), "{e}");
    assert!(!e.contains("wrong-secret"), "no secret in messages: {e}");

    let mut cmd = server.mount_cmd(BUCKET, &mp);
    cmd.env("AWS_ACCESS_KEY_ID", "unknown-key");
    let e = stderr_of(cmd);
    assert!(e.contains("InvalidAccessKeyId"), "{e}");

    let mut cmd = server.mount_cmd(BUCKET, &mp);
    cmd.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY");
    let e = stderr_of(cmd);
    assert!(e.contains("no AWS credentials"), "{e}");

    let mut cmd = clean_command(cwfs_bin());
    cmd.args(["mount", BUCKET]).arg(&mp);
    let e = stderr_of(cmd);
    assert!(e.contains("--region"), "{e}");

    let e = stderr_of(server.mount_cmd(BUCKET, &dir.path().join("missing")));
    assert!(e.contains("mkdir -p"), "{e}");

    let mut cmd = clean_command(cwfs_bin());
    cmd.args([
        "mount",
        "--endpoint-url",
        "http://127.0.0.1:1",
        "--region",
        "r",
        "--force-path-style",
        BUCKET,
    ])
    .arg(&mp)
    .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
    let e = stderr_of(cmd);
    assert!(e.contains("cannot reach"), "{e}");
}

#[test]
fn virtual_hosted_addressing_by_default() {
    // The default addressing puts the bucket in the host name. Resolve
    // BUCKET.localhost only inside a private mount namespace with its own
    // /etc/hosts; the machine's /etc/hosts is never touched.
    let server = Server::start();
    server.put("vh.txt", b"virtual".to_vec());
    let dir = TempDir::new("vhost");
    let mp = dir.path().join("m");
    fs::create_dir(&mp).unwrap();
    let hosts = dir.path().join("hosts");
    fs::write(&hosts, format!("127.0.0.1 localhost {BUCKET}.localhost\n")).unwrap();
    let script = r#"
        set -e
        trap 'umount -l "$MP" 2>/dev/null || true' EXIT
        mount --bind "$HOSTS" /etc/hosts
        "$CWFS" mount --endpoint-url "$EP" --region "$REGION" "$BUCKET" "$MP"
        cat "$MP/vh.txt"
        umount "$MP"
        echo " done"
    "#;
    let mut cmd = clean_command("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", script])
        .env("HOSTS", &hosts)
        .env("MP", &mp)
        .env("CWFS", cwfs_bin())
        .env("EP", format!("http://localhost:{}", server.s3.port()))
        .env("REGION", server.s3.region())
        .env("BUCKET", BUCKET)
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
    let out = run_bounded(cmd, Duration::from_secs(90));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "virtual done");
}

#[test]
fn sigterm_with_reads_in_flight_exits_cleanly() {
    let server = Server::start();
    let data = pattern(3, 64 << 20);
    server.put("big.bin", data.clone());
    let mut m = server.mount(BUCKET, &["--cache-size", "8MiB"]);
    let path = m.path("big.bin");
    let reader = std::thread::spawn(move || {
        // Keep reading (slowly) with the file open across the shutdown.
        let f = fs::File::open(&path).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut off = 0u64;
        loop {
            match f.read_at(&mut buf, off) {
                Ok(0) => return Ok(off),
                Ok(n) => {
                    assert!(
                        buf[..n] == data[off as usize..off as usize + n],
                        "wrong bytes at {off}"
                    );
                    off += n as u64;
                }
                Err(e) => return Err(e),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let st = Command::new("kill")
        .arg("-TERM")
        .arg(m.pid().to_string())
        .status()
        .unwrap();
    assert!(st.success());
    let status = m.wait_exit();
    assert!(
        status.success(),
        "exit status {status} after SIGTERM with reads in flight"
    );
    assert!(!is_mounted(&m.mountpoint));
    // The reader either finished or got a clean error; it did not hang.
    match reader.join().unwrap() {
        Ok(n) => assert_eq!(n, 64 << 20),
        Err(e) => assert!(
            matches!(
                e.raw_os_error(),
                Some(libc::ENOTCONN) | Some(libc::EIO) | Some(libc::ECONNABORTED)
            ),
            "{e}"
        ),
    }
}

#[test]
fn extended_attributes_are_not_supported() {
    let server = Server::start();
    server.put("f", b"x".to_vec());
    let m = server.mount(BUCKET, &[]);
    let path = std::ffi::CString::new(m.path("f").into_os_string().into_encoded_bytes()).unwrap();
    let mut buf = [0u8; 64];
    for _ in 0..2 {
        // SAFETY: valid NUL-terminated strings and a buffer of the given size.
        let r = unsafe {
            libc::lgetxattr(
                path.as_ptr(),
                c"user.x".as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        assert_eq!(r, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EOPNOTSUPP)
        );
        // SAFETY: as above.
        let r = unsafe { libc::llistxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        assert!(r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EOPNOTSUPP));
    }
    assert_eq!(fs::read(m.path("f")).unwrap(), b"x");
}

#[test]
fn https_endpoint_with_a_private_ca() {
    let dir = TempDir::new("tls");
    let certs = TestCerts::generate(dir.path());
    let server = Server::start_tls(&certs);
    assert!(server.s3.endpoint().starts_with("https://"));
    let data = pattern(7, 24 << 20);
    server.put("data/model.bin", data.clone());
    let ca = certs.ca_cert.to_str().unwrap();

    // Trusted through --ca-bundle: reads are byte-exact over TLS.
    let m = server.mount(BUCKET, &["--ca-bundle", ca]);
    assert_eq!(fs::read(m.path("data/model.bin")).unwrap(), data);
    let names: Vec<_> = fs::read_dir(m.path("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["model.bin"]);
    drop(m);

    // Or through AWS_CA_BUNDLE, as the AWS tools read it.
    let mp = dir.path().join("m");
    fs::create_dir(&mp).unwrap();
    let mut cmd = server.mount_cmd(BUCKET, &mp);
    cmd.env("AWS_CA_BUNDLE", ca);
    let out = run_bounded(cmd, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut head = vec![0u8; 4096];
    fs::File::open(mp.join("data/model.bin"))
        .unwrap()
        .read_exact(&mut head)
        .unwrap();
    assert_eq!(head, data[..4096]);
    let out = run_bounded(
        {
            let mut c = Command::new("umount");
            c.arg(&mp);
            c
        },
        Duration::from_secs(30),
    );
    assert!(out.status.success());

    // Untrusted: the mount fails at once (a certificate is not retried)
    // and says what to do.
    let out = run_bounded(server.mount_cmd(BUCKET, &mp), Duration::from_secs(60));
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("TLS") && e.contains("--ca-bundle") && e.contains("certificate"),
        "{e}"
    );
    eprintln!("untrusted: {e}");
    assert!(!e.contains("attempts"), "a TLS failure is not retried: {e}");
    assert!(!is_mounted(&mp));

    // A bundle that is not PEM is refused with its path.
    let bogus = dir.path().join("bogus.pem");
    fs::write(&bogus, "not a certificate").unwrap();
    let mut cmd = server.mount_cmd(BUCKET, &mp);
    cmd.arg("--ca-bundle").arg(&bogus);
    let out = run_bounded(cmd, Duration::from_secs(60));
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("CA bundle") && e.contains("bogus.pem"), "{e}");
}

#[test]
fn remounting_right_after_umount_keeps_the_new_mount() {
    // An old daemon still exiting after `umount` must never unmount the
    // new mount at the same path. A full cache makes its exit slow, which
    // widens the window.
    let server = Server::start();
    server.put("big.bin", pattern(3, 512 << 20));
    server.put("small.txt", b"still here".to_vec());
    for round in 0..3 {
        let mut old = server.mount(BUCKET, &["--cache-size", "1GiB"]);
        assert_eq!(fs::read(old.path("big.bin")).unwrap().len(), 512 << 20);
        let mp: std::path::PathBuf = old.path("").components().collect();
        let out = run_bounded(
            {
                let mut c = Command::new("umount");
                c.arg(&mp);
                c
            },
            Duration::from_secs(30),
        );
        assert!(out.status.success());
        let log = old
            .path("")
            .parent()
            .unwrap()
            .join(format!("new-{round}.log"));
        let mut cmd = server.mount_cmd(BUCKET, &mp);
        cmd.arg("--log-file").arg(&log);
        let out = run_bounded(cmd, Duration::from_secs(60));
        assert!(
            out.status.success(),
            "round {round}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let new_pid = daemon_pid(&log);
        assert!(old.wait_exit().success());
        std::thread::sleep(Duration::from_millis(300));
        let alive =
            is_mounted(&mp) && fs::read(mp.join("small.txt")).is_ok_and(|d| d == b"still here");
        // Clean up the new daemon (ours, by PID) before asserting.
        let _ = Command::new("umount").arg(&mp).status();
        assert!(
            wait_pid_gone(new_pid, Duration::from_secs(30)),
            "new daemon did not exit"
        );
        assert!(
            alive,
            "round {round}: the old daemon's exit took the new mount away; new daemon's log:\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        );
    }
}

#[test]
fn a_new_mount_waits_for_the_previous_daemon_of_its_mountpoint() {
    // A daemon holds a lock on its mountpoint directory until it has
    // exited; stand in for one that is still exiting by holding it here.
    use std::os::fd::AsRawFd;
    let server = Server::start();
    server.put("f", b"ok".to_vec());
    let dir = TempDir::new("lock");
    let mp = dir.path().join("m");
    fs::create_dir(&mp).unwrap();
    let held = fs::File::open(&mp).unwrap();
    assert_eq!(
        unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    let log = dir.path().join("cwfs.log");
    let mut cmd = server.mount_cmd(BUCKET, &mp);
    cmd.arg("--log-file").arg(&log);
    let mut child = ChildGuard(
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    // It waits (and says so) instead of mounting.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("waiting for the previous cwfs")
    {
        assert!(std::time::Instant::now() < deadline, "no waiting message");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!is_mounted(&mp));
    // Released: it mounts.
    drop(held);
    let status = wait_bounded(&mut child.0, Duration::from_secs(60)).expect("mount returns");
    assert!(status.success());
    assert_eq!(fs::read(mp.join("f")).unwrap(), b"ok");
    let pid = daemon_pid(&log);
    assert!(Command::new("umount").arg(&mp).status().unwrap().success());
    assert!(
        wait_pid_gone(pid, Duration::from_secs(30)),
        "daemon did not exit"
    );
}
