//! The S3 operation handlers: the [`s3s::S3`] trait implemented over the in-memory [`Store`].
//!
//! s3s has already parsed the request, verified its signature and run the access checks of
//! [`crate::auth`] by the time a handler here runs. Handlers own the S3 semantics: buckets,
//! objects, ranges and conditions (via [`crate::conditional`]), listings (via
//! [`crate::listing`]), copy and multipart. GET bodies are zero-copy [`Bytes`] slices streamed
//! in large chunks ([`BytesBody`]), which also counts `bytes_sent` as the body is polled.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use s3s::dto::*;
use s3s::stream::{ByteStream, RemainingLength};
use s3s::{s3_error, S3Request, S3Response, S3Result, StdError, S3};

use crate::conditional::{self, Conditions};
use crate::listing::{self, Entry, ListParams};
use crate::store::{Object as StoredObject, Store};
use crate::StatsInner;

/// Largest frame handed to hyper at once; big frames keep per-frame overhead negligible.
const CHUNK: usize = 4 << 20;

/// A response body over a [`Bytes`] value, yielded as zero-copy slices of at most [`CHUNK`]
/// bytes, counting what it yields into `bytes_sent`.
pub struct BytesBody {
    data: Bytes,
    stats: Arc<StatsInner>,
}

impl BytesBody {
    /// A body sending `data`.
    pub fn new(data: Bytes, stats: Arc<StatsInner>) -> BytesBody {
        BytesBody { data, stats }
    }
}

impl Stream for BytesBody {
    type Item = Result<Bytes, StdError>;

    fn poll_next(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.data.is_empty() {
            return Poll::Ready(None);
        }
        let n = self.data.len().min(CHUNK);
        let chunk = self.data.split_to(n);
        self.stats.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
        Poll::Ready(Some(Ok(chunk)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.data.len().div_ceil(CHUNK);
        (n, Some(n))
    }
}

impl ByteStream for BytesBody {
    fn remaining_length(&self) -> RemainingLength {
        RemainingLength::new_exact(self.data.len())
    }
}

/// The S3 service: handlers over a shared [`Store`].
pub struct MemS3 {
    pub(crate) store: Arc<Store>,
    pub(crate) stats: Arc<StatsInner>,
    pub(crate) region: String,
    pub(crate) min_part_size: u64,
}

async fn collect_body(body: Option<StreamingBlob>, hint: Option<i64>) -> S3Result<Bytes> {
    let Some(mut body) = body else {
        return Ok(Bytes::new());
    };
    let cap = hint.and_then(|n| usize::try_from(n).ok()).unwrap_or(0);
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| {
            let mut err = s3_error!(IncompleteBody, "The request body terminated unexpectedly");
            err.set_source(e);
            err
        })?;
        if chunk.is_empty() {
            continue;
        }
        // The common single-chunk case stays zero-copy.
        match first.take() {
            None if buf.is_empty() => first = Some(chunk),
            None => buf.extend_from_slice(&chunk),
            Some(f) => {
                buf.reserve(cap.max(f.len() + chunk.len()));
                buf.extend_from_slice(&f);
                buf.extend_from_slice(&chunk);
            }
        }
    }
    Ok(first.unwrap_or_else(|| buf.freeze()))
}

fn etag_of(obj: &StoredObject) -> ETag {
    ETag::Strong(obj.etag.clone())
}

fn conditions<'a>(
    if_match: Option<&'a ETagCondition>,
    if_none_match: Option<&'a ETagCondition>,
    if_modified_since: Option<&Timestamp>,
    if_unmodified_since: Option<&Timestamp>,
) -> Conditions<'a> {
    let to_sys = |t: &Timestamp| -> SystemTime {
        let odt: time::OffsetDateTime = t.clone().into();
        SystemTime::from(odt)
    };
    Conditions {
        if_match,
        if_none_match,
        if_modified_since: if_modified_since.map(to_sys),
        if_unmodified_since: if_unmodified_since.map(to_sys),
    }
}

/// The checks HEAD and GET share: the conditional headers, then the range.
/// Returns the span to serve (`None`: the whole object).
fn check_read(
    obj: &StoredObject,
    cond: Conditions<'_>,
    range: Option<&Range>,
) -> S3Result<Option<std::ops::Range<u64>>> {
    let outcome = conditional::evaluate(&cond, &obj.etag, obj.last_modified);
    if let Some(e) = conditional::condition_error(outcome, &obj.etag, obj.last_modified) {
        return Err(e);
    }
    conditional::resolve_range(range, obj.data.len() as u64)
}

fn check_max_keys(max_keys: Option<i32>) -> S3Result<usize> {
    match max_keys {
        None => Ok(1000),
        Some(n) if n < 0 => Err(s3_error!(
            InvalidArgument,
            "Argument maxKeys must be an integer between 0 and 2147483647"
        )),
        Some(n) => Ok((n as usize).min(1000)),
    }
}

fn is_url_encoding(e: Option<&EncodingType>) -> S3Result<bool> {
    match e {
        None => Ok(false),
        Some(e) if e.as_str().eq_ignore_ascii_case("url") => Ok(true),
        Some(_) => Err(s3_error!(
            InvalidArgument,
            "Invalid Encoding Method specified in Request"
        )),
    }
}

/// Objects and common prefixes of one listing page, converted to s3s DTOs.
struct Listed {
    contents: Vec<Object>,
    prefixes: Vec<CommonPrefix>,
    is_truncated: bool,
    next_marker: Option<String>,
}

impl MemS3 {
    fn list(&self, bucket: &str, params: &ListParams<'_>, url: bool) -> S3Result<Listed> {
        let enc = |s: &str| {
            if url {
                listing::url_encode(s)
            } else {
                s.to_owned()
            }
        };
        self.store.with_bucket(bucket, |b| {
            let page = listing::list_page(&b.objects, params);
            let mut contents = Vec::new();
            let mut prefixes = Vec::new();
            for e in &page.entries {
                match e {
                    Entry::Key(k, obj) => contents.push(Object {
                        key: Some(enc(k)),
                        e_tag: Some(etag_of(obj)),
                        last_modified: Some(Timestamp::from(obj.last_modified)),
                        size: Some(obj.data.len() as i64),
                        storage_class: Some(ObjectStorageClass::from_static(
                            ObjectStorageClass::STANDARD,
                        )),
                        ..Default::default()
                    }),
                    Entry::Prefix(p) => prefixes.push(CommonPrefix {
                        prefix: Some(enc(p)),
                    }),
                }
            }
            Listed {
                contents,
                prefixes,
                is_truncated: page.is_truncated,
                next_marker: page.next_marker,
            }
        })
    }
}

#[async_trait::async_trait]
impl S3 for MemS3 {
    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        self.store.create_bucket(&req.input.bucket)?;
        Ok(S3Response::new(CreateBucketOutput {
            location: Some(format!("/{}", req.input.bucket)),
        }))
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        self.store.delete_bucket(&req.input.bucket)?;
        Ok(S3Response::new(DeleteBucketOutput::default()))
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.stats.head_requests.fetch_add(1, Ordering::Relaxed);
        if !self.store.bucket_exists(&req.input.bucket) {
            return Err(s3_error!(
                NoSuchBucket,
                "The specified bucket does not exist"
            ));
        }
        Ok(S3Response::new(HeadBucketOutput {
            bucket_region: Some(self.region.clone()),
            ..Default::default()
        }))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        if !self.store.bucket_exists(&req.input.bucket) {
            return Err(s3_error!(
                NoSuchBucket,
                "The specified bucket does not exist"
            ));
        }
        Ok(S3Response::new(GetBucketLocationOutput {
            location_constraint: Some(BucketLocationConstraint::from(self.region.clone())),
        }))
    }

    async fn list_buckets(
        &self,
        _req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        self.stats.list_requests.fetch_add(1, Ordering::Relaxed);
        let buckets = self
            .store
            .list_buckets()
            .into_iter()
            .map(|(name, created)| Bucket {
                name: Some(name),
                creation_date: Some(Timestamp::from(created)),
                bucket_region: Some(self.region.clone()),
            })
            .collect();
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(buckets),
            owner: Some(Owner {
                display_name: Some("cwfs-test".into()),
                id: Some("cwfs-test".into()),
            }),
            ..Default::default()
        }))
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        self.stats.put_requests.fetch_add(1, Ordering::Relaxed);
        let input = req.input;
        if !self.store.bucket_exists(&input.bucket) {
            return Err(s3_error!(
                NoSuchBucket,
                "The specified bucket does not exist"
            ));
        }
        let data = collect_body(input.body, input.content_length).await?;
        if let Some(expected) = input.content_length {
            if expected != data.len() as i64 {
                return Err(s3_error!(
                    IncompleteBody,
                    "You did not provide the number of bytes specified by the Content-Length HTTP header"
                ));
            }
        }
        let mut obj = StoredObject::new(data);
        obj.content_type = input.content_type;
        obj.metadata = input.metadata;
        let obj = self.store.put(&input.bucket, &input.key, obj)?;
        Ok(S3Response::new(PutObjectOutput {
            e_tag: Some(etag_of(&obj)),
            ..Default::default()
        }))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        self.store.delete(&req.input.bucket, &req.input.key)?;
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let input = req.input;
        if input.delete.objects.len() > 1000 {
            return Err(s3_error!(
                MalformedXML,
                "The XML you provided was not well-formed or did not validate against our published schema"
            ));
        }
        let quiet = input.delete.quiet.unwrap_or(false);
        let mut deleted = Vec::new();
        for o in input.delete.objects {
            self.store.delete(&input.bucket, &o.key)?;
            if !quiet {
                deleted.push(DeletedObject {
                    key: Some(o.key),
                    ..Default::default()
                });
            }
        }
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: Some(deleted),
            ..Default::default()
        }))
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        self.stats.put_requests.fetch_add(1, Ordering::Relaxed);
        let input = req.input;
        let CopySource::Bucket { bucket, key, .. } = &input.copy_source else {
            return Err(s3_error!(
                NotImplemented,
                "Access point copy sources are not supported"
            ));
        };
        let src = self.store.get(bucket, key)?;
        let cond = conditions(
            input.copy_source_if_match.as_ref(),
            input.copy_source_if_none_match.as_ref(),
            input.copy_source_if_modified_since.as_ref(),
            input.copy_source_if_unmodified_since.as_ref(),
        );
        if conditional::evaluate(&cond, &src.etag, src.last_modified)
            != conditional::Condition::Proceed
        {
            return Err(s3_error!(
                PreconditionFailed,
                "At least one of the pre-conditions you specified did not hold"
            ));
        }
        let replace = input
            .metadata_directive
            .as_ref()
            .is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
        let mut obj = StoredObject {
            data: src.data.clone(),
            etag: src.etag.clone(),
            last_modified: crate::store::now_millis(),
            content_type: src.content_type.clone(),
            metadata: src.metadata.clone(),
        };
        if replace {
            obj.content_type = input.content_type;
            obj.metadata = input.metadata;
        }
        let obj = self.store.put(&input.bucket, &input.key, obj)?;
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(etag_of(&obj)),
                last_modified: Some(Timestamp::from(obj.last_modified)),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        self.stats.head_requests.fetch_add(1, Ordering::Relaxed);
        let input = req.input;
        let obj = self.store.get(&input.bucket, &input.key)?;
        let len = obj.data.len() as u64;
        let span = check_read(
            &obj,
            conditions(
                input.if_match.as_ref(),
                input.if_none_match.as_ref(),
                input.if_modified_since.as_ref(),
                input.if_unmodified_since.as_ref(),
            ),
            input.range.as_ref(),
        )?;
        let (content_length, content_range) = match &span {
            None => (len, None),
            Some(s) => (s.end - s.start, Some(conditional::content_range(s, len))),
        };
        let mut resp = S3Response::new(HeadObjectOutput {
            accept_ranges: Some("bytes".into()),
            content_length: Some(content_length as i64),
            content_range,
            content_type: Some(
                obj.content_type
                    .clone()
                    .unwrap_or_else(|| "application/octet-stream".into()),
            ),
            e_tag: Some(etag_of(&obj)),
            last_modified: Some(Timestamp::from(obj.last_modified)),
            metadata: obj.metadata.clone(),
            ..Default::default()
        });
        if span.is_some() {
            resp.status = Some(hyper::StatusCode::PARTIAL_CONTENT);
        }
        Ok(resp)
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        self.stats.get_requests.fetch_add(1, Ordering::Relaxed);
        let input = req.input;
        let obj = self.store.get(&input.bucket, &input.key)?;
        let len = obj.data.len() as u64;
        let span = check_read(
            &obj,
            conditions(
                input.if_match.as_ref(),
                input.if_none_match.as_ref(),
                input.if_modified_since.as_ref(),
                input.if_unmodified_since.as_ref(),
            ),
            input.range.as_ref(),
        )?;
        let (body, content_range) = match &span {
            None => (obj.data.clone(), None),
            Some(s) => (
                obj.data.slice(s.start as usize..s.end as usize),
                Some(conditional::content_range(s, len)),
            ),
        };
        let content_length = body.len() as i64;
        Ok(S3Response::new(GetObjectOutput {
            body: Some(StreamingBlob::new(BytesBody::new(
                body,
                Arc::clone(&self.stats),
            ))),
            accept_ranges: Some("bytes".into()),
            content_length: Some(content_length),
            content_range,
            content_type: Some(
                obj.content_type
                    .clone()
                    .unwrap_or_else(|| "application/octet-stream".into()),
            ),
            e_tag: Some(etag_of(&obj)),
            last_modified: Some(Timestamp::from(obj.last_modified)),
            metadata: obj.metadata.clone(),
            ..Default::default()
        }))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        self.stats.list_requests.fetch_add(1, Ordering::Relaxed);
        let input = req.input;
        let max_keys = check_max_keys(input.max_keys)?;
        let url = is_url_encoding(input.encoding_type.as_ref())?;
        let token_marker = match input.continuation_token.as_deref() {
            None => None,
            Some(t) => Some(listing::decode_token(t).ok_or_else(|| {
                s3_error!(
                    InvalidArgument,
                    "The continuation token provided is incorrect"
                )
            })?),
        };
        let prefix = input.prefix.clone().unwrap_or_default();
        let after = token_marker.as_deref().or(input.start_after.as_deref());
        let params = ListParams {
            prefix: &prefix,
            delimiter: input.delimiter.as_deref(),
            after,
            max_keys,
        };
        let listed = self.list(&input.bucket, &params, url)?;
        let enc = |s: Option<String>| {
            if url {
                s.map(|s| listing::url_encode(&s))
            } else {
                s
            }
        };
        let key_count = (listed.contents.len() + listed.prefixes.len()) as i32;
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: Some(enc(Some(prefix)).unwrap_or_default()),
            delimiter: enc(input.delimiter),
            max_keys: Some(max_keys as i32),
            key_count: Some(key_count),
            continuation_token: input.continuation_token,
            start_after: enc(input.start_after),
            is_truncated: Some(listed.is_truncated),
            next_continuation_token: listed.next_marker.as_deref().map(listing::encode_token),
            contents: (!listed.contents.is_empty()).then_some(listed.contents),
            common_prefixes: (!listed.prefixes.is_empty()).then_some(listed.prefixes),
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        self.stats.list_requests.fetch_add(1, Ordering::Relaxed);
        let input = req.input;
        let max_keys = check_max_keys(input.max_keys)?;
        let url = is_url_encoding(input.encoding_type.as_ref())?;
        let prefix = input.prefix.clone().unwrap_or_default();
        let params = ListParams {
            prefix: &prefix,
            delimiter: input.delimiter.as_deref(),
            after: input.marker.as_deref(),
            max_keys,
        };
        let listed = self.list(&input.bucket, &params, url)?;
        let enc = |s: Option<String>| {
            if url {
                s.map(|s| listing::url_encode(&s))
            } else {
                s
            }
        };
        Ok(S3Response::new(ListObjectsOutput {
            name: Some(input.bucket),
            prefix: Some(enc(Some(prefix)).unwrap_or_default()),
            delimiter: enc(input.delimiter),
            marker: Some(enc(input.marker).unwrap_or_default()),
            max_keys: Some(max_keys as i32),
            is_truncated: Some(listed.is_truncated),
            next_marker: enc(listed.next_marker),
            contents: (!listed.contents.is_empty()).then_some(listed.contents),
            common_prefixes: (!listed.prefixes.is_empty()).then_some(listed.prefixes),
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let input = req.input;
        let metadata: Option<HashMap<String, String>> = input.metadata;
        let id =
            self.store
                .create_upload(&input.bucket, &input.key, input.content_type, metadata)?;
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(id),
            ..Default::default()
        }))
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        self.stats.put_requests.fetch_add(1, Ordering::Relaxed);
        let input = req.input;
        let data = collect_body(input.body, input.content_length).await?;
        let etag = self.store.upload_part(
            &input.bucket,
            &input.key,
            &input.upload_id,
            input.part_number,
            data,
        )?;
        Ok(S3Response::new(UploadPartOutput {
            e_tag: Some(ETag::Strong(etag)),
            ..Default::default()
        }))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let input = req.input;
        let listed: Vec<(i32, String)> = input
            .multipart_upload
            .and_then(|m| m.parts)
            .unwrap_or_default()
            .into_iter()
            .map(|p| {
                (
                    p.part_number.unwrap_or(0),
                    p.e_tag.map(ETag::into_value).unwrap_or_default(),
                )
            })
            .collect();
        let obj = self.store.complete_upload(
            &input.bucket,
            &input.key,
            &input.upload_id,
            &listed,
            self.min_part_size,
        )?;
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            bucket: Some(input.bucket.clone()),
            key: Some(input.key.clone()),
            e_tag: Some(etag_of(&obj)),
            location: Some(format!("/{}/{}", input.bucket, input.key)),
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let input = req.input;
        self.store
            .abort_upload(&input.bucket, &input.key, &input.upload_id)?;
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }
}
