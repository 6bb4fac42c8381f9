//! The in-memory object store: buckets, objects and in-progress multipart uploads.
//!
//! Objects hold their data as [`Bytes`], so a GET hands out zero-copy slices. Keys are plain
//! `String`s in a `BTreeMap` (byte-wise order, as S3 lists them), so any key S3 accepts can be
//! stored — `x` next to `x/y`, keys ending in `/` with data, `a//b`, `../`, control characters.
//! Errors are S3 errors (`NoSuchBucket`, `NoSuchKey`, ...), shared by the HTTP handlers and the
//! direct test API.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use md5::{Digest, Md5};
use s3s::{s3_error, S3Error, S3Result};

/// One stored object.
#[derive(Debug, Clone)]
pub struct Object {
    /// The content.
    pub data: Bytes,
    /// Entity tag without quotes: hex MD5, or `hex(md5(part md5s))-N` for multipart uploads.
    pub etag: String,
    /// Millisecond precision, as S3 lists it.
    pub last_modified: SystemTime,
    /// `Content-Type` given at upload.
    pub content_type: Option<String>,
    /// `x-amz-meta-*` user metadata.
    pub metadata: Option<HashMap<String, String>>,
}

impl Object {
    /// A new object with a fresh timestamp and the MD5 ETag of `data`.
    pub fn new(data: Bytes) -> Object {
        let etag = md5_hex(&data);
        Object {
            data,
            etag,
            last_modified: now_millis(),
            content_type: None,
            metadata: None,
        }
    }
}

/// One bucket.
#[derive(Debug)]
pub struct Bucket {
    /// Creation time.
    pub created: SystemTime,
    /// Key -> object.
    pub objects: BTreeMap<String, Arc<Object>>,
}

/// One uploaded part of a multipart upload.
#[derive(Debug, Clone)]
pub struct Part {
    /// The content.
    pub data: Bytes,
    /// Binary MD5 of the content.
    pub md5: [u8; 16],
}

/// An in-progress multipart upload.
#[derive(Debug)]
pub struct Upload {
    /// Target bucket.
    pub bucket: String,
    /// Target key.
    pub key: String,
    /// `Content-Type` given at creation.
    pub content_type: Option<String>,
    /// User metadata given at creation.
    pub metadata: Option<HashMap<String, String>>,
    /// Part number -> part.
    pub parts: BTreeMap<i32, Part>,
}

/// All buckets and uploads.
#[derive(Debug, Default)]
pub struct Store {
    buckets: RwLock<BTreeMap<String, Bucket>>,
    uploads: Mutex<HashMap<String, Upload>>,
    upload_seq: AtomicU64,
}

/// Hex MD5 of `data`.
pub fn md5_hex(data: &[u8]) -> String {
    hex(&Md5::digest(data))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The current time truncated to milliseconds, with a non-zero millisecond part (so clients that
/// drop sub-second precision are noticed).
pub fn now_millis() -> SystemTime {
    let mut ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    if ms % 1000 == 0 {
        ms += 1;
    }
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn no_such_bucket() -> S3Error {
    s3_error!(NoSuchBucket, "The specified bucket does not exist")
}

fn no_such_key() -> S3Error {
    s3_error!(NoSuchKey, "The specified key does not exist.")
}

fn no_such_upload() -> S3Error {
    s3_error!(
        NoSuchUpload,
        "The specified upload does not exist. The upload ID may be invalid, or the upload may have been aborted or completed."
    )
}

impl Store {
    /// Creates `name`; `BucketAlreadyOwnedByYou` when it exists.
    pub fn create_bucket(&self, name: &str) -> S3Result<()> {
        let mut b = self.buckets.write().unwrap();
        if b.contains_key(name) {
            return Err(s3_error!(
                BucketAlreadyOwnedByYou,
                "Your previous request to create the named bucket succeeded and you already own it."
            ));
        }
        b.insert(
            name.to_owned(),
            Bucket {
                created: now_millis(),
                objects: BTreeMap::new(),
            },
        );
        Ok(())
    }

    /// Deletes an empty bucket.
    pub fn delete_bucket(&self, name: &str) -> S3Result<()> {
        let mut b = self.buckets.write().unwrap();
        match b.get(name) {
            None => Err(no_such_bucket()),
            Some(bucket) if !bucket.objects.is_empty() => Err(s3_error!(
                BucketNotEmpty,
                "The bucket you tried to delete is not empty"
            )),
            Some(_) => {
                b.remove(name);
                Ok(())
            }
        }
    }

    /// Whether `name` exists.
    pub fn bucket_exists(&self, name: &str) -> bool {
        self.buckets.read().unwrap().contains_key(name)
    }

    /// (name, creation time) of every bucket, sorted by name.
    pub fn list_buckets(&self) -> Vec<(String, SystemTime)> {
        let b = self.buckets.read().unwrap();
        b.iter().map(|(k, v)| (k.clone(), v.created)).collect()
    }

    /// Runs `f` on bucket `name` under the read lock.
    pub fn with_bucket<R>(&self, name: &str, f: impl FnOnce(&Bucket) -> R) -> S3Result<R> {
        let b = self.buckets.read().unwrap();
        let bucket = b.get(name).ok_or_else(no_such_bucket)?;
        Ok(f(bucket))
    }

    /// Stores `obj` under `key`, replacing any previous object.
    pub fn put(&self, bucket: &str, key: &str, obj: Object) -> S3Result<Arc<Object>> {
        let obj = Arc::new(obj);
        let mut b = self.buckets.write().unwrap();
        let bucket = b.get_mut(bucket).ok_or_else(no_such_bucket)?;
        bucket.objects.insert(key.to_owned(), Arc::clone(&obj));
        Ok(obj)
    }

    /// The object under `key`.
    pub fn get(&self, bucket: &str, key: &str) -> S3Result<Arc<Object>> {
        let b = self.buckets.read().unwrap();
        let bucket = b.get(bucket).ok_or_else(no_such_bucket)?;
        bucket.objects.get(key).cloned().ok_or_else(no_such_key)
    }

    /// Removes `key` (no error when it does not exist, as S3).
    pub fn delete(&self, bucket: &str, key: &str) -> S3Result<()> {
        let mut b = self.buckets.write().unwrap();
        let bucket = b.get_mut(bucket).ok_or_else(no_such_bucket)?;
        bucket.objects.remove(key);
        Ok(())
    }

    /// Starts a multipart upload; returns its id.
    pub fn create_upload(
        &self,
        bucket: &str,
        key: &str,
        content_type: Option<String>,
        metadata: Option<HashMap<String, String>>,
    ) -> S3Result<String> {
        if !self.bucket_exists(bucket) {
            return Err(no_such_bucket());
        }
        let n = self.upload_seq.fetch_add(1, Ordering::Relaxed);
        let id = format!(
            "upload-{n:08}-{}",
            &md5_hex(format!("{bucket}/{key}/{n}").as_bytes())[..16]
        );
        self.uploads.lock().unwrap().insert(
            id.clone(),
            Upload {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
                content_type,
                metadata,
                parts: BTreeMap::new(),
            },
        );
        Ok(id)
    }

    /// Stores part `number` of upload `id`; returns its hex MD5.
    pub fn upload_part(
        &self,
        bucket: &str,
        key: &str,
        id: &str,
        number: i32,
        data: Bytes,
    ) -> S3Result<String> {
        if !(1..=10_000).contains(&number) {
            return Err(s3_error!(
                InvalidArgument,
                "Part number must be an integer between 1 and 10000, inclusive"
            ));
        }
        let md5: [u8; 16] = Md5::digest(&data).into();
        let mut u = self.uploads.lock().unwrap();
        let upload = u.get_mut(id).ok_or_else(no_such_upload)?;
        if upload.bucket != bucket || upload.key != key {
            return Err(no_such_upload());
        }
        upload.parts.insert(number, Part { data, md5 });
        Ok(hex(&md5))
    }

    /// Aborts upload `id`.
    pub fn abort_upload(&self, bucket: &str, key: &str, id: &str) -> S3Result<()> {
        let mut u = self.uploads.lock().unwrap();
        match u.get(id) {
            Some(up) if up.bucket == bucket && up.key == key => {
                u.remove(id);
                Ok(())
            }
            _ => Err(no_such_upload()),
        }
    }

    /// Completes upload `id` from the listed `(part number, etag)` pairs, as S3 does: parts in
    /// ascending order, each existing with a matching ETag, all but the last at least
    /// `min_part_size` bytes. The object's ETag is `hex(md5(concatenated part MD5s))-N`.
    pub fn complete_upload(
        &self,
        bucket: &str,
        key: &str,
        id: &str,
        listed: &[(i32, String)],
        min_part_size: u64,
    ) -> S3Result<Arc<Object>> {
        let mut u = self.uploads.lock().unwrap();
        let upload = match u.get(id) {
            Some(up) if up.bucket == bucket && up.key == key => up,
            _ => return Err(no_such_upload()),
        };
        if listed.is_empty() {
            return Err(s3_error!(
                MalformedXML,
                "The XML you provided was not well-formed or did not validate against our published schema"
            ));
        }
        let mut parts = Vec::with_capacity(listed.len());
        let mut prev = 0;
        for (number, etag) in listed {
            if *number <= prev {
                return Err(s3_error!(
                    InvalidPartOrder,
                    "The list of parts was not in ascending order. The parts list must be specified in order by part number."
                ));
            }
            prev = *number;
            let part = upload.parts.get(number).ok_or_else(|| {
                s3_error!(
                    InvalidPart,
                    "One or more of the specified parts could not be found. The part may not have been uploaded, or the specified entity tag may not match the part's entity tag."
                )
            })?;
            if etag.trim_matches('"') != hex(&part.md5) {
                return Err(s3_error!(
                    InvalidPart,
                    "One or more of the specified parts could not be found. The part may not have been uploaded, or the specified entity tag may not match the part's entity tag."
                ));
            }
            parts.push(part);
        }
        for p in &parts[..parts.len() - 1] {
            if (p.data.len() as u64) < min_part_size {
                return Err(s3_error!(
                    EntityTooSmall,
                    "Your proposed upload is smaller than the minimum allowed object size."
                ));
            }
        }
        let total: usize = parts.iter().map(|p| p.data.len()).sum();
        let mut data = Vec::with_capacity(total);
        let mut md5s = Vec::with_capacity(parts.len() * 16);
        for p in &parts {
            data.extend_from_slice(&p.data);
            md5s.extend_from_slice(&p.md5);
        }
        let etag = format!("{}-{}", md5_hex(&md5s), parts.len());
        let obj = Object {
            data: Bytes::from(data),
            etag,
            last_modified: now_millis(),
            content_type: upload.content_type.clone(),
            metadata: upload.metadata.clone(),
        };
        u.remove(id);
        drop(u);
        self.put(bucket, key, obj)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_etag() {
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
        let o = Object::new(Bytes::from_static(b"hello"));
        assert_eq!(o.etag, "5d41402abc4b2a76b9719d911017c592");
        let ms = o.last_modified.duration_since(UNIX_EPOCH).unwrap();
        assert_eq!(ms.subsec_nanos() % 1_000_000, 0);
        assert_ne!(ms.subsec_millis(), 0);
    }

    #[test]
    fn buckets_and_objects() {
        let s = Store::default();
        s.create_bucket("b").unwrap();
        assert_eq!(
            s.create_bucket("b").unwrap_err().code().as_str(),
            "BucketAlreadyOwnedByYou"
        );
        for k in ["x", "x/y", "x/", "a//b", "../", "\u{1}"] {
            s.put("b", k, Object::new(Bytes::from(k.to_owned())))
                .unwrap();
        }
        assert_eq!(&s.get("b", "x/").unwrap().data[..], b"x/");
        assert_eq!(s.get("b", "nope").unwrap_err().code().as_str(), "NoSuchKey");
        assert_eq!(
            s.get("nob", "x").unwrap_err().code().as_str(),
            "NoSuchBucket"
        );
        assert_eq!(
            s.delete_bucket("b").unwrap_err().code().as_str(),
            "BucketNotEmpty"
        );
        s.delete("b", "x").unwrap();
        s.delete("b", "x").unwrap();
        assert_eq!(s.with_bucket("b", |b| b.objects.len()).unwrap(), 5);
    }

    #[test]
    fn multipart_etag() {
        let s = Store::default();
        s.create_bucket("b").unwrap();
        let id = s.create_upload("b", "k", None, None).unwrap();
        let e1 = s
            .upload_part("b", "k", &id, 1, Bytes::from(vec![1u8; 10]))
            .unwrap();
        let e2 = s
            .upload_part("b", "k", &id, 2, Bytes::from(vec![2u8; 3]))
            .unwrap();
        let err = s
            .complete_upload("b", "k", &id, &[(2, e2.clone()), (1, e1.clone())], 0)
            .unwrap_err();
        assert_eq!(err.code().as_str(), "InvalidPartOrder");
        let err = s
            .complete_upload("b", "k", &id, &[(1, e1.clone()), (2, e2.clone())], 100)
            .unwrap_err();
        assert_eq!(err.code().as_str(), "EntityTooSmall");
        let err = s
            .complete_upload("b", "k", &id, &[(1, e2.clone())], 0)
            .unwrap_err();
        assert_eq!(err.code().as_str(), "InvalidPart");
        let obj = s
            .complete_upload("b", "k", &id, &[(1, format!("\"{e1}\"")), (2, e2)], 10)
            .unwrap();
        assert_eq!(obj.data.len(), 13);
        let mut md5s = Vec::new();
        md5s.extend_from_slice(&Md5::digest([1u8; 10]));
        md5s.extend_from_slice(&Md5::digest([2u8; 3]));
        assert_eq!(obj.etag, format!("{}-2", md5_hex(&md5s)));
        assert_eq!(
            s.abort_upload("b", "k", &id).unwrap_err().code().as_str(),
            "NoSuchUpload"
        );
    }
}
