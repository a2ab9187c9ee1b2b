//! Resend: events from an emitter's failure store, queued to it again.

use super::buffer::{Wait, batch_bytes, event_bytes};
use super::emitters::Delivery;
use super::{InFlight, Pipeline};
use crate::SubmitError;
use crate::error::ResendError;
use polku_core::Event;
use polku_core::delivery::Taken;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tracing::debug;

impl Pipeline {
    /// Takes up to `limit` of the oldest events out of an emitter's failure
    /// store and queues them to that emitter again; returns how many. Room
    /// in the buffer is reserved first (waiting as `wait` says), so a full
    /// buffer leaves the store as it was.
    pub(crate) async fn resend_failures(
        &self,
        name: &str,
        limit: usize,
        wait: Wait,
    ) -> Result<usize, ResendError> {
        let _inflight = InFlight::enter(self);
        let emitter = self.emitter(name)?;
        let store = emitter
            .delivery_state()
            .and_then(|d| d.failure_store())
            .ok_or_else(|| ResendError::NoFailureStore {
                name: name.to_owned(),
            })?;
        let n = store.len().min(limit).min(self.buffer.capacity());
        if n == 0 {
            return Ok(0);
        }
        let bytes = batch_bytes(
            &store
                .list(0, n)
                .into_iter()
                .map(|f| f.event)
                .collect::<Vec<_>>(),
        );
        let mut room = self.buffer.reserve(n, bytes, &wait).await?;
        let taken = store.take(n);
        if taken.is_empty() {
            return Ok(0);
        }
        let taken_bytes: usize = taken.failures().iter().map(|f| event_bytes(&f.event)).sum();
        if taken_bytes > bytes {
            // The store changed between the look and the take: put back.
            store.put_back(taken);
            return Err(SubmitError::BufferFull {
                waited: Duration::ZERO,
                capacity: self.buffer.capacity(),
                max_bytes: self.limits.buffer_max_bytes,
            }
            .into());
        }
        room.shrink_to(taken.len(), taken_bytes);
        let guard = self.emitters.outlets();
        let outlet = guard
            .as_ref()
            .and_then(|o| o.iter().find(|o| o.name() == name));
        let Some(outlet) = outlet else {
            drop(guard);
            store.put_back(taken);
            if self.retired_emitters().iter().any(|e| e.name() == name) {
                return Err(ResendError::NotRegistered {
                    name: name.to_owned(),
                });
            }
            return Err(SubmitError::ShuttingDown.into());
        };
        let (taken, receipt) = taken.into_parts();
        let events: Vec<Event> = taken.into_iter().map(|f| f.event).collect();
        let k = events.len();
        let delivery = Delivery {
            events: Arc::new(events),
            _room: Arc::new(room),
            arrived: tokio::time::Instant::now(),
            _ticket: None,
            _taken: Some(receipt),
        };
        if let Err(mut back) = outlet.send(delivery) {
            let events = Arc::try_unwrap(back.events).unwrap_or_else(|a| (*a).clone());
            let failures = events
                .into_iter()
                .map(|e| {
                    polku_core::delivery::StoredFailure::new(
                        e,
                        "not resent: the gateway is shutting down",
                        true,
                    )
                })
                .collect();
            if let Some(receipt) = back._taken.take() {
                store.put_back(Taken::from_parts(failures, receipt));
            }
            return Err(SubmitError::ShuttingDown.into());
        }
        outlet.target.stats.resent.fetch_add(k as u64, Relaxed);
        debug!(emitter = %name, events = k, "failed events queued again");
        Ok(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::testing::{Step, TestEmitter, events, finish, limits, pipeline};
    use polku_middleware::identity;

    const NOW: Wait = Wait::For(Duration::ZERO);

    /// A pipeline whose one emitter failed `ids` into its store.
    async fn failed(ids: &[&str], capacity: usize) -> (Arc<Pipeline>, Arc<TestEmitter>) {
        let e = TestEmitter::with_store("e", 100);
        e.script([Step::Fail]);
        let p = pipeline(vec![e.clone()], capacity, identity(), limits());
        p.accept("s", events(ids), NOW).await.unwrap();
        while e.store().len() < ids.len() {
            tokio::task::yield_now().await;
        }
        (p, e)
    }

    #[tokio::test]
    async fn stored_failures_go_back_to_their_emitter_oldest_first() {
        let (p, e) = failed(&["1", "2", "3"], 10).await;
        assert_eq!(p.resend_failures("e", 2, NOW).await.unwrap(), 2);
        assert_eq!(e.store().len(), 1);
        assert_eq!(p.resend_failures("e", 10, NOW).await.unwrap(), 1);
        assert_eq!(
            p.resend_failures("e", 10, NOW).await.unwrap(),
            0,
            "nothing left"
        );
        finish(&p).await;
        assert_eq!(e.ids(), ["1", "2", "3"]);
        let snap = p.snapshot();
        assert_eq!(snap.emitters["e"].resent, 3);
        assert_eq!(p.depth(), 0);
    }

    #[tokio::test]
    async fn a_full_buffer_leaves_the_store_as_it_was() {
        let (p, e) = failed(&["1", "2"], 2).await;
        e.hold();
        p.accept("s", events(&["a", "b"]), NOW).await.unwrap();
        let err = p.resend_failures("e", 10, NOW).await.unwrap_err();
        assert!(
            matches!(err, ResendError::Buffer(SubmitError::BufferFull { .. })),
            "{err:?}"
        );
        assert_eq!(e.store().len(), 2, "nothing was taken out");
        e.release();
        finish(&p).await;
        assert_eq!(e.ids(), ["a", "b"]);
    }

    #[tokio::test]
    async fn a_removed_plugins_failures_wait_for_it_to_register_again() {
        let p = pipeline(vec![], 10, identity(), limits());
        let old = TestEmitter::with_store("plug", 100);
        old.script([Step::Fail]);
        p.add_emitter(old.clone(), true, Default::default())
            .unwrap();
        p.accept("s", events(&["1"]), NOW).await.unwrap();
        while old.store().is_empty() {
            tokio::task::yield_now().await;
        }
        p.retire_plugin_emitter("plug").unwrap();
        let err = p.resend_failures("plug", 10, NOW).await.unwrap_err();
        assert!(matches!(err, ResendError::NotRegistered { .. }), "{err:?}");
        assert_eq!(old.store().len(), 1, "still listable under its name");
        finish(&p).await;
    }

    #[tokio::test]
    async fn an_emitter_without_a_store_or_a_name_that_is_not_there_says_so() {
        let p = pipeline(vec![TestEmitter::new("plain")], 10, identity(), limits());
        let err = p.resend_failures("plain", 1, NOW).await.unwrap_err();
        assert!(matches!(err, ResendError::NoFailureStore { .. }), "{err:?}");
        let err = p.resend_failures("nope", 1, NOW).await.unwrap_err();
        assert!(matches!(err, ResendError::UnknownEmitter { .. }), "{err:?}");
        finish(&p).await;
    }
}
