//! FUSE glue: decode a kernel request, call [`Fs`], reply.
//!
//! Owns: the fuser `Filesystem` impl, the conversion of [`Attr`] into
//! fuser's `FileAttr`, and the kernel connection settings negotiated at
//! INIT. No S3, caching or naming logic lives here.
//!
//! Each operation that may touch the network is moved onto the tokio
//! runtime with its reply, so fuser's worker threads never block on S3 and
//! many requests are in flight at once. Every operation runs in a span with
//! op, ino, fh, offset and size; failures are logged at the level
//! [`Error::log_level`] gives.

use std::ffi::OsStr;
use std::sync::Arc;

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, Request,
};
use tracing::Instrument;

use crate::fs::{Attr, Error, Fs};
use crate::meta::Kind;

/// Largest read the kernel is offered (it may cap it lower).
const MAX_READAHEAD: u32 = 1 << 20;
/// How many background requests (reads, readahead) the kernel may keep in
/// flight; the default of 16 starves parallel readers.
const MAX_BACKGROUND: u16 = 64;

/// The fuser `Filesystem`: forwards to [`Fs`] on a tokio runtime.
pub struct FuseFs {
    fs: Arc<Fs>,
    rt: tokio::runtime::Handle,
}

impl FuseFs {
    pub fn new(fs: Arc<Fs>, rt: tokio::runtime::Handle) -> FuseFs {
        FuseFs { fs, rt }
    }

    /// Run `fut` on the runtime inside `span`; it owns the reply.
    fn spawn<F>(&self, span: tracing::Span, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.rt.spawn(fut.instrument(span));
    }
}

fn to_file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.mtime,
        crtime: a.mtime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: 1 << 20,
        flags: 0,
    }
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::Dir => FileType::Directory,
        Kind::File => FileType::RegularFile,
    }
}

/// Log a failed operation at its level and turn it into an errno.
fn fail(op: &str, e: &Error) -> Errno {
    match e.log_level() {
        tracing::Level::ERROR => {
            tracing::error!(op, error = %e, errno = e.errno(), "operation failed")
        }
        tracing::Level::WARN => {
            tracing::warn!(op, error = %e, errno = e.errno(), "operation failed")
        }
        _ => tracing::debug!(op, error = %e, errno = e.errno(), "operation failed"),
    }
    Errno::from_i32(e.errno())
}

impl Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if let Err(max) = config.set_max_readahead(MAX_READAHEAD) {
            let _ = config.set_max_readahead(max);
        }
        // Attributes come with the listing (no lookup per entry for `ls -l`);
        // the kernel picks plain readdir when it expects no stats.
        let plus = InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO;
        if let Err(missing) = config.add_capabilities(plus) {
            tracing::debug!(?missing, "the kernel offers no readdirplus");
        }
        if let Err(max) = config.set_max_background(MAX_BACKGROUND) {
            let _ = config.set_max_background(max);
        }
        tracing::debug!(?config, "FUSE connection initialised");
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let fs = self.fs.clone();
        let name = name.to_owned();
        let span = tracing::debug_span!("lookup", ino = parent.0, name = ?name);
        self.spawn(span, async move {
            match fs.lookup(parent.0, &name).await {
                Ok(e) => reply.entry(&e.ttl, &to_file_attr(&e.attr), Generation(0)),
                Err(e) => reply.error(fail("lookup", &e)),
            }
        });
    }

    // fuser's batch_forget calls this for each node.
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let fs = self.fs.clone();
        let span = tracing::debug_span!("getattr", ino = ino.0);
        self.spawn(span, async move {
            match fs.getattr(ino.0).await {
                Ok(e) => reply.attr(&e.ttl, &to_file_attr(&e.attr)),
                Err(e) => reply.error(fail("getattr", &e)),
            }
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let fs = self.fs.clone();
        let span = tracing::debug_span!("open", ino = ino.0, flags = flags.0);
        self.spawn(span, async move {
            match fs.open(ino.0, flags.0).await {
                Ok(o) => {
                    let flags = if o.keep_cache {
                        FopenFlags::FOPEN_KEEP_CACHE
                    } else {
                        FopenFlags::empty()
                    };
                    reply.opened(FileHandle(o.fh), flags)
                }
                Err(e) => reply.error(fail("open", &e)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let fs = self.fs.clone();
        let span = tracing::debug_span!("read", ino = ino.0, fh = fh.0, offset, size);
        self.spawn(span, async move {
            match fs.read(fh.0, offset, size).await {
                Ok(bytes) => reply.data(&bytes),
                Err(e) => reply.error(fail("read", &e)),
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.fs.release(fh.0);
        reply.ok();
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(fail("opendir", &e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let fs = self.fs.clone();
        let span = tracing::debug_span!("readdir", ino = ino.0, fh = fh.0, offset);
        self.spawn(span, async move {
            let result = fs
                .readdir(fh.0, offset, false, |e, _| {
                    reply.add(INodeNo(e.ino), e.offset, file_type(e.kind), &*e.name)
                })
                .await;
            match result {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(fail("readdir", &e)),
            }
        });
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let fs = self.fs.clone();
        let span = tracing::debug_span!("readdirplus", ino = ino.0, fh = fh.0, offset);
        self.spawn(span, async move {
            let result = fs
                .readdir(fh.0, offset, true, |e, entry| {
                    reply.add(
                        INodeNo(e.ino),
                        e.offset,
                        &*e.name,
                        &entry.ttl,
                        &to_file_attr(&entry.attr),
                        Generation(0),
                    )
                })
                .await;
            match result {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(fail("readdirplus", &e)),
            }
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.fs.statfs();
        reply.statfs(
            s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.bsize,
        );
    }

    fn access(&self, _req: &Request, _ino: INodeNo, mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // Permission bits are checked by the kernel (default_permissions);
        // here only writes are refused on a read-only mount.
        if mask.contains(fuser::AccessFlags::W_OK) && self.fs.config().read_only {
            reply.error(refused("access"));
        } else {
            reply.ok();
        }
    }

    // Every write-side operation is refused: writes come later.
    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(refused("setattr"));
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(refused("mknod"));
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(refused("mkdir"));
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(refused("unlink"));
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(refused("rmdir"));
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        reply.error(refused("symlink"));
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(refused("rename"));
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(refused("link"));
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: fuser::WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: fuser::ReplyWrite,
    ) {
        reply.error(refused("write"));
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: fuser::ReplyCreate,
    ) {
        reply.error(refused("create"));
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(fail("setxattr", &Error::XattrsUnsupported));
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(fail("removexattr", &Error::XattrsUnsupported));
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        reply.error(fail("getxattr", &Error::XattrsUnsupported));
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: fuser::ReplyXattr) {
        reply.error(fail("listxattr", &Error::XattrsUnsupported));
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }
}

fn refused(op: &str) -> Errno {
    fail(op, &Error::ReadOnly)
}
