//! An emitter that keeps what it receives in memory.

use async_trait::async_trait;
use polku_core::{EmitError, Emitter, Event};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::Notify;

/// Keeps every event it receives, in order, for tests and for programs that
/// embed a gateway and read its output themselves. Clones share the store.
#[derive(Debug, Clone)]
pub struct MemoryEmitter {
    name: String,
    inner: Arc<Inner>,
    delay: Option<Duration>,
}

#[derive(Debug, Default)]
struct Inner {
    events: Mutex<Vec<Event>>,
    batches: Mutex<usize>,
    changed: Notify,
}

impl MemoryEmitter {
    /// A memory emitter with this name (`route_to` addresses it by the name).
    pub fn new(name: impl Into<String>) -> Self {
        MemoryEmitter {
            name: name.into(),
            inner: Arc::default(),
            delay: None,
        }
    }

    /// Waits this long in every `emit`, to stand in for a slow destination.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// A copy of every event received so far.
    pub fn events(&self) -> Vec<Event> {
        self.inner
            .events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The ids of the events received, in order.
    pub fn ids(&self) -> Vec<String> {
        self.inner
            .events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|e| e.id.to_string())
            .collect()
    }

    /// How many events have been received.
    pub fn len(&self) -> usize {
        self.inner
            .events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether nothing has been received.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many batches have been received.
    pub fn batches(&self) -> usize {
        *self
            .inner
            .batches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until at least `n` events have arrived or `timeout` passes;
    /// returns how many have arrived.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Register interest before checking, so no notification is missed.
            let notified = self.inner.changed.notified();
            let len = self.len();
            if len >= n {
                return len;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.len();
            }
        }
    }
}

#[async_trait]
impl Emitter for MemoryEmitter {
    fn name(&self) -> &str {
        &self.name
    }

    async fn emit(&self, events: &[Event]) -> Result<(), EmitError> {
        if let Some(d) = self.delay {
            tokio::time::sleep(d).await;
        }
        self.inner
            .events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(events);
        *self
            .inner
            .batches
            .lock()
            .unwrap_or_else(PoisonError::into_inner) += 1;
        self.inner.changed.notify_waiters();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keeps_events_in_order_and_wakes_waiters() {
        let mem = MemoryEmitter::new("m");
        let waiter = {
            let mem = mem.clone();
            tokio::spawn(async move { mem.wait_for(3, Duration::from_secs(5)).await })
        };
        mem.emit(&[Event::new("a"), Event::new("b")]).await.unwrap();
        mem.emit(&[Event::new("c")]).await.unwrap();
        assert_eq!(waiter.await.unwrap(), 3);
        let types: Vec<_> = mem.events().into_iter().map(|e| e.event_type).collect();
        assert_eq!(types, ["a", "b", "c"]);
        assert_eq!(mem.batches(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn wait_for_gives_up_after_the_timeout() {
        let mem = MemoryEmitter::new("m");
        assert_eq!(mem.wait_for(1, Duration::from_secs(1)).await, 0);
    }
}
