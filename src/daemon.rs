//! Daemon mode: `cwfs mount` without `--foreground` starts itself again as a
//! detached child and returns only when the child says the mount answers, or
//! fails with the child's reason.
//!
//! Protocol: the parent creates a pipe and passes the write end's number in
//! `CWFS_READY_FD`. The child writes one line, `READY` or `ERROR <message>`,
//! and closes it. EOF without a line means the child died; the parent
//! reports its exit status. Re-executing (rather than forking a process that
//! already runs threads) keeps the child's runtime clean.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// The environment variable carrying the readiness pipe to the child.
pub const READY_FD_ENV: &str = "CWFS_READY_FD";

/// The child's end of the readiness pipe.
pub struct ReadyPipe {
    file: Option<File>,
}

impl ReadyPipe {
    /// Take the pipe named by `CWFS_READY_FD`, if this process is a daemon
    /// child. The variable is removed so nothing else inherits it.
    pub fn from_env() -> Option<ReadyPipe> {
        let fd: RawFd = std::env::var(READY_FD_ENV).ok()?.parse().ok()?;
        // SAFETY: removing an env var while no other thread runs (this is
        // called first thing in main) cannot race with a reader.
        unsafe { std::env::remove_var(READY_FD_ENV) };
        // SAFETY: fcntl on an arbitrary integer only queries it; we take
        // ownership below only when it is an open descriptor.
        if fd < 3 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return None;
        }
        // SAFETY: the parent passed us this open descriptor for our sole use.
        let file = unsafe { File::from_raw_fd(fd) };
        Some(ReadyPipe { file: Some(file) })
    }

    pub fn ready(&mut self) {
        self.send("READY\n");
    }

    pub fn failed(&mut self, message: &str) {
        self.send(&format!("ERROR {}\n", message.replace('\n', " ")));
    }

    fn send(&mut self, line: &str) {
        if let Some(mut f) = self.file.take() {
            let _ = f.write_all(line.as_bytes());
        }
    }
}

/// Start `args` (this binary's own arguments) as a detached daemon and wait
/// for its verdict. Returns the exit code for the parent.
pub fn spawn_and_wait(args: &[OsString]) -> i32 {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        eprintln!(
            "cwfs: error: cannot create a pipe: {}",
            std::io::Error::last_os_error()
        );
        return 1;
    }
    let (read_fd, write_fd) = (fds[0], fds[1]);
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("cwfs: error: cannot find my own executable: {e}");
            return 1;
        }
    };
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .env(READY_FD_ENV, write_fd.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: between fork and exec only async-signal-safe calls are made
    // (setsid, fcntl), touching no memory of the parent.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            // Let the write end survive exec in the child only.
            let flags = libc::fcntl(write_fd, libc::F_GETFD);
            libc::fcntl(write_fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cwfs: error: cannot start the daemon: {e}");
            return 1;
        }
    };
    // SAFETY: write_fd is ours and is closed exactly once, here.
    unsafe { libc::close(write_fd) };
    // SAFETY: read_fd is ours; File takes sole ownership.
    let mut pipe = unsafe { File::from_raw_fd(read_fd) };
    let mut answer = String::new();
    let _ = pipe.read_to_string(&mut answer);
    let line = answer.lines().next().unwrap_or("");
    if line == "READY" {
        return 0;
    }
    if let Some(msg) = line.strip_prefix("ERROR ") {
        eprintln!("cwfs: error: {msg}");
        let _ = child.wait();
        return 1;
    }
    match child.wait() {
        Ok(status) => eprintln!(
            "cwfs: error: the daemon exited ({status}) before the mount was ready; run with --foreground to see why"
        ),
        Err(e) => eprintln!("cwfs: error: lost the daemon: {e}"),
    }
    1
}
