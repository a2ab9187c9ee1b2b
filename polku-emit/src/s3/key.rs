//! Object keys: a prefix template with time partitions (`{yyyy}`, `{mm}`,
//! `{dd}`, `{hh}`, from each event's time, UTC) and `{source}`, then a name
//! that no other object of any replica has (the time and a UUIDv7).

use super::S3EmitterError;
use polku_core::time::UtcTime;

/// One piece of a prefix template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Year,
    Month,
    Day,
    Hour,
    Source,
}

/// A parsed prefix template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Prefix {
    pieces: Vec<Piece>,
    /// Whether the prefix depends on the event at all.
    per_event: bool,
}

/// The longest a source's name is in a key.
const MAX_SOURCE: usize = 128;

impl Prefix {
    /// Parses `template`; only the known placeholders are taken.
    pub(super) fn parse(template: &str) -> Result<Prefix, S3EmitterError> {
        use crate::template::Part;
        let bad = || S3EmitterError::Prefix(template.to_owned());
        let pieces = crate::template::parts(template)
            .ok_or_else(bad)?
            .into_iter()
            .map(|p| match p {
                Part::Text(t) => Ok(Piece::Text(t.to_owned())),
                Part::Name("yyyy") => Ok(Piece::Year),
                Part::Name("mm") => Ok(Piece::Month),
                Part::Name("dd") => Ok(Piece::Day),
                Part::Name("hh") => Ok(Piece::Hour),
                Part::Name("source") => Ok(Piece::Source),
                Part::Name(_) => Err(bad()),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let per_event = pieces.iter().any(|p| !matches!(p, Piece::Text(_)));
        Ok(Prefix { pieces, per_event })
    }

    /// Whether two events may get different prefixes.
    pub(super) fn per_event(&self) -> bool {
        self.per_event
    }

    /// The prefix for an event of `source` at `hour` (hours since the Unix
    /// epoch), written into `out`.
    pub(super) fn render(&self, hour: i64, source: &str, out: &mut String) {
        use std::fmt::Write as _;
        out.clear();
        let t = UtcTime::from_unix_ns(hour.saturating_mul(3_600_000_000_000));
        for p in &self.pieces {
            match p {
                Piece::Text(text) => out.push_str(text),
                Piece::Year => {
                    let _ = write!(out, "{:04}", t.year);
                }
                Piece::Month => {
                    let _ = write!(out, "{:02}", t.month);
                }
                Piece::Day => {
                    let _ = write!(out, "{:02}", t.day);
                }
                Piece::Hour => {
                    let _ = write!(out, "{:02}", t.hour);
                }
                Piece::Source => push_source(out, source),
            }
        }
    }
}

/// The hour (since the Unix epoch, UTC) of a time in Unix nanoseconds.
pub(super) fn hour_of(unix_ns: i64) -> i64 {
    unix_ns.div_euclid(3_600_000_000_000)
}

/// Appends a source's name as one safe key segment: characters other than
/// letters, digits, `-`, `_`, `.` and `=` become `_`, a name of dots only
/// becomes underscores, an empty one `_`, and a long one is cut.
fn push_source(out: &mut String, source: &str) {
    let start = out.len();
    for c in source.chars().take(MAX_SOURCE) {
        out.push(
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '=') {
                c
            } else {
                '_'
            },
        );
    }
    if out.len() == start || out[start..].bytes().all(|b| b == b'.') {
        let n = (out.len() - start).max(1);
        out.truncate(start);
        out.extend(std::iter::repeat_n('_', n));
    }
}

/// An object's name after its prefix: its opening time (UTC, to the
/// second), a UUIDv7 and the extension.
pub(super) fn object_name(unix_ns: i64, extension: &str) -> String {
    let t = UtcTime::from_unix_ns(unix_ns);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z-{}{extension}",
        t.year,
        t.month,
        t.day,
        t.hour,
        t.minute,
        t.second,
        uuid::Uuid::now_v7()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_follow_the_template_and_keep_keys_safe() {
        let p = Prefix::parse("events/{yyyy}/{mm}/{dd}/{hh}/{source}/").unwrap();
        assert!(p.per_event());
        let mut out = String::new();
        // 2026-12-07 15:30 UTC.
        let hour = hour_of(1_796_657_400_000_000_000);
        p.render(hour, "web/eu 1", &mut out);
        assert_eq!(out, "events/2026/12/07/15/web_eu_1/");
        p.render(hour, "..", &mut out);
        assert_eq!(out, "events/2026/12/07/15/__/");
        p.render(hour, "", &mut out);
        assert_eq!(out, "events/2026/12/07/15/_/");
        let fixed = Prefix::parse("raw/").unwrap();
        assert!(!fixed.per_event());
        fixed.render(hour, "x", &mut out);
        assert_eq!(out, "raw/");
        for bad in ["{yy}/", "a{source", "a}b", "{region}"] {
            let err = Prefix::parse(bad).unwrap_err().to_string();
            assert!(err.contains("{yyyy}"), "{bad}: {err}");
        }
    }

    #[test]
    fn object_names_carry_the_time_and_are_unique() {
        let a = object_name(1_796_657_400_000_000_000, ".ndjson.gz");
        let b = object_name(1_796_657_400_000_000_000, ".ndjson.gz");
        assert!(a.starts_with("20261207T153000Z-"), "{a}");
        assert!(a.ends_with(".ndjson.gz"), "{a}");
        assert_ne!(a, b);
    }
}
