//! Recycled block buffers.
//!
//! Every block read from the store lands in fresh memory unless its buffer
//! is reused, and fresh memory costs a page fault and a zeroed page per
//! 4 KiB: a fifth of the daemon's CPU time in a sequential read, measured
//! with perf. Once the cache is full, each block it evicts gives its buffer
//! back here when the last reader drops it, and the next block fetched is
//! written into it.
//!
//! Only full-size blocks are pooled: a short block (an object's last, or a
//! small file) gets a buffer of its exact size, so the cache's weight of a
//! block is always the memory it holds. At most `max_free` buffers wait
//! here; beyond that they are freed.
//!
//! Locking: one mutex around the free list, held only to push or pop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

pub(crate) struct BufferPool {
    size: usize,
    max_free: usize,
    free: Mutex<Vec<Vec<u8>>>,
    /// Buffers handed out again instead of allocated (for tests and stats).
    pub(crate) reused: AtomicU64,
}

impl BufferPool {
    pub(crate) fn new(size: usize, max_free: usize) -> Arc<BufferPool> {
        Arc::new(BufferPool {
            size,
            max_free,
            free: Mutex::new(Vec::new()),
            reused: AtomicU64::new(0),
        })
    }

    fn free_list(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        // A push or pop leaves the list consistent even after a panic.
        self.free.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An empty buffer for a block of `len` bytes.
    pub(crate) fn take(&self, len: usize) -> Vec<u8> {
        if len == self.size {
            if let Some(buf) = self.free_list().pop() {
                self.reused.fetch_add(1, Ordering::Relaxed);
                return buf;
            }
        }
        Vec::with_capacity(len)
    }

    /// The filled buffer as a block; a full-size one comes back to the pool
    /// when its last `Bytes` is dropped.
    pub(crate) fn freeze(self: &Arc<Self>, buf: Vec<u8>) -> Bytes {
        if buf.len() == self.size && buf.capacity() == self.size {
            Bytes::from_owner(Pooled {
                buf,
                pool: self.clone(),
            })
        } else {
            Bytes::from(buf)
        }
    }

    #[cfg(test)]
    pub(crate) fn free_count(&self) -> usize {
        self.free_list().len()
    }
}

struct Pooled {
    buf: Vec<u8>,
    pool: Arc<BufferPool>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let mut free = self.pool.free_list();
        if free.len() < self.pool.max_free {
            let mut buf = std::mem::take(&mut self.buf);
            buf.clear();
            free.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_blocks_come_back_short_ones_do_not() {
        let pool = BufferPool::new(8, 2);
        let mut a = pool.take(8);
        a.extend_from_slice(b"abcdefgh");
        let a = pool.freeze(a);
        let part = a.slice(2..4);
        drop(a);
        assert_eq!(pool.free_count(), 0, "a slice still holds it");
        assert_eq!(&part[..], b"cd");
        drop(part);
        assert_eq!(pool.free_count(), 1);
        let mut b = pool.take(8);
        assert_eq!((b.len(), b.capacity()), (0, 8));
        assert_eq!(pool.reused.load(Ordering::Relaxed), 1);
        b.extend_from_slice(b"12345678");
        assert_eq!(&pool.freeze(b)[..], b"12345678", "no stale bytes");
        let mut short = pool.take(3);
        short.extend_from_slice(b"xyz");
        drop(pool.freeze(short));
        assert_eq!(pool.free_count(), 1, "short blocks are not pooled");
        // At most max_free wait in the pool.
        let blocks: Vec<Bytes> = (0..5)
            .map(|_| {
                let mut v = pool.take(8);
                v.resize(8, 0);
                pool.freeze(v)
            })
            .collect();
        drop(blocks);
        assert_eq!(pool.free_count(), 2);
    }
}
