//! RFC 3339 text for [`Timestamp`]s, both ways, in UTC: what pages, key
//! expiries and (later) the command line show and read. Pure arithmetic on
//! the proleptic Gregorian calendar; no clock, no time-zone database.

use super::Timestamp;

/// The earliest and latest instants RFC 3339 can write (years 0000..=9999).
const MILLIS_MIN: i64 = -62_167_219_200_000; // 0000-01-01T00:00:00.000Z
const MILLIS_MAX: i64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`, clamped to years 0000..=9999.
pub fn rfc3339(at: Timestamp) -> String {
    let millis = at.unix_millis().clamp(MILLIS_MIN, MILLIS_MAX);
    let days = millis.div_euclid(86_400_000);
    let of_day = millis.rem_euclid(86_400_000);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3_600_000,
        of_day / 60_000 % 60,
        of_day / 1000 % 60,
        of_day % 1000
    )
}

/// As [`rfc3339`], at `offset_seconds` east of UTC: the local time a person
/// reads, with the offset that makes it exact (`Z` at offset 0).
pub fn rfc3339_at_offset(at: Timestamp, offset_seconds: i64) -> String {
    if offset_seconds == 0 {
        return rfc3339(at);
    }
    let shifted = at
        .unix_millis()
        .saturating_add(offset_seconds.saturating_mul(1000));
    let text = rfc3339(Timestamp::from_unix_millis(shifted));
    let sign = if offset_seconds < 0 { '-' } else { '+' };
    let offset = offset_seconds.unsigned_abs();
    format!(
        "{}{sign}{:02}:{:02}",
        text.trim_end_matches('Z'),
        offset / 3600,
        offset / 60 % 60
    )
}

/// Why a text is not an RFC 3339 time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an RFC 3339 time such as 2027-01-31T00:00:00Z")]
pub struct TimeError(String);

/// Reads `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`; a fraction beyond
/// milliseconds is cut, not rounded.
pub fn parse_rfc3339(text: &str) -> Result<Timestamp, TimeError> {
    let bad = || TimeError(text.chars().take(40).collect());
    let bytes = text.as_bytes();
    if bytes.len() < 20 || !text.is_ascii() {
        return Err(bad());
    }
    let number = |from: usize, to: usize| -> Result<i64, TimeError> {
        let digits = &text[from..to];
        if digits.bytes().all(|b| b.is_ascii_digit()) {
            digits.parse().map_err(|_| bad())
        } else {
            Err(bad())
        }
    };
    let separators = [(4, b'-'), (7, b'-'), (13, b':'), (16, b':')];
    if separators.iter().any(|&(at, byte)| bytes[at] != byte)
        || !matches!(bytes[10], b'T' | b't' | b' ')
    {
        return Err(bad());
    }
    let (year, month, day) = (number(0, 4)?, number(5, 7)?, number(8, 10)?);
    let (hour, minute, second) = (number(11, 13)?, number(14, 16)?, number(17, 19)?);
    let mut rest = 19;
    let mut millis = 0;
    if bytes[rest] == b'.' {
        let digits = bytes[rest + 1..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if digits == 0 {
            return Err(bad());
        }
        let kept = digits.min(3);
        millis = number(rest + 1, rest + 1 + kept)? * 10_i64.pow(3 - kept as u32);
        rest += 1 + digits;
    }
    let offset_minutes = match &text[rest..] {
        "Z" | "z" => 0,
        zone if zone.len() == 6 && zone.as_bytes()[3] == b':' => {
            let sign = match zone.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return Err(bad()),
            };
            let (hours, minutes) = (number(rest + 1, rest + 3)?, number(rest + 4, rest + 6)?);
            if hours > 23 || minutes > 59 {
                return Err(bad());
            }
            sign * (hours * 60 + minutes)
        }
        _ => return Err(bad()),
    };
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&month)
        || day < 1
        || day > month_days[(month - 1) as usize]
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(bad());
    }
    // A leap second is read as the last millisecond of its minute.
    let (second, millis) = if second == 60 {
        (59, 999)
    } else {
        (second, millis)
    };
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
        - offset_minutes * 60;
    Ok(Timestamp::from_unix_millis(seconds * 1000 + millis))
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`, exact over the clamped range above).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153; // March = 0
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The day count since 1970-01-01 of a proleptic Gregorian date (the
/// inverse of [`civil_from_days`], Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_index = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_time_carries_its_offset_and_reads_back_as_the_same_instant() {
        let at = Timestamp::from_unix_millis(1_795_955_100_324);
        assert_eq!(rfc3339(at), "2026-11-29T12:25:00.324Z");
        assert_eq!(rfc3339_at_offset(at, 0), "2026-11-29T12:25:00.324Z");
        let east = rfc3339_at_offset(at, 5 * 3600 + 1800);
        assert_eq!(east, "2026-11-29T17:55:00.324+05:30");
        let west = rfc3339_at_offset(at, -8 * 3600);
        assert_eq!(west, "2026-11-29T04:25:00.324-08:00");
        for text in [east, west] {
            assert_eq!(parse_rfc3339(&text), Ok(at), "{text}");
        }
    }

    #[test]
    fn rfc3339_formats_utc_milliseconds() {
        for (millis, expected) in [
            (0, "1970-01-01T00:00:00.000Z"),
            (1_700_000_000_123, "2023-11-14T22:13:20.123Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (4_107_542_399_999, "2100-02-28T23:59:59.999Z"),
            (-1, "1969-12-31T23:59:59.999Z"),
            (i64::MAX, "9999-12-31T23:59:59.999Z"),
            (i64::MIN, "0000-01-01T00:00:00.000Z"),
        ] {
            assert_eq!(
                rfc3339(Timestamp::from_unix_millis(millis)),
                expected,
                "{millis}"
            );
        }
    }

    #[test]
    fn what_is_written_reads_back() {
        for millis in [
            0,
            1_700_000_000_123,
            951_782_400_000,
            -1,
            MILLIS_MIN,
            MILLIS_MAX,
        ] {
            let at = Timestamp::from_unix_millis(millis);
            assert_eq!(parse_rfc3339(&rfc3339(at)), Ok(at), "{millis}");
        }
    }

    #[test]
    fn offsets_fractions_and_bad_dates() {
        let utc = parse_rfc3339("2027-01-31T12:00:00Z").unwrap();
        assert_eq!(parse_rfc3339("2027-01-31T14:30:00+02:30"), Ok(utc));
        assert_eq!(parse_rfc3339("2027-01-31T07:00:00-05:00"), Ok(utc));
        assert_eq!(
            parse_rfc3339("2027-01-31T12:00:00.123456Z"),
            Ok(utc.plus_millis(123))
        );
        assert_eq!(
            parse_rfc3339("2027-01-31T12:00:00.5Z"),
            Ok(utc.plus_millis(500))
        );
        for bad in [
            "",
            "2027-01-31",
            "2027-02-29T00:00:00Z",
            "2027-13-01T00:00:00Z",
            "2027-01-31T24:00:00Z",
            "2027-01-31T12:00:00",
            "2027-01-31T12:00:00.Z",
            "2027-01-31T12:00:00+2:00",
            "2027-01-31T12:00:00+02:00 ",
            "2027-01-3lT12:00:00Z",
            "＋027-01-31T12:00:00Z",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad:?}");
        }
        assert!(parse_rfc3339("2028-02-29T00:00:00Z").is_ok());
    }
}
