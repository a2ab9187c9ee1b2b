//! The log against what it promises: records read back in order after a
//! restart, a tear anywhere past the last sync keeps every synced record, a
//! flipped bit is reported and never a panic, one gateway per directory, and
//! a model test over random appends, syncs, reads, trims and restarts.

use super::*;
use proptest::prelude::*;

/// A directory of its own, removed when dropped.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new() -> Self {
        use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "polku-log-{}-{}",
            std::process::id(),
            N.fetch_add(1, Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn payload(i: u64, len: usize) -> Vec<u8> {
    (0..len).map(|k| (i as usize * 31 + k) as u8).collect()
}

fn all(log: &mut Log) -> Vec<(u64, Vec<u8>)> {
    log.read(0, usize::MAX).unwrap()
}

#[test]
fn records_come_back_in_order_across_segments_and_restarts() {
    let dir = TempDir::new();
    let (mut log, rec) = Log::open(&dir.0, 100).unwrap();
    assert_eq!(rec, Recovery::default());
    for i in 0..20 {
        assert_eq!(log.append(&payload(i, 30)).unwrap(), i);
    }
    log.sync().unwrap();
    assert!(log.segments.len() > 5, "segments of about 100 bytes");
    drop(log);
    let (mut log, rec) = Log::open(&dir.0, 100).unwrap();
    assert_eq!(rec.records, 20);
    let got = all(&mut log);
    assert_eq!(got.len(), 20);
    for (i, (n, p)) in got.iter().enumerate() {
        assert_eq!((*n, p), (i as u64, &payload(i as u64, 30)));
    }
    assert_eq!(log.append(b"next").unwrap(), 20);
    assert_eq!(log.read(19, 5).unwrap().len(), 2);
}

#[test]
fn a_second_gateway_on_the_directory_is_refused() {
    let dir = TempDir::new();
    let (_log, _) = Log::open(&dir.0, 1 << 20).unwrap();
    let err = Log::open(&dir.0, 1 << 20).unwrap_err();
    assert!(matches!(err, LogError::Locked { .. }), "{err:?}");
    assert!(
        err.to_string().contains("in use by another gateway"),
        "{err}"
    );
}

#[test]
fn trimming_removes_whole_segments_behind_every_reader() {
    let dir = TempDir::new();
    let (mut log, _) = Log::open(&dir.0, 100).unwrap();
    for i in 0..20 {
        log.append(&payload(i, 30)).unwrap();
    }
    log.sync().unwrap();
    let before = log.disk_bytes();
    let gone = log.trim(10).unwrap();
    assert!(gone > 0);
    assert!(log.first() <= 10, "nothing at or past 10 goes");
    assert!(log.disk_bytes() < before);
    let got = all(&mut log);
    assert_eq!(got.first().unwrap().0, log.first());
    assert_eq!(got.last().unwrap().0, 19);
    // Everything behind every reader: only the segment written to stays.
    log.trim(u64::MAX).unwrap();
    assert_eq!(log.segments.len(), 1);
    assert_eq!(log.append(b"x").unwrap(), 20, "numbers go on");
}

#[test]
fn a_tear_anywhere_after_the_last_sync_keeps_every_synced_record() {
    for cut_extra in [0u64, 1, 7, 8, 9, 20, 37, 38, 39, 60] {
        let dir = TempDir::new();
        let (mut log, _) = Log::open(&dir.0, 1 << 20).unwrap();
        for i in 0..5 {
            log.append(&payload(i, 30)).unwrap();
        }
        log.sync().unwrap();
        let (path, synced) = log.synced_tail();
        for i in 5..8 {
            log.append(&payload(i, 30)).unwrap();
        }
        drop(log); // flushes the unsynced records
        let len = fs::metadata(&path).unwrap().len();
        let cut = (synced + cut_extra).min(len);
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(cut)
            .unwrap();
        let (mut log, rec) = Log::open(&dir.0, 1 << 20).unwrap();
        let whole_after_sync = (cut - synced) / 38;
        assert_eq!(
            rec.records,
            5 + whole_after_sync,
            "cut {cut_extra} past the sync"
        );
        assert_eq!(rec.torn_bytes, (cut - synced) % 38);
        let got = all(&mut log);
        for (i, (n, p)) in got.iter().enumerate() {
            assert_eq!((*n, p), (i as u64, &payload(i as u64, 30)));
        }
        assert_eq!(log.append(b"after").unwrap(), 5 + whole_after_sync);
        log.sync().unwrap();
        drop(log);
        let (_, rec) = Log::open(&dir.0, 1 << 20).unwrap();
        assert_eq!(rec.torn_bytes, 0, "the repair holds");
    }
}

#[test]
fn a_tail_of_zeros_or_garbage_at_a_random_offset_keeps_every_synced_record() {
    // What a crash can leave past the last sync besides a cut: the space an
    // unfinished write reserved (zeros), or bytes that never were a record.
    let mut seed = 0x9e37_79b9_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..40 {
        let zeros = round % 2 == 0;
        let dir = TempDir::new();
        let (mut log, _) = Log::open(&dir.0, 1 << 20).unwrap();
        for i in 0..5 {
            log.append(&payload(i, 30)).unwrap();
        }
        log.sync().unwrap();
        let (path, synced) = log.synced_tail();
        for i in 5..8 {
            log.append(&payload(i, 30)).unwrap();
        }
        drop(log);
        // Overwrite from a random offset past the sync with a random length.
        let from = synced + next() % (3 * 38);
        let len = 1 + next() % 200;
        let fill: Vec<u8> = (0..len)
            .map(|_| if zeros { 0 } else { (next() % 255 + 1) as u8 })
            .collect();
        let mut f = OpenOptions::new().write(true).open(&path).unwrap();
        f.seek(SeekFrom::Start(from)).unwrap();
        f.write_all(&fill).unwrap();
        f.set_len(from + len).unwrap();
        drop(f);
        let (mut log, rec) = Log::open(&dir.0, 1 << 20).unwrap();
        let whole_before = (from - synced) / 38;
        assert!(
            rec.records >= 5 && rec.records <= 5 + whole_before,
            "round {round}: {} records",
            rec.records
        );
        if zeros {
            assert!(rec.corrupt_segments.is_empty(), "zeros are a tear");
            assert_eq!(rec.records, 5 + whole_before, "round {round}");
        }
        let got = all(&mut log);
        for (i, (n, p)) in got.iter().enumerate() {
            assert_eq!((*n, p), (i as u64, &payload(i as u64, 30)), "round {round}");
        }
        // Writing goes on after the last whole record, and reads back.
        let at = log.append(b"after").unwrap();
        log.sync().unwrap();
        drop(log);
        let (mut log, rec) = Log::open(&dir.0, 1 << 20).unwrap();
        assert_eq!(rec.records, at + 1, "round {round}");
        assert_eq!(all(&mut log).last().unwrap().1, b"after");
    }
}

#[test]
fn a_damaged_segment_is_reported_and_the_rest_of_the_log_still_reads() {
    let dir = TempDir::new();
    let (mut log, _) = Log::open(&dir.0, 100).unwrap();
    for i in 0..12 {
        log.append(&payload(i, 30)).unwrap();
    }
    log.sync().unwrap();
    let first = log.segments[0].path.clone();
    let second_first = log.segments[1].first;
    drop(log);
    let mut bytes = fs::read(&first).unwrap();
    bytes[HEADER + 3] ^= 0xff;
    fs::write(&first, bytes).unwrap();
    let (mut log, rec) = Log::open(&dir.0, 100).unwrap();
    assert_eq!(rec.corrupt_segments, [first]);
    let got = all(&mut log);
    assert_eq!(
        got.first().unwrap().0,
        second_first,
        "the damaged segment gives nothing"
    );
    assert_eq!(got.last().unwrap().0, 11);
    assert_eq!(log.append(b"x").unwrap(), 12);
}

#[derive(Debug, Clone)]
enum Op {
    Append(usize),
    Sync,
    Read(u64, usize),
    Trim(u64),
    /// Stop and open again; with a tear, the last segment is cut this many
    /// bytes past its last sync (what a crash may do to unsynced writes).
    Restart(Option<u16>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0usize..60).prop_map(Op::Append),
        2 => Just(Op::Sync),
        2 => (0u64..40, 0usize..10).prop_map(|(f, m)| Op::Read(f, m)),
        1 => (0u64..40).prop_map(Op::Trim),
        1 => proptest::option::of(0u16..200).prop_map(Op::Restart),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The log never loses a synced record, never invents one, and reads
    /// back what the model holds from its first record on.
    #[test]
    fn the_log_behaves_like_a_vector_of_records(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = TempDir::new();
        let (mut log, _) = Log::open(&dir.0, 120).unwrap();
        // Every record appended, by number; those below `synced` are on disk.
        let mut model: Vec<Vec<u8>> = Vec::new();
        let mut synced = 0u64;
        for (step, op) in ops.into_iter().enumerate() {
            match op {
                Op::Append(len) => {
                    let n = model.len() as u64;
                    let p = payload(n + step as u64, len);
                    prop_assert_eq!(log.append(&p).unwrap(), n);
                    model.push(p);
                }
                Op::Sync => {
                    log.sync().unwrap();
                    synced = model.len() as u64;
                }
                Op::Read(from, max) => {
                    let got = log.read(from, max).unwrap();
                    let start = from.max(log.first());
                    let want: Vec<(u64, Vec<u8>)> = (start..model.len() as u64)
                        .take(max)
                        .map(|n| (n, model[n as usize].clone()))
                        .collect();
                    prop_assert_eq!(got, want);
                }
                Op::Trim(below) => {
                    let first_before = log.first();
                    log.trim(below).unwrap();
                    prop_assert!(log.first() >= first_before);
                    prop_assert!(log.first() <= below.max(first_before));
                }
                Op::Restart(tear) => {
                    let (path, synced_bytes) = log.synced_tail();
                    drop(log);
                    if let Some(extra) = tear {
                        let len = fs::metadata(&path).unwrap().len();
                        let cut = (synced_bytes + u64::from(extra)).min(len);
                        OpenOptions::new().write(true).open(&path).unwrap().set_len(cut).unwrap();
                    }
                    let (reopened, rec) = Log::open(&dir.0, 120).unwrap();
                    log = reopened;
                    prop_assert!(rec.corrupt_segments.is_empty());
                    let next = log.next();
                    prop_assert!(next >= synced, "a synced record was lost: next {} < synced {}", next, synced);
                    prop_assert!(next <= model.len() as u64);
                    model.truncate(next as usize);
                    synced = next;
                    let got = log.read(0, usize::MAX).unwrap();
                    let first = log.first();
                    prop_assert_eq!(got.len() as u64, next - first);
                    for (n, p) in got {
                        prop_assert_eq!(&p, &model[n as usize]);
                    }
                }
            }
        }
    }
}

/// After a failed write, the log is cut back to its last sync, and what is
/// written next follows whole records: a restart reads the synced records
/// and the new ones, never the rolled-back ones.
#[test]
fn a_rollback_forgets_what_was_not_synced_and_writing_goes_on() {
    let dir = TempDir::new();
    let (mut log, _) = Log::open(&dir.0, 1 << 20).unwrap();
    log.append(b"kept").unwrap();
    log.sync().unwrap();
    log.append(b"lost-1").unwrap();
    // Part of it reaches the file, as a write cut short by a full disk.
    log.writer.flush().unwrap();
    log.append(b"lost-2").unwrap();
    log.rollback().unwrap();
    assert_eq!(log.next(), 1);
    assert_eq!(log.append(b"after").unwrap(), 1);
    log.sync().unwrap();
    drop(log);
    let (mut log, recovery) = Log::open(&dir.0, 1 << 20).unwrap();
    assert_eq!(recovery.torn_bytes, 0);
    assert!(recovery.corrupt_segments.is_empty());
    assert_eq!(
        all(&mut log),
        [(0, b"kept".to_vec()), (1, b"after".to_vec())]
    );
}

/// `read_range` reads what the log holds in a range, without the log.
#[test]
fn a_range_is_read_beside_the_log_and_stops_at_its_end() {
    let dir = TempDir::new();
    let (mut log, _) = Log::open(&dir.0, 64).unwrap();
    for i in 0..10 {
        log.append(&payload(i, 20)).unwrap();
    }
    log.sync().unwrap();
    log.trim(3).unwrap();
    let mut got = Vec::new();
    read_range(&dir.0, 2, 7, |n, p| {
        got.push((n, p));
        true
    })
    .unwrap();
    let first = log.first();
    assert!(first <= 3, "{first}");
    let want: Vec<(u64, Vec<u8>)> = (first.max(2)..7).map(|i| (i, payload(i, 20))).collect();
    assert_eq!(got, want);
    // Asked to stop, it stops.
    let mut n = 0;
    read_range(&dir.0, 0, 10, |_, _| {
        n += 1;
        n < 2
    })
    .unwrap();
    assert_eq!(n, 2);
}
