//! An emitter that counts events and throws them away: for benchmarks, and
//! for measuring the gateway without a destination's cost.

use async_trait::async_trait;
use polku_core::{EmitError, Emitter, Event};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counts what it is given and delivers it nowhere.
///
/// ```
/// use polku_core::{Emitter, Event};
/// use polku_emit::NullEmitter;
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let null = NullEmitter::new();
/// null.emit(&[Event::new("a"), Event::new("b")]).await.unwrap();
/// assert_eq!(null.count(), 2);
/// # });
/// ```
#[derive(Debug, Clone)]
pub struct NullEmitter {
    name: String,
    count: Arc<AtomicU64>,
}

impl Default for NullEmitter {
    fn default() -> Self {
        Self::new()
    }
}

impl NullEmitter {
    /// A null emitter named `null`.
    pub fn new() -> Self {
        NullEmitter {
            name: "null".to_owned(),
            count: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The same emitter under another name.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Events it has been given (clones share the count).
    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }
}

#[async_trait]
impl Emitter for NullEmitter {
    fn name(&self) -> &str {
        &self.name
    }

    async fn emit(&self, events: &[Event]) -> Result<(), EmitError> {
        self.count.fetch_add(events.len() as u64, Relaxed);
        Ok(())
    }
}
