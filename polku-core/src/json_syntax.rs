//! Whether bytes are one JSON object or array, read exactly as serde_json
//! reads a `RawValue`: the check behind embedding a payload in an event's
//! JSON form, done once per event by every JSON emitter.
//!
//! One pass, no allocation: strings are skipped eight bytes at a time, and
//! nesting is a bit per level. serde_json's own check (`ignore_value`) was
//! 3-4% of the gateway's core on streams into Kafka.

/// Levels of nesting tracked in a word; deeper ones (only an odd or hostile
/// payload nests this deep) spill into a vector, as serde_json's skipping
/// has no depth limit either.
const INLINE: u32 = 128;

/// `p` as text, when it is one JSON object or array and nothing else (no
/// whitespace around it) and valid UTF-8: what
/// `serde_json::from_slice::<&RawValue>` takes whole.
pub(crate) fn json_container(p: &[u8]) -> Option<&str> {
    if !matches!(p.first(), Some(b'{' | b'[')) {
        return None;
    }
    Reader {
        p,
        i: 0,
        objects: 0,
        deeper: Vec::new(),
        depth: 0,
    }
    .document()?;
    std::str::from_utf8(p).ok()
}

struct Reader<'a> {
    p: &'a [u8],
    i: usize,
    /// One bit per open level up to `INLINE`, set for an object.
    objects: u128,
    /// The levels past `INLINE`: whether each is an object.
    deeper: Vec<bool>,
    depth: u32,
}

impl Reader<'_> {
    fn peek(&self) -> Option<u8> {
        self.p.get(self.i).copied()
    }

    fn open(&mut self, object: bool) {
        if self.depth < INLINE {
            let bit = 1u128 << self.depth;
            self.objects = if object {
                self.objects | bit
            } else {
                self.objects & !bit
            };
        } else {
            self.deeper.push(object);
        }
        self.depth += 1;
    }

    fn close(&mut self) {
        self.depth -= 1;
        if self.depth >= INLINE {
            self.deeper.pop();
        }
    }

    /// Whether the innermost open level is an object.
    fn in_object(&self) -> bool {
        if self.depth > INLINE {
            self.deeper.last() == Some(&true)
        } else {
            (self.objects >> (self.depth - 1)) & 1 == 1
        }
    }

    fn whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    /// Reads values until the outermost container closes, which must be at
    /// the end of the bytes.
    fn document(&mut self) -> Option<()> {
        loop {
            // A value.
            self.whitespace();
            match self.peek()? {
                open @ (b'{' | b'[') => {
                    let object = open == b'{';
                    self.open(object);
                    self.i += 1;
                    self.whitespace();
                    let close = if object { b'}' } else { b']' };
                    if self.peek()? == close {
                        self.i += 1;
                        self.close();
                    } else {
                        if object {
                            self.key()?;
                        }
                        continue;
                    }
                }
                b'"' => self.string()?,
                b'-' | b'0'..=b'9' => self.number()?,
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                _ => return None,
            }
            // After a value: close what ends here, up to the next element.
            loop {
                if self.depth == 0 {
                    return (self.i == self.p.len()).then_some(());
                }
                self.whitespace();
                match (self.peek()?, self.in_object()) {
                    (b',', false) => {
                        self.i += 1;
                        break;
                    }
                    (b',', true) => {
                        self.i += 1;
                        self.whitespace();
                        self.key()?;
                        break;
                    }
                    (b']', false) | (b'}', true) => {
                        self.i += 1;
                        self.close();
                    }
                    _ => return None,
                }
            }
        }
    }

    /// An object's key and its colon.
    fn key(&mut self) -> Option<()> {
        if self.peek()? != b'"' {
            return None;
        }
        self.string()?;
        self.whitespace();
        if self.peek()? != b':' {
            return None;
        }
        self.i += 1;
        Some(())
    }

    /// A string, from its opening quote: no control character in it, and
    /// only JSON's escapes (`\u` with four hex digits; surrogates are not
    /// paired, as serde_json does not pair them when it skips a value).
    fn string(&mut self) -> Option<()> {
        self.i += 1;
        loop {
            // Up to the next quote, backslash or control byte, eight bytes
            // at a time.
            while let Some(w) = self.p.get(self.i..self.i + 8) {
                let special = crate::json::escapes(u64::from_le_bytes(w.try_into().ok()?));
                if special != 0 {
                    self.i += (special.trailing_zeros() / 8) as usize;
                    break;
                }
                self.i += 8;
            }
            match self.peek()? {
                b'"' => {
                    self.i += 1;
                    return Some(());
                }
                b'\\' => {
                    let len = match self.p.get(self.i + 1)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => 2,
                        b'u' => {
                            let hex = self.p.get(self.i + 2..self.i + 6)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return None;
                            }
                            6
                        }
                        _ => return None,
                    };
                    self.i += len;
                }
                0x00..=0x1f => return None,
                _ => self.i += 1,
            }
        }
    }

    /// `-`? then `0` or a digit run not starting with `0`, then `.` and
    /// digits, then `e` or `E`, a sign and digits.
    fn number(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek()? {
            b'0' => {
                self.i += 1;
                if self.peek().is_some_and(|b| b.is_ascii_digit()) {
                    return None;
                }
            }
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if !self.peek()?.is_ascii_digit() {
                return None;
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if !self.peek()?.is_ascii_digit() {
                return None;
            }
            self.digits();
        }
        Some(())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.i += 1;
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        if !self.p[self.i..].starts_with(word) {
            return None;
        }
        self.i += word.len();
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::value::RawValue;

    /// What serde_json says: `p` is read whole as one object or array.
    fn serde_says(p: &[u8]) -> Option<&str> {
        if !matches!(p.first(), Some(b'{' | b'[')) {
            return None;
        }
        let raw = serde_json::from_slice::<&RawValue>(p).ok()?;
        (raw.get().len() == p.len()).then_some(raw.get())
    }

    fn same(p: &[u8]) {
        assert_eq!(
            json_container(p),
            serde_says(p),
            "{:?}",
            String::from_utf8_lossy(p)
        );
    }

    #[test]
    fn the_cases_serde_json_takes_or_refuses() {
        for case in [
            "{}",
            "[]",
            r#"{"a":1}"#,
            r#"{"a" : [1, -0, 0.5, 1e9, 1E+2, -3.25e-7, true, false, null, "x"]}"#,
            r#"[{"a":{"b":[]}}, {}]"#,
            "[\"\\\" \\\\ \\/ \\b \\f \\n \\r \\t \\u00e9 \\uD800\"]",
            "[\"ünïcödé ✓ 🚀 and more than eight bytes\"]",
            "{} ",
            " {}",
            "{},",
            "[1,]",
            "[,1]",
            r#"{"a":1,}"#,
            r#"{"a"}"#,
            r#"{"a":}"#,
            r#"{1:2}"#,
            "[01]",
            "[1.]",
            "[.5]",
            "[1e]",
            "[1e+]",
            "[-]",
            "[+1]",
            "[tru]",
            "[nul]",
            "[nullx]",
            "[\"a\u{1}b\"]",
            "[\"tab\tinside\"]",
            "[\"\\x\"]",
            "[\"\\u12\"]",
            "[\"\\u12G4\"]",
            "[\"unclosed]",
            "[1 2]",
            "{\"a\":1 \"b\":2}",
            "[}",
            "{]",
            "[[[]]",
            "\"text\"",
            "42",
            "",
        ] {
            same(case.as_bytes());
        }
        same(b"[\"\xff\"]");
        same(b"[\"\xc3\"]");
    }

    #[test]
    fn any_depth_reads_as_serde_json_reads_it() {
        for depth in [1, 2, 127, 128, 129, 130, 1000, 100_000] {
            let mut p = "[".repeat(depth);
            p.push_str(&"]".repeat(depth));
            same(p.as_bytes());
            assert!(json_container(p.as_bytes()).is_some(), "{depth} deep");
            // Arrays and objects alternating, each level's closer checked.
            let mut o = String::new();
            for d in 0..depth {
                o.push_str(if d % 2 == 0 { "[" } else { r#"{"k":"# });
            }
            o.push('1');
            for d in (0..depth).rev() {
                o.push(if d % 2 == 0 { ']' } else { '}' });
            }
            same(o.as_bytes());
            assert!(json_container(o.as_bytes()).is_some(), "{depth} deep");
            // The same with two closers swapped at the bottom: refused.
            if depth > 2 {
                let mut bad = o.clone().into_bytes();
                let n = bad.len();
                bad.swap(n - 1, n - 2);
                same(&bad);
            }
        }
    }

    fn value() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "[ -~é✓\\\\\"\\t\\n\\u{1}]{0,20}".prop_map(Value::String),
        ];
        leaf.prop_recursive(5, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map("[a-z\"\\\\]{0,6}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn agrees_with_serde_json_on_json_and_on_json_broken_anywhere(
            v in value(),
            pretty in any::<bool>(),
            at in any::<prop::sample::Index>(),
            how in 0..4u8,
            byte in prop::sample::select(&b"{}[],:\"\\ 0123456789.-+eEtrufalsn\t\n\x01\xff\xc3"[..]),
        ) {
            let mut p = if pretty {
                serde_json::to_vec_pretty(&v).unwrap()
            } else {
                serde_json::to_vec(&v).unwrap()
            };
            same(&p);
            if !p.is_empty() {
                let i = at.index(p.len());
                match how {
                    0 => { p.remove(i); }
                    1 => p.insert(i, byte),
                    2 => p[i] = byte,
                    _ => p.truncate(i),
                }
                same(&p);
            }
        }

        #[test]
        fn agrees_with_serde_json_on_any_bytes_of_its_alphabet(
            p in prop::collection::vec(
                prop::sample::select(&b"{}[],:\"\\ 019.-eEtrulfasn\x01\xe9"[..]),
                0..40,
            ),
        ) {
            let mut p = p;
            p.insert(0, b'[');
            same(&p);
        }
    }
}
