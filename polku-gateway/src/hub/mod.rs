//! The Hub builder, and the gateway it builds: [`Hub`] puts the pieces
//! together, [`Gateway::start`] (in `start`) binds and starts them, a
//! [`RunningGateway`] (in `running`) serves, and its `shutdown` (in
//! `shutdown`) drains what was accepted.

mod running;
mod shutdown;
mod start;

pub use running::{Rejection, RunningGateway, SendReport};

use crate::config::Config;
use crate::pipeline::queue::EmitterOptions;
use polku_core::{BoxError, Emitter, Event, Ingestor};
use polku_middleware::BatchService;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service};

type LayerFn = Box<dyn FnOnce(BatchService) -> BatchService + Send>;

/// Builds a gateway: ingestors, a middleware chain, a buffer, and emitters.
///
/// ```
/// use polku_gateway::*;
///
/// let gateway = Hub::new()
///     .ingestor(JsonIngestor::new())
///     .emitter(StdoutEmitter::new())
///     .buffer_capacity(50_000)
///     .build();
/// # drop(gateway);
/// ```
pub struct Hub {
    ingestors: Vec<Arc<dyn Ingestor>>,
    layers: Vec<LayerFn>,
    emitters: Vec<(Arc<dyn Emitter>, EmitterOptions)>,
    buffer_capacity: usize,
    buffer_dir: Option<std::path::PathBuf>,
    flush_interval: Duration,
    sources: Vec<Arc<dyn polku_core::source::Source>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("ingestors", &self.ingestors)
            .field("middleware", &self.layers.len())
            .field("emitters", &self.emitters)
            .field("buffer_capacity", &self.buffer_capacity)
            .field("buffer_dir", &self.buffer_dir)
            .finish()
    }
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    /// An empty hub with the default buffer (10000 events).
    pub fn new() -> Self {
        Hub {
            ingestors: Vec::new(),
            layers: Vec::new(),
            emitters: Vec::new(),
            buffer_capacity: crate::config::BufferSettings::default().capacity,
            buffer_dir: None,
            flush_interval: Duration::from_millis(100),
            sources: Vec::new(),
        }
    }

    /// Adds an ingestor for raw bytes, chosen by the format or source it serves.
    pub fn ingestor(mut self, ingestor: impl Ingestor) -> Self {
        self.ingestors.push(Arc::new(ingestor));
        self
    }

    /// Adds a middleware: any tower layer over the batch service. They run in
    /// the order they are added.
    pub fn middleware<L>(mut self, layer: L) -> Self
    where
        L: Layer<BatchService> + Send + 'static,
        L::Service: Service<Vec<Event>, Response = Vec<Event>> + Clone + Send + Sync + 'static,
        <L::Service as Service<Vec<Event>>>::Error: Into<BoxError>,
        <L::Service as Service<Vec<Event>>>::Future: Send + 'static,
    {
        self.layers.push(Box::new(move |inner: BatchService| {
            BoxCloneSyncService::new(tower::ServiceExt::map_err(layer.layer(inner), Into::into))
        }));
        self
    }

    /// Adds an emitter. Each runs on its own task; `route_to` addresses it by
    /// name. Its queue blocks when full (see [`QueueFull`](crate::QueueFull)).
    /// To give it retries, a breaker and a failure store, wrap it first:
    /// `.emitter(Resilience::default().wrap(webhook))`.
    pub fn emitter(self, emitter: impl Emitter) -> Self {
        self.emitter_arc_with(Arc::new(emitter), EmitterOptions::default())
    }

    /// Adds an emitter that is already shared.
    pub fn emitter_arc(self, emitter: Arc<dyn Emitter>) -> Self {
        self.emitter_arc_with(emitter, EmitterOptions::default())
    }

    /// Adds an emitter with its queue policy and lingering.
    pub fn emitter_with(self, emitter: impl Emitter, options: EmitterOptions) -> Self {
        self.emitter_arc_with(Arc::new(emitter), options)
    }

    /// Adds a shared emitter with its options (as [`Config::emitters`] gives them).
    pub fn emitter_arc_with(mut self, emitter: Arc<dyn Emitter>, options: EmitterOptions) -> Self {
        self.emitters.push((emitter, options));
        self
    }

    /// Sets how many accepted events the buffer holds (`POLKU_BUFFER_CAPACITY`).
    pub fn buffer_capacity(mut self, events: usize) -> Self {
        self.buffer_capacity = events;
        self
    }

    /// Makes the buffer durable, keeping its log in `dir`
    /// (`POLKU_BUFFER_DIR`, which this overrides): an event is acknowledged
    /// only once it is synced to disk, and a restart delivers what was not
    /// delivered before. The disk budget and cursor interval come from the
    /// [`Config`] the gateway starts with.
    pub fn buffer_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.buffer_dir = Some(dir.into());
        self
    }

    /// How often middleware that hold events back (an [`Aggregator`]'s
    /// windows) are asked for what is due (default 100 ms).
    ///
    /// [`Aggregator`]: polku_middleware::Aggregator
    pub fn flush_interval(mut self, every: Duration) -> Self {
        self.flush_interval = every.max(Duration::from_millis(1));
        self
    }

    /// Adds a source that reads events in by itself, such as a
    /// [`KafkaSource`](polku_ingest::KafkaSource): it starts once the
    /// pipeline runs and stops first at shutdown, committing its position
    /// only for events that are safe.
    pub fn source(mut self, source: impl polku_core::source::Source + 'static) -> Self {
        self.sources.push(Arc::new(source));
        self
    }

    /// Puts the pieces together. Nothing runs until [`Gateway::start`] or
    /// [`Gateway::serve`].
    pub fn build(self) -> Gateway {
        // The first middleware added is the outermost: it sees a batch first.
        // Middleware register their drop counters while their layers are
        // applied; applying goes innermost first, so reverse to chain order.
        let layers = self.layers;
        let no_middleware = layers.is_empty();
        let (svc, registry) = polku_middleware::Registry::collect(move || {
            let mut svc = polku_middleware::identity();
            for layer in layers.into_iter().rev() {
                svc = layer(svc);
            }
            svc
        });
        let mut middleware_drops = registry.entries().to_vec();
        middleware_drops.reverse();
        Gateway {
            ingestors: self.ingestors,
            middleware: (!no_middleware).then_some(svc),
            middleware_drops,
            emitters: self.emitters,
            buffer_capacity: self.buffer_capacity,
            buffer_dir: self.buffer_dir,
            flush_interval: self.flush_interval,
            sources: self.sources,
        }
    }
}

/// A gateway that is built but not yet running.
#[derive(Debug)]
pub struct Gateway {
    ingestors: Vec<Arc<dyn Ingestor>>,
    /// The chain; `None` when no middleware was added.
    middleware: Option<BatchService>,
    middleware_drops: Vec<polku_middleware::drops::Registered>,
    emitters: Vec<(Arc<dyn Emitter>, EmitterOptions)>,
    buffer_capacity: usize,
    buffer_dir: Option<std::path::PathBuf>,
    flush_interval: Duration,
    sources: Vec<Arc<dyn polku_core::source::Source>>,
}

impl Gateway {
    /// Runs until `shutdown` completes, then drains: see [`RunningGateway::shutdown`].
    pub async fn serve(
        self,
        config: &Config,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), crate::ServeError> {
        let running = self.start(config).await?;
        shutdown.await;
        running.shutdown().await?;
        Ok(())
    }
}
