//! The Prometheus text format for `GET /metrics`.
//!
//! Labels never carry a string a client chose (no source, no event type):
//! reasons, middleware kinds and emitter names are all fixed by the operator
//! or the code, so cardinality stays bounded.

use crate::listener::ConnCounts;
use crate::stats::{BUCKETS, ByOutcome, HistogramSnapshot, RejectReason, StatsSnapshot};
use std::fmt::Write as _;

/// The durable buffer's families (only when `POLKU_BUFFER_DIR` is set).
fn durable(o: &mut String, d: &crate::stats::DurableSnapshot) {
    let one = |o: &mut String, name: &str, kind: &str, help: &str, v: u64| {
        header(o, name, kind, help);
        let _ = writeln!(o, "{name} {v}");
    };
    one(
        o,
        "polku_buffer_disk_bytes",
        "gauge",
        "Bytes the durable buffer's log takes on disk.",
        d.disk_bytes,
    );
    one(
        o,
        "polku_buffer_disk_max_bytes",
        "gauge",
        "The durable buffer's disk budget (POLKU_BUFFER_MAX_DISK_BYTES).",
        d.max_disk_bytes,
    );
    one(
        o,
        "polku_buffer_log_records_total",
        "counter",
        "Accepted batches written to the log and synced.",
        d.records,
    );
    one(
        o,
        "polku_buffer_syncs_total",
        "counter",
        "Log syncs; each covers every batch that arrived meanwhile.",
        d.syncs,
    );
    one(
        o,
        "polku_buffer_written_bytes_total",
        "counter",
        "Bytes written to the log.",
        d.written_bytes,
    );
    header(
        o,
        "polku_buffer_disk_refused_total",
        "counter",
        "Batches refused by the durable buffer, by reason (full: the disk budget; io: a failed write or sync).",
    );
    let _ = writeln!(
        o,
        "polku_buffer_disk_refused_total{{reason=\"full\"}} {}",
        d.refused_full
    );
    let _ = writeln!(
        o,
        "polku_buffer_disk_refused_total{{reason=\"io\"}} {}",
        d.refused_io
    );
    one(
        o,
        "polku_buffer_trimmed_segments_total",
        "counter",
        "Log segments removed once every emitter was past them.",
        d.trimmed_segments,
    );
    one(
        o,
        "polku_buffer_replayed_events_total",
        "counter",
        "Events queued again after a restart (per emitter); at most this many reached a destination twice.",
        d.replayed_events,
    );
    one(
        o,
        "polku_buffer_cursor_saves_total",
        "counter",
        "Saves of the emitters' cursors.",
        d.cursor_saves,
    );
    one(
        o,
        "polku_buffer_cursor_save_failures_total",
        "counter",
        "Cursor saves that failed (the older cursors stand).",
        d.cursor_failures,
    );
    one(
        o,
        "polku_buffer_cursors_dropped_total",
        "counter",
        "Saved cursors dropped because their emitter did not come back after a restart (what it owed went to its failure store).",
        d.cursors_dropped,
    );
    one(
        o,
        "polku_buffer_orphaned_events_total",
        "counter",
        "Events of emitters that did not come back after a restart, put in their failure stores.",
        d.orphaned_events,
    );
    one(
        o,
        "polku_buffer_cursors_damaged",
        "gauge",
        "1 if the cursors file was damaged at this start (every emitter got the whole log again).",
        u64::from(d.cursors_damaged),
    );
    one(
        o,
        "polku_buffer_torn_bytes",
        "gauge",
        "Bytes of an unfinished last record cut off at start-up (never acknowledged).",
        d.torn_bytes,
    );
    one(
        o,
        "polku_buffer_corrupt_segments",
        "gauge",
        "Damaged log segments found at start-up.",
        d.corrupt_segments,
    );
    one(
        o,
        "polku_buffer_undecodable_records_total",
        "counter",
        "Log records a replay could not decode (skipped).",
        d.undecodable_records,
    );
    one(
        o,
        "polku_buffer_failure_disk_bytes",
        "gauge",
        "Bytes the failure stores' files take on disk (outside the log's budget).",
        d.failure_disk_bytes,
    );
    one(
        o,
        "polku_buffer_failure_write_failures_total",
        "counter",
        "Writes of a failure store's file that failed (tried again; a crash meanwhile loses those failures).",
        d.failure_write_failures,
    );
    one(
        o,
        "polku_buffer_late_sync_failures_total",
        "counter",
        "With POLKU_BUFFER_SYNC_INTERVAL: syncs that failed after their records were acknowledged.",
        d.late_sync_failures,
    );
}

/// Everything `GET /metrics` shows, read at one moment.
#[derive(Debug, Default)]
pub(crate) struct MetricsSnapshot {
    pub(crate) stats: StatsSnapshot,
    /// Ingest-to-emit latency, per emitter.
    pub(crate) latency: Vec<(String, HistogramSnapshot)>,
    /// HTTP requests, by endpoint and status.
    pub(crate) http: ByOutcome,
    /// gRPC calls, by method and code.
    pub(crate) grpc: ByOutcome,
    /// Whether the gateway takes events (not starting or draining).
    pub(crate) ready: bool,
    /// The process's resident memory, where the OS says.
    pub(crate) resident_bytes: Option<u64>,
    /// Plugins registered now.
    pub(crate) plugins: usize,
    /// Connection counters, per listener.
    pub(crate) connections: Vec<(&'static str, ConnCounts)>,
}

/// The families of sources that read by themselves (Kafka), one line per
/// source (its name is the operator's, never a client's).
fn sources(o: &mut String, all: &[polku_core::source::SourceStats]) {
    use polku_core::source::SourceStats as S;
    type Family = (&'static str, &'static str, &'static str, fn(&S) -> u64);
    let families: [Family; 16] = [
        (
            "polku_source_records_total",
            "counter",
            "Records a source read.",
            |s| s.records,
        ),
        (
            "polku_source_events_accepted_total",
            "counter",
            "Events the pipeline accepted from a source's records.",
            |s| s.accepted,
        ),
        (
            "polku_source_records_undecodable_total",
            "counter",
            "Records that could not be read (kept in the dead-letter topic or the source's store of unreadable records).",
            |s| s.undecodable,
        ),
        (
            "polku_source_records_dead_lettered_total",
            "counter",
            "Records written to the dead-letter topic.",
            |s| s.dead_lettered,
        ),
        (
            "polku_source_records_unreadable_kept_total",
            "counter",
            "Unreadable records kept in the source's store (GET /v1/sources/NAME/unreadable), with no dead-letter topic set.",
            |s| s.unreadable_kept,
        ),
        (
            "polku_source_records_unreadable_skipped_total",
            "counter",
            "Unreadable records with nowhere to go (no dead-letter topic, failure stores off): logged and passed over.",
            |s| s.unreadable_skipped,
        ),
        (
            "polku_source_events_refused_total",
            "counter",
            "Events from a source refused one by one (limits, routing).",
            |s| s.refused,
        ),
        (
            "polku_source_batches_retried_total",
            "counter",
            "Batches the pipeline refused for now and that were handed over again.",
            |s| s.retried_batches,
        ),
        (
            "polku_source_commits_total",
            "counter",
            "Offset commits of records whose events were safe.",
            |s| s.commits,
        ),
        (
            "polku_source_commit_failures_total",
            "counter",
            "Offset commits that failed (tried again with the next).",
            |s| s.commit_failures,
        ),
        (
            "polku_source_pauses_total",
            "counter",
            "Times a source paused its partitions because the pipeline was full.",
            |s| s.pauses,
        ),
        (
            "polku_source_paused",
            "gauge",
            "1 while a source's partitions are paused.",
            |s| u64::from(s.paused),
        ),
        (
            "polku_source_assigned_partitions",
            "gauge",
            "Partitions a source reads now.",
            |s| s.assigned,
        ),
        (
            "polku_source_lag_records",
            "gauge",
            "Records in the partitions a source reads that are not committed yet (end offset less committed; from the client's statistics, every 2 s).",
            |s| s.lag,
        ),
        (
            "polku_source_rebalances_total",
            "counter",
            "Partitions given to or taken from a source (consumer group rebalances).",
            |s| s.rebalances,
        ),
        (
            "polku_source_unsettled_at_revoke_total",
            "counter",
            "Records not yet safe when their partition was taken away (read again by its next owner).",
            |s| s.unsettled_at_revoke,
        ),
    ];
    for (name, kind, help, read) in families {
        header(o, name, kind, help);
        for s in all {
            let _ = writeln!(o, "{name}{{source=\"{}\"}} {}", s.name, read(s));
        }
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Renders everything in the Prometheus text format (version 0.0.4).
/// A per-emitter metric: name, type, help, and how to read it.
type EmitterFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&crate::EmitterSnapshot) -> u64,
);

/// The Prometheus text (version 0.0.4) for a snapshot: a pure function,
/// the same snapshot gives the same text.
pub(crate) fn render(m: &MetricsSnapshot) -> String {
    let s = &m.stats;
    let mut o = String::with_capacity(4096);
    let counter = |o: &mut String, name: &str, help: &str, v: u64| {
        header(o, name, "counter", help);
        let _ = writeln!(o, "{name} {v}");
    };
    counter(
        &mut o,
        "polku_events_received_total",
        "Events that arrived (including records that failed to parse).",
        s.received,
    );
    counter(
        &mut o,
        "polku_events_accepted_total",
        "Events put in the buffer, and so acknowledged.",
        s.accepted,
    );
    counter(
        &mut o,
        "polku_events_generated_total",
        "Events the gateway made itself (aggregator summaries).",
        s.generated,
    );
    counter(
        &mut o,
        "polku_events_dropped_total",
        "Events of requests that middleware dropped on purpose (net of events they added).",
        s.dropped,
    );

    header(
        &mut o,
        "polku_events_rejected_total",
        "counter",
        "Events refused, by reason.",
    );
    for r in RejectReason::ALL {
        let _ = writeln!(
            o,
            "polku_events_rejected_total{{reason=\"{}\"}} {}",
            r.as_str(),
            s.rejected(r)
        );
    }
    header(
        &mut o,
        "polku_requests_rejected_total",
        "counter",
        "Whole requests refused, by reason.",
    );
    for r in RejectReason::ALL {
        let _ = writeln!(
            o,
            "polku_requests_rejected_total{{reason=\"{}\"}} {}",
            r.as_str(),
            s.rejected_requests(r)
        );
    }

    header(
        &mut o,
        "polku_middleware_dropped_total",
        "counter",
        "Events a middleware dropped on purpose, by middleware and reason.",
    );
    for m in &s.middleware {
        for (reason, n) in &m.dropped {
            let _ = writeln!(
                o,
                "polku_middleware_dropped_total{{middleware=\"{}\",position=\"{}\",reason=\"{}\"}} {}",
                m.name,
                m.position,
                reason.as_str(),
                n
            );
        }
    }

    header(
        &mut o,
        "polku_buffer_events",
        "gauge",
        "Accepted events not yet done by every emitter.",
    );
    let _ = writeln!(o, "polku_buffer_events {}", s.buffer_depth);
    header(
        &mut o,
        "polku_buffer_capacity_events",
        "gauge",
        "How many events the buffer holds.",
    );
    let _ = writeln!(o, "polku_buffer_capacity_events {}", s.buffer_capacity);
    header(
        &mut o,
        "polku_buffer_bytes",
        "gauge",
        "Bytes of accepted events not yet done by every emitter.",
    );
    let _ = writeln!(o, "polku_buffer_bytes {}", s.buffer_bytes);
    header(
        &mut o,
        "polku_buffer_max_bytes",
        "gauge",
        "The buffer's byte budget.",
    );
    let _ = writeln!(o, "polku_buffer_max_bytes {}", s.buffer_max_bytes);
    if let Some(d) = &s.durable {
        durable(&mut o, d);
    }
    if !s.sources.is_empty() {
        sources(&mut o, &s.sources);
    }

    header(
        &mut o,
        "polku_emitter_events_emitted_total",
        "counter",
        "Events an emitter delivered.",
    );
    for (name, e) in &s.emitters {
        let _ = writeln!(
            o,
            "polku_emitter_events_emitted_total{{emitter=\"{}\"}} {}",
            escape(name),
            e.emitted
        );
    }
    header(
        &mut o,
        "polku_emitter_events_failed_total",
        "counter",
        "Events an emitter could not deliver.",
    );
    for (name, e) in &s.emitters {
        let _ = writeln!(
            o,
            "polku_emitter_events_failed_total{{emitter=\"{}\"}} {}",
            escape(name),
            e.failed
        );
    }
    header(
        &mut o,
        "polku_emitter_queue_events",
        "gauge",
        "Events waiting in an emitter's queue or being sent.",
    );
    for (name, e) in &s.emitters {
        let _ = writeln!(
            o,
            "polku_emitter_queue_events{{emitter=\"{}\"}} {}",
            escape(name),
            e.queued
        );
    }

    let per_emitter: [EmitterFamily; 10] = [
        (
            "polku_emitter_events_dropped_total",
            "counter",
            "Events an emitter's full queue dropped (drop_oldest or drop_newest policy).",
            |e| e.dropped_queue_full,
        ),
        (
            "polku_emitter_events_resent_total",
            "counter",
            "Events sent again from an emitter's failure store.",
            |e| e.resent,
        ),
        (
            "polku_emitter_retries_total",
            "counter",
            "Delivery calls an emitter retried.",
            |e| e.retries,
        ),
        (
            "polku_emitter_events_retried_total",
            "counter",
            "Events an emitter sent again in retries (an upper bound on duplicates).",
            |e| e.retried_events,
        ),
        (
            "polku_emitter_timeouts_total",
            "counter",
            "Delivery calls that ran out of time.",
            |e| e.timeouts,
        ),
        (
            "polku_emitter_breaker_opened_total",
            "counter",
            "Times an emitter's circuit breaker opened.",
            |e| e.breaker_opened,
        ),
        (
            "polku_emitter_failure_store_events",
            "gauge",
            "Undelivered events kept in an emitter's failure store.",
            |e| e.failure_store_events,
        ),
        (
            "polku_emitter_failure_store_bytes",
            "gauge",
            "Bytes kept in an emitter's failure store.",
            |e| e.failure_store_bytes,
        ),
        (
            "polku_emitter_failure_store_stored_total",
            "counter",
            "Events ever put in an emitter's failure store.",
            |e| e.failure_store_stored,
        ),
        (
            "polku_emitter_failure_store_evicted_total",
            "counter",
            "Events an emitter's full failure store discarded (lost).",
            |e| e.failure_store_evicted,
        ),
    ];
    for (metric, kind, help, value) in per_emitter {
        header(&mut o, metric, kind, help);
        for (name, e) in &s.emitters {
            let extra = if metric == "polku_emitter_events_dropped_total" {
                ",reason=\"queue_full\""
            } else {
                ""
            };
            let _ = writeln!(
                o,
                "{metric}{{emitter=\"{}\"{extra}}} {}",
                escape(name),
                value(e)
            );
        }
    }
    header(
        &mut o,
        "polku_emitter_breaker_state",
        "gauge",
        "1 for the state an emitter's circuit breaker is in (closed, open, half_open).",
    );
    for (name, e) in &s.emitters {
        let Some(state) = e.breaker else { continue };
        for st in [
            polku_core::delivery::BreakerState::Closed,
            polku_core::delivery::BreakerState::Open,
            polku_core::delivery::BreakerState::HalfOpen,
        ] {
            let _ = writeln!(
                o,
                "polku_emitter_breaker_state{{emitter=\"{}\",state=\"{}\"}} {}",
                escape(name),
                st.as_str(),
                u8::from(st == state)
            );
        }
    }

    header(
        &mut o,
        "polku_ready",
        "gauge",
        "1 when the gateway takes events, 0 while starting or draining.",
    );
    let _ = writeln!(o, "polku_ready {}", u8::from(m.ready));
    if let Some(rss) = m.resident_bytes {
        header(
            &mut o,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory of the gateway process.",
        );
        let _ = writeln!(o, "process_resident_memory_bytes {rss}");
    }

    header(
        &mut o,
        "polku_ingest_to_emit_seconds",
        "histogram",
        "Time from a request's arrival to its events' delivery, per emitter.",
    );
    for (emitter, h) in &m.latency {
        let (count, sum) = (h.count, h.sum);
        let e = escape(emitter);
        for (le, c) in BUCKETS.iter().zip(h.counts) {
            let _ = writeln!(
                o,
                "polku_ingest_to_emit_seconds_bucket{{emitter=\"{e}\",le=\"{le}\"}} {c}"
            );
        }
        let _ = writeln!(
            o,
            "polku_ingest_to_emit_seconds_bucket{{emitter=\"{e}\",le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            o,
            "polku_ingest_to_emit_seconds_sum{{emitter=\"{e}\"}} {sum}"
        );
        let _ = writeln!(
            o,
            "polku_ingest_to_emit_seconds_count{{emitter=\"{e}\"}} {count}"
        );
    }

    requests(
        &mut o,
        "polku_http",
        "endpoint",
        "status",
        "HTTP requests",
        &m.http,
    );
    requests(
        &mut o,
        "polku_grpc",
        "method",
        "code",
        "gRPC calls (streams: when they open)",
        &m.grpc,
    );
    header(
        &mut o,
        "polku_plugins_registered",
        "gauge",
        "Plugins registered through the registry now.",
    );
    let _ = writeln!(o, "polku_plugins_registered {}", m.plugins);
    render_connections(&mut o, &m.connections);
    o
}

fn requests(o: &mut String, prefix: &str, what: &str, outcome: &str, help: &str, hist: &ByOutcome) {
    header(
        o,
        &format!("{prefix}_requests_total"),
        "counter",
        &format!("{help}, by {what} and {outcome}."),
    );
    for ((ep, status), h) in hist {
        let _ = writeln!(
            o,
            "{prefix}_requests_total{{{what}=\"{ep}\",{outcome}=\"{status}\"}} {}",
            h.count
        );
    }
    header(
        o,
        &format!("{prefix}_request_duration_seconds"),
        "histogram",
        &format!("{help}: time to the response, by {what}."),
    );
    let mut by_endpoint: std::collections::BTreeMap<&str, HistogramSnapshot> = Default::default();
    for ((ep, _), h) in hist {
        by_endpoint.entry(ep).or_default().add(h);
    }
    for (ep, h) in by_endpoint {
        for (le, c) in BUCKETS.iter().zip(h.counts) {
            let _ = writeln!(
                o,
                "{prefix}_request_duration_seconds_bucket{{{what}=\"{ep}\",le=\"{le}\"}} {c}"
            );
        }
        let _ = writeln!(
            o,
            "{prefix}_request_duration_seconds_bucket{{{what}=\"{ep}\",le=\"+Inf\"}} {}",
            h.count
        );
        let _ = writeln!(
            o,
            "{prefix}_request_duration_seconds_sum{{{what}=\"{ep}\"}} {}",
            h.sum
        );
        let _ = writeln!(
            o,
            "{prefix}_request_duration_seconds_count{{{what}=\"{ep}\"}} {}",
            h.count
        );
    }
}

/// Escapes a label value (backslash, quote, newline).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The process's resident memory, from `/proc/self/status` (Linux only).
pub(crate) fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Connection counters per listener (`grpc`, `http`).
fn render_connections(o: &mut String, listeners: &[(&'static str, ConnCounts)]) {
    type Field = fn(&ConnCounts) -> u64;
    /// Name, kind, help, and each series' extra labels with its counter.
    type Family = (
        &'static str,
        &'static str,
        &'static str,
        &'static [(&'static str, Field)],
    );
    let families: [Family; 6] = [
        (
            "polku_connections_open",
            "gauge",
            "Connections open now, per listener.",
            &[("", |c| c.open)],
        ),
        (
            "polku_connections_accepted_total",
            "counter",
            "Connections accepted, per listener.",
            &[("", |c| c.accepted)],
        ),
        (
            "polku_connections_refused_total",
            "counter",
            "Connections closed before any request: over POLKU_MAX_CONNECTIONS (limit) or a failed TLS handshake (tls).",
            &[
                (",reason=\"limit\"", |c| c.refused_limit),
                (",reason=\"tls\"", |c| c.refused_tls),
            ],
        ),
        (
            "polku_connections_closed_idle_total",
            "counter",
            "Connections closed after POLKU_IDLE_TIMEOUT without a request.",
            &[("", |c| c.closed_idle)],
        ),
        (
            "polku_connections_timeouts_total",
            "counter",
            "Slow clients cut off: connections that sent no request headers within POLKU_HEADER_TIMEOUT (header), requests whose body or gRPC message did not arrive within POLKU_BODY_TIMEOUT (body), connections whose replies went unread for POLKU_BODY_TIMEOUT (write).",
            &[
                (",reason=\"header\"", |c| c.cut_header),
                (",reason=\"body\"", |c| c.cut_body),
                (",reason=\"write\"", |c| c.cut_write),
            ],
        ),
        (
            "polku_connections_reserved_total",
            "counter",
            "Connections accepted over POLKU_MAX_CONNECTIONS into the reserve that serves health, readiness and metrics only (accepted), and requests refused on them (refused).",
            &[
                (",outcome=\"accepted\"", |c| c.reserved),
                (",outcome=\"refused\"", |c| c.reserved_refused),
            ],
        ),
    ];
    for (name, kind, help, series) in families {
        header(o, name, kind, help);
        for (l, c) in listeners {
            for (labels, field) in series {
                let _ = writeln!(o, "{name}{{listener=\"{l}\"{labels}}} {}", field(c));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> MetricsSnapshot {
        let mut m = MetricsSnapshot::default();
        m.stats.accepted = 5;
        m.stats.rejected_events.insert(RejectReason::BufferFull, 2);
        let mut h = HistogramSnapshot::default();
        h.counts[3] = 1;
        h.counts[4] = 2;
        h.count = 2;
        h.sum = 0.003;
        m.latency.push(("web\"hook".into(), h.clone()));
        m.grpc.insert(("SendEvent", 0), h.clone());
        m.http.insert(("/v1/events", 202), h.clone());
        m.http.insert(("/v1/events", 429), h);
        m.plugins = 1;
        m.connections.push((
            "grpc",
            ConnCounts {
                open: 3,
                cut_body: 4,
                ..Default::default()
            },
        ));
        m
    }

    fn has(text: &str, line: &str) {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }

    #[test]
    fn a_snapshot_renders_to_the_same_text_every_time() {
        let m = snapshot();
        assert_eq!(render(&m), render(&m));
    }

    #[test]
    fn each_family_shows_what_the_snapshot_holds() {
        let t = render(&snapshot());
        has(&t, "polku_events_accepted_total 5");
        has(&t, "polku_events_rejected_total{reason=\"buffer_full\"} 2");
        has(&t, "polku_events_rejected_total{reason=\"no_route\"} 0");
        has(&t, "polku_ready 0");
        has(
            &t,
            "polku_ingest_to_emit_seconds_bucket{emitter=\"web\\\"hook\",le=\"0.001\"} 1",
        );
        has(
            &t,
            "polku_ingest_to_emit_seconds_count{emitter=\"web\\\"hook\"} 2",
        );
        has(
            &t,
            "polku_grpc_requests_total{method=\"SendEvent\",code=\"0\"} 2",
        );
        has(
            &t,
            "polku_http_requests_total{endpoint=\"/v1/events\",status=\"429\"} 2",
        );
        has(
            &t,
            "polku_http_request_duration_seconds_count{endpoint=\"/v1/events\"} 4",
        );
        has(&t, "polku_plugins_registered 1");
        has(&t, "polku_connections_open{listener=\"grpc\"} 3");
        has(
            &t,
            "polku_connections_timeouts_total{listener=\"grpc\",reason=\"body\"} 4",
        );
    }

    #[test]
    fn every_family_says_what_it_is() {
        let t = render(&snapshot());
        let helps = t.lines().filter(|l| l.starts_with("# HELP ")).count();
        let types = t.lines().filter(|l| l.starts_with("# TYPE ")).count();
        assert_eq!(helps, types);
        for l in t.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap();
            let family = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(
                t.contains(&format!("# TYPE {family} ")) || t.contains(&format!("# TYPE {name} ")),
                "{name} has no TYPE line"
            );
        }
    }
}
