//! Taps: live events at a stage of the pipeline, for `polku tap`.
//!
//! A stage that nobody taps costs one relaxed atomic load per batch. A tap
//! copies the events it wants into its own bounded channel without
//! waiting: a client that reads too slowly loses tap events (counted, and
//! told to it), never slows the pipeline.

use polku_core::Event;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, PoisonError, RwLock};
use tokio::sync::mpsc;

/// Tap events a client may be behind before it loses them.
const TAP_CHANNEL: usize = 1024;

/// Where in the pipeline a tap looks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Accepted into the buffer.
    Accepted,
    /// Refused, with the code and message.
    Rejected,
    /// Dropped by a middleware, with which and why.
    Dropped,
    /// Done by one emitter: delivered, or given up on with its error.
    Emitter(String),
}

impl Stage {
    /// `accepted`, `rejected`, `dropped` or `emitter:NAME`.
    pub(crate) fn parse(s: &str) -> Option<Stage> {
        match s {
            "accepted" => Some(Stage::Accepted),
            "rejected" => Some(Stage::Rejected),
            "dropped" => Some(Stage::Dropped),
            _ => s
                .strip_prefix("emitter:")
                .filter(|n| !n.is_empty())
                .map(|n| Stage::Emitter(n.to_owned())),
        }
    }

    fn slot(&self) -> usize {
        match self {
            Stage::Accepted => 0,
            Stage::Rejected => 1,
            Stage::Dropped => 2,
            Stage::Emitter(_) => 3,
        }
    }

    /// The stage as the tap request names it.
    pub(crate) fn name(&self) -> String {
        match self {
            Stage::Accepted => "accepted".into(),
            Stage::Rejected => "rejected".into(),
            Stage::Dropped => "dropped".into(),
            Stage::Emitter(n) => format!("emitter:{n}"),
        }
    }
}

/// One event seen at a stage.
#[derive(Debug, Clone)]
pub(crate) struct Tapped {
    pub(crate) event: Event,
    pub(crate) reason: String,
}

/// What a tap wants.
#[derive(Debug)]
struct Sub {
    stage: Stage,
    source: String,
    event_type: String,
    sample: u64,
    seen: AtomicU64,
    lost: Arc<AtomicU64>,
    tx: mpsc::Sender<Tapped>,
}

impl Sub {
    fn wants(&self, e: &Event) -> bool {
        (self.source.is_empty() || *e.source == *self.source)
            && (self.event_type.is_empty() || *e.event_type == *self.event_type)
            && (self.sample <= 1 || self.seen.fetch_add(1, Relaxed).is_multiple_of(self.sample))
    }
}

/// The taps of one gateway.
#[derive(Debug, Default)]
pub(crate) struct Taps {
    subs: RwLock<Vec<Arc<Sub>>>,
    /// Taps per stage kind (accepted, rejected, dropped, emitters).
    active: [AtomicUsize; 4],
}

/// A tap's end: its events, and how many it lost. Dropping it removes the
/// tap.
#[derive(Debug)]
pub(crate) struct Subscription {
    taps: Arc<Taps>,
    sub: Arc<Sub>,
    pub(crate) rx: mpsc::Receiver<Tapped>,
}

impl Subscription {
    /// Tap events lost so far because the client read too slowly.
    pub(crate) fn lost(&self) -> u64 {
        self.sub.lost.load(Relaxed)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut subs = self
            .taps
            .subs
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        subs.retain(|s| !Arc::ptr_eq(s, &self.sub));
        self.taps.active[self.sub.stage.slot()].fetch_sub(1, Relaxed);
    }
}

impl Taps {
    /// Whether anyone taps this kind of stage (the only cost of a stage
    /// that nobody taps).
    #[inline]
    pub(crate) fn wants(&self, stage: &Stage) -> bool {
        self.active[stage.slot()].load(Relaxed) > 0
    }

    /// Whether anyone taps an emitter.
    #[inline]
    pub(crate) fn wants_emitters(&self) -> bool {
        self.active[3].load(Relaxed) > 0
    }

    /// Starts a tap.
    pub(crate) fn subscribe(
        self: &Arc<Self>,
        stage: Stage,
        source: String,
        event_type: String,
        sample: u32,
    ) -> Subscription {
        let (tx, rx) = mpsc::channel(TAP_CHANNEL);
        let sub = Arc::new(Sub {
            stage,
            source,
            event_type,
            sample: u64::from(sample),
            seen: AtomicU64::new(0),
            lost: Arc::new(AtomicU64::new(0)),
            tx,
        });
        self.subs
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(sub.clone());
        self.active[sub.stage.slot()].fetch_add(1, Relaxed);
        Subscription {
            taps: self.clone(),
            sub,
            rx,
        }
    }

    /// Offers `events` seen at `stage`, each with the reason `reason(i)`
    /// gives, to the taps on it; never waits.
    pub(crate) fn publish<'a>(
        &self,
        stage: &Stage,
        events: impl IntoIterator<Item = (&'a Event, String)>,
    ) {
        let subs: Vec<Arc<Sub>> = self
            .subs
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|s| s.stage == *stage)
            .cloned()
            .collect();
        if subs.is_empty() {
            return;
        }
        for (e, reason) in events {
            for s in &subs {
                if !s.wants(e) {
                    continue;
                }
                // Room first: a tap that is behind costs no copy.
                match s.tx.try_reserve() {
                    Ok(permit) => permit.send(Tapped {
                        event: e.clone(),
                        reason: reason.clone(),
                    }),
                    Err(_) => {
                        s.lost.fetch_add(1, Relaxed);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_parse_from_their_names() {
        for s in ["accepted", "rejected", "dropped", "emitter:s3"] {
            assert_eq!(Stage::parse(s).unwrap().name(), s);
        }
        assert!(Stage::parse("emitter:").is_none());
        assert!(Stage::parse("buffered").is_none());
    }

    #[tokio::test]
    async fn a_tap_gets_what_it_asks_for_and_a_slow_one_loses_the_rest() {
        let taps = Arc::new(Taps::default());
        assert!(!taps.wants(&Stage::Accepted));
        let mut web = taps.subscribe(Stage::Accepted, "web".into(), String::new(), 2);
        let other = taps.subscribe(Stage::Emitter("s3".into()), String::new(), String::new(), 0);
        assert!(taps.wants(&Stage::Accepted) && taps.wants_emitters());
        assert!(!taps.wants(&Stage::Rejected));
        let events: Vec<Event> = (0..6)
            .map(|i| Event::new("t").with_source(if i < 4 { "web" } else { "api" }))
            .collect();
        taps.publish(&Stage::Accepted, events.iter().map(|e| (e, String::new())));
        // Every other one of the four from web.
        let mut got = 0;
        while web.rx.try_recv().is_ok() {
            got += 1;
        }
        assert_eq!(got, 2);
        // Nobody reads the emitter tap: past its channel, events are lost.
        let many: Vec<Event> = (0..TAP_CHANNEL + 10).map(|_| Event::new("t")).collect();
        taps.publish(
            &Stage::Emitter("s3".into()),
            many.iter().map(|e| (e, "delivered".into())),
        );
        assert_eq!(other.lost(), 10);
        drop(other);
        assert!(!taps.wants_emitters(), "a dropped tap is gone");
    }
}
