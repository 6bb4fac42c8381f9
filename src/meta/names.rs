//! Which object keys can be paths, and how a listed key maps to a name.
//!
//! A key splits on `/` into segments. A segment that is empty (`a//b`),
//! `.` or `..`, longer than 255 bytes (the Linux NAME_MAX), or contains a NUL
//! byte cannot be a path component: such keys are skipped, never an error
//! for the whole directory.

/// The longest name Linux accepts for one path component.
pub const NAME_MAX: usize = 255;

/// Why a segment cannot be a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadName {
    Empty,
    Dot,
    TooLong,
    Nul,
}

/// Check one segment.
pub fn check_segment(name: &str) -> Result<(), BadName> {
    if name.is_empty() {
        Err(BadName::Empty)
    } else if name == "." || name == ".." {
        Err(BadName::Dot)
    } else if name.len() > NAME_MAX {
        Err(BadName::TooLong)
    } else if name.contains('\0') || name.contains('/') {
        Err(BadName::Nul)
    } else {
        Ok(())
    }
}

/// The entry a listed key or common prefix makes in the directory `dir`
/// (a prefix ending in `/`, or empty for the bucket root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listed<'a> {
    /// A file called this.
    File(&'a str),
    /// A subdirectory called this.
    Dir(&'a str),
    /// The directory's own `dir/` marker object: not an entry.
    SelfMarker,
    /// Not representable (logged at debug by the caller).
    Skip(BadName),
}

/// Classify an object key listed under `dir`.
pub fn listed_object<'a>(dir: &str, key: &'a str) -> Listed<'a> {
    let Some(rest) = key.strip_prefix(dir) else {
        return Listed::Skip(BadName::Empty);
    };
    if rest.is_empty() {
        return Listed::SelfMarker;
    }
    match check_segment(rest) {
        Ok(()) => Listed::File(rest),
        Err(e) => Listed::Skip(e),
    }
}

/// Classify a common prefix listed under `dir`.
pub fn listed_prefix<'a>(dir: &str, prefix: &'a str) -> Listed<'a> {
    let Some(rest) = prefix.strip_prefix(dir) else {
        return Listed::Skip(BadName::Empty);
    };
    let name = rest.strip_suffix('/').unwrap_or(rest);
    match check_segment(name) {
        Ok(()) => Listed::Dir(name),
        Err(e) => Listed::Skip(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments() {
        assert_eq!(check_segment("a b+%ü"), Ok(()));
        assert_eq!(check_segment(""), Err(BadName::Empty));
        assert_eq!(check_segment(".."), Err(BadName::Dot));
        assert_eq!(check_segment(&"x".repeat(255)), Ok(()));
        assert_eq!(check_segment(&"x".repeat(256)), Err(BadName::TooLong));
        assert_eq!(check_segment("a\0b"), Err(BadName::Nul));
    }

    #[test]
    fn listing_entries() {
        assert_eq!(listed_object("d/", "d/"), Listed::SelfMarker);
        assert_eq!(listed_object("d/", "d/f"), Listed::File("f"));
        assert_eq!(listed_object("", "f"), Listed::File("f"));
        assert_eq!(listed_prefix("d/", "d/s/"), Listed::Dir("s"));
        assert_eq!(listed_prefix("a/", "a//"), Listed::Skip(BadName::Empty));
        assert_eq!(listed_prefix("", "../"), Listed::Skip(BadName::Dot));
        assert_eq!(listed_prefix("", "./"), Listed::Skip(BadName::Dot));
    }
}
