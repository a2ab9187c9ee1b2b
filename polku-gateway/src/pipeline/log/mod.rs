//! The append-only log under the durable buffer (`POLKU_BUFFER_DIR`): records
//! numbered from 0 in bounded segment files, each record checksummed (see
//! [`record`]). A record is on disk once [`Log::sync`] returns; a segment
//! goes once everything in it is behind every reader ([`Log::trim`]).
//!
//! Opening a directory takes its lock (a second gateway on it is an error),
//! reads every segment back, cuts a torn tail off the last one, and reports
//! a corrupt segment (its records up to the damage are kept) instead of
//! failing.
//!
//! Segment files are named by the number of their first record
//! (`00000000000000000042.seg`), so the log's order is the names' order.
//!
//! This part is the log alone; the buffer that acknowledges after
//! [`Log::sync`] and the emitters' cursors come next (issue 17).

pub(crate) mod commit;
pub(crate) mod cursor;
pub(crate) mod failures;
pub(crate) mod record;

use record::{End, HEADER, MAX_RECORD};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Why the log could not do what it was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum LogError {
    /// Another process holds the directory's lock.
    #[error("buffer directory {dir} is in use by another gateway (its lock file is held)")]
    Locked {
        /// The directory.
        dir: PathBuf,
    },
    /// A record over the size a record may have.
    #[error("a record of {len} bytes is over the limit of {MAX_RECORD}")]
    TooLarge {
        /// Its size.
        len: usize,
    },
    /// The record would take the log past its disk budget
    /// (`POLKU_BUFFER_MAX_DISK_BYTES`).
    #[error(
        "the buffer's disk budget is full: {used} of {max} bytes in use (POLKU_BUFFER_MAX_DISK_BYTES), \
         a record of {len} bytes does not fit; the emitters are behind, retry later"
    )]
    Full {
        /// Bytes the log takes now.
        used: u64,
        /// The budget.
        max: u64,
        /// The record's size on disk.
        len: u64,
    },
    /// Reading or writing failed (a full disk is `ENOSPC` here).
    #[error("buffer directory {dir}: {source}")]
    Io {
        /// The directory.
        dir: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// What opening found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Recovery {
    /// Records read back.
    pub(crate) records: u64,
    /// Bytes cut off the end of the last segment: a record that was being
    /// written when the process stopped (never acknowledged: it was not
    /// synced).
    pub(crate) torn_bytes: u64,
    /// Segments with a damaged record: what follows the damage in them is
    /// lost, and said so in the log.
    pub(crate) corrupt_segments: Vec<PathBuf>,
}

#[derive(Debug)]
struct Segment {
    /// The number of its first record.
    first: u64,
    /// How many records it holds.
    records: u64,
    /// Its size in bytes.
    bytes: u64,
    path: PathBuf,
}

impl Segment {
    fn end(&self) -> u64 {
        self.first + self.records
    }
}

/// An append-only log of records in segment files.
#[derive(Debug)]
pub(crate) struct Log {
    dir: PathBuf,
    segment_bytes: u64,
    /// Oldest first; the last is the one written to.
    segments: Vec<Segment>,
    writer: BufWriter<File>,
    /// Bytes of the last segment on disk at the last sync (or handed to
    /// the kernel at the last [`write_out`](Log::write_out)): what a
    /// rollback keeps.
    synced_bytes: u64,
    /// Records of the last segment at the same point.
    synced_records: u64,
    /// Held for the log's life: the directory's lock.
    _lock: File,
}

fn name(first: u64) -> String {
    format!("{first:020}.seg")
}

impl Log {
    /// Opens (or creates) the log in `dir`, with segments of about
    /// `segment_bytes` each, and recovers what is there.
    pub(crate) fn open(dir: &Path, segment_bytes: u64) -> Result<(Log, Recovery), LogError> {
        let io = |source| LogError::Io {
            dir: dir.to_owned(),
            source,
        };
        fs::create_dir_all(dir).map_err(io)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("LOCK"))
            .map_err(io)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(LogError::Locked {
                    dir: dir.to_owned(),
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        let mut firsts: Vec<u64> = Vec::new();
        for entry in fs::read_dir(dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let file = entry.file_name();
            let Some(stem) = file.to_str().and_then(|n| n.strip_suffix(".seg")) else {
                continue;
            };
            if let Ok(first) = stem.parse::<u64>() {
                firsts.push(first);
            }
        }
        firsts.sort_unstable();
        let mut recovery = Recovery::default();
        let mut segments: Vec<Segment> = Vec::new();
        let count = firsts.len();
        for (i, first) in firsts.into_iter().enumerate() {
            let path = dir.join(name(first));
            // A segment that does not start where the one before ended (its
            // predecessor was damaged): it still holds good records, under
            // its own numbers.
            let mut records = 0u64;
            let file = File::open(&path).map_err(io)?;
            let end = record::scan(BufReader::new(file), |_, _| {
                records += 1;
                Ok(())
            })
            .map_err(io)?;
            let len = fs::metadata(&path).map_err(io)?.len();
            let bytes = match end {
                End::Clean => len,
                End::Torn(at) if i + 1 == count => {
                    // The tail of the last segment: a write that did not
                    // finish. It is cut off below, before writing goes on.
                    recovery.torn_bytes += len - at;
                    tracing::warn!(segment = %path.display(), bytes = len - at, "buffer log: cut off a record that was being written when the gateway stopped");
                    at
                }
                End::Torn(at) | End::Corrupt(at) => {
                    tracing::error!(segment = %path.display(), offset = at, records, "buffer log: a damaged segment; the records after the damage in it are lost");
                    recovery.corrupt_segments.push(path.clone());
                    at
                }
            };
            recovery.records += records;
            segments.push(Segment {
                first,
                records,
                bytes,
                path,
            });
        }
        // Writing goes on in the last segment, from its last whole record
        // (a damaged tail is cut off: it was reported above).
        if segments.is_empty() {
            segments.push(Segment {
                first: 0,
                records: 0,
                bytes: 0,
                path: dir.join(name(0)),
            });
        }
        let last = segments.last().expect("one segment at least");
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&last.path)
            .map_err(io)?;
        if file.metadata().map_err(io)?.len() > last.bytes {
            file.set_len(last.bytes).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        file.seek(SeekFrom::Start(last.bytes)).map_err(io)?;
        let synced_bytes = last.bytes;
        let synced_records = last.records;
        if last.records == 0 {
            sync_dir(dir).map_err(io)?;
        }
        Ok((
            Log {
                dir: dir.to_owned(),
                segment_bytes: segment_bytes.max(1),
                segments,
                writer: BufWriter::with_capacity(64 << 10, file),
                synced_bytes,
                synced_records,
                _lock: lock,
            },
            recovery,
        ))
    }

    fn io(&self, source: io::Error) -> LogError {
        LogError::Io {
            dir: self.dir.clone(),
            source,
        }
    }

    /// The number the next record gets.
    pub(crate) fn next(&self) -> u64 {
        self.segments.last().map_or(0, Segment::end)
    }

    /// The number of the oldest record still in the log.
    pub(crate) fn first(&self) -> u64 {
        self.segments.first().map_or(0, |s| s.first)
    }

    /// Bytes the segment files take.
    pub(crate) fn disk_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Appends a record; gives its number. It is on disk only once
    /// [`sync`](Self::sync) returns.
    pub(crate) fn append(&mut self, payload: &[u8]) -> Result<u64, LogError> {
        if payload.len() > MAX_RECORD {
            return Err(LogError::TooLarge { len: payload.len() });
        }
        let size = (HEADER + payload.len()) as u64;
        let last = self.segments.last().expect("one segment at least");
        if last.records > 0 && last.bytes + size > self.segment_bytes {
            self.roll()?;
        }
        let h = record::header(payload);
        let written = self
            .writer
            .write_all(&h)
            .and_then(|()| self.writer.write_all(payload));
        if let Err(e) = written {
            return Err(self.io(e));
        }
        let last = self.segments.last_mut().expect("one segment at least");
        last.records += 1;
        last.bytes += size;
        Ok(last.end() - 1)
    }

    /// Starts a new segment after the current one (synced first).
    fn roll(&mut self) -> Result<(), LogError> {
        self.sync()?;
        let first = self.next();
        let path = self.dir.join(name(first));
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(|e| self.io(e))?;
        sync_dir(&self.dir).map_err(|e| self.io(e))?;
        self.writer = BufWriter::with_capacity(64 << 10, file);
        self.synced_bytes = 0;
        self.synced_records = 0;
        self.segments.push(Segment {
            first,
            records: 0,
            bytes: 0,
            path,
        });
        Ok(())
    }

    /// Writes what was appended and waits until the disk has it.
    pub(crate) fn sync(&mut self) -> Result<(), LogError> {
        let synced = self
            .writer
            .flush()
            .and_then(|()| self.writer.get_ref().sync_data());
        synced.map_err(|e| self.io(e))?;
        let last = self.segments.last().expect("one segment at least");
        self.synced_bytes = last.bytes;
        self.synced_records = last.records;
        Ok(())
    }

    /// Hands what was appended to the kernel without waiting for the disk
    /// (the sync interval's acknowledgement): a crash of the process no
    /// longer loses it, a crash of the machine may. A rollback keeps it.
    pub(crate) fn write_out(&mut self) -> Result<(), LogError> {
        self.writer.flush().map_err(|e| self.io(e))?;
        let last = self.segments.last().expect("one segment at least");
        self.synced_bytes = last.bytes;
        self.synced_records = last.records;
        Ok(())
    }

    /// Forgets what was appended since the last sync: after a failed append
    /// or sync, the segment is cut back to what the disk is known to hold,
    /// so that the records written next follow a whole record, never a torn
    /// one (which would hide them from recovery).
    pub(crate) fn rollback(&mut self) -> Result<(), LogError> {
        // The buffered bytes are thrown away, not flushed: a new writer over
        // a second handle to the file, and the old one taken apart.
        let file = self.writer.get_ref().try_clone().map_err(|e| self.io(e))?;
        let old = std::mem::replace(&mut self.writer, BufWriter::with_capacity(64 << 10, file));
        drop(old.into_parts());
        let file = self.writer.get_mut();
        let cut = file
            .set_len(self.synced_bytes)
            .and_then(|()| file.seek(SeekFrom::Start(self.synced_bytes)).map(drop));
        cut.map_err(|e| self.io(e))?;
        let last = self.segments.last_mut().expect("one segment at least");
        last.bytes = self.synced_bytes;
        last.records = self.synced_records;
        Ok(())
    }

    /// The segment written to, and how much of it the last sync covered.
    #[cfg(test)]
    fn synced_tail(&self) -> (PathBuf, u64) {
        let last = self.segments.last().expect("one segment at least");
        (last.path.clone(), self.synced_bytes)
    }

    /// Up to `max` records from number `from` on (those appended and
    /// flushed), with their numbers. Records trimmed away are skipped.
    #[cfg(test)]
    pub(crate) fn read(&mut self, from: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>, LogError> {
        use std::io::Read as _;
        self.writer.flush().map_err(|e| self.io(e))?;
        let mut out = Vec::new();
        for seg in &self.segments {
            if out.len() >= max {
                break;
            }
            if seg.end() <= from || seg.records == 0 {
                continue;
            }
            let mut file = File::open(&seg.path).map_err(|e| self.io(e))?;
            let mut n = seg.first;
            let mut reader = BufReader::new((&mut file).take(seg.bytes));
            let end = record::scan(&mut reader, |_, payload| {
                if n >= from && out.len() < max {
                    out.push((n, payload));
                }
                n += 1;
                Ok(())
            });
            end.map_err(|e| self.io(e))?;
        }
        Ok(out)
    }

    /// Removes every segment whose records are all below `below`; gives
    /// how many went. The segment written to stays.
    pub(crate) fn trim(&mut self, below: u64) -> Result<usize, LogError> {
        let mut gone = 0;
        while self.segments.len() > 1 && self.segments[0].end() <= below {
            let seg = self.segments.remove(0);
            fs::remove_file(&seg.path).map_err(|e| self.io(e))?;
            gone += 1;
        }
        if gone > 0 {
            sync_dir(&self.dir).map_err(|e| self.io(e))?;
        }
        Ok(gone)
    }
}

/// Reads the records numbered `from..end` of the log in `dir` in order,
/// without the log itself (which a committing thread owns meanwhile): for a
/// replay after a restart. `each` gets every record's number and payload,
/// and says whether to go on. Records past `end` (being written now) are
/// never read; a damaged segment ends its part of the range, as it did on
/// opening.
pub(crate) fn read_range(
    dir: &Path,
    from: u64,
    end: u64,
    mut each: impl FnMut(u64, Vec<u8>) -> bool,
) -> io::Result<()> {
    let mut firsts: Vec<u64> = Vec::new();
    for entry in fs::read_dir(dir)? {
        let file = entry?.file_name();
        if let Some(first) = file
            .to_str()
            .and_then(|n| n.strip_suffix(".seg"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            firsts.push(first);
        }
    }
    firsts.sort_unstable();
    // The reading stops (early or at `end`) by an error of this kind.
    let stop = || io::Error::other("stop");
    for (i, first) in firsts.iter().enumerate() {
        if *first >= end {
            break;
        }
        if firsts.get(i + 1).is_some_and(|next| *next <= from) {
            continue;
        }
        let file = match File::open(dir.join(name(*first))) {
            Ok(f) => f,
            // Trimmed meanwhile: everything in it was delivered.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let mut n = *first;
        let mut done = false;
        let r = record::scan(BufReader::new(file), |_, payload| {
            let at = n;
            n += 1;
            if at >= end || (at >= from && !each(at, payload)) {
                done = true;
                return Err(stop());
            }
            Ok(())
        });
        if done {
            return Ok(());
        }
        r?;
    }
    Ok(())
}

/// Makes a directory's entries (new or removed files) durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
pub(crate) mod tests;
