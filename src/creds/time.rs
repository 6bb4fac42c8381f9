//! Parsing the `Expiration` of a credentials response: RFC 3339 / ISO 8601
//! date-times such as `2026-12-03T10:15:30Z`, `2026-12-03T10:15:30.123Z` or
//! `2026-12-03T10:15:30+00:00`.

use std::time::{Duration, SystemTime};

/// Parse an RFC 3339 timestamp into a `SystemTime`.
pub fn parse_rfc3339(s: &str) -> Result<SystemTime, String> {
    let bad = || format!("`{s}` is not an RFC 3339 date-time such as 2026-12-03T10:15:30Z");
    let b = s.trim().as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad());
    }
    let num = |from: usize, to: usize| -> Result<i64, String> {
        std::str::from_utf8(&b[from..to])
            .ok()
            .filter(|t| t.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|t| t.parse().ok())
            .ok_or_else(bad)
    };
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, min, sec) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return Err(bad());
    }
    let mut i = 19;
    let mut nanos: u32 = 0;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Err(bad());
        }
        let digits = &s.trim()[start..i.min(start + 9)];
        nanos = digits.parse::<u32>().map_err(|_| bad())? * 10u32.pow(9 - digits.len() as u32);
    }
    let offset_secs: i64 = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(&sign @ (b'+' | b'-')) if i + 6 == b.len() && b[i + 3] == b':' => {
            let v = num(i + 1, i + 3)? * 3600 + num(i + 4, i + 6)? * 60;
            if sign == b'+' {
                v
            } else {
                -v
            }
        }
        _ => return Err(bad()),
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + min * 60 + sec - offset_secs;
    if secs < 0 {
        return Err(bad());
    }
    Ok(SystemTime::UNIX_EPOCH + Duration::new(secs as u64, nanos))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's method).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: &str) -> u64 {
        parse_rfc3339(s)
            .unwrap()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn forms() {
        assert_eq!(secs("1970-01-01T00:00:00Z"), 0);
        assert_eq!(secs("2026-12-03T10:15:30Z"), 1_796_292_930);
        assert_eq!(secs("2026-12-03T10:15:30+00:00"), 1_796_292_930);
        assert_eq!(secs("2026-12-03T11:15:30+01:00"), 1_796_292_930);
        assert_eq!(secs("2026-12-03T10:15:30.999Z"), 1_796_292_930);
        assert_eq!(secs("2000-02-29T00:00:00Z"), 951_782_400);
        let t = parse_rfc3339("2026-12-03T10:15:30.5Z").unwrap();
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .subsec_millis(),
            500
        );
    }

    #[test]
    fn rejects() {
        for s in [
            "",
            "2026-12-03",
            "2026-12-03T10:15:30",
            "2026-13-03T10:15:30Z",
            "2026-12-03T10:15:30+0000",
            "soon",
            "2026-12-03T10:15:30.Z",
        ] {
            assert!(parse_rfc3339(s).is_err(), "{s}");
        }
    }
}
