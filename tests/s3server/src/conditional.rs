//! Pure GET/HEAD request semantics: byte ranges and conditional headers.
//!
//! * [`resolve_range`] turns a parsed `Range` header (`bytes=a-b`, `bytes=a-`, `bytes=-n`) into
//!   the byte span to send, or `416 InvalidRange` when unsatisfiable.
//! * [`evaluate`] applies `If-Match`, `If-Unmodified-Since`, `If-None-Match` and
//!   `If-Modified-Since` in RFC 9110 order (as S3 does): 412 `PreconditionFailed` or
//!   304 `NotModified`. Dates compare at whole seconds, the precision of HTTP dates.

use std::ops::Range as Span;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::header::HeaderValue;
use hyper::HeaderMap;
use s3s::dto::{ETagCondition, Range};
use s3s::{s3_error, S3Error};

/// The outcome of evaluating the conditional headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// Serve the object.
    Proceed,
    /// 304.
    NotModified,
    /// 412.
    PreconditionFailed,
}

/// The conditional headers of a GET or HEAD request.
#[derive(Debug, Default, Clone, Copy)]
pub struct Conditions<'a> {
    /// `If-Match`.
    pub if_match: Option<&'a ETagCondition>,
    /// `If-None-Match`.
    pub if_none_match: Option<&'a ETagCondition>,
    /// `If-Modified-Since`.
    pub if_modified_since: Option<SystemTime>,
    /// `If-Unmodified-Since`.
    pub if_unmodified_since: Option<SystemTime>,
}

fn etag_matches(cond: &ETagCondition, etag: &str) -> bool {
    match cond {
        ETagCondition::Any => true,
        ETagCondition::ETag(t) => t.value() == etag,
    }
}

fn whole_seconds(t: SystemTime) -> SystemTime {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// Evaluates the conditions against an object with entity tag `etag` (unquoted) and
/// `last_modified`.
pub fn evaluate(c: &Conditions<'_>, etag: &str, last_modified: SystemTime) -> Condition {
    let lm = whole_seconds(last_modified);
    if let Some(m) = c.if_match {
        if !etag_matches(m, etag) {
            return Condition::PreconditionFailed;
        }
    } else if let Some(t) = c.if_unmodified_since {
        if lm > t {
            return Condition::PreconditionFailed;
        }
    }
    if let Some(m) = c.if_none_match {
        if etag_matches(m, etag) {
            return Condition::NotModified;
        }
    } else if let Some(t) = c.if_modified_since {
        if lm <= t {
            return Condition::NotModified;
        }
    }
    Condition::Proceed
}

/// Turns a condition outcome into the S3 error to answer, carrying `ETag` and `Last-Modified`
/// on a 304 as S3 does.
pub fn condition_error(
    outcome: Condition,
    etag: &str,
    last_modified: SystemTime,
) -> Option<S3Error> {
    match outcome {
        Condition::Proceed => None,
        Condition::PreconditionFailed => Some(s3_error!(
            PreconditionFailed,
            "At least one of the pre-conditions you specified did not hold"
        )),
        Condition::NotModified => {
            let mut e = s3_error!(NotModified);
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&format!("\"{etag}\"")) {
                h.insert(hyper::header::ETAG, v);
            }
            if let Ok(v) = HeaderValue::from_str(&http_date(last_modified)) {
                h.insert(hyper::header::LAST_MODIFIED, v);
            }
            e.set_headers(h);
            Some(e)
        }
    }
}

/// The byte span to send for `range` of an object of `len` bytes: `Ok(None)` for the whole
/// object, `Err(416 InvalidRange)` when unsatisfiable (including any range of an empty object,
/// as S3 does).
pub fn resolve_range(range: Option<&Range>, len: u64) -> Result<Option<Span<u64>>, S3Error> {
    let Some(range) = range else { return Ok(None) };
    match range.check(len) {
        Ok(span) if !span.is_empty() => Ok(Some(span)),
        _ => {
            let mut e = s3_error!(InvalidRange, "The requested range is not satisfiable");
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                h.insert(hyper::header::CONTENT_RANGE, v);
            }
            e.set_headers(h);
            Err(e)
        }
    }
}

/// `Content-Range` value for `span` of an object of `len` bytes.
pub fn content_range(span: &Span<u64>, len: u64) -> String {
    format!("bytes {}-{}/{}", span.start, span.end - 1, len)
}

/// RFC 1123 date, e.g. `Tue, 29 Apr 2014 18:30:38 GMT`.
pub fn http_date(t: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        d,
        MONTHS[(m - 1) as usize],
        y,
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 -> (year, month 1..=12, day 1..=31) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use s3s::dto::ETag;

    fn span(header: &str, len: u64) -> Result<Option<Span<u64>>, String> {
        let r = Range::parse(header).map_err(|_| "parse".to_owned())?;
        resolve_range(Some(&r), len).map_err(|e| e.code().as_str().to_owned())
    }

    #[test]
    fn ranges() {
        assert_eq!(span("bytes=0-0", 10), Ok(Some(0..1)));
        assert_eq!(span("bytes=2-5", 10), Ok(Some(2..6)));
        assert_eq!(span("bytes=2-", 10), Ok(Some(2..10)));
        assert_eq!(span("bytes=9-", 10), Ok(Some(9..10)));
        assert_eq!(span("bytes=5-100", 10), Ok(Some(5..10)));
        assert_eq!(span("bytes=-3", 10), Ok(Some(7..10)));
        assert_eq!(span("bytes=-30", 10), Ok(Some(0..10)));
        assert_eq!(span("bytes=10-", 10), Err("InvalidRange".into()));
        assert_eq!(span("bytes=10-20", 10), Err("InvalidRange".into()));
        assert_eq!(span("bytes=-0", 10), Err("InvalidRange".into()));
        assert_eq!(span("bytes=0-", 0), Err("InvalidRange".into()));
        assert_eq!(span("bytes=-5", 0), Err("InvalidRange".into()));
        assert_eq!(span("bytes=5-2", 10), Err("parse".into()));
        assert_eq!(span("items=0-1", 10), Err("parse".into()));
        assert_eq!(resolve_range(None, 10).unwrap(), None);
        assert_eq!(content_range(&(2..6), 10), "bytes 2-5/10");
    }

    #[test]
    fn conditions() {
        let lm = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let lm_s = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let good = ETagCondition::ETag(ETag::Strong("abc".into()));
        let bad = ETagCondition::ETag(ETag::Strong("xyz".into()));
        let any = ETagCondition::Any;
        let eval = |c: Conditions<'_>| evaluate(&c, "abc", lm);

        assert_eq!(eval(Conditions::default()), Condition::Proceed);
        let c = |m, n| Conditions {
            if_match: m,
            if_none_match: n,
            ..Default::default()
        };
        assert_eq!(eval(c(Some(&good), None)), Condition::Proceed);
        assert_eq!(eval(c(Some(&any), None)), Condition::Proceed);
        assert_eq!(eval(c(Some(&bad), None)), Condition::PreconditionFailed);
        assert_eq!(eval(c(None, Some(&good))), Condition::NotModified);
        assert_eq!(eval(c(None, Some(&any))), Condition::NotModified);
        assert_eq!(eval(c(None, Some(&bad))), Condition::Proceed);
        assert_eq!(
            eval(c(Some(&bad), Some(&good))),
            Condition::PreconditionFailed
        );

        // Dates at whole seconds: the object's LastModified (with milliseconds) is "not
        // modified since" its own HTTP date.
        let ims = |t| Conditions {
            if_modified_since: Some(t),
            ..Default::default()
        };
        assert_eq!(eval(ims(lm_s)), Condition::NotModified);
        assert_eq!(eval(ims(lm_s - Duration::from_secs(1))), Condition::Proceed);
        let ius = |t| Conditions {
            if_unmodified_since: Some(t),
            ..Default::default()
        };
        assert_eq!(eval(ius(lm_s)), Condition::Proceed);
        assert_eq!(
            eval(ius(lm_s - Duration::from_secs(1))),
            Condition::PreconditionFailed
        );
        // If-Match true wins over If-Unmodified-Since false (S3 documents this).
        let both = Conditions {
            if_match: Some(&good),
            if_unmodified_since: Some(lm_s - Duration::from_secs(1)),
            ..Default::default()
        };
        assert_eq!(eval(both), Condition::Proceed);
        // If-None-Match false (no match) and If-Modified-Since true: served.
        let both = Conditions {
            if_none_match: Some(&bad),
            if_modified_since: Some(lm_s),
            ..Default::default()
        };
        assert_eq!(eval(both), Condition::Proceed);
    }

    #[test]
    fn dates() {
        assert_eq!(http_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            http_date(UNIX_EPOCH + Duration::from_secs(1_398_796_238)),
            "Tue, 29 Apr 2014 18:30:38 GMT"
        );
        assert_eq!(
            http_date(UNIX_EPOCH + Duration::from_millis(951_782_400_999)),
            "Tue, 29 Feb 2000 00:00:00 GMT"
        );
    }
}
