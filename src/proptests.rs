//! Property tests of the pure logic: key↔name mapping, listing pagination
//! and collisions, range arithmetic through the cache, prefetch windows,
//! mount-option parsing, timestamp and percent-decoding parsers.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::sync::Arc;

use proptest::prelude::*;

use crate::fs::dir::EntryStream;
use crate::meta::names::{check_segment, listed_object, listed_prefix, Listed};
use crate::meta::Kind;
use crate::store::memory::MemoryStore;

/// Segments drawn to hit the interesting cases: empty, dots, long, odd bytes.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-c]{1,3}",
        1 => Just(String::new()),
        1 => Just(".".to_string()),
        1 => Just("..".to_string()),
        1 => "[a-c%+ \\-.\u{1}\u{e9}]{1,4}",
        1 => Just("x".repeat(256)),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop::collection::vec(segment(), 1..4).prop_map(|segs| segs.join("/"))
}

/// What a directory listing must contain, computed directly from the keys.
fn reference(prefix: &str, keys: &BTreeSet<String>) -> BTreeSet<(String, bool)> {
    let mut dirs = BTreeSet::new();
    let mut files = BTreeSet::new();
    for k in keys {
        let Some(rest) = k.strip_prefix(prefix) else {
            continue;
        };
        match rest.split_once('/') {
            Some((d, _)) => {
                if check_segment(d).is_ok() {
                    dirs.insert(d.to_string());
                }
            }
            None => {
                if !rest.is_empty() && check_segment(rest).is_ok() {
                    files.insert(rest.to_string());
                }
            }
        }
    }
    let mut out: BTreeSet<(String, bool)> = dirs.iter().map(|d| (d.clone(), true)).collect();
    out.extend(
        files
            .into_iter()
            .filter(|f| !dirs.contains(f))
            .map(|f| (f, false)),
    );
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn names_round_trip(dir in "([a-c]{1,2}/){0,2}", name in segment()) {
        let key = format!("{dir}{name}");
        match listed_object(&dir, &key) {
            Listed::File(n) => { prop_assert_eq!(n, name.as_str()); prop_assert!(check_segment(&name).is_ok()); }
            Listed::SelfMarker => prop_assert!(name.is_empty()),
            Listed::Skip(_) => prop_assert!(check_segment(&name).is_err()),
            Listed::Dir(_) => prop_assert!(false, "an object is never a dir"),
        }
        match listed_prefix(&dir, &format!("{key}/")) {
            Listed::Dir(n) => prop_assert_eq!(n, name.as_str()),
            Listed::Skip(_) => prop_assert!(check_segment(&name).is_err()),
            other => prop_assert!(false, "{:?}", other),
        }
    }

    #[test]
    fn listings_are_complete_unique_and_page_independent(
        keys in prop::collection::btree_set(key(), 0..60),
        max_keys in 1u32..8,
        prefix in prop_oneof![Just(String::new()), Just("a/".to_string()), Just("b/".to_string())],
    ) {
        let store = MemoryStore::new("b");
        for k in &keys { store.put(k, Vec::new()); }
        let mut stream = EntryStream::default();
        let mut got: Vec<(String, bool)> = Vec::new();
        let mut token: Option<String> = None;
        let mut pages = 0;
        loop {
            let page = store.list_sync_for_tests(&prefix, token.as_deref(), max_keys);
            let next = page.next_token.clone();
            got.extend(stream.push_page(&prefix, page).into_iter().map(|l| (l.name, l.kind == Kind::Dir)));
            pages += 1;
            prop_assert!(pages < 1000, "pagination terminates");
            match next { Some(t) => token = Some(t), None => break }
        }
        got.extend(stream.finish().into_iter().map(|l| (l.name, l.kind == Kind::Dir)));
        let unique: BTreeSet<_> = got.iter().cloned().collect();
        prop_assert_eq!(unique.len(), got.len(), "no duplicates: {:?}", got);
        prop_assert_eq!(unique, reference(&prefix, &keys));
    }

    #[test]
    fn cache_reads_are_exact_for_any_range(
        size in 0usize..5000,
        block in 1u64..700,
        reads in prop::collection::vec((0u64..6000, 0u64..3000), 1..20),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let store = Arc::new(MemoryStore::new("b"));
            let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
            store.put("k", data.clone());
            let meta = crate::store::ObjectStore::head(&*store, "k").await.unwrap();
            let cfg = crate::read::ReadConfig { cache_size: block * 16, block_size: block, part_size: block * 3, prefetch_window: block * 8 };
            let cache = crate::read::BlockCache::new(store.clone(), cfg);
            let v = crate::read::ObjectVersion { key: "k".into(), etag: meta.etag.as_str().into(), size: size as u64 };
            for (off, len) in reads {
                cache.prefetch(&v, off..off + len);
                let got = cache.read(&v, off, len).await.unwrap();
                let start = (off as usize).min(size);
                let end = ((off + len) as usize).min(size).max(start);
                assert_eq!(&got[..], &data[start..end], "{}+{}", off, len);
            }
        });
    }

    #[test]
    fn prefetch_ranges_never_overlap_or_pass_the_end(
        reads in prop::collection::vec((0u64..1000, 1u64..50), 1..200),
        size in 1u64..2000,
    ) {
        let mut w = crate::read::PrefetchWindow::new(16, 128);
        let mut pos = 0;
        let mut last_end = 0;
        for (jump, len) in reads {
            // Mostly sequential, sometimes a seek.
            let seek = jump % 7 == 0;
            pos = if seek { jump % size } else { pos };
            if let Some(r) = w.on_read(pos, len, size) {
                prop_assert!(r.start < r.end && r.end <= size, "{:?}", r);
                prop_assert!(r.start >= (pos + len).min(size), "never fetches what was just read: {:?}", r);
                if !seek {
                    prop_assert!(r.start >= last_end || r.start >= pos, "no overlap with what was requested: {:?}", r);
                }
                last_end = r.end;
            }
            pos += len;
        }
    }

    #[test]
    fn mount_options_map_to_the_cli(
        region in "[a-z]{2}-[a-z]{4}-[0-9][a-z]?",
        uid in 0u32..70000,
        ttl in 0u32..10000,
        ro in any::<bool>(),
        allow_other in any::<bool>(),
        underscores in any::<bool>(),
        ignored in prop::collection::vec(prop_oneof![Just("_netdev"), Just("nofail"), Just("x-systemd.automount"), Just("defaults"), Just("comment=foo")], 0..4),
    ) {
        let sep = |s: &str| if underscores { s.replace('-', "_") } else { s.to_string() };
        let mut opts = vec![format!("region={region}"), format!("uid={uid}"), format!("{}={ttl}", sep("metadata-ttl"))];
        if ro { opts.push("ro".into()); }
        if allow_other { opts.push(sep("allow-other")); }
        opts.extend(ignored.iter().map(|s| s.to_string()));
        let args: Vec<OsString> = ["bucket/p", "/mnt/x", "-o"].iter().map(OsString::from).chain([OsString::from(opts.join(","))]).collect();
        let call = crate::fstab::parse_helper(&args).unwrap();
        let mut argv: Vec<OsString> = vec!["cwfs".into()];
        argv.extend(call.argv);
        let crate::config::Command::Mount(m) = <crate::config::Cli as clap::Parser>::try_parse_from(argv).unwrap().command;
        let c = m.resolve(&crate::config::Environment::default()).unwrap();
        prop_assert_eq!(c.region, region);
        prop_assert_eq!(c.uid, uid);
        prop_assert_eq!(c.metadata_ttl, crate::config::MetadataTtl::Finite(std::time::Duration::from_secs(ttl.into())));
        prop_assert_eq!(c.read_only, ro);
        prop_assert_eq!(c.allow_other, allow_other);
        prop_assert_eq!(call.ignored.len(), ignored.len());
    }

    #[test]
    fn helper_parsing_never_panics(args in prop::collection::vec("[-a-z_=,./0-9 ]{0,20}", 0..6)) {
        let args: Vec<OsString> = args.into_iter().map(OsString::from).collect();
        let _ = crate::fstab::parse_helper(&args);
    }

    #[test]
    fn parsers_never_panic(s in "\\PC{0,40}") {
        let _ = crate::creds::time::parse_rfc3339(&s);
        let _ = crate::store::s3::url_decode(&s);
        let _ = crate::config::parse_size(&s);
        let _ = crate::config::Source::parse(&s);
        let _ = crate::creds::exchange::parse_response(s.as_bytes());
    }

    #[test]
    fn url_decoding_inverts_encoding(s in "\\PC{0,30}") {
        let encoded: String = s.bytes().map(|b| if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }).collect();
        prop_assert_eq!(crate::store::s3::url_decode(&encoded), Some(s));
    }
}

#[test]
fn reference_model_sanity() {
    let keys: BTreeSet<String> = ["x", "x/y", "a//b", "f"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let r = reference("", &keys);
    let want: BTreeSet<(String, bool)> = [
        ("x".to_string(), true),
        ("a".to_string(), true),
        ("f".to_string(), false),
    ]
    .into_iter()
    .collect();
    assert_eq!(r, want);
    let _ = BTreeMap::<u8, u8>::new();
}
