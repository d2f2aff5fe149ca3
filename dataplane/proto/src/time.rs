//! Timestamps: Unix nanoseconds in, RFC 3339 text out, and the reverse.
//!
//! Written here rather than pulled from a date crate because LogCluster needs exactly two
//! conversions on the hot path (civil date <-> days since epoch) and nothing else.

use std::time::{SystemTime, UNIX_EPOCH};

pub const NANOS_PER_SEC: i64 = 1_000_000_000;

/// Now, as Unix nanoseconds.
pub fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Days since 1970-01-01 for a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = month as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date (year, month, day) of a day number since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Formats Unix nanoseconds as RFC 3339 UTC with as many fraction digits as needed (0, 3, 6
/// or 9): `2024-05-01T14:00:00.123Z`.
pub fn format_rfc3339(nanos: i64) -> String {
    let secs = nanos.div_euclid(NANOS_PER_SEC);
    let frac = nanos.rem_euclid(NANOS_PER_SEC);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, mo, d) = civil_from_days(days);
    let (h, mi, s) = (sod / 3600, (sod % 3600) / 60, sod % 60);
    let mut out = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}");
    if frac != 0 {
        if frac % 1_000_000 == 0 {
            out.push_str(&format!(".{:03}", frac / 1_000_000));
        } else if frac % 1_000 == 0 {
            out.push_str(&format!(".{:06}", frac / 1_000));
        } else {
            out.push_str(&format!(".{frac:09}"));
        }
    }
    out.push('Z');
    out
}

/// Parses RFC 3339 / ISO 8601 date-times: `2024-05-01T14:00:00Z`, `2024-05-01 14:00:00.5+02:00`,
/// `2024-05-01T14:00:00` (taken as UTC). Returns Unix nanoseconds.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let b = text.trim().as_bytes();
    if b.len() < 19 {
        return None;
    }
    // The fixed-width decimal at `range` (2 or 4 digits, so it always fits).
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        b.get(range)?.iter().try_fold(0i64, |value, &digit| {
            digit
                .is_ascii_digit()
                .then(|| value * 10 + i64::from(digit - b'0'))
        })
    };
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let year = num(0..4)?;
    let month = num(5..7)? as u32;
    let day = num(8..10)? as u32;
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    if second > 60 {
        return None;
    }
    // A day the month does not have (`2024-02-30`) is a mistake, not the next month's first.
    if day > days_in_month(year, month) {
        return None;
    }
    let mut pos = 19;
    let mut frac_nanos = 0i64;
    if pos < b.len() && (b[pos] == b'.' || b[pos] == b',') {
        pos += 1;
        let start = pos;
        while pos < b.len() && b[pos].is_ascii_digit() {
            if pos - start < 9 {
                frac_nanos = frac_nanos * 10 + (b[pos] - b'0') as i64;
            }
            pos += 1;
        }
        let digits = (pos - start).min(9);
        if digits == 0 {
            return None;
        }
        frac_nanos *= 10i64.pow(9 - digits as u32);
    }
    let offset_secs = match b.get(pos) {
        None => 0,
        Some(b'Z' | b'z') if pos + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) => {
            let rest = &text.trim()[pos + 1..];
            let (oh, om) = match rest.len() {
                5 if rest.as_bytes()[2] == b':' => (num(pos + 1..pos + 3)?, num(pos + 4..pos + 6)?),
                4 => (num(pos + 1..pos + 3)?, num(pos + 3..pos + 5)?),
                2 => (num(pos + 1..pos + 3)?, 0),
                _ => return None,
            };
            let total = oh * 3600 + om * 60;
            if *sign == b'+' { total } else { -total }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second.min(59) - offset_secs;
    secs.checked_mul(NANOS_PER_SEC)?.checked_add(frac_nanos)
}

/// Interprets a bare number as a Unix time by magnitude: seconds, milliseconds, microseconds or
/// nanoseconds (the way most shippers send epoch numbers). Fractions of seconds are kept.
///
/// A double holds about 16 significant digits: today's time in seconds or milliseconds has
/// room for microseconds only (`1714521600.123` is `1714521600.12299990654…`), so the fraction
/// of those two is rounded to the microsecond, and `…600.123` is `.123000000`. The whole part
/// and the fraction are scaled apart, so the whole part stays exact.
pub fn nanos_from_epoch_number(value: f64) -> Option<i64> {
    if !value.is_finite() || value < 0.0 {
        return None;
    }
    if value.fract() == 0.0 && value < 9.0e15 {
        return nanos_from_epoch_int(value as i64);
    }
    if value >= 1e17 {
        return (value <= i64::MAX as f64).then_some(value as i64);
    }
    let whole = value.trunc();
    let scale = epoch_unit_nanos(whole as i64);
    let fraction = (value - whole) * scale as f64;
    let fraction = if scale >= 1_000_000 {
        (fraction / 1e3).round() as i64 * 1_000
    } else {
        fraction.round() as i64
    };
    (whole as i64).checked_mul(scale)?.checked_add(fraction)
}

/// The days of `month` (1-12) in `year`.
pub fn days_in_month(year: i64, month: u32) -> u32 {
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// A decimal epoch number written out (`1714521600.123456789`), exactly: the whole part and
/// each digit of the fraction as written, by the magnitude rule of [`nanos_from_epoch_number`]
/// (digits past the nanosecond are dropped). `None` when `text` is not digits with at most one
/// `.`.
pub fn nanos_from_epoch_decimal(text: &str) -> Option<i64> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let whole: i64 = whole.parse().ok()?;
    let scale = epoch_unit_nanos(whole);
    let mut fraction_nanos = 0i64;
    let mut unit = scale;
    for digit in fraction.bytes() {
        unit /= 10;
        if unit == 0 {
            break;
        }
        fraction_nanos += i64::from(digit - b'0') * unit;
    }
    whole.checked_mul(scale)?.checked_add(fraction_nanos)
}

/// Integer variant of [`nanos_from_epoch_number`], exact for every magnitude.
pub fn nanos_from_epoch_int(value: i64) -> Option<i64> {
    if value < 0 {
        return None;
    }
    value.checked_mul(epoch_unit_nanos(value))
}

/// Nanoseconds in the unit of an epoch number, told by its whole part's magnitude: seconds
/// below 10^11, milliseconds below 10^14, microseconds below 10^17, else nanoseconds.
fn epoch_unit_nanos(whole: i64) -> i64 {
    if whole < 100_000_000_000 {
        1_000_000_000
    } else if whole < 100_000_000_000_000 {
        1_000_000
    } else if whole < 100_000_000_000_000_000 {
        1_000
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_common_shapes() {
        let base = 1_714_572_000i64 * NANOS_PER_SEC; // 2024-05-01T14:00:00Z
        assert_eq!(parse_rfc3339("2024-05-01T14:00:00Z"), Some(base));
        assert_eq!(
            parse_rfc3339("2024-05-01T14:00:00.123Z"),
            Some(base + 123_000_000)
        );
        assert_eq!(parse_rfc3339("2024-05-01T16:00:00+02:00"), Some(base));
        assert_eq!(parse_rfc3339("2024-05-01 14:00:00"), Some(base));
        assert_eq!(
            parse_rfc3339("2024-05-01T14:00:00.000000001Z"),
            Some(base + 1)
        );
        assert_eq!(parse_rfc3339("2024-13-01T14:00:00Z"), None);
        for impossible in [
            "2024-02-30T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2100-02-29T00:00:00Z",
            "2024-04-31T00:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(impossible), None, "{impossible}");
        }
        assert!(parse_rfc3339("2024-02-29T00:00:00Z").is_some());
        assert!(parse_rfc3339("2000-02-29T00:00:00Z").is_some());
        assert!(parse_rfc3339("2024-12-31T23:59:59Z").is_some());
        assert!(
            parse_rfc3339("2016-12-31T23:59:60Z").is_some(),
            "a leap second"
        );
        assert_eq!(parse_rfc3339("not a date at all!!"), None);
    }

    #[test]
    fn epoch_numbers_by_magnitude() {
        assert_eq!(nanos_from_epoch_number(1.5), Some(1_500_000_000));
        // Fractions as written, not as the nearest double has them.
        assert_eq!(
            nanos_from_epoch_number(1_714_521_600.123),
            Some(1_714_521_600_123_000_000)
        );
        assert_eq!(
            nanos_from_epoch_number(1_714_521_600.25),
            Some(1_714_521_600_250_000_000)
        );
        assert_eq!(
            nanos_from_epoch_number(1_714_521_600.999_999_9),
            Some(1_714_521_601_000_000_000)
        );
        assert_eq!(
            nanos_from_epoch_number(1_714_521_600_123.456),
            Some(1_714_521_600_123_456_000)
        );
        assert_eq!(
            nanos_from_epoch_number(1_714_521_600_123_456.5),
            Some(1_714_521_600_123_456_500)
        );
        assert_eq!(nanos_from_epoch_number(9.3e18), None);
        // Written out, every digit down to the nanosecond counts.
        assert_eq!(
            nanos_from_epoch_decimal("1714521600.123456789"),
            Some(1_714_521_600_123_456_789)
        );
        assert_eq!(
            nanos_from_epoch_decimal("1714521600123.4567899"),
            Some(1_714_521_600_123_456_789)
        );
        assert_eq!(
            nanos_from_epoch_decimal("1714521600"),
            Some(1_714_521_600_000_000_000)
        );
        assert_eq!(
            nanos_from_epoch_decimal("1714521600."),
            Some(1_714_521_600_000_000_000)
        );
        for refused in [
            "",
            ".5",
            "1e9",
            "-1",
            "1.2.3",
            "12a",
            "99999999999999999999",
        ] {
            assert_eq!(nanos_from_epoch_decimal(refused), None, "{refused}");
        }
        assert_eq!(
            nanos_from_epoch_number(1_714_572_000_123.0),
            Some(1_714_572_000_123_000_000)
        );
    }

    proptest! {
        #[test]
        fn format_then_parse_is_identity(nanos in 0i64..4_102_444_800_000_000_000) {
            prop_assert_eq!(parse_rfc3339(&format_rfc3339(nanos)), Some(nanos));
        }

        /// The date and time fields are read only where every byte is a digit: a sign, a
        /// space or another character in them refuses the text, as `str::parse` of an
        /// all-digit check did.
        #[test]
        fn fields_refuse_anything_but_digits(
            digits in proptest::collection::vec(proptest::char::range('0', '9'), 14),
            other in proptest::option::of((0usize..14, proptest::sample::select(vec!['+', ' ', 'a', '٣', ':', '-']))),
        ) {
            let mut chars = digits;
            if let Some((at, c)) = other {
                chars[at] = c;
            }
            let part = |r: std::ops::Range<usize>| chars[r].iter().collect::<String>();
            let text = format!(
                "{}-{}-{}T{}:{}:{}Z",
                part(0..4),
                part(4..6),
                part(6..8),
                part(8..10),
                part(10..12),
                part(12..14),
            );
            if !chars.iter().all(char::is_ascii_digit) {
                prop_assert_eq!(parse_rfc3339(&text), None, "{}", text);
            } else {
                let field = |r: std::ops::Range<usize>| -> i64 { part(r).parse().expect("digits") };
                let (month, day) = (field(4..6), field(6..8));
                let (hour, minute, second) = (field(8..10), field(10..12), field(12..14));
                let valid = (1..=12).contains(&month)
                    && (1..=31).contains(&day)
                    && day <= i64::from(days_in_month(field(0..4), month as u32))
                    && hour <= 23
                    && minute <= 59
                    && second <= 60;
                // Years past 2262 are out of an i64 of nanoseconds.
                let expected = valid
                    .then(|| {
                        (days_from_civil(field(0..4), month as u32, day as u32) * 86_400
                            + hour * 3600
                            + minute * 60
                            + second.min(59))
                        .checked_mul(NANOS_PER_SEC)
                    })
                    .flatten();
                prop_assert_eq!(parse_rfc3339(&text), expected, "{}", text);
            }
        }
    }
}
