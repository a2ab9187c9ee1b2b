//! Durable cursors: for each emitter, the number of the first log record it
//! has not yet delivered, and the records above it that it has already
//! done (batches finish out of order: one is retried while later ones are
//! delivered, or several calls are under way at once). They live in one
//! small file, `CURSORS`, replaced whole on each save (written beside it,
//! synced, renamed over it, the directory synced), so a crash leaves the old
//! cursors or the new ones, never half of each. After a crash an emitter
//! replays from its last saved cursor what that save did not call done: at
//! least once, and never what it had delivered before that save.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The file's first line, and the version of its layout. Version 1 files
/// (cursors alone) are read too.
const MAGIC: &str = "polku-cursors 2";
const MAGIC_1: &str = "polku-cursors 1";

/// The most ranges of done records kept per emitter: past them, the later
/// ones are left out (those records are replayed: more duplicates, never a
/// gap).
pub(crate) const MAX_DONE_RANGES: usize = 256;

/// Where one emitter is in the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Position {
    /// The first record it has not done.
    pub(crate) at: u64,
    /// Records above `at` it has done (delivered, given up on, or never
    /// sent it), as half-open ranges in order: a replay skips them.
    pub(crate) done: Vec<(u64, u64)>,
}

impl Position {
    /// Nothing done above `at`.
    pub(crate) fn at(at: u64) -> Position {
        Position {
            at,
            done: Vec::new(),
        }
    }

    /// Whether record `n` is done.
    pub(crate) fn is_done(&self, n: u64) -> bool {
        n < self.at || self.done.iter().any(|(a, b)| (*a..*b).contains(&n))
    }
}

/// The cursors of a buffer directory.
#[derive(Debug)]
pub(crate) struct Cursors {
    path: PathBuf,
    tmp: PathBuf,
    dir: PathBuf,
    by_name: BTreeMap<String, Position>,
}

impl Cursors {
    /// Reads the cursors saved in `dir` (none if there is no file yet). A
    /// file that fails its checksum is an error, never a guess (the journal
    /// then sets it aside and replays the whole log to every emitter).
    pub(crate) fn open(dir: &Path) -> io::Result<Cursors> {
        let path = dir.join("CURSORS");
        let tmp = dir.join("CURSORS.tmp");
        // A save that did not reach its rename: the old file stands.
        let _ = fs::remove_file(&tmp);
        let by_name = match fs::read(&path) {
            Ok(bytes) => parse(&bytes).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is damaged (checksum or layout)", path.display()),
                )
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e),
        };
        Ok(Cursors {
            path,
            tmp,
            dir: dir.to_owned(),
            by_name,
        })
    }

    /// The saved cursor of an emitter.
    #[cfg(test)]
    pub(crate) fn get(&self, name: &str) -> Option<u64> {
        self.by_name.get(name).map(|p| p.at)
    }

    /// Every saved position, by emitter name.
    pub(crate) fn all(&self) -> &BTreeMap<String, Position> {
        &self.by_name
    }

    /// The lowest cursor: records below it are delivered by every emitter.
    #[cfg(test)]
    pub(crate) fn min(&self) -> Option<u64> {
        self.by_name.values().map(|p| p.at).min()
    }

    /// Sets cursors (emitter name, first undelivered record) and saves the
    /// whole set durably.
    #[cfg(test)]
    pub(crate) fn save(&mut self, updates: &[(&str, u64)]) -> io::Result<()> {
        for (name, at) in updates {
            self.by_name.insert((*name).to_owned(), Position::at(*at));
        }
        self.write()
    }

    /// Replaces every position with `all` and saves, if anything changed.
    pub(crate) fn replace(&mut self, all: BTreeMap<String, Position>) -> io::Result<()> {
        if all == self.by_name {
            return Ok(());
        }
        self.by_name = all;
        self.write()
    }

    /// Forgets an emitter's cursor (it was removed; what it had not
    /// delivered went to its failure store) and saves.
    #[cfg(test)]
    pub(crate) fn remove(&mut self, name: &str) -> io::Result<()> {
        if self.by_name.remove(name).is_some() {
            self.write()?;
        }
        Ok(())
    }

    fn write(&self) -> io::Result<()> {
        let body = render(&self.by_name);
        let mut f = File::create(&self.tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&self.tmp, &self.path)?;
        File::open(&self.dir)?.sync_all()
    }
}

/// The file's bytes: the magic line, one `name\tcursor\tdone` line per
/// emitter (names escaped; done as `a-b` ranges separated by commas), and a
/// last line with the CRC-32 of everything before it.
fn render(by_name: &BTreeMap<String, Position>) -> Vec<u8> {
    use std::fmt::Write as _;
    let mut body = format!("{MAGIC}\n");
    for (name, p) in by_name {
        body.push_str(&escape(name));
        let _ = write!(body, "\t{}\t", p.at);
        for (i, (a, b)) in p.done.iter().enumerate() {
            let _ = write!(body, "{}{a}-{b}", if i > 0 { "," } else { "" });
        }
        body.push('\n');
    }
    let crc = crc32fast::hash(body.as_bytes());
    body.push_str(&format!("crc {crc:08x}\n"));
    body.into_bytes()
}

fn parse(bytes: &[u8]) -> Option<BTreeMap<String, Position>> {
    let text = std::str::from_utf8(bytes).ok()?;
    let body_end = text.trim_end_matches('\n').rfind('\n')? + 1;
    let (body, last) = text.split_at(body_end);
    let crc = u32::from_str_radix(last.trim_end().strip_prefix("crc ")?, 16).ok()?;
    if crc32fast::hash(body.as_bytes()) != crc {
        return None;
    }
    let mut lines = body.lines();
    let version = match lines.next()? {
        MAGIC => 2,
        MAGIC_1 => 1,
        _ => return None,
    };
    let mut out = BTreeMap::new();
    for line in lines {
        let (name, position) = if version == 1 {
            let (name, at) = line.rsplit_once('\t')?;
            (name, Position::at(at.parse().ok()?))
        } else {
            let (rest, done) = line.rsplit_once('\t')?;
            let (name, at) = rest.rsplit_once('\t')?;
            let mut p = Position::at(at.parse().ok()?);
            for range in done.split(',').filter(|r| !r.is_empty()) {
                let (a, b) = range.split_once('-')?;
                p.done.push((a.parse().ok()?, b.parse().ok()?));
            }
            (name, p)
        };
        out.insert(unescape(name)?, position);
    }
    Some(out)
}

/// Names are the operator's or a plugin's: tabs, newlines and backslashes
/// are escaped so that a name never breaks a line.
fn escape(name: &str) -> String {
    name.replace('\\', "\\\\")
        .replace('\t', "\\t")
        .replace('\n', "\\n")
}

fn unescape(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            '\\' => out.push('\\'),
            't' => out.push('\t'),
            'n' => out.push('\n'),
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::log::tests::TempDir;

    #[test]
    fn cursors_survive_a_reopen_and_the_lowest_pins_the_log() {
        let dir = TempDir::new();
        fs::create_dir_all(&dir.0).unwrap();
        let mut c = Cursors::open(&dir.0).unwrap();
        assert_eq!(c.min(), None);
        c.save(&[("stdout", 40), ("odd\tname\\with\nbreaks", 7)])
            .unwrap();
        c.save(&[("stdout", 41)]).unwrap();
        let c = Cursors::open(&dir.0).unwrap();
        assert_eq!(c.get("stdout"), Some(41));
        assert_eq!(c.get("odd\tname\\with\nbreaks"), Some(7));
        assert_eq!(c.min(), Some(7));
        assert_eq!(c.all().len(), 2);
    }

    #[test]
    fn done_ranges_survive_a_reopen_and_version_1_files_still_read() {
        let dir = TempDir::new();
        fs::create_dir_all(&dir.0).unwrap();
        let mut c = Cursors::open(&dir.0).unwrap();
        let p = Position {
            at: 10,
            done: vec![(11, 14), (20, 21)],
        };
        let mut all = BTreeMap::new();
        all.insert("kafka".to_owned(), p.clone());
        all.insert("stdout".to_owned(), Position::at(30));
        c.replace(all.clone()).unwrap();
        let c = Cursors::open(&dir.0).unwrap();
        assert_eq!(c.all(), &all);
        let done: Vec<u64> = (8..22).filter(|n| p.is_done(*n)).collect();
        assert_eq!(done, [8, 9, 11, 12, 13, 20]);
        // A file of the first layout: cursors alone.
        let body = "polku-cursors 1\na\t5\n";
        let file = format!("{body}crc {:08x}\n", crc32fast::hash(body.as_bytes()));
        fs::write(dir.0.join("CURSORS"), file).unwrap();
        let c = Cursors::open(&dir.0).unwrap();
        assert_eq!(c.all()["a"], Position::at(5));
    }

    #[test]
    fn a_removed_emitter_no_longer_pins_the_log() {
        let dir = TempDir::new();
        fs::create_dir_all(&dir.0).unwrap();
        let mut c = Cursors::open(&dir.0).unwrap();
        c.save(&[("a", 3), ("gone", 1)]).unwrap();
        c.remove("gone").unwrap();
        assert_eq!(Cursors::open(&dir.0).unwrap().min(), Some(3));
    }

    #[test]
    fn a_save_cut_before_its_rename_leaves_the_old_cursors() {
        let dir = TempDir::new();
        fs::create_dir_all(&dir.0).unwrap();
        let mut c = Cursors::open(&dir.0).unwrap();
        c.save(&[("a", 5)]).unwrap();
        fs::write(dir.0.join("CURSORS.tmp"), b"polku-cursors 1\na\t9").unwrap();
        let c = Cursors::open(&dir.0).unwrap();
        assert_eq!(c.get("a"), Some(5));
        assert!(!dir.0.join("CURSORS.tmp").exists());
    }

    #[test]
    fn a_damaged_file_is_an_error_not_a_replay_from_zero() {
        let dir = TempDir::new();
        fs::create_dir_all(&dir.0).unwrap();
        let mut c = Cursors::open(&dir.0).unwrap();
        c.save(&[("a", 5)]).unwrap();
        let path = dir.0.join("CURSORS");
        let good = fs::read(&path).unwrap();
        // Cut anywhere before its last newline, the file does not parse.
        for cut in 0..good.len() - 1 {
            assert!(parse(&good[..cut]).is_none(), "a file cut at {cut} parses");
        }
        let mut bytes = good.clone();
        let i = bytes.iter().position(|b| *b == b'5').unwrap();
        bytes[i] = b'6';
        fs::write(&path, &bytes).unwrap();
        let err = Cursors::open(&dir.0).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("damaged"), "{err}");
    }
}
