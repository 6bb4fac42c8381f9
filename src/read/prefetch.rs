//! [`PrefetchWindow`]: per-handle detection of sequential reads and the size
//! of the read-ahead window. Pure logic; the cache does the fetching.
//!
//! A read that starts where the previous ones ended (within [`SLACK`], since
//! the kernel's asynchronous reads arrive slightly out of order) is
//! sequential. While reads stay sequential the window starts at one part
//! and doubles each time it is topped up, up to the maximum; a seek drops it
//! back to nothing, so random access reads only the blocks it needs.

use std::ops::Range;

/// How far a read may start from where the last one ended and still count
/// as sequential: several concurrent FUSE reads of up to 1 MiB each.
pub const SLACK: u64 = 8 << 20;

#[derive(Debug, Clone)]
pub struct PrefetchWindow {
    /// The first window, and the unit it grows by (one part).
    initial: u64,
    max: u64,
    window: u64,
    /// Where the reader is expected next.
    next: u64,
    /// Everything below this was already requested ahead.
    requested_to: u64,
    reads: u64,
}

impl PrefetchWindow {
    pub fn new(initial: u64, max: u64) -> PrefetchWindow {
        PrefetchWindow {
            initial,
            // 0 turns prefetch off; otherwise at least one part.
            max: if max == 0 { 0 } else { max.max(initial) },
            window: 0,
            next: 0,
            requested_to: 0,
            reads: 0,
        }
    }

    /// Record a read of `[offset, offset+len)` of an object of `size`
    /// bytes; returns the byte range to fetch ahead, if any.
    pub fn on_read(&mut self, offset: u64, len: u64, size: u64) -> Option<Range<u64>> {
        let end = offset.saturating_add(len).min(size);
        let sequential = if self.reads == 0 {
            offset == 0
        } else {
            offset.abs_diff(self.next) <= SLACK
        };
        self.reads += 1;
        if !sequential || self.max == 0 {
            self.window = 0;
            self.next = end;
            self.requested_to = end;
            return None;
        }
        self.next = self.next.max(end);
        // Top up once less than half a window is left ahead of the reader.
        let ahead = self.requested_to.saturating_sub(self.next);
        if self.window != 0 && ahead >= self.window / 2 {
            return None;
        }
        self.window = if self.window == 0 {
            self.initial
        } else {
            (self.window * 2).min(self.max)
        };
        let from = self.requested_to.max(self.next);
        let to = self.next.saturating_add(self.window).min(size);
        if to <= from {
            return None;
        }
        self.requested_to = to;
        Some(from..to)
    }

    pub fn window(&self) -> u64 {
        self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn grows_while_sequential_and_resets_on_seek() {
        let mut w = PrefetchWindow::new(16 * MIB, 128 * MIB);
        let size = 10_000 * MIB;
        assert_eq!(w.on_read(0, MIB, size), Some(MIB..17 * MIB));
        let mut windows = vec![w.window()];
        let mut requested = 17 * MIB;
        for i in 1..400u64 {
            if let Some(r) = w.on_read(i * MIB, MIB, size) {
                assert_eq!(r.start, requested, "no gaps, no overlaps");
                requested = r.end;
                windows.push(w.window());
            }
            assert!(requested >= (i + 1) * MIB, "always ahead of the reader");
        }
        assert_eq!(windows[..4], [16 * MIB, 32 * MIB, 64 * MIB, 128 * MIB]);
        assert!(windows.iter().all(|&x| x <= 128 * MIB));
        // A seek: nothing fetched ahead, the window starts over.
        assert_eq!(w.on_read(5000 * MIB, MIB, size), None);
        assert_eq!(w.window(), 0);
        assert_eq!(
            w.on_read(5001 * MIB, MIB, size),
            Some(5002 * MIB..5018 * MIB)
        );
    }

    #[test]
    fn random_reads_never_prefetch() {
        let mut w = PrefetchWindow::new(16 * MIB, 128 * MIB);
        let size = 1 << 40;
        let mut x = 12345u64;
        for _ in 0..1000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let off = (x >> 20) % (size - MIB) + 100 * MIB;
            assert_eq!(w.on_read(off, 4096, size), None);
        }
    }

    #[test]
    fn out_of_order_reads_stay_sequential_and_end_is_clipped() {
        let mut w = PrefetchWindow::new(4 * MIB, 8 * MIB);
        let size = 10 * MIB;
        assert!(w.on_read(0, MIB, size).is_some());
        let _ = w.on_read(2 * MIB, MIB, size);
        let _ = w.on_read(MIB, MIB, size);
        let r = w.on_read(3 * MIB, MIB, size);
        assert!(r.is_none_or(|r| r.end <= size));
        assert!(w.window() > 0);
        assert_eq!(w.on_read(9 * MIB, 4 * MIB, size).map(|r| r.end), None);
    }

    #[test]
    fn disabled_when_max_is_zero() {
        let mut w = PrefetchWindow::new(0, 0);
        assert_eq!(w.on_read(0, MIB, 100 * MIB), None);
        let mut w = PrefetchWindow::new(16 * MIB, 0);
        for i in 0..10 {
            assert_eq!(w.on_read(i * MIB, MIB, 100 * MIB), None);
        }
    }
}
