//! The filesystem, testable without a kernel.
//!
//! Owns: the semantics of every operation (lookup, getattr, open, read,
//! readdir, statfs, and refusing writes), file and directory handles, and
//! metadata freshness (the TTL). Operations are async fns returning plain
//! structs or an [`Error`]; the FUSE glue only translates.
//!
//! Invariants:
//! - a handle pins the ETag and size seen at open; every read of that handle
//!   is served from that version or fails with ESTALE, never mixed;
//! - nothing here knows a fuser type.

pub mod dir;
pub mod error;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::config::MetadataTtl;
use crate::meta::inode::Observed;
use crate::meta::names::{check_segment, BadName};
use crate::meta::{InodeTable, Kind, Node, ROOT_INO};
use crate::read::{BlockCache, ObjectVersion};
use crate::store::{ObjectStore, StoreError, StoreErrorKind};
use dir::{EntryStream, Listing};
pub use error::{Error, Result};

/// How the tree looks to local users.
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// The key prefix the mount root maps to ("" or ending in `/`).
    pub prefix: String,
    pub uid: u32,
    pub gid: u32,
    pub file_mode: u16,
    pub dir_mode: u16,
    pub metadata_ttl: MetadataTtl,
    pub read_only: bool,
}

/// Attributes of a node as the kernel sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub mtime: SystemTime,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
}

/// A looked-up entry and how long the kernel may cache it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub attr: Attr,
    pub ttl: Duration,
}

/// One directory entry for `readdir`.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub ino: u64,
    /// The offset to resume after this entry.
    pub offset: u64,
    pub kind: Kind,
    pub name: String,
}

/// Answers for `statfs`: large, sane values (an object store has no fixed size).
#[derive(Debug, Clone, Copy)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
}

struct FileHandle {
    version: ObjectVersion,
}

/// State of one open directory. Locking: the async mutex serialises
/// readdir calls on one handle; it is held across the LIST of a page, which
/// only that handle waits for.
struct DirHandle {
    ino: u64,
    prefix: Arc<str>,
    stream: tokio::sync::Mutex<DirStream>,
}

#[derive(Default)]
struct DirStream {
    /// Ready entries not yet returned, with their offsets.
    ready: std::collections::VecDeque<DirEntry>,
    next_offset: u64,
    token: Option<String>,
    started: bool,
    done: bool,
    entries: EntryStream,
}

/// Entries per LIST page (the S3 maximum).
const LIST_PAGE: u32 = 1000;

/// The filesystem.
pub struct Fs {
    cfg: FsConfig,
    store: Arc<dyn ObjectStore>,
    cache: BlockCache,
    inodes: InodeTable,
    next_fh: AtomicU64,
    /// Locking: held only for map operations.
    files: Mutex<HashMap<u64, Arc<FileHandle>>>,
    dirs: Mutex<HashMap<u64, Arc<DirHandle>>>,
    mount_time: SystemTime,
}

impl Fs {
    pub fn new(cfg: FsConfig, store: Arc<dyn ObjectStore>, cache: BlockCache) -> Fs {
        let mount_time = crate::store::whole_seconds(SystemTime::now());
        Fs {
            inodes: InodeTable::new(&cfg.prefix, mount_time),
            cfg,
            store,
            cache,
            next_fh: AtomicU64::new(1),
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            mount_time,
        }
    }

    pub fn config(&self) -> &FsConfig {
        &self.cfg
    }

    fn attr(&self, node: &Node) -> Attr {
        match node.kind {
            Kind::Dir => Attr {
                ino: node.ino,
                kind: Kind::Dir,
                size: 4096,
                mtime: node.mtime,
                perm: self.cfg.dir_mode,
                uid: self.cfg.uid,
                gid: self.cfg.gid,
                nlink: 2,
            },
            Kind::File => Attr {
                ino: node.ino,
                kind: Kind::File,
                size: node.size,
                mtime: node.mtime,
                perm: self.cfg.file_mode,
                uid: self.cfg.uid,
                gid: self.cfg.gid,
                nlink: 1,
            },
        }
    }

    fn entry(&self, node: &Node) -> Entry {
        Entry {
            attr: self.attr(node),
            ttl: self.cfg.metadata_ttl.kernel_ttl(),
        }
    }

    fn node(&self, ino: u64) -> Result<Node> {
        self.inodes.get(ino).ok_or(Error::NotFound)
    }

    fn dir_node(&self, ino: u64) -> Result<Node> {
        let n = self.node(ino)?;
        if n.kind != Kind::Dir {
            return Err(Error::NotDir);
        }
        Ok(n)
    }

    fn fresh(&self, node: &Node) -> bool {
        self.cfg.metadata_ttl.is_fresh(node.validated.elapsed())
    }

    /// Look `name` up in directory `parent`.
    pub async fn lookup(&self, parent: u64, name: &OsStr) -> Result<Entry> {
        let parent = self.dir_node(parent)?;
        let name = name.to_str().ok_or(Error::NotFound)?;
        match check_segment(name) {
            Ok(()) => {}
            Err(BadName::TooLong) => return Err(Error::NameTooLong),
            Err(_) => return Err(Error::NotFound),
        }
        if let Some(node) = self.inodes.child(parent.ino, name) {
            if self.fresh(&node) {
                return Ok(self.entry(&node));
            }
        } else if let Some(when) = self.inodes.negative(parent.ino, name) {
            if self.cfg.metadata_ttl.is_fresh(when.elapsed()) {
                return Err(Error::NotFound);
            }
        }
        let key = format!("{}{}", parent.key, name);
        let dir_prefix = format!("{key}/");
        // Ask for both at once: is there a directory `name/`, and an object
        // `name`? The directory wins when both exist.
        let (listed, head) = tokio::join!(
            self.store.list_page(&dir_prefix, None, 1),
            self.store.head(&key)
        );
        let listed = listed.map_err(Error::from_store)?;
        if !listed.objects.is_empty() || !listed.prefixes.is_empty() {
            if head.is_ok() {
                tracing::info!(key = %key.escape_debug(), "an object and a directory share this name; the directory wins and the object is hidden");
            }
            let node = self.inodes.upsert(
                parent.ino,
                name,
                Kind::Dir,
                &dir_prefix,
                dir_observed(self.mount_time),
            );
            return Ok(self.entry(&node));
        }
        match head {
            Ok(meta) => {
                let node = self
                    .inodes
                    .upsert(parent.ino, name, Kind::File, &key, observed(&meta));
                Ok(self.entry(&node))
            }
            Err(e) if e.kind == StoreErrorKind::NotFound => {
                self.inodes.set_negative(parent.ino, name);
                Err(Error::NotFound)
            }
            Err(e) => Err(Error::from_store(e)),
        }
    }

    /// Attributes of `ino`, revalidated against the store when stale.
    pub async fn getattr(&self, ino: u64) -> Result<Entry> {
        let node = self.node(ino)?;
        if node.kind == Kind::Dir || self.fresh(&node) {
            return Ok(self.entry(&node));
        }
        let node = self.revalidate_file(&node).await?;
        Ok(self.entry(&node))
    }

    async fn revalidate_file(&self, node: &Node) -> Result<Node> {
        match self.store.head(&node.key).await {
            Ok(meta) => Ok(self
                .inodes
                .refresh(node.ino, observed(&meta))
                .ok_or(Error::NotFound)?),
            Err(e) if e.kind == StoreErrorKind::NotFound => {
                self.inodes.remove_child(node.parent, &node.name);
                Err(Error::NotFound)
            }
            Err(e) => Err(Error::from_store(e)),
        }
    }

    /// Open a file for reading; pins the object's current version.
    /// Returns the handle and whether the kernel may keep cached pages.
    pub async fn open(&self, ino: u64, flags: i32) -> Result<u64> {
        let node = self.node(ino)?;
        if node.kind == Kind::Dir {
            return Err(Error::IsDir);
        }
        if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
            return Err(Error::ReadOnly);
        }
        let node = if self.fresh(&node) {
            node
        } else {
            self.revalidate_file(&node).await?
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let handle = FileHandle {
            version: ObjectVersion {
                key: node.key.clone(),
                etag: node.etag.clone(),
                size: node.size,
            },
        };
        lock(&self.files).insert(fh, Arc::new(handle));
        Ok(fh)
    }

    /// Read `size` bytes at `offset` from an open handle.
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Bytes> {
        let handle = lock(&self.files)
            .get(&fh)
            .cloned()
            .ok_or(Error::BadHandle(fh))?;
        self.cache
            .read(&handle.version, offset, u64::from(size))
            .await
            .map_err(Error::from_store)
    }

    pub fn release(&self, fh: u64) {
        lock(&self.files).remove(&fh);
    }

    pub fn opendir(&self, ino: u64) -> Result<u64> {
        let node = self.dir_node(ino)?;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
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

    /// Entries after `offset`; `add` returns true when the reply is full
    /// (that entry was not taken and is offered again next call).
    pub async fn readdir(
        &self,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(&DirEntry) -> bool,
    ) -> Result<()> {
        let handle = lock(&self.dirs)
            .get(&fh)
            .cloned()
            .ok_or(Error::BadHandle(fh))?;
        let mut s = handle.stream.lock().await;
        let behind = s.ready.front().map_or(s.next_offset, |e| e.offset - 1);
        if !s.started || offset < behind {
            // First call, or a rewind (seekdir/rewinddir): list afresh.
            *s = DirStream {
                started: true,
                ..DirStream::default()
            };
            let parent = self.inodes.get(handle.ino).map_or(ROOT_INO, |n| n.parent);
            push_entry(&mut s, handle.ino, Kind::Dir, ".");
            push_entry(&mut s, parent, Kind::Dir, "..");
        }
        loop {
            while let Some(e) = s.ready.front() {
                if e.offset <= offset {
                    s.ready.pop_front();
                    continue;
                }
                if add(e) {
                    return Ok(());
                }
                s.ready.pop_front();
            }
            if s.done {
                return Ok(());
            }
            let listings = self.next_page(&handle, &mut s).await?;
            for l in listings {
                let node = match l.kind {
                    Kind::Dir => {
                        let key = format!("{}{}/", handle.prefix, l.name);
                        self.inodes.upsert(
                            handle.ino,
                            &l.name,
                            Kind::Dir,
                            &key,
                            dir_observed(self.mount_time),
                        )
                    }
                    Kind::File => {
                        let meta = l.meta.as_ref().expect("files carry metadata");
                        self.inodes.upsert(
                            handle.ino,
                            &l.name,
                            Kind::File,
                            &meta.key,
                            observed(meta),
                        )
                    }
                };
                push_entry(&mut s, node.ino, node.kind, &l.name);
            }
        }
    }

    async fn next_page(&self, handle: &DirHandle, s: &mut DirStream) -> Result<Vec<Listing>> {
        let page = self
            .store
            .list_page(&handle.prefix, s.token.as_deref(), LIST_PAGE)
            .await
            .map_err(|e: StoreError| Error::Store(e))?;
        let next = page.next_token.clone();
        let mut out = s.entries.push_page(&handle.prefix, page);
        match next {
            Some(t) => s.token = Some(t),
            None => {
                out.extend(s.entries.finish());
                s.done = true;
            }
        }
        Ok(out)
    }

    pub fn statfs(&self) -> StatFs {
        // 1 PiB in 4 KiB blocks, all free; a billion inodes. Large enough
        // that `df` and free-space checks in tools never refuse to write.
        const BLOCKS: u64 = (1 << 50) / 4096;
        StatFs {
            blocks: BLOCKS,
            bfree: BLOCKS,
            bavail: BLOCKS,
            files: 1 << 30,
            ffree: (1 << 30) - self.inodes.len() as u64,
            bsize: 4096,
            namelen: crate::meta::names::NAME_MAX as u32,
        }
    }
}

fn push_entry(s: &mut DirStream, ino: u64, kind: Kind, name: &str) {
    s.next_offset += 1;
    let offset = s.next_offset;
    s.ready.push_back(DirEntry {
        ino,
        offset,
        kind,
        name: name.to_string(),
    });
}

fn observed(meta: &crate::store::ObjectMeta) -> Observed {
    Observed {
        size: meta.size,
        mtime: meta.last_modified,
        etag: Arc::from(meta.etag.as_str()),
    }
}

/// Directories have no object of their own: they show the mount time.
fn dir_observed(mount_time: SystemTime) -> Observed {
    Observed {
        size: 0,
        mtime: mount_time,
        etag: Arc::from(""),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Handle maps are consistent after any panic (single insert/remove).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests;
