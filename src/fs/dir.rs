//! Directory handles: a streamed, paginated listing served to `readdir`.
//!
//! A handle lists its prefix page by page (ListObjectsV2, delimiter `/`) and
//! keeps only the entries not yet returned, so a directory of any size is
//! listed with memory bounded by a page plus a few pending names.
//!
//! Collisions: a file `x` and a prefix `x/` may both exist. Keys come in byte
//! order, and every key between `x` and `x/` starts with `x` followed by a
//! byte below `/`, so a file stays *pending* until the listing passes
//! `x/`: if the prefix `x/` shows up, the directory wins and the file is
//! dropped (logged); otherwise the file is emitted. Entry order is the
//! listing's, except that such a file may come after its neighbours.

use std::collections::VecDeque;

use crate::meta::names::{listed_object, listed_prefix, Listed};
use crate::meta::Kind;
use crate::store::{ListPage, ObjectMeta};

/// One entry produced by the listing.
#[derive(Debug, Clone)]
pub struct Listing {
    pub name: String,
    pub kind: Kind,
    /// Present for files.
    pub meta: Option<ObjectMeta>,
}

/// Turns sorted listing pages into directory entries, resolving collisions.
#[derive(Debug, Default)]
pub struct EntryStream {
    pending: VecDeque<Listing>,
}

impl EntryStream {
    /// Feed one page of the listing of `dir`; returns the entries now ready.
    pub fn push_page(&mut self, dir: &str, page: ListPage) -> Vec<Listing> {
        let mut out = Vec::new();
        // Merge the page's objects and prefixes back into key order.
        let mut objects = page.objects.into_iter().peekable();
        let mut prefixes = page.prefixes.into_iter().peekable();
        loop {
            let take_object = match (objects.peek(), prefixes.peek()) {
                (Some(o), Some(p)) => o.key.as_str() < p.as_str(),
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            if take_object {
                let meta = objects.next().expect("peeked");
                match listed_object(dir, &meta.key) {
                    Listed::File(name) => {
                        let sort_key = name.to_string();
                        self.resolve(&sort_key, false, &mut out);
                        self.pending.push_back(Listing {
                            name: sort_key,
                            kind: Kind::File,
                            meta: Some(meta),
                        });
                    }
                    Listed::SelfMarker => {}
                    Listed::Skip(why) => {
                        tracing::debug!(key = %meta.key.escape_debug(), ?why, "skipping key that cannot be a path")
                    }
                    Listed::Dir(_) => {}
                }
            } else {
                let prefix = prefixes.next().expect("peeked");
                match listed_prefix(dir, &prefix) {
                    Listed::Dir(name) => {
                        let sort_key = format!("{name}/");
                        self.resolve(&sort_key, true, &mut out);
                        out.push(Listing {
                            name: name.to_string(),
                            kind: Kind::Dir,
                            meta: None,
                        });
                    }
                    Listed::Skip(why) => {
                        tracing::debug!(prefix = %prefix.escape_debug(), ?why, "skipping prefix that cannot be a path")
                    }
                    Listed::File(_) | Listed::SelfMarker => {}
                }
            }
        }
        out
    }

    /// The listing ended: everything pending is ready.
    pub fn finish(&mut self) -> Vec<Listing> {
        self.pending.drain(..).collect()
    }

    /// The listing has reached `sort_key`: release pending files it passed.
    fn resolve(&mut self, sort_key: &str, is_prefix: bool, out: &mut Vec<Listing>) {
        while let Some(p) = self.pending.front() {
            let shadow = format!("{}/", p.name);
            if sort_key < shadow.as_str() {
                break;
            }
            let p = self.pending.pop_front().expect("front exists");
            if is_prefix && sort_key == shadow {
                tracing::info!(
                    name = %p.name.escape_debug(),
                    "an object and a directory share this name; the directory wins and the object is hidden"
                );
            } else {
                out.push(p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn obj(key: &str) -> ObjectMeta {
        ObjectMeta {
            key: key.into(),
            size: 1,
            etag: "e".into(),
            last_modified: SystemTime::UNIX_EPOCH,
        }
    }

    fn names(v: &[Listing]) -> Vec<String> {
        v.iter()
            .map(|l| format!("{}{}", l.name, if l.kind == Kind::Dir { "/" } else { "" }))
            .collect()
    }

    #[test]
    fn directory_wins_across_pages() {
        let mut s = EntryStream::default();
        let mut out = s.push_page(
            "d/",
            ListPage {
                objects: vec![obj("d/"), obj("d/a"), obj("d/x"), obj("d/x-1")],
                prefixes: vec![],
                next_token: Some("t".into()),
            },
        );
        out.extend(s.push_page(
            "d/",
            ListPage {
                objects: vec![obj("d/y")],
                prefixes: vec!["d/x/".into(), "d//".into()],
                next_token: None,
            },
        ));
        out.extend(s.finish());
        let mut got = names(&out);
        got.sort();
        assert_eq!(got, ["a", "x-1", "x/", "y"]);
    }

    #[test]
    fn file_without_collision_is_kept() {
        let mut s = EntryStream::default();
        let mut out = s.push_page(
            "",
            ListPage {
                objects: vec![obj("x"), obj("x.txt")],
                prefixes: vec!["xa/".into()],
                next_token: None,
            },
        );
        out.extend(s.finish());
        assert_eq!(names(&out), ["x", "x.txt", "xa/"]);
    }
}
