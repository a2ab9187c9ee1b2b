//! The request body deadline (`POLKU_BODY_TIMEOUT`).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::{Instant, Sleep};

use super::ConnStats;

/// A request body that did not arrive within `POLKU_BODY_TIMEOUT`.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within POLKU_BODY_TIMEOUT ({}s)", .0.as_secs_f64())]
pub(crate) struct BodyTimeout(pub(crate) Duration);

/// Where a gRPC body is in its messages (5-byte prefix, then the message).
#[derive(Debug, Default)]
struct Framing {
    /// Prefix bytes of the current message seen (0 to 5).
    prefix: u8,
    /// The length bytes of the prefix.
    len: [u8; 4],
    /// Message bytes still to come, once the prefix is in.
    need: u64,
}

impl Framing {
    /// True while a message has begun but not ended.
    fn inside(&self) -> bool {
        self.prefix > 0
    }

    /// Follows `data`; true when a message began in it.
    fn feed(&mut self, mut data: &[u8]) -> bool {
        let mut began = false;
        while !data.is_empty() {
            if self.prefix < 5 {
                if self.prefix == 0 {
                    began = true;
                }
                if self.prefix >= 1 {
                    self.len[usize::from(self.prefix) - 1] = data[0];
                }
                self.prefix += 1;
                data = &data[1..];
                if self.prefix == 5 {
                    self.need = u64::from(u32::from_be_bytes(self.len));
                    if self.need == 0 {
                        self.prefix = 0;
                    }
                }
            } else {
                let n = (data.len() as u64).min(self.need);
                self.need -= n;
                data = &data[n as usize..];
                if self.need == 0 {
                    self.prefix = 0;
                }
            }
        }
        began
    }
}

pin_project_lite::pin_project! {
    /// A request body with `POLKU_BODY_TIMEOUT`: a plain body must end
    /// within it of the request's start, a gRPC message within it of its
    /// first byte (a stream may wait between messages as long as it likes).
    /// Past it, the body fails with [`BodyTimeout`] (a gRPC body with
    /// `DEADLINE_EXCEEDED`). The timer is made only when the body has to
    /// wait, so a request that arrives whole costs none.
    pub(crate) struct Timed<B> {
        #[pin]
        inner: B,
        limit: Option<Duration>,
        stats: Option<Arc<ConnStats>>,
        grpc: Option<Framing>,
        // Since when the body (or the current gRPC message) is awaited.
        since: Option<Instant>,
        timer: Option<Pin<Box<Sleep>>>,
        done: bool,
    }
}

impl<B> Timed<B> {
    pub(super) fn new(
        inner: B,
        limit: Option<Duration>,
        stats: Option<Arc<ConnStats>>,
        grpc: bool,
    ) -> Self {
        Self {
            inner,
            since: (limit.is_some() && !grpc).then(Instant::now),
            limit,
            stats,
            grpc: grpc.then(Framing::default),
            timer: None,
            done: false,
        }
    }
}

impl<B> http_body::Body for Timed<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(f), Some(data)) = (this.grpc.as_mut(), frame.data_ref()) {
                    if this.limit.is_some() && f.feed(data) {
                        *this.since = Some(Instant::now());
                    }
                    if !f.inside() {
                        *this.since = None;
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => {
                *this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                let (Some(limit), Some(since)) = (*this.limit, *this.since) else {
                    return Poll::Pending;
                };
                let at = since + limit;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                if timer.deadline() != at {
                    timer.as_mut().reset(at);
                }
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                *this.done = true;
                if let Some(stats) = this.stats {
                    stats.cut_body.fetch_add(1, Relaxed);
                }
                let err: Self::Error = if this.grpc.is_some() {
                    Box::new(tonic::Status::deadline_exceeded(format!(
                        "a message did not arrive within POLKU_BODY_TIMEOUT ({}s) of its first byte",
                        limit.as_secs_f64()
                    )))
                } else {
                    Box::new(BodyTimeout(limit))
                };
                Poll::Ready(Some(Err(err)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::Framing;

    fn framed(len: u32) -> Vec<u8> {
        let mut v = vec![0];
        v.extend_from_slice(&len.to_be_bytes());
        v.extend(std::iter::repeat_n(7u8, len as usize));
        v
    }

    #[test]
    fn framing_follows_messages_split_anywhere() {
        let mut wire = framed(3);
        wire.extend(framed(0));
        wire.extend(framed(300));
        for cut in 0..wire.len() {
            let mut f = Framing::default();
            let (a, b) = wire.split_at(cut);
            let began_a = f.feed(a);
            assert_eq!(began_a, !a.is_empty(), "cut at {cut}");
            f.feed(b);
            assert!(!f.inside(), "all three messages ended (cut at {cut})");
        }
        // Half a prefix, then half a message: inside until the last byte.
        let mut f = Framing::default();
        let msg = framed(10);
        assert!(f.feed(&msg[..2]));
        assert!(f.inside());
        assert!(!f.feed(&msg[2..9]));
        assert!(f.inside());
        assert!(!f.feed(&msg[9..14]));
        assert!(f.inside());
        f.feed(&msg[14..]);
        assert!(!f.inside());
        // A message's end and the next one's start in one chunk.
        let mut two = framed(4);
        two.extend(&framed(4)[..3]);
        let mut f = Framing::default();
        assert!(f.feed(&two));
        assert!(f.inside());
    }
}
