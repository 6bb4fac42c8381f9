//! Directory handles and `readdir`: a streamed, paginated listing, and a
//! cache of complete listings.
//!
//! A handle lists its prefix page by page and keeps only the entries not
//! yet returned, so any directory lists with memory bounded by a page. Every
//! listed entry is recorded in the inode table with its attributes, so the
//! lookups and stats that follow (`ls -l`) need no request per entry, and
//! `readdirplus` hands the attributes to the kernel directly. Entries keep
//! their whole record, not just an inode number: the table may drop an idle
//! node before the entry is returned, and the record puts it back.
//!
//! Each entry `readdirplus` returns (but `.` and `..`) takes a kernel
//! reference, as a lookup does; plain `readdir` takes none.
//!
//! A listing that completes with at most [`MAX_CACHED_ENTRIES`] entries is
//! kept for the metadata TTL; a new handle within the TTL is served from it
//! without a LIST. All cached listings together hold at most
//! [`MAX_CACHED_TOTAL`] entries, the least recently used dropped first.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use super::dir::EntryStream;
use super::{dir_observed, lock, observed, DirEntry, Entry, Error, Fs, Result};
use crate::meta::{Kind, Node};
use crate::store::{ListPage, StoreError};

/// Entries per LIST page (the S3 maximum).
const LIST_PAGE: u32 = 1000;
/// Largest directory whose complete listing is cached (about 100 bytes an
/// entry: 10 MB at most for one directory).
pub const MAX_CACHED_ENTRIES: usize = 100_000;
/// Entries in all cached listings together (some 30 MB).
pub const MAX_CACHED_TOTAL: u64 = 200_000;

/// A complete listing of one directory, without `.` and `..`.
struct CachedListing {
    at: Instant,
    entries: Vec<Node>,
}

/// Complete listings by directory inode.
pub(super) struct ListingCache {
    map: moka::future::Cache<u64, Arc<CachedListing>>,
}

impl Default for ListingCache {
    fn default() -> Self {
        let map = moka::future::Cache::builder()
            .max_capacity(MAX_CACHED_TOTAL)
            .weigher(|_, l: &Arc<CachedListing>| {
                u32::try_from(l.entries.len() + 1).unwrap_or(u32::MAX)
            })
            .build();
        ListingCache { map }
    }
}

/// An entry ready to return: its record, for the table to resolve.
struct Ready {
    offset: u64,
    name: Arc<str>,
    node: Node,
    /// `.` or `..`: the kernel takes no reference on these.
    dot: bool,
}

/// State of one open directory. Locking: the async mutex serialises
/// readdir calls on one handle; it is held across the LIST of a page, which
/// only that handle waits for.
pub(super) struct DirHandle {
    /// The directory as it was at opendir: its number, its prefix (`key`),
    /// and its attributes for `.` if the table drops it.
    node: Node,
    stream: tokio::sync::Mutex<DirStream>,
}

#[derive(Default)]
struct DirStream {
    /// Ready entries not yet returned, with their offsets.
    ready: VecDeque<Ready>,
    next_offset: u64,
    token: Option<String>,
    started: bool,
    done: bool,
    entries: EntryStream,
    /// Everything listed so far, while it is small enough to cache.
    collected: Option<Vec<Node>>,
    /// The next page, already requested while the kernel consumes this one.
    ahead: Option<tokio::task::JoinHandle<std::result::Result<ListPage, StoreError>>>,
    /// When the listing started (a cached listing is as old as its start).
    since: Option<Instant>,
}

impl Drop for DirStream {
    fn drop(&mut self) {
        if let Some(h) = self.ahead.take() {
            h.abort();
        }
    }
}

impl DirStream {
    fn push(&mut self, node: Node) {
        self.next_offset += 1;
        self.ready.push_back(Ready {
            offset: self.next_offset,
            name: node.name.clone(),
            node,
            dot: false,
        });
    }

    fn push_dot(&mut self, name: &str, node: Node) {
        self.next_offset += 1;
        self.ready.push_back(Ready {
            offset: self.next_offset,
            name: Arc::from(name),
            node,
            dot: true,
        });
    }
}

impl Fs {
    pub fn opendir(&self, ino: u64) -> Result<u64> {
        let node = self.dir_node(ino)?;
        let fh = self
            .next_fh
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let handle = DirHandle {
            node,
            stream: tokio::sync::Mutex::new(DirStream::default()),
        };
        lock(&self.dirs).insert(fh, Arc::new(handle));
        Ok(fh)
    }

    pub fn releasedir(&self, fh: u64) {
        lock(&self.dirs).remove(&fh);
    }

    /// Entries after `offset`, each with its attributes; `add` returns true
    /// when the reply is full (that entry was not taken and is offered again
    /// next call). `plus`: the entries go to the kernel as lookups
    /// (`readdirplus`), and each taken one holds a reference.
    pub async fn readdir(
        &self,
        fh: u64,
        offset: u64,
        plus: bool,
        mut add: impl FnMut(&DirEntry, &Entry) -> bool,
    ) -> Result<()> {
        let handle = lock(&self.dirs)
            .get(&fh)
            .cloned()
            .ok_or(Error::BadHandle(fh))?;
        let mut s = handle.stream.lock().await;
        let behind = s.ready.front().map_or(s.next_offset, |e| e.offset - 1);
        if !s.started || offset < behind {
            // First call, or a rewind (seekdir/rewinddir): start over.
            *s = DirStream::default();
            s.started = true;
            s.collected = Some(Vec::new());
            let me = self
                .inodes
                .get(handle.node.ino)
                .unwrap_or_else(|| handle.node.clone());
            let parent = self.inodes.get(me.parent).unwrap_or_else(|| Node {
                ino: me.parent,
                ..me.clone()
            });
            s.push_dot(".", me);
            s.push_dot("..", parent);
            if let Some(cached) = self.cached_listing(handle.node.ino).await {
                for node in &cached.entries {
                    s.push(node.clone());
                }
                s.done = true;
                s.collected = None;
            }
        }
        loop {
            while let Some(r) = s.ready.front() {
                if r.offset <= offset {
                    s.ready.pop_front();
                    continue;
                }
                let refs = u64::from(plus && !r.dot);
                let node = if r.dot {
                    r.node.clone()
                } else {
                    self.inodes.resolve(&r.node, refs)
                };
                let e = DirEntry {
                    ino: node.ino,
                    offset: r.offset,
                    kind: node.kind,
                    name: r.name.clone(),
                };
                if add(&e, &self.entry(&node)) {
                    if refs > 0 {
                        self.inodes.forget(node.ino, refs);
                    }
                    return Ok(());
                }
                s.ready.pop_front();
            }
            if s.done {
                return Ok(());
            }
            self.next_page(&handle, &mut s).await?;
        }
    }

    async fn cached_listing(&self, ino: u64) -> Option<Arc<CachedListing>> {
        let c = self.listings.map.get(&ino).await?;
        if self.cfg.metadata_ttl.is_fresh(c.at.elapsed()) {
            Some(c)
        } else {
            self.listings.map.invalidate(&ino).await;
            None
        }
    }

    /// List one more page into the handle's ready entries.
    async fn next_page(&self, handle: &DirHandle, s: &mut DirStream) -> Result<()> {
        let started = *s.since.get_or_insert_with(Instant::now);
        let page = match s.ahead.take() {
            Some(h) => h
                .await
                .map_err(|e| Error::Internal(format!("the listing task ended: {e}")))?
                .map_err(Error::Store)?,
            None => self
                .store
                .list_page(&handle.node.key, s.token.as_deref(), LIST_PAGE)
                .await
                .map_err(Error::Store)?,
        };
        let next = page.next_token.clone();
        if let Some(t) = next.clone() {
            // Pipeline: ask for the next page now, so its round trip
            // overlaps the kernel's consumption of this one.
            let (store, prefix) = (self.store.clone(), handle.node.key.clone());
            s.ahead = Some(tokio::spawn(async move {
                store.list_page(&prefix, Some(&t), LIST_PAGE).await
            }));
        }
        let mut listed = s.entries.push_page(&handle.node.key, page);
        match next {
            Some(t) => s.token = Some(t),
            None => {
                listed.extend(s.entries.finish());
                s.done = true;
            }
        }
        for l in listed {
            let node = match (l.kind, &l.meta) {
                (Kind::File, Some(meta)) => self.inodes.upsert(
                    handle.node.ino,
                    &l.name,
                    Kind::File,
                    &meta.key,
                    observed(meta),
                    0,
                ),
                _ => {
                    let key = format!("{}{}/", handle.node.key, l.name);
                    self.inodes.upsert(
                        handle.node.ino,
                        &l.name,
                        Kind::Dir,
                        &key,
                        dir_observed(self.mount_time),
                        0,
                    )
                }
            };
            if let Some(c) = s.collected.as_mut() {
                c.push(node.clone());
                if c.len() > MAX_CACHED_ENTRIES {
                    s.collected = None;
                }
            }
            s.push(node);
        }
        if s.done {
            if let Some(entries) = s.collected.take() {
                let listing = CachedListing {
                    at: started,
                    entries,
                };
                self.listings
                    .map
                    .insert(handle.node.ino, Arc::new(listing))
                    .await;
            }
        }
        Ok(())
    }
}
