//! Unit tests of filesystem semantics against the in-memory store.

use std::ffi::OsStr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::*;
use crate::meta::ROOT_INO;
use crate::store::memory::MemoryStore;

fn fs_with(keys: &[(&str, &[u8])], prefix: &str, ttl: MetadataTtl) -> (Fs, Arc<MemoryStore>) {
    let store = Arc::new(MemoryStore::new("b"));
    for (k, v) in keys {
        store.put(k, v.to_vec());
    }
    let cfg = FsConfig {
        prefix: prefix.into(),
        uid: 1,
        gid: 2,
        file_mode: 0o644,
        dir_mode: 0o755,
        metadata_ttl: ttl,
        read_only: true,
        max_idle_inodes: 100,
    };
    let cache = BlockCache::new(store.clone(), read_cfg());
    (Fs::new(cfg, store.clone(), cache), store)
}

fn read_cfg() -> crate::read::ReadConfig {
    crate::read::ReadConfig {
        cache_size: 1 << 20,
        block_size: 16,
        part_size: 64,
        prefetch_window: 256,
    }
}

const TTL: MetadataTtl = MetadataTtl::Finite(Duration::from_secs(60));

async fn list(fs: &Fs, ino: u64) -> Vec<String> {
    list_with(fs, ino, false).await
}

/// List `ino` as `readdir` (or `readdirplus` when `plus`) would.
async fn list_with(fs: &Fs, ino: u64, plus: bool) -> Vec<String> {
    let fh = fs.opendir(ino).unwrap();
    let mut names = Vec::new();
    let mut offset = 0;
    loop {
        let mut got = 0;
        fs.readdir(fh, offset, plus, |e, _| {
            if got == 3 {
                return true; // a small reply buffer: exercise resumption
            }
            got += 1;
            offset = e.offset;
            names.push(format!(
                "{}{}",
                e.name,
                if e.kind == Kind::Dir { "/" } else { "" }
            ));
            false
        })
        .await
        .unwrap();
        if got == 0 {
            break;
        }
    }
    fs.releasedir(fh);
    names
}

#[tokio::test]
async fn tree_semantics() {
    let keys: &[(&str, &[u8])] = &[
        ("top.txt", b"hello"),
        ("empty", b""),
        ("marker/", b""),
        ("nested/a/b/c.bin", b"deep"),
        ("x", b"shadowed"),
        ("x/y", b"y"),
        ("bad//key", b"no"),
        ("./dot", b"no"),
        ("sp ace+%ü", b"odd"),
    ];
    let (fs, store) = fs_with(keys, "", TTL);
    let mut root = list(&fs, ROOT_INO).await;
    root.sort();
    assert_eq!(
        root,
        [
            "../",
            "./",
            "bad/",
            "empty",
            "marker/",
            "nested/",
            "sp ace+%ü",
            "top.txt",
            "x/"
        ]
    );

    let e = fs.lookup(ROOT_INO, OsStr::new("top.txt")).await.unwrap();
    assert_eq!(
        (e.attr.kind, e.attr.size, e.attr.perm, e.attr.uid),
        (Kind::File, 5, 0o644, 1)
    );
    let x = fs.lookup(ROOT_INO, OsStr::new("x")).await.unwrap();
    assert_eq!(x.attr.kind, Kind::Dir, "directory wins");
    let m = fs.lookup(ROOT_INO, OsStr::new("marker")).await.unwrap();
    assert_eq!(m.attr.kind, Kind::Dir);
    assert!(
        list(&fs, m.attr.ino).await.len() == 2,
        "marker dir is empty"
    );
    let bad = fs.lookup(ROOT_INO, OsStr::new("bad")).await.unwrap();
    assert_eq!(
        list(&fs, bad.attr.ino).await,
        ["./", "../"],
        "a//b is skipped"
    );
    assert!(matches!(
        fs.lookup(ROOT_INO, OsStr::new("nope")).await,
        Err(Error::NotFound)
    ));
    assert!(matches!(
        fs.lookup(ROOT_INO, OsStr::new(&"n".repeat(300))).await,
        Err(Error::NameTooLong)
    ));

    // Stable inode numbers; cached lookups do not touch the store.
    let heads = store.heads.load(Ordering::Relaxed);
    let again = fs.lookup(ROOT_INO, OsStr::new("top.txt")).await.unwrap();
    assert_eq!(again.attr.ino, e.attr.ino);
    assert_eq!(store.heads.load(Ordering::Relaxed), heads);
}

#[tokio::test]
async fn reads_pin_the_version() {
    let (fs, store) = fs_with(
        &[("f", b"0123456789abcdefXYZ")],
        "",
        MetadataTtl::Finite(Duration::ZERO),
    );
    let e = fs.lookup(ROOT_INO, OsStr::new("f")).await.unwrap();
    let fh = fs.open(e.attr.ino, libc::O_RDONLY).await.unwrap().fh;
    assert_eq!(&fs.read(fh, 3, 10).await.unwrap()[..], b"3456789abc");
    store.put("f", b"changed!".to_vec());
    // Block 0 is cached for the old version and still served; block 1 is not.
    assert_eq!(&fs.read(fh, 0, 4).await.unwrap()[..], b"0123");
    let err = fs.read(fh, 16, 3).await.unwrap_err();
    assert_eq!(err.errno(), libc::ESTALE);
    fs.release(fh);
    let fh = fs.open(e.attr.ino, libc::O_RDONLY).await.unwrap().fh;
    assert_eq!(&fs.read(fh, 0, 100).await.unwrap()[..], b"changed!");
    assert_eq!(&fs.read(fh, 7, 100).await.unwrap()[..], b"!");
    assert!(fs.read(fh, 8, 100).await.unwrap().is_empty());
    assert_eq!(fs.getattr(e.attr.ino).await.unwrap().attr.size, 8);
    store.remove("f");
    assert!(matches!(fs.getattr(e.attr.ino).await, Err(Error::NotFound)));
}

#[tokio::test]
async fn writes_are_refused_and_prefix_mounts_work() {
    let (fs, _) = fs_with(&[("p/q/file", b"abc"), ("other", b"z")], "p/", TTL);
    assert_eq!(list(&fs, ROOT_INO).await, ["./", "../", "q/"]);
    let q = fs.lookup(ROOT_INO, OsStr::new("q")).await.unwrap();
    let f = fs.lookup(q.attr.ino, OsStr::new("file")).await.unwrap();
    assert!(matches!(
        fs.open(f.attr.ino, libc::O_WRONLY).await,
        Err(Error::ReadOnly)
    ));
    assert!(matches!(
        fs.open(f.attr.ino, libc::O_RDONLY | libc::O_TRUNC).await,
        Err(Error::ReadOnly)
    ));
    assert!(matches!(
        fs.open(q.attr.ino, libc::O_RDONLY).await,
        Err(Error::IsDir)
    ));
    assert!(matches!(
        fs.lookup(ROOT_INO, OsStr::new("other")).await,
        Err(Error::NotFound)
    ));
}

#[tokio::test]
async fn large_directory_lists_completely() {
    let store = Arc::new(MemoryStore::new("b"));
    for i in 0..2500 {
        store.put(&format!("d/{i:05}"), b"x".to_vec());
    }
    let cfg = FsConfig {
        prefix: "d/".into(),
        uid: 0,
        gid: 0,
        file_mode: 0o644,
        dir_mode: 0o755,
        metadata_ttl: TTL,
        read_only: true,
        max_idle_inodes: 100,
    };
    let fs = Fs::new(
        cfg,
        store.clone(),
        BlockCache::new(store.clone(), read_cfg()),
    );
    let names = list(&fs, ROOT_INO).await;
    assert_eq!(names.len(), 2502);
    let mut sorted = names[2..].to_vec();
    sorted.dedup();
    assert_eq!(sorted.len(), 2500);
    assert_eq!(store.lists.load(Ordering::Relaxed), 3, "paginated by 1000");
    // Within the TTL a new handle is served from the cached listing.
    assert_eq!(list(&fs, ROOT_INO).await.len(), 2502);
    assert_eq!(
        store.lists.load(Ordering::Relaxed),
        3,
        "no LIST for a cached listing"
    );
}

#[tokio::test]
async fn lookup_sees_a_directory_past_many_look_alike_siblings() {
    let mut keys: Vec<(String, Vec<u8>)> = (0..40)
        .map(|i| (format!("x-{i:03}"), b"s".to_vec()))
        .collect();
    keys.push(("x".into(), b"file".to_vec()));
    keys.push(("x/inner".into(), b"i".to_vec()));
    keys.extend((0..40).map(|i| (format!("y.{i:03}"), b"s".to_vec())));
    keys.push(("y".into(), b"file".to_vec()));
    let refs: Vec<(&str, &[u8])> = keys
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    let (fs, store) = fs_with(&refs, "", TTL);
    let x = fs.lookup(ROOT_INO, OsStr::new("x")).await.unwrap();
    assert_eq!(
        x.attr.kind,
        Kind::Dir,
        "the directory wins even 40 siblings later"
    );
    let y = fs.lookup(ROOT_INO, OsStr::new("y")).await.unwrap();
    assert_eq!((y.attr.kind, y.attr.size), (Kind::File, 4));
    let lists = store.lists.load(Ordering::Relaxed);
    assert!(matches!(
        fs.lookup(ROOT_INO, OsStr::new("x-0")).await,
        Err(Error::NotFound)
    ));
    assert!(store.lists.load(Ordering::Relaxed) > lists);
    assert_eq!(
        store.heads.load(Ordering::Relaxed),
        0,
        "lookups need no HEAD"
    );
}

#[tokio::test]
async fn listed_nodes_are_bounded_and_forget_releases_held_ones() {
    // fs_with keeps at most 100 idle nodes.
    let (fs, store) = fs_with(&[], "", TTL);
    for i in 0..2500 {
        store.put(&format!("{i:05}"), b"x".to_vec());
    }
    // Plain readdir takes no reference: at most 100 idle nodes stay.
    assert_eq!(list(&fs, ROOT_INO).await.len(), 2502);
    assert_eq!(fs.inode_counts(), (101, 100));
    // The cached listing still lists everything, putting nodes back as it
    // goes, and a lookup of a dropped name still works.
    assert_eq!(list(&fs, ROOT_INO).await.len(), 2502);
    let e = fs.lookup(ROOT_INO, OsStr::new("00000")).await.unwrap();
    assert_eq!(e.attr.size, 1);
    // readdirplus: every entry (not . and ..) is held until forgotten.
    let names = list_with(&fs, ROOT_INO, true).await;
    assert_eq!(names.len(), 2502);
    let (len, idle) = fs.inode_counts();
    assert_eq!((len, idle), (2501, 0));
    let mut inos = Vec::new();
    let fh = fs.opendir(ROOT_INO).unwrap();
    fs.readdir(fh, 0, false, |e, _| {
        inos.push((e.name.to_string(), e.ino));
        false
    })
    .await
    .unwrap();
    let lookup_ino = e.attr.ino;
    for (name, ino) in &inos[2..] {
        // 00000 was looked up once and listed by readdirplus once.
        let n = if name == "00000" { 2 } else { 1 };
        assert!(*ino != lookup_ino || name == "00000");
        fs.forget(*ino, n);
    }
    assert_eq!(fs.inode_counts(), (101, 100));
}
