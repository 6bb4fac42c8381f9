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
mod readdir;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::config::MetadataTtl;
use crate::meta::inode::Observed;
use crate::meta::names::{check_segment, BadName};
use crate::meta::{InodeTable, Kind, Node};
use crate::read::{BlockCache, ObjectVersion, PrefetchWindow};
use crate::store::{ObjectStore, StoreErrorKind};
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
    /// Inode-table nodes kept without a kernel reference
    /// ([`crate::meta::MAX_IDLE_NODES`] on a mount).
    pub max_idle_inodes: usize,
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
    pub name: Arc<str>,
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
    /// Locking: held only to update the window, never across an await.
    window: Mutex<PrefetchWindow>,
}

/// Entries of the LIST a lookup sends: enough to pass the few `name<c>`
/// siblings (c below `/`) that may sort between `name` and `name/`.
const LOOKUP_PAGE: u32 = 16;

/// The filesystem.
pub struct Fs {
    cfg: FsConfig,
    store: Arc<dyn ObjectStore>,
    cache: BlockCache,
    inodes: InodeTable,
    next_fh: AtomicU64,
    /// Locking: held only for map operations.
    files: Mutex<HashMap<u64, Arc<FileHandle>>>,
    dirs: Mutex<HashMap<u64, Arc<readdir::DirHandle>>>,
    /// Complete listings of small enough directories, for the TTL.
    listings: readdir::ListingCache,
    mount_time: SystemTime,
}

/// An open file: its handle number and whether the kernel may keep the
/// pages it cached for this inode.
#[derive(Debug, Clone, Copy)]
pub struct Opened {
    pub fh: u64,
    pub keep_cache: bool,
}

impl Fs {
    pub fn new(cfg: FsConfig, store: Arc<dyn ObjectStore>, cache: BlockCache) -> Fs {
        let mount_time = crate::store::whole_seconds(SystemTime::now());
        Fs {
            inodes: InodeTable::with_idle_limit(&cfg.prefix, mount_time, cfg.max_idle_inodes),
            cfg,
            store,
            cache,
            next_fh: AtomicU64::new(1),
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            listings: readdir::ListingCache::default(),
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

    pub(crate) fn entry(&self, node: &Node) -> Entry {
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
                // The kernel takes a reference on every entry it is given.
                let node = self.inodes.resolve(&node, 1);
                return Ok(self.entry(&node));
            }
        } else if let Some(when) = self.inodes.negative(parent.ino, name) {
            if self.cfg.metadata_ttl.is_fresh(when.elapsed()) {
                return Err(Error::NotFound);
            }
        }
        let key = format!("{}{}", parent.key, name);
        let dir_prefix = format!("{key}/");
        // One LIST usually answers both questions (is there an object
        // `name`, and a directory `name/`?): with prefix `name` and
        // delimiter `/`, the object sorts first and the prefix `name/`
        // comes after any `name<c>` with c below `/`. When the page ends
        // before reaching `name/`, a second LIST settles it. The directory
        // wins when both exist.
        let page = self
            .store
            .list_page(&key, None, LOOKUP_PAGE)
            .await
            .map_err(Error::from_store)?;
        let file = page.objects.iter().find(|o| o.key == key).cloned();
        // A server that does not roll `name/...` up into a common prefix
        // still shows the directory through its keys.
        let mut dir = page.prefixes.contains(&dir_prefix)
            || page.objects.iter().any(|o| o.key.starts_with(&dir_prefix));
        if !dir && page.next_token.is_some() {
            let last = page
                .objects
                .last()
                .map(|o| o.key.as_str())
                .max(page.prefixes.last().map(String::as_str))
                .unwrap_or("");
            if last < dir_prefix.as_str() {
                let under = self
                    .store
                    .list_page(&dir_prefix, None, 1)
                    .await
                    .map_err(Error::from_store)?;
                dir = !under.objects.is_empty() || !under.prefixes.is_empty();
            }
        }
        if dir {
            if file.is_some() {
                tracing::info!(key = %key.escape_debug(), "an object and a directory share this name; the directory wins and the object is hidden");
            }
            let node = self.inodes.upsert(
                parent.ino,
                name,
                Kind::Dir,
                &dir_prefix,
                dir_observed(self.mount_time),
                1,
            );
            return Ok(self.entry(&node));
        }
        match file {
            Some(meta) => {
                let node =
                    self.inodes
                        .upsert(parent.ino, name, Kind::File, &key, observed(&meta), 1);
                Ok(self.entry(&node))
            }
            None => {
                self.inodes.set_negative(parent.ino, name);
                Err(Error::NotFound)
            }
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
    pub async fn open(&self, ino: u64, flags: i32) -> Result<Opened> {
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
        let read = self.cache.config();
        let handle = FileHandle {
            version: ObjectVersion {
                key: node.key.clone(),
                etag: node.etag.clone(),
                size: node.size,
            },
            window: Mutex::new(PrefetchWindow::new(read.part_size, read.prefetch_window)),
        };
        lock(&self.files).insert(fh, Arc::new(handle));
        let keep_cache = self.inodes.opened(ino, &node.etag);
        Ok(Opened { fh, keep_cache })
    }

    /// Read `size` bytes at `offset` from an open handle.
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Bytes> {
        let handle = lock(&self.files)
            .get(&fh)
            .cloned()
            .ok_or(Error::BadHandle(fh))?;
        let len = u64::from(size);
        let ahead = lock(&handle.window).on_read(offset, len, handle.version.size);
        self.cache
            .read_ahead(&handle.version, offset, len, ahead)
            .await
            .map_err(|e| match e.kind {
                // The object this handle pinned is gone: stale, like a
                // replaced one.
                StoreErrorKind::NotFound => Error::Stale(e.key),
                _ => Error::from_store(e),
            })
    }

    /// The kernel dropped `nlookup` references to `ino`.
    pub fn forget(&self, ino: u64, nlookup: u64) {
        self.inodes.forget(ino, nlookup);
    }

    /// Nodes in the inode table, and how many of them the kernel does not
    /// hold (for tests and statistics).
    pub fn inode_counts(&self) -> (usize, usize) {
        (self.inodes.len(), self.inodes.idle())
    }

    pub fn release(&self, fh: u64) {
        lock(&self.files).remove(&fh);
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

pub(crate) fn observed(meta: &crate::store::ObjectMeta) -> Observed {
    Observed {
        size: meta.size,
        mtime: meta.last_modified,
        etag: Arc::from(meta.etag.as_str()),
    }
}

/// Directories have no object of their own: they show the mount time.
pub(crate) fn dir_observed(mount_time: SystemTime) -> Observed {
    Observed {
        size: 0,
        mtime: mount_time,
        etag: Arc::from(""),
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Handle maps are consistent after any panic (single insert/remove).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests;
