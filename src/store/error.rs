//! Typed errors of the object store.
//!
//! A [`StoreError`] carries a [`StoreErrorKind`] (what the layers above decide
//! on: `fs::error` turns kinds into errnos), the operation, the key, and a
//! human-readable detail from the server or the transport. Details never hold
//! credentials: the SDK's error display does not print them, and we never add
//! request headers to messages.

use std::fmt;

/// What went wrong, as far as callers need to distinguish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreErrorKind {
    /// No object with that key (404 NoSuchKey / HEAD 404).
    NotFound,
    /// The bucket does not exist (404 NoSuchBucket).
    NoSuchBucket,
    /// 403: access denied, invalid access key or signature mismatch.
    AccessDenied,
    /// The credentials expired or the session token is invalid
    /// (ExpiredToken, InvalidToken, TokenRefreshRequired).
    CredentialsExpired,
    /// No credentials could be found or loaded.
    NoCredentials,
    /// The object changed since it was opened (412 on If-Match).
    PreconditionFailed,
    /// The requested range lies outside the object (416).
    InvalidRange,
    /// A timeout (connect, read or whole attempt).
    Timeout,
    /// Connection refused/reset, DNS failure.
    Network,
    /// The TLS handshake failed (an untrusted certificate, a wrong host
    /// name): not retried, a certificate does not change by itself.
    Tls,
    /// The server answered 5xx or throttled (503 SlowDown) after retries.
    Server,
    /// The answer did not parse or made no sense.
    Protocol,
    /// Anything else (other 4xx).
    Other,
}

/// An error from the object store.
#[derive(Debug, Clone)]
pub struct StoreError {
    pub kind: StoreErrorKind,
    /// The operation, e.g. `GetObject`.
    pub op: &'static str,
    /// The key or prefix the operation was about (may be empty).
    pub key: String,
    /// HTTP status, when the server answered.
    pub status: Option<u16>,
    /// The S3 error code, when the server sent one (e.g. `SlowDown`).
    pub code: Option<String>,
    /// What the server or transport said.
    pub detail: String,
}

impl StoreError {
    pub fn new(
        kind: StoreErrorKind,
        op: &'static str,
        key: &str,
        detail: impl Into<String>,
    ) -> Self {
        StoreError {
            kind,
            op,
            key: key.to_string(),
            status: None,
            code: None,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.op)?;
        if !self.key.is_empty() {
            write!(f, " of `{}`", self.key.escape_debug())?;
        }
        write!(f, " failed")?;
        match (self.status, &self.code) {
            (Some(s), Some(c)) => write!(f, " ({s} {c})")?,
            (Some(s), None) => write!(f, " ({s})")?,
            (None, Some(c)) => write!(f, " ({c})")?,
            (None, None) => {}
        }
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

impl std::error::Error for StoreError {}

/// Classify an HTTP status and S3 error code (the wire protocol's own
/// identifiers, not free-text messages).
pub fn classify(status: u16, code: Option<&str>) -> StoreErrorKind {
    match code {
        Some("NoSuchKey") => return StoreErrorKind::NotFound,
        Some("NoSuchBucket") => return StoreErrorKind::NoSuchBucket,
        Some("ExpiredToken" | "InvalidToken" | "TokenRefreshRequired") => {
            return StoreErrorKind::CredentialsExpired
        }
        Some(
            "AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "AllAccessDisabled",
        ) => return StoreErrorKind::AccessDenied,
        Some("PreconditionFailed") => return StoreErrorKind::PreconditionFailed,
        Some("InvalidRange") => return StoreErrorKind::InvalidRange,
        Some("SlowDown" | "InternalError" | "ServiceUnavailable" | "RequestTimeout") => {
            return StoreErrorKind::Server
        }
        _ => {}
    }
    match status {
        404 => StoreErrorKind::NotFound,
        401 | 403 => StoreErrorKind::AccessDenied,
        412 => StoreErrorKind::PreconditionFailed,
        416 => StoreErrorKind::InvalidRange,
        408 | 429 | 500..=599 => StoreErrorKind::Server,
        _ => StoreErrorKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_beat_statuses() {
        assert_eq!(
            classify(404, Some("NoSuchBucket")),
            StoreErrorKind::NoSuchBucket
        );
        assert_eq!(classify(404, None), StoreErrorKind::NotFound);
        assert_eq!(
            classify(400, Some("ExpiredToken")),
            StoreErrorKind::CredentialsExpired
        );
        assert_eq!(
            classify(403, Some("InvalidAccessKeyId")),
            StoreErrorKind::AccessDenied
        );
        assert_eq!(classify(503, Some("SlowDown")), StoreErrorKind::Server);
        assert_eq!(classify(412, None), StoreErrorKind::PreconditionFailed);
        assert_eq!(classify(400, Some("Weird")), StoreErrorKind::Other);
    }

    #[test]
    fn display_names_op_key_and_status() {
        let mut e = StoreError::new(StoreErrorKind::Server, "GetObject", "a/b", "try later");
        e.status = Some(503);
        e.code = Some("SlowDown".into());
        assert_eq!(
            e.to_string(),
            "GetObject of `a/b` failed (503 SlowDown): try later"
        );
    }
}
