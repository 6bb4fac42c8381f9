//! Running one mount: from a validated [`MountConfig`] to a live FUSE mount
//! and back to a clean exit.
//!
//! Order: check the mountpoint, build the runtime, load credentials, build
//! the store and check the bucket answers, mount, confirm the mount answers
//! (then report readiness), wait for `umount` or SIGINT/SIGTERM, unmount,
//! exit 0. Any failure before readiness is a [`MountError`] whose message
//! says what failed and what to fix.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fuser::{Config, MountOption, SessionACL};

use crate::config::MountConfig;
use crate::fs::{Fs, FsConfig};
use crate::read::BlockCache;
use crate::store::s3::{S3Settings, S3Store};
use crate::store::{ObjectStore, StoreErrorKind};

/// How long open files may keep a signalled mount alive before cwfs exits.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// fuser worker threads: each only decodes and hands requests to tokio.
const FUSE_THREADS: usize = 4;

/// Why the mount could not be set up.
#[derive(Debug)]
pub struct MountError(pub String);

impl std::fmt::Display for MountError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn err(msg: impl Into<String>) -> MountError {
    MountError(msg.into())
}

/// Mount and serve until unmounted. `on_ready` is called once the mount
/// answers; errors before that are returned.
pub fn run(cfg: MountConfig, on_ready: impl FnOnce()) -> Result<(), MountError> {
    let mountpoint = check_mountpoint(&cfg.mountpoint)?;
    // Held until this process exits (see `lock_mountpoint`).
    let _lock = lock_mountpoint(&mountpoint)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("cwfs-io")
        .build()
        .map_err(|e| err(format!("cannot start the I/O runtime: {e}")))?;

    let store = rt.block_on(connect(&cfg))?;
    let cache = BlockCache::new(store.clone(), cfg.read);
    let fs = Arc::new(Fs::new(
        FsConfig {
            prefix: cfg.source.prefix.clone(),
            uid: cfg.uid,
            gid: cfg.gid,
            file_mode: cfg.file_mode,
            dir_mode: cfg.dir_mode,
            metadata_ttl: cfg.metadata_ttl,
            read_only: cfg.read_only,
            max_idle_inodes: cfg.max_idle_inodes,
        },
        store,
        cache,
    ));

    let mut options = vec![
        MountOption::FSName(cfg.source.display_name()),
        MountOption::Subtype("cwfs".into()),
        MountOption::DefaultPermissions,
    ];
    options.extend(kernel_flags(&cfg.kernel_flags));
    if cfg.read_only {
        options.push(MountOption::RO);
    }
    let mut fuse_config = Config::default();
    fuse_config.mount_options = options;
    fuse_config.acl = if cfg.allow_other {
        SessionACL::All
    } else if cfg.allow_root {
        SessionACL::RootAndOwner
    } else {
        SessionACL::Owner
    };
    fuse_config.n_threads = Some(FUSE_THREADS);
    fuse_config.clone_fd = true;

    let glue = crate::fuse::FuseFs::new(fs, rt.handle().clone());
    let mut session = fuser::Session::new(glue, &mountpoint, &fuse_config).map_err(|e| {
        err(format!(
            "mounting {} failed: {e} (cwfs needs /dev/fuse and root, or the fuse3 package's \
             fusermount3 for unprivileged mounts; --allow-other and --allow-root for non-root \
             users need user_allow_other in /etc/fuse.conf)",
            mountpoint.display()
        ))
    })?;
    let mut unmounter = session.unmount_callable();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let serve = std::thread::Builder::new()
        .name("fuse-session".into())
        .spawn(move || {
            let result = session.run();
            let _ = done_tx.send(());
            result
        })
        .map_err(|e| err(format!("cannot start the FUSE session thread: {e}")))?;

    // The mount answers once a stat of the mountpoint goes through us.
    if let Err(e) = std::fs::metadata(&mountpoint) {
        let _ = unmounter.unmount();
        return Err(err(format!(
            "the new mount at {} does not answer: {e}",
            mountpoint.display()
        )));
    }
    raise_read_ahead(&mountpoint);
    tracing::info!(
        source = %cfg.source.display_name(),
        mountpoint = %mountpoint.display(),
        endpoint = %cfg.endpoint_url,
        region = %cfg.region,
        pid = std::process::id(),
        "mounted"
    );
    on_ready();

    let mut done_rx = done_rx;
    let unmount_requested = rt.block_on(async {
        tokio::select! {
            _ = &mut done_rx => false,
            sig = shutdown_signal() => {
                tracing::info!(signal = sig, "unmounting on signal");
                true
            }
        }
    });
    if unmount_requested {
        if let Err(e) = unmounter.unmount() {
            tracing::warn!(error = %e, "unmount failed (files still open?); detaching lazily");
            lazy_unmount(&mountpoint);
        }
        // After a lazy detach, open files keep the connection alive. Give
        // their readers a grace period, then exit anyway: closing
        // /dev/fuse ends the connection, and their next reads fail.
        let ended = rt.block_on(async { tokio::time::timeout(SHUTDOWN_GRACE, &mut done_rx).await });
        if ended.is_err() {
            tracing::warn!(
                grace_s = SHUTDOWN_GRACE.as_secs(),
                "files are still open after the grace period; closing the FUSE connection"
            );
            rt.shutdown_timeout(Duration::from_secs(1));
            tracing::info!(mountpoint = %mountpoint.display(), "unmounted");
            return Ok(());
        }
    }
    match serve.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "the FUSE session ended with an error"),
        Err(_) => tracing::error!("the FUSE session thread panicked"),
    }
    // Requests still running on the runtime get a short grace period.
    rt.shutdown_timeout(Duration::from_secs(5));
    tracing::info!(mountpoint = %mountpoint.display(), "unmounted");
    Ok(())
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        // Without signal handlers we can only wait for umount.
        std::future::pending::<()>().await;
        unreachable!()
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

/// The kernel flags: nosuid, nodev and noatime unless asked otherwise.
fn kernel_flags(asked: &[String]) -> Vec<MountOption> {
    let has = |f: &str| asked.iter().any(|a| a == f);
    let mut out = vec![
        if has("suid") {
            MountOption::Suid
        } else {
            MountOption::NoSuid
        },
        if has("dev") {
            MountOption::Dev
        } else {
            MountOption::NoDev
        },
        if has("atime") {
            MountOption::Atime
        } else {
            MountOption::NoAtime
        },
    ];
    for (flag, opt) in [
        ("noexec", MountOption::NoExec),
        ("exec", MountOption::Exec),
        ("sync", MountOption::Sync),
        ("async", MountOption::Async),
        ("dirsync", MountOption::DirSync),
    ] {
        if has(flag) {
            out.push(opt);
        }
    }
    out
}

/// The kernel caps FUSE read-ahead at 128 KiB at INIT; raising the mount's
/// backing-device read-ahead afterwards gives 1 MiB reads (max_pages) and
/// lets the kernel keep several of them in flight for a sequential reader.
const READ_AHEAD_KB: u32 = 4096;

fn raise_read_ahead(mountpoint: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(md) = std::fs::metadata(mountpoint) else {
        return;
    };
    let dev = md.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let path = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    match std::fs::write(&path, READ_AHEAD_KB.to_string()) {
        Ok(()) => tracing::debug!(path, kb = READ_AHEAD_KB, "raised the kernel read-ahead"),
        Err(e) => {
            tracing::debug!(path, error = %e, "could not raise the kernel read-ahead (needs root); reads stay at 128 KiB")
        }
    }
}

fn lazy_unmount(mountpoint: &Path) {
    let Ok(c) = std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes()) else {
        return;
    };
    // SAFETY: c is a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        tracing::error!(error = %std::io::Error::last_os_error(), "lazy unmount failed; run `umount -l {}`", mountpoint.display());
    }
}

/// How long a new mount waits for an earlier cwfs of the same mountpoint to
/// finish exiting (its grace period for open files, plus its shutdown).
const LOCK_WAIT: Duration = Duration::from_secs(30);

/// Lock the mountpoint directory (the one under the mount) for the life of
/// this process.
///
/// A daemon whose mount was unmounted is still exiting for a moment, and
/// fuser, when its session ends, unmounts the session's path again whether
/// or not that is still its own mount; a new mount made at the same path in
/// that moment would be taken away. The lock makes a new mount wait until
/// the old process is gone.
fn lock_mountpoint(mountpoint: &Path) -> Result<std::fs::File, MountError> {
    use std::os::fd::AsRawFd;
    let dir = std::fs::File::open(mountpoint).map_err(|e| {
        err(format!(
            "cannot open mountpoint {}: {e}",
            mountpoint.display()
        ))
    })?;
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    let mut logged = false;
    loop {
        // SAFETY: a valid open descriptor; flock has no memory effects.
        if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(err(format!(
                "cannot lock mountpoint {}: {e}",
                mountpoint.display()
            )));
        }
        if is_mount_point(mountpoint) {
            return Err(busy(mountpoint));
        }
        if std::time::Instant::now() >= deadline {
            return Err(err(format!(
                "another cwfs process for {} is still shutting down after {}s (it holds the \
                 mountpoint's lock): wait for it to exit, or find it with `pgrep -af 'cwfs mount'`",
                mountpoint.display(),
                LOCK_WAIT.as_secs()
            )));
        }
        if !logged {
            tracing::info!(mountpoint = %mountpoint.display(), "waiting for the previous cwfs of this mountpoint to exit");
            logged = true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Another mount may have been made while we waited.
    if is_mount_point(mountpoint) {
        return Err(busy(mountpoint));
    }
    Ok(dir)
}

fn busy(mountpoint: &Path) -> MountError {
    err(format!(
        "{} is already a mount point: unmount it first (`umount {}`) or choose another directory",
        mountpoint.display(),
        mountpoint.display()
    ))
}

/// The mountpoint must be an existing directory with nothing mounted on it.
fn check_mountpoint(path: &Path) -> Result<PathBuf, MountError> {
    let abs = std::fs::canonicalize(path).map_err(|e| {
        err(format!(
            "mountpoint {} is not usable: {e} (create it first with `mkdir -p {}`; if it says \
             \"Transport endpoint is not connected\", a dead mount is still there: run `umount {}`)",
            path.display(),
            path.display(),
            path.display()
        ))
    })?;
    if !abs.is_dir() {
        return Err(err(format!(
            "mountpoint {} is not a directory",
            abs.display()
        )));
    }
    if is_mount_point(&abs) {
        return Err(busy(&abs));
    }
    Ok(abs)
}

/// Is `path` listed as a mount point in /proc/self/mountinfo?
fn is_mount_point(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| unescape_mountinfo(mp) == want)
}

/// mountinfo escapes space, tab, newline and backslash as octal `\NNN`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Credentials, the store, and one LIST to prove the bucket answers.
async fn connect(cfg: &MountConfig) -> Result<Arc<dyn ObjectStore>, MountError> {
    let creds = crate::creds::start(&cfg.credentials, &cfg.region)
        .await
        .map_err(|e| err(e.to_string()))?;
    let mut settings = S3Settings::new(
        &cfg.source.bucket,
        &cfg.endpoint_url,
        &cfg.region,
        cfg.force_path_style,
    );
    settings.max_connections = cfg.max_connections as usize;
    settings.retry = cfg.retry;
    settings.stall_timeout = cfg.stall_timeout;
    settings.ca_bundle = cfg.ca_bundle.clone();
    let store = S3Store::new(&settings, creds).map_err(err)?;
    let bucket = &cfg.source.bucket;
    let endpoint = &cfg.endpoint_url;
    if let Err(e) = store.list_page(&cfg.source.prefix, None, 1).await {
        let msg = match e.kind {
            StoreErrorKind::NoSuchBucket => format!(
                "bucket `{bucket}` does not exist at {endpoint}: check the bucket name and --endpoint-url"
            ),
            StoreErrorKind::AccessDenied | StoreErrorKind::CredentialsExpired => format!(
                "access to bucket `{bucket}` was denied ({}): check the credentials (AWS_ACCESS_KEY_ID/\
                 AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or AWS_CONTAINER_AUTHORIZATION_TOKEN on CoreWeave), \
                 the bucket policy, and that --region is the bucket's region",
                e.code.as_deref().unwrap_or("403")
            ),
            StoreErrorKind::Timeout | StoreErrorKind::Network => format!(
                "cannot reach {endpoint} ({e}): check --endpoint-url and the network{}",
                if cfg.force_path_style {
                    ""
                } else {
                    "; with virtual-hosted addressing BUCKET.HOST must resolve (use --force-path-style for servers that need it)"
                }
            ),
            StoreErrorKind::Tls => format!(
                "the TLS connection to {endpoint} failed ({e}): if the server's certificate comes from \
                 a private CA, pass it with --ca-bundle PATH (or AWS_CA_BUNDLE); otherwise install \
                 ca-certificates and check that the endpoint's host name matches its certificate"
            ),
            _ => format!("cannot list bucket `{bucket}` at {endpoint}: {e}"),
        };
        return Err(err(msg));
    }
    Ok(Arc::new(store))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_unescapes() {
        assert_eq!(unescape_mountinfo(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape_mountinfo(r"/x\134y"), r"/x\y");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }

    #[test]
    fn root_is_a_mount_point() {
        assert!(is_mount_point(Path::new("/")));
    }
}
