//! Events to S3 or any S3-compatible store: newline-delimited JSON objects
//! (each line an event's JSON form, as the stdout emitter prints it),
//! compressed, under a key template with time partitions.
//!
//! An event counts as delivered only once the object that holds it is
//! written. Each call's events join the open object of their key prefix, and
//! the call waits until that object is written: the events keep their room
//! in the gateway's buffer meanwhile, so the buffer's budget bounds what the
//! open objects hold. An object is written when it reaches its event count,
//! its size (uncompressed) or its age; when the gateway's buffer is full
//! ([`Emitter::flush_now`]); when as many calls wait as the emitter takes;
//! and at shutdown. Once its compressed bytes pass the part size, an object
//! goes up as a multipart upload while it fills.
//!
//! The client is object_store's (Apache Arrow's), kept behind this emitter.

mod connector;
mod key;

pub use connector::S3HttpConnector;

use async_trait::async_trait;
use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, BackoffConfig, MultipartUpload, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, RetryConfig,
};
use polku_core::{EmitError, Emitter, Event, EventFailure};
use std::collections::HashMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;

/// The key prefix when none is set: time partitions by hour.
pub const DEFAULT_PREFIX: &str = "events/{yyyy}/{mm}/{dd}/{hh}/";

/// The most objects open at once; a new prefix past it writes them all.
const MAX_OPEN: usize = 1000;

/// S3's smallest part but the last in a multipart upload.
const MIN_PART: usize = 5 << 20;

/// How each object is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum S3Compression {
    /// gzip, fast level (`.ndjson.gz`): what every query engine reads.
    #[default]
    Gzip,
    /// zstd, level 3 (`.ndjson.zst`).
    Zstd,
    /// None (`.ndjson`).
    None,
}

impl S3Compression {
    fn extension(self) -> &'static str {
        match self {
            S3Compression::Gzip => ".ndjson.gz",
            S3Compression::Zstd => ".ndjson.zst",
            S3Compression::None => ".ndjson",
        }
    }

    fn content_encoding(self) -> Option<&'static str> {
        match self {
            S3Compression::Gzip => Some("gzip"),
            S3Compression::Zstd => Some("zstd"),
            S3Compression::None => None,
        }
    }
}

impl std::str::FromStr for S3Compression {
    type Err = S3EmitterError;

    /// `gzip`, `zstd` or `none`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "gzip" => Ok(S3Compression::Gzip),
            "zstd" => Ok(S3Compression::Zstd),
            "none" => Ok(S3Compression::None),
            _ => Err(S3EmitterError::Setting(format!(
                "compression {s:?}: expected gzip, zstd or none"
            ))),
        }
    }
}

/// An S3 emitter setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum S3EmitterError {
    /// No bucket given.
    #[error("an S3 emitter needs a bucket")]
    NoBucket,
    /// The key prefix has an unknown placeholder or an unclosed brace.
    #[error(
        "invalid S3 key prefix {0:?}: only the placeholders {{yyyy}}, {{mm}}, {{dd}}, {{hh}} and {{source}} are known"
    )]
    Prefix(String),
    /// A limit or choice out of range.
    #[error("invalid S3 emitter setting: {0}")]
    Setting(String),
    /// The client refused its configuration (a bad endpoint, half a key).
    #[error("the S3 client refused its configuration: {0}")]
    Client(String),
}

/// Builds an [`S3Emitter`].
#[derive(Debug, Clone)]
pub struct S3EmitterBuilder {
    bucket: String,
    name: String,
    endpoint: Option<String>,
    region: Option<String>,
    credentials: Option<(String, String, Option<String>)>,
    prefix: String,
    compression: S3Compression,
    max_events: usize,
    max_bytes: usize,
    max_age: Duration,
    part_size: usize,
    max_calls: usize,
    request_timeout: Duration,
}

impl S3EmitterBuilder {
    /// The emitter's name (default `s3`), for `route_to` and metrics.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// An S3-compatible store's endpoint (`http(s)://host:port`), addressed
    /// path-style; default AWS (or `AWS_ENDPOINT_URL`).
    pub fn endpoint(mut self, url: impl Into<String>) -> Self {
        self.endpoint = Some(url.into());
        self
    }

    /// The region (default `AWS_REGION`, else `us-east-1`).
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// Static credentials, instead of the standard AWS variables and
    /// provider chain (web identity, container and instance credentials).
    pub fn credentials(
        mut self,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
        session_token: Option<String>,
    ) -> Self {
        self.credentials = Some((
            access_key_id.into(),
            secret_access_key.into(),
            session_token,
        ));
        self
    }

    /// The key prefix template (default [`DEFAULT_PREFIX`]): `{yyyy}`,
    /// `{mm}`, `{dd}`, `{hh}` from each event's time (UTC), and `{source}`.
    pub fn prefix(mut self, template: impl Into<String>) -> Self {
        self.prefix = template.into();
        self
    }

    /// How objects are compressed (default gzip).
    pub fn compression(mut self, c: S3Compression) -> Self {
        self.compression = c;
        self
    }

    /// An object is written once it holds this many events (default
    /// 100,000).
    pub fn max_events(mut self, n: usize) -> Self {
        self.max_events = n;
        self
    }

    /// An object is written once its lines (before compression) reach this
    /// many bytes (default 64 MiB).
    pub fn max_bytes(mut self, n: usize) -> Self {
        self.max_bytes = n;
        self
    }

    /// An object is written once it has been open this long (default 60 s).
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = age;
        self
    }

    /// The size of each part of a multipart upload (default 8 MiB, at least
    /// 5 MiB): an object whose compressed bytes pass it goes up in parts.
    pub fn part_size(mut self, n: usize) -> Self {
        self.part_size = n;
        self
    }

    /// How many calls may wait on open objects at once (default 1024); when
    /// that many wait, the open objects are written. The gateway gives the
    /// emitter this many calls under way ([`Emitter::calls_at_once`]).
    pub fn max_calls(mut self, n: usize) -> Self {
        self.max_calls = n;
        self
    }

    /// The longest one request to the store may take (default 30 s).
    pub fn request_timeout(mut self, t: Duration) -> Self {
        self.request_timeout = t;
        self
    }

    /// The emitter and its client (which connects on the first write).
    pub fn build(self) -> Result<S3Emitter, S3EmitterError> {
        if self.bucket.trim().is_empty() {
            return Err(S3EmitterError::NoBucket);
        }
        let prefix = key::Prefix::parse(&self.prefix)?;
        if self.max_events == 0 || self.max_bytes == 0 || self.max_calls == 0 {
            return Err(S3EmitterError::Setting(
                "max_events, max_bytes and max_calls must be at least 1".into(),
            ));
        }
        if self.max_age.is_zero() {
            return Err(S3EmitterError::Setting("max_age must be above zero".into()));
        }
        if self.part_size < MIN_PART {
            return Err(S3EmitterError::Setting(format!(
                "part_size {} is below S3's least part, {MIN_PART} bytes",
                self.part_size
            )));
        }
        let client = reqwest::Client::builder()
            .timeout(self.request_timeout)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| S3EmitterError::Client(e.to_string()))?;
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(self.bucket.trim())
            .with_http_connector(connector::S3HttpConnector::new(client))
            .with_virtual_hosted_style_request(false)
            // A few tries within object_store (a refused connection, 5xx,
            // throttling); past them the gateway's retries, breaker and
            // failure store take over.
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(2),
                    base: 2.0,
                },
                max_retries: 3,
                retry_timeout: self.request_timeout,
            });
        if let Some(e) = &self.endpoint {
            b = b
                .with_endpoint(e.trim())
                .with_allow_http(e.trim().starts_with("http://"));
        }
        if let Some(r) = &self.region {
            b = b.with_region(r.trim());
        }
        if let Some((id, secret, token)) = &self.credentials {
            b = b.with_access_key_id(id).with_secret_access_key(secret);
            if let Some(t) = token {
                b = b.with_token(t);
            }
        }
        let store = b
            .build()
            .map_err(|e| S3EmitterError::Client(e.to_string()))?;
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::ContentType, "application/x-ndjson".into());
        if let Some(enc) = self.compression.content_encoding() {
            attributes.insert(Attribute::ContentEncoding, enc.into());
        }
        Ok(S3Emitter {
            shared: Arc::new(Shared {
                name: self.name,
                bucket: self.bucket.trim().to_owned(),
                store: Arc::new(store),
                prefix,
                compression: self.compression,
                attributes,
                max_events: self.max_events,
                max_bytes: self.max_bytes,
                max_age: self.max_age,
                part_size: self.part_size,
                max_calls: self.max_calls,
                open: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(0),
                waiting: AtomicUsize::new(0),
                uploads: AtomicUsize::new(0),
                uploads_done: Notify::new(),
                refused: AtomicBool::new(false),
                objects: AtomicU64::new(0),
                bytes: AtomicU64::new(0),
            }),
        })
    }
}

/// Writes events to S3 as compressed newline-delimited JSON objects, and
/// counts them delivered once their object is written.
///
/// ```no_run
/// use polku_emit::{S3Compression, S3Emitter};
/// use std::time::Duration;
///
/// let s3 = S3Emitter::builder("my-events")
///     .endpoint("http://127.0.0.1:9000")
///     .prefix("events/{source}/{yyyy}/{mm}/{dd}/{hh}/")
///     .compression(S3Compression::Zstd)
///     .max_age(Duration::from_secs(30))
///     .build()
///     .unwrap();
/// # drop(s3);
/// ```
///
/// Credentials come from the standard AWS variables and provider chain
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, web
/// identity, container and instance credentials) unless given. Throttling,
/// 5xx answers, timeouts and a store that cannot be reached fail the calls
/// as retryable; access denied, a bad signature or a missing bucket as
/// permanent (and the emitter reports itself unhealthy until a write
/// works again).
#[derive(Debug, Clone)]
pub struct S3Emitter {
    shared: Arc<Shared>,
}

struct Shared {
    name: String,
    bucket: String,
    store: Arc<dyn ObjectStore>,
    prefix: key::Prefix,
    compression: S3Compression,
    attributes: Attributes,
    max_events: usize,
    max_bytes: usize,
    max_age: Duration,
    part_size: usize,
    max_calls: usize,
    /// The open objects, by key prefix.
    open: Mutex<HashMap<String, Open>>,
    next_id: AtomicU64,
    /// Calls waiting on their objects.
    waiting: AtomicUsize,
    /// Objects being written.
    uploads: AtomicUsize,
    uploads_done: Notify,
    /// The last write was refused for good (access, bucket).
    refused: AtomicBool,
    objects: AtomicU64,
    bytes: AtomicU64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Emitter")
            .field("name", &self.name)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("compression", &self.compression)
            .finish_non_exhaustive()
    }
}

/// What became of an object: written, or why not.
type Outcome = Result<(), Failed>;

#[derive(Debug, Clone)]
struct Failed {
    message: String,
    retryable: bool,
}

/// An object being filled.
struct Open {
    id: u64,
    key: String,
    enc: Encoder,
    events: usize,
    raw: usize,
    opened: Instant,
    done: Arc<watch::Sender<Option<Outcome>>>,
    /// Its multipart upload, once its bytes passed a part.
    parts: Option<mpsc::UnboundedSender<Bytes>>,
}

/// A call's hold on an object it joined.
struct Ticket {
    id: u64,
    prefix: String,
    deadline: Instant,
    done: watch::Receiver<Option<Outcome>>,
}

/// Lines compressed at once, as one gzip member or zstd frame: an object
/// is their concatenation (a valid gzip or zstd file), so an open object
/// holds no compressor between calls, however many objects are open.
const CHUNK: usize = 1 << 20;

/// An object's bytes: lines not yet compressed, and the compressed chunks.
struct Encoder {
    compression: S3Compression,
    raw: Vec<u8>,
    out: Vec<u8>,
}

impl Encoder {
    fn new(compression: S3Compression) -> Encoder {
        Encoder {
            compression,
            raw: Vec::new(),
            out: Vec::new(),
        }
    }

    fn write(&mut self, lines: &[u8]) {
        self.raw.extend_from_slice(lines);
        if self.raw.len() >= CHUNK {
            self.compress();
        }
    }

    /// Compresses the lines held into one more chunk. Writing into memory
    /// cannot fail.
    fn compress(&mut self) {
        if self.raw.is_empty() {
            return;
        }
        match self.compression {
            S3Compression::Gzip => {
                let mut g =
                    flate2::write::GzEncoder::new(&mut self.out, flate2::Compression::fast());
                let _ = g.write_all(&self.raw);
                let _ = g.finish();
            }
            S3Compression::Zstd => {
                let _ = zstd::stream::copy_encode(&self.raw[..], &mut self.out, 3);
            }
            S3Compression::None => self.out.extend_from_slice(&self.raw),
        }
        self.raw.clear();
    }

    /// Compressed bytes ready to go.
    fn ready(&self) -> usize {
        self.out.len()
    }

    /// Takes the compressed bytes ready to go (the object goes on).
    fn take_ready(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// The rest of the object.
    fn finish(mut self) -> Vec<u8> {
        self.compress();
        self.out
    }
}

/// One call's events for one prefix, as lines.
struct Group {
    prefix: String,
    lines: Vec<u8>,
    indexes: Vec<usize>,
}

/// Takes one off the waiting calls when dropped.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

impl S3Emitter {
    /// A builder for an emitter named `s3` writing gzip objects to
    /// `bucket` under [`DEFAULT_PREFIX`].
    pub fn builder(bucket: impl Into<String>) -> S3EmitterBuilder {
        S3EmitterBuilder {
            bucket: bucket.into(),
            name: "s3".to_owned(),
            endpoint: None,
            region: None,
            credentials: None,
            prefix: DEFAULT_PREFIX.to_owned(),
            compression: S3Compression::Gzip,
            max_events: 100_000,
            max_bytes: 64 << 20,
            max_age: Duration::from_secs(60),
            part_size: 8 << 20,
            max_calls: 1024,
            request_timeout: Duration::from_secs(30),
        }
    }

    /// How long an object may stay open (see [`S3EmitterBuilder::max_age`]).
    pub fn max_age(&self) -> Duration {
        self.shared.max_age
    }

    /// Objects written so far, and their bytes (compressed).
    pub fn written(&self) -> (u64, u64) {
        (
            self.shared.objects.load(Relaxed),
            self.shared.bytes.load(Relaxed),
        )
    }

    /// Each event's line, grouped by key prefix (no lock held).
    fn groups(&self, events: &[Event]) -> Vec<Group> {
        let s = &self.shared;
        let mut groups: Vec<Group> = Vec::with_capacity(1);
        // Each prefix's group: a client may send many sources in one call.
        let mut by_prefix: HashMap<String, usize> = HashMap::new();
        let mut prefix = String::new();
        // The last event's hour and source, and its group.
        let mut last: Option<(i64, &str, usize)> = None;
        for (i, e) in events.iter().enumerate() {
            let g = if !s.prefix.per_event() {
                if groups.is_empty() {
                    s.prefix.render(0, "", &mut prefix);
                    groups.push(Group {
                        prefix: prefix.clone(),
                        lines: Vec::with_capacity(events.len() * 256),
                        indexes: Vec::with_capacity(events.len()),
                    });
                }
                0
            } else {
                let hour = key::hour_of(e.timestamp_unix_ns);
                match last {
                    Some((h, src, g)) if h == hour && src == &*e.source => g,
                    _ => {
                        s.prefix.render(hour, &e.source, &mut prefix);
                        let g = match by_prefix.get(&prefix) {
                            Some(&g) => g,
                            None => {
                                groups.push(Group {
                                    prefix: prefix.clone(),
                                    lines: Vec::new(),
                                    indexes: Vec::new(),
                                });
                                by_prefix.insert(prefix.clone(), groups.len() - 1);
                                groups.len() - 1
                            }
                        };
                        last = Some((hour, &e.source, g));
                        g
                    }
                }
            };
            let group = &mut groups[g];
            polku_core::json::write_event(&mut group.lines, e);
            group.lines.push(b'\n');
            group.indexes.push(i);
        }
        groups
    }

    /// Seals the open object under `prefix` if it is still object `id`.
    fn seal_if(&self, prefix: &str, id: u64) {
        let open = {
            let mut open = lock(&self.shared.open);
            match open.get(prefix) {
                Some(o) if o.id == id => open.remove(prefix),
                _ => None,
            }
        };
        if let Some(o) = open {
            self.write(o);
        }
    }

    /// Seals every open object that holds anything.
    fn seal_all(&self) {
        let all: Vec<Open> = lock(&self.shared.open).drain().map(|(_, o)| o).collect();
        for o in all {
            self.write(o);
        }
    }

    /// Writes a sealed object, in the background; its calls hear how it went.
    fn write(&self, mut o: Open) {
        if let Some(parts) = o.parts.take() {
            // Its uploader sends the tail as the last part and completes.
            let tail = o.enc.finish();
            if !tail.is_empty() {
                let _ = parts.send(Bytes::from(tail));
            }
            return;
        }
        let s = self.shared.clone();
        s.uploads.fetch_add(1, Relaxed);
        tokio::spawn(async move {
            let body = o.enc.finish();
            let len = body.len() as u64;
            let opts = PutOptions {
                attributes: s.attributes.clone(),
                ..PutOptions::default()
            };
            let outcome = match s
                .store
                .put_opts(&Path::from(o.key.as_str()), PutPayload::from(body), opts)
                .await
            {
                Ok(_) => Ok(len),
                Err(e) => Err(s.failed(&o.key, &e)),
            };
            s.uploaded(&o.done, outcome);
        });
    }

    /// Starts the multipart upload of an open object, fed part by part.
    fn start_parts(&self, o: &mut Open) -> mpsc::UnboundedSender<Bytes> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
        let s = self.shared.clone();
        let key = o.key.clone();
        let done = o.done.clone();
        s.uploads.fetch_add(1, Relaxed);
        tokio::spawn(async move {
            let path = Path::from(key.as_str());
            let opts = PutMultipartOptions {
                attributes: s.attributes.clone(),
                ..PutMultipartOptions::default()
            };
            let mut upload: Option<Box<dyn MultipartUpload>> = None;
            let mut err: Option<Failed> = None;
            let mut len = 0u64;
            match s.store.put_multipart_opts(&path, opts).await {
                Ok(u) => upload = Some(u),
                Err(e) => err = Some(s.failed(&key, &e)),
            }
            // Every part is taken, even after a failure, until the object
            // is sealed (the sender dropped).
            while let Some(part) = rx.recv().await {
                if let (Some(u), None) = (upload.as_mut(), &err) {
                    len += part.len() as u64;
                    if let Err(e) = u.put_part(PutPayload::from(part)).await {
                        err = Some(s.failed(&key, &e));
                    }
                }
            }
            let outcome = match (upload, err) {
                (Some(mut u), None) => match u.complete().await {
                    Ok(_) => Ok(len),
                    Err(e) => {
                        let _ = u.abort().await;
                        Err(s.failed(&key, &e))
                    }
                },
                (Some(mut u), Some(f)) => {
                    let _ = u.abort().await;
                    Err(f)
                }
                (None, Some(f)) => Err(f),
                (None, None) => Err(Failed {
                    message: "the multipart upload never started".into(),
                    retryable: true,
                }),
            };
            s.uploaded(&done, outcome);
        });
        tx
    }
}

impl Shared {
    /// Why a write failed, and whether trying again may help.
    fn failed(&self, key: &str, e: &object_store::Error) -> Failed {
        let (retryable, what) = classify(e);
        if !retryable {
            self.refused.store(true, Relaxed);
        }
        Failed {
            message: format!("S3 bucket {:?}, object {key:?}: {what}: {e}", self.bucket),
            retryable,
        }
    }

    /// Counts a finished upload (its compressed bytes, or why it failed)
    /// and tells its calls.
    fn uploaded(&self, done: &watch::Sender<Option<Outcome>>, outcome: Result<u64, Failed>) {
        let outcome = outcome.map(|len| {
            self.objects.fetch_add(1, Relaxed);
            self.bytes.fetch_add(len, Relaxed);
            self.refused.store(false, Relaxed);
        });
        if let Err(f) = &outcome {
            tracing::warn!(emitter = %self.name, retryable = f.retryable, "{}", f.message);
        }
        let _ = done.send(Some(outcome));
        if self.uploads.fetch_sub(1, Relaxed) == 1 {
            self.uploads_done.notify_waiters();
        }
    }
}

/// Whether a failure may pass (and what it is, in words).
fn classify(e: &object_store::Error) -> (bool, &'static str) {
    use object_store::Error as E;
    match e {
        E::PermissionDenied { .. } => (false, "access denied (credentials or permissions)"),
        E::Unauthenticated { .. } => (false, "not authenticated"),
        E::NotFound { .. } => (false, "the bucket does not exist"),
        E::Generic { .. } => {
            let mut src = std::error::Error::source(e);
            while let Some(s) = src {
                if s.downcast_ref::<object_store::client::HttpError>()
                    .is_some()
                {
                    return (true, "the store could not be reached");
                }
                src = s.source();
            }
            if e.to_string().contains("status code: 4") {
                (false, "the store refused the request")
            } else {
                (true, "the store failed for now")
            }
        }
        _ => (false, "the store refused the request"),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[async_trait]
impl Emitter for S3Emitter {
    fn name(&self) -> &str {
        &self.shared.name
    }

    async fn emit(&self, events: &[Event]) -> Result<(), EmitError> {
        if events.is_empty() {
            return Ok(());
        }
        let s = &self.shared;
        let groups = self.groups(events);
        let waiting = s.waiting.fetch_add(1, Relaxed) + 1;
        let _waiting = Waiting(&s.waiting);
        let mut tickets: Vec<(Ticket, Vec<usize>)> = Vec::with_capacity(groups.len());
        let mut sealed = Vec::new();
        let mut parts_to_start = Vec::new();
        {
            let mut open = lock(&s.open);
            for g in groups {
                // Prefixes come from the events (`{source}`): a client
                // could open any number; at the bound the open ones go.
                if open.len() >= MAX_OPEN && !open.contains_key(&g.prefix) {
                    sealed.extend(open.drain().map(|(_, o)| o));
                }
                let o = open.entry(g.prefix.clone()).or_insert_with(|| {
                    let now = polku_core::now_unix_ns();
                    Open {
                        id: s.next_id.fetch_add(1, Relaxed),
                        key: format!(
                            "{}{}",
                            g.prefix,
                            key::object_name(now, s.compression.extension())
                        ),
                        enc: Encoder::new(s.compression),
                        events: 0,
                        raw: 0,
                        opened: Instant::now(),
                        done: Arc::new(watch::channel(None).0),
                        parts: None,
                    }
                });
                o.enc.write(&g.lines);
                o.events += g.indexes.len();
                o.raw += g.lines.len();
                tickets.push((
                    Ticket {
                        id: o.id,
                        prefix: g.prefix.clone(),
                        deadline: o.opened + s.max_age,
                        done: o.done.subscribe(),
                    },
                    g.indexes,
                ));
                if o.events >= s.max_events || o.raw >= s.max_bytes {
                    if let Some(o) = open.remove(&g.prefix) {
                        sealed.push(o);
                    }
                } else if o.enc.ready() >= s.part_size {
                    let part = Bytes::from(o.enc.take_ready());
                    match &o.parts {
                        Some(tx) => {
                            let _ = tx.send(part);
                        }
                        None => parts_to_start.push((g.prefix.clone(), part)),
                    }
                }
            }
            // Parts of objects that go up in parts from now on.
            for (prefix, part) in parts_to_start {
                if let Some(o) = open.get_mut(&prefix) {
                    let tx = self.start_parts(o);
                    let _ = tx.send(part);
                    o.parts = Some(tx);
                }
            }
            // As many calls wait as the gateway gives: nothing more joins.
            if waiting >= s.max_calls {
                sealed.extend(open.drain().map(|(_, o)| o));
            }
        }
        for o in sealed {
            self.write(o);
        }
        // Each object this call joined: written, or sealed at its age.
        let mut failures: Vec<EventFailure> = Vec::new();
        let mut outcomes: Vec<Failed> = Vec::new();
        for (mut t, indexes) in tickets {
            let outcome = loop {
                if let Some(o) = t.done.borrow_and_update().clone() {
                    break o;
                }
                tokio::select! {
                    changed = t.done.changed() => if changed.is_err() {
                        break Err(Failed {
                            message: format!("S3 bucket {:?}: the object's upload ended without an answer", s.bucket),
                            retryable: true,
                        });
                    },
                    _ = tokio::time::sleep_until(t.deadline) => {
                        self.seal_if(&t.prefix, t.id);
                        t.deadline = Instant::now() + Duration::from_secs(86_400 * 365);
                    }
                }
            };
            if let Err(f) = outcome {
                failures.extend(indexes.iter().map(|&index| EventFailure {
                    index,
                    message: f.message.clone(),
                    retryable: f.retryable,
                }));
                outcomes.push(f);
            }
        }
        if failures.is_empty() {
            return Ok(());
        }
        if failures.len() == events.len() && outcomes.len() == 1 {
            let f = outcomes.remove(0);
            return Err(if f.retryable {
                EmitError::unavailable(f.message, None)
            } else {
                EmitError::Rejected { message: f.message }
            });
        }
        failures.sort_by_key(|f| f.index);
        Err(EmitError::Partial { failures })
    }

    fn calls_at_once(&self) -> usize {
        self.shared.max_calls
    }

    fn flush_now(&self) {
        self.seal_all();
    }

    /// Unhealthy while the last write was refused for good (access denied,
    /// a missing bucket), until one works again.
    async fn healthy(&self) -> bool {
        !self.shared.refused.load(Relaxed)
    }

    async fn shutdown(&self) -> Result<(), EmitError> {
        self.seal_all();
        loop {
            let done = self.shared.uploads_done.notified();
            if self.shared.uploads.load(Relaxed) == 0 {
                return Ok(());
            }
            done.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_that_cannot_work_are_refused() {
        assert_eq!(
            S3Emitter::builder(" ").build().unwrap_err(),
            S3EmitterError::NoBucket
        );
        let err = S3Emitter::builder("b")
            .prefix("{region}/")
            .build()
            .unwrap_err();
        assert!(matches!(err, S3EmitterError::Prefix(_)), "{err}");
        let err = S3Emitter::builder("b")
            .part_size(1 << 20)
            .build()
            .unwrap_err()
            .to_string();
        assert!(err.contains("least part"), "{err}");
        assert!("brotli".parse::<S3Compression>().is_err());
        assert_eq!(
            "zstd".parse::<S3Compression>().unwrap(),
            S3Compression::Zstd
        );
    }

    #[tokio::test]
    async fn a_client_with_endless_sources_opens_a_bounded_number_of_objects() {
        // A store that is not there: the written objects fail, which is
        // not what this looks at.
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", dead.local_addr().unwrap());
        drop(dead);
        let s3 = S3Emitter::builder("b")
            .endpoint(url)
            .credentials("id", "secret", None)
            .prefix("{source}/")
            .max_age(Duration::from_secs(3600))
            .build()
            .unwrap();
        let events: Vec<Event> = (0..MAX_OPEN + 500)
            .map(|i| Event::new("t").with_source(format!("s{i}")))
            .collect();
        let call = tokio::spawn({
            let s3 = s3.clone();
            async move { s3.emit(&events).await }
        });
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        let open = lock(&s3.shared.open).len();
        assert!((1..=MAX_OPEN).contains(&open), "{open} open");
        s3.flush_now();
        assert!(call.await.unwrap().is_err(), "the store is not there");
    }

    #[test]
    fn each_compression_reads_back_as_the_lines_written() {
        use std::io::Read as _;
        // Each half past a chunk: the object is two gzip members or zstd
        // frames.
        let lines = b"{\"id\":\"1\"}\n{\"id\":\"2\"}\n".repeat(120_000);
        assert!(lines.len() > CHUNK);
        for c in [
            S3Compression::Gzip,
            S3Compression::Zstd,
            S3Compression::None,
        ] {
            let mut enc = Encoder::new(c);
            // Taken in two pieces, as parts are: the stream goes on.
            enc.write(&lines[..lines.len() / 2]);
            let mut out = enc.take_ready();
            enc.write(&lines[lines.len() / 2..]);
            out.extend(enc.finish());
            let mut back = Vec::new();
            match c {
                S3Compression::Gzip => {
                    flate2::read::MultiGzDecoder::new(&out[..])
                        .read_to_end(&mut back)
                        .unwrap();
                }
                S3Compression::Zstd => back = zstd::decode_all(&out[..]).unwrap(),
                S3Compression::None => back = out,
            }
            assert_eq!(back, lines, "{c:?}");
        }
    }

    /// A store that answers every request with `status` and an S3 error;
    /// returns its URL and how many requests it got.
    async fn answering(
        status: u16,
        code: &'static str,
    ) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let h = hits.clone();
        let app = axum::Router::new().fallback(move || {
            h.fetch_add(1, Relaxed);
            async move {
                let body = format!(
                    "<?xml version=\"1.0\"?><Error><Code>{code}</Code><Message>said by the test</Message></Error>"
                );
                let mut resp = axum::response::Response::new(axum::body::Body::from(body));
                *resp.status_mut() = axum::http::StatusCode::from_u16(status).unwrap();
                resp
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, hits)
    }

    fn against(url: &str) -> S3Emitter {
        S3Emitter::builder("b")
            .endpoint(url)
            .credentials("id", "secret", None)
            .max_age(Duration::from_millis(50))
            .request_timeout(Duration::from_secs(5))
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn throttling_and_5xx_are_retried_inside_then_fail_as_retryable() {
        let (url, hits) = answering(503, "SlowDown").await;
        let err = against(&url)
            .emit(&[Event::new("t"), Event::new("t")])
            .await
            .unwrap_err();
        assert!(err.is_retryable(), "{err}");
        let text = err.to_string();
        assert!(text.contains("SlowDown") && text.contains("503"), "{text}");
        assert_eq!(hits.load(Relaxed), 4, "the first try and 3 retries");
    }

    #[tokio::test]
    async fn a_request_the_store_refuses_fails_for_good_and_marks_the_emitter_unhealthy() {
        let (url, hits) = answering(400, "InvalidArgument").await;
        let s3 = against(&url);
        let err = s3.emit(&[Event::new("t")]).await.unwrap_err();
        assert!(!err.is_retryable(), "{err}");
        assert!(err.to_string().contains("InvalidArgument"), "{err}");
        assert_eq!(hits.load(Relaxed), 1, "not retried");
        let (url, _) = answering(403, "AccessDenied").await;
        let s3 = against(&url);
        assert!(s3.healthy().await);
        let err = s3.emit(&[Event::new("t")]).await.unwrap_err();
        assert!(err.to_string().contains("access denied"), "{err}");
        assert!(!s3.healthy().await, "unhealthy until a write works");
    }
}
