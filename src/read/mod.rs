//! The read path: serves byte ranges of an opened object version from a
//! block cache, fetching missing blocks with ranged GETs.
//!
//! Owns: the [`BlockCache`] (moka, weighed in bytes, LRU) and the block
//! arithmetic. Blocks are keyed by object key, ETag and block index, so a
//! new version of an object never meets blocks of the old one. Concurrent
//! misses for one block coalesce into one GET (moka's `try_get_with`);
//! errors are not cached.

use std::ops::Range;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use moka::future::Cache;
use moka::policy::EvictionPolicy;

use crate::store::{ObjectStore, StoreError};

/// Identifies one block of one object version.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlockKey {
    pub key: Arc<str>,
    pub etag: Arc<str>,
    pub index: u64,
}

/// The version of an object a handle reads (pinned at open).
#[derive(Debug, Clone)]
pub struct ObjectVersion {
    pub key: Arc<str>,
    pub etag: Arc<str>,
    pub size: u64,
}

/// Blocks of objects in memory, within a byte budget.
#[derive(Clone)]
pub struct BlockCache {
    store: Arc<dyn ObjectStore>,
    blocks: Cache<BlockKey, Bytes>,
    block_size: u64,
}

impl std::fmt::Debug for BlockCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockCache")
            .field("block_size", &self.block_size)
            .field("entries", &self.blocks.entry_count())
            .finish()
    }
}

/// Which blocks cover `range`, for blocks of `block_size`.
pub fn blocks_for(range: &Range<u64>, block_size: u64) -> Range<u64> {
    if range.start >= range.end {
        return 0..0;
    }
    range.start / block_size..(range.end - 1) / block_size + 1
}

impl BlockCache {
    pub fn new(store: Arc<dyn ObjectStore>, capacity_bytes: u64, block_size: u64) -> BlockCache {
        assert!(block_size > 0, "block size must be positive");
        let blocks = Cache::builder()
            .max_capacity(capacity_bytes)
            .weigher(|_k: &BlockKey, v: &Bytes| u32::try_from(v.len()).unwrap_or(u32::MAX))
            // moka's default TinyLFU may refuse to admit fresh blocks of a
            // streaming read; plain LRU keeps the newest.
            .eviction_policy(EvictionPolicy::lru())
            .build();
        BlockCache {
            store,
            blocks,
            block_size,
        }
    }

    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// One whole block (the last one of an object may be short).
    pub async fn block(&self, obj: &ObjectVersion, index: u64) -> Result<Bytes, StoreError> {
        let key = BlockKey {
            key: obj.key.clone(),
            etag: obj.etag.clone(),
            index,
        };
        let start = index * self.block_size;
        let end = (start + self.block_size).min(obj.size);
        let store = self.store.clone();
        let (k, e) = (obj.key.clone(), obj.etag.clone());
        self.blocks
            .try_get_with(
                key,
                async move { store.get_range(&k, start..end, &e).await },
            )
            .await
            .map_err(|e: Arc<StoreError>| (*e).clone())
    }

    /// Bytes `[offset, offset+len)` of `obj`, clipped to its size.
    pub async fn read(
        &self,
        obj: &ObjectVersion,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, StoreError> {
        let end = offset.saturating_add(len).min(obj.size);
        if offset >= end {
            return Ok(Bytes::new());
        }
        let range = offset..end;
        let blocks = blocks_for(&range, self.block_size);
        if blocks.end - blocks.start == 1 {
            let b = self.block(obj, blocks.start).await?;
            let base = blocks.start * self.block_size;
            return Ok(b.slice((offset - base) as usize..(end - base) as usize));
        }
        let fetched =
            futures::future::try_join_all(blocks.clone().map(|i| self.block(obj, i))).await?;
        let mut out = BytesMut::with_capacity((end - offset) as usize);
        for (i, b) in blocks.zip(fetched) {
            let base = i * self.block_size;
            let from = offset.saturating_sub(base) as usize;
            let to = ((end - base) as usize).min(b.len());
            out.extend_from_slice(&b[from..to]);
        }
        Ok(out.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use crate::store::ObjectStore;

    #[test]
    fn block_arithmetic() {
        assert_eq!(blocks_for(&(0..0), 4), 0..0);
        assert_eq!(blocks_for(&(0..1), 4), 0..1);
        assert_eq!(blocks_for(&(0..4), 4), 0..1);
        assert_eq!(blocks_for(&(3..5), 4), 0..2);
        assert_eq!(blocks_for(&(4..9), 4), 1..3);
    }

    #[tokio::test]
    async fn reads_are_exact_across_blocks_and_versions() {
        let store = Arc::new(MemoryStore::new("b"));
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        store.put("k", data.clone());
        let meta = store.head("k").await.unwrap();
        let cache = BlockCache::new(store.clone(), 1 << 20, 64);
        let v1 = ObjectVersion {
            key: "k".into(),
            etag: meta.etag.as_str().into(),
            size: 1000,
        };
        for (off, len) in [(0, 1000), (63, 2), (64, 64), (990, 100), (1000, 5), (5, 0)] {
            let got = cache.read(&v1, off, len).await.unwrap();
            let end = (off + len).min(1000) as usize;
            assert_eq!(&got[..], &data[(off as usize).min(end)..end], "{off}+{len}");
        }
        let gets = store.gets.load(std::sync::atomic::Ordering::Relaxed);
        cache.read(&v1, 0, 1000).await.unwrap();
        assert_eq!(
            store.gets.load(std::sync::atomic::Ordering::Relaxed),
            gets,
            "warm read hits the cache"
        );
        store.put("k", vec![1u8; 1000]);
        let err = cache.read(&v1, 0, 1000).await;
        assert!(err.is_ok(), "cached blocks of v1 still serve v1 handles");
        cache.blocks.invalidate_all();
        let err = cache.read(&v1, 0, 10).await.unwrap_err();
        assert_eq!(err.kind, crate::store::StoreErrorKind::PreconditionFailed);
    }
}
