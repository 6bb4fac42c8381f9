//! The `cwfs` command, and `mount.cwfs` (the mount(8) helper) when invoked
//! under that name.

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;

use cwfs::config::{Cli, Command, Environment};
use cwfs::daemon::{self, ReadyPipe};
use cwfs::fstab;
use cwfs::logging::{self, LogTarget};

/// mount(8)'s exit status for "mount failure".
const MOUNT_FAILURE: u8 = 32;

fn main() -> ExitCode {
    // A fixed mmap threshold: blocks of a MiB and more are mmapped and
    // returned to the system when freed. glibc's default threshold adapts
    // upwards after the first large free, after which freed blocks stay in
    // the heap and the process grows past the cache budget.
    // SAFETY: mallopt only sets an allocator parameter; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 512 << 10);
    }
    let mut ready = ReadyPipe::from_env();
    let mut args: Vec<OsString> = std::env::args_os().collect();
    let argv0 = args.first().cloned().unwrap_or_default();
    if fstab::invoked_as_helper(&argv0) {
        return mount_helper(&args[1..]);
    }
    let cli = Cli::parse_from(&args);
    let Command::Mount(m) = cli.command;
    let cfg = match m.resolve(&Environment::from_process()) {
        Ok(c) => c,
        Err(msg) => return fail(&mut ready, "cwfs", &msg),
    };
    if !cfg.foreground && ready.is_none() {
        // Parent of a daemon: start the child and wait for its verdict.
        args.remove(0);
        return ExitCode::from(daemon::spawn_and_wait(&args) as u8);
    }
    let target = match (&cfg.log_file, ready.is_some()) {
        (Some(path), _) => LogTarget::File(path),
        (None, true) => LogTarget::Syslog,
        (None, false) => LogTarget::Stderr,
    };
    let logs_to_stderr = matches!(target, LogTarget::Stderr);
    if let Err(msg) = logging::init(cfg.log_level, target) {
        return fail(&mut ready, "cwfs", &msg);
    }
    // A panic is a bug in one request: its task ends, the kernel gets EIO
    // for that request (a dropped reply answers EIO), and the mount lives
    // on. Say so in the log instead of a backtrace on a closed stderr.
    std::panic::set_hook(Box::new(|info| {
        tracing::error!(
            "internal error (a bug in cwfs, please report it): {info}; the request failed with EIO and the mount continues"
        );
    }));
    let result = cwfs::mount::run(cfg, || {
        if let Some(r) = ready.as_mut() {
            r.ready();
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !logs_to_stderr {
                tracing::error!("{e}");
            }
            fail(&mut ready, "cwfs", &e.to_string())
        }
    }
}

/// `mount.cwfs SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS]`.
fn mount_helper(args: &[OsString]) -> ExitCode {
    let call = match fstab::parse_helper(args) {
        Ok(c) => c,
        Err(msg) => {
            eprintln!("mount.cwfs: error: {msg}");
            return ExitCode::FAILURE;
        }
    };
    if call.verbose && !call.ignored.is_empty() {
        eprintln!("mount.cwfs: ignoring options: {}", call.ignored.join(","));
    }
    let mut argv: Vec<OsString> = vec!["cwfs".into()];
    argv.extend(call.argv.iter().cloned());
    let cli = match Cli::try_parse_from(&argv) {
        Ok(c) => c,
        Err(e) => {
            // clap's first line names the option and the bad value; its
            // usage lines speak of `cwfs mount`, which would confuse here.
            let text = e.to_string();
            let first = text
                .lines()
                .next()
                .unwrap_or("")
                .trim_start_matches("error: ");
            eprintln!("mount.cwfs: error: {first} (mount options are the `cwfs mount` options without the leading --)");
            return ExitCode::FAILURE;
        }
    };
    let Command::Mount(m) = cli.command;
    let cfg = match m.resolve(&Environment::from_process()) {
        Ok(c) => c,
        Err(msg) => {
            eprintln!("mount.cwfs: error: {msg}");
            return ExitCode::FAILURE;
        }
    };
    if call.verbose {
        eprintln!(
            "mount.cwfs: mounting {} on {}",
            cfg.source.display_name(),
            cfg.mountpoint.display()
        );
    }
    if call.fake {
        return ExitCode::SUCCESS;
    }
    match daemon::spawn_and_wait(&call.argv) {
        0 => ExitCode::SUCCESS,
        _ => ExitCode::from(MOUNT_FAILURE),
    }
}

fn fail(ready: &mut Option<ReadyPipe>, prog: &str, msg: &str) -> ExitCode {
    match ready {
        Some(r) => r.failed(msg),
        None => eprintln!("{prog}: error: {msg}"),
    }
    ExitCode::FAILURE
}
