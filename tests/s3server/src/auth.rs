//! Credentials: the runtime-mutable credential table and its two s3s hooks.
//!
//! * [`CredentialTable`] maps an access key to its secret key, optional session token and optional
//!   expiry. Tests add, replace and revoke entries while the server runs.
//! * [`TableAuth`] implements [`s3s::auth::S3Auth`]: s3s asks it for the secret key of the access
//!   key named in the request, then verifies the SigV4 signature itself (mismatch ->
//!   `403 SignatureDoesNotMatch`). Unknown keys answer `403 InvalidAccessKeyId`, expired entries
//!   `400 ExpiredToken`.
//! * [`TableAccess`] implements [`s3s::access::S3Access`], which s3s runs after the signature has
//!   been verified, with the request headers at hand: it rejects anonymous requests
//!   (`403 AccessDenied`), checks the session token (`x-amz-security-token` header or the
//!   `X-Amz-Security-Token` query parameter of a presigned URL; mismatch or absence ->
//!   `403 InvalidToken`), re-checks expiry and revocation, and (optionally) the region of the
//!   credential scope (`400 AuthorizationHeaderMalformed`, as S3 does).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use hyper::header::HeaderValue;
use hyper::{HeaderMap, Uri};
use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey};
use s3s::{s3_error, S3Error, S3ErrorCode, S3Result};

use crate::StatsInner;

/// One entry of the credential table.
#[derive(Clone, Debug)]
pub struct CredentialEntry {
    /// The secret key used to verify signatures.
    pub secret_key: String,
    /// When set, every request must carry exactly this `x-amz-security-token`.
    pub session_token: Option<String>,
    /// When set and in the past, requests fail with `ExpiredToken`.
    pub expires_at: Option<SystemTime>,
}

impl CredentialEntry {
    fn is_expired(&self, now: SystemTime) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }
}

/// Access key -> credentials, shared between the server and the test that controls it.
#[derive(Default, Debug)]
pub struct CredentialTable {
    map: RwLock<HashMap<String, CredentialEntry>>,
}

impl CredentialTable {
    /// Adds or replaces the credentials of `access_key`.
    pub fn insert(&self, access_key: &str, entry: CredentialEntry) {
        self.map
            .write()
            .unwrap()
            .insert(access_key.to_owned(), entry);
    }

    /// Removes `access_key`; later requests signed with it fail with `InvalidAccessKeyId`.
    pub fn remove(&self, access_key: &str) {
        self.map.write().unwrap().remove(access_key);
    }

    /// The current entry of `access_key`.
    pub fn get(&self, access_key: &str) -> Option<CredentialEntry> {
        self.map.read().unwrap().get(access_key).cloned()
    }
}

fn invalid_access_key() -> S3Error {
    s3_error!(
        InvalidAccessKeyId,
        "The AWS Access Key Id you provided does not exist in our records."
    )
}

fn expired_token() -> S3Error {
    s3_error!(ExpiredToken, "The provided token has expired.")
}

fn invalid_token() -> S3Error {
    let mut e = s3_error!(
        InvalidToken,
        "The provided token is malformed or otherwise invalid."
    );
    e.set_status_code(hyper::StatusCode::FORBIDDEN);
    e
}

/// [`S3Auth`] over a [`CredentialTable`].
pub struct TableAuth {
    pub(crate) table: Arc<CredentialTable>,
    pub(crate) stats: Arc<StatsInner>,
}

#[async_trait::async_trait]
impl S3Auth for TableAuth {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        match self.table.get(access_key) {
            None => Err(invalid_access_key()),
            Some(entry) if entry.is_expired(SystemTime::now()) => {
                // 400, so the HTTP layer's 403 counter does not see it.
                self.stats.auth_failures.fetch_add(1, Ordering::Relaxed);
                Err(expired_token())
            }
            Some(entry) => Ok(SecretKey::from(entry.secret_key)),
        }
    }
}

/// [`S3Access`] over a [`CredentialTable`]: session tokens, expiry, region, anonymous requests.
pub struct TableAccess {
    pub(crate) table: Arc<CredentialTable>,
    pub(crate) stats: Arc<StatsInner>,
    /// When set, the region of the SigV4 credential scope must equal this.
    pub(crate) region: Option<String>,
}

/// The session token a request carries (header, or query parameter of a presigned URL).
pub fn request_session_token(headers: &HeaderMap, uri: &Uri) -> Option<String> {
    if let Some(v) = headers.get("x-amz-security-token") {
        return Some(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    query_param(uri, "X-Amz-Security-Token")
}

/// The region named in the SigV4 credential scope (`Credential=AKID/DATE/REGION/s3/aws4_request`).
pub fn request_scope_region(headers: &HeaderMap, uri: &Uri) -> Option<String> {
    let credential = if let Some(auth) = headers.get(hyper::header::AUTHORIZATION) {
        let auth = auth.to_str().ok()?;
        let start = auth.find("Credential=")? + "Credential=".len();
        let rest = &auth[start..];
        let end = rest.find([',', ' ']).unwrap_or(rest.len());
        rest[..end].to_owned()
    } else {
        query_param(uri, "X-Amz-Credential")?
    };
    // AKID may itself not contain '/', so the region is the third field.
    credential.split('/').nth(2).map(str::to_owned)
}

fn query_param(uri: &Uri, name: &str) -> Option<String> {
    let query = uri.query()?;
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == name {
            return Some(percent_decode(v));
        }
    }
    None
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let (Some(h), Some(l)) = (
                bytes.get(i + 1).and_then(|b| (*b as char).to_digit(16)),
                bytes.get(i + 2).and_then(|b| (*b as char).to_digit(16)),
            ) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[async_trait::async_trait]
impl S3Access for TableAccess {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let Some(creds) = cx.credentials() else {
            return Err(s3_error!(AccessDenied, "Access Denied"));
        };
        let result = self.check_signed(&creds.access_key, cx.headers(), cx.uri());
        if let Err(e) = &result {
            if *e.code() == S3ErrorCode::ExpiredToken
                || *e.code() == S3ErrorCode::AuthorizationHeaderMalformed
            {
                // Not a 403: count it here, the HTTP layer counts only 403s.
                self.stats.auth_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }
}

impl TableAccess {
    fn check_signed(&self, access_key: &str, headers: &HeaderMap, uri: &Uri) -> S3Result<()> {
        // Revoked between signature verification and now.
        let entry = self.table.get(access_key).ok_or_else(invalid_access_key)?;
        if entry.is_expired(SystemTime::now()) {
            return Err(expired_token());
        }
        let presented = request_session_token(headers, uri);
        if presented != entry.session_token {
            return Err(invalid_token());
        }
        if let Some(expected) = &self.region {
            if let Some(region) = request_scope_region(headers, uri) {
                if &region != expected {
                    let mut e = s3_error!(
                        AuthorizationHeaderMalformed,
                        "The authorization header is malformed; the region '{region}' is wrong; expecting '{expected}'"
                    );
                    let mut h = HeaderMap::new();
                    if let Ok(v) = HeaderValue::from_str(expected) {
                        h.insert("x-amz-bucket-region", v);
                    }
                    e.set_headers(h);
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_region_from_header() {
        let mut h = HeaderMap::new();
        h.insert(
            hyper::header::AUTHORIZATION,
            HeaderValue::from_static(
                "AWS4-HMAC-SHA256 Credential=AKID/20240101/us-test-1/s3/aws4_request, SignedHeaders=host, Signature=abc",
            ),
        );
        let uri: Uri = "/b/k".parse().unwrap();
        assert_eq!(request_scope_region(&h, &uri).as_deref(), Some("us-test-1"));
        assert_eq!(request_session_token(&h, &uri), None);
    }

    #[test]
    fn token_and_region_from_query() {
        let h = HeaderMap::new();
        let uri: Uri =
            "/b/k?X-Amz-Credential=AKID%2F20240101%2Feu-x-1%2Fs3%2Faws4_request&X-Amz-Security-Token=a%2Bb%3D"
                .parse()
                .unwrap();
        assert_eq!(request_scope_region(&h, &uri).as_deref(), Some("eu-x-1"));
        assert_eq!(request_session_token(&h, &uri).as_deref(), Some("a+b="));
    }

    #[test]
    fn percent_decode_edges() {
        assert_eq!(percent_decode("abc%"), "abc%");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%41%42"), "AB");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
