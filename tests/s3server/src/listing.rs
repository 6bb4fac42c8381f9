//! Pure S3 listing logic over a sorted key map (no I/O, no s3s types).
//!
//! Owns the semantics shared by ListObjectsV2 and ListObjects (v1): prefix, delimiter (common
//! prefixes reported once, merged with keys in one sort order as S3 does), max-keys, and resuming
//! after a marker (start-after, continuation token, v1 marker). Every entry — a key or a common
//! prefix — strictly greater than the marker is listed; keys rolled up into a common prefix are
//! never listed on their own.
//!
//! Cost: one `BTreeMap::range` seek to the start point, then a walk over the keys that are listed
//! themselves; each common prefix costs one more seek past its whole subtree, so listing the top
//! level of a bucket with 1,000,000 keys under a few directories touches only a few keys.
//!
//! Also owns the opaque continuation-token format and `encoding-type=url` encoding.

use std::collections::BTreeMap;
use std::ops::Bound;

/// What to list.
#[derive(Debug, Clone, Copy)]
pub struct ListParams<'a> {
    /// Only keys starting with this.
    pub prefix: &'a str,
    /// Roll keys containing this (after the prefix) up into common prefixes. Empty = none.
    pub delimiter: Option<&'a str>,
    /// List only entries strictly greater than this.
    pub after: Option<&'a str>,
    /// At most this many entries (keys + common prefixes).
    pub max_keys: usize,
}

/// One listed entry.
#[derive(Debug, PartialEq, Eq)]
pub enum Entry<'a, V> {
    /// An object key and its value.
    Key(&'a str, &'a V),
    /// A common prefix (ends with the delimiter).
    Prefix(String),
}

impl<V> Entry<'_, V> {
    /// The key or the common prefix.
    pub fn name(&self) -> &str {
        match self {
            Entry::Key(k, _) => k,
            Entry::Prefix(p) => p,
        }
    }
}

/// One page of a listing.
#[derive(Debug)]
pub struct ListPage<'a, V> {
    /// Entries in S3 order (byte-wise lexicographic), keys and prefixes interleaved.
    pub entries: Vec<Entry<'a, V>>,
    /// More entries follow.
    pub is_truncated: bool,
    /// When truncated: the last entry's name, to resume after.
    pub next_marker: Option<String>,
}

/// The smallest string greater than every string that starts with `prefix`, or `None` when no
/// such string exists (the prefix consists only of U+10FFFF).
///
/// Rust orders `String`s by their UTF-8 bytes, which is code point order, so bumping the last
/// code point that can be bumped gives the bound.
pub fn prefix_successor(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(c) = chars.pop() {
        let next = match c as u32 {
            0x10FFFF => None,
            0xD7FF => Some('\u{E000}'),
            n => char::from_u32(n + 1),
        };
        if let Some(n) = next {
            chars.push(n);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// Lists one page of `map` according to `params`.
pub fn list_page<'a, V>(map: &'a BTreeMap<String, V>, params: &ListParams<'_>) -> ListPage<'a, V> {
    let prefix = params.prefix;
    let delimiter = params.delimiter.filter(|d| !d.is_empty());
    let after = params.after;
    let mut entries = Vec::new();
    if params.max_keys == 0 {
        return ListPage {
            entries,
            is_truncated: false,
            next_marker: None,
        };
    }
    // One entry more than asked for tells whether the page is truncated.
    let limit = params.max_keys.saturating_add(1);

    let mut lower: Bound<String> = match after {
        Some(a) if a >= prefix => Bound::Excluded(a.to_owned()),
        _ => Bound::Included(prefix.to_owned()),
    };
    'seek: loop {
        let range = (lower.as_ref().map(String::as_str), Bound::Unbounded);
        for (key, value) in map.range::<str, _>(range) {
            if !key.starts_with(prefix) {
                break 'seek;
            }
            if let Some(d) = delimiter {
                if let Some(idx) = key[prefix.len()..].find(d) {
                    let cp = &key[..prefix.len() + idx + d.len()];
                    if after.is_none_or(|a| cp > a) {
                        entries.push(Entry::Prefix(cp.to_owned()));
                        if entries.len() >= limit {
                            break 'seek;
                        }
                    }
                    match prefix_successor(cp) {
                        Some(next) => {
                            lower = Bound::Included(next);
                            continue 'seek;
                        }
                        None => break 'seek,
                    }
                }
            }
            entries.push(Entry::Key(key, value));
            if entries.len() >= limit {
                break 'seek;
            }
        }
        break;
    }

    let is_truncated = entries.len() > params.max_keys;
    if is_truncated {
        entries.truncate(params.max_keys);
    }
    let next_marker = if is_truncated {
        entries.last().map(|e| e.name().to_owned())
    } else {
        None
    };
    ListPage {
        entries,
        is_truncated,
        next_marker,
    }
}

/// Encodes a resume marker as an opaque continuation token (hex of its UTF-8, prefixed so stray
/// strings are recognisably invalid).
pub fn encode_token(marker: &str) -> String {
    let mut s = String::with_capacity(2 + marker.len() * 2);
    s.push_str("c1");
    for b in marker.as_bytes() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Decodes a continuation token made by [`encode_token`].
pub fn decode_token(token: &str) -> Option<String> {
    let hex = token.strip_prefix("c1")?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// `encoding-type=url` encoding of a key or prefix: every byte except the RFC 3986 unreserved
/// characters and `/` is percent-encoded (so a space is `%20` and a `+` is `%2B`, which decode
/// the same with or without form-style `+` handling).
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(keys: &[&str]) -> BTreeMap<String, ()> {
        keys.iter().map(|k| ((*k).to_owned(), ())).collect()
    }

    fn names(page: &ListPage<'_, ()>) -> Vec<String> {
        page.entries.iter().map(|e| e.name().to_owned()).collect()
    }

    fn params<'a>(
        prefix: &'a str,
        delimiter: Option<&'a str>,
        after: Option<&'a str>,
        max: usize,
    ) -> ListParams<'a> {
        ListParams {
            prefix,
            delimiter,
            after,
            max_keys: max,
        }
    }

    /// Lists everything page by page, resuming after each page's marker.
    fn list_all(
        m: &BTreeMap<String, ()>,
        prefix: &str,
        delimiter: Option<&str>,
        page: usize,
    ) -> Vec<String> {
        let mut out = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let p = list_page(m, &params(prefix, delimiter, marker.as_deref(), page));
            assert!(p.entries.len() <= page);
            out.extend(names(&p));
            if !p.is_truncated {
                assert!(p.next_marker.is_none());
                return out;
            }
            assert_eq!(p.entries.len(), page);
            marker = p.next_marker;
        }
    }

    const TRICKY: &[&str] = &[
        "x",
        "x/y",
        "x/y/z",
        "x/",
        "a b",
        "a+b",
        "a%2Fb",
        "a//b",
        "./",
        "../",
        "./x",
        "dir/",
        "dir/file",
        "dir/sub/deep",
        "dir0",
        "dir-",
        "é",
        "日本/語",
        "\u{1}ctl",
        "tab\there",
        "/leading",
        "trailing/",
        "\u{10FFFF}",
        "\u{10FFFF}/x",
    ];

    #[test]
    fn successor() {
        assert_eq!(prefix_successor("a/").as_deref(), Some("a0"));
        assert_eq!(prefix_successor("").as_deref(), None);
        assert_eq!(prefix_successor("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_successor("\u{10FFFF}"), None);
        assert_eq!(prefix_successor("\u{D7FF}").as_deref(), Some("\u{E000}"));
        // Everything starting with the prefix is below the successor; nothing else between.
        for p in ["a/", "é", "x\u{FFFF}", "日本"] {
            let s = prefix_successor(p).unwrap();
            for suffix in ["", "\u{0}", "\u{10FFFF}\u{10FFFF}", "zzz"] {
                let k = format!("{p}{suffix}");
                assert!(k.as_str() < s.as_str(), "{k:?} < {s:?}");
            }
        }
    }

    #[test]
    fn flat_listing_is_sorted_and_complete() {
        let m = map(TRICKY);
        let all = list_all(&m, "", None, 1000);
        let mut expected: Vec<String> = TRICKY.iter().map(|s| (*s).to_owned()).collect();
        expected.sort();
        assert_eq!(all, expected);
        for page in 1..6 {
            assert_eq!(list_all(&m, "", None, page), expected, "page size {page}");
        }
    }

    #[test]
    fn delimiter_top_level() {
        let m = map(TRICKY);
        let got = list_all(&m, "", Some("/"), 1000);
        let expected = [
            "\u{1}ctl",
            "../",
            "./",
            "/",
            "a b",
            "a%2Fb",
            "a+b",
            "a/",
            "dir-",
            "dir/",
            "dir0",
            "tab\there",
            "trailing/",
            "x",
            "x/",
            "é",
            "日本/",
            "\u{10FFFF}",
            "\u{10FFFF}/",
        ];
        let mut expected: Vec<String> = expected.iter().map(|s| (*s).to_owned()).collect();
        expected.sort();
        assert_eq!(got, expected);
        for page in 1..5 {
            assert_eq!(
                list_all(&m, "", Some("/"), page),
                expected,
                "page size {page}"
            );
        }
        // Kinds: "x" is a key, "x/" a prefix (it rolls up "x/", "x/y", "x/y/z").
        let p = list_page(&m, &params("", Some("/"), None, 1000));
        assert!(p.entries.contains(&Entry::Key("x", &())));
        assert!(p.entries.contains(&Entry::Prefix("x/".into())));
        assert!(!p.entries.iter().any(|e| matches!(e, Entry::Key("x/", _))));
    }

    #[test]
    fn delimiter_with_prefix() {
        let m = map(TRICKY);
        assert_eq!(
            list_all(&m, "dir/", Some("/"), 1000),
            ["dir/", "dir/file", "dir/sub/"]
        );
        assert_eq!(list_all(&m, "x/", Some("/"), 1), ["x/", "x/y", "x/y/"]);
        assert_eq!(list_all(&m, "dir", Some("/"), 1), ["dir-", "dir/", "dir0"]);
        assert_eq!(list_all(&m, "./", Some("/"), 1000), ["./", "./x"]);
        assert_eq!(
            list_all(&m, "nothing", Some("/"), 1000),
            Vec::<String>::new()
        );
        // A multi-character delimiter.
        assert_eq!(
            list_all(&m, "a", Some("//"), 1000),
            ["a b", "a%2Fb", "a+b", "a//"]
        );
    }

    #[test]
    fn start_after_semantics() {
        let m = map(&["a/1", "a/2", "b", "c/1"]);
        let p = list_page(&m, &params("", Some("/"), Some("a/"), 10));
        assert_eq!(names(&p), ["b", "c/"]);
        // Inside a rolled-up subtree: the prefix sorts before the marker, so it is not repeated.
        let p = list_page(&m, &params("", Some("/"), Some("a/1"), 10));
        assert_eq!(names(&p), ["b", "c/"]);
        // Before the prefix.
        let p = list_page(&m, &params("c", None, Some("a"), 10));
        assert_eq!(names(&p), ["c/1"]);
        let p = list_page(&m, &params("", None, Some("b"), 10));
        assert_eq!(names(&p), ["c/1"]);
        let p = list_page(&m, &params("", None, Some("zzz"), 10));
        assert!(p.entries.is_empty() && !p.is_truncated);
    }

    #[test]
    fn truncation_flags() {
        let m = map(&["a", "b", "c"]);
        let p = list_page(&m, &params("", None, None, 3));
        assert!(!p.is_truncated);
        assert_eq!(p.next_marker, None);
        let p = list_page(&m, &params("", None, None, 2));
        assert!(p.is_truncated);
        assert_eq!(p.next_marker.as_deref(), Some("b"));
        let p = list_page(&m, &params("", None, None, 0));
        assert!(p.entries.is_empty() && !p.is_truncated);
    }

    #[test]
    fn many_keys_under_prefixes_paginate_without_duplicates() {
        let mut keys = Vec::new();
        for d in 0..50 {
            for f in 0..50 {
                keys.push(format!("d{d:02}/f{f:02}"));
            }
            keys.push(format!("top{d:02}"));
        }
        let m: BTreeMap<String, ()> = keys.iter().map(|k| (k.clone(), ())).collect();
        let got = list_all(&m, "", Some("/"), 7);
        assert_eq!(got.len(), 100);
        let mut dedup = got.clone();
        dedup.dedup();
        assert_eq!(dedup, got);
        let flat = list_all(&m, "", None, 333);
        assert_eq!(flat.len(), 2550);
    }

    #[test]
    fn tokens_round_trip() {
        for s in TRICKY {
            assert_eq!(decode_token(&encode_token(s)).as_deref(), Some(*s));
        }
        assert_eq!(decode_token("garbage"), None);
        assert_eq!(decode_token("c1f"), None);
        assert_eq!(decode_token("c1zz"), None);
        assert_eq!(decode_token("c1ff").as_deref(), None); // not UTF-8
    }

    #[test]
    fn url_encoding() {
        assert_eq!(url_encode("a b+c/d%é~"), "a%20b%2Bc/d%25%C3%A9~");
        assert_eq!(url_encode("\u{1}\r"), "%01%0D");
    }
}
