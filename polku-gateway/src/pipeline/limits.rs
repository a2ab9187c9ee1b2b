//! Per-request and per-event limits (`POLKU_MAX_*`): what makes one event
//! too big to take, said in words that name the setting.

use polku_core::Event;

/// Longest name in an event's `route_to`: no emitter's name is longer.
pub(crate) const MAX_ROUTE_NAME_BYTES: usize = 256;

/// Per-request and per-event limits (`POLKU_MAX_*`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_events_per_request: usize,
    pub(crate) max_id_bytes: usize,
    pub(crate) max_source_bytes: usize,
    pub(crate) max_event_type_bytes: usize,
    pub(crate) max_routes: usize,
    pub(crate) max_metadata_entries: usize,
    pub(crate) max_metadata_bytes: usize,
    /// `POLKU_BUFFER_MAX_BYTES`: the buffer's budget in bytes.
    pub(crate) buffer_max_bytes: usize,
}

impl Limits {
    pub(crate) fn from_config(c: &crate::Config) -> Self {
        Limits {
            max_events_per_request: c.limits.max_events_per_request,
            max_id_bytes: c.limits.max_id_bytes,
            max_source_bytes: c.limits.max_source_bytes,
            max_event_type_bytes: c.limits.max_event_type_bytes,
            max_routes: c.limits.max_routes,
            max_metadata_entries: c.limits.max_metadata_entries,
            max_metadata_bytes: c.limits.max_metadata_bytes,
            buffer_max_bytes: c.buffer.max_bytes,
        }
    }

    /// What is wrong with `e`, if it is over a limit. `source` is the
    /// request's, which an event without its own takes.
    pub(crate) fn violation(&self, e: &Event, source: &str) -> Option<String> {
        self.check(e, source).err()
    }

    /// [`violation`](Self::violation), or else what the event counts
    /// against the buffer's byte budget (`buffer::event_bytes`), from the
    /// same walk over its metadata.
    pub(crate) fn check(&self, e: &Event, source: &str) -> Result<usize, String> {
        let (approx, metadata_bytes) = e.approx_size_and_metadata_bytes();
        if e.id.len() > self.max_id_bytes {
            return Err(format!(
                "id is {} bytes long, over the limit of {} (POLKU_MAX_ID_BYTES)",
                e.id.len(),
                self.max_id_bytes
            ));
        }
        let src = if e.source.is_empty() {
            source
        } else {
            &e.source
        };
        if src.len() > self.max_source_bytes {
            return Err(format!(
                "source is {} bytes long, over the limit of {} (POLKU_MAX_SOURCE_BYTES)",
                src.len(),
                self.max_source_bytes
            ));
        }
        if e.event_type.len() > self.max_event_type_bytes {
            return Err(format!(
                "event_type is {} bytes long, over the limit of {} (POLKU_MAX_EVENT_TYPE_BYTES)",
                e.event_type.len(),
                self.max_event_type_bytes
            ));
        }
        if e.route_to.len() > self.max_routes {
            return Err(format!(
                "route_to has {} entries, over the limit of {} (POLKU_MAX_ROUTES)",
                e.route_to.len(),
                self.max_routes
            ));
        }
        if let Some(r) = e.route_to.iter().find(|r| r.len() > MAX_ROUTE_NAME_BYTES) {
            return Err(format!(
                "a route_to name is {} bytes long, over the limit of {MAX_ROUTE_NAME_BYTES}",
                r.len()
            ));
        }
        if e.metadata.len() > self.max_metadata_entries {
            return Err(format!(
                "metadata has {} entries, over the limit of {} (POLKU_MAX_METADATA_ENTRIES)",
                e.metadata.len(),
                self.max_metadata_entries
            ));
        }
        if metadata_bytes > self.max_metadata_bytes {
            return Err(format!(
                "metadata is {metadata_bytes} bytes, over the limit of {} (POLKU_MAX_METADATA_BYTES)",
                self.max_metadata_bytes
            ));
        }
        Ok(super::buffer::bytes_of(approx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_events_per_request: 10,
            max_id_bytes: 8,
            max_source_bytes: 8,
            max_event_type_bytes: 8,
            max_routes: 2,
            max_metadata_entries: 2,
            max_metadata_bytes: 10,
            buffer_max_bytes: 1 << 20,
        }
    }

    fn says(e: Event, source: &str, setting: &str) {
        let msg = limits().violation(&e, source).expect("over a limit");
        assert!(msg.contains(setting), "{msg:?} names {setting}");
    }

    #[test]
    fn a_check_sizes_what_it_passes_as_the_buffer_counts_it() {
        for e in [
            Event::new("a.b"),
            Event::new("a.b")
                .with_id("12345678")
                .with_metadata("k", "v")
                .with_metadata("k2", "v2")
                .with_route_to(["x", "y"])
                .with_payload(&b"payload"[..]),
        ] {
            assert_eq!(
                limits().check(&e, "req"),
                Ok(super::super::buffer::event_bytes(&e))
            );
        }
        let over = Event::new("t").with_metadata("key", "a-long-value");
        assert_eq!(
            limits().check(&over, "").unwrap_err(),
            limits().violation(&over, "").unwrap()
        );
    }

    #[test]
    fn an_event_within_every_limit_passes() {
        let e = Event::new("a.b")
            .with_id("12345678")
            .with_source("src")
            .with_metadata("k", "v")
            .with_route_to(["x", "y"]);
        assert_eq!(limits().violation(&e, "req"), None);
    }

    #[test]
    fn each_limit_is_named_when_it_is_passed() {
        says(
            Event::new("t").with_id("123456789"),
            "",
            "POLKU_MAX_ID_BYTES",
        );
        says(
            Event::new("t").with_source("123456789"),
            "",
            "POLKU_MAX_SOURCE_BYTES",
        );
        says(Event::new("123456789"), "", "POLKU_MAX_EVENT_TYPE_BYTES");
        says(
            Event::new("t").with_route_to(["a", "b", "c"]),
            "",
            "POLKU_MAX_ROUTES",
        );
        says(
            Event::new("t")
                .with_metadata("a", "")
                .with_metadata("b", "")
                .with_metadata("c", ""),
            "",
            "POLKU_MAX_METADATA_ENTRIES",
        );
        says(
            Event::new("t").with_metadata("key", "12345678"),
            "",
            "POLKU_MAX_METADATA_BYTES",
        );
        let long = "r".repeat(MAX_ROUTE_NAME_BYTES + 1);
        let msg = limits()
            .violation(&Event::new("t").with_route_to([long]), "")
            .unwrap();
        assert!(msg.contains("route_to name"), "{msg}");
    }

    #[test]
    fn an_event_without_a_source_is_held_to_the_requests() {
        says(Event::new("t"), "123456789", "POLKU_MAX_SOURCE_BYTES");
        assert_eq!(
            limits().violation(&Event::new("t").with_source("own"), "123456789"),
            None,
            "an event's own source wins"
        );
    }
}
