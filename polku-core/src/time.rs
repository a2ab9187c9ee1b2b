//! Calendar time in UTC from Unix time, without a date library: for
//! timestamps people read (the stdout emitter) and time partitions (S3
//! keys).
//!
//! ```
//! use polku_core::time::UtcTime;
//!
//! let t = UtcTime::from_unix_ns(1_796_657_400_123_000_000);
//! assert_eq!((t.year, t.month, t.day, t.hour, t.minute), (2026, 12, 7, 15, 30));
//! assert_eq!(t.millis, 123);
//! ```

/// A moment in UTC, to the millisecond (proleptic Gregorian calendar).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtcTime {
    /// The year.
    pub year: i64,
    /// The month, 1 to 12.
    pub month: u32,
    /// The day of the month, 1 to 31.
    pub day: u32,
    /// The hour, 0 to 23.
    pub hour: u32,
    /// The minute, 0 to 59.
    pub minute: u32,
    /// The second, 0 to 59.
    pub second: u32,
    /// The millisecond, 0 to 999.
    pub millis: u32,
}

impl UtcTime {
    /// The UTC calendar time of a Unix time in nanoseconds.
    pub fn from_unix_ns(unix_ns: i64) -> UtcTime {
        let secs = unix_ns.div_euclid(1_000_000_000);
        let millis = (unix_ns.rem_euclid(1_000_000_000) / 1_000_000) as u32;
        let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
        let rem = secs.rem_euclid(86_400) as u32;
        UtcTime {
            year,
            month,
            day,
            hour: rem / 3600,
            minute: rem / 60 % 60,
            second: rem % 60,
            millis,
        }
    }
}

/// The calendar date of a day since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_those_of_the_calendar() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_794), (2026, 12, 7));
        let t = UtcTime::from_unix_ns(-1);
        assert_eq!(
            (t.year, t.month, t.day, t.hour, t.minute, t.second, t.millis),
            (1969, 12, 31, 23, 59, 59, 999)
        );
    }
}
