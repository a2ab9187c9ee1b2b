//! The accept path: a request's events are checked against the limits,
//! given room in the buffer, put through the middleware and routed to the
//! emitters' queues. `Ok` means every event counted as accepted is in the
//! buffer and will reach its emitters.

use super::buffer::{Room, Wait, batch_bytes};
use super::emitters::{Outlet, Target};
use super::{InFlight, Pipeline};
use crate::SubmitError;
use crate::stats::RejectReason;
use crate::tap::Stage;
use futures_util::FutureExt as _;
use polku_core::source::Settled;
use polku_core::{Event, Ingestor, now_unix_ns};
use polku_middleware::BatchService;
use polku_proto::v1::{RejectCode, RejectedEvent, SendEventRequest, SendEventResponse};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, PoisonError};
use tower::ServiceExt as _;
use tracing::{error, trace};

/// What became of the events of one request.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub(crate) accepted: usize,
    pub(crate) dropped: usize,
    pub(crate) rejected: Vec<RejectedEvent>,
}

/// The most refusals a reply lists; it counts them all. A request of ten
/// thousand bad records gets a short answer, not a megabyte of errors.
pub(crate) const MAX_LISTED_REJECTIONS: usize = 100;

impl Outcome {
    /// Every refusal, and the first [`MAX_LISTED_REJECTIONS`] of them.
    pub(crate) fn listed_rejections(&mut self) -> (usize, Vec<RejectedEvent>) {
        let total = self.rejected.len();
        let mut listed = std::mem::take(&mut self.rejected);
        listed.truncate(MAX_LISTED_REJECTIONS);
        (total, listed)
    }
}

impl From<Outcome> for SendEventResponse {
    fn from(mut o: Outcome) -> Self {
        let (total, rejected) = o.listed_rejections();
        SendEventResponse {
            accepted: u32::try_from(o.accepted).unwrap_or(u32::MAX),
            dropped: u32::try_from(o.dropped).unwrap_or(u32::MAX),
            rejected,
            error: None,
            rejected_total: u32::try_from(total).unwrap_or(u32::MAX),
        }
    }
}

/// Copies the batch's payloads into one buffer of their own. Decoded
/// payloads are slices of their request's buffer, and a slice keeps all of
/// it alive: whitespace, unknown fields, refused siblings. Copied, the batch
/// holds exactly the bytes the budget counts, for one allocation and one
/// copy per batch, not per event.
fn compact_payloads(events: &mut [Event]) {
    let total: usize = events.iter().map(|e| e.payload.len()).sum();
    if total == 0 {
        return;
    }
    let mut buf = bytes::BytesMut::with_capacity(total);
    for e in events.iter() {
        buf.extend_from_slice(&e.payload);
    }
    let buf = buf.freeze();
    let mut at = 0;
    for e in events {
        let n = e.payload.len();
        if n > 0 {
            e.payload = buf.slice(at..at + n);
            at += n;
        }
    }
}

impl Pipeline {
    /// Handles one request: ingests raw bytes if need be, then accepts.
    pub(crate) async fn submit(
        &self,
        req: SendEventRequest,
        wait: Wait,
    ) -> Result<Outcome, SubmitError> {
        use polku_proto::v1::send_event_request::Payload;
        let SendEventRequest { source, payload } = req;
        match payload {
            None => Err(SubmitError::EmptyRequest),
            Some(Payload::Events(batch)) => self.accept(&source, batch.events, wait).await,
            Some(Payload::Raw(raw)) => {
                let ingestor = self
                    .ingestors
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .select(&source, &raw.format)?;
                self.ingest_and_accept(ingestor, &source, raw.data, wait)
                    .await
            }
        }
    }

    /// Handles a raw body posted for a source (HTTP `POST /v1/ingest/{source}`):
    /// the source's ingestor, else the content type's.
    pub(crate) async fn submit_raw_for_source(
        &self,
        source: &str,
        content_type: &str,
        data: bytes::Bytes,
        wait: Wait,
    ) -> Result<Outcome, SubmitError> {
        let ingestor = self
            .ingestors
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .select_source_first(source, content_type)?;
        self.ingest_and_accept(ingestor, source, data, wait).await
    }

    /// Accepts events parsed elsewhere (HTTP `POST /v1/events`), with the
    /// records that failed to parse reported alongside.
    pub(crate) async fn accept_parsed(
        &self,
        source: &str,
        ingested: polku_core::Ingested,
        wait: Wait,
    ) -> Result<Outcome, SubmitError> {
        self.accept_ingested(source, ingested, wait).await
    }

    async fn ingest_and_accept(
        &self,
        ingestor: Arc<dyn Ingestor>,
        source: &str,
        data: bytes::Bytes,
        wait: Wait,
    ) -> Result<Outcome, SubmitError> {
        let ingested = ingestor
            .ingest_at_most(source, data, self.limits.max_events_per_request)
            .await
            .map_err(|e| match e {
                polku_core::IngestError::Malformed { .. } => {
                    SubmitError::MalformedInput(e.to_string())
                }
                other => SubmitError::IngestorUnavailable(other),
            })?;
        self.accept_ingested(source, ingested, wait).await
    }

    async fn accept_ingested(
        &self,
        source: &str,
        ingested: polku_core::Ingested,
        wait: Wait,
    ) -> Result<Outcome, SubmitError> {
        let failed = ingested.errors.len();
        let records = ingested.events.len() + failed;
        if records > self.limits.max_events_per_request {
            // Bad records count against the limit too: a request of a
            // million non-events is refused whole, not answered with a
            // million errors.
            self.stats.received(records);
            self.stats
                .rejected_events(RejectReason::TooManyEvents, records);
            return Err(SubmitError::TooManyEvents {
                events: records,
                limit: self.limits.max_events_per_request,
            });
        }
        self.stats.received(failed);
        self.stats
            .rejected_events(RejectReason::IngestFailed, failed);
        let mut outcome = self.accept(source, ingested.events, wait).await?;
        let mut rejected: Vec<RejectedEvent> = ingested
            .errors
            .into_iter()
            .map(|e| RejectedEvent {
                id: String::new(),
                index: Some(u32::try_from(e.index).unwrap_or(u32::MAX)),
                code: RejectCode::IngestFailed as i32,
                message: e.message,
            })
            .collect();
        rejected.append(&mut outcome.rejected);
        outcome.rejected = rejected;
        Ok(outcome)
    }

    /// Puts a batch through middleware into the buffer. `Ok` means every event
    /// counted as accepted is in the buffer and will reach its emitters.
    #[tracing::instrument(level = "trace", name = "polku.gateway.accept", skip_all, fields(events = events.len()))]
    pub(crate) async fn accept(
        &self,
        source: &str,
        events: Vec<Event>,
        wait: Wait,
    ) -> Result<Outcome, SubmitError> {
        self.accept_settled(source, events, wait, None).await
    }

    /// [`accept`](Self::accept), and drops `settled` once the accepted
    /// events are safe: done by every emitter in memory, synced with the
    /// durable buffer (at once if none is accepted, and on an error).
    pub(crate) async fn accept_settled(
        &self,
        source: &str,
        events: Vec<Event>,
        wait: Wait,
        settled: Option<Settled>,
    ) -> Result<Outcome, SubmitError> {
        if self.taps.wants(&Stage::Rejected) {
            // Boxed: the untapped path's future stays as small as before.
            return Box::pin(self.accept_tapped(source, events, wait, settled)).await;
        }
        self.accept_checked(source, events, wait, settled).await
    }

    /// [`accept_checked`](Self::accept_checked), and what was refused
    /// offered to the taps on refusals, with why.
    async fn accept_tapped(
        &self,
        source: &str,
        events: Vec<Event>,
        wait: Wait,
        settled: Option<Settled>,
    ) -> Result<Outcome, SubmitError> {
        let mut copy = events.clone();
        for e in &mut copy {
            if e.source.is_empty() {
                e.source = source.into();
            }
        }
        let result = self.accept_checked(source, events, wait, settled).await;
        match &result {
            Err(e) => {
                let why = format!("{}: {e}", e.reason().as_str());
                self.taps
                    .publish(&Stage::Rejected, copy.iter().map(|ev| (ev, why.clone())));
            }
            Ok(o) => self.taps.publish(
                &Stage::Rejected,
                o.rejected.iter().filter_map(|r| {
                    let ev = copy.get(r.index? as usize)?;
                    (r.id.is_empty() || *ev.id == *r.id).then(|| (ev, r.message.clone()))
                }),
            ),
        }
        result
    }

    /// [`accept_settled`](Self::accept_settled) without the tap.
    async fn accept_checked(
        &self,
        source: &str,
        events: Vec<Event>,
        wait: Wait,
        settled: Option<Settled>,
    ) -> Result<Outcome, SubmitError> {
        let n = events.len();
        if n > self.limits.max_events_per_request {
            self.stats.received(n);
            self.stats.rejected_events(RejectReason::TooManyEvents, n);
            return Err(SubmitError::TooManyEvents {
                events: n,
                limit: self.limits.max_events_per_request,
            });
        }
        // Every event within the limits (the usual case): sized in the same
        // pass, for the buffer.
        let sized = events.iter().try_fold(0usize, |sum, e| {
            Some(sum + self.limits.check(e, source).ok()?)
        });
        if let Some(bytes) = sized {
            return self
                .accept_valid(source, events, Some(bytes), wait, settled)
                .await;
        }
        // Refuse the events over a limit, one by one; the rest go on.
        let mut valid = Vec::with_capacity(n);
        let mut invalid = Vec::new();
        for (index, e) in events.into_iter().enumerate() {
            match self.limits.violation(&e, source) {
                None => valid.push(e),
                Some(message) => invalid.push(RejectedEvent {
                    id: if e.id.len() <= self.limits.max_id_bytes {
                        e.id.to_string()
                    } else {
                        String::new()
                    },
                    index: Some(u32::try_from(index).unwrap_or(u32::MAX)),
                    code: RejectCode::Invalid as i32,
                    message,
                }),
            }
        }
        self.stats.received(invalid.len());
        self.stats
            .rejected_events(RejectReason::InvalidEvent, invalid.len());
        let mut outcome = self
            .accept_valid(source, valid, None, wait, settled)
            .await?;
        invalid.append(&mut outcome.rejected);
        outcome.rejected = invalid;
        Ok(outcome)
    }

    /// `bytes`: what the events count against the buffer's budget, if the
    /// caller has it.
    async fn accept_valid(
        &self,
        source: &str,
        mut events: Vec<Event>,
        bytes: Option<usize>,
        wait: Wait,
        settled: Option<Settled>,
    ) -> Result<Outcome, SubmitError> {
        let _inflight = InFlight::enter(self);
        let arrived = tokio::time::Instant::now();
        let n = events.len();
        self.stats.received(n);
        if n == 0 {
            return Ok(Outcome::default());
        }
        if n > self.buffer.capacity() {
            self.stats.rejected_events(RejectReason::BatchTooLarge, n);
            return Err(SubmitError::BatchTooLarge {
                events: n,
                capacity: self.buffer.capacity(),
            });
        }
        let bytes = bytes.unwrap_or_else(|| batch_bytes(&events));
        if bytes > self.limits.buffer_max_bytes {
            self.stats.rejected_events(RejectReason::BatchTooLarge, n);
            return Err(SubmitError::BatchOverBudget {
                bytes,
                max_bytes: self.limits.buffer_max_bytes,
            });
        }
        let mut room = match self.buffer.reserve(n, bytes, &wait).await {
            Ok(room) => room,
            Err(e) => {
                self.stats.rejected_events(e.reason(), n);
                return Err(e);
            }
        };
        let now = now_unix_ns();
        polku_core::ensure_ids(&mut events);
        // One copy of the request's source, shared by its events.
        let source = polku_core::Str::from(source);
        for e in &mut events {
            if e.source.is_empty() {
                e.source = source.clone();
            }
            if e.timestamp_unix_ns == 0 {
                e.timestamp_unix_ns = now;
            }
        }

        let (mut kept, kept_bytes) = match &self.middleware {
            // No middleware: the batch is as it came, and so is its size
            // (copying the payloads below does not change what is counted).
            None => (events, bytes),
            Some(chain) => {
                let kept = self.through_middleware(chain, events).await?;
                let kept_bytes = batch_bytes(&kept);
                if kept.len() > n || kept_bytes > bytes {
                    // A middleware made more events, or bigger ones, than it
                    // got (an aggregator's summary, an enricher): they need
                    // room too. Never wait for it while holding room, or two
                    // such requests could wait on each other forever: there
                    // is room now, or the request is refused.
                    let extra_events = kept.len().saturating_sub(n);
                    let extra_bytes = kept_bytes.saturating_sub(bytes);
                    match self.buffer.try_reserve(extra_events, extra_bytes) {
                        Ok(more) => room.merge(more),
                        Err(err) => {
                            self.stats.rejected_events(err.reason(), n);
                            return Err(err);
                        }
                    }
                }
                (kept, kept_bytes)
            }
        };
        compact_payloads(&mut kept);
        let dropped = n.saturating_sub(kept.len());
        room.shrink_to(kept.len(), kept_bytes);
        self.stats.dropped(dropped);
        let outcome = self.deliver(kept, room, dropped, arrived, settled).await?;
        // Let the emitters just woken run before the caller goes on: it would
        // otherwise reply (and that wake-up pushes them back in the run
        // queue) and take the next request, and the events accepted here
        // would wait behind it and behind every other request ready to run.
        // At half load this keeps ingest-to-emit under 1 ms (BENCHMARKS.md).
        tokio::task::yield_now().await;
        Ok(outcome)
    }

    /// Runs a batch through the middleware chain, watching its drops when
    /// someone taps them. A middleware's error or panic refuses the request.
    async fn through_middleware(
        &self,
        chain: &BatchService,
        events: Vec<Event>,
    ) -> Result<Vec<Event>, SubmitError> {
        let n = events.len();
        // Someone taps drops: the events, and the chain watched for the
        // drops it counts for this request, to show what was dropped and
        // which middleware did it, and why.
        let tapped = self.taps.wants(&Stage::Dropped).then(|| events.clone());
        // A panicking middleware fails this request, not the handler's task.
        let chain = chain.clone().oneshot(events);
        let (result, watched) = match tapped {
            None => (AssertUnwindSafe(chain).catch_unwind().await, Vec::new()),
            Some(_) => {
                Box::pin(polku_middleware::drops::watched(
                    AssertUnwindSafe(chain).catch_unwind(),
                ))
                .await
            }
        };
        let kept = match result {
            Ok(Ok(kept)) => kept,
            Ok(Err(err)) => {
                self.stats
                    .rejected_events(RejectReason::MiddlewareFailed, n);
                return Err(SubmitError::MiddlewareFailed(err));
            }
            Err(_panic) => {
                error!("a middleware panicked; the request is refused");
                self.stats
                    .rejected_events(RejectReason::MiddlewareFailed, n);
                return Err(SubmitError::MiddlewareFailed(
                    "a middleware panicked".into(),
                ));
            }
        };
        if let Some(input) = tapped {
            self.tap_dropped(&input, &kept, &watched);
        }
        Ok(kept)
    }

    /// Puts events that the gateway made itself (an aggregator's summaries)
    /// into the buffer, past the middleware. Waits for room as `wait` says.
    pub(crate) async fn accept_generated(
        &self,
        events: Vec<Event>,
        wait: Wait,
    ) -> Result<usize, SubmitError> {
        let _inflight = InFlight::enter(self);
        let mut accepted = 0;
        let mut rest = events;
        while !rest.is_empty() {
            let tail = rest.split_off(rest.len().min(self.buffer.capacity()));
            let chunk = std::mem::replace(&mut rest, tail);
            let n = chunk.len();
            let bytes = batch_bytes(&chunk).min(self.limits.buffer_max_bytes);
            let room = match self.buffer.reserve(n, bytes, &wait).await {
                Ok(p) => p,
                Err(e) => {
                    self.stats.rejected_events(e.reason(), n + rest.len());
                    error!(events = n + rest.len(), error = %e, "generated events (summaries) lost");
                    return Err(e);
                }
            };
            self.stats.generated(n);
            let outcome = self
                .deliver(chunk, room, 0, tokio::time::Instant::now(), None)
                .await?;
            accepted += outcome.accepted;
        }
        Ok(accepted)
    }

    /// Routes the batch to the emitters' queues. In memory, never waits; in
    /// the durable buffer, waits until the batch's record is synced (the
    /// committing thread queues it then), and a refusal there refuses the
    /// whole batch.
    async fn deliver(
        &self,
        kept: Vec<Event>,
        mut room: Room,
        dropped: usize,
        arrived: tokio::time::Instant,
        settled: Option<Settled>,
    ) -> Result<Outcome, SubmitError> {
        // In memory the events are safe once every emitter is done with
        // them, when their room goes back; on disk, once their record is.
        let settled = match (settled, &self.journal) {
            (Some(s), None) => {
                room.settle_with(s);
                None
            }
            (s, _) => s,
        };
        let (routed, rejected) = self.route(kept, room)?;
        let Some(Routed {
            batch,
            room,
            shares,
        }) = routed
        else {
            return Ok(Outcome {
                accepted: 0,
                dropped,
                rejected,
            });
        };
        let accepted = batch.len();
        match &self.journal {
            None => {
                self.remember(&batch);
                for (target, events) in shares {
                    target.send_events(events, room.clone(), arrived, None);
                }
            }
            Some(journal) => {
                let on_durable = Box::new(move |number: u64| {
                    for (target, events) in shares {
                        target.send_events(events, room.clone(), arrived, Some(number));
                    }
                });
                if let Err(e) = journal.commit(&batch, on_durable).await {
                    self.stats.rejected_events(e.reason(), accepted);
                    return Err(e);
                }
                drop(settled);
                self.remember(&batch);
            }
        }
        self.stats.accepted(accepted);
        if self.taps.wants(&Stage::Accepted) {
            self.taps
                .publish(&Stage::Accepted, batch.iter().map(|e| (e, String::new())));
        }
        trace!(accepted, dropped, "batch accepted");
        Ok(Outcome {
            accepted,
            dropped,
            rejected,
        })
    }

    /// Offers the events of `input` that are not in `kept` to the taps on
    /// drops, each with the middleware that dropped it and why (`watched`:
    /// this request's own drops). An event a middleware only counted (an
    /// aggregator folding it) carries the reasons of those that named no
    /// events, each with its count when there are several.
    fn tap_dropped(
        &self,
        input: &[Event],
        kept: &[Event],
        watched: &[polku_middleware::drops::Watched],
    ) {
        use std::collections::HashMap;
        // By id, counted: a duplicate that was dropped has its id kept too.
        let mut kept_ids: HashMap<&str, usize> = HashMap::with_capacity(kept.len());
        for e in kept {
            *kept_ids.entry(&*e.id).or_default() += 1;
        }
        let mut gone = input
            .iter()
            .filter(|e| match kept_ids.get_mut(&*e.id) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    false
                }
                _ => true,
            })
            .peekable();
        if gone.peek().is_none() {
            return;
        }
        let name = |counts: usize| {
            self.middleware_drops
                .get()
                .and_then(|all| all.iter().find(|m| m.drops().id() == counts))
                .map_or("middleware", |m| m.name())
        };
        // Each named event's own reason (the first middleware that dropped
        // an event of that id).
        let mut named: HashMap<&str, String> = HashMap::new();
        for w in watched {
            for id in &w.ids {
                named
                    .entry(&**id)
                    .or_insert_with(|| format!("{}: {}", name(w.counts), w.reason.as_str()));
            }
        }
        let unnamed: Vec<_> = watched.iter().filter(|w| w.ids.is_empty()).collect();
        let rest = match unnamed.as_slice() {
            [] => "dropped by a middleware".to_owned(),
            [one] => format!("{}: {}", name(one.counts), one.reason.as_str()),
            many => many
                .iter()
                .map(|w| format!("{}: {} ({})", name(w.counts), w.reason.as_str(), w.n))
                .collect::<Vec<_>>()
                .join(", "),
        };
        self.taps.publish(
            &Stage::Dropped,
            gone.map(|e| (e, named.get(&*e.id).unwrap_or(&rest).clone())),
        );
    }

    /// The batch is accepted (on disk, in the durable buffer): middleware
    /// that remember what was accepted (a deduplicator) may now.
    fn remember(&self, batch: &[Event]) {
        for c in self.commits.get().into_iter().flatten() {
            c.commit(batch);
        }
    }

    /// Picks each event's emitters: the batch, its room (shrunk to the
    /// events that go in), and each emitter's share; events that no running
    /// emitter takes are refused. `None` when no event goes in.
    fn route(
        &self,
        kept: Vec<Event>,
        mut room: Room,
    ) -> Result<(Option<Routed>, Vec<RejectedEvent>), SubmitError> {
        let guard = self.emitters.outlets();
        let Some(outlets) = guard.as_ref() else {
            self.stats
                .rejected_events(RejectReason::ShuttingDown, kept.len());
            return Err(SubmitError::ShuttingDown);
        };

        let mut rejected = Vec::new();
        let no_route = |e: &Event| RejectedEvent {
            id: e.id.to_string(),
            index: None,
            code: RejectCode::NoRoute as i32,
            message: if outlets.is_empty() {
                "no emitter is running".to_owned()
            } else {
                format!(
                    "route_to {:?} names no running emitter (running: {})",
                    e.route_to,
                    outlets
                        .iter()
                        .map(Outlet::name)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
        };

        let all_broadcast = kept.iter().all(|e| e.route_to.is_empty());
        let valid: Vec<Event> = if all_broadcast && !outlets.is_empty() {
            kept
        } else {
            let mut valid = Vec::with_capacity(kept.len());
            for e in kept {
                let routable = if e.route_to.is_empty() {
                    !outlets.is_empty()
                } else {
                    e.route_to
                        .iter()
                        .any(|r| outlets.iter().any(|o| o.name() == *r))
                };
                if routable {
                    valid.push(e);
                } else {
                    rejected.push(no_route(&e));
                }
            }
            valid
        };
        self.stats
            .rejected_events(RejectReason::NoRoute, rejected.len());

        // Give back the room of events that are not going in.
        if valid.is_empty() {
            drop(room);
            return Ok((None, rejected));
        }
        if !rejected.is_empty() {
            room.shrink_to(valid.len(), batch_bytes(&valid));
        }
        let batch = Arc::new(valid);
        let mut shares = Vec::with_capacity(outlets.len());
        for outlet in outlets {
            let events = if all_broadcast {
                batch.clone()
            } else {
                let mine: Vec<Event> = batch
                    .iter()
                    .filter(|e| e.is_routed_to(outlet.name()))
                    .cloned()
                    .collect();
                if mine.is_empty() {
                    continue;
                }
                if mine.len() == batch.len() {
                    batch.clone()
                } else {
                    Arc::new(mine)
                }
            };
            shares.push((outlet.target.clone(), events));
        }
        Ok((
            Some(Routed {
                batch,
                room: Arc::new(room),
                shares,
            }),
            rejected,
        ))
    }
}

/// A batch on its way in: the events, their room, and each emitter's share.
struct Routed {
    batch: Arc<Vec<Event>>,
    room: Arc<Room>,
    shares: Vec<(Arc<Target>, Arc<Vec<Event>>)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::testing::{TestEmitter, events, finish, limits, pipeline, pipeline_of};
    use polku_core::BoxError;
    use polku_middleware::{BatchService, identity};
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::Duration;
    use tower::util::BoxCloneSyncService;

    const NOW: Wait = Wait::For(Duration::ZERO);

    fn chain(f: impl Fn(Vec<Event>) -> Vec<Event> + Clone + Send + Sync + 'static) -> BatchService {
        BoxCloneSyncService::new(tower::service_fn(move |batch: Vec<Event>| {
            let out = f(batch);
            std::future::ready(Ok::<_, BoxError>(out))
        }))
    }

    fn rejected(p: &Pipeline, reason: RejectReason) -> u64 {
        p.stats
            .snapshot()
            .rejected_events
            .get(&reason)
            .copied()
            .unwrap_or(0)
    }

    #[tokio::test]
    async fn every_emitter_gets_a_broadcast_and_only_its_routed_events() {
        let (a, b) = (TestEmitter::new("a"), TestEmitter::new("b"));
        let p = pipeline(vec![a.clone(), b.clone()], 100, identity(), limits());
        a.hold();
        b.hold();
        let mut evs = events(&["all", "to-a", "to-nobody"]);
        evs[1].route_to = ["a"].into_iter().collect();
        evs[2].route_to = ["zz"].into_iter().collect();
        let out = p.accept("src", evs, NOW).await.unwrap();
        assert_eq!(out.accepted, 2);
        assert_eq!(out.rejected.len(), 1);
        assert_eq!(out.rejected[0].code, RejectCode::NoRoute as i32);
        assert!(
            out.rejected[0].message.contains("running: a, b"),
            "{}",
            out.rejected[0].message
        );
        assert_eq!(rejected(&p, RejectReason::NoRoute), 1);
        assert_eq!(p.depth(), 2, "the refused event gave its room back at once");
        a.release();
        b.release();
        finish(&p).await;
        assert_eq!(a.ids(), ["all", "to-a"]);
        assert_eq!(b.ids(), ["all"]);
        assert_eq!(p.depth(), 0, "every batch gave its room back");
    }

    #[tokio::test]
    async fn the_request_source_and_a_timestamp_fill_what_events_leave_empty() {
        let a = TestEmitter::new("a");
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut evs = events(&["1", "2"]);
        evs[1].source = "own".into();
        evs[1].timestamp_unix_ns = 7;
        let probe = {
            let seen = seen.clone();
            chain(move |b: Vec<Event>| {
                seen.lock().unwrap().extend(
                    b.iter()
                        .map(|e| (e.source.to_string(), e.timestamp_unix_ns)),
                );
                b
            })
        };
        let p = pipeline(vec![a.clone()], 100, probe, limits());
        p.accept("req", evs, NOW).await.unwrap();
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen[0].0, "req");
        assert!(seen[0].1 > 0, "stamped on arrival");
        assert_eq!(seen[1], ("own".to_owned(), 7));
        finish(&p).await;
        assert_eq!(a.ids(), ["1", "2"]);
    }

    #[tokio::test]
    async fn events_over_a_limit_are_refused_by_index_and_the_rest_go_in() {
        let a = TestEmitter::new("a");
        let mut l = limits();
        l.max_id_bytes = 4;
        let p = pipeline(vec![a.clone()], 100, identity(), l);
        let out = p
            .accept("src", events(&["ok1", "much-too-long", "ok2"]), NOW)
            .await
            .unwrap();
        assert_eq!(out.accepted, 2);
        assert_eq!(out.rejected.len(), 1);
        assert_eq!(out.rejected[0].index, Some(1));
        assert_eq!(out.rejected[0].id, "", "an over-long id is not echoed");
        assert!(out.rejected[0].message.contains("POLKU_MAX_ID_BYTES"));
        assert_eq!(rejected(&p, RejectReason::InvalidEvent), 1);
        finish(&p).await;
        assert_eq!(a.ids(), ["ok1", "ok2"]);
    }

    #[tokio::test]
    async fn whole_requests_past_the_count_or_the_room_are_refused_and_counted() {
        let mut l = limits();
        l.max_events_per_request = 3;
        let p = pipeline(vec![TestEmitter::new("a")], 2, identity(), l);
        let e = p
            .accept("s", events(&["1", "2", "3", "4"]), NOW)
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                SubmitError::TooManyEvents {
                    events: 4,
                    limit: 3
                }
            ),
            "{e:?}"
        );
        let e = p
            .accept("s", events(&["1", "2", "3"]), NOW)
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                SubmitError::BatchTooLarge {
                    events: 3,
                    capacity: 2
                }
            ),
            "{e:?}"
        );
        let s = p.stats.snapshot();
        assert_eq!(s.received, 7);
        assert_eq!(s.accepted, 0);
        finish(&p).await;
    }

    #[tokio::test]
    async fn a_full_buffer_refuses_before_the_middleware_sees_anything() {
        let a = TestEmitter::new("a");
        a.hold();
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counting = {
            let seen = seen.clone();
            chain(move |b: Vec<Event>| {
                seen.fetch_add(b.len(), Relaxed);
                b
            })
        };
        let p = pipeline(vec![a.clone()], 2, counting, limits());
        p.accept("s", events(&["1", "2"]), NOW).await.unwrap();
        let e = p.accept("s", events(&["3"]), NOW).await.unwrap_err();
        assert!(matches!(e, SubmitError::BufferFull { .. }), "{e:?}");
        assert_eq!(
            seen.load(Relaxed),
            2,
            "the refused event never reached the middleware"
        );
        assert_eq!(rejected(&p, RejectReason::BufferFull), 1);
        a.release();
        finish(&p).await;
        assert_eq!(a.ids(), ["1", "2"]);
    }

    #[tokio::test]
    async fn middleware_drops_are_counted_and_their_room_given_back() {
        let a = TestEmitter::new("a");
        a.hold();
        let keep_odd =
            chain(|b: Vec<Event>| b.into_iter().filter(|e| e.id.ends_with('1')).collect());
        let p = pipeline(vec![a.clone()], 10, keep_odd, limits());
        let out = p.accept("s", events(&["1", "2", "3"]), NOW).await.unwrap();
        assert_eq!((out.accepted, out.dropped), (1, 2));
        assert_eq!(p.depth(), 1, "only the kept event holds room");
        assert_eq!(p.stats.snapshot().dropped, 2);
        a.release();
        finish(&p).await;
    }

    #[tokio::test]
    async fn a_panicking_middleware_fails_the_request_and_holds_nothing() {
        let p = pipeline(
            vec![TestEmitter::new("a")],
            10,
            chain(|_| panic!("boom")),
            limits(),
        );
        let e = p.accept("s", events(&["1"]), NOW).await.unwrap_err();
        assert!(matches!(e, SubmitError::MiddlewareFailed(_)), "{e:?}");
        assert_eq!(p.depth(), 0);
        assert_eq!(rejected(&p, RejectReason::MiddlewareFailed), 1);
        finish(&p).await;
    }

    #[tokio::test]
    async fn a_middleware_that_makes_more_events_needs_room_for_them_now() {
        let a = TestEmitter::new("a");
        a.hold();
        let double = chain(|b: Vec<Event>| b.iter().chain(b.iter()).cloned().collect());
        let p = pipeline(vec![a.clone()], 3, double, limits());
        let out = p.accept("s", events(&["1"]), NOW).await.unwrap();
        assert_eq!(out.accepted, 2, "room for the extra event was free");
        let e = p.accept("s", events(&["2"]), NOW).await.unwrap_err();
        assert!(matches!(e, SubmitError::BufferFull { .. }), "{e:?}");
        assert_eq!(p.depth(), 2, "the refused request gave all its room back");
        a.release();
        finish(&p).await;
    }

    #[tokio::test]
    async fn generated_events_go_in_chunks_no_bigger_than_the_buffer() {
        let a = TestEmitter::new("a");
        let p = pipeline(vec![a.clone()], 4, identity(), limits());
        let ids: Vec<String> = (0..10).map(|i| i.to_string()).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let n = p
            .accept_generated(events(&ids), Wait::Drain(Duration::from_secs(5)))
            .await
            .unwrap();
        assert_eq!(n, 10);
        assert_eq!(p.stats.snapshot().generated, 10);
        finish(&p).await;
        assert_eq!(a.ids(), ids);
        assert!(a.batches().iter().all(|b| b.len() <= 4));
    }

    #[tokio::test]
    async fn with_no_emitter_nothing_is_accepted_and_the_reply_says_why() {
        let p = pipeline(vec![], 10, identity(), limits());
        let out = p.accept("s", events(&["1"]), NOW).await.unwrap();
        assert_eq!(out.accepted, 0);
        assert_eq!(out.rejected[0].message, "no emitter is running");
        assert_eq!(p.depth(), 0);
        finish(&p).await;
        let e = p.accept("s", events(&["2"]), NOW).await.unwrap_err();
        assert!(matches!(e, SubmitError::ShuttingDown), "{e:?}");
    }

    #[tokio::test]
    async fn bad_records_count_against_the_limit_and_are_listed_with_their_index() {
        let a = TestEmitter::new("a");
        let mut l = limits();
        l.max_events_per_request = 3;
        let p = pipeline(vec![a.clone()], 10, identity(), l);
        let raw = |body: &'static str| SendEventRequest {
            source: "s".into(),
            payload: Some(polku_proto::v1::send_event_request::Payload::Raw(
                polku_proto::v1::RawPayload {
                    data: bytes::Bytes::from_static(body.as_bytes()),
                    format: "json".into(),
                },
            )),
        };
        let out = p
            .submit(raw(r#"[{"id":"x","event_type":"t"}, 1]"#), NOW)
            .await
            .unwrap();
        assert_eq!(out.accepted, 1);
        assert_eq!(out.rejected[0].index, Some(1));
        assert_eq!(out.rejected[0].code, RejectCode::IngestFailed as i32);
        let e = p.submit(raw("[1, 1, 1, 1, 1]"), NOW).await.unwrap_err();
        assert!(matches!(e, SubmitError::TooManyEvents { .. }), "{e:?}");
        finish(&p).await;
        assert_eq!(a.ids(), ["x"]);
    }

    #[test]
    fn a_reply_lists_a_bounded_number_of_refusals_and_counts_them_all() {
        let mut o = Outcome {
            accepted: 1,
            dropped: 0,
            rejected: vec![RejectedEvent::default(); MAX_LISTED_REJECTIONS + 5],
        };
        let (total, listed) = o.listed_rejections();
        assert_eq!(total, MAX_LISTED_REJECTIONS + 5);
        assert_eq!(listed.len(), MAX_LISTED_REJECTIONS);
    }

    #[tokio::test]
    async fn with_no_middleware_a_batch_holds_its_size_and_not_its_request() {
        // No chain at all (a Hub with no middleware): the batch goes straight
        // on, holds the room its events count, and its payloads are copied
        // out of the request's buffer all the same.
        let a = TestEmitter::new("a");
        a.hold();
        let p = pipeline_of(vec![a.clone()], 10, None, limits());
        let request = bytes::Bytes::from(vec![b'x'; 1 << 16]);
        let mut evs = events(&["1", "2", "3"]);
        evs[0].payload = request.slice(10..14);
        evs[1] = evs[1].clone().with_metadata("k", "v");
        evs[2].payload = request.slice(100..302);
        let counted = batch_bytes(&evs);
        let out = p.accept("s", evs, NOW).await.unwrap();
        assert_eq!((out.accepted, out.dropped), (3, 0));
        assert_eq!((p.buffer.depth(), p.buffer.depth_bytes()), (3, counted));
        assert!(
            request.is_unique(),
            "the held events do not pin the request"
        );
        a.release();
        finish(&p).await;
        assert_eq!(a.ids(), ["1", "2", "3"]);
        assert_eq!(p.buffer.depth_bytes(), 0, "all room given back");
    }

    #[test]
    fn compacted_payloads_no_longer_pin_their_request() {
        let request = bytes::Bytes::from(vec![b' '; 1 << 16]);
        let mut evs = events(&["1", "2", "3"]);
        evs[0].payload = request.slice(10..14);
        evs[2].payload = request.slice(100..102);
        compact_payloads(&mut evs);
        let range = request.as_ptr() as usize..request.as_ptr() as usize + request.len();
        for e in &evs {
            assert!(!range.contains(&(e.payload.as_ptr() as usize)) || e.payload.is_empty());
        }
        assert_eq!(evs[0].payload.len(), 4);
        assert_eq!(evs[2].payload.len(), 2);
        assert!(evs[1].payload.is_empty());
        drop(evs);
        assert!(request.is_unique(), "nothing holds the request's buffer");
    }
}
