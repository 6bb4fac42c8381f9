//! Directory handles and `readdir`: a streamed, paginated listing, and a
//! cache of complete listings.
//!
//! A handle lists its prefix page by page and keeps only the entries not
//! yet returned, so any directory lists with memory bounded by a page. Every
//! listed entry is recorded in the inode table with its attributes, so the
//! lookups and stats that follow (`ls -l`) need no request per entry, and
//! `readdirplus` hands the attributes to the kernel directly.
//!
//! A listing that completes with at most [`MAX_CACHED_ENTRIES`] entries is
//! kept for the metadata TTL; a new handle within the TTL is served from it
//! without a LIST.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::dir::EntryStream;
use super::{dir_observed, lock, observed, DirEntry, Entry, Error, Fs, Result};
use crate::meta::{Kind, ROOT_INO};
use crate::store::{ListPage, StoreError};

/// Entries per LIST page (the S3 maximum).
const LIST_PAGE: u32 = 1000;
/// Largest directory whose complete listing is cached (about 100 bytes an
/// entry: 10 MB at most for one directory).
pub const MAX_CACHED_ENTRIES: usize = 100_000;

/// A complete listing of one directory, without `.` and `..`.
struct CachedListing {
    at: Instant,
    entries: Arc<Vec<(u64, Kind, String)>>,
}

/// Complete listings by directory inode. Locking: held only for map access.
#[derive(Default)]
pub(super) struct ListingCache {
    map: Mutex<HashMap<u64, CachedListing>>,
}

/// State of one open directory. Locking: the async mutex serialises
/// readdir calls on one handle; it is held across the LIST of a page, which
/// only that handle waits for.
pub(super) struct DirHandle {
    ino: u64,
    prefix: Arc<str>,
    stream: tokio::sync::Mutex<DirStream>,
}

#[derive(Default)]
struct DirStream {
    /// Ready entries not yet returned, with their offsets.
    ready: VecDeque<DirEntry>,
    next_offset: u64,
    token: Option<String>,
    started: bool,
    done: bool,
    entries: EntryStream,
    /// Everything listed so far, while it is small enough to cache.
    collected: Option<Vec<(u64, Kind, String)>>,
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
    fn push(&mut self, ino: u64, kind: Kind, name: &str) {
        self.next_offset += 1;
        self.ready.push_back(DirEntry {
            ino,
            offset: self.next_offset,
            kind,
            name: name.to_string(),
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
            ino: node.ino,
            prefix: node.key.clone(),
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
    /// next call).
    pub async fn readdir(
        &self,
        fh: u64,
        offset: u64,
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
            let parent = self.inodes.get(handle.ino).map_or(ROOT_INO, |n| n.parent);
            s.push(handle.ino, Kind::Dir, ".");
            s.push(parent, Kind::Dir, "..");
            if let Some(cached) = self.cached_listing(handle.ino) {
                for (ino, kind, name) in cached.iter() {
                    s.push(*ino, *kind, name);
                }
                s.done = true;
                s.collected = None;
            }
        }
        loop {
            while let Some(e) = s.ready.front() {
                if e.offset <= offset {
                    s.ready.pop_front();
                    continue;
                }
                let Some(node) = self.inodes.get(e.ino) else {
                    s.ready.pop_front();
                    continue;
                };
                if add(e, &self.entry(&node)) {
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

    fn cached_listing(&self, ino: u64) -> Option<Arc<Vec<(u64, Kind, String)>>> {
        let map = lock(&self.listings.map);
        let c = map.get(&ino)?;
        self.cfg
            .metadata_ttl
            .is_fresh(c.at.elapsed())
            .then(|| c.entries.clone())
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
                .list_page(&handle.prefix, s.token.as_deref(), LIST_PAGE)
                .await
                .map_err(Error::Store)?,
        };
        let next = page.next_token.clone();
        if let Some(t) = next.clone() {
            // Pipeline: ask for the next page now, so its round trip
            // overlaps the kernel's consumption of this one.
            let (store, prefix) = (self.store.clone(), handle.prefix.clone());
            s.ahead = Some(tokio::spawn(async move {
                store.list_page(&prefix, Some(&t), LIST_PAGE).await
            }));
        }
        let mut listed = s.entries.push_page(&handle.prefix, page);
        match next {
            Some(t) => s.token = Some(t),
            None => {
                listed.extend(s.entries.finish());
                s.done = true;
            }
        }
        for l in listed {
            let node = match (l.kind, &l.meta) {
                (Kind::File, Some(meta)) => {
                    self.inodes
                        .upsert(handle.ino, &l.name, Kind::File, &meta.key, observed(meta))
                }
                _ => {
                    let key = format!("{}{}/", handle.prefix, l.name);
                    self.inodes.upsert(
                        handle.ino,
                        &l.name,
                        Kind::Dir,
                        &key,
                        dir_observed(self.mount_time),
                    )
                }
            };
            s.push(node.ino, node.kind, &l.name);
            if let Some(c) = s.collected.as_mut() {
                c.push((node.ino, node.kind, l.name));
                if c.len() > MAX_CACHED_ENTRIES {
                    s.collected = None;
                }
            }
        }
        if s.done {
            if let Some(entries) = s.collected.take() {
                lock(&self.listings.map).insert(
                    handle.ino,
                    CachedListing {
                        at: started,
                        entries: Arc::new(entries),
                    },
                );
            }
        }
        Ok(())
    }
}
