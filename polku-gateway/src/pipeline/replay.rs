//! Replay after a restart: each emitter gets again, from its saved cursor,
//! the records of the durable buffer's log that it had not delivered.
//!
//! One pass over the log serves every emitter being replayed to: a reading
//! thread scans the segments (a few records ahead, never the whole log in
//! memory), and each record is given room in the buffer (waiting for it,
//! as a stream does) and queued to each emitter whose cursor it is at or
//! past (and that its saved position does not call done), as the events
//! routed to it. Live traffic flows meanwhile; the
//! emitters' cursors stay at the replay's position until it is past.

use super::Pipeline;
use super::buffer::{Wait, batch_bytes};
use super::emitters::{Delivery, Replay};
use super::journal::{Journal, Ticket, decode};
use super::log::read_range;
use polku_core::Event;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use tracing::{error, info, warn};

/// Records read ahead of the one being queued.
const READ_AHEAD: usize = 4;

impl Pipeline {
    /// Replays to each of `replays` what it had not delivered before the
    /// restart (records from its cursor up to the log's end at start-up).
    /// Stops early, keeping the cursors where it got, when shutdown starts.
    pub(crate) async fn replay(self: Arc<Self>, journal: Arc<Journal>, replays: Vec<Replay>) {
        let Some(from) = replays.iter().map(|r| r.from).min() else {
            return;
        };
        let end = journal.replay_end();
        let names: Vec<&str> = replays.iter().map(|r| r.target.name.as_str()).collect();
        info!(emitters = ?names, from, end, "durable buffer: replaying what the emitters had not delivered");
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(u64, Vec<u8>)>(READ_AHEAD);
        let dir = journal.dir().to_owned();
        let reader = tokio::task::spawn_blocking(move || {
            read_range(&dir, from, end, |n, payload| {
                tx.blocking_send((n, payload)).is_ok()
            })
        });
        let wait = Wait::UntilShutdown(self.stopping());
        let mut replayed = 0u64;
        let mut complete = true;
        let mut active = vec![true; replays.len()];
        while let Some((number, payload)) = rx.recv().await {
            let events = match decode(payload) {
                Ok(e) => e,
                Err(e) => {
                    journal.counters.undecodable.fetch_add(1, Relaxed);
                    error!(record = number, error = %e, "durable buffer: a record that does not decode is skipped");
                    Vec::new()
                }
            };
            let due: Vec<usize> = (0..replays.len())
                .filter(|&i| active[i] && replays[i].from <= number)
                .collect();
            let shares: Vec<(usize, Arc<Vec<Event>>)> = due
                .iter()
                .filter_map(|&i| {
                    // Done before the crash (a later batch that finished
                    // while an earlier one was retried): not sent again.
                    if replays[i]
                        .target
                        .owed
                        .as_ref()
                        .is_some_and(|o| o.skips(number))
                    {
                        return None;
                    }
                    let mine: Vec<Event> = events
                        .iter()
                        .filter(|e| e.is_routed_to(&replays[i].target.name))
                        .cloned()
                        .collect();
                    (!mine.is_empty()).then(|| (i, Arc::new(mine)))
                })
                .collect();
            let room = if shares.is_empty() {
                None
            } else {
                // A record was accepted within the buffer's bounds, which may
                // have shrunk since: it takes at most all of the room.
                let n = events.len().min(self.buffer.capacity());
                let bytes = batch_bytes(&events).min(self.buffer.max_bytes());
                match self.buffer.reserve(n, bytes, &wait).await {
                    Ok(room) => Some(Arc::new(room)),
                    Err(_) => {
                        complete = false;
                        break;
                    }
                }
            };
            for &i in &due {
                let target = &replays[i].target;
                let owed = target.owed.as_ref().expect("a replay is durable");
                let share = shares.iter().find(|(s, _)| *s == i);
                owed.replayed(number, share.is_some());
                let (Some((_, events)), Some(room)) = (share, &room) else {
                    continue;
                };
                let len = events.len() as u64;
                let delivery = Delivery {
                    events: events.clone(),
                    _room: room.clone(),
                    arrived: tokio::time::Instant::now(),
                    _ticket: Some(Ticket::owed(owed.clone(), number)),
                    _taken: None,
                };
                if target.send(delivery).is_err() {
                    // Its emitter is gone (removed, or shutting down): what
                    // it owes from here stays in the log for the next start.
                    owed.hold_at(number);
                    active[i] = false;
                    complete = false;
                    warn!(emitter = %target.name, "durable buffer: replay target is gone");
                } else {
                    replayed += len;
                    journal.counters.replayed.fetch_add(len, Relaxed);
                }
            }
            if !active.iter().any(|a| *a) {
                break;
            }
        }
        drop(rx);
        match reader.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                complete = false;
                error!(error = %e, "durable buffer: the replay could not read the log");
            }
            Err(e) => {
                complete = false;
                error!(error = %e, "durable buffer: the replay's reader failed");
            }
        }
        if complete {
            for r in &replays {
                if let Some(owed) = &r.target.owed {
                    // Past `end`, it owes only what it was sent live.
                    owed.replay_done();
                }
            }
            info!(events = replayed, "durable buffer: replay done");
        } else {
            warn!(
                events = replayed,
                "durable buffer: replay stopped early; the rest is replayed at the next start"
            );
        }
    }
}
