//! [`Str`]: the shared, immutable UTF-8 string that events are made of.

use smol_str::SmolStr;
use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

/// An immutable UTF-8 string that is cheap to make and to clone: up to 23
/// bytes it lives inline (no allocation at all), longer ones share one
/// reference-counted buffer. Event strings are mostly short (types, sources,
/// metadata keys and values), so decoding an event allocates for none of them.
/// It derefs to `&str`, compares with `&str` and `String`, and `"text".into()`
/// or `String::into()` makes one.
///
/// ```
/// use polku_core::Str;
///
/// let s: Str = "user.signup".into();
/// assert!(s.starts_with("user."));
/// assert_eq!(s, "user.signup");
/// assert_eq!(s.as_str(), "user.signup");
/// ```
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Str(SmolStr);

impl Str {
    /// The empty string.
    pub const fn new() -> Self {
        Str(SmolStr::new_inline(""))
    }

    /// A string of static text, without copying it.
    pub const fn from_static(s: &'static str) -> Self {
        Str(SmolStr::new_static(s))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A string of these bytes, if they are UTF-8.
    pub fn from_utf8(bytes: &[u8]) -> Result<Self, std::str::Utf8Error> {
        std::str::from_utf8(bytes).map(make)
    }

    /// Makes this string `s`, building it where it lies: the decoder's way
    /// to fill an event's fields without moving each string through
    /// temporaries.
    #[inline(always)]
    pub(crate) fn set(&mut self, s: &str) {
        if s.len() <= 23 {
            self.0 = SmolStr::new_inline(s);
        } else {
            self.0 = SmolStr::new(s);
        }
    }
}

/// Short text goes straight to the inline form (no checks for the special
/// whitespace-only form, no call through the general constructor).
#[inline]
fn make(s: &str) -> Str {
    if s.len() <= 23 {
        Str(SmolStr::new_inline(s))
    } else {
        Str(SmolStr::new(s))
    }
}

impl Deref for Str {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Str {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Str {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Str {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Str {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

impl From<&str> for Str {
    /// Copies the text (use [`Str::from_static`] for static text).
    fn from(s: &str) -> Self {
        make(s)
    }
}

impl From<String> for Str {
    fn from(s: String) -> Self {
        Str(SmolStr::from(s))
    }
}

impl From<&String> for Str {
    fn from(s: &String) -> Self {
        make(s)
    }
}

impl From<Str> for String {
    fn from(s: Str) -> Self {
        s.as_str().to_owned()
    }
}

impl PartialEq<str> for Str {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Str {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Str {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialEq<Str> for str {
    fn eq(&self, other: &Str) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<Str> for &str {
    fn eq(&self, other: &Str) -> bool {
        *self == other.as_str()
    }
}

impl PartialEq<Str> for String {
    fn eq(&self, other: &Str) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialOrd<str> for Str {
    fn partial_cmp(&self, other: &str) -> Option<std::cmp::Ordering> {
        self.as_str().partial_cmp(other)
    }
}

impl serde::Serialize for Str {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Str {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Str::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_compare_as_text() {
        assert_eq!(Str::from_utf8(b"world").unwrap(), "world");
        assert!(Str::from_utf8(&[0xff, 0xfe]).is_err());
        let long = "a string longer than twenty-three bytes";
        assert_eq!(Str::from(long.to_owned()), long);
        let s = Str::from(String::from("abc"));
        assert_eq!(format!("{s} {s:?}"), "abc \"abc\"");
        let (a, b) = (Str::from("a"), Str::from("b"));
        assert!(a < b && a < *"b");
        let mut m = std::collections::BTreeMap::new();
        m.insert(Str::from("k"), Str::from_static("v"));
        assert_eq!(m.get("k").map(|v| v.as_str()), Some("v"));
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"abc\"");
        let back: Str = serde_json::from_str(r#""x\ny""#).unwrap();
        assert_eq!(back, "x\ny");
    }
}
