//! How big one request and one event may be, and the buffer that holds
//! accepted events until every emitter is done with them.

use super::{ConfigError, Env, MAX_BUFFER_CAPACITY};
use std::time::Duration;

/// How big one request and one event may be.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LimitSettings {
    /// `POLKU_MAX_MESSAGE_BYTES`: largest request message. Default 4 MiB.
    pub max_message_bytes: usize,
    /// `POLKU_MAX_EVENTS_PER_REQUEST`: most events in one request (the
    /// whole request is refused past it). Default 10000.
    pub max_events_per_request: usize,
    /// `POLKU_MAX_ID_BYTES`: longest event id; a longer one refuses that
    /// event. Default 256.
    pub max_id_bytes: usize,
    /// `POLKU_MAX_SOURCE_BYTES`: longest `source`, the event's or the
    /// request's; a longer one refuses that event. Default 256.
    pub max_source_bytes: usize,
    /// `POLKU_MAX_EVENT_TYPE_BYTES`: longest `event_type`; a longer one
    /// refuses that event. Default 256.
    pub max_event_type_bytes: usize,
    /// `POLKU_MAX_ROUTES`: most `route_to` entries per event (each name at
    /// most 256 bytes); more refuses that event. Default 16.
    pub max_routes: usize,
    /// `POLKU_MAX_METADATA_ENTRIES`: most metadata entries per event. Default 64.
    pub max_metadata_entries: usize,
    /// `POLKU_MAX_METADATA_BYTES`: most bytes of metadata keys and values
    /// per event. Default 16384.
    pub max_metadata_bytes: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            max_message_bytes: 4 * 1024 * 1024,
            max_events_per_request: 10_000,
            max_id_bytes: 256,
            max_source_bytes: 256,
            max_event_type_bytes: 256,
            max_routes: 16,
            max_metadata_entries: 64,
            max_metadata_bytes: 16 * 1024,
        }
    }
}

impl LimitSettings {
    pub(super) fn read(&mut self, env: &Env<'_>) -> Result<(), ConfigError> {
        let fields: [(&'static str, u64, u64, &'static str, &mut usize); 8] = [
            (
                "POLKU_MAX_MESSAGE_BYTES",
                1024,
                1 << 30,
                "a number of bytes from 1024 to 1073741824",
                &mut self.max_message_bytes,
            ),
            (
                "POLKU_MAX_EVENTS_PER_REQUEST",
                1,
                MAX_BUFFER_CAPACITY as u64,
                "a number of events from 1 to 100000000",
                &mut self.max_events_per_request,
            ),
            (
                "POLKU_MAX_ID_BYTES",
                36,
                65_536,
                "a number of bytes from 36 (a UUID) to 65536",
                &mut self.max_id_bytes,
            ),
            (
                "POLKU_MAX_SOURCE_BYTES",
                1,
                65_536,
                "a number of bytes from 1 to 65536",
                &mut self.max_source_bytes,
            ),
            (
                "POLKU_MAX_EVENT_TYPE_BYTES",
                1,
                65_536,
                "a number of bytes from 1 to 65536",
                &mut self.max_event_type_bytes,
            ),
            (
                "POLKU_MAX_ROUTES",
                1,
                1_024,
                "a number of routes from 1 to 1024",
                &mut self.max_routes,
            ),
            (
                "POLKU_MAX_METADATA_ENTRIES",
                0,
                100_000,
                "a number of entries from 0 to 100000",
                &mut self.max_metadata_entries,
            ),
            (
                "POLKU_MAX_METADATA_BYTES",
                0,
                1 << 30,
                "a number of bytes up to 1073741824",
                &mut self.max_metadata_bytes,
            ),
        ];
        for (var, min, max, expected, slot) in fields {
            if let Some(n) = env.number(var, min, max, expected)? {
                *slot = n as usize;
            }
        }
        Ok(())
    }
}

/// The buffer between ingestion and the emitters.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BufferSettings {
    /// `POLKU_BUFFER_CAPACITY`: events the buffer holds. Default 10000.
    pub capacity: usize,
    /// `POLKU_BUFFER_MAX_BYTES`: the buffer's budget in bytes (each event's
    /// strings, metadata and payload, plus its own size): events beyond it
    /// are refused like a full buffer. Default 64 MiB.
    pub max_bytes: usize,
    /// `POLKU_BUFFER_TIMEOUT`: how long SendEvent waits for room in a full
    /// buffer before RESOURCE_EXHAUSTED. Default `5s`.
    pub timeout: Duration,
    /// `POLKU_BUFFER_DIR`: where the durable buffer keeps its log. Set, an
    /// event is acknowledged only once it is synced to disk there, and a
    /// restart delivers what was not delivered before; unset (the
    /// default), the buffer is in memory only.
    pub dir: Option<std::path::PathBuf>,
    /// `POLKU_BUFFER_MAX_DISK_BYTES`: the most bytes the durable buffer's
    /// log takes; past it, events are refused (RESOURCE_EXHAUSTED, 429)
    /// until the emitters catch up. Default 1 GiB.
    pub max_disk_bytes: u64,
    /// `POLKU_BUFFER_CURSOR_INTERVAL`: how often the durable buffer saves
    /// where each emitter is; after a crash, an emitter may get again what
    /// it delivered in the last interval. Default `100ms`.
    pub cursor_interval: Duration,
    /// `POLKU_BUFFER_SYNC_INTERVAL`: opt in to acknowledge before the sync.
    /// Unset or `0` (the default), an event is acknowledged only once the
    /// disk has it. Set, it is acknowledged once the operating system has it
    /// (a crash or `kill -9` of the gateway still loses nothing) and synced
    /// within this interval: a power loss or kernel crash may lose what was
    /// acknowledged in the last interval.
    pub sync_interval: Option<Duration>,
}

impl Default for BufferSettings {
    fn default() -> Self {
        BufferSettings {
            capacity: 10_000,
            max_bytes: 64 << 20,
            timeout: Duration::from_secs(5),
            dir: None,
            max_disk_bytes: 1 << 30,
            cursor_interval: Duration::from_millis(100),
            sync_interval: None,
        }
    }
}

impl BufferSettings {
    pub(super) fn read(&mut self, env: &Env<'_>) -> Result<(), ConfigError> {
        if let Some(n) = env.number(
            "POLKU_BUFFER_CAPACITY",
            1,
            MAX_BUFFER_CAPACITY as u64,
            "a whole number of events from 1 to 100000000",
        )? {
            self.capacity = n as usize;
        }
        if let Some(n) = env.number(
            "POLKU_BUFFER_MAX_BYTES",
            1 << 16,
            u64::from(u32::MAX),
            "a number of bytes from 65536 to 4294967295",
        )? {
            self.max_bytes = n as usize;
        }
        if let Some(d) = env.duration("POLKU_BUFFER_TIMEOUT", false)? {
            self.timeout = d;
        }
        if let Some(dir) = env.path("POLKU_BUFFER_DIR")? {
            self.dir = Some(dir);
        }
        if let Some(n) = env.number(
            "POLKU_BUFFER_MAX_DISK_BYTES",
            1 << 20,
            u64::MAX >> 1,
            "a number of bytes, at least 1048576",
        )? {
            self.max_disk_bytes = n;
        }
        if let Some(d) = env.duration("POLKU_BUFFER_CURSOR_INTERVAL", false)? {
            self.cursor_interval = d.max(Duration::from_millis(1));
        }
        if let Some(d) = env.duration_or_off("POLKU_BUFFER_SYNC_INTERVAL")? {
            self.sync_interval = d.map(|d| d.max(Duration::from_millis(1)));
        }
        Ok(())
    }
}
