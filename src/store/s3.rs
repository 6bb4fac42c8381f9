//! The real object store: aws-sdk-s3 against CoreWeave or any S3-compatible
//! endpoint.
//!
//! Owns: the one S3 client shared by all requests, its timeouts and retry
//! policy, and the translation of SDK errors into [`StoreError`]s.
//! Checksums are computed/validated only when required: the SDK defaults
//! (CRC on every PUT/GET) break many S3-compatible servers.

use std::ops::Range;
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::StalledStreamProtectionConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, IdentityCache, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, DateTime};
use aws_sdk_s3::types::EncodingType;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};

use super::error::classify;
use super::retry::{self, RetryPolicy};
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
    /// The retry policy (the SDK's own retries are off).
    pub retry: RetryPolicy,
    /// A GET body that delivers no byte for this long is resumed.
    pub stall_timeout: Duration,
    /// Requests in flight at once (a GET holds its slot until its body is
    /// read).
    pub max_connections: usize,
    /// Extra CA certificates (PEM) to trust for https endpoints.
    pub ca_bundle: Option<std::path::PathBuf>,
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
            retry: RetryPolicy::default(),
            // Far above any pause of a healthy server, short enough that a
            // dead connection costs a reader seconds, not minutes.
            stall_timeout: Duration::from_secs(10),
            max_connections: 64,
            ca_bundle: None,
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
    retry: RetryPolicy,
    stall_timeout: Duration,
}

impl S3Store {
    /// A store for `settings`; fails only when the CA bundle is unusable.
    pub fn new(settings: &S3Settings, creds: CredentialsHandle) -> Result<S3Store, String> {
        // Requests in flight and open sockets are both bounded by
        // --max-connections: the slots below, and the socket permits in
        // the HTTP client.
        let http_client = super::http::client(&super::http::HttpSettings {
            max_sockets: settings.max_connections.max(1),
            connect_timeout: settings.connect_timeout,
            header_timeout: settings.read_timeout.min(settings.stall_timeout),
            ca_bundle: settings.ca_bundle.clone(),
        })?;
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(settings.connect_timeout)
            .read_timeout(settings.read_timeout.min(settings.stall_timeout))
            .operation_attempt_timeout(settings.attempt_timeout)
            .build();
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .http_client(http_client)
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
            .retry_config(RetryConfig::disabled())
            .stalled_stream_protection(StalledStreamProtectionConfig::disabled())
            .build();
        Ok(S3Store {
            client: aws_sdk_s3::Client::from_conf(config),
            bucket: settings.bucket.clone(),
            creds,
            slots: std::sync::Arc::new(tokio::sync::Semaphore::new(
                settings.max_connections.max(1),
            )),
            retry: settings.retry,
            stall_timeout: settings.stall_timeout,
        })
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

    /// Send a ranged GET and check the announced length; the body is the
    /// caller's to read.
    async fn send_get(
        &self,
        key: &str,
        range: &Range<u64>,
        etag: &str,
    ) -> Result<ByteStream, StoreError> {
        const OP: &str = "GetObject";
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
        match resp.content_length() {
            Some(len) if len >= 0 && len as u64 == want => Ok(resp.body),
            None => Ok(resp.body),
            Some(len) => Err(StoreError::new(
                StoreErrorKind::Protocol,
                OP,
                key,
                format!(
                    "asked for {want} bytes at offset {}, the server announced {len}",
                    range.start
                ),
            )),
        }
    }

    /// Run `f` under the retry policy (see [`RetryPolicy`]).
    async fn retrying<T, F, Fut>(&self, op: &'static str, key: &str, f: F) -> Result<T, StoreError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let start = Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let e = match f().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            match self.retry.next(&e, attempt, start.elapsed()) {
                Some(wait) => {
                    tracing::debug!(op, key, attempt, error = %e, wait_ms = wait.as_millis() as u64, "retrying");
                    tokio::time::sleep(wait).await;
                }
                None => {
                    if RetryPolicy::retryable(&e) {
                        tracing::warn!(op, key, attempts = attempt, error = %e, "giving up");
                    }
                    return Err(retry::exhausted(e, attempt, start.elapsed()));
                }
            }
        }
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
            // Keys may hold bytes XML 1.0 cannot carry (control characters):
            // ask for them percent-encoded.
            .encoding_type(EncodingType::Url)
            .send()
            .await
            .map_err(|e| sdk_error(OP, prefix, e))?;
        // Decode only if the server says it encoded (some ignore the ask).
        let encoded = resp.encoding_type() == Some(&EncodingType::Url);
        let decode = |s: &str| -> Option<String> {
            if encoded {
                let d = url_decode(s);
                if d.is_none() {
                    tracing::debug!(raw = %s.escape_debug(), "skipping a listed name that is not valid percent-encoded UTF-8");
                }
                d
            } else {
                Some(s.to_string())
            }
        };
        let mut page = ListPage::default();
        for obj in resp.contents() {
            let Some(key) = obj.key().and_then(decode) else {
                continue;
            };
            let key = key.as_str();
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
            .filter_map(|p| p.prefix().and_then(decode))
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

/// A GET body being read: where it is, and what it needs to resume.
struct BodyState {
    store: S3Store,
    body: ByteStream,
    key: String,
    etag: String,
    /// The next byte expected, and the end of the range.
    offset: u64,
    end: u64,
    attempts: u32,
    started: Instant,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl BodyState {
    /// The next chunk of the body, resuming with a ranged GET from the first
    /// missing byte (same ETag) when the body breaks, stalls or ends early.
    async fn next(&mut self) -> Option<Result<Bytes, StoreError>> {
        const OP: &str = "GetObject";
        loop {
            let failure =
                match tokio::time::timeout(self.store.stall_timeout, self.body.next()).await {
                    Ok(Some(Ok(chunk))) => {
                        let n = chunk.len() as u64;
                        if n > self.end - self.offset {
                            let e = StoreError::new(
                                StoreErrorKind::Protocol,
                                OP,
                                &self.key,
                                "the body is longer than the range asked for",
                            );
                            return Some(Err(e));
                        }
                        self.offset += n;
                        return Some(Ok(chunk));
                    }
                    Ok(None) if self.offset == self.end => return None,
                    Ok(None) => StoreError::new(
                        StoreErrorKind::Protocol,
                        OP,
                        &self.key,
                        format!(
                            "the body ended at offset {}, {} bytes short",
                            self.offset,
                            self.end - self.offset
                        ),
                    ),
                    Ok(Some(Err(e))) => StoreError::new(
                        StoreErrorKind::Network,
                        OP,
                        &self.key,
                        format!(
                            "the body broke at offset {}: {}",
                            self.offset,
                            DisplayErrorContext(&e)
                        ),
                    ),
                    Err(_) => StoreError::new(
                        StoreErrorKind::Timeout,
                        OP,
                        &self.key,
                        format!(
                            "no bytes for {}s at offset {}",
                            self.store.stall_timeout.as_secs_f64(),
                            self.offset
                        ),
                    ),
                };
            if let Err(e) = self.resume(failure).await {
                return Some(Err(e));
            }
        }
    }

    async fn resume(&mut self, mut failure: StoreError) -> Result<(), StoreError> {
        loop {
            let Some(wait) = self
                .store
                .retry
                .next(&failure, self.attempts, self.started.elapsed())
            else {
                tracing::warn!(op = "GetObject", key = %self.key, attempts = self.attempts, error = %failure, "giving up");
                return Err(retry::exhausted(
                    failure,
                    self.attempts,
                    self.started.elapsed(),
                ));
            };
            tracing::debug!(key = %self.key, offset = self.offset, error = %failure, "resuming the body");
            tokio::time::sleep(wait).await;
            self.attempts += 1;
            let range = self.offset..self.end;
            match self.store.send_get(&self.key, &range, &self.etag).await {
                Ok(body) => {
                    self.body = body;
                    return Ok(());
                }
                Err(e) => failure = e,
            }
        }
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
        async move {
            const OP: &str = "GetObject";
            if range.start >= range.end {
                return Ok(futures::stream::empty().boxed());
            }
            // The slot travels with the body: a connection is counted until
            // the last byte is read or the stream is dropped.
            let permit = self.slots.clone().acquire_owned().await.map_err(|_| {
                StoreError::new(StoreErrorKind::Other, OP, key, "the store is shutting down")
            })?;
            let started = Instant::now();
            let body = self
                .with_credentials(OP, key, || {
                    self.retrying(OP, key, || self.send_get(key, &range, etag))
                })
                .await?;
            let state = BodyState {
                store: self.clone(),
                body,
                key: key.to_string(),
                etag: etag.to_string(),
                offset: range.start,
                end: range.end,
                attempts: 1,
                started,
                _permit: permit,
            };
            Ok(futures::stream::unfold(
                state,
                |mut st| async move { st.next().await.map(|r| (r, st)) },
            )
            .boxed())
        }
        .boxed()
    }

    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<ObjectMeta, StoreError>> {
        self.with_credentials("HeadObject", key, move || {
            self.retrying("HeadObject", key, move || self.head_impl(key))
        })
        .boxed()
    }

    fn list_page<'a>(
        &'a self,
        prefix: &'a str,
        token: Option<&'a str>,
        max_keys: u32,
    ) -> BoxFuture<'a, Result<ListPage, StoreError>> {
        self.with_credentials("ListObjectsV2", prefix, move || {
            self.retrying("ListObjectsV2", prefix, move || {
                self.list_page_impl(prefix, token, max_keys)
            })
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

/// Decode S3's URL encoding of listed keys (`%XX`, and `+` for a space);
/// `None` for a malformed escape or bytes that are not UTF-8.
pub fn url_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                let v = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
                out.push(v);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
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
            if let Some(why) = super::http::tls_failure(&err) {
                return StoreError::new(StoreErrorKind::Tls, op, key, why);
            }
            let kind = if d.is_timeout() {
                StoreErrorKind::Timeout
            } else if d.is_io() {
                StoreErrorKind::Network
            } else {
                StoreErrorKind::Other
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_decoding() {
        assert_eq!(url_decode("a%20b+c%2Bd").as_deref(), Some("a b c+d"));
        assert_eq!(url_decode("%C3%BC%01/x").as_deref(), Some("\u{fc}\u{1}/x"));
        assert_eq!(url_decode("plain").as_deref(), Some("plain"));
        assert_eq!(url_decode("bad%2"), None);
        assert_eq!(url_decode("bad%zz"), None);
        assert_eq!(url_decode("%FF%FE"), None, "not UTF-8");
    }
}
