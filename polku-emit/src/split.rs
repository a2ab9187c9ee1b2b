//! Sending a batch in requests its receiver will take: split by encoded
//! size before sending, and split again when the receiver still refuses a
//! request as too large. Progress is kept per request: what one request
//! delivered stays delivered when a later one fails, so a retry sends only
//! what did not get through.

use polku_core::{EmitError, Event, EventFailure};
use prost::Message;
use std::collections::VecDeque;
use std::future::Future;
use std::ops::Range;

/// The request size the gRPC and plugin emitters keep under unless told
/// otherwise: 4 MiB, the default limit of POLKU and of the gRPC libraries,
/// less room for the request's own framing.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = (4 << 20) - 1024;

/// How one request went.
#[derive(Debug)]
pub(crate) enum Sent {
    /// Delivered whole.
    Ok,
    /// The receiver refused it as too large; the message says how.
    TooLarge(String),
    /// Anything else, with indexes relative to the request.
    Failed(EmitError),
}

/// The encoded size of `e` as one entry of a repeated message field.
fn entry_len(e: &Event) -> usize {
    let n = e.encoded_len();
    1 + prost::encoding::encoded_len_varint(n as u64) + n
}

/// `events` in order, in ranges that each encode to at most `max` bytes;
/// an event over `max` alone gets a range of its own.
pub(crate) fn chunks(events: &[Event], max: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, e) in events.iter().enumerate() {
        let len = entry_len(e);
        if i > start && size + len > max {
            out.push(start..i);
            start = i;
            size = 0;
        }
        size += len;
    }
    if start < events.len() {
        out.push(start..events.len());
    }
    out
}

/// Sends `events` in requests of at most `max` encoded bytes with `send`;
/// see [`send_ranges`].
pub(crate) async fn send_chunked<F, Fut>(
    events: &[Event],
    max: usize,
    send: F,
) -> Result<(), EmitError>
where
    F: FnMut(Range<usize>) -> Fut,
    Fut: Future<Output = Sent>,
{
    send_ranges(chunks(events, max), send).await
}

/// `events` in ranges of at most `n` events.
pub(crate) fn by_count(len: usize, n: usize) -> Vec<Range<usize>> {
    let n = n.max(1);
    (0..len).step_by(n).map(|s| s..(s + n).min(len)).collect()
}

/// Sends the `ranges` of a batch with `send` (given a range, it sends those
/// events of the batch), one request after the other,
/// and says what became of each event:
/// - a request refused as too large is split in two and sent again; a lone
///   event refused so fails for good;
/// - a request refused for good fails its own events, and the next goes on;
/// - a request that fails otherwise (the destination is down) fails its
///   events and every later one, retryable, and nothing more is sent; when
///   nothing was delivered yet, that error is returned as it came (so a
///   retry layer sees its `Retry-After`).
pub(crate) async fn send_ranges<F, Fut>(
    ranges: Vec<Range<usize>>,
    mut send: F,
) -> Result<(), EmitError>
where
    F: FnMut(Range<usize>) -> Fut,
    Fut: Future<Output = Sent>,
{
    let mut queue: VecDeque<Range<usize>> = ranges.into();
    let mut failures: Vec<EventFailure> = Vec::new();
    let mut delivered_any = false;
    while let Some(range) = queue.pop_front() {
        match send(range.clone()).await {
            Sent::Ok => delivered_any = true,
            Sent::TooLarge(_) if range.len() > 1 => {
                let mid = range.start + range.len() / 2;
                queue.push_front(mid..range.end);
                queue.push_front(range.start..mid);
            }
            Sent::TooLarge(message) => failures.push(EventFailure {
                index: range.start,
                message: format!("the receiver refused this event as too large: {message}"),
                retryable: false,
            }),
            Sent::Failed(EmitError::Partial { failures: some }) => {
                delivered_any = true;
                failures.extend(some.into_iter().filter(|f| f.index < range.len()).map(|f| {
                    EventFailure {
                        index: range.start + f.index,
                        ..f
                    }
                }));
            }
            Sent::Failed(err) => {
                let nothing_yet = !delivered_any && failures.is_empty();
                let rejected = matches!(err, EmitError::Rejected { .. });
                if nothing_yet && (!rejected || queue.is_empty()) {
                    // Nothing got through: the whole batch failed as this one.
                    return Err(err);
                }
                let message = err.to_string();
                if rejected {
                    // About these events, maybe not the others: go on.
                    failures.extend(range.map(|index| EventFailure {
                        index,
                        message: message.clone(),
                        retryable: false,
                    }));
                    continue;
                }
                let retryable = err.is_retryable();
                let rest = std::iter::once(range).chain(queue.drain(..)).flatten();
                failures.extend(rest.map(|index| EventFailure {
                    index,
                    message: message.clone(),
                    retryable,
                }));
                break;
            }
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        failures.sort_by_key(|f| f.index);
        Err(EmitError::Partial { failures })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn events(sizes: &[usize]) -> Vec<Event> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let mut e = Event::new("t").with_id(format!("e{i}"));
                e.payload = vec![b'x'; *n].into();
                e
            })
            .collect()
    }

    #[test]
    fn chunks_stay_under_the_limit_and_a_big_event_goes_alone() {
        let evs = events(&[100, 100, 100, 5000, 100, 100]);
        let one = entry_len(&evs[0]);
        let ranges = chunks(&evs, 2 * one + 10);
        assert_eq!(ranges, vec![0..2, 2..3, 3..4, 4..6]);
        for r in &ranges {
            let size: usize = evs[r.clone()].iter().map(entry_len).sum();
            assert!(size <= 2 * one + 10 || r.len() == 1, "{r:?}: {size}");
        }
        assert_eq!(chunks(&evs, usize::MAX), vec![0..6]);
        assert!(chunks(&[], 10).is_empty());
    }

    #[tokio::test]
    async fn too_large_splits_until_it_fits_and_a_lone_event_fails_for_good() {
        let evs = events(&[10, 10, 10, 10, 900, 10]);
        let seen = Mutex::new(Vec::new());
        // The receiver takes at most 2 events, and never the big one.
        let r = send_chunked(&evs, usize::MAX, |range| {
            let chunk = &evs[range];
            seen.lock().unwrap().push(chunk.len());
            let big = chunk.iter().any(|e| e.payload.len() > 100);
            async move {
                if chunk.len() > 2 || big {
                    Sent::TooLarge("message too large".into())
                } else {
                    Sent::Ok
                }
            }
        })
        .await;
        let Err(EmitError::Partial { failures }) = r else {
            panic!("{r:?}")
        };
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].index, 4);
        assert!(!failures[0].retryable);
        assert!(failures[0].message.contains("too large"));
        assert_eq!(*seen.lock().unwrap(), [6, 3, 1, 2, 3, 1, 2, 1, 1]);
    }

    #[tokio::test]
    async fn a_failure_after_progress_fails_only_what_was_not_delivered() {
        let evs = events(&[10, 10, 10, 10]);
        let one = entry_len(&evs[0]);
        let mut calls = 0;
        let r = send_chunked(&evs, one, |range| {
            let chunk = &evs[range];
            calls += 1;
            let n = calls;
            let first = chunk[0].id.to_string();
            async move {
                match n {
                    1 => Sent::Ok,
                    2 => Sent::Failed(EmitError::Partial {
                        failures: vec![EventFailure {
                            index: 0,
                            message: format!("{first} refused"),
                            retryable: false,
                        }],
                    }),
                    _ => Sent::Failed(EmitError::unavailable("down", None)),
                }
            }
        })
        .await;
        let Err(EmitError::Partial { failures }) = r else {
            panic!("{r:?}")
        };
        let got: Vec<(usize, bool)> = failures.iter().map(|f| (f.index, f.retryable)).collect();
        assert_eq!(got, [(1, false), (2, true), (3, true)]);
        assert_eq!(failures[0].message, "e1 refused");
        assert_eq!(calls, 3, "nothing is sent after a request fails");

        // Nothing delivered: the error comes back as it was.
        let r = send_chunked(&evs, one, |_| async {
            Sent::Failed(EmitError::unavailable_for(
                "busy",
                std::time::Duration::from_secs(3),
            ))
        })
        .await;
        assert_eq!(
            r.unwrap_err().retry_after(),
            Some(std::time::Duration::from_secs(3))
        );
    }
}
