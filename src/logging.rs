//! Logging setup: stderr in the foreground, a file with `--log-file`, syslog
//! (ident `cwfs`) for a daemon without a log file.
//!
//! `--log-level` sets the verbosity of cwfs's own modules. Dependencies (the
//! AWS SDK, hyper, fuser) are capped at WARN whatever the level, because
//! their debug and trace output can include request headers such as the
//! session token, which must never reach a log.

use std::ffi::CString;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Mutex;

use tracing::Level;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::config::LogLevel;

/// Where log lines go.
pub enum LogTarget<'a> {
    Stderr,
    File(&'a Path),
    Syslog,
}

/// Install the global subscriber. Errors say which file could not be opened.
pub fn init(level: LogLevel, target: LogTarget<'_>) -> Result<(), String> {
    // fuser warns about a second unmount attempt after every external
    // `umount`; its real problems are errors.
    let filter = EnvFilter::new(format!("warn,fuser=error,cwfs={}", level.as_str()));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let result = match target {
        LogTarget::Stderr => builder
            .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
            .with_writer(io::stderr)
            .try_init(),
        LogTarget::File(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("cannot open log file {}: {e}", path.display()))?;
            builder
                .with_ansi(false)
                .with_writer(Mutex::new(file))
                .try_init()
        }
        LogTarget::Syslog => builder
            .with_ansi(false)
            .without_time()
            .with_writer(Syslog::open())
            .try_init(),
    };
    result.map_err(|e| format!("cannot set up logging: {e}"))
}

/// Writes each formatted event to syslog(3) at the event's priority.
struct Syslog;

impl Syslog {
    fn open() -> Syslog {
        static IDENT: &[u8] = b"cwfs\0";
        // SAFETY: IDENT is a static NUL-terminated string that outlives every
        // later syslog call, as openlog requires.
        unsafe { libc::openlog(IDENT.as_ptr().cast(), libc::LOG_PID, libc::LOG_DAEMON) };
        Syslog
    }
}

pub struct SyslogLine {
    priority: libc::c_int,
    buf: Vec<u8>,
}

impl Write for SyslogLine {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogLine {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.buf);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let Ok(c) = CString::new(line.replace('\0', " ")) else {
                continue;
            };
            // SAFETY: both pointers are valid NUL-terminated strings; the
            // "%s" format consumes exactly one string argument.
            unsafe { libc::syslog(self.priority, c"%s".as_ptr(), c.as_ptr()) };
        }
    }
}

impl<'a> MakeWriter<'a> for Syslog {
    type Writer = SyslogLine;

    fn make_writer(&'a self) -> SyslogLine {
        SyslogLine {
            priority: libc::LOG_INFO,
            buf: Vec::new(),
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> SyslogLine {
        let priority = match *meta.level() {
            Level::ERROR => libc::LOG_ERR,
            Level::WARN => libc::LOG_WARNING,
            Level::INFO => libc::LOG_INFO,
            _ => libc::LOG_DEBUG,
        };
        SyslogLine {
            priority,
            buf: Vec::new(),
        }
    }
}
