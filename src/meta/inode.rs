//! The inode table: every node the kernel has been told about, with a stable
//! inode number for as long as the mount lives.
//!
//! A node is identified by (parent inode, name, kind). Seeing the same name
//! again updates its attributes and validation time but keeps its number; a
//! name that turns from a file into a directory (or back) gets a new number,
//! so the kernel never sees one inode change type.
//!
//! Locking: one mutex guards the maps; it is held only for map operations and
//! never across an await or a store call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

/// The root directory's inode number (fixed by FUSE).
pub const ROOT_INO: u64 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    File,
    Dir,
}

/// What is known about one node.
#[derive(Debug, Clone)]
pub struct Node {
    pub ino: u64,
    pub parent: u64,
    pub name: Arc<str>,
    pub kind: Kind,
    /// For a file its object key; for a directory its prefix, ending in `/`
    /// (empty for the root of a whole-bucket mount).
    pub key: Arc<str>,
    pub size: u64,
    pub mtime: SystemTime,
    pub etag: Arc<str>,
    /// When the store last confirmed these attributes.
    pub validated: Instant,
}

/// Attributes from the store, to record for a node.
#[derive(Debug, Clone)]
pub struct Observed {
    pub size: u64,
    pub mtime: SystemTime,
    pub etag: Arc<str>,
}

#[derive(Debug)]
struct Tables {
    nodes: HashMap<u64, Node>,
    children: HashMap<(u64, Arc<str>), u64>,
    negative: HashMap<(u64, Arc<str>), Instant>,
    next_ino: u64,
}

/// The table of nodes (see the module docs).
#[derive(Debug)]
pub struct InodeTable {
    tables: Mutex<Tables>,
}

impl InodeTable {
    /// A table holding just the root, a directory at `root_prefix`.
    pub fn new(root_prefix: &str, mount_time: SystemTime) -> InodeTable {
        let root = Node {
            ino: ROOT_INO,
            parent: ROOT_INO,
            name: Arc::from(""),
            kind: Kind::Dir,
            key: Arc::from(root_prefix),
            size: 0,
            mtime: mount_time,
            etag: Arc::from(""),
            validated: Instant::now(),
        };
        let mut nodes = HashMap::new();
        nodes.insert(ROOT_INO, root);
        InodeTable {
            tables: Mutex::new(Tables {
                nodes,
                children: HashMap::new(),
                negative: HashMap::new(),
                next_ino: ROOT_INO + 1,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        // A panic while holding the lock leaves the maps consistent (every
        // operation below mutates them in one step), so poisoning is ignored.
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, ino: u64) -> Option<Node> {
        self.lock().nodes.get(&ino).cloned()
    }

    /// The current child `name` of `parent`, if one is known.
    pub fn child(&self, parent: u64, name: &str) -> Option<Node> {
        let t = self.lock();
        let ino = t.children.get(&(parent, Arc::from(name)))?;
        t.nodes.get(ino).cloned()
    }

    /// When `name` under `parent` was last found missing, if it was.
    pub fn negative(&self, parent: u64, name: &str) -> Option<Instant> {
        self.lock()
            .negative
            .get(&(parent, Arc::from(name)))
            .copied()
    }

    pub fn set_negative(&self, parent: u64, name: &str) {
        let mut t = self.lock();
        let name: Arc<str> = Arc::from(name);
        t.negative.insert((parent, name.clone()), Instant::now());
        t.children.remove(&(parent, name));
    }

    /// Record that `parent` has a child `name` of `kind` with these attributes.
    pub fn upsert(
        &self,
        parent: u64,
        name: &str,
        kind: Kind,
        key: &str,
        observed: Observed,
    ) -> Node {
        let mut t = self.lock();
        let name: Arc<str> = Arc::from(name);
        t.negative.remove(&(parent, name.clone()));
        let now = Instant::now();
        if let Some(&ino) = t.children.get(&(parent, name.clone())) {
            if let Some(node) = t.nodes.get_mut(&ino) {
                if node.kind == kind {
                    node.size = observed.size;
                    node.mtime = observed.mtime;
                    node.etag = observed.etag;
                    node.validated = now;
                    return node.clone();
                }
            }
        }
        let ino = t.next_ino;
        t.next_ino += 1;
        let node = Node {
            ino,
            parent,
            name: name.clone(),
            kind,
            key: Arc::from(key),
            size: observed.size,
            mtime: observed.mtime,
            etag: observed.etag,
            validated: now,
        };
        t.nodes.insert(ino, node.clone());
        t.children.insert((parent, name), ino);
        node
    }

    /// Refresh the attributes of a known node in place.
    pub fn refresh(&self, ino: u64, observed: Observed) -> Option<Node> {
        let mut t = self.lock();
        let node = t.nodes.get_mut(&ino)?;
        node.size = observed.size;
        node.mtime = observed.mtime;
        node.etag = observed.etag;
        node.validated = Instant::now();
        Some(node.clone())
    }

    /// Forget that `name` exists under `parent` (it was deleted in the store).
    /// The node keeps its number for handles that still use it.
    pub fn remove_child(&self, parent: u64, name: &str) {
        let mut t = self.lock();
        let name: Arc<str> = Arc::from(name);
        t.children.remove(&(parent, name.clone()));
        t.negative.insert((parent, name), Instant::now());
    }

    pub fn len(&self) -> usize {
        self.lock().nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(size: u64, etag: &str) -> Observed {
        Observed {
            size,
            mtime: SystemTime::UNIX_EPOCH,
            etag: Arc::from(etag),
        }
    }

    #[test]
    fn numbers_are_stable_and_kinds_never_change_in_place() {
        let t = InodeTable::new("", SystemTime::UNIX_EPOCH);
        let a = t.upsert(ROOT_INO, "a", Kind::File, "a", obs(1, "e1"));
        let a2 = t.upsert(ROOT_INO, "a", Kind::File, "a", obs(2, "e2"));
        assert_eq!(a.ino, a2.ino);
        assert_eq!(t.get(a.ino).unwrap().size, 2);
        let d = t.upsert(ROOT_INO, "a", Kind::Dir, "a/", obs(0, ""));
        assert_ne!(d.ino, a.ino);
        assert_eq!(t.child(ROOT_INO, "a").unwrap().kind, Kind::Dir);
        assert_eq!(
            t.get(a.ino).unwrap().kind,
            Kind::File,
            "old node kept for open handles"
        );
    }

    #[test]
    fn negative_entries() {
        let t = InodeTable::new("", SystemTime::UNIX_EPOCH);
        t.set_negative(ROOT_INO, "x");
        assert!(t.negative(ROOT_INO, "x").is_some());
        t.upsert(ROOT_INO, "x", Kind::File, "x", obs(1, "e"));
        assert!(t.negative(ROOT_INO, "x").is_none());
        t.remove_child(ROOT_INO, "x");
        assert!(t.child(ROOT_INO, "x").is_none());
        assert!(t.negative(ROOT_INO, "x").is_some());
    }
}
