//! The Prometheus text format for `GET /metrics`.
//!
//! Labels never carry a string a client chose (no source, no event type):
//! reasons, middleware kinds and emitter names are all fixed by the operator
//! or the code, so cardinality stays bounded.

use crate::stats::{RejectReason, StatsSnapshot};
use std::fmt::Write as _;

/// Request counts and durations, per endpoint and status (HTTP status, or
/// gRPC code).
#[derive(Debug, Default)]
pub(crate) struct RequestMetrics {
    inner: std::sync::Mutex<std::collections::BTreeMap<(&'static str, u16), Histogram>>,
}

/// Upper bounds of the duration buckets, in seconds.
pub(crate) const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A histogram of latencies that many tasks add to without a lock.
#[derive(Debug, Default)]
pub(crate) struct LatencyHistogram {
    /// One per bucket, and one past the last (over 5 s).
    buckets: [std::sync::atomic::AtomicU64; BUCKETS.len() + 1],
    sum_micros: std::sync::atomic::AtomicU64,
}

impl LatencyHistogram {
    /// Records `n` events that each took `seconds`.
    pub(crate) fn observe_n(&self, seconds: f64, n: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let i = BUCKETS
            .iter()
            .position(|le| seconds <= *le)
            .unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(n, Relaxed);
        self.sum_micros
            .fetch_add((seconds * 1e6) as u64 * n, Relaxed);
    }

    /// Cumulative bucket counts, the count, and the sum in seconds. The
    /// count is the running total, so it is never below a bucket.
    pub(crate) fn snapshot(&self) -> ([u64; BUCKETS.len()], u64, f64) {
        use std::sync::atomic::Ordering::Relaxed;
        let mut cumulative = [0u64; BUCKETS.len()];
        let mut running = 0;
        for (c, b) in cumulative.iter_mut().zip(&self.buckets) {
            running += b.load(Relaxed);
            *c = running;
        }
        running += self.buckets[BUCKETS.len()].load(Relaxed);
        (
            cumulative,
            running,
            self.sum_micros.load(Relaxed) as f64 / 1e6,
        )
    }
}

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl RequestMetrics {
    pub(crate) fn observe(&self, endpoint: &'static str, status: u16, seconds: f64) {
        let mut m = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let h = m.entry((endpoint, status)).or_default();
        h.count += 1;
        h.sum += seconds;
        for (i, le) in BUCKETS.iter().enumerate() {
            if seconds <= *le {
                h.counts[i] += 1;
            }
        }
    }

    /// The histograms, by endpoint and status.
    fn snapshot(&self) -> std::collections::BTreeMap<(&'static str, u16), Histogram> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// The gRPC methods whose calls are counted, in [`GrpcMetrics`]' order.
pub(crate) const GRPC_METHODS: [&str; 2] = ["SendEvent", "StreamEvents"];

/// gRPC call counts and durations, by method and status code: a fixed table
/// of atomic histograms, so counting a call takes no lock (a unary call is
/// one event, and this runs for every one).
#[derive(Debug, Default)]
pub(crate) struct GrpcMetrics {
    /// Per method of [`GRPC_METHODS`], per code 0..=16.
    cells: [[LatencyHistogram; 17]; GRPC_METHODS.len()],
}

impl GrpcMetrics {
    /// Counts one call of `GRPC_METHODS[method]` that ended with `code`
    /// (codes past 16 count as 2, UNKNOWN).
    pub(crate) fn observe(&self, method: usize, code: u16, seconds: f64) {
        let code = if code > 16 { 2 } else { usize::from(code) };
        if let Some(row) = self.cells.get(method) {
            row[code].observe_n(seconds, 1);
        }
    }

    fn snapshot(&self) -> std::collections::BTreeMap<(&'static str, u16), Histogram> {
        let mut out = std::collections::BTreeMap::new();
        for (method, row) in GRPC_METHODS.iter().zip(&self.cells) {
            for (code, cell) in (0u16..).zip(row) {
                let (counts, count, sum) = cell.snapshot();
                if count > 0 {
                    out.insert((*method, code), Histogram { counts, count, sum });
                }
            }
        }
        out
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

pub(crate) fn render(
    s: &StatsSnapshot,
    latency: &[(String, &LatencyHistogram)],
    http: &RequestMetrics,
    grpc: &GrpcMetrics,
    ready: bool,
) -> String {
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
    let _ = writeln!(o, "polku_ready {}", u8::from(ready));
    if let Some(rss) = resident_memory_bytes() {
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
    for (emitter, h) in latency {
        let (buckets, count, sum) = h.snapshot();
        let e = escape(emitter);
        for (le, c) in BUCKETS.iter().zip(buckets) {
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
        &http.snapshot(),
    );
    requests(
        &mut o,
        "polku_grpc",
        "method",
        "code",
        "gRPC calls (streams: when they open)",
        &grpc.snapshot(),
    );
    o
}

fn requests(
    o: &mut String,
    prefix: &str,
    what: &str,
    outcome: &str,
    help: &str,
    hist: &std::collections::BTreeMap<(&'static str, u16), Histogram>,
) {
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
    let mut by_endpoint: std::collections::BTreeMap<&str, Histogram> = Default::default();
    for ((ep, _), h) in hist {
        let agg = by_endpoint.entry(ep).or_default();
        agg.count += h.count;
        agg.sum += h.sum;
        for (a, b) in agg.counts.iter_mut().zip(h.counts) {
            *a += b;
        }
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
pub(crate) fn render_connections(
    o: &mut String,
    listeners: &[(&'static str, std::sync::Arc<crate::listener::ConnStats>)],
) {
    use crate::listener::ConnStats;
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    type Field = fn(&ConnStats) -> &AtomicU64;
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
            &[("", |c| &c.open)],
        ),
        (
            "polku_connections_accepted_total",
            "counter",
            "Connections accepted, per listener.",
            &[("", |c| &c.accepted)],
        ),
        (
            "polku_connections_refused_total",
            "counter",
            "Connections closed before any request: over POLKU_MAX_CONNECTIONS (limit) or a failed TLS handshake (tls).",
            &[
                (",reason=\"limit\"", |c| &c.refused_limit),
                (",reason=\"tls\"", |c| &c.refused_tls),
            ],
        ),
        (
            "polku_connections_closed_idle_total",
            "counter",
            "Connections closed after POLKU_IDLE_TIMEOUT without a request.",
            &[("", |c| &c.closed_idle)],
        ),
        (
            "polku_connections_timeouts_total",
            "counter",
            "Slow clients cut off: connections that sent no request headers within POLKU_HEADER_TIMEOUT (header), requests whose body or gRPC message did not arrive within POLKU_BODY_TIMEOUT (body), connections whose replies went unread for POLKU_BODY_TIMEOUT (write).",
            &[
                (",reason=\"header\"", |c| &c.cut_header),
                (",reason=\"body\"", |c| &c.cut_body),
                (",reason=\"write\"", |c| &c.cut_write),
            ],
        ),
        (
            "polku_connections_reserved_total",
            "counter",
            "Connections accepted over POLKU_MAX_CONNECTIONS into the reserve that serves health, readiness and metrics only (accepted), and requests refused on them (refused).",
            &[
                (",outcome=\"accepted\"", |c| &c.reserved),
                (",outcome=\"refused\"", |c| &c.reserved_refused),
            ],
        ),
    ];
    for (name, kind, help, series) in families {
        header(o, name, kind, help);
        for (l, c) in listeners {
            for (labels, field) in series {
                let _ = writeln!(
                    o,
                    "{name}{{listener=\"{l}\"{labels}}} {}",
                    field(c).load(Relaxed)
                );
            }
        }
    }
}
