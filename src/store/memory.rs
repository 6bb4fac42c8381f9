//! An in-memory [`ObjectStore`] for unit tests of the layers above the store
//! (filesystem semantics, caches), with request counters.
//!
//! Listing follows S3: keys in byte order, common prefixes rolled up at the
//! delimiter `/`, continuation tokens that are the last key or prefix
//! returned.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};

use super::{
    whole_seconds, BodyStream, ListPage, ObjectMeta, ObjectStore, StoreError, StoreErrorKind,
};

#[derive(Debug, Clone)]
struct Object {
    data: Bytes,
    etag: String,
    last_modified: SystemTime,
}

/// An in-memory bucket.
#[derive(Debug, Default)]
pub struct MemoryStore {
    bucket: String,
    /// Locking: held only for map lookups and copies, never across awaits.
    objects: Mutex<BTreeMap<String, Object>>,
    version: AtomicU64,
    pub gets: AtomicU64,
    pub heads: AtomicU64,
    pub lists: AtomicU64,
}

impl MemoryStore {
    pub fn new(bucket: &str) -> MemoryStore {
        MemoryStore {
            bucket: bucket.to_string(),
            ..Default::default()
        }
    }

    /// Create or replace an object (a new ETag each time).
    pub fn put(&self, key: &str, data: impl Into<Bytes>) {
        let v = self.version.fetch_add(1, Ordering::Relaxed);
        let obj = Object {
            data: data.into(),
            etag: format!("\"v{v}\""),
            last_modified: SystemTime::now(),
        };
        self.objects.lock().unwrap().insert(key.to_string(), obj);
    }

    pub fn remove(&self, key: &str) {
        self.objects.lock().unwrap().remove(key);
    }

    fn meta(key: &str, o: &Object) -> ObjectMeta {
        ObjectMeta {
            key: key.to_string(),
            size: o.data.len() as u64,
            etag: o.etag.clone(),
            last_modified: whole_seconds(o.last_modified),
        }
    }

    /// One listing page, synchronously (for property tests of pagination).
    pub fn list_sync_for_tests(
        &self,
        prefix: &str,
        token: Option<&str>,
        max_keys: u32,
    ) -> ListPage {
        self.list_sync(prefix, token, max_keys)
    }

    fn list_sync(&self, prefix: &str, token: Option<&str>, max_keys: u32) -> ListPage {
        let objects = self.objects.lock().unwrap();
        let mut page = ListPage::default();
        let mut count = 0u32;
        // Tokens say what the last entry was: `P:` a common prefix (skip all
        // keys under it), `K:` a key.
        let (skip_under, after) = match token {
            Some(t) if t.starts_with("P:") => (Some(&t[2..]), Some(&t[2..])),
            Some(t) => (None, Some(t.strip_prefix("K:").unwrap_or(t))),
            None => (None, None),
        };
        let start = after.unwrap_or(prefix);
        let mut last: Option<String> = None;
        for (key, obj) in
            objects.range::<str, _>((std::ops::Bound::Included(start), std::ops::Bound::Unbounded))
        {
            if !key.starts_with(prefix) {
                break;
            }
            if after.is_some_and(|t| key.as_str() <= t)
                || skip_under.is_some_and(|p| key.starts_with(p))
            {
                continue;
            }
            let rest = &key[prefix.len()..];
            let entry = match rest.find('/') {
                Some(i) => {
                    let p = format!("{prefix}{}", &rest[..=i]);
                    if page.prefixes.last() == Some(&p) {
                        continue;
                    }
                    p
                }
                None => key.clone(),
            };
            if count == max_keys.max(1) {
                page.next_token = last.clone();
                return page;
            }
            count += 1;
            if rest.contains('/') {
                page.prefixes.push(entry.clone());
                last = Some(format!("P:{entry}"));
            } else {
                page.objects.push(Self::meta(key, obj));
                last = Some(format!("K:{entry}"));
            }
        }
        page
    }
}

impl ObjectStore for MemoryStore {
    fn get_stream<'a>(
        &'a self,
        key: &'a str,
        range: Range<u64>,
        etag: &'a str,
    ) -> BoxFuture<'a, Result<BodyStream, StoreError>> {
        self.gets.fetch_add(1, Ordering::Relaxed);
        let result = match self.objects.lock().unwrap().get(key) {
            None => Err(StoreError::new(
                StoreErrorKind::NotFound,
                "GetObject",
                key,
                "no such key",
            )),
            Some(o) if o.etag != etag => Err(StoreError::new(
                StoreErrorKind::PreconditionFailed,
                "GetObject",
                key,
                "etag changed",
            )),
            Some(o) if range.start > o.data.len() as u64 => Err(StoreError::new(
                StoreErrorKind::InvalidRange,
                "GetObject",
                key,
                "",
            )),
            Some(o) => {
                let end = range.end.min(o.data.len() as u64);
                let chunk = o.data.slice(range.start as usize..end as usize);
                Ok(futures::stream::iter([Ok(chunk)]).boxed())
            }
        };
        futures::future::ready(result).boxed()
    }

    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<ObjectMeta, StoreError>> {
        self.heads.fetch_add(1, Ordering::Relaxed);
        let result = match self.objects.lock().unwrap().get(key) {
            None => Err(StoreError::new(
                StoreErrorKind::NotFound,
                "HeadObject",
                key,
                "",
            )),
            Some(o) => Ok(Self::meta(key, o)),
        };
        futures::future::ready(result).boxed()
    }

    fn list_page<'a>(
        &'a self,
        prefix: &'a str,
        token: Option<&'a str>,
        max_keys: u32,
    ) -> BoxFuture<'a, Result<ListPage, StoreError>> {
        self.lists.fetch_add(1, Ordering::Relaxed);
        futures::future::ready(Ok(self.list_sync(prefix, token, max_keys))).boxed()
    }

    fn bucket(&self) -> &str {
        &self.bucket
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(store: &MemoryStore, prefix: &str, max: u32) -> (Vec<String>, Vec<String>) {
        let (mut objs, mut prefixes) = (vec![], vec![]);
        let mut token: Option<String> = None;
        loop {
            let page = store.list_sync(prefix, token.as_deref(), max);
            objs.extend(page.objects.into_iter().map(|o| o.key));
            prefixes.extend(page.prefixes);
            match page.next_token {
                Some(t) => token = Some(t),
                None => return (objs, prefixes),
            }
        }
    }

    #[test]
    fn delimited_listing_pages_without_duplicates() {
        let s = MemoryStore::new("b");
        for k in ["a", "b/1", "b/2", "b/c/3", "c", "d/", "x", "x-1", "x/y"] {
            s.put(k, "z");
        }
        for max in [1, 2, 3, 1000] {
            let (objs, prefixes) = all(&s, "", max);
            assert_eq!(objs, ["a", "c", "x", "x-1"], "max {max}");
            assert_eq!(prefixes, ["b/", "d/", "x/"], "max {max}");
        }
        let (objs, prefixes) = all(&s, "b/", 1);
        assert_eq!(objs, ["b/1", "b/2"]);
        assert_eq!(prefixes, ["b/c/"]);
        let (objs, _) = all(&s, "d/", 1);
        assert_eq!(
            objs,
            ["d/"],
            "a marker lists as an object under its own prefix"
        );
    }
}
