//! Credentials: where the S3 keys come from.
//!
//! Owns: choosing a credentials source and handing the store one
//! [`SharedCredentialsProvider`]. This is the single seam between the store
//! and credentials: the store never looks anything up itself.
//!
//! Today the source is the default AWS chain (environment keys, profile,
//! container credentials, web identity, IMDS) with the SDK's own caching. The
//! background renewer of the credentials issue replaces the provider behind
//! this seam with one that only reads memory.

use aws_config::default_provider::credentials::DefaultCredentialsChain;
use aws_config::Region;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use thiserror::Error;

/// Why no usable credentials could be had.
#[derive(Debug, Error)]
pub enum CredsError {
    #[error(
        "no AWS credentials found ({0}): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile \
         (AWS_PROFILE), or, on CoreWeave, AWS_CONTAINER_CREDENTIALS_FULL_URI and \
         AWS_CONTAINER_AUTHORIZATION_TOKEN"
    )]
    NotFound(String),
}

/// Build the provider of the default chain and fetch once, so that a mount
/// without credentials fails before it is mounted.
pub async fn default_chain(region: &str) -> Result<SharedCredentialsProvider, CredsError> {
    let chain = DefaultCredentialsChain::builder()
        .region(Region::new(region.to_string()))
        .build()
        .await;
    let provider = SharedCredentialsProvider::new(chain);
    match provider.provide_credentials().await {
        Ok(creds) => {
            // The access key id is not a secret; the secret and token are
            // never logged (the SDK's Debug output redacts them too).
            tracing::info!(
                source = "default AWS chain",
                access_key_id = creds.access_key_id(),
                expires = ?creds.expiry(),
                "loaded credentials"
            );
            Ok(provider)
        }
        Err(e) => Err(CredsError::NotFound(
            aws_sdk_s3::error::DisplayErrorContext(&e).to_string(),
        )),
    }
}
