//! Events to standard output.

use async_trait::async_trait;
use polku_core::{EmitError, Emitter, Event, Severity};
use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use tokio::sync::{Semaphore, oneshot};

/// Formatted lines that may wait for the writer at once; past this a call
/// waits for room (a slow reader of stdout pushes back, memory stays flat).
const PENDING_MAX: usize = 1 << 20;

/// While busy, the writer writes at most once in this time: what arrives
/// meanwhile waits and goes in the next write. A write after a quiet spell
/// goes at once.
const GATHER: std::time::Duration = std::time::Duration::from_millis(1);

/// Calls the gateway may have under way at once: each formats its events and
/// waits for the write, and the writer writes what they gathered at once.
/// What arrives meanwhile waits in the emitter's queue, and the next call
/// takes it all (up to `GATHER_EVENTS`).
const CALLS_AT_ONCE: usize = 4;

/// The most events one call takes from the batches queued for it: the
/// events of a thousand unary requests go in one call.
const GATHER_EVENTS: usize = 1000;

/// Small calls' lines gather in buffers of up to this size (one write
/// each), which start at `SEGMENT_START` and grow as lines arrive.
const SEGMENT: usize = 64 << 10;
const SEGMENT_START: usize = 4 << 10;

/// How the [`StdoutEmitter`] writes events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StdoutFormat {
    /// One JSON object per line, in event.proto's field names (for machines).
    #[default]
    JsonLines,
    /// One aligned, readable line per event (for people).
    Pretty,
}

/// Writes each event to standard output (or another writer).
///
/// A call formats its batch on the runtime and hands the lines to a writer
/// thread of the emitter's own, then waits until they are written: an event
/// is delivered once the write returned. The writer gathers what every call
/// under way handed it and writes it in one go (one `write` and flush for
/// many small batches, as unary requests make), so a slow terminal or pipe
/// never blocks the async runtime. It asks the gateway for four calls at
/// most, each taking every batch queued meanwhile (up to 1000 events). At most 1 MiB of lines wait for the
/// writer; past that calls wait, so a slow reader pushes back.
pub struct StdoutEmitter {
    format: StdoutFormat,
    shared: Arc<Shared>,
}

/// What the calls and the writer thread share.
struct Shared {
    pending: Mutex<Pending>,
    /// Signalled when lines arrive or the emitter goes.
    wake: Condvar,
    /// Bytes of lines that may still wait for the writer.
    room: Semaphore,
}

/// Lines waiting for the writer, and the calls waiting on them.
#[derive(Default)]
struct Pending {
    /// The lines, in order: a batch's own buffer as it came (never copied
    /// into another), small calls' lines gathered in one.
    lines: Vec<Vec<u8>>,
    /// Whether the last of `lines` gathers small calls' lines.
    gathering: bool,
    waiters: Vec<oneshot::Sender<Result<(), std::io::Error>>>,
    /// Room the waiting lines hold, given back once written.
    held: usize,
    closed: bool,
}

impl std::fmt::Debug for StdoutEmitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StdoutEmitter")
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

impl Default for StdoutEmitter {
    fn default() -> Self {
        Self::new()
    }
}

impl StdoutEmitter {
    /// JSON lines to standard output.
    pub fn new() -> Self {
        Self::with_writer(StdoutFormat::JsonLines, std::io::stdout())
    }

    /// Readable lines to standard output.
    pub fn pretty() -> Self {
        Self::with_writer(StdoutFormat::Pretty, std::io::stdout())
    }

    /// The given format to any writer (a file, a pipe, a buffer in a test),
    /// written from a thread of the emitter's own.
    pub fn with_writer(format: StdoutFormat, out: impl Write + Send + 'static) -> Self {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            room: Semaphore::new(PENDING_MAX),
        });
        let writer = shared.clone();
        std::thread::Builder::new()
            .name("polku-stdout".into())
            .spawn(move || write_loop(&writer, out))
            .expect("cannot start the stdout writer thread");
        StdoutEmitter { format, shared }
    }

    /// The format in use.
    pub fn format(&self) -> StdoutFormat {
        self.format
    }
}

/// Batches up to this many events are formatted into a scratch buffer.
const SMALL: usize = 64;

thread_local! {
    /// Where a small batch is formatted before it is copied to the writer.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The write's result, for one call.
type Written = oneshot::Receiver<Result<(), std::io::Error>>;

impl StdoutEmitter {
    /// Room for `len` bytes of lines (a batch bigger than all of it takes
    /// all of it), waiting while the writer is behind.
    async fn room(&self, len: usize) -> Result<usize, EmitError> {
        let need = len.min(PENDING_MAX);
        self.shared
            .room
            .acquire_many(need as u32)
            .await
            .map_err(|_| EmitError::unavailable("the stdout writer is gone", None))?
            .forget();
        Ok(need)
    }

    /// Adds `lines`, which hold `room` of the room, to what the writer
    /// writes next: a batch's buffer is moved in as it is; a small call's
    /// lines are copied to the end of the last small buffer, or a new one.
    fn hand_over(&self, lines: Cow<'_, [u8]>, room: usize) -> Written {
        let (tx, rx) = oneshot::channel();
        let mut p = self.shared.lock();
        let was_empty = p.lines.is_empty();
        let gathering = std::mem::replace(&mut p.gathering, false);
        match lines {
            Cow::Owned(owned) => p.lines.push(owned),
            Cow::Borrowed(small) => match p.lines.last_mut() {
                // Into a gathering buffer (growing up to SEGMENT), or into a
                // batch's spare room (never reallocating the batch).
                Some(last)
                    if (gathering && last.len() + small.len() <= SEGMENT)
                        || last.len() + small.len() <= last.capacity() =>
                {
                    last.extend_from_slice(small);
                    p.gathering = gathering;
                }
                _ => {
                    // Small to start with: between batches, many calls could
                    // each start one (their room counts bytes, not capacity).
                    let mut seg = Vec::with_capacity(small.len().max(SEGMENT_START));
                    seg.extend_from_slice(small);
                    p.lines.push(seg);
                    p.gathering = true;
                }
            },
        }
        p.waiters.push(tx);
        p.held += room;
        if was_empty {
            self.shared.wake.notify_one();
        }
        rx
    }
}

impl Drop for StdoutEmitter {
    fn drop(&mut self) {
        // The writer writes what it holds, then ends.
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The writer thread: takes everything waiting, writes and flushes it,
/// tells the calls how it went, gives their room back; until the emitter
/// is dropped and nothing waits.
fn write_loop(shared: &Shared, mut out: impl Write) {
    let mut lines = Vec::new();
    let mut last = std::time::Instant::now() - GATHER;
    loop {
        let (waiters, held) = {
            let mut p = shared.lock();
            while p.lines.is_empty() && !p.closed {
                p = shared.wake.wait(p).unwrap_or_else(PoisonError::into_inner);
            }
            if p.lines.is_empty() {
                return;
            }
            // Busy (the last write was just now): let lines gather for the
            // rest of GATHER, so that a stream of small calls makes one
            // write (and one switch of threads) per GATHER, not one each.
            let since = last.elapsed();
            if since < GATHER && !p.closed {
                drop(p);
                std::thread::sleep(GATHER - since);
                p = shared.lock();
            }
            last = std::time::Instant::now();
            std::mem::swap(&mut p.lines, &mut lines);
            p.gathering = false;
            (std::mem::take(&mut p.waiters), std::mem::take(&mut p.held))
        };
        let result = lines
            .iter()
            .try_for_each(|seg| out.write_all(seg))
            .and_then(|()| out.flush());
        lines.clear();
        shared.room.add_permits(held);
        for w in waiters {
            let _ = w.send(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            });
        }
    }
}

#[async_trait]
impl Emitter for StdoutEmitter {
    fn name(&self) -> &str {
        "stdout"
    }

    async fn emit(&self, events: &[Event]) -> Result<(), EmitError> {
        if events.is_empty() {
            return Ok(());
        }
        let line = |buf: &mut Vec<u8>, e: &Event| {
            match self.format {
                StdoutFormat::JsonLines => polku_core::json::write_event(buf, e),
                StdoutFormat::Pretty => write_pretty(buf, e),
            }
            buf.push(b'\n');
        };
        let format = |buf: &mut Vec<u8>| events.iter().for_each(|e| line(buf, e));
        let written = if events.len() <= SMALL {
            // A small batch (a unary request's) is formatted into this
            // thread's scratch buffer and copied over: no allocation, as
            // long as there is room at once.
            let now = SCRATCH.with_borrow_mut(|buf| {
                buf.clear();
                format(buf);
                let need = buf.len().min(PENDING_MAX);
                match self.shared.room.try_acquire_many(need as u32) {
                    Ok(permit) => {
                        permit.forget();
                        Ok(self.hand_over(Cow::Borrowed(buf), need))
                    }
                    Err(_) => Err(buf.clone()),
                }
            });
            match now {
                Ok(written) => written,
                Err(lines) => {
                    let room = self.room(lines.len()).await?;
                    self.hand_over(Cow::Owned(lines), room)
                }
            }
        } else {
            // Sized from the first line, so that a batch of lines like it
            // is written into one buffer that never grows.
            let mut lines = Vec::with_capacity(512);
            line(&mut lines, &events[0]);
            lines.reserve((lines.len() + lines.len() / 8) * (events.len() - 1));
            events[1..].iter().for_each(|e| line(&mut lines, e));
            let room = self.room(lines.len()).await?;
            self.hand_over(Cow::Owned(lines), room)
        };
        match written.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(EmitError::unavailable(
                "cannot write to stdout",
                Some(e.into()),
            )),
            Err(_) => Err(EmitError::unavailable("the stdout writer is gone", None)),
        }
    }

    fn calls_at_once(&self) -> usize {
        CALLS_AT_ONCE
    }

    fn gathers_up_to(&self) -> Option<usize> {
        Some(GATHER_EVENTS)
    }
}

/// `2026-11-28T16:09:02.123Z INFO  my-app  user.signup  id=1 env=prod payload=...`
fn write_pretty(buf: &mut Vec<u8>, e: &Event) {
    let mut line = String::with_capacity(160);
    write_rfc3339(&mut line, e.timestamp_unix_ns);
    let sev = match e.severity() {
        Severity::Unspecified => "-",
        Severity::Debug => "DEBUG",
        Severity::Info => "INFO",
        Severity::Warn => "WARN",
        Severity::Error => "ERROR",
        Severity::Critical => "CRIT",
    };
    let _ = write!(line, " {sev:<5} {} {} id={}", e.source, e.event_type, e.id);
    for (k, v) in &e.metadata {
        let _ = write!(line, " {k}={v}");
    }
    if !e.route_to.is_empty() {
        let _ = write!(line, " route_to={}", e.route_to.join(","));
    }
    if !e.payload.is_empty() {
        match std::str::from_utf8(&e.payload) {
            Ok(text) => {
                let one_line: String = text
                    .chars()
                    .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
                    .collect();
                let _ = write!(line, " payload={one_line}");
            }
            Err(_) => {
                let _ = write!(line, " payload=<{} bytes>", e.payload.len());
            }
        }
    }
    buf.extend_from_slice(line.as_bytes());
}

/// Writes a Unix time in nanoseconds as RFC 3339 UTC with milliseconds.
fn write_rfc3339(out: &mut String, unix_ns: i64) {
    let t = polku_core::time::UtcTime::from_unix_ns(unix_ns);
    let _ = write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year, t.month, t.day, t.hour, t.minute, t.second, t.millis
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::sync::{Arc, Mutex as StdMutex};

    /// A writer that keeps what it is given, counts its writes, and
    /// waits while it is held (a reader that does not read).
    #[derive(Clone, Default)]
    struct Capture {
        got: Arc<StdMutex<Vec<u8>>>,
        writes: Arc<std::sync::atomic::AtomicUsize>,
        held: Arc<(StdMutex<bool>, Condvar)>,
        broken: bool,
    }

    impl Capture {
        fn hold(&self, on: bool) {
            *self.held.0.lock().unwrap() = on;
            self.held.1.notify_all();
        }
        fn text(&self) -> String {
            String::from_utf8(self.got.lock().unwrap().clone()).unwrap()
        }
    }

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.broken {
                return Err(std::io::ErrorKind::BrokenPipe.into());
            }
            let mut held = self.held.0.lock().unwrap();
            while *held {
                held = self.held.1.wait(held).unwrap();
            }
            self.writes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.got.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn event() -> Event {
        let mut e = Event::new("user.signup")
            .with_id("1")
            .with_source("my-app")
            .with_metadata("env", "prod")
            .with_payload(Bytes::from_static(br#"{"plan":"pro"}"#));
        e.timestamp_unix_ns = 1_764_346_142_123_000_000;
        e.set_severity(Severity::Info);
        e
    }

    #[tokio::test]
    async fn json_lines_one_per_event() {
        let cap = Capture::default();
        let out = StdoutEmitter::with_writer(StdoutFormat::JsonLines, cap.clone());
        out.emit(&[event(), Event::new("b")]).await.unwrap();
        let text = cap.text();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[0],
            r#"{"id":"1","timestamp_unix_ns":1764346142123000000,"source":"my-app","event_type":"user.signup","severity":"SEVERITY_INFO","metadata":{"env":"prod"},"payload":{"plan":"pro"}}"#
        );
        // Each line reads back as the same event.
        let back = polku_core::json::events_from_json(&Bytes::from(lines[0].to_owned())).unwrap();
        assert_eq!(back.events[0], event());
    }

    #[tokio::test]
    async fn pretty_lines_are_readable() {
        let cap = Capture::default();
        let out = StdoutEmitter::with_writer(StdoutFormat::Pretty, cap.clone());
        out.emit(&[event()]).await.unwrap();
        let text = cap.text();
        assert_eq!(
            text,
            "2025-11-28T16:09:02.123Z INFO  my-app user.signup id=1 env=prod payload={\"plan\":\"pro\"}\n"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_under_way_are_written_together() {
        let (cap, out) = shared_json_lines();
        // The first write is held: the calls behind it gather.
        cap.hold(true);
        let first = tokio::spawn({
            let out = out.clone();
            async move { out.emit(&[Event::new("t").with_id("0")]).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let mut calls = Vec::new();
        for i in 1..=500 {
            let out = out.clone();
            calls.push(tokio::spawn(async move {
                out.emit(&[Event::new("t").with_id(i.to_string())]).await
            }));
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(!first.is_finished(), "delivered only once written");
        cap.hold(false);
        first.await.unwrap().unwrap();
        for c in calls {
            c.await.unwrap().unwrap();
        }
        // Every line once (the calls are tasks of their own: any order).
        let mut ids = ids_written(&cap);
        ids.sort_unstable();
        assert_eq!(ids, (0..=500).collect::<Vec<u32>>());
        let writes = cap.writes.load(std::sync::atomic::Ordering::Relaxed);
        assert!(writes <= 3, "501 calls in {writes} writes");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_and_small_calls_waiting_together_keep_their_order() {
        let (cap, out) = shared_json_lines();
        cap.hold(true);
        let batch = |from: u32| -> Vec<Event> {
            (from..from + 100)
                .map(|i| Event::new("t").with_id(i.to_string()))
                .collect()
        };
        // While the writer is held: a small call, a batch, two small
        // calls, a batch; each handed over before the next starts.
        let mut calls = Vec::new();
        for part in [
            vec![Event::new("t").with_id("0")],
            batch(1),
            vec![Event::new("t").with_id("101")],
            vec![Event::new("t").with_id("102")],
            batch(103),
        ] {
            let out = out.clone();
            calls.push(tokio::spawn(async move { out.emit(&part).await }));
            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        }
        cap.hold(false);
        for c in calls {
            c.await.unwrap().unwrap();
        }
        assert_eq!(ids_written(&cap), (0..203).collect::<Vec<u32>>());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn small_calls_between_batches_hold_little_memory() {
        let (cap, out) = shared_json_lines();
        cap.hold(true);
        // A batch (past SMALL, about 8 KB of lines, some spare), a one-event
        // call of about 4 KB (more than the spare), and again: every small
        // call starts a buffer of its own.
        let batch: Arc<Vec<Event>> = Arc::new(vec![Event::new("t"); 2 * SMALL]);
        let mut calls = Vec::new();
        for i in 0..50 {
            let (o, batch) = (out.clone(), batch.clone());
            calls.push(tokio::spawn(async move { o.emit(&batch).await }));
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            let o = out.clone();
            calls.push(tokio::spawn(async move {
                let pad = Bytes::from(format!(r#"{{"pad":"{}"}}"#, "x".repeat(4000)));
                o.emit(&[Event::new("t").with_id(i.to_string()).with_payload(pad)])
                    .await
            }));
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        let small: usize = out
            .shared
            .lock()
            .lines
            .iter()
            .filter(|seg| seg.len() < 5000)
            .map(Vec::capacity)
            .sum();
        // About 4 KiB each; a buffer of SEGMENT each would be 3.2 MiB.
        assert!(small <= 256 << 10, "{small} bytes held for 50 small calls");
        cap.hold(false);
        for c in calls {
            c.await.unwrap().unwrap();
        }
        assert_eq!(cap.text().lines().count(), 50 * (2 * SMALL + 1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_that_does_not_read_pushes_back_and_nothing_is_lost() {
        let (cap, out) = shared_json_lines();
        cap.hold(true);
        // Batches of 1,000 events of about 1 KiB: 1 MiB of lines each.
        let big = Bytes::from(format!(r#"{{"pad":"{}"}}"#, "x".repeat(1000)));
        let batch: Arc<Vec<Event>> = Arc::new(
            (0..1000)
                .map(|_| Event::new("t").with_payload(big.clone()))
                .collect(),
        );
        let mut calls = Vec::new();
        for _ in 0..8 {
            let (out, batch) = (out.clone(), batch.clone());
            calls.push(tokio::spawn(async move { out.emit(&batch).await }));
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        // The first is with the held writer and takes all the room;
        // the others wait for room instead of piling up lines.
        let pending = cap_pending(&out);
        assert!(
            pending <= PENDING_MAX,
            "{pending} bytes wait for the writer"
        );
        assert!(calls.iter().all(|c| !c.is_finished()));
        cap.hold(false);
        for c in calls {
            c.await.unwrap().unwrap();
        }
        assert_eq!(cap.text().lines().count(), 8000);
    }

    /// A capture and a JSON lines emitter writing to it, to share among tasks.
    fn shared_json_lines() -> (Capture, Arc<StdoutEmitter>) {
        let cap = Capture::default();
        let out = StdoutEmitter::with_writer(StdoutFormat::JsonLines, cap.clone());
        (cap, Arc::new(out))
    }

    /// The numeric ids of the lines written, in the order written.
    fn ids_written(cap: &Capture) -> Vec<u32> {
        cap.text()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["id"].as_str().unwrap().parse().unwrap()
            })
            .collect()
    }

    fn cap_pending(out: &StdoutEmitter) -> usize {
        out.shared.lock().lines.iter().map(Vec::len).sum()
    }

    #[tokio::test]
    async fn a_closed_stdout_fails_the_call_with_why() {
        let cap = Capture {
            broken: true,
            ..Capture::default()
        };
        let out = StdoutEmitter::with_writer(StdoutFormat::JsonLines, cap);
        let err = out.emit(&[event()]).await.unwrap_err();
        assert!(err.to_string().contains("cannot write to stdout"), "{err}");
        // And again: the writer keeps going.
        assert!(out.emit(&[event()]).await.is_err());
    }

    #[test]
    fn dates_are_civil() {
        let mut s = String::new();
        write_rfc3339(&mut s, 0);
        assert_eq!(s, "1970-01-01T00:00:00.000Z");
        s.clear();
        write_rfc3339(&mut s, 951_782_400_000_000_000); // leap day 2000
        assert_eq!(s, "2000-02-29T00:00:00.000Z");
    }
}
