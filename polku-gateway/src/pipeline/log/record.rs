//! One record on disk: an 8-byte header (the payload's length, and a CRC-32
//! of that length and the payload, little-endian) and the payload. A record
//! whose header or payload did not reach the disk whole, or whose checksum
//! does not match, ends what can be read of its segment.
//!
//! The checksum covers the length so that no header of zeros is a valid
//! record: zeros are what a file extended but not yet written reads back
//! as after a crash, and they read as a torn tail, not as empty records.

use std::io::{self, Read};

/// Header bytes before each payload.
pub(crate) const HEADER: usize = 8;

/// The largest payload a record holds (a batch of events, well under the
/// 4 GiB a length field could say).
pub(crate) const MAX_RECORD: usize = 256 << 20;

/// Writes one record's header for `payload`.
pub(crate) fn header(payload: &[u8]) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    h[4..].copy_from_slice(&checksum(payload.len() as u32, payload).to_le_bytes());
    h
}

/// The CRC-32 of a record's length (little-endian) and payload.
fn checksum(len: u32, payload: &[u8]) -> u32 {
    let mut c = crc32fast::Hasher::new();
    c.update(&len.to_le_bytes());
    c.update(payload);
    c.finalize()
}

/// How reading a segment's records ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// At the end of the file, after a whole record (or none).
    Clean,
    /// Inside a record: a header or payload cut short (a torn write). The
    /// offset is where the record began.
    Torn(u64),
    /// At a record whose checksum or length is wrong. The offset is where
    /// the record began.
    Corrupt(u64),
}

/// Reads the records of one segment in order, calling `each` with every
/// whole record's payload and offset, and says how the reading ended.
pub(crate) fn scan(
    mut r: impl Read,
    mut each: impl FnMut(u64, Vec<u8>) -> io::Result<()>,
) -> io::Result<End> {
    let mut at = 0u64;
    loop {
        let mut h = [0u8; HEADER];
        match read_full(&mut r, &mut h)? {
            0 => return Ok(End::Clean),
            n if n < HEADER => return Ok(End::Torn(at)),
            // Never a record (the checksum covers the length): the space a
            // write reserved and never filled, if only zeros follow.
            _ if h == [0u8; HEADER] => return tail(&mut r, at),
            _ => {}
        }
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        if len > MAX_RECORD {
            return Ok(End::Corrupt(at));
        }
        let mut payload = vec![0u8; len];
        if read_full(&mut r, &mut payload)? < len {
            return Ok(End::Torn(at));
        }
        if checksum(len as u32, &payload) != crc {
            return tail(&mut r, at);
        }
        each(at, payload)?;
        at += (HEADER + len) as u64;
    }
}

/// How reading ends at a bad record at `at`: a torn write if nothing but
/// zeros follows it (a write cut short leaves its record damaged or its
/// space zeroed at the very end), damage if anything else does.
fn tail(r: &mut impl Read, at: u64) -> io::Result<End> {
    let mut buf = [0u8; 8192];
    loop {
        match read_full(r, &mut buf)? {
            0 => return Ok(End::Torn(at)),
            n if buf[..n].iter().any(|b| *b != 0) => return Ok(End::Corrupt(at)),
            _ => {}
        }
    }
}

/// Reads until `buf` is full or the input ends; gives how much was read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            out.extend_from_slice(&header(p));
            out.extend_from_slice(p);
        }
        out
    }

    fn read_all(bytes: &[u8]) -> (Vec<Vec<u8>>, End) {
        let mut got = Vec::new();
        let end = scan(bytes, |_, p| {
            got.push(p);
            Ok(())
        })
        .unwrap();
        (got, end)
    }

    #[test]
    fn whole_records_read_back_in_order() {
        let bytes = records(&[b"one", b"", b"three"]);
        let (got, end) = read_all(&bytes);
        assert_eq!(got, [b"one".to_vec(), vec![], b"three".to_vec()]);
        assert_eq!(end, End::Clean);
    }

    #[test]
    fn a_cut_anywhere_keeps_every_record_before_it() {
        let bytes = records(&[b"alpha", b"beta", b"gamma"]);
        let ends = [13usize, 25, 38];
        assert_eq!(bytes.len(), 38);
        for cut in 0..=bytes.len() {
            let (got, end) = read_all(&bytes[..cut]);
            let complete = ends.iter().filter(|e| **e <= cut).count();
            assert_eq!(got.len(), complete, "cut at {cut}");
            let boundary = cut == 0 || ends.contains(&cut);
            match end {
                End::Clean => assert!(boundary, "cut at {cut} read as clean"),
                End::Torn(at) => {
                    assert!(!boundary, "cut at {cut}");
                    let start = if complete == 0 { 0 } else { ends[complete - 1] };
                    assert_eq!(at, start as u64, "cut at {cut}");
                }
                End::Corrupt(_) => panic!("a cut is a tear, not corruption (cut at {cut})"),
            }
        }
    }

    #[test]
    fn zeros_after_the_last_record_are_a_tear_and_garbage_is_corruption() {
        let mut bytes = records(&[b"alpha", b""]);
        let whole = bytes.len() as u64;
        bytes.extend_from_slice(&[0u8; 100]);
        let (got, end) = read_all(&bytes);
        assert_eq!(got, [b"alpha".to_vec(), vec![]]);
        assert_eq!(end, End::Torn(whole), "zeros are never an empty record");
        let mut bytes = records(&[b"alpha"]);
        bytes.extend_from_slice(&[0x5a; 40]);
        let (got, end) = read_all(&bytes);
        assert_eq!(got, [b"alpha".to_vec()]);
        assert_eq!(end, End::Corrupt(13));
        // A length changed to another whole record's length is caught too.
        let mut bytes = records(&[b"abcd", b"efgh"]);
        bytes[0] = 0;
        assert_eq!(read_all(&bytes).1, End::Corrupt(0));
    }

    #[test]
    fn a_flipped_bit_is_corruption_at_its_record() {
        let mut bytes = records(&[b"alpha", b"beta", b"gamma"]);
        bytes[13 + HEADER + 1] ^= 0x10;
        let (got, end) = read_all(&bytes);
        assert_eq!(got, [b"alpha".to_vec()]);
        assert_eq!(end, End::Corrupt(13));
        // A length past the limit is corruption too, not an allocation.
        let mut huge = header(b"x").to_vec();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(read_all(&huge).1, End::Corrupt(0));
    }
}
