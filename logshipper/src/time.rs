//! RFC 3339 timestamps to and from Unix nanoseconds, by hand: the CRI parser
//! reads one per line, so this sits on the hottest path.

use std::cell::Cell;

/// Parses `2016-10-06T00:17:09.669794202Z` (any fraction up to nanoseconds,
/// `Z` or a `±HH:MM` offset) into nanoseconds since the Unix epoch.
pub fn parse_rfc3339(s: &[u8]) -> Option<i64> {
    if s.len() < 20 {
        return None;
    }
    let num = |at: usize, len: usize| -> Option<i64> {
        s.get(at..at + len)?.iter().try_fold(0i64, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0'))
        })
    };
    let sep = |at: usize, ok: &[u8]| ok.contains(&s[at]);
    // Lines come in bursts within one second: the date and time of the
    // last line parsed are kept, and only the fraction and zone are read.
    let prefix: [u8; 19] = s[..19].try_into().ok()?;
    let (last_prefix, last_secs) = PARSED.get();
    let local_secs = if last_secs != i64::MIN && last_prefix == prefix {
        last_secs
    } else {
        if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
            return None;
        }
        let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
        let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
        if !(1..=12).contains(&month)
            || day < 1
            || day > days_in_month(year, month)
            || hour > 23
            || minute > 59
            || second > 60
        {
            return None;
        }
        let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
        PARSED.set((prefix, secs));
        secs
    };
    let mut at = 19;
    let mut nanos = 0i64;
    if s[at] == b'.' {
        at += 1;
        let first = at;
        while let Some(&c) = s.get(at).filter(|c| c.is_ascii_digit()) {
            // Digits past nanoseconds are below what the epoch count can carry.
            if at - first < 9 {
                nanos = nanos * 10 + i64::from(c - b'0');
            }
            at += 1;
        }
        match at - first {
            0 => return None,
            digits @ 1..9 => nanos *= 10i64.pow(9 - digits as u32),
            _ => {}
        }
    }
    let offset_secs = match s.get(at)? {
        b'Z' | b'z' => {
            at += 1;
            0
        }
        &sign @ (b'+' | b'-') => {
            if !sep(at + 3, b":") {
                return None;
            }
            let (h, m) = (num(at + 1, 2)?, num(at + 4, 2)?);
            if h > 23 || m > 59 {
                return None;
            }
            at += 6;
            let secs = h * 3600 + m * 60;
            if sign == b'+' { secs } else { -secs }
        }
        _ => return None,
    };
    if at != s.len() {
        return None;
    }
    let secs = local_secs - offset_secs;
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

thread_local! {
    /// The last date and time parsed on this thread, and its seconds.
    static PARSED: Cell<([u8; 19], i64)> = const { Cell::new(([0; 19], i64::MIN)) };
    /// The last second formatted on this thread, and its text.
    static FORMATTED: Cell<(i64, [u8; 19])> = const { Cell::new((i64::MIN, [0; 19])) };
}

/// Appends `nanos` as `YYYY-MM-DDTHH:MM:SS.fffZ` with `fraction_digits`
/// (1 to 9) digits of the second, in UTC.
pub fn format_rfc3339(nanos: i64, fraction_digits: u32, out: &mut Vec<u8>) {
    let secs = nanos.div_euclid(1_000_000_000);
    let sub = nanos.rem_euclid(1_000_000_000);
    let mut buf = [0u8; 30];
    let put = |buf: &mut [u8; 30], at: usize, value: i64, width: usize| {
        let mut v = value;
        for i in (0..width).rev() {
            buf[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    // Events come in bursts within one second: its text is kept.
    let (last_secs, last_text) = FORMATTED.get();
    if last_secs == secs {
        buf[..19].copy_from_slice(&last_text);
    } else {
        let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
        let tod = secs.rem_euclid(86_400);
        put(&mut buf, 0, year.clamp(0, 9999), 4);
        put(&mut buf, 5, month, 2);
        put(&mut buf, 8, day, 2);
        put(&mut buf, 11, tod / 3600, 2);
        put(&mut buf, 14, tod / 60 % 60, 2);
        put(&mut buf, 17, tod % 60, 2);
        buf[4] = b'-';
        buf[7] = b'-';
        buf[10] = b'T';
        buf[13] = b':';
        buf[16] = b':';
        let text: [u8; 19] = buf[..19].try_into().expect("19 bytes");
        FORMATTED.set((secs, text));
    }
    buf[19] = b'.';
    // All nine digits, two at a time, then as many as asked for: the
    // first digits of the fraction are the fraction truncated.
    let sub = sub as usize;
    buf[20] = b'0' + (sub / 100_000_000) as u8;
    for (i, pair) in [
        sub / 1_000_000 % 100,
        sub / 10_000 % 100,
        sub / 100 % 100,
        sub % 100,
    ]
    .into_iter()
    .enumerate()
    {
        buf[21 + 2 * i..23 + 2 * i].copy_from_slice(&PAIRS[2 * pair..2 * pair + 2]);
    }
    let digits = fraction_digits.clamp(1, 9) as usize;
    buf[20 + digits] = b'Z';
    if digits == 9 {
        // A copy of known length, the common case, is inlined.
        out.extend_from_slice(&buf);
    } else {
        out.extend_from_slice(&buf[..21 + digits]);
    }
}

/// "00" to "99", back to back.
const PAIRS: &[u8; 200] = b"\
0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

/// Nanoseconds since the epoch now, for lines that carry no timestamp.
pub fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

const fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

const fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
const fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

const fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + (month <= 2) as i64, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jiff_nanos(s: &str) -> i64 {
        let ts: jiff::Timestamp = s.parse().expect("jiff parses");
        i64::try_from(ts.as_nanosecond()).expect("fits")
    }

    #[test]
    fn parses_like_jiff() {
        for s in [
            "2016-10-06T00:17:09.669794202Z",
            "1970-01-01T00:00:00Z",
            "1969-12-31T23:59:59.5Z",
            "2000-02-29T12:00:00.1+02:00",
            "2024-12-31T23:59:59.999999999-05:30",
            "2099-03-01T00:00:00.000001Z",
        ] {
            assert_eq!(parse_rfc3339(s.as_bytes()), Some(jiff_nanos(s)), "{s}");
        }
    }

    #[test]
    fn rejects_malformed() {
        for s in [
            "",
            "2016-10-06 00:17:09",
            "2016-13-06T00:17:09Z",
            "2016-02-30T00:17:09Z",
            "2016-10-06T24:00:00Z",
            "2016-10-06T00:17:09.Z",
            "2016-10-06T00:17:09.1",
            "2016-10-06T00:17:09Zjunk",
            "2016-10-06T00:17:09+0200",
            "x016-10-06T00:17:09Z",
        ] {
            assert_eq!(parse_rfc3339(s.as_bytes()), None, "{s}");
        }
    }

    #[test]
    fn fractions_of_any_length() {
        let base = jiff_nanos("2016-10-06T00:17:09Z");
        let at = |s: &str| parse_rfc3339(s.as_bytes());
        assert_eq!(
            at("2016-10-06T00:17:09.1234567891234Z"),
            Some(base + 123_456_789)
        );
        assert_eq!(at("2016-10-06T00:17:09.000000001Z"), Some(base + 1));
        assert_eq!(at("2016-10-06T00:17:09.12Z"), Some(base + 120_000_000));
        let nanos = base + 120_045_006;
        for digits in 1..=9 {
            let mut out = Vec::new();
            format_rfc3339(nanos, digits, &mut out);
            let want = format!("2016-10-06T00:17:09.{}Z", &"120045006"[..digits as usize]);
            assert_eq!(String::from_utf8(out).expect("utf-8"), want);
        }
    }

    #[test]
    fn formats_and_round_trips() {
        let mut out = Vec::new();
        format_rfc3339(jiff_nanos("2016-10-06T00:17:09.669794202Z"), 9, &mut out);
        assert_eq!(out, b"2016-10-06T00:17:09.669794202Z");
        out.clear();
        format_rfc3339(jiff_nanos("2016-10-06T00:17:09.669794202Z"), 6, &mut out);
        assert_eq!(out, b"2016-10-06T00:17:09.669794Z");
        let mut n = -86_400_000_000_123i64;
        while n < 4_102_444_800_000_000_000 {
            out.clear();
            format_rfc3339(n, 9, &mut out);
            assert_eq!(
                parse_rfc3339(&out),
                Some(n),
                "{}",
                String::from_utf8_lossy(&out)
            );
            n += 7_777_777_777_777_777;
        }
    }

    #[test]
    fn the_per_second_caches_never_leak_between_values() {
        let at = |s: &str| parse_rfc3339(s.as_bytes());
        let base = at("2026-11-25T10:00:01Z").unwrap();
        assert_eq!(at("2026-11-25T10:00:01.5Z"), Some(base + 500_000_000));
        assert_eq!(
            at("2026-11-25T10:00:01+01:00"),
            Some(base - 3_600_000_000_000)
        );
        assert_eq!(at("2026-11-25T10:00:01.x"), None);
        assert_eq!(at("2026-11-25T10:00:02Z"), Some(base + 1_000_000_000));
        assert_eq!(at("2026-13-25T10:00:02Z"), None);
        let text = |n: i64| {
            let mut out = Vec::new();
            format_rfc3339(n, 9, &mut out);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(text(base + 7), "2026-11-25T10:00:01.000000007Z");
        assert_eq!(text(base + 8), "2026-11-25T10:00:01.000000008Z");
        assert_eq!(text(base + 1_000_000_000), "2026-11-25T10:00:02.000000000Z");
        assert_eq!(text(base + 9), "2026-11-25T10:00:01.000000009Z");
    }
}
