//! Reading `POLKU_*` variables: one small parser per kind of value, each
//! naming the variable and what it expects when a value will not do. A bad
//! value is never skipped: it is an error at start-up.

use super::{ConfigError, Secret};
use std::path::PathBuf;
use std::time::Duration;

/// The longest duration a setting takes: a year. Longer ones are refused at
/// start-up (every timeout is added to the clock somewhere; a hundred years
/// would overflow it at run time).
const MAX_DURATION: Duration = Duration::from_secs(366 * 86_400);

/// `250ms`, `5s`, `2m`, `1h`, or a plain number of seconds, up to a year.
pub(crate) fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let d = match unit.trim() {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        _ => return None,
    };
    (d <= MAX_DURATION).then_some(d)
}

/// The environment, as a lookup of a variable's value.
pub(crate) struct Env<'a> {
    get: &'a dyn Fn(&str) -> Option<String>,
}

impl<'a> Env<'a> {
    pub(crate) fn new(get: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Env { get }
    }

    /// The value as set, if it is.
    pub(crate) fn raw(&self, var: &str) -> Option<String> {
        (self.get)(var)
    }

    /// An error for `var`'s value.
    pub(crate) fn bad(var: &'static str, value: &str, expected: &'static str) -> ConfigError {
        ConfigError {
            var,
            value: value.to_owned(),
            expected,
        }
    }

    /// The value turned into a `T` by `parse` (given it trimmed), else an
    /// error that says what was expected.
    pub(crate) fn parse<T>(
        &self,
        var: &'static str,
        expected: &'static str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<Option<T>, ConfigError> {
        match self.raw(var) {
            None => Ok(None),
            Some(v) => parse(v.trim())
                .map(Some)
                .ok_or_else(|| Self::bad(var, &v, expected)),
        }
    }

    /// A whole number from `min` to `max`.
    /// A number of calls an emitter may have under way at once (1 to 1024).
    pub(crate) fn calls_in_flight(&self, var: &'static str) -> Result<Option<usize>, ConfigError> {
        Ok(self
            .number(var, 1, 1024, "a number of calls from 1 to 1024")?
            .map(|n| n as usize))
    }

    pub(crate) fn number(
        &self,
        var: &'static str,
        min: u64,
        max: u64,
        expected: &'static str,
    ) -> Result<Option<u64>, ConfigError> {
        self.parse(var, expected, |v| {
            v.parse::<u64>().ok().filter(|n| (min..=max).contains(n))
        })
    }

    /// A duration (`5s`, `500ms`, `1m`), above zero if `nonzero`.
    pub(crate) fn duration(
        &self,
        var: &'static str,
        nonzero: bool,
    ) -> Result<Option<Duration>, ConfigError> {
        let expected = if nonzero {
            "a duration above zero and at most a year, such as 5s, 500ms or 1m"
        } else {
            "a duration of at most a year, such as 5s, 500ms or 1m"
        };
        self.parse(var, expected, |v| {
            parse_duration(v).filter(|d| !(nonzero && d.is_zero()))
        })
    }

    /// A duration where `0` turns the thing off (`None`).
    pub(crate) fn duration_or_off(
        &self,
        var: &'static str,
    ) -> Result<Option<Option<Duration>>, ConfigError> {
        Ok(self
            .duration(var, false)?
            .map(|d| (!d.is_zero()).then_some(d)))
    }

    /// On or off (`on`/`off`, `true`/`false`, `yes`/`no`, `1`/`0`).
    pub(crate) fn switch(
        &self,
        var: &'static str,
        expected: &'static str,
    ) -> Result<Option<bool>, ConfigError> {
        self.parse(var, expected, |v| match v.to_ascii_lowercase().as_str() {
            "1" | "true" | "on" | "yes" => Some(true),
            "0" | "false" | "off" | "no" => Some(false),
            _ => None,
        })
    }

    /// One of `choices`, by name (any case).
    pub(crate) fn choice<T: Copy>(
        &self,
        var: &'static str,
        choices: &[(&str, T)],
        expected: &'static str,
    ) -> Result<Option<T>, ConfigError> {
        self.parse(var, expected, |v| {
            choices
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(v))
                .map(|(_, t)| *t)
        })
    }

    /// A comma-separated list, items trimmed, empty ones left out. `Some`
    /// of an empty list when the variable is set to nothing usable.
    pub(crate) fn list(&self, var: &'static str) -> Option<(String, Vec<String>)> {
        self.raw(var).map(|v| {
            let items = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            (v, items)
        })
    }

    /// A secret: printable, without spaces. An error never echoes it.
    pub(crate) fn secret(
        &self,
        var: &'static str,
        expected: &'static str,
    ) -> Result<Option<Secret>, ConfigError> {
        match self.raw(var) {
            None => Ok(None),
            Some(v) => {
                let t = v.trim();
                if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) {
                    Err(Self::hidden(var, expected))
                } else {
                    Ok(Some(Secret::new(t)))
                }
            }
        }
    }

    /// An error for a secret's value, which it does not show.
    pub(crate) fn hidden(var: &'static str, expected: &'static str) -> ConfigError {
        ConfigError {
            var,
            value: "<hidden>".to_owned(),
            expected,
        }
    }

    /// The path of a directory (created if it is not there).
    pub(crate) fn path(&self, var: &'static str) -> Result<Option<PathBuf>, ConfigError> {
        self.parse(var, "the path of a directory", |v| {
            (!v.is_empty()).then(|| PathBuf::from(v))
        })
    }

    /// The path of a PEM file.
    pub(crate) fn file(&self, var: &'static str) -> Result<Option<PathBuf>, ConfigError> {
        self.parse(var, "the path of a PEM file", |v| {
            (!v.is_empty()).then(|| PathBuf::from(v))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(value: &'static str) -> impl Fn(&str) -> Option<String> {
        move |_| Some(value.to_owned())
    }

    #[test]
    fn durations_take_units_and_stop_at_a_year() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration(" 5 "), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("9000h"), None, "over a year");
        assert_eq!(parse_duration("5124095576030431h"), None, "no overflow");
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_duration("5 parsecs"), None);
    }

    #[test]
    fn each_reader_says_what_it_expects() {
        let get = env("nope");
        let e = Env::new(&get);
        let err = e
            .number("POLKU_X", 1, 5, "a number from 1 to 5")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "POLKU_X=\"nope\" is not valid: expected a number from 1 to 5"
        );
        assert!(e.duration("POLKU_X", true).is_err());
        assert!(e.switch("POLKU_X", "on or off").is_err());
        assert!(e.choice("POLKU_X", &[("a", 1)], "a").is_err());
        let get = env("0");
        let e = Env::new(&get);
        assert_eq!(e.duration_or_off("POLKU_X").unwrap(), Some(None));
        assert!(
            e.duration("POLKU_X", true).is_err(),
            "zero where it must not be"
        );
        assert_eq!(e.switch("POLKU_X", "").unwrap(), Some(false));
    }

    #[test]
    fn a_bad_secret_is_refused_without_being_shown() {
        let get = env("has space");
        let err = Env::new(&get).secret("POLKU_T", "a token").unwrap_err();
        assert!(!err.to_string().contains("space"), "{err}");
        let get = env(" s3cret ");
        let s = Env::new(&get)
            .secret("POLKU_T", "a token")
            .unwrap()
            .unwrap();
        assert_eq!(s.expose(), "s3cret");
    }

    #[test]
    fn lists_drop_empty_items() {
        let get = env(" a, ,b ,");
        assert_eq!(Env::new(&get).list("POLKU_L").unwrap().1, ["a", "b"]);
    }
}
