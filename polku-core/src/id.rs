//! [`EventId`]: an event's id, held inline when it is up to 40 bytes long.

use crate::Str;
use arrayvec::ArrayString;
use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

/// The longest id held inline: a UUID's 36 characters, with room to spare
/// (the most that keeps an `EventId` at 48 bytes).
const INLINE: usize = 40;

/// An event's id: immutable UTF-8 text like [`Str`], but held inline up to 40
/// bytes, so the ids events usually carry (a UUID's 36 characters, the
/// UUIDv7s the gateway assigns) never allocate, and reading one never
/// follows a pointer. Longer ids are shared like a long [`Str`]. It is 48
/// bytes.
///
/// It derefs to `&str`, compares with `&str`, `String` and [`Str`], hashes
/// like a `&str`, and `"text".into()` or `String::into()` makes one.
///
/// ```
/// use polku_core::EventId;
///
/// let id: EventId = "0190f5a2-7c1e-7000-8000-0123456789ab".into();
/// assert_eq!(id.len(), 36);
/// assert!(id.starts_with("0190"));
/// assert_eq!(id, "0190f5a2-7c1e-7000-8000-0123456789ab");
/// ```
#[derive(Clone)]
pub struct EventId(Repr);

#[derive(Clone)]
enum Repr {
    Inline(ArrayString<INLINE>),
    Shared(Str),
}

impl EventId {
    /// The empty id (an event without one).
    pub const fn new() -> Self {
        EventId(Repr::Inline(ArrayString::new_const()))
    }

    /// The text.
    #[inline]
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Inline(s) => s.as_str(),
            Repr::Shared(s) => s.as_str(),
        }
    }

    /// Makes this id `s`, written where it lies when both are inline (the
    /// decoder's and the id generator's way: no id built aside and moved).
    #[inline]
    pub(crate) fn set(&mut self, s: &str) {
        match &mut self.0 {
            Repr::Inline(inline) if s.len() <= INLINE => {
                inline.clear();
                inline.push_str(s);
            }
            _ => *self = make(s),
        }
    }

    /// An id of these bytes, if they are UTF-8.
    pub fn from_utf8(bytes: &[u8]) -> Result<Self, std::str::Utf8Error> {
        std::str::from_utf8(bytes).map(make)
    }

    /// This id as a [`Str`] (copies an inline id; shares a long one).
    pub fn to_str(&self) -> Str {
        match &self.0 {
            Repr::Inline(s) => Str::from(s.as_str()),
            Repr::Shared(s) => s.clone(),
        }
    }
}

#[inline]
fn make(s: &str) -> EventId {
    match ArrayString::from(s) {
        Ok(inline) => EventId(Repr::Inline(inline)),
        Err(_) => EventId(Repr::Shared(Str::from(s))),
    }
}

impl Default for EventId {
    fn default() -> Self {
        EventId::new()
    }
}

impl Deref for EventId {
    type Target = str;
    #[inline]
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for EventId {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for EventId {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for EventId {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for EventId {}

impl PartialOrd for EventId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for EventId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl Hash for EventId {
    /// Hashes like the `&str` it reads as, so maps keyed by ids can be
    /// looked up with a `&str`.
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

impl From<&str> for EventId {
    fn from(s: &str) -> Self {
        make(s)
    }
}

impl From<String> for EventId {
    fn from(s: String) -> Self {
        if s.len() <= INLINE {
            make(&s)
        } else {
            EventId(Repr::Shared(Str::from(s)))
        }
    }
}

impl From<&String> for EventId {
    fn from(s: &String) -> Self {
        make(s)
    }
}

impl From<Str> for EventId {
    fn from(s: Str) -> Self {
        if s.len() <= INLINE {
            make(&s)
        } else {
            EventId(Repr::Shared(s))
        }
    }
}

impl From<&Str> for EventId {
    fn from(s: &Str) -> Self {
        s.clone().into()
    }
}

impl From<EventId> for String {
    fn from(id: EventId) -> Self {
        id.as_str().to_owned()
    }
}

impl From<EventId> for Str {
    fn from(id: EventId) -> Self {
        id.to_str()
    }
}

macro_rules! eq_text {
    ($($t:ty),*) => {$(
        impl PartialEq<$t> for EventId {
            fn eq(&self, other: &$t) -> bool {
                self.as_str() == AsRef::<str>::as_ref(other)
            }
        }
        impl PartialEq<EventId> for $t {
            fn eq(&self, other: &EventId) -> bool {
                AsRef::<str>::as_ref(self) == other.as_str()
            }
        }
    )*};
}

eq_text!(str, &str, String, Str);

impl PartialOrd<str> for EventId {
    fn partial_cmp(&self, other: &str) -> Option<std::cmp::Ordering> {
        self.as_str().partial_cmp(other)
    }
}

impl serde::Serialize for EventId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for EventId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(EventId::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_up_to_40_bytes_are_inline_and_longer_ones_shared() {
        assert_eq!(std::mem::size_of::<EventId>(), 48);
        let uuid = "0190f5a2-7c1e-7000-8000-0123456789ab";
        for text in ["", "1", uuid, &"x".repeat(40)] {
            let id = EventId::from(text);
            assert!(matches!(id.0, Repr::Inline(_)), "{text}");
            assert_eq!(id, text);
            assert_eq!(id.len(), text.len());
        }
        let long = "y".repeat(41);
        for id in [
            EventId::from(long.as_str()),
            EventId::from(long.clone()),
            EventId::from(Str::from(long.as_str())),
        ] {
            assert!(matches!(id.0, Repr::Shared(_)));
            assert_eq!(id, long);
            assert_eq!(id.to_str(), long);
        }
        assert!(EventId::from_utf8(&[0xff]).is_err());
        assert_eq!(EventId::from_utf8("ü✓".as_bytes()).unwrap(), "ü✓");
    }

    #[test]
    fn ids_compare_hash_and_serialize_as_their_text() {
        use std::collections::HashSet;
        let (a, b) = (EventId::from("a"), EventId::from("b".repeat(40)));
        assert!(a < b && a < *"b" && EventId::default().is_empty());
        assert_eq!(a, String::from("a"));
        assert_eq!(Str::from("a"), a);
        let set: HashSet<EventId> = [a.clone(), b.clone()].into();
        assert!(set.contains("a") && set.contains(b.as_str()));
        assert_eq!(format!("{a} {a:?}"), "a \"a\"");
        assert_eq!(serde_json::to_string(&a).unwrap(), "\"a\"");
        let back: EventId = serde_json::from_str("\"x\\ny\"").unwrap();
        assert_eq!(back, "x\ny");
        assert_eq!(String::from(back), "x\ny");
    }
}
