//! Bearer tokens: reading them from an `authorization` value and comparing
//! them without leaking, through timing, how much of a guess was right.
//!
//! ```
//! use polku_core::auth::{bearer_token, constant_time_eq};
//!
//! let given = bearer_token(b"Bearer s3cret").unwrap();
//! assert!(constant_time_eq(given, b"s3cret"));
//! assert!(bearer_token(b"Basic s3cret").is_none());
//! ```

/// The token of a `Bearer <token>` value (any case, surrounding spaces
/// ignored), or `None` for anything else.
pub fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    (value.len() > 7 && value[..7].eq_ignore_ascii_case(b"bearer "))
        .then(|| value[7..].trim_ascii())
}

/// Whether `a` and `b` are equal, taking the same time wherever they differ
/// (the length still shows).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_and_compare() {
        assert_eq!(bearer_token(b"Bearer abc "), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"bearer  abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"abc"), None);
        assert_eq!(bearer_token(b"Bearer "), None);
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
