//! Durations, recorded as histograms: ingest-to-emit per emitter, HTTP
//! requests per endpoint and status, gRPC calls per method and code. The
//! Prometheus text is rendered elsewhere (`metrics`), from snapshots.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};

/// Upper bounds of the duration buckets, in seconds.
pub(crate) const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A histogram read at one moment: cumulative counts per bucket of
/// [`BUCKETS`], the count (never below a bucket) and the sum in seconds.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct HistogramSnapshot {
    pub(crate) counts: [u64; BUCKETS.len()],
    pub(crate) count: u64,
    pub(crate) sum: f64,
}

impl HistogramSnapshot {
    /// Adds `other`'s observations to these.
    pub(crate) fn add(&mut self, other: &HistogramSnapshot) {
        self.count += other.count;
        self.sum += other.sum;
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a += b;
        }
    }
}

/// A histogram of latencies that many tasks add to without a lock.
#[derive(Debug, Default)]
pub(crate) struct LatencyHistogram {
    /// One per bucket, and one past the last (over 5 s).
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl LatencyHistogram {
    /// Records `n` events that each took `seconds`.
    pub(crate) fn observe_n(&self, seconds: f64, n: u64) {
        let i = BUCKETS
            .iter()
            .position(|le| seconds <= *le)
            .unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(n, Relaxed);
        self.sum_micros
            .fetch_add((seconds * 1e6) as u64 * n, Relaxed);
    }

    /// What it holds now. The count is the running total, so it is never
    /// below a bucket.
    pub(crate) fn snapshot(&self) -> HistogramSnapshot {
        let mut counts = [0u64; BUCKETS.len()];
        let mut running = 0;
        for (c, b) in counts.iter_mut().zip(&self.buckets) {
            running += b.load(Relaxed);
            *c = running;
        }
        running += self.buckets[BUCKETS.len()].load(Relaxed);
        HistogramSnapshot {
            counts,
            count: running,
            sum: self.sum_micros.load(Relaxed) as f64 / 1e6,
        }
    }
}

/// Histograms by a label pair (endpoint and status, method and code).
pub(crate) type ByOutcome = BTreeMap<(&'static str, u16), HistogramSnapshot>;

/// HTTP request counts and durations, per endpoint and status.
#[derive(Debug, Default)]
pub(crate) struct RequestMetrics {
    inner: Mutex<BTreeMap<(&'static str, u16), LatencyHistogram>>,
}

impl RequestMetrics {
    /// Counts one request to `endpoint` (a route template) that got `status`.
    pub(crate) fn observe(&self, endpoint: &'static str, status: u16, seconds: f64) {
        let mut m = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        m.entry((endpoint, status))
            .or_default()
            .observe_n(seconds, 1);
    }

    /// The histograms, by endpoint and status.
    pub(crate) fn snapshot(&self) -> ByOutcome {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, h)| (*k, h.snapshot()))
            .collect()
    }
}

/// The gRPC methods whose calls are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GrpcMethod {
    /// `polku.v1.Gateway/SendEvent`.
    SendEvent,
    /// `polku.v1.Gateway/StreamEvents` (counted when the stream opens).
    StreamEvents,
}

impl GrpcMethod {
    /// Every method, in table order.
    const ALL: [GrpcMethod; 2] = [GrpcMethod::SendEvent, GrpcMethod::StreamEvents];

    /// The method of a request path, if it is one that is counted.
    pub(crate) fn from_path(path: &str) -> Option<GrpcMethod> {
        match path {
            "/polku.v1.Gateway/SendEvent" => Some(GrpcMethod::SendEvent),
            "/polku.v1.Gateway/StreamEvents" => Some(GrpcMethod::StreamEvents),
            _ => None,
        }
    }

    /// The metric label value.
    pub(crate) fn name(self) -> &'static str {
        match self {
            GrpcMethod::SendEvent => "SendEvent",
            GrpcMethod::StreamEvents => "StreamEvents",
        }
    }
}

/// gRPC call counts and durations, by method and status code: a fixed table
/// of atomic histograms, so counting a call takes no lock (a unary call is
/// one event, and this runs for every one).
#[derive(Debug, Default)]
pub(crate) struct GrpcMetrics {
    /// Per method of [`GrpcMethod::ALL`], per code 0..=16.
    cells: [[LatencyHistogram; 17]; GrpcMethod::ALL.len()],
}

impl GrpcMetrics {
    /// Counts one call of `method` that ended with `code` (codes past 16
    /// count as 2, UNKNOWN).
    pub(crate) fn observe(&self, method: GrpcMethod, code: u16, seconds: f64) {
        let code = if code > 16 { 2 } else { usize::from(code) };
        self.cells[method as usize][code].observe_n(seconds, 1);
    }

    /// The histograms with a call, by method name and code.
    pub(crate) fn snapshot(&self) -> ByOutcome {
        let mut out = BTreeMap::new();
        for (method, row) in GrpcMethod::ALL.iter().zip(&self.cells) {
            for (code, cell) in (0u16..).zip(row) {
                let h = cell.snapshot();
                if h.count > 0 {
                    out.insert((method.name(), code), h);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_the_count_includes_the_slowest() {
        let h = LatencyHistogram::default();
        h.observe_n(0.0001, 2);
        h.observe_n(0.003, 1);
        h.observe_n(60.0, 1);
        let s = h.snapshot();
        assert_eq!(s.counts[0], 2);
        assert_eq!(s.counts[4], 2, "0.003 is past the 0.0025 bound");
        assert_eq!(s.counts[5], 3);
        assert_eq!(s.counts[BUCKETS.len() - 1], 3, "60 s is past every bound");
        assert_eq!(s.count, 4);
        assert!((s.sum - 60.0032).abs() < 1e-6, "{}", s.sum);
    }

    #[test]
    fn grpc_calls_are_counted_by_method_and_code() {
        let g = GrpcMetrics::default();
        g.observe(GrpcMethod::SendEvent, 0, 0.001);
        g.observe(GrpcMethod::SendEvent, 0, 0.001);
        g.observe(GrpcMethod::StreamEvents, 99, 0.001);
        let s = g.snapshot();
        assert_eq!(s[&("SendEvent", 0)].count, 2);
        assert_eq!(
            s[&("StreamEvents", 2)].count,
            1,
            "an unknown code counts as UNKNOWN"
        );
        assert_eq!(s.len(), 2, "only cells with calls");
        assert_eq!(
            GrpcMethod::from_path("/polku.v1.Gateway/SendEvent"),
            Some(GrpcMethod::SendEvent)
        );
        assert_eq!(
            GrpcMethod::from_path("/polku.v1.PluginRegistry/Register"),
            None
        );
    }

    #[test]
    fn http_requests_are_counted_by_endpoint_and_status() {
        let m = RequestMetrics::default();
        m.observe("/v1/events", 202, 0.002);
        m.observe("/v1/events", 413, 0.07);
        m.observe("/v1/events", 202, 0.004);
        let s = m.snapshot();
        assert_eq!(s[&("/v1/events", 202)].count, 2);
        assert_eq!(s[&("/v1/events", 413)].count, 1);
        let mut all = HistogramSnapshot::default();
        for h in s.values() {
            all.add(h);
        }
        assert_eq!(all.count, 3);
    }
}
