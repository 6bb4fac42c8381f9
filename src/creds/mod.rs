//! Credentials: where the S3 keys come from, and keeping them fresh.
//!
//! Owns: the credentials sources ([`CredentialsConfig`]), the token exchange
//! client ([`exchange`]), the background [`CredentialRenewer`], and the
//! memory-only provider the S3 client signs with. This is the single seam
//! between the store and credentials; `creds` knows nothing of S3 operations.
//!
//! Sources (the config layer picks one, see docs/CONFIGURATION.md):
//! static keys; a profile of the shared AWS files; the token exchange of the
//! AWS container-credentials protocol (CoreWeave's API-token exchange); the
//! rest of the default AWS chain (web identity, IMDS). Every source but
//! static keys is renewed in the background when its keys expire.

pub mod exchange;
pub mod renewer;
pub mod secret;
pub mod time;

use std::path::Path;
use std::time::{Duration, SystemTime};

use aws_config::default_provider::credentials::DefaultCredentialsChain;
use aws_config::profile::ProfileFileCredentialsProvider;
use aws_config::Region;
use aws_credential_types::provider::{future, ProvideCredentials, SharedCredentialsProvider};
use thiserror::Error;

pub use exchange::{TokenExchange, TokenSource, COREWEAVE_EXCHANGE_URI};
pub use renewer::{CredentialRenewer, CredentialsHandle};
pub use secret::Secret;

/// A set of S3 keys. `Debug` shows the access key id only.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
    pub expires_at: Option<SystemTime>,
}

/// Why a fetch of credentials failed.
#[derive(Debug, Clone, Error)]
pub enum FetchError {
    /// The endpoint rejected the token (401/403).
    #[error("{0}")]
    Rejected(String),
    /// The endpoint could not be reached or answered an error.
    #[error("{0}")]
    Unreachable(String),
    /// The answer made no sense.
    #[error("{0}")]
    Malformed(String),
    /// Local configuration (an unreadable token file, ...).
    #[error("{0}")]
    Config(String),
    /// A source of the AWS SDK failed.
    #[error("{0}")]
    Sdk(String),
}

/// Which source to use; chosen by the config layer.
#[derive(Debug, Clone)]
pub enum CredentialsConfig {
    Static {
        access_key_id: String,
        secret_access_key: Secret,
        session_token: Option<Secret>,
    },
    Profile(String),
    Exchange {
        uri: String,
        token: TokenSource,
    },
    DefaultChain,
}

/// Something that can fetch credentials again.
pub(crate) enum Fetcher {
    Exchange(TokenExchange),
    Sdk {
        provider: SharedCredentialsProvider,
        name: String,
    },
}

impl Fetcher {
    async fn fetch(&self) -> Result<Credentials, FetchError> {
        match self {
            Fetcher::Exchange(x) => x.fetch().await,
            Fetcher::Sdk { provider, name } => {
                let c = provider.provide_credentials().await.map_err(|e| {
                    FetchError::Sdk(format!(
                        "{name}: {}",
                        aws_sdk_s3::error::DisplayErrorContext(&e)
                    ))
                })?;
                Ok(Credentials {
                    access_key_id: c.access_key_id().to_string(),
                    secret_access_key: Secret::new(c.secret_access_key()),
                    session_token: c.session_token().map(Secret::new),
                    expires_at: c.expiry(),
                })
            }
        }
    }
}

/// Why no usable credentials could be had at mount time.
#[derive(Debug, Error)]
#[error("{0}")]
pub struct CredsError(pub String);

/// Attempts of the first fetch when the endpoint is unreachable (a node
/// that just booted may need a moment); a rejected token fails at once.
const FIRST_FETCH_ATTEMPTS: u32 = 3;

/// Load credentials from the configured source, and start the background
/// renewer when they expire. Must run inside the tokio runtime that will
/// serve the mount (the renewer is spawned onto it).
pub async fn start(cfg: &CredentialsConfig, region: &str) -> Result<CredentialsHandle, CredsError> {
    let (fetcher, source) = match cfg {
        CredentialsConfig::Static {
            access_key_id,
            secret_access_key,
            session_token,
        } => {
            let creds = Credentials {
                access_key_id: access_key_id.clone(),
                secret_access_key: secret_access_key.clone(),
                session_token: session_token.clone(),
                expires_at: None,
            };
            let source = "static keys (AWS_ACCESS_KEY_ID)".to_string();
            tracing::info!(source = %source, access_key_id = %creds.access_key_id, "using credentials");
            return Ok(CredentialsHandle::new(creds, false, source));
        }
        CredentialsConfig::Profile(name) => {
            let provider = ProfileFileCredentialsProvider::builder()
                .profile_name(name)
                .build();
            let source = format!("profile `{name}` of the shared AWS config files");
            (
                Fetcher::Sdk {
                    provider: SharedCredentialsProvider::new(provider),
                    name: source.clone(),
                },
                source,
            )
        }
        CredentialsConfig::Exchange { uri, token } => {
            if let TokenSource::File(path) = token {
                warn_if_readable_by_others(path);
            }
            let x = TokenExchange::new(uri, token.clone()).map_err(CredsError)?;
            let source = x.describe();
            (Fetcher::Exchange(x), source)
        }
        CredentialsConfig::DefaultChain => {
            let chain = DefaultCredentialsChain::builder()
                .region(Region::new(region.to_string()))
                .build()
                .await;
            let source = "the default AWS chain (web identity, container, IMDS)".to_string();
            (
                Fetcher::Sdk {
                    provider: SharedCredentialsProvider::new(chain),
                    name: source.clone(),
                },
                source,
            )
        }
    };
    let mut attempt = 0;
    let first = loop {
        attempt += 1;
        match fetcher.fetch().await {
            Ok(c) => break c,
            Err(FetchError::Unreachable(m)) if attempt < FIRST_FETCH_ATTEMPTS => {
                tracing::warn!(attempt, error = %m, "fetching credentials failed; retrying");
                tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
            }
            Err(e) => return Err(CredsError(first_fetch_message(cfg, &e))),
        }
    };
    let renewable = first.expires_at.is_some();
    tracing::info!(
        source = %source,
        access_key_id = %first.access_key_id,
        expires_in_s = first.expires_at.and_then(|e| e.duration_since(SystemTime::now()).ok()).map(|d| d.as_secs()),
        "using credentials"
    );
    let handle = CredentialsHandle::new(first, renewable, source);
    if renewable {
        tokio::spawn(CredentialRenewer::new(handle.clone(), fetcher).run());
    }
    Ok(handle)
}

fn first_fetch_message(cfg: &CredentialsConfig, e: &FetchError) -> String {
    match (cfg, e) {
        (CredentialsConfig::DefaultChain, _) => format!(
            "no AWS credentials found ({e}): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile \
             (--profile or AWS_PROFILE), or, on CoreWeave, AWS_CONTAINER_CREDENTIALS_FULL_URI and \
             AWS_CONTAINER_AUTHORIZATION_TOKEN (or --token-file)"
        ),
        (CredentialsConfig::Exchange { .. }, FetchError::Unreachable(_)) => format!(
            "{e}: check --credentials-uri / AWS_CONTAINER_CREDENTIALS_FULL_URI and the network"
        ),
        _ => format!("loading credentials failed: {e}"),
    }
}

/// A token file others can read is a leaked token waiting to happen.
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(md) = std::fs::metadata(path) {
        let mode = md.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{:o}", mode & 0o777),
                "the token file is readable by group or others: `chmod 600 {}`",
                path.display()
            );
        }
    }
}

/// The provider the S3 client signs with: answers from memory only.
#[derive(Debug, Clone)]
pub struct MemoryCredentials {
    handle: CredentialsHandle,
}

impl MemoryCredentials {
    pub fn new(handle: CredentialsHandle) -> MemoryCredentials {
        MemoryCredentials { handle }
    }
}

impl ProvideCredentials for MemoryCredentials {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        let p = self.handle.current();
        let c = &p.creds;
        future::ProvideCredentials::ready(Ok(aws_credential_types::Credentials::new(
            c.access_key_id.clone(),
            c.secret_access_key.expose().to_string(),
            c.session_token.as_ref().map(|t| t.expose().to_string()),
            c.expires_at,
            "cwfs",
        )))
    }
}
