//! [`BlockCache`]: object data in memory, in blocks, within one global
//! budget shared by every open file.
//!
//! Blocks are keyed by object key, ETag and index, so blocks of a replaced
//! object are never served for its new version. A block is in one of three
//! states: cached (in moka, LRU, weighed in bytes), in flight (a fetch task
//! owns it and readers wait on its channel), or absent. Any number of
//! readers of an absent block cause one fetch; a sequential reader's
//! prefetch and its demand reads share the same fetches.
//!
//! Budget: `cache_size` bytes in all. A quarter (at least one block) is the
//! in-flight budget, a semaphore of block-sized permits held from the GET
//! until a block is complete and moves into the cache; the rest is moka's
//! capacity. Demand fetches wait for permits; prefetch only takes free ones,
//! so prefetch shrinks when memory is short and never delays a demand read.
//!
//! Fetches run as their own tasks: a reader that gives up (an interrupted
//! syscall) does not cancel a GET others wait for. A GET covers a run of
//! blocks; each block is handed to its waiters as soon as its bytes are in,
//! not when the whole run is.
//!
//! Memory of evicted full-size blocks is reused for new ones (see
//! [`super::pool`]); up to [`POOL_BYTES`] (or an eighth of the budget, if
//! less) of free buffers may wait there, outside the budget.
//!
//! Locking: `inflight` is a std mutex held only to look up, insert or
//! remove entries, never across an await.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use moka::future::Cache;
use moka::policy::EvictionPolicy;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use super::{blocks_for, BlockKey, ObjectVersion};
use crate::store::{ObjectStore, StoreError, StoreErrorKind};

/// Sizes of the read path.
#[derive(Debug, Clone, Copy)]
pub struct ReadConfig {
    /// The global memory budget: cached plus in-flight block data.
    pub cache_size: u64,
    /// Cache granularity and the smallest GET.
    pub block_size: u64,
    /// Bytes per prefetch GET (a multiple of the block size).
    pub part_size: u64,
    /// Largest read-ahead window of one handle.
    pub prefetch_window: u64,
}

/// Counters, for tests and (later) metrics.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub gets: AtomicU64,
    pub prefetch_gets: AtomicU64,
    pub bytes_fetched: AtomicU64,
    pub prefetch_skipped_for_budget: AtomicU64,
}

type Slot = Option<Result<Bytes, StoreError>>;

/// Most free buffers kept for reuse, in bytes.
pub const POOL_BYTES: u64 = 64 << 20;

struct Inner {
    store: Arc<dyn ObjectStore>,
    blocks: Cache<BlockKey, Bytes>,
    cfg: ReadConfig,
    part_blocks: u64,
    inflight: Mutex<HashMap<BlockKey, watch::Receiver<Slot>>>,
    budget: Arc<Semaphore>,
    budget_blocks: u64,
    stats: CacheStats,
    /// Buffers of evicted blocks, reused for new ones.
    pool: Arc<super::pool::BufferPool>,
}

/// See the module docs.
#[derive(Clone)]
pub struct BlockCache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for BlockCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockCache")
            .field("cfg", &self.inner.cfg)
            .field("entries", &self.inner.blocks.entry_count())
            .finish()
    }
}

enum State {
    Cached,
    Waiting(watch::Receiver<Slot>),
}

impl BlockCache {
    pub fn new(store: Arc<dyn ObjectStore>, cfg: ReadConfig) -> BlockCache {
        assert!(cfg.block_size > 0, "block size must be positive");
        let budget_blocks = (cfg.cache_size / 4 / cfg.block_size).max(1);
        let capacity = cfg
            .cache_size
            .saturating_sub(budget_blocks * cfg.block_size);
        let blocks = Cache::builder()
            .max_capacity(capacity)
            .weigher(|_k: &BlockKey, v: &Bytes| u32::try_from(v.len()).unwrap_or(u32::MAX))
            // moka's default TinyLFU may refuse to admit fresh blocks of a
            // streaming read; plain LRU keeps the newest.
            .eviction_policy(EvictionPolicy::lru())
            .build();
        let part_blocks = (cfg.part_size / cfg.block_size).clamp(1, budget_blocks);
        BlockCache {
            inner: Arc::new(Inner {
                store,
                blocks,
                cfg,
                part_blocks,
                inflight: Mutex::new(HashMap::new()),
                budget: Arc::new(Semaphore::new(budget_blocks as usize)),
                budget_blocks,
                stats: CacheStats::default(),
                pool: super::pool::BufferPool::new(
                    cfg.block_size as usize,
                    (POOL_BYTES.min(cfg.cache_size / 8) / cfg.block_size).max(1) as usize,
                ),
            }),
        }
    }

    pub fn config(&self) -> ReadConfig {
        self.inner.cfg
    }

    pub fn stats(&self) -> &CacheStats {
        &self.inner.stats
    }

    /// Bytes `[offset, offset+len)` of `obj`, clipped to its size.
    pub async fn read(
        &self,
        obj: &ObjectVersion,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, StoreError> {
        self.read_ahead(obj, offset, len, None).await
    }

    /// Like [`BlockCache::read`], and start fetching `ahead` (bytes) once
    /// the blocks of this read are claimed, so the read goes first.
    pub async fn read_ahead(
        &self,
        obj: &ObjectVersion,
        offset: u64,
        len: u64,
        ahead: Option<Range<u64>>,
    ) -> Result<Bytes, StoreError> {
        let end = offset.saturating_add(len).min(obj.size);
        let bs = self.inner.cfg.block_size;
        let blocks = blocks_for(&(offset..end), bs);
        let states = self.claim(obj, blocks.clone(), false);
        if let Some(ahead) = ahead {
            self.prefetch(obj, ahead);
        }
        if offset >= end {
            return Ok(Bytes::new());
        }
        let mut parts = Vec::with_capacity(states.len());
        for (i, state) in blocks.clone().zip(states) {
            parts.push(self.wait(obj, i, state).await?);
        }
        let first = blocks.start * bs;
        if parts.len() == 1 {
            let b = parts.pop().expect("one block");
            return Ok(b.slice((offset - first) as usize..(end - first) as usize));
        }
        let mut out = BytesMut::with_capacity((end - offset) as usize);
        for (i, b) in blocks.zip(parts) {
            let base = i * bs;
            let from = offset.saturating_sub(base) as usize;
            let to = ((end - base) as usize).min(b.len());
            out.extend_from_slice(&b[from..to]);
        }
        Ok(out.freeze())
    }

    /// Start fetching `range` (bytes) of `obj` ahead of a reader, in parts,
    /// as far as the in-flight budget allows right now.
    pub fn prefetch(&self, obj: &ObjectVersion, range: Range<u64>) {
        let end = range.end.min(obj.size);
        let blocks = blocks_for(&(range.start..end), self.inner.cfg.block_size);
        let _ = self.claim(obj, blocks, true);
    }

    fn key(obj: &ObjectVersion, index: u64) -> BlockKey {
        BlockKey {
            key: obj.key.clone(),
            etag: obj.etag.clone(),
            index,
        }
    }

    /// Classify every block of `blocks`, start fetches for absent ones (in
    /// runs of at most one part), and return how to get each block.
    fn claim(&self, obj: &ObjectVersion, blocks: Range<u64>, prefetch: bool) -> Vec<State> {
        let inner = &self.inner;
        let mut states = Vec::with_capacity((blocks.end - blocks.start) as usize);
        let mut runs: Vec<(u64, Vec<watch::Sender<Slot>>, Option<OwnedSemaphorePermit>)> =
            Vec::new();
        let mut inflight = lock(&inner.inflight);
        let mut i = blocks.start;
        while i < blocks.end {
            let key = Self::key(obj, i);
            if let Some(rx) = inflight.get(&key) {
                states.push(State::Waiting(rx.clone()));
                i += 1;
                continue;
            }
            if inner.blocks.contains_key(&key) {
                states.push(State::Cached);
                i += 1;
                continue;
            }
            // A run of absent blocks starting at i, at most one part.
            let mut n = 1;
            while n < inner.part_blocks && i + n < blocks.end {
                let k = Self::key(obj, i + n);
                if inflight.contains_key(&k) || inner.blocks.contains_key(&k) {
                    break;
                }
                n += 1;
            }
            let permit = if prefetch {
                match inner.budget.clone().try_acquire_many_owned(n as u32) {
                    Ok(p) => Some(p),
                    Err(_) => {
                        inner
                            .stats
                            .prefetch_skipped_for_budget
                            .fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            } else {
                None
            };
            let mut senders = Vec::with_capacity(n as usize);
            for j in i..i + n {
                let (tx, rx) = watch::channel(None);
                inflight.insert(Self::key(obj, j), rx.clone());
                states.push(State::Waiting(rx));
                senders.push(tx);
            }
            runs.push((i, senders, permit));
            i += n;
        }
        drop(inflight);
        for (first, senders, permit) in runs {
            let this = self.clone();
            let obj = obj.clone();
            tokio::spawn(
                async move { this.fetch_run(obj, first, senders, permit, prefetch).await },
            );
        }
        states
    }

    async fn wait(
        &self,
        obj: &ObjectVersion,
        index: u64,
        state: State,
    ) -> Result<Bytes, StoreError> {
        let mut state = state;
        loop {
            match state {
                State::Cached => {
                    if let Some(b) = self.inner.blocks.get(&Self::key(obj, index)).await {
                        self.inner.stats.hits.fetch_add(1, Ordering::Relaxed);
                        return Ok(b);
                    }
                    // Evicted between the check and now: claim it again.
                    let mut again = self.claim(obj, index..index + 1, false);
                    state = again.pop().expect("one block claimed");
                }
                State::Waiting(mut rx) => {
                    let slot = rx.wait_for(Option::is_some).await.map(|s| s.clone());
                    return match slot {
                        Ok(Some(r)) => r,
                        _ => Err(StoreError::new(
                            StoreErrorKind::Other,
                            "GetObject",
                            &obj.key,
                            "the fetch of this block was abandoned",
                        )),
                    };
                }
            }
        }
    }

    /// One GET for blocks `first..first+senders.len()`, handing each block
    /// to its waiters as soon as it is complete.
    async fn fetch_run(
        &self,
        obj: ObjectVersion,
        first: u64,
        senders: Vec<watch::Sender<Slot>>,
        permit: Option<OwnedSemaphorePermit>,
        prefetch: bool,
    ) {
        let inner = &self.inner;
        let n = senders.len() as u64;
        let mut permit = match permit {
            Some(p) => p,
            None => match inner
                .budget
                .clone()
                .acquire_many_owned(n.min(inner.budget_blocks) as u32)
                .await
            {
                Ok(p) => p,
                Err(_) => return self.fail_all(&obj, first, senders, shutting_down(&obj)),
            },
        };
        let stat = if prefetch {
            &inner.stats.prefetch_gets
        } else {
            &inner.stats.gets
        };
        stat.fetch_add(1, Ordering::Relaxed);
        if !prefetch {
            inner.stats.misses.fetch_add(n, Ordering::Relaxed);
        }
        let bs = inner.cfg.block_size;
        let start = first * bs;
        let end = ((first + n) * bs).min(obj.size);
        let mut body = match inner
            .store
            .get_stream(&obj.key, start..end, &obj.etag)
            .await
        {
            Ok(b) => b,
            Err(e) => return self.fail_all(&obj, first, senders, e),
        };
        let mut senders = senders.into_iter();
        let mut index = first;
        let block_len = |i: u64| (((i + 1) * bs).min(obj.size) - i * bs) as usize;
        let pool = inner.pool.clone();
        let mut buf = pool.take(block_len(index));
        while let Some(chunk) = body.next().await {
            let mut chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let rest: Vec<_> = senders.collect();
                    return self.fail_all(&obj, index, rest, e);
                }
            };
            inner
                .stats
                .bytes_fetched
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            while !chunk.is_empty() {
                let want = block_len(index) - buf.len();
                let piece = chunk.split_to(want.min(chunk.len()));
                buf.extend_from_slice(&piece);
                if buf.len() == block_len(index) {
                    let block = pool.freeze(std::mem::take(&mut buf));
                    let tx = senders.next().expect("one sender per block");
                    self.complete(&obj, index, tx, block).await;
                    // The block now counts in the cache's weight.
                    if permit.num_permits() > 1 {
                        drop(permit.split(1));
                    }
                    index += 1;
                    if index < first + n {
                        buf = pool.take(block_len(index));
                    }
                }
            }
        }
        let rest: Vec<_> = senders.collect();
        if !rest.is_empty() {
            let e = StoreError::new(
                StoreErrorKind::Protocol,
                "GetObject",
                &obj.key,
                "the body ended early",
            );
            self.fail_all(&obj, index, rest, e);
        }
    }

    async fn complete(
        &self,
        obj: &ObjectVersion,
        index: u64,
        tx: watch::Sender<Slot>,
        block: Bytes,
    ) {
        let key = Self::key(obj, index);
        // Into the cache before leaving the in-flight map, so a reader
        // always finds the block in one of the two.
        self.inner.blocks.insert(key.clone(), block.clone()).await;
        // moka applies evictions in batches; under a burst of inserts the
        // cache can run far past its capacity before they happen. Apply
        // them now so the budget holds (cheap: the pending work is small).
        self.inner.blocks.run_pending_tasks().await;
        lock(&self.inner.inflight).remove(&key);
        let _ = tx.send(Some(Ok(block)));
    }

    fn fail_all(
        &self,
        obj: &ObjectVersion,
        first: u64,
        senders: Vec<watch::Sender<Slot>>,
        e: StoreError,
    ) {
        let mut inflight = lock(&self.inner.inflight);
        for (j, _) in senders.iter().enumerate() {
            inflight.remove(&Self::key(obj, first + j as u64));
        }
        drop(inflight);
        for tx in senders {
            let _ = tx.send(Some(Err(e.clone())));
        }
    }

    /// Drop every cached block (tests).
    pub fn clear(&self) {
        self.inner.blocks.invalidate_all();
    }
}

fn shutting_down(obj: &ObjectVersion) -> StoreError {
    StoreError::new(
        StoreErrorKind::Other,
        "GetObject",
        &obj.key,
        "shutting down",
    )
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The map stays consistent across a panic (single inserts/removes).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    fn cfg(cache: u64, block: u64, part: u64) -> ReadConfig {
        ReadConfig {
            cache_size: cache,
            block_size: block,
            part_size: part,
            prefetch_window: 8 * part,
        }
    }

    async fn version(store: &MemoryStore, key: &str) -> ObjectVersion {
        let m = store.head(key).await.unwrap();
        ObjectVersion {
            key: key.into(),
            etag: m.etag.as_str().into(),
            size: m.size,
        }
    }

    fn data(n: usize, seed: u32) -> Vec<u8> {
        (0..n as u32)
            .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed) >> 13) as u8)
            .collect()
    }

    #[tokio::test]
    async fn exact_across_blocks_and_versions() {
        let store = Arc::new(MemoryStore::new("b"));
        let d = data(1000, 1);
        store.put("k", d.clone());
        let cache = BlockCache::new(store.clone(), cfg(1 << 20, 64, 256));
        let v1 = version(&store, "k").await;
        for (off, len) in [(0, 1000), (63, 2), (64, 64), (990, 100), (1000, 5), (5, 0)] {
            let got = cache.read(&v1, off, len).await.unwrap();
            let end = (off + len).min(1000) as usize;
            assert_eq!(&got[..], &d[(off as usize).min(end)..end], "{off}+{len}");
        }
        let gets = store.gets.load(Ordering::Relaxed);
        cache.read(&v1, 0, 1000).await.unwrap();
        assert_eq!(
            store.gets.load(Ordering::Relaxed),
            gets,
            "warm read hits the cache"
        );
        store.put("k", vec![1u8; 1000]);
        assert!(
            cache.read(&v1, 0, 1000).await.is_ok(),
            "cached blocks of v1 still serve v1 handles"
        );
        cache.clear();
        let err = cache.read(&v1, 0, 10).await.unwrap_err();
        assert_eq!(err.kind, StoreErrorKind::PreconditionFailed);
        let v2 = version(&store, "k").await;
        assert_eq!(
            &cache.read(&v2, 0, 1000).await.unwrap()[..],
            &[1u8; 1000][..]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_random_reads_are_byte_exact_with_a_small_cache() {
        let store = Arc::new(MemoryStore::new("b"));
        let files: Vec<Vec<u8>> = (0..4).map(|i| data(200_000 + i * 7919, i as u32)).collect();
        for (i, d) in files.iter().enumerate() {
            store.put(&format!("f{i}"), d.clone());
        }
        // 16 KiB of cache for 800 KB of data: constant eviction.
        let cache = BlockCache::new(store.clone(), cfg(16 << 10, 1024, 4096));
        let mut versions = Vec::new();
        for i in 0..4 {
            versions.push(version(&store, &format!("f{i}")).await);
        }
        let files = Arc::new(files);
        let versions = Arc::new(versions);
        let mut tasks = Vec::new();
        for t in 0..16u64 {
            let (cache, files, versions) = (cache.clone(), files.clone(), versions.clone());
            tasks.push(tokio::spawn(async move {
                let mut x = t * 7 + 1;
                for _ in 0..300 {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let f = (x >> 60) as usize % 4;
                    let size = files[f].len() as u64;
                    let off = (x >> 20) % size;
                    let len = (x >> 8) % 5000;
                    if x % 3 == 0 {
                        cache.prefetch(&versions[f], off..off + 8192);
                    }
                    let got = cache.read(&versions[f], off, len).await.unwrap();
                    let end = (off + len).min(size) as usize;
                    assert_eq!(&got[..], &files[f][off as usize..end]);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert!(cache.inner.blocks.weighted_size() <= 16 << 10);
        assert!(
            cache.inner.pool.reused.load(Ordering::Relaxed) > 100,
            "evicted blocks' buffers are reused"
        );
    }

    #[tokio::test]
    async fn concurrent_misses_of_one_block_make_one_get() {
        let store = Arc::new(MemoryStore::new("b"));
        store.put("k", data(4096, 3));
        let cache = BlockCache::new(store.clone(), cfg(1 << 20, 4096, 4096));
        let v = version(&store, "k").await;
        let reads = (0..20).map(|i| cache.read(&v, i * 100, 100));
        let results = futures::future::join_all(reads).await;
        assert!(results.iter().all(Result::is_ok));
        assert_eq!(store.gets.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn prefetch_fills_ahead_in_parts_within_the_budget() {
        let store = Arc::new(MemoryStore::new("b"));
        store.put("k", data(64 * 1024, 4));
        // Budget: 64 KiB / 4 = 16 blocks of 1 KiB in flight; parts of 8.
        let cache = BlockCache::new(store.clone(), cfg(64 << 10, 1024, 8 << 10));
        let v = version(&store, "k").await;
        cache.prefetch(&v, 0..32 << 10);
        // Wait for the prefetch to land.
        for _ in 0..100 {
            if cache.stats().prefetch_gets.load(Ordering::Relaxed) >= 2
                && lock(&cache.inner.inflight).is_empty()
            {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let gets = store.gets.load(Ordering::Relaxed);
        assert!(
            gets <= 4,
            "prefetched in parts of 8 blocks, got {gets} GETs"
        );
        let got = cache.read(&v, 0, 16 << 10).await.unwrap();
        assert_eq!(&got[..], &data(64 * 1024, 4)[..16 << 10]);
        assert_eq!(
            cache.stats().gets.load(Ordering::Relaxed),
            0,
            "served by the prefetch"
        );
    }
}
