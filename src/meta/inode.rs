//! The inode table: the nodes the kernel knows, and a bounded set of
//! recently listed ones it does not (yet).
//!
//! A node is identified by (parent inode, name, kind). Seeing the same name
//! again updates its attributes and validation time but keeps its number; a
//! name that turns from a file into a directory (or back) gets a new number,
//! so the kernel never sees one inode change type. Numbers are never reused.
//!
//! Lifetime follows the kernel's lookup count: every entry handed to the
//! kernel by `lookup` or `readdirplus` takes a reference ([`InodeTable::resolve`]
//! with `refs = 1`), and `forget` gives them back. A node the kernel holds is
//! kept, whatever its number of siblings: the kernel's own inode cache bounds
//! those, and it forgets them under memory pressure or `drop_caches`. A node
//! with no reference (listed by plain `readdir`, or forgotten) is *idle*: it
//! stays so that the stats after a listing need no request, but at most
//! [`MAX_IDLE_NODES`] of them are kept, the longest idle dropped first. So
//! listing any directory, of any size, takes bounded memory.
//!
//! Locking: one mutex guards the maps; it is held only for map operations and
//! never across an await or a store call.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

/// The root directory's inode number (fixed by FUSE).
pub const ROOT_INO: u64 = 1;

/// Idle nodes kept at most (about 550 bytes each: some 55 MB).
pub const MAX_IDLE_NODES: usize = 100_000;

/// Negative entries kept at most; past it they are all dropped (they only
/// save a LIST each).
const MAX_NEGATIVE: usize = 100_000;

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
struct Slot {
    node: Node,
    /// References the kernel holds (its lookup count).
    lookups: u64,
    /// While idle, the stamp of its entry in the idle queue.
    idle_stamp: u64,
    /// The ETag at the last open: what the kernel's page cache holds.
    opened_etag: Option<Arc<str>>,
}

#[derive(Debug)]
struct Tables {
    nodes: HashMap<u64, Slot>,
    children: HashMap<(u64, Arc<str>), u64>,
    negative: HashMap<(u64, Arc<str>), Instant>,
    next_ino: u64,
    /// Idle nodes, longest idle first, as (ino, stamp); an entry whose stamp
    /// no longer matches its node's is stale and skipped.
    idle: VecDeque<(u64, u64)>,
    /// Nodes idle now (the live entries of `idle`).
    idle_count: usize,
    next_stamp: u64,
    max_idle: usize,
}

impl Tables {
    /// Mark `ino` idle (no kernel reference) and drop the longest idle past
    /// the limit.
    fn make_idle(&mut self, ino: u64) {
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        if let Some(slot) = self.nodes.get_mut(&ino) {
            slot.idle_stamp = stamp;
            self.idle.push_back((ino, stamp));
            self.idle_count += 1;
        }
        while self.idle_count > self.max_idle {
            let Some((ino, stamp)) = self.idle.pop_front() else {
                break;
            };
            if self.is_idle_entry(ino, stamp) {
                self.idle_count -= 1;
                self.evict(ino);
            }
        }
        // Stale entries pile up when nodes go back and forth; compact.
        if self.idle.len() > 2 * self.idle_count + 1024 {
            let mut idle = std::mem::take(&mut self.idle);
            idle.retain(|&(ino, stamp)| self.is_idle_entry(ino, stamp));
            self.idle = idle;
        }
    }

    fn is_idle_entry(&self, ino: u64, stamp: u64) -> bool {
        self.nodes
            .get(&ino)
            .is_some_and(|s| s.lookups == 0 && s.idle_stamp == stamp)
    }

    /// Take `refs` references on a node that exists.
    fn take(&mut self, ino: u64, refs: u64) -> Node {
        let slot = self.nodes.get_mut(&ino).expect("take on a present node");
        if refs > 0 && slot.lookups == 0 && ino != ROOT_INO {
            self.idle_count -= 1;
            slot.idle_stamp = u64::MAX;
        }
        slot.lookups += refs;
        slot.node.clone()
    }

    fn evict(&mut self, ino: u64) {
        if let Some(slot) = self.nodes.remove(&ino) {
            let key = (slot.node.parent, slot.node.name.clone());
            if self.children.get(&key) == Some(&ino) {
                self.children.remove(&key);
            }
        }
    }

    /// Insert `node` (a new number, or one handed out before) with `refs`.
    fn insert(&mut self, node: Node, refs: u64) -> Node {
        let ino = node.ino;
        self.children
            .insert((node.parent, node.name.clone()), node.ino);
        self.nodes.insert(
            ino,
            Slot {
                node: node.clone(),
                lookups: refs,
                idle_stamp: u64::MAX,
                opened_etag: None,
            },
        );
        if refs == 0 {
            self.make_idle(ino);
        }
        node
    }
}

/// The table of nodes (see the module docs).
#[derive(Debug)]
pub struct InodeTable {
    tables: Mutex<Tables>,
}

impl InodeTable {
    /// A table holding just the root, a directory at `root_prefix`.
    pub fn new(root_prefix: &str, mount_time: SystemTime) -> InodeTable {
        InodeTable::with_idle_limit(root_prefix, mount_time, MAX_IDLE_NODES)
    }

    /// As [`InodeTable::new`], keeping at most `max_idle` idle nodes.
    pub fn with_idle_limit(root_prefix: &str, mount_time: SystemTime, max_idle: usize) -> Self {
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
        nodes.insert(
            ROOT_INO,
            Slot {
                node: root,
                // The root is never forgotten.
                lookups: 1,
                idle_stamp: u64::MAX,
                opened_etag: None,
            },
        );
        InodeTable {
            tables: Mutex::new(Tables {
                nodes,
                children: HashMap::new(),
                negative: HashMap::new(),
                next_ino: ROOT_INO + 1,
                idle: VecDeque::new(),
                idle_count: 0,
                next_stamp: 0,
                max_idle,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        // A panic while holding the lock leaves the maps usable (each
        // operation below keeps them consistent step by step), so poisoning
        // is ignored.
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, ino: u64) -> Option<Node> {
        self.lock().nodes.get(&ino).map(|s| s.node.clone())
    }

    /// The current child `name` of `parent`, if one is known.
    pub fn child(&self, parent: u64, name: &str) -> Option<Node> {
        let t = self.lock();
        let ino = t.children.get(&(parent, Arc::from(name)))?;
        t.nodes.get(ino).map(|s| s.node.clone())
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
        if t.negative.len() >= MAX_NEGATIVE {
            t.negative.clear();
        }
        t.negative.insert((parent, name.clone()), Instant::now());
        t.children.remove(&(parent, name));
    }

    /// Record that `parent` has a child `name` of `kind` with these
    /// attributes, and take `refs` kernel references on it.
    pub fn upsert(
        &self,
        parent: u64,
        name: &str,
        kind: Kind,
        key: &str,
        observed: Observed,
        refs: u64,
    ) -> Node {
        let mut t = self.lock();
        let name: Arc<str> = Arc::from(name);
        t.negative.remove(&(parent, name.clone()));
        let now = Instant::now();
        if let Some(&ino) = t.children.get(&(parent, name.clone())) {
            if let Some(slot) = t.nodes.get_mut(&ino) {
                if slot.node.kind == kind {
                    let node = &mut slot.node;
                    node.size = observed.size;
                    node.mtime = observed.mtime;
                    node.etag = observed.etag;
                    node.validated = now;
                    return t.take(ino, refs);
                }
            }
        }
        let ino = t.next_ino;
        t.next_ino += 1;
        let node = Node {
            ino,
            parent,
            name,
            kind,
            key: Arc::from(key),
            size: observed.size,
            mtime: observed.mtime,
            etag: observed.etag,
            validated: now,
        };
        t.insert(node, refs)
    }

    /// The table's node for a record handed out earlier (by a listing), with
    /// `refs` references taken: the current child of that name if there is
    /// one, else the node itself, put back if it was dropped meanwhile.
    pub fn resolve(&self, node: &Node, refs: u64) -> Node {
        let mut t = self.lock();
        let current = t
            .children
            .get(&(node.parent, node.name.clone()))
            .copied()
            .filter(|ino| t.nodes.contains_key(ino));
        match current {
            Some(ino) => t.take(ino, refs),
            None if t.nodes.contains_key(&node.ino) => t.take(node.ino, refs),
            None => t.insert(node.clone(), refs),
        }
    }

    /// The kernel dropped `n` references to `ino`. A node left with none is
    /// idle, or dropped at once when its name now means another node.
    pub fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT_INO {
            return;
        }
        let mut t = self.lock();
        let Some(slot) = t.nodes.get_mut(&ino) else {
            return;
        };
        if slot.lookups == 0 {
            return;
        }
        slot.lookups = slot.lookups.saturating_sub(n);
        if slot.lookups > 0 {
            return;
        }
        let key = (slot.node.parent, slot.node.name.clone());
        if t.children.get(&key) == Some(&ino) {
            t.make_idle(ino);
        } else {
            t.evict(ino);
        }
    }

    /// Refresh the attributes of a known node in place.
    pub fn refresh(&self, ino: u64, observed: Observed) -> Option<Node> {
        let mut t = self.lock();
        let node = &mut t.nodes.get_mut(&ino)?.node;
        node.size = observed.size;
        node.mtime = observed.mtime;
        node.etag = observed.etag;
        node.validated = Instant::now();
        Some(node.clone())
    }

    /// Note that `ino` was opened at `etag`; true when the previous open saw
    /// the same ETag (the kernel's cached pages are still this version).
    pub fn opened(&self, ino: u64, etag: &Arc<str>) -> bool {
        let mut t = self.lock();
        let Some(slot) = t.nodes.get_mut(&ino) else {
            return false;
        };
        let previous = slot.opened_etag.replace(etag.clone());
        previous.is_some_and(|p| p == *etag)
    }

    /// Forget that `name` exists under `parent` (it was deleted in the store).
    /// The node keeps its number while the kernel holds it.
    pub fn remove_child(&self, parent: u64, name: &str) {
        let mut t = self.lock();
        let name: Arc<str> = Arc::from(name);
        if let Some(ino) = t.children.remove(&(parent, name.clone())) {
            if t.nodes.get(&ino).is_some_and(|s| s.lookups == 0) {
                t.idle_count -= 1;
                t.nodes.remove(&ino);
            }
        }
        if t.negative.len() >= MAX_NEGATIVE {
            t.negative.clear();
        }
        t.negative.insert((parent, name), Instant::now());
    }

    /// Nodes in the table.
    pub fn len(&self) -> usize {
        self.lock().nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Nodes without a kernel reference.
    pub fn idle(&self) -> usize {
        self.lock().idle_count
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
        let a = t.upsert(ROOT_INO, "a", Kind::File, "a", obs(1, "e1"), 1);
        let a2 = t.upsert(ROOT_INO, "a", Kind::File, "a", obs(2, "e2"), 1);
        assert_eq!(a.ino, a2.ino);
        assert_eq!(t.get(a.ino).unwrap().size, 2);
        let d = t.upsert(ROOT_INO, "a", Kind::Dir, "a/", obs(0, ""), 1);
        assert_ne!(d.ino, a.ino);
        assert_eq!(t.child(ROOT_INO, "a").unwrap().kind, Kind::Dir);
        assert_eq!(
            t.get(a.ino).unwrap().kind,
            Kind::File,
            "old node kept while the kernel holds it"
        );
        // Once forgotten, the shadowed node goes at once.
        t.forget(a.ino, 2);
        assert!(t.get(a.ino).is_none());
        assert_eq!(t.idle(), 0);
    }

    #[test]
    fn negative_entries() {
        let t = InodeTable::new("", SystemTime::UNIX_EPOCH);
        t.set_negative(ROOT_INO, "x");
        assert!(t.negative(ROOT_INO, "x").is_some());
        t.upsert(ROOT_INO, "x", Kind::File, "x", obs(1, "e"), 0);
        assert!(t.negative(ROOT_INO, "x").is_none());
        t.remove_child(ROOT_INO, "x");
        assert!(t.child(ROOT_INO, "x").is_none());
        assert!(t.negative(ROOT_INO, "x").is_some());
        assert_eq!((t.len(), t.idle()), (1, 0), "an idle removed node goes");
    }

    #[test]
    fn idle_nodes_are_bounded_and_held_ones_kept() {
        let t = InodeTable::with_idle_limit("", SystemTime::UNIX_EPOCH, 10);
        let held: Vec<Node> = (0..50)
            .map(|i| t.upsert(ROOT_INO, &format!("h{i}"), Kind::File, "k", obs(1, "e"), 1))
            .collect();
        let idle: Vec<Node> = (0..1000)
            .map(|i| t.upsert(ROOT_INO, &format!("i{i}"), Kind::File, "k", obs(1, "e"), 0))
            .collect();
        assert_eq!(t.idle(), 10);
        assert_eq!(t.len(), 1 + 50 + 10);
        assert!(held.iter().all(|n| t.get(n.ino).is_some()));
        // The most recently idle survive.
        assert!(idle[990..].iter().all(|n| t.get(n.ino).is_some()));
        assert!(t.get(idle[0].ino).is_none());
        // A dropped record handed back keeps its number.
        let back = t.resolve(&idle[0], 1);
        assert_eq!(back.ino, idle[0].ino);
        assert_eq!(t.child(ROOT_INO, "i0").unwrap().ino, idle[0].ino);
        // Forgetting makes held nodes idle, still bounded.
        for n in &held {
            t.forget(n.ino, 1);
        }
        assert_eq!(t.idle(), 10);
        assert_eq!(t.len(), 1 + 1 + 10);
        // The queue of stale entries stays small.
        for _ in 0..10_000 {
            let n = t.resolve(&back, 1);
            t.forget(n.ino, 1);
        }
        assert!(t.lock().idle.len() <= 2 * 10 + 1024 + 1);
    }

    #[test]
    fn resolve_prefers_the_current_child_and_counts() {
        let t = InodeTable::new("", SystemTime::UNIX_EPOCH);
        let old = t.upsert(ROOT_INO, "a", Kind::File, "a", obs(1, "e1"), 0);
        t.forget(old.ino, 1); // no reference held: ignored
        assert_eq!(t.idle(), 1);
        let n = t.resolve(&old, 1);
        assert_eq!((n.ino, t.idle()), (old.ino, 0));
        let d = t.upsert(ROOT_INO, "a", Kind::Dir, "a/", obs(0, ""), 0);
        assert_eq!(t.resolve(&old, 0).ino, d.ino);
        t.forget(old.ino, 1);
        assert!(t.get(old.ino).is_none(), "shadowed and unreferenced");
        assert!(!t.opened(d.ino, &Arc::from("x")), "first open");
        assert!(t.opened(d.ino, &Arc::from("x")));
        assert!(!t.opened(d.ino, &Arc::from("y")));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Upsert { name: u8, dir: bool, refs: u64 },
        Resolve { pick: usize, refs: u64 },
        Forget { pick: usize, all: bool },
        Remove { name: u8 },
        Negative { name: u8 },
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (0u8..12, any::<bool>(), 0u64..2).prop_map(|(name, dir, refs)| Op::Upsert { name, dir, refs }),
            3 => (any::<usize>(), 0u64..2).prop_map(|(pick, refs)| Op::Resolve { pick, refs }),
            3 => (any::<usize>(), any::<bool>()).prop_map(|(pick, all)| Op::Forget { pick, all }),
            1 => (0u8..12).prop_map(|name| Op::Remove { name }),
            1 => (0u8..12).prop_map(|name| Op::Negative { name }),
        ]
    }

    proptest::proptest! {
        /// Against a model of the kernel's lookup counts: a node the kernel
        /// holds is never dropped, idle nodes stay within the limit, and the
        /// maps agree with each other.
        #[test]
        fn held_nodes_survive_and_idle_ones_are_bounded(
            ops in proptest::collection::vec(op(), 1..200),
            max_idle in 0usize..5,
        ) {
            let t = InodeTable::with_idle_limit("", SystemTime::UNIX_EPOCH, max_idle);
            let mut kernel: HashMap<u64, u64> = HashMap::new();
            let mut seen: Vec<Node> = Vec::new();
            for op in ops {
                match op {
                    Op::Upsert { name, dir, refs } => {
                        let (kind, key) = if dir { (Kind::Dir, format!("n{name}/")) } else { (Kind::File, format!("n{name}")) };
                        let n = t.upsert(ROOT_INO, &format!("n{name}"), kind, &key, obs(1, "e"), refs);
                        *kernel.entry(n.ino).or_default() += refs;
                        seen.push(n);
                    }
                    Op::Resolve { pick, refs } if !seen.is_empty() => {
                        let n = t.resolve(&seen[pick % seen.len()].clone(), refs);
                        *kernel.entry(n.ino).or_default() += refs;
                        seen.push(n);
                    }
                    Op::Forget { pick, all } => {
                        let held: Vec<(u64, u64)> = kernel.iter().filter(|(_, &c)| c > 0).map(|(&i, &c)| (i, c)).collect();
                        if !held.is_empty() {
                            let (ino, count) = held[pick % held.len()];
                            let n = if all { count } else { 1 };
                            t.forget(ino, n);
                            *kernel.get_mut(&ino).unwrap() -= n;
                        }
                    }
                    Op::Remove { name } => t.remove_child(ROOT_INO, &format!("n{name}")),
                    Op::Negative { name } => t.set_negative(ROOT_INO, &format!("n{name}")),
                    Op::Resolve { .. } => {}
                }
                for (ino, &c) in &kernel {
                    proptest::prop_assert!(c == 0 || t.get(*ino).is_some(), "held node {} dropped", ino);
                }
                let tables = t.lock();
                let zero = tables.nodes.values().filter(|s| s.lookups == 0).count();
                proptest::prop_assert_eq!(zero, tables.idle_count);
                proptest::prop_assert!(tables.idle_count <= max_idle);
                for ino in tables.children.values() {
                    proptest::prop_assert!(tables.nodes.contains_key(ino));
                }
                for (ino, slot) in &tables.nodes {
                    if *ino != ROOT_INO {
                        proptest::prop_assert_eq!(slot.lookups, kernel.get(ino).copied().unwrap_or(0));
                    }
                }
            }
        }
    }
}
