//! [`Routes`]: the emitters an event goes to (`route_to`). Empty means
//! every emitter.
//!
//! One name, the common case (a router's rule, a dead-letter emitter), is
//! held without allocating; two or more go into a vector. It reads like a
//! slice of names:
//!
//! ```
//! use polku_core::Routes;
//!
//! let mut r = Routes::new();
//! assert!(r.is_empty());
//! r.push("slack");
//! r.push("s3");
//! assert_eq!(r, ["slack", "s3"]);
//! assert!(r.contains(&"s3".into()));
//! assert_eq!(r.join(","), "slack,s3");
//! ```

use crate::Str;
use std::fmt;
use std::ops::Deref;

/// The emitters an event goes to; see the [module docs](self).
#[derive(Clone, Default)]
pub struct Routes(Repr);

#[derive(Clone)]
enum Repr {
    One(Str),
    Many(Vec<Str>),
}

impl Default for Repr {
    fn default() -> Self {
        Repr::Many(Vec::new())
    }
}

impl Routes {
    /// No routes: the event goes to every emitter.
    pub const fn new() -> Self {
        Routes(Repr::Many(Vec::new()))
    }

    /// Adds an emitter.
    pub fn push(&mut self, name: impl Into<Str>) {
        let name = name.into();
        match &mut self.0 {
            Repr::Many(v) if v.is_empty() && v.capacity() == 0 => self.0 = Repr::One(name),
            Repr::Many(v) => v.push(name),
            Repr::One(first) => {
                let first = std::mem::take(first);
                self.0 = Repr::Many(vec![first, name]);
            }
        }
    }

    /// Removes every route (the event goes to every emitter again).
    pub fn clear(&mut self) {
        match &mut self.0 {
            Repr::Many(v) => v.clear(),
            Repr::One(_) => self.0 = Repr::Many(Vec::new()),
        }
    }

    /// The names, as a slice.
    pub fn as_slice(&self) -> &[Str] {
        match &self.0 {
            Repr::One(s) => std::slice::from_ref(s),
            Repr::Many(v) => v,
        }
    }
}

impl Deref for Routes {
    type Target = [Str];

    fn deref(&self) -> &[Str] {
        self.as_slice()
    }
}

impl fmt::Debug for Routes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

impl PartialEq for Routes {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Routes {}

impl std::hash::Hash for Routes {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state);
    }
}

impl<T> PartialEq<[T]> for Routes
where
    Str: PartialEq<T>,
{
    fn eq(&self, other: &[T]) -> bool {
        self.len() == other.len() && self.iter().zip(other).all(|(a, b)| a == b)
    }
}

impl<T, const N: usize> PartialEq<[T; N]> for Routes
where
    Str: PartialEq<T>,
{
    fn eq(&self, other: &[T; N]) -> bool {
        *self == other[..]
    }
}

impl<T> PartialEq<Vec<T>> for Routes
where
    Str: PartialEq<T>,
{
    fn eq(&self, other: &Vec<T>) -> bool {
        *self == other[..]
    }
}

impl<S: Into<Str>> FromIterator<S> for Routes {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Self {
        let mut r = Routes::new();
        r.extend(iter);
        r
    }
}

impl<S: Into<Str>> Extend<S> for Routes {
    fn extend<I: IntoIterator<Item = S>>(&mut self, iter: I) {
        for s in iter {
            self.push(s);
        }
    }
}

impl From<Vec<Str>> for Routes {
    fn from(v: Vec<Str>) -> Self {
        Routes(Repr::Many(v))
    }
}

impl<'a> IntoIterator for &'a Routes {
    type Item = &'a Str;
    type IntoIter = std::slice::Iter<'a, Str>;

    fn into_iter(self) -> Self::IntoIter {
        self.as_slice().iter()
    }
}

impl serde::Serialize for Routes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.as_slice().serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for Routes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<Str>::deserialize(d).map(Routes::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_name_is_held_inline_and_more_go_to_a_vector() {
        let mut r = Routes::new();
        r.push("a");
        assert!(matches!(r.0, Repr::One(_)));
        r.push("b");
        r.push("c");
        assert!(matches!(r.0, Repr::Many(_)));
        assert_eq!(r, ["a", "b", "c"]);
        r.clear();
        assert!(r.is_empty());
        r.push("d");
        assert_eq!(r, vec!["d"]);
    }

    #[test]
    fn equality_ignores_how_names_are_held() {
        let one: Routes = ["x"].into_iter().collect();
        let many = Routes::from(vec![Str::from("x")]);
        assert_eq!(one, many);
        assert_ne!(one, Routes::new());
        assert_eq!(format!("{one:?}"), r#"["x"]"#);
    }

    #[test]
    fn no_bigger_than_a_vector_and_a_word() {
        assert!(std::mem::size_of::<Routes>() <= 32);
    }
}
