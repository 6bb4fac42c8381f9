//! Filesystem errors and the one place where errnos are decided.
//!
//! Every failure of a file operation ends up as an [`Error`]; [`Error::errno`]
//! is the only mapping from causes to errno values in cwfs, and
//! [`Error::log_level`] says how loudly the FUSE glue logs it.

use thiserror::Error;
use tracing::Level;

use crate::store::{StoreError, StoreErrorKind};

#[derive(Debug, Error)]
pub enum Error {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("no such file or directory")]
    NotFound,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("the mount is read-only (writes are not supported yet)")]
    ReadOnly,
    #[error("name longer than 255 bytes")]
    NameTooLong,
    #[error("unknown file handle {0}")]
    BadHandle(u64),
    #[error(
        "the object `{0}` changed since it was opened; reopen the file to read the new version"
    )]
    Stale(String),
    #[error("operation not supported")]
    NotSupported,
    /// Extended attributes are not supported. Answered with ENOSYS, which
    /// the kernel remembers: it stops sending xattr requests (applications
    /// get EOPNOTSUPP), saving `ls -l` a round trip or two per entry.
    #[error("extended attributes are not supported")]
    XattrsUnsupported,
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The errno the kernel gets for this error. The only such mapping.
    pub fn errno(&self) -> i32 {
        match self {
            Error::NotFound => libc::ENOENT,
            Error::NotDir => libc::ENOTDIR,
            Error::IsDir => libc::EISDIR,
            Error::ReadOnly => libc::EROFS,
            Error::NameTooLong => libc::ENAMETOOLONG,
            Error::BadHandle(_) => libc::EBADF,
            Error::Stale(_) => libc::ESTALE,
            Error::NotSupported => libc::ENOTSUP,
            Error::XattrsUnsupported => libc::ENOSYS,
            Error::Internal(_) => libc::EIO,
            Error::Store(e) => match e.kind {
                StoreErrorKind::NotFound | StoreErrorKind::NoSuchBucket => libc::ENOENT,
                StoreErrorKind::AccessDenied
                | StoreErrorKind::CredentialsExpired
                | StoreErrorKind::NoCredentials => libc::EACCES,
                StoreErrorKind::PreconditionFailed => libc::ESTALE,
                StoreErrorKind::InvalidRange
                | StoreErrorKind::Timeout
                | StoreErrorKind::Network
                | StoreErrorKind::Tls
                | StoreErrorKind::Server
                | StoreErrorKind::Protocol
                | StoreErrorKind::Other => libc::EIO,
            },
        }
    }

    /// How loudly to log this error: expected outcomes (a missing name, a
    /// write to a read-only mount) at DEBUG, failures of the store at WARN.
    pub fn log_level(&self) -> Level {
        match self {
            Error::NotFound
            | Error::NotDir
            | Error::IsDir
            | Error::ReadOnly
            | Error::NameTooLong
            | Error::NotSupported
            | Error::XattrsUnsupported => Level::DEBUG,
            Error::Store(e) if e.kind == StoreErrorKind::NotFound => Level::DEBUG,
            Error::BadHandle(_) | Error::Stale(_) | Error::Store(_) => Level::WARN,
            Error::Internal(_) => Level::ERROR,
        }
    }

    /// A store NotFound becomes a plain NotFound; everything else as is.
    pub fn from_store(e: StoreError) -> Error {
        match e.kind {
            StoreErrorKind::NotFound => Error::NotFound,
            StoreErrorKind::PreconditionFailed => Error::Stale(e.key),
            _ => Error::Store(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errnos() {
        let store = |k| Error::Store(StoreError::new(k, "GetObject", "k", ""));
        assert_eq!(store(StoreErrorKind::AccessDenied).errno(), libc::EACCES);
        assert_eq!(store(StoreErrorKind::Server).errno(), libc::EIO);
        assert_eq!(
            store(StoreErrorKind::PreconditionFailed).errno(),
            libc::ESTALE
        );
        assert_eq!(Error::ReadOnly.errno(), libc::EROFS);
        let e = Error::from_store(StoreError::new(
            StoreErrorKind::NotFound,
            "HeadObject",
            "k",
            "",
        ));
        assert_eq!(e.errno(), libc::ENOENT);
        assert_eq!(e.log_level(), Level::DEBUG);
    }
}
