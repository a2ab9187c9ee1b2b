//! The command's output: what it prints is its product (JSON lines, tables,
//! summaries), written to stdout as a whole line at a time; a reader that
//! went away (a closed pipe) is not an error worth a panic.

use std::io::Write as _;

/// Writes `text` and a newline to stdout.
pub(crate) fn line(text: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
}

/// Writes `text` as it is to stdout.
pub(crate) fn text(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}
