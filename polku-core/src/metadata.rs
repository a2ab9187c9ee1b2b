//! [`Metadata`]: an event's free-form key/value pairs, kept sorted by key.
//!
//! Events usually carry a handful of entries, so up to [`SMALL`] of them lie
//! in one sorted vector: decoding an event with two entries makes one
//! allocation of 96 bytes, where a B-tree node is about 540. An event with
//! more entries than that moves them into a B-tree, so that no shape of input
//! (a million entries in reverse order, say) costs more than a B-tree would.
//! Either way it reads like a sorted map:
//!
//! ```
//! use polku_core::Metadata;
//!
//! let mut m = Metadata::new();
//! m.insert("region".into(), "eu".into());
//! m.insert("env".into(), "prod".into());
//! assert_eq!(m.get("env").map(|v| v.as_str()), Some("prod"));
//! assert_eq!(m["region"], "eu");
//! let keys: Vec<&str> = m.keys().map(|k| k.as_str()).collect();
//! assert_eq!(keys, ["env", "region"]);
//! ```

use crate::Str;
use std::collections::{BTreeMap, btree_map};
use std::fmt;

/// The most entries kept in the sorted vector before they move into a B-tree.
pub const SMALL: usize = 16;

/// An event's metadata: string keys to string values, sorted by key, each
/// key once. See the [module docs](self).
#[derive(Clone)]
pub struct Metadata(Repr);

#[derive(Clone)]
enum Repr {
    /// Sorted by key, keys unique, at most [`SMALL`] entries.
    Small(Vec<(Str, Str)>),
    Large(BTreeMap<Str, Str>),
}

impl Default for Metadata {
    fn default() -> Self {
        Metadata::new()
    }
}

impl Metadata {
    /// No entries (no allocation until the first).
    pub const fn new() -> Self {
        Metadata(Repr::Small(Vec::new()))
    }

    /// How many entries there are.
    pub fn len(&self) -> usize {
        match &self.0 {
            Repr::Small(v) => v.len(),
            Repr::Large(m) => m.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value of `key`, if it is there.
    pub fn get(&self, key: &str) -> Option<&Str> {
        match &self.0 {
            Repr::Small(v) => find(v, key).ok().map(|i| &v[i].1),
            Repr::Large(m) => m.get(key),
        }
    }

    /// The value of `key`, to change in place.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Str> {
        match &mut self.0 {
            Repr::Small(v) => find(v, key).ok().map(|i| &mut v[i].1),
            Repr::Large(m) => m.get_mut(key),
        }
    }

    /// Whether `key` is there.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Sets `key` to `value`, returning the value it had.
    pub fn insert(&mut self, key: Str, value: Str) -> Option<Str> {
        match &mut self.0 {
            Repr::Small(v) => match find(v, &key) {
                Ok(i) => Some(std::mem::replace(&mut v[i].1, value)),
                Err(i) if v.len() < SMALL => {
                    if v.capacity() == 0 {
                        // Most events carry one or two entries.
                        v.reserve_exact(2);
                    }
                    v.insert(i, (key, value));
                    None
                }
                Err(_) => {
                    let mut m: BTreeMap<Str, Str> = std::mem::take(v).into_iter().collect();
                    m.insert(key, value);
                    self.0 = Repr::Large(m);
                    None
                }
            },
            Repr::Large(m) => m.insert(key, value),
        }
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<Str> {
        match &mut self.0 {
            Repr::Small(v) => find(v, key).ok().map(|i| v.remove(i).1),
            Repr::Large(m) => m.remove(key),
        }
    }

    /// Removes every entry.
    pub fn clear(&mut self) {
        match &mut self.0 {
            Repr::Small(v) => v.clear(),
            Repr::Large(_) => self.0 = Repr::Small(Vec::new()),
        }
    }

    /// The entries, sorted by key.
    pub fn iter(&self) -> Iter<'_> {
        Iter(match &self.0 {
            Repr::Small(v) => IterRepr::Small(v.iter()),
            Repr::Large(m) => IterRepr::Large(m.iter()),
        })
    }

    /// The keys, sorted.
    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &Str> + ExactSizeIterator {
        self.iter().map(|(k, _)| k)
    }

    /// The values, in the order of their keys.
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &Str> + ExactSizeIterator {
        self.iter().map(|(_, v)| v)
    }

    /// Metadata of these entries, in any order; of two entries with the same
    /// key the later one is kept. Past [`SMALL`] entries the B-tree is built
    /// in one pass, its nodes full: inserted one by one in order, its nodes
    /// would be left half full (about 2 KB more for 64 entries).
    pub fn from_entries(mut entries: Vec<(Str, Str)>) -> Self {
        // Stable: entries with the same key stay in the order they came.
        entries.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        // `later` is removed when it has `kept`'s key, its value kept.
        entries.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                std::mem::swap(&mut later.1, &mut kept.1);
            }
            same
        });
        if entries.len() <= SMALL {
            Metadata(Repr::Small(entries))
        } else {
            Metadata(Repr::Large(entries.into_iter().collect()))
        }
    }

    /// Decodes one protobuf map entry (a `map<string, string>` field's
    /// element) from `buf` and inserts it; a later entry with the same key
    /// replaces an earlier one, as protobuf says.
    ///
    /// The usual entry (keys arriving in order, as POLKU and most encoders
    /// write them) is decoded where it will lie: at the end of the vector,
    /// with no entry built aside and moved in.
    pub(crate) fn merge_entry(
        &mut self,
        buf: &mut impl bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        match &mut self.0 {
            Repr::Small(v) if v.len() < SMALL => {
                if v.capacity() == 0 {
                    v.reserve_exact(2);
                }
                v.push((Str::new(), Str::new()));
                let last = v.last_mut().expect("just pushed");
                if let Err(e) = prost::encoding::merge_loop(last, buf, ctx, entry_field) {
                    v.pop();
                    return Err(e);
                }
                let n = v.len();
                if n >= 2 && v[n - 2].0.as_str() < v[n - 1].0.as_str() {
                    return Ok(());
                }
                // Out of order, or a key again: put it where it belongs.
                let (key, value) = v.pop().expect("just pushed");
                self.insert(key, value);
                Ok(())
            }
            _ => {
                let mut entry = (Str::new(), Str::new());
                prost::encoding::merge_loop(&mut entry, buf, ctx, entry_field)?;
                self.insert(entry.0, entry.1);
                Ok(())
            }
        }
    }
}

/// Reads one field of a map entry: 1 is the key, 2 the value.
fn entry_field<B: bytes::Buf>(
    (key, value): &mut (Str, Str),
    buf: &mut B,
    ctx: prost::encoding::DecodeContext,
) -> Result<(), prost::DecodeError> {
    let (tag, wire_type) = prost::encoding::decode_key(buf)?;
    match tag {
        1 => crate::event::merge_str(wire_type, key, buf, ctx),
        2 => crate::event::merge_str(wire_type, value, buf, ctx),
        _ => prost::encoding::skip_field(wire_type, tag, buf, ctx),
    }
}

/// Where `key` is in a sorted vector of entries, or where it would go.
fn find(v: &[(Str, Str)], key: &str) -> Result<usize, usize> {
    v.binary_search_by(|(k, _)| k.as_str().cmp(key))
}

/// The entries of a [`Metadata`], sorted by key.
#[derive(Clone, Debug)]
pub struct Iter<'a>(IterRepr<'a>);

#[derive(Clone, Debug)]
enum IterRepr<'a> {
    Small(std::slice::Iter<'a, (Str, Str)>),
    Large(btree_map::Iter<'a, Str, Str>),
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a Str, &'a Str);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.0 {
            IterRepr::Small(i) => i.next().map(|(k, v)| (k, v)),
            IterRepr::Large(i) => i.next(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match &self.0 {
            IterRepr::Small(i) => i.size_hint(),
            IterRepr::Large(i) => i.size_hint(),
        }
    }
}

impl DoubleEndedIterator for Iter<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        match &mut self.0 {
            IterRepr::Small(i) => i.next_back().map(|(k, v)| (k, v)),
            IterRepr::Large(i) => i.next_back(),
        }
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl<'a> IntoIterator for &'a Metadata {
    type Item = (&'a Str, &'a Str);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// The entries of a [`Metadata`], owned, sorted by key.
#[derive(Debug)]
pub struct IntoIter(IntoIterRepr);

#[derive(Debug)]
enum IntoIterRepr {
    Small(std::vec::IntoIter<(Str, Str)>),
    Large(btree_map::IntoIter<Str, Str>),
}

impl Iterator for IntoIter {
    type Item = (Str, Str);

    fn next(&mut self) -> Option<(Str, Str)> {
        match &mut self.0 {
            IntoIterRepr::Small(i) => i.next(),
            IntoIterRepr::Large(i) => i.next(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match &self.0 {
            IntoIterRepr::Small(i) => i.size_hint(),
            IntoIterRepr::Large(i) => i.size_hint(),
        }
    }
}

impl IntoIterator for Metadata {
    type Item = (Str, Str);
    type IntoIter = IntoIter;

    fn into_iter(self) -> IntoIter {
        IntoIter(match self.0 {
            Repr::Small(v) => IntoIterRepr::Small(v.into_iter()),
            Repr::Large(m) => IntoIterRepr::Large(m.into_iter()),
        })
    }
}

impl Extend<(Str, Str)> for Metadata {
    fn extend<I: IntoIterator<Item = (Str, Str)>>(&mut self, iter: I) {
        for (k, v) in iter {
            self.insert(k, v);
        }
    }
}

impl FromIterator<(Str, Str)> for Metadata {
    fn from_iter<I: IntoIterator<Item = (Str, Str)>>(iter: I) -> Self {
        Metadata::from_entries(iter.into_iter().collect())
    }
}

impl<const N: usize> From<[(Str, Str); N]> for Metadata {
    fn from(entries: [(Str, Str); N]) -> Self {
        entries.into_iter().collect()
    }
}

impl From<BTreeMap<Str, Str>> for Metadata {
    fn from(m: BTreeMap<Str, Str>) -> Self {
        if m.len() <= SMALL {
            Metadata(Repr::Small(m.into_iter().collect()))
        } else {
            Metadata(Repr::Large(m))
        }
    }
}

impl std::ops::Index<&str> for Metadata {
    type Output = Str;

    /// The value of `key`; panics when it is not there, like a map's index.
    fn index(&self, key: &str) -> &Str {
        self.get(key)
            .unwrap_or_else(|| panic!("no metadata entry {key:?}"))
    }
}

impl fmt::Debug for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl PartialEq for Metadata {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Metadata {}

impl std::hash::Hash for Metadata {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_usize(self.len());
        for (k, v) in self {
            k.hash(state);
            v.hash(state);
        }
    }
}

impl serde::Serialize for Metadata {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn keys(m: &Metadata) -> Vec<&str> {
        m.keys().map(|k| k.as_str()).collect()
    }

    #[test]
    fn entries_stay_sorted_and_unique_across_the_move_to_a_tree() {
        // Past SMALL entries, inserted in reverse, then overwritten.
        for n in [1, 2, SMALL - 1, SMALL, SMALL + 1, 3 * SMALL] {
            let mut m = Metadata::new();
            for i in (0..n).rev() {
                assert_eq!(m.insert(format!("k{i:03}").into(), "a".into()), None);
            }
            for i in 0..n {
                assert_eq!(
                    m.insert(format!("k{i:03}").into(), format!("v{i}").into()),
                    Some("a".into())
                );
            }
            let want: Vec<String> = (0..n).map(|i| format!("k{i:03}")).collect();
            assert_eq!(keys(&m), want, "n = {n}");
            assert_eq!(m.len(), n);
            assert_eq!(m.iter().len(), n);
            assert_eq!(m.get("k000").map(|v| v.as_str()), Some("v0"));
            assert_eq!(m.remove("k000").map(String::from), Some("v0".to_owned()));
            assert!(!m.contains_key("k000"));
            assert_eq!(m.len(), n - 1);
            let owned: Vec<(Str, Str)> = m.clone().into_iter().collect();
            assert_eq!(owned.len(), n - 1);
            assert!(owned.windows(2).all(|w| w[0].0 < w[1].0));
        }
    }

    #[test]
    fn entries_in_any_order_build_the_same_map_as_inserts() {
        for n in [0, 1, 2, SMALL, SMALL + 1, 64] {
            // Reversed, with every key twice: the second value must win.
            let mut entries = Vec::new();
            for round in ["first", "second"] {
                for i in (0..n).rev() {
                    entries.push((Str::from(format!("k{i:02}")), Str::from(round)));
                }
            }
            let mut inserted = Metadata::new();
            for (k, v) in entries.clone() {
                inserted.insert(k, v);
            }
            let built = Metadata::from_entries(entries);
            assert_eq!(built, inserted, "n = {n}");
            assert!(built.values().all(|v| v == "second"), "n = {n}");
            assert_eq!(built.len(), n);
            assert_eq!(matches!(built.0, Repr::Large(_)), n > SMALL, "n = {n}");
        }
    }

    #[test]
    fn equal_maps_are_equal_whatever_holds_them() {
        let entry = |i| (Str::from(format!("k{i}")), Str::from("v"));
        let small: Metadata = (0..3).map(entry).collect();
        let mut large: Metadata = (0..=SMALL).map(entry).collect();
        for i in 3..=SMALL {
            large.remove(&format!("k{i}"));
        }
        assert_eq!(small, large);
        assert_eq!(format!("{small:?}"), format!("{large:?}"));
        large.insert("k9".into(), "v".into());
        assert_ne!(small, large);
    }

    /// A `map<string, string>` field 5, as protobuf writes one entry.
    fn wire_entry(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
        let mut entry = Vec::new();
        prost::encoding::bytes::encode(1, &key.to_vec(), &mut entry);
        prost::encoding::bytes::encode(2, &value.to_vec(), &mut entry);
        prost::encoding::bytes::encode(5, &entry, out);
    }

    #[test]
    fn entries_decode_in_any_order_and_the_last_of_a_key_wins() {
        let mut wire = Vec::new();
        // In order, out of order, a repeat of an earlier key, then enough
        // to move into the tree, with one more repeat after the move.
        for k in ["b", "d", "a", "c", "b"] {
            let value = format!("{k}-{}", wire.len());
            wire_entry(&mut wire, k.as_bytes(), value.as_bytes());
        }
        let e = crate::Event::decode(&wire[..]).unwrap();
        assert_eq!(keys(&e.metadata), ["a", "b", "c", "d"]);
        assert!(e.metadata["b"].starts_with("b-") && e.metadata["b"] != "b-0");
        for i in (0..2 * SMALL).rev() {
            wire_entry(&mut wire, format!("z{i:02}").as_bytes(), b"v");
        }
        wire_entry(&mut wire, b"a", b"last");
        let e = crate::Event::decode(&wire[..]).unwrap();
        assert_eq!(e.metadata.len(), 4 + 2 * SMALL);
        assert_eq!(e.metadata["a"], "last");
        let k = keys(&e.metadata);
        assert!(k.windows(2).all(|w| w[0] < w[1]), "{k:?}");
        // And it encodes back to the same map.
        let again = crate::Event::decode(&e.encode_to_vec()[..]).unwrap();
        assert_eq!(again.metadata, e.metadata);
    }

    #[test]
    fn an_entry_that_does_not_decode_leaves_the_rest() {
        let mut m = Metadata::new();
        m.insert("a".into(), "1".into());
        // An entry whose value is not UTF-8, then one cut short.
        let mut bad = Vec::new();
        prost::encoding::bytes::encode(1, &b"b".to_vec(), &mut bad);
        prost::encoding::bytes::encode(2, &vec![0xff, 0xfe], &mut bad);
        let mut framed = Vec::new();
        prost::encoding::encode_varint(bad.len() as u64, &mut framed);
        framed.extend_from_slice(&bad);
        assert!(m.merge_entry(&mut &framed[..], Default::default()).is_err());
        let cut = &framed[..framed.len() - 1];
        assert!(m.merge_entry(&mut &cut[..], Default::default()).is_err());
        assert_eq!(keys(&m), ["a"]);
        assert_eq!(m["a"], "1");
    }
}
