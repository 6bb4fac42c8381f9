//! The object store: the only layer that talks to S3.
//!
//! Owns: the [`ObjectStore`] trait (ranged GET, HEAD, one LIST page), its
//! typed errors ([`StoreError`]), the real S3 implementation ([`s3::S3Store`],
//! which owns timeouts and retries) and an in-memory implementation
//! ([`memory::MemoryStore`]) for unit tests of the layers above.
//!
//! Invariants: keys are full object keys (the mount prefix already applied by
//! the caller); the store knows nothing of caching, inodes or paths.

pub mod error;
pub mod http;
pub mod memory;
pub mod retry;
pub mod s3;

use std::ops::Range;
use std::time::SystemTime;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;

/// A response body: chunks as they arrive.
pub type BodyStream = BoxStream<'static, Result<Bytes, StoreError>>;

pub use error::{StoreError, StoreErrorKind};

/// What the store says about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    pub etag: String,
    /// Truncated to whole seconds: LIST reports milliseconds and HEAD whole
    /// seconds, and attributes must not flip between the two.
    pub last_modified: SystemTime,
}

/// One page of a delimited listing.
#[derive(Debug, Clone, Default)]
pub struct ListPage {
    /// Objects directly under the prefix, in key order.
    pub objects: Vec<ObjectMeta>,
    /// Common prefixes (each ends with the delimiter), in key order.
    pub prefixes: Vec<String>,
    /// Where the next page starts; `None` when this was the last page.
    pub next_token: Option<String>,
}

/// The operations the filesystem needs from an object store.
///
/// Futures are boxed so the trait stays object-safe (`Arc<dyn ObjectStore>`),
/// which lets tests put a fault-injecting or counting wrapper around any
/// implementation.
pub trait ObjectStore: Send + Sync + 'static {
    /// Bytes `range` of `key` as a stream of chunks, only if its ETag is
    /// still `etag` (a changed object is
    /// [`StoreErrorKind::PreconditionFailed`]). The stream yields exactly
    /// `range.end - range.start` bytes or ends with an error: a short body
    /// is [`StoreErrorKind::Protocol`], never a silent truncation.
    fn get_stream<'a>(
        &'a self,
        key: &'a str,
        range: Range<u64>,
        etag: &'a str,
    ) -> BoxFuture<'a, Result<BodyStream, StoreError>>;

    /// Bytes `range` of `key` in one buffer (see [`ObjectStore::get_stream`]).
    fn get_range<'a>(
        &'a self,
        key: &'a str,
        range: Range<u64>,
        etag: &'a str,
    ) -> BoxFuture<'a, Result<Bytes, StoreError>> {
        Box::pin(async move {
            let mut body = self.get_stream(key, range.clone(), etag).await?;
            let mut out = bytes::BytesMut::with_capacity((range.end - range.start) as usize);
            while let Some(chunk) = body.next().await {
                out.extend_from_slice(&chunk?);
            }
            Ok(out.freeze())
        })
    }

    /// Metadata of `key`; [`StoreErrorKind::NotFound`] when there is none.
    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<ObjectMeta, StoreError>>;

    /// One page of the listing of `prefix` with delimiter `/`.
    fn list_page<'a>(
        &'a self,
        prefix: &'a str,
        token: Option<&'a str>,
        max_keys: u32,
    ) -> BoxFuture<'a, Result<ListPage, StoreError>>;

    /// The bucket this store serves (for messages).
    fn bucket(&self) -> &str;
}

/// Truncate to whole seconds (see [`ObjectMeta::last_modified`]).
pub fn whole_seconds(t: SystemTime) -> SystemTime {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(d.as_secs()),
        Err(_) => SystemTime::UNIX_EPOCH,
    }
}
