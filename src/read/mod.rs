//! The read path: serves byte ranges of an opened object version from the
//! block cache, and keeps a prefetch window ahead of sequential readers.
//!
//! Owns: the [`BlockCache`] ([`cache`]) with its one global memory budget,
//! and the per-handle [`PrefetchWindow`] logic ([`prefetch`]).

pub mod cache;
mod pool;
pub mod prefetch;

use std::ops::Range;
use std::sync::Arc;

pub use cache::{BlockCache, CacheStats, ReadConfig};
pub use prefetch::PrefetchWindow;

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

/// Which blocks cover `range`, for blocks of `block_size`.
pub fn blocks_for(range: &Range<u64>, block_size: u64) -> Range<u64> {
    if range.start >= range.end {
        return 0..0;
    }
    range.start / block_size..(range.end - 1) / block_size + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_arithmetic() {
        assert_eq!(blocks_for(&(0..0), 4), 0..0);
        assert_eq!(blocks_for(&(0..1), 4), 0..1);
        assert_eq!(blocks_for(&(0..4), 4), 0..1);
        assert_eq!(blocks_for(&(3..5), 4), 0..2);
        assert_eq!(blocks_for(&(4..9), 4), 1..3);
    }
}
