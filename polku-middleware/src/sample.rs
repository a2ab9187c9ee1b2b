//! Keep a fraction of the events.
//!
//! By default the decision is deterministic by the event id: the same event
//! is always kept or always dropped, by every gateway, so a retried event
//! meets the same fate and samples from different gateways line up. Choose
//! another key with [`Sampler::by_key`] (for example the source, to keep or
//! drop whole sources), or [`Sampler::random`] for an independent draw.
//!
//! ```
//! use polku_core::Event;
//! use polku_middleware::{Sampler, identity};
//! use tower::{Layer, ServiceExt};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let sampler = Sampler::new(0.25).unwrap();
//! let batch: Vec<Event> = (0..1000).map(|i| Event::new("t").with_id(format!("{i}"))).collect();
//! let kept = sampler.layer(identity()).oneshot(batch).await.unwrap();
//! assert!((200..300).contains(&kept.len()));
//! # });
//! ```

use crate::drops::{DropCounts, DropReason, register};
use crate::hash::hash64;
use polku_core::Event;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// A sampling fraction that is not a number from 0 to 1.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("sampling fraction must be from 0.0 to 1.0, got {0}")]
pub struct SampleError(pub f64);

type KeyFn = dyn Fn(&Event) -> &str + Send + Sync;

#[derive(Clone)]
enum Mode {
    /// The event id: the common case, with no call through a pointer.
    Id,
    Key(Arc<KeyFn>),
    Random(Arc<AtomicU64>),
}

/// A layer that keeps about `fraction` of the events.
#[derive(Clone)]
pub struct Sampler {
    fraction: f64,
    /// Keep when the 64-bit draw is below this; `None` keeps everything.
    threshold: Option<u64>,
    mode: Mode,
    drops: DropCounts,
}

impl fmt::Debug for Sampler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sampler")
            .field("fraction", &self.fraction)
            .field("random", &matches!(self.mode, Mode::Random(_)))
            .field("drops", &self.drops)
            .finish()
    }
}

impl Sampler {
    /// Keeps `fraction` of the events (0.0 keeps none, 1.0 keeps all),
    /// decided by the event id.
    pub fn new(fraction: f64) -> Result<Self, SampleError> {
        if !(0.0..=1.0).contains(&fraction) {
            return Err(SampleError(fraction));
        }
        let threshold = if fraction >= 1.0 {
            None
        } else {
            // fraction * 2^64, computed without overflowing.
            Some((fraction * 18_446_744_073_709_551_616.0) as u64)
        };
        Ok(Sampler {
            fraction,
            threshold,
            mode: Mode::Id,
            drops: DropCounts::default(),
        })
    }

    /// Decides by this key instead of the id: events with the same key meet
    /// the same fate.
    pub fn by_key<F>(mut self, key: F) -> Self
    where
        F: Fn(&Event) -> &str + Send + Sync + 'static,
    {
        self.mode = Mode::Key(Arc::new(key));
        self
    }

    /// Decides by an independent random draw for each event.
    pub fn random(mut self) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x853c_49e6_748f_ea9b);
        self.mode = Mode::Random(Arc::new(AtomicU64::new(seed)));
        self
    }

    /// The drop counters (reason: sampled).
    pub fn drops(&self) -> &DropCounts {
        &self.drops
    }
}

impl<S> Layer<S> for Sampler {
    type Service = SampleService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        register("sample", &self.drops);
        SampleService {
            inner,
            sampler: self.clone(),
        }
    }
}

/// The service made by [`Sampler`].
#[derive(Clone)]
pub struct SampleService<S> {
    inner: S,
    sampler: Sampler,
}

impl<S: fmt::Debug> fmt::Debug for SampleService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SampleService")
            .field("inner", &self.inner)
            .field("sampler", &self.sampler)
            .finish()
    }
}

impl<S> SampleService<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// SplitMix64: a fast generator for the random mode.
#[inline]
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl<S> Service<Vec<Event>> for SampleService<S>
where
    S: Service<Vec<Event>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut batch: Vec<Event>) -> Self::Future {
        if let Some(threshold) = self.sampler.threshold {
            let (drops, why) = (&self.sampler.drops, DropReason::Sampled);
            match &self.sampler.mode {
                Mode::Id => drops.retain(why, &mut batch, |e| hash64(e.id.as_bytes()) < threshold),
                Mode::Key(key) => {
                    drops.retain(why, &mut batch, |e| hash64(key(e).as_bytes()) < threshold)
                }
                Mode::Random(seed) => {
                    // One atomic step per batch; the events draw from a local stream.
                    let mut state = seed.fetch_add(0x6A09_E667_F3BC_C909, Relaxed);
                    drops.retain(why, &mut batch, |_| splitmix(&mut state) < threshold);
                }
            }
        }
        self.inner.call(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity;
    use tower::ServiceExt;

    fn ids(n: usize) -> Vec<Event> {
        (0..n)
            .map(|i| {
                Event::new("t")
                    .with_id(format!("id-{i}"))
                    .with_source(format!("s{}", i % 10))
            })
            .collect()
    }

    async fn run(s: &Sampler, batch: Vec<Event>) -> Vec<Event> {
        s.layer(identity()).oneshot(batch).await.unwrap()
    }

    #[tokio::test]
    async fn conforms() {
        let s = Sampler::new(0.5).unwrap();
        crate::conformance::check("sample", &s, s.drops(), ids(100)).await;
    }

    #[tokio::test]
    async fn keeps_about_the_fraction() {
        for fraction in [0.01, 0.1, 0.5, 0.9] {
            let s = Sampler::new(fraction).unwrap();
            let kept = run(&s, ids(20_000)).await.len() as f64 / 20_000.0;
            assert!((kept - fraction).abs() < 0.02, "{fraction}: kept {kept}");
            let r = Sampler::new(fraction).unwrap().random();
            let kept = run(&r, ids(20_000)).await.len() as f64 / 20_000.0;
            assert!(
                (kept - fraction).abs() < 0.02,
                "random {fraction}: kept {kept}"
            );
        }
    }

    #[tokio::test]
    async fn the_same_id_meets_the_same_fate_in_any_gateway() {
        let a = Sampler::new(0.3).unwrap();
        let b = Sampler::new(0.3).unwrap();
        let ka: Vec<String> = run(&a, ids(1000))
            .await
            .into_iter()
            .map(|e| e.id.to_string())
            .collect();
        let kb: Vec<String> = run(&b, ids(1000))
            .await
            .into_iter()
            .map(|e| e.id.to_string())
            .collect();
        assert_eq!(ka, kb);
        // And again, in a different batch split.
        let mut again = run(&a, ids(1000)[..500].to_vec()).await;
        again.extend(run(&a, ids(1000)[500..].to_vec()).await);
        assert_eq!(again.into_iter().map(|e| e.id).collect::<Vec<_>>(), ka);
    }

    #[tokio::test]
    async fn by_key_keeps_or_drops_whole_sources() {
        let s = Sampler::new(0.5).unwrap().by_key(|e| e.source.as_str());
        let kept = run(&s, ids(1000)).await;
        let sources: std::collections::BTreeSet<_> =
            kept.iter().map(|e| e.source.clone()).collect();
        assert_eq!(kept.len(), sources.len() * 100, "all of a source or none");
    }

    #[tokio::test]
    async fn zero_keeps_none_one_keeps_all() {
        let none = Sampler::new(0.0).unwrap();
        assert!(run(&none, ids(100)).await.is_empty());
        assert_eq!(none.drops().get(DropReason::Sampled), 100);
        let all = Sampler::new(1.0).unwrap();
        assert_eq!(run(&all, ids(100)).await.len(), 100);
        assert_eq!(run(&all, vec![]).await.len(), 0);
    }

    #[test]
    fn bad_fractions_are_refused() {
        for bad in [-0.1, 1.5, f64::NAN, f64::INFINITY] {
            assert!(Sampler::new(bad).is_err(), "{bad}");
        }
    }
}
