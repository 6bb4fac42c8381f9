//! The token exchange: the AWS container-credentials protocol, as CoreWeave
//! uses it to trade an API access token for temporary S3 keys.
//!
//! `GET <uri>` with `Authorization: Bearer <token>` answers
//! `{"AccessKeyId","SecretAccessKey","Token","Expiration"}`. The token is
//! read at every exchange (from a file, so rotated tokens are picked up, or
//! from the value given at start). Errors name the variable or option to fix
//! and never include the token or the keys.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use super::secret::Secret;
use super::time::parse_rfc3339;
use super::{Credentials, FetchError};

/// CoreWeave's API-token exchange endpoint, implied by `--token-file` alone.
pub const COREWEAVE_EXCHANGE_URI: &str =
    "https://api.coreweave.com/v1/cwobject/temporary-credentials/api-token";

/// Where the API token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// A file holding the token (`--token-file`,
    /// `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`), re-read at every exchange.
    File(PathBuf),
    /// The value of `AWS_CONTAINER_AUTHORIZATION_TOKEN`.
    Value(Secret),
}

impl TokenSource {
    /// Where to fix it, for messages.
    pub fn describe(&self) -> String {
        match self {
            TokenSource::File(p) => format!(
                "the token file {} (--token-file / AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE)",
                p.display()
            ),
            TokenSource::Value(_) => "AWS_CONTAINER_AUTHORIZATION_TOKEN".to_string(),
        }
    }

    /// The `Authorization` header value: `Bearer <token>`, whether the
    /// source holds the bare token or `Bearer <token>`, with surrounding
    /// whitespace (a trailing newline) removed.
    pub fn header(&self) -> Result<Secret, FetchError> {
        let raw = match self {
            TokenSource::File(p) => std::fs::read_to_string(p).map_err(|e| {
                FetchError::Config(format!("cannot read the token file {}: {e}", p.display()))
            })?,
            TokenSource::Value(v) => v.expose().to_string(),
        };
        let token = raw.trim();
        let token = match token.split_once(char::is_whitespace) {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
            _ => token,
        };
        if token.is_empty() {
            return Err(FetchError::Config(format!("{} is empty", self.describe())));
        }
        if token.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(FetchError::Config(format!(
                "{} holds more than one token (it contains whitespace or control characters)",
                self.describe()
            )));
        }
        Ok(Secret::new(format!("Bearer {token}")))
    }
}

/// Is `uri` acceptable? `https://` any host; `http://` only for loopback
/// (the AWS SDKs' rule: a token must not travel in the clear).
pub fn check_uri(uri: &str) -> Result<(), String> {
    if let Some(rest) = uri.strip_prefix("https://") {
        if rest.split('/').next().is_some_and(|h| !h.is_empty()) {
            return Ok(());
        }
    } else if let Some(rest) = uri.strip_prefix("http://") {
        let authority = rest.split('/').next().unwrap_or("");
        let host = if let Some(v6) = authority.strip_prefix('[') {
            v6.split(']').next().unwrap_or("")
        } else {
            authority.rsplit_once(':').map_or(authority, |(h, _)| h)
        };
        let loopback = host == "localhost"
            || host == "::1"
            || host
                .parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| ip.is_loopback());
        if loopback {
            return Ok(());
        }
        return Err(format!(
            "credentials URI `{uri}` uses http:// with a non-loopback host: use https:// (http:// is allowed only for 127.0.0.1, ::1 and localhost)"
        ));
    }
    Err(format!(
        "credentials URI `{uri}` must start with https:// (e.g. {COREWEAVE_EXCHANGE_URI})"
    ))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Response {
    access_key_id: String,
    secret_access_key: String,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    expiration: Option<String>,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Parse a credentials response body.
pub fn parse_response(body: &[u8]) -> Result<Credentials, String> {
    let r: Response = serde_json::from_slice(body).map_err(|e| {
        // Only the category and position: serde_json's message may quote a
        // value, and values here are secrets.
        format!(
            "the response is not the expected JSON ({:?} error at line {} column {}; expected AccessKeyId, SecretAccessKey, Token, Expiration)",
            e.classify(),
            e.line(),
            e.column()
        )
    })?;
    if r.access_key_id.is_empty() || r.secret_access_key.is_empty() {
        return Err("the response has an empty AccessKeyId or SecretAccessKey".into());
    }
    let expires_at = match r.expiration.as_deref() {
        Some(e) => Some(parse_rfc3339(e).map_err(|m| format!("bad Expiration: {m}"))?),
        None => None,
    };
    Ok(Credentials {
        access_key_id: r.access_key_id,
        secret_access_key: Secret::new(r.secret_access_key),
        session_token: r.token.filter(|t| !t.is_empty()).map(Secret::new),
        expires_at,
    })
}

/// The exchange client.
#[derive(Debug, Clone)]
pub struct TokenExchange {
    uri: String,
    token: TokenSource,
    http: reqwest::Client,
}

impl TokenExchange {
    pub fn new(uri: &str, token: TokenSource) -> Result<TokenExchange, String> {
        check_uri(uri)?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15))
            .user_agent(concat!("cwfs/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot set up the HTTPS client: {e}"))?;
        Ok(TokenExchange {
            uri: uri.to_string(),
            token,
            http,
        })
    }

    pub fn describe(&self) -> String {
        format!(
            "token exchange at {} (token from {})",
            self.uri,
            self.token.describe()
        )
    }

    pub fn token_source(&self) -> &TokenSource {
        &self.token
    }

    /// One exchange.
    pub async fn fetch(&self) -> Result<Credentials, FetchError> {
        let header = self.token.header()?;
        let resp = self
            .http
            .get(&self.uri)
            .header(reqwest::header::AUTHORIZATION, header.expose())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| {
                // reqwest's error names the URL and the cause; no headers.
                FetchError::Unreachable(format!(
                    "cannot reach the credentials endpoint {}: {}",
                    self.uri,
                    error_chain(&e)
                ))
            })?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| {
            FetchError::Unreachable(format!(
                "reading the answer of {} failed: {}",
                self.uri,
                error_chain(&e)
            ))
        })?;
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(FetchError::Rejected(format!(
                "the credentials endpoint {} rejected the token ({status}): check {}",
                self.uri,
                self.token.describe()
            )));
        }
        if !status.is_success() {
            return Err(FetchError::Unreachable(format!(
                "the credentials endpoint {} answered {status}",
                self.uri
            )));
        }
        let creds = parse_response(&body)
            .map_err(|m| FetchError::Malformed(format!("{}: {m}", self.uri)))?;
        if creds.expires_at.is_some_and(|t| t <= SystemTime::now()) {
            return Err(FetchError::Malformed(format!(
                "{} handed out credentials that have already expired (is this machine's clock right?)",
                self.uri
            )));
        }
        Ok(creds)
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_rules() {
        assert!(check_uri("https://api.coreweave.com/v1/x").is_ok());
        assert!(check_uri("http://127.0.0.1:8080/creds").is_ok());
        assert!(check_uri("http://127.3.4.5/creds").is_ok());
        assert!(check_uri("http://localhost:1/c").is_ok());
        assert!(check_uri("http://[::1]:9/c").is_ok());
        assert!(check_uri("http://10.0.0.1/c")
            .unwrap_err()
            .contains("loopback"));
        assert!(check_uri("http://evil.example/c")
            .unwrap_err()
            .contains("https://"));
        assert!(check_uri("ftp://x").is_err());
        assert!(check_uri("https://").is_err());
    }

    #[test]
    fn token_header_forms() {
        let dir = std::env::temp_dir().join(format!("cwfs-token-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (content, ok) in [
            ("abc\n", true),
            ("Bearer abc\n", true),
            ("  bearer   abc  ", true),
            ("", false),
            ("a b", false),
        ] {
            let p = dir.join("t");
            std::fs::write(&p, content).unwrap();
            let h = TokenSource::File(p).header();
            assert_eq!(h.is_ok(), ok, "{content:?}");
            if ok {
                assert_eq!(h.unwrap().expose(), "Bearer abc");
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            TokenSource::Value(Secret::new("Bearer xyz"))
                .header()
                .unwrap()
                .expose(),
            "Bearer xyz"
        );
        let missing = TokenSource::File("/nonexistent/cwfs/token".into())
            .header()
            .unwrap_err();
        assert!(missing.to_string().contains("/nonexistent/cwfs/token"));
    }

    #[test]
    fn responses() {
        let c = parse_response(br#"{"AccessKeyId":"AK","SecretAccessKey":"SK","Token":"TK","Expiration":"2030-01-01T00:00:00Z"}"#).unwrap();
        assert_eq!(c.access_key_id, "AK");
        assert_eq!(c.session_token.as_ref().unwrap().expose(), "TK");
        assert!(c.expires_at.is_some());
        let c = parse_response(br#"{"AccessKeyId":"AK","SecretAccessKey":"SK","Token":"TK","Expiration":"2030-01-01T00:00:00+00:00","Extra":1}"#).unwrap();
        assert!(c.expires_at.is_some());
        let e = parse_response(
            br#"{"AccessKeyId":"AK","SecretAccessKey":"SUPERSECRET","Expiration":"never"}"#,
        )
        .unwrap_err();
        assert!(
            !e.contains("SUPERSECRET") && e.contains("Expiration"),
            "{e}"
        );
        let e = parse_response(br#"{"SecretAccessKey":"SUPERSECRET"}"#).unwrap_err();
        assert!(!e.contains("SUPERSECRET"), "{e}");
        assert!(parse_response(b"<html>").is_err());
    }
}
