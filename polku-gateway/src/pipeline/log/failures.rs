//! A failure store's durable copy: one file per emitter under
//! `failures/` in the buffer directory, made of records (the log's framing:
//! length, CRC-32, payload) that each say "these failures were added" or
//! "these numbers are gone". Reading the file back is what was added less
//! what is gone, oldest number first; a torn or damaged tail (a crash
//! mid-write) is cut off where it starts.
//!
//! The store tells changes under its own lock, so they are only noted in
//! memory; [`FailureFile::write`] (from a flush, which the failure-store
//! layer awaits before its call returns, or from the journal's saver) writes
//! and syncs them. When the file is more than twice what it still holds, and
//! past [`COMPACT_FROM`], it is rewritten with only that (beside it, synced,
//! renamed over it).

use super::record::{self, End};
use polku_core::Event;
use polku_core::delivery::{FailureLog, FailureLogError, FlushFuture, StoredFailure};
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

/// A record of failures added: each one's number, when it failed, whether
/// it may be retried, its reason and its event.
const ADDED: u8 = 1;
/// A record of numbers gone.
const REMOVED: u8 = 2;

/// A file smaller than this is never rewritten.
pub(crate) const COMPACT_FROM: u64 = 1 << 20;

/// The largest record a rewrite makes (many failures each).
const REWRITE_RECORD: usize = 1 << 20;

/// The durable copy of one emitter's failure store.
#[derive(Debug, Clone)]
pub(crate) struct FailureFile {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    dir: PathBuf,
    /// Changes told and not yet written.
    pending: Mutex<Pending>,
    /// The open file; held while writing, so a flush that finds nothing
    /// pending returns only after an earlier write's sync.
    file: Mutex<Writer>,
    /// Writes or syncs that failed.
    failures: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Default)]
struct Pending {
    /// Whole records, ready to append.
    buf: Vec<u8>,
    /// Encoded size of each failure the file still holds, by number.
    live: HashMap<u64, u32>,
    live_bytes: u64,
}

#[derive(Debug)]
struct Writer {
    file: File,
    len: u64,
}

/// What opening a failure file found.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    /// The failures it holds, by number, oldest first.
    pub(crate) failures: Vec<(u64, StoredFailure)>,
    /// Bytes cut off a torn or damaged end.
    pub(crate) cut_bytes: u64,
    /// Failures whose event could not be decoded (skipped).
    pub(crate) undecodable: u64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The file name for an emitter: its name with every byte but letters,
/// digits, `-` and `_` written `%XX` (so no name reaches outside the
/// directory), cut and given a checksum if long.
pub(crate) fn file_name(emitter: &str) -> String {
    let mut out = String::with_capacity(emitter.len());
    for b in emitter.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.len() > 160 {
        out.truncate(160);
        out.push_str(&format!("~{:08x}", crc32fast::hash(emitter.as_bytes())));
    }
    out.push_str(".failures");
    out
}

impl FailureFile {
    /// Opens (or creates) `emitter`'s file in `dir`, reads what it holds,
    /// and cuts off a torn end. A file with much dead weight is rewritten.
    pub(crate) fn open(dir: &Path, emitter: &str) -> io::Result<(FailureFile, Recovered)> {
        fs::create_dir_all(dir)?;
        let path = dir.join(file_name(emitter));
        let tmp = path.with_extension("tmp");
        // A rewrite that did not reach its rename: the old file stands.
        let _ = fs::remove_file(&tmp);
        let (entries, end, len) = match File::open(&path) {
            Ok(f) => read_entries(f)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => (BTreeMap::new(), End::Clean, 0),
            Err(e) => return Err(e),
        };
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)?;
        let mut recovered = Recovered::default();
        let kept = match end {
            End::Clean => len,
            End::Torn(at) | End::Corrupt(at) => {
                file.set_len(at)?;
                file.sync_all()?;
                recovered.cut_bytes = len - at;
                at
            }
        };
        let mut pending = Pending::default();
        for (seq, entry) in &entries {
            pending.live.insert(*seq, entry.len() as u32);
            pending.live_bytes += entry.len() as u64;
            match decode_entry(entry) {
                Some(f) => recovered.failures.push((*seq, f)),
                None => recovered.undecodable += 1,
            }
        }
        if kept == 0 {
            super::sync_dir(dir)?;
        }
        let inner = Arc::new(Inner {
            path,
            dir: dir.to_owned(),
            pending: Mutex::new(pending),
            file: Mutex::new(Writer { file, len: kept }),
            failures: Default::default(),
        });
        let f = FailureFile { inner };
        f.write()?;
        Ok((f, recovered))
    }

    /// Writes and syncs what was told so far; rewrites the file if it is
    /// mostly dead weight. On an error nothing told is forgotten: the next
    /// write tries again.
    pub(crate) fn write(&self) -> io::Result<()> {
        self.inner.write()
    }

    /// Bytes of the file on disk.
    pub(crate) fn disk_bytes(&self) -> u64 {
        lock(&self.inner.file).len
    }

    /// Whether changes wait to be written.
    pub(crate) fn has_pending(&self) -> bool {
        !lock(&self.inner.pending).buf.is_empty()
    }

    /// Writes or syncs that failed so far.
    pub(crate) fn write_failures(&self) -> u64 {
        self.inner
            .failures
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether nothing but the journal holds this file (its store is gone).
    pub(crate) fn unused(&self) -> bool {
        Arc::strong_count(&self.inner) == 1
    }
}

impl Inner {
    fn write(&self) -> io::Result<()> {
        let done = self.write_once();
        if done.is_err() {
            self.failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        done
    }

    fn write_once(&self) -> io::Result<()> {
        let mut w = lock(&self.file);
        let (buf, live_bytes) = {
            let mut p = lock(&self.pending);
            (std::mem::take(&mut p.buf), p.live_bytes)
        };
        if !buf.is_empty() {
            let done = w.file.write_all(&buf).and_then(|()| w.file.sync_data());
            if let Err(e) = done {
                // Cut back what may have been half written; keep the changes.
                let _ = w.file.set_len(w.len);
                let mut p = lock(&self.pending);
                let later = std::mem::replace(&mut p.buf, buf);
                p.buf.extend_from_slice(&later);
                return Err(e);
            }
            w.len += buf.len() as u64;
        }
        if w.len > COMPACT_FROM && w.len > 2 * live_bytes {
            self.rewrite(&mut w)?;
        }
        Ok(())
    }

    /// Rewrites the file with only the failures it still holds.
    fn rewrite(&self, w: &mut Writer) -> io::Result<()> {
        let (entries, _, _) = read_entries(File::open(&self.path)?)?;
        let tmp = self.path.with_extension("tmp");
        let mut out = Vec::new();
        let mut payload = vec![ADDED];
        for entry in entries.values() {
            if payload.len() > 1 && payload.len() + entry.len() > REWRITE_RECORD {
                push_record(&mut out, &payload);
                payload.truncate(1);
            }
            payload.extend_from_slice(entry);
        }
        if payload.len() > 1 {
            push_record(&mut out, &payload);
        }
        let mut f = File::create(&tmp)?;
        f.write_all(&out)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, &self.path)?;
        super::sync_dir(&self.dir)?;
        w.file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&self.path)?;
        w.len = out.len() as u64;
        Ok(())
    }
}

impl FailureLog for FailureFile {
    fn added(&self, failures: &mut dyn Iterator<Item = (u64, &StoredFailure)>) {
        let mut payload = vec![ADDED];
        let mut sizes = Vec::new();
        for (seq, f) in failures {
            let start = payload.len();
            encode_entry(&mut payload, seq, f);
            sizes.push((seq, (payload.len() - start) as u32));
        }
        if sizes.is_empty() {
            return;
        }
        let mut p = lock(&self.inner.pending);
        for (seq, size) in sizes {
            p.live.insert(seq, size);
            p.live_bytes += u64::from(size);
        }
        push_record(&mut p.buf, &payload);
    }

    fn removed(&self, seqs: &[u64]) {
        let mut payload = Vec::with_capacity(1 + seqs.len() * 8);
        payload.push(REMOVED);
        for seq in seqs {
            payload.extend_from_slice(&seq.to_le_bytes());
        }
        let mut p = lock(&self.inner.pending);
        for seq in seqs {
            if let Some(size) = p.live.remove(seq) {
                p.live_bytes -= u64::from(size);
            }
        }
        push_record(&mut p.buf, &payload);
    }

    fn flush(&self) -> FlushFuture {
        let inner = self.inner.clone();
        Box::pin(async move {
            let done = match tokio::runtime::Handle::try_current() {
                Ok(_) => tokio::task::spawn_blocking(move || inner.write())
                    .await
                    .unwrap_or_else(|e| Err(io::Error::other(e.to_string()))),
                Err(_) => inner.write(),
            };
            done.map_err(|e| FailureLogError(e.to_string()))
        })
    }
}

fn push_record(buf: &mut Vec<u8>, payload: &[u8]) {
    buf.extend_from_slice(&record::header(payload));
    buf.extend_from_slice(payload);
}

/// One failure: number, time, retryable, reason, event.
fn encode_entry(out: &mut Vec<u8>, seq: u64, f: &StoredFailure) {
    use prost::Message as _;
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&f.failed_at_unix_ns.to_le_bytes());
    out.push(u8::from(f.retryable));
    out.extend_from_slice(&(f.reason.len() as u32).to_le_bytes());
    out.extend_from_slice(f.reason.as_bytes());
    out.extend_from_slice(&(f.event.encoded_len() as u32).to_le_bytes());
    f.event.encode(out).expect("a Vec grows");
}

/// Splits an entry off the front of `rest`: its number and its bytes.
fn split_entry<'a>(rest: &mut &'a [u8]) -> Option<(u64, &'a [u8])> {
    let all = *rest;
    let seq = u64::from_le_bytes(all.get(..8)?.try_into().ok()?);
    let reason_len = u32::from_le_bytes(all.get(17..21)?.try_into().ok()?) as usize;
    let ev_at = 21 + reason_len;
    let ev_len = u32::from_le_bytes(all.get(ev_at..ev_at + 4)?.try_into().ok()?) as usize;
    let end = ev_at + 4 + ev_len;
    let entry = all.get(..end)?;
    *rest = &all[end..];
    Some((seq, entry))
}

fn decode_entry(entry: &[u8]) -> Option<StoredFailure> {
    use prost::Message as _;
    let failed_at_unix_ns = i64::from_le_bytes(entry.get(8..16)?.try_into().ok()?);
    let retryable = *entry.get(16)? != 0;
    let reason_len = u32::from_le_bytes(entry.get(17..21)?.try_into().ok()?) as usize;
    let reason = std::str::from_utf8(entry.get(21..21 + reason_len)?)
        .ok()?
        .to_owned();
    let event = Event::decode(entry.get(21 + reason_len + 4..)?).ok()?;
    Some(StoredFailure {
        event,
        reason,
        retryable,
        failed_at_unix_ns,
    })
}

/// Every failure the file holds (raw entries by number), how reading ended,
/// and the file's length.
type Entries = (BTreeMap<u64, Vec<u8>>, End, u64);

fn read_entries(f: File) -> io::Result<Entries> {
    let len = f.metadata()?.len();
    let mut entries = BTreeMap::new();
    let mut damaged = None;
    let end = record::scan(io::BufReader::new(f), |at, payload| {
        if damaged.is_some() {
            return Ok(());
        }
        match payload.split_first() {
            Some((&ADDED, mut rest)) => {
                while !rest.is_empty() {
                    let Some((seq, entry)) = split_entry(&mut rest) else {
                        damaged = Some(at);
                        return Ok(());
                    };
                    entries.insert(seq, entry.to_vec());
                }
            }
            Some((&REMOVED, rest)) if rest.len() % 8 == 0 => {
                for n in rest.chunks_exact(8) {
                    entries.remove(&u64::from_le_bytes(n.try_into().expect("8 bytes")));
                }
            }
            _ => damaged = Some(at),
        }
        Ok(())
    })?;
    // A record that passed its checksum but does not parse ends the file
    // as a damaged one does.
    let end = match damaged {
        Some(at) => End::Corrupt(at),
        None => end,
    };
    Ok((entries, end, len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::log::tests::TempDir;
    use polku_core::delivery::FailureStore;

    fn failure(id: &str) -> StoredFailure {
        StoredFailure::new(
            Event::new("t")
                .with_id(id)
                .with_payload(bytes::Bytes::from(format!("payload of {id}"))),
            format!("refused {id}"),
            id.ends_with('r'),
        )
    }

    fn ids(failures: &[(u64, StoredFailure)]) -> Vec<String> {
        failures
            .iter()
            .map(|(_, f)| f.event.id.to_string())
            .collect()
    }

    /// A store with its copy in `dir`, as the gateway attaches one.
    fn store(dir: &Path) -> (Arc<FailureStore>, FailureFile, Recovered) {
        let (file, mut recovered) = FailureFile::open(dir, "hook").unwrap();
        let store = Arc::new(FailureStore::new(100, 1 << 20).unwrap());
        assert!(store.attach(
            Arc::new(file.clone()),
            std::mem::take(&mut recovered.failures)
        ));
        (store, file, recovered)
    }

    #[tokio::test]
    async fn what_a_store_holds_comes_back_after_a_restart() {
        let dir = TempDir::new();
        let (s, _file, _) = store(dir.0.as_path());
        s.push(["a", "b", "c", "dr"].map(failure));
        let taken = s.take(2); // a resend under way
        s.flush().await.unwrap();
        drop(s);
        drop(taken); // done only after the flush: the copy still has a, b
        let (file, rec) = FailureFile::open(dir.0.as_path(), "hook").unwrap();
        assert_eq!(ids(&rec.failures), ["a", "b", "c", "dr"]);
        let (_, f) = &rec.failures[3];
        assert_eq!(f.reason, "refused dr");
        assert!(f.retryable);
        assert_eq!(&f.event.payload[..], b"payload of dr");
        assert_eq!(rec.cut_bytes, 0);
        drop(file);

        // Reopened, a resend that is done and flushed is gone for good.
        let (s, _file, rec) = store(dir.0.as_path());
        assert!(rec.failures.is_empty(), "moved into the store");
        assert_eq!(s.len(), 4);
        drop(s.take(3));
        s.push([failure("e")]);
        s.flush().await.unwrap();
        let (_, rec) = FailureFile::open(dir.0.as_path(), "hook").unwrap();
        assert_eq!(ids(&rec.failures), ["dr", "e"]);
    }

    #[tokio::test]
    async fn a_put_back_resend_keeps_its_place() {
        let dir = TempDir::new();
        let (s, _file, _) = store(dir.0.as_path());
        s.push(["a", "b", "c"].map(failure));
        let taken = s.take(2);
        s.push([failure("d")]);
        s.put_back(taken);
        s.flush().await.unwrap();
        let (s2, _f2, _) = store(dir.0.as_path());
        let listed: Vec<String> = s2
            .list(0, 10)
            .iter()
            .map(|f| f.event.id.to_string())
            .collect();
        assert_eq!(listed, ["a", "b", "c", "d"]);
        drop(s);
    }

    #[tokio::test]
    async fn a_torn_end_is_cut_and_the_rest_kept() {
        let dir = TempDir::new();
        let (s, file, _) = store(dir.0.as_path());
        s.push(["a", "b"].map(failure));
        s.flush().await.unwrap();
        let whole = file.disk_bytes();
        s.push([failure("c")]);
        s.flush().await.unwrap();
        drop((s, file));
        let path = dir.0.as_path().join(file_name("hook"));
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(whole + 5).unwrap(); // c's record cut short
        drop(f);
        let (file, rec) = FailureFile::open(dir.0.as_path(), "hook").unwrap();
        assert_eq!(ids(&rec.failures), ["a", "b"]);
        assert_eq!(rec.cut_bytes, 5);
        assert_eq!(file.disk_bytes(), whole);
    }

    #[tokio::test]
    async fn a_file_of_mostly_dead_weight_is_rewritten() {
        let dir = TempDir::new();
        let (s, file, _) = store(dir.0.as_path());
        let big = |id: &str| {
            let mut f = failure(id);
            f.event.payload = bytes::Bytes::from(vec![b'x'; 4000]);
            f
        };
        let mut peak = 0;
        for round in 0..600 {
            s.push([big(&format!("r{round}"))]);
            if round % 50 != 49 {
                drop(s.take(1));
            }
            s.flush().await.unwrap();
            peak = peak.max(file.disk_bytes());
        }
        // 600 × 4 kB went through; 12 are still held, the file was
        // rewritten (else it would be 2.4 MB).
        assert_eq!(s.len(), 12);
        assert!(
            peak <= 2 * COMPACT_FROM + 8192,
            "the file grew to {peak} bytes"
        );
        drop((s, file));
        let (_, rec) = FailureFile::open(dir.0.as_path(), "hook").unwrap();
        // Oldest first out: the newest twelve are left, read back whole.
        let want: Vec<String> = (588..600).map(|r| format!("r{r}")).collect();
        assert_eq!(ids(&rec.failures), want);
        assert!(
            rec.failures
                .iter()
                .all(|(_, f)| f.event.payload.len() == 4000)
        );
    }

    #[test]
    fn names_stay_inside_the_directory() {
        assert_eq!(file_name("webhook"), "webhook.failures");
        assert_eq!(file_name("../x/y"), "%2E%2E%2Fx%2Fy.failures");
        let long = file_name(&"é".repeat(200));
        assert!(long.len() < 200, "{long}");
        assert_ne!(long, file_name(&"é".repeat(201)));
    }
}
