//! Events to standard output.

use async_trait::async_trait;
use polku_core::{EmitError, Emitter, Event, Severity};
use std::fmt::Write as _;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Mutex;

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
/// A whole batch is formatted first and written with one call, through
/// tokio's stdout, which does the blocking write on a blocking thread: a slow
/// terminal or pipe never blocks the async runtime.
pub struct StdoutEmitter {
    format: StdoutFormat,
    out: Mutex<Box<dyn AsyncWrite + Send + Unpin>>,
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
        Self::with_writer(StdoutFormat::JsonLines, tokio::io::stdout())
    }

    /// Readable lines to standard output.
    pub fn pretty() -> Self {
        Self::with_writer(StdoutFormat::Pretty, tokio::io::stdout())
    }

    /// The given format to any writer (a file, a pipe, a buffer in a test).
    pub fn with_writer(
        format: StdoutFormat,
        out: impl AsyncWrite + Send + Unpin + 'static,
    ) -> Self {
        StdoutEmitter {
            format,
            out: Mutex::new(Box::new(out)),
        }
    }

    /// The format in use.
    pub fn format(&self) -> StdoutFormat {
        self.format
    }
}

#[async_trait]
impl Emitter for StdoutEmitter {
    fn name(&self) -> &str {
        "stdout"
    }

    async fn emit(&self, events: &[Event]) -> Result<(), EmitError> {
        let mut buf = Vec::with_capacity(events.len() * 160);
        for e in events {
            match self.format {
                StdoutFormat::JsonLines => polku_core::json::write_event(&mut buf, e),
                StdoutFormat::Pretty => write_pretty(&mut buf, e),
            }
            buf.push(b'\n');
        }
        let mut out = self.out.lock().await;
        out.write_all(&buf)
            .await
            .map_err(|e| EmitError::unavailable("cannot write to stdout", Some(e.into())))?;
        out.flush()
            .await
            .map_err(|e| EmitError::unavailable("cannot flush stdout", Some(e.into())))
    }

    async fn shutdown(&self) -> Result<(), EmitError> {
        self.out
            .lock()
            .await
            .flush()
            .await
            .map_err(|e| EmitError::unavailable("cannot flush stdout", Some(e.into())))
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

    /// A writer that keeps what it is given.
    #[derive(Clone, Default)]
    struct Capture(Arc<StdMutex<Vec<u8>>>);

    impl AsyncWrite for Capture {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.0.lock().unwrap().extend_from_slice(buf);
            std::task::Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
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
        let text = String::from_utf8(cap.0.lock().unwrap().clone()).unwrap();
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
        let text = String::from_utf8(cap.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text,
            "2025-11-28T16:09:02.123Z INFO  my-app user.signup id=1 env=prod payload={\"plan\":\"pro\"}\n"
        );
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
