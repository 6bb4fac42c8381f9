//! The real object store: aws-sdk-s3 against CoreWeave or any S3-compatible
//! endpoint.
//!
//! Owns: the one S3 client shared by all requests, its timeouts and retry
//! policy, and the translation of SDK errors into [`StoreError`]s.
//! Checksums are computed/validated only when required: the SDK defaults
//! (CRC on every PUT/GET) break many S3-compatible servers.

use std::ops::Range;
use std::time::{Duration, SystemTime};

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, IdentityCache, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::DateTime;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};

use super::error::classify;
use super::{
    whole_seconds, BodyStream, ListPage, ObjectMeta, ObjectStore, StoreError, StoreErrorKind,
};
use crate::creds::{CredentialsHandle, MemoryCredentials};

/// Settings of the S3 client.
#[derive(Debug, Clone)]
pub struct S3Settings {
    pub bucket: String,
    pub endpoint_url: String,
    pub region: String,
    pub force_path_style: bool,
    /// Connection establishment bound.
    pub connect_timeout: Duration,
    /// Bound on the wait for the next bytes of a response.
    pub read_timeout: Duration,
    /// Bound on one attempt of one operation (including the body of a GET
    /// of one block).
    pub attempt_timeout: Duration,
    /// Attempts per operation, including the first.
    pub max_attempts: u32,
    /// Requests in flight at once (a GET holds its slot until its body is
    /// read).
    pub max_connections: usize,
}

impl S3Settings {
    pub fn new(bucket: &str, endpoint_url: &str, region: &str, force_path_style: bool) -> Self {
        S3Settings {
            bucket: bucket.to_string(),
            endpoint_url: endpoint_url.to_string(),
            region: region.to_string(),
            force_path_style,
            // 5 s to connect is generous on a datacenter network and still
            // lets a wrong endpoint fail the mount quickly.
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(30),
            attempt_timeout: Duration::from_secs(120),
            max_attempts: 5,
            max_connections: 64,
        }
    }
}

/// An [`ObjectStore`] backed by aws-sdk-s3.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    creds: CredentialsHandle,
    slots: std::sync::Arc<tokio::sync::Semaphore>,
}

impl S3Store {
    pub fn new(settings: &S3Settings, creds: CredentialsHandle) -> S3Store {
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(settings.connect_timeout)
            .read_timeout(settings.read_timeout)
            .operation_attempt_timeout(settings.attempt_timeout)
            .build();
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(settings.region.clone()))
            .endpoint_url(settings.endpoint_url.clone())
            .force_path_style(settings.force_path_style)
            // Sign with whatever the renewer published last: a memory read,
            // never a fetch inside a request, and no SDK-side cache that
            // would keep serving keys the renewer has replaced.
            .credentials_provider(MemoryCredentials::new(creds.clone()))
            .identity_cache(IdentityCache::no_cache())
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .timeout_config(timeouts)
            .retry_config(RetryConfig::standard().with_max_attempts(settings.max_attempts))
            .build();
        S3Store {
            client: aws_sdk_s3::Client::from_conf(config),
            bucket: settings.bucket.clone(),
            creds,
            slots: std::sync::Arc::new(tokio::sync::Semaphore::new(
                settings.max_connections.max(1),
            )),
        }
    }

    /// Run `op` with the current keys. Fails fast when the keys have expired
    /// (renewal is failing); a rejection that stale keys may explain renews
    /// them and retries once.
    async fn with_credentials<T, F, Fut>(
        &self,
        name: &'static str,
        key: &str,
        op: F,
    ) -> Result<T, StoreError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        if let Some(why) = self.creds.expired() {
            return Err(StoreError::new(
                StoreErrorKind::CredentialsExpired,
                name,
                key,
                why,
            ));
        }
        let generation = self.creds.generation();
        match op().await {
            Err(e)
                if may_be_stale_keys(&e) && self.creds.renew_after_rejection(generation).await =>
            {
                tracing::info!(op = name, key, "retrying with renewed credentials");
                op().await
            }
            other => other,
        }
    }

    async fn get_stream_impl(
        &self,
        key: &str,
        range: Range<u64>,
        etag: &str,
    ) -> Result<BodyStream, StoreError> {
        const OP: &str = "GetObject";
        if range.start >= range.end {
            return Ok(futures::stream::empty().boxed());
        }
        // The permit travels with the body: a connection slot is held until
        // the last byte is read or the stream is dropped.
        let permit = self.slots.clone().acquire_owned().await.map_err(|_| {
            StoreError::new(StoreErrorKind::Other, OP, key, "the store is shutting down")
        })?;
        let resp = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .range(format!("bytes={}-{}", range.start, range.end - 1))
            .if_match(etag)
            .send()
            .await
            .map_err(|e| sdk_error(OP, key, e))?;
        let want = range.end - range.start;
        if let Some(len) = resp.content_length() {
            if len < 0 || len as u64 != want {
                return Err(StoreError::new(
                    StoreErrorKind::Protocol,
                    OP,
                    key,
                    format!(
                        "asked for {want} bytes at offset {}, the server announced {len}",
                        range.start
                    ),
                ));
            }
        }
        let state = BodyState {
            body: resp.body,
            remaining: want,
            key: key.to_string(),
            offset: range.start,
            _permit: permit,
        };
        Ok(futures::stream::unfold(Some(state), next_chunk).boxed())
    }

    async fn head_impl(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        const OP: &str = "HeadObject";
        let _slot = self.slots.acquire().await;
        let resp = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| sdk_error(OP, key, e))?;
        let size = resp.content_length().unwrap_or(0);
        if size < 0 {
            return Err(StoreError::new(
                StoreErrorKind::Protocol,
                OP,
                key,
                format!("negative Content-Length {size}"),
            ));
        }
        Ok(ObjectMeta {
            key: key.to_string(),
            size: size as u64,
            etag: resp.e_tag().unwrap_or_default().to_string(),
            last_modified: to_system_time(resp.last_modified()),
        })
    }

    async fn list_page_impl(
        &self,
        prefix: &str,
        token: Option<&str>,
        max_keys: u32,
    ) -> Result<ListPage, StoreError> {
        const OP: &str = "ListObjectsV2";
        let _slot = self.slots.acquire().await;
        let resp = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .delimiter("/")
            .max_keys(max_keys.min(1000) as i32)
            .set_continuation_token(token.map(str::to_string))
            .send()
            .await
            .map_err(|e| sdk_error(OP, prefix, e))?;
        let mut page = ListPage::default();
        for obj in resp.contents() {
            let Some(key) = obj.key() else { continue };
            let size = obj.size().unwrap_or(0);
            if size < 0 {
                tracing::debug!(key, size, "skipping listed object with a negative size");
                continue;
            }
            page.objects.push(ObjectMeta {
                key: key.to_string(),
                size: size as u64,
                etag: obj.e_tag().unwrap_or_default().to_string(),
                last_modified: to_system_time(obj.last_modified()),
            });
        }
        page.prefixes = resp
            .common_prefixes()
            .iter()
            .filter_map(|p| p.prefix().map(str::to_string))
            .collect();
        if resp.is_truncated() == Some(true) {
            match resp.next_continuation_token() {
                Some(t) if Some(t) != token && !t.is_empty() => {
                    page.next_token = Some(t.to_string())
                }
                _ => return Err(StoreError::new(
                    StoreErrorKind::Protocol,
                    OP,
                    prefix,
                    "the listing is truncated but the continuation token is missing or repeated",
                )),
            }
        }
        Ok(page)
    }
}

/// What a streaming GET body needs to check its length.
struct BodyState {
    body: aws_sdk_s3::primitives::ByteStream,
    remaining: u64,
    key: String,
    offset: u64,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

async fn next_chunk(
    state: Option<BodyState>,
) -> Option<(Result<Bytes, StoreError>, Option<BodyState>)> {
    const OP: &str = "GetObject";
    let mut st = state?;
    match st.body.next().await {
        Some(Ok(chunk)) => {
            let n = chunk.len() as u64;
            if n > st.remaining {
                let e = StoreError::new(
                    StoreErrorKind::Protocol,
                    OP,
                    &st.key,
                    "the body is longer than the range asked for",
                );
                return Some((Err(e), None));
            }
            st.remaining -= n;
            st.offset += n;
            Some((Ok(chunk), Some(st)))
        }
        Some(Err(e)) => {
            let e = StoreError::new(
                StoreErrorKind::Network,
                OP,
                &st.key,
                format!(
                    "the body broke at offset {}: {}",
                    st.offset,
                    DisplayErrorContext(&e)
                ),
            );
            Some((Err(e), None))
        }
        None if st.remaining > 0 => {
            let e = StoreError::new(
                StoreErrorKind::Protocol,
                OP,
                &st.key,
                format!(
                    "the body ended at offset {}, {} bytes short",
                    st.offset, st.remaining
                ),
            );
            Some((Err(e), None))
        }
        None => None,
    }
}

/// Rejections that renewed keys may cure: expired or invalid tokens, an
/// unknown access key, any other 403.
fn may_be_stale_keys(e: &StoreError) -> bool {
    matches!(
        e.kind,
        StoreErrorKind::CredentialsExpired | StoreErrorKind::AccessDenied
    )
}

impl ObjectStore for S3Store {
    fn get_stream<'a>(
        &'a self,
        key: &'a str,
        range: Range<u64>,
        etag: &'a str,
    ) -> BoxFuture<'a, Result<BodyStream, StoreError>> {
        self.with_credentials("GetObject", key, move || {
            self.get_stream_impl(key, range.clone(), etag)
        })
        .boxed()
    }

    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<ObjectMeta, StoreError>> {
        self.with_credentials("HeadObject", key, move || self.head_impl(key))
            .boxed()
    }

    fn list_page<'a>(
        &'a self,
        prefix: &'a str,
        token: Option<&'a str>,
        max_keys: u32,
    ) -> BoxFuture<'a, Result<ListPage, StoreError>> {
        self.with_credentials("ListObjectsV2", prefix, move || {
            self.list_page_impl(prefix, token, max_keys)
        })
        .boxed()
    }

    fn bucket(&self) -> &str {
        &self.bucket
    }
}

fn to_system_time(t: Option<&DateTime>) -> SystemTime {
    match t {
        Some(t) if t.secs() >= 0 => {
            whole_seconds(SystemTime::UNIX_EPOCH + Duration::from_secs(t.secs() as u64))
        }
        _ => SystemTime::UNIX_EPOCH,
    }
}

/// Translate an SDK error into a [`StoreError`].
fn sdk_error<E>(
    op: &'static str,
    key: &str,
    err: SdkError<E, aws_smithy_runtime_api::http::Response>,
) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &err {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let code = se.err().code().map(str::to_string);
            let mut e = StoreError::new(
                classify(status, code.as_deref()),
                op,
                key,
                se.err().message().unwrap_or_default().to_string(),
            );
            e.status = Some(status);
            e.code = code;
            e
        }
        SdkError::TimeoutError(_) => StoreError::new(StoreErrorKind::Timeout, op, key, "timed out"),
        SdkError::DispatchFailure(d) => {
            let kind = if d.is_timeout() {
                StoreErrorKind::Timeout
            } else {
                StoreErrorKind::Network
            };
            let detail = DisplayErrorContext(&err).to_string();
            StoreError::new(kind, op, key, detail)
        }
        SdkError::ResponseError(_) => StoreError::new(
            StoreErrorKind::Protocol,
            op,
            key,
            DisplayErrorContext(&err).to_string(),
        ),
        _ => StoreError::new(
            StoreErrorKind::Other,
            op,
            key,
            DisplayErrorContext(&err).to_string(),
        ),
    }
}
