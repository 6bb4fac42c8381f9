//! The `cwfs` command.

use std::process::ExitCode;

use clap::Parser;

use cwfs::config::{Cli, Command, Environment};
use cwfs::daemon::{self, ReadyPipe};
use cwfs::logging::{self, LogTarget};

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
    let cli = Cli::parse();
    let Command::Mount(args) = cli.command;
    let cfg = match args.resolve(&Environment::from_process()) {
        Ok(c) => c,
        Err(msg) => return fail(&mut ready, &msg),
    };
    if !cfg.foreground && ready.is_none() {
        // Parent of a daemon: start the child and wait for its verdict.
        let argv: Vec<_> = std::env::args_os().skip(1).collect();
        return ExitCode::from(daemon::spawn_and_wait(&argv) as u8);
    }
    let target = match (&cfg.log_file, ready.is_some()) {
        (Some(path), _) => LogTarget::File(path),
        (None, true) => LogTarget::Syslog,
        (None, false) => LogTarget::Stderr,
    };
    if let Err(msg) = logging::init(cfg.log_level, target) {
        return fail(&mut ready, &msg);
    }
    let result = cwfs::mount::run(cfg, || {
        if let Some(r) = ready.as_mut() {
            r.ready();
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            fail(&mut ready, &e.to_string())
        }
    }
}

fn fail(ready: &mut Option<ReadyPipe>, msg: &str) -> ExitCode {
    match ready {
        Some(r) => r.failed(msg),
        None => eprintln!("cwfs: error: {msg}"),
    }
    ExitCode::FAILURE
}
