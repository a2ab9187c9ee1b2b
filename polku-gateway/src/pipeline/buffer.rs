//! The buffer: room for events and for bytes, which every accepted batch
//! holds until each emitter it goes to is done with it.
//!
//! Room is two semaphores: one permit per event (`POLKU_BUFFER_CAPACITY`)
//! and one per byte (`POLKU_BUFFER_MAX_BYTES`). A request reserves room for
//! its events *before* anything else happens, so a full buffer refuses a
//! request before middleware state such as dedup has seen it; the [`Room`]
//! then travels with the batch and gives its permits back when dropped. So
//! the buffer bounds every accepted event in memory, whichever emitter is
//! slow, and an emitter's queue can never outgrow it.
//!
//! This is the interface the rest of the pipeline sees: reserve room (now, or
//! waiting as a [`Wait`] says), read the depth, stop admitting, close. A
//! disk-backed buffer offers the same.

use crate::SubmitError;
use polku_core::Event;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, watch};

/// How long a request may wait for room in the buffer.
#[derive(Debug, Clone)]
pub(crate) enum Wait {
    /// Up to this long (unary calls), then `BufferFull`.
    For(Duration),
    /// Until room frees up or shutdown starts (streams: not reading meanwhile
    /// is what pushes back on the client through HTTP/2 flow control).
    UntilShutdown(watch::Receiver<bool>),
    /// Up to this long, even while shutting down: the gateway's own drain of
    /// events that middleware held back.
    Drain(Duration),
}

/// Room in the buffer: permits for events and for bytes, held together and
/// given back together when dropped.
#[derive(Debug)]
pub(crate) struct Room {
    events: OwnedSemaphorePermit,
    bytes: OwnedSemaphorePermit,
    /// Told when the room goes back: every emitter is done with the batch
    /// (a source waits for that to commit its position).
    settled: Option<polku_core::source::Settled>,
}

impl Room {
    /// Drops `settled` when this room goes back.
    pub(crate) fn settle_with(&mut self, settled: polku_core::source::Settled) {
        self.settled = Some(settled);
    }

    /// Gives back what is held beyond `events` events and `bytes` bytes.
    pub(crate) fn shrink_to(&mut self, events: usize, bytes: usize) {
        let held = self.events.num_permits();
        if held > events {
            drop(self.events.split(held - events));
        }
        let held = self.bytes.num_permits();
        if held > bytes {
            drop(self.bytes.split(held - bytes));
        }
    }

    /// Holds `other`'s room too.
    pub(crate) fn merge(&mut self, mut other: Room) {
        self.events.merge(other.events);
        self.bytes.merge(other.bytes);
        if self.settled.is_none() {
            self.settled = other.settled.take();
        }
    }

    /// The events and bytes this room holds.
    #[cfg(test)]
    pub(crate) fn held(&self) -> (usize, usize) {
        (self.events.num_permits(), self.bytes.num_permits())
    }
}

/// What a batch counts against the byte budget: each event's strings,
/// metadata and payload, plus the event itself.
pub(crate) fn batch_bytes(events: &[Event]) -> usize {
    events.iter().map(event_bytes).sum()
}

/// What one event counts against the byte budget.
pub(crate) fn event_bytes(e: &Event) -> usize {
    bytes_of(e.approx_size())
}

/// What an event of this [`Event::approx_size`] counts against the budget.
pub(crate) fn bytes_of(approx_size: usize) -> usize {
    approx_size + std::mem::size_of::<Event>()
}

/// The in-memory buffer: room for `capacity` events and `max_bytes` bytes.
pub(crate) struct Buffer {
    capacity: usize,
    max_bytes: usize,
    events: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    /// True once shutdown starts: nothing waits for room any more.
    stopping: watch::Sender<bool>,
    /// Called when a request finds no room and is about to wait: emitters
    /// that hold events for batches of their own write them (see
    /// [`polku_core::Emitter::flush_now`]).
    on_full: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buffer")
            .field("capacity", &self.capacity)
            .field("max_bytes", &self.max_bytes)
            .field("depth", &self.depth())
            .finish_non_exhaustive()
    }
}

impl Buffer {
    /// A buffer with room for `capacity` events and `max_bytes` bytes.
    pub(crate) fn new(capacity: usize, max_bytes: usize) -> Self {
        Buffer {
            capacity,
            max_bytes,
            events: Arc::new(Semaphore::new(capacity)),
            bytes: Arc::new(Semaphore::new(max_bytes)),
            stopping: watch::channel(false).0,
            on_full: std::sync::OnceLock::new(),
        }
    }

    /// The most events the buffer holds.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// The most bytes the buffer holds.
    pub(crate) fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Events held (accepted and not yet done by every emitter).
    pub(crate) fn depth(&self) -> usize {
        self.capacity
            .saturating_sub(self.events.available_permits())
    }

    /// Bytes held.
    pub(crate) fn depth_bytes(&self) -> usize {
        self.max_bytes
            .saturating_sub(self.bytes.available_permits())
    }

    fn full(&self, waited: Duration) -> SubmitError {
        SubmitError::BufferFull {
            waited,
            capacity: self.capacity,
            max_bytes: self.max_bytes,
        }
    }

    /// Room for `n` events and `bytes` bytes now, or an error.
    pub(crate) fn try_reserve(&self, n: usize, bytes: usize) -> Result<Room, SubmitError> {
        let n32 = u32::try_from(n).map_err(|_| self.full(Duration::ZERO))?;
        let b32 = u32::try_from(bytes).map_err(|_| self.full(Duration::ZERO))?;
        let map = |e| match e {
            TryAcquireError::Closed => SubmitError::ShuttingDown,
            TryAcquireError::NoPermits => self.full(Duration::ZERO),
        };
        let events = self
            .events
            .clone()
            .try_acquire_many_owned(n32)
            .map_err(map)?;
        let bytes = self
            .bytes
            .clone()
            .try_acquire_many_owned(b32)
            .map_err(map)?;
        Ok(Room {
            events,
            bytes,
            settled: None,
        })
    }

    /// Room for `n` events and `bytes` bytes, waiting as `wait` says. Never
    /// holds one kind of room while it waits for the other (two requests
    /// could otherwise wait on each other): it waits for events, then takes
    /// the bytes if they are free, else lets the events go and waits for the
    /// bytes, and so on.
    pub(crate) async fn reserve(
        &self,
        n: usize,
        bytes: usize,
        wait: &Wait,
    ) -> Result<Room, SubmitError> {
        let n32 = u32::try_from(n).map_err(|_| SubmitError::BatchTooLarge {
            events: n,
            capacity: self.capacity,
        })?;
        let b32 = u32::try_from(bytes).map_err(|_| SubmitError::BatchOverBudget {
            bytes,
            max_bytes: self.max_bytes,
        })?;
        let draining = matches!(wait, Wait::Drain(_));
        if *self.stopping.borrow() && !draining {
            return Err(SubmitError::ShuttingDown);
        }
        match self.try_reserve(n, bytes) {
            Ok(room) => return Ok(room),
            Err(SubmitError::ShuttingDown) => return Err(SubmitError::ShuttingDown),
            Err(_) => {
                if let Some(f) = self.on_full.get() {
                    f();
                }
            }
        }
        let limit = match wait {
            Wait::For(d) | Wait::Drain(d) => Some(*d),
            Wait::UntilShutdown(_) => None,
        };
        let deadline = limit.map(|d| tokio::time::Instant::now() + d);
        loop {
            let events = self
                .wait_for(&self.events, n32, wait, deadline, limit)
                .await?;
            match self.bytes.clone().try_acquire_many_owned(b32) {
                Ok(bytes) => {
                    return Ok(Room {
                        events,
                        bytes,
                        settled: None,
                    });
                }
                Err(TryAcquireError::Closed) => return Err(SubmitError::ShuttingDown),
                Err(TryAcquireError::NoPermits) => drop(events),
            }
            let bytes = self
                .wait_for(&self.bytes, b32, wait, deadline, limit)
                .await?;
            match self.events.clone().try_acquire_many_owned(n32) {
                Ok(events) => {
                    return Ok(Room {
                        events,
                        bytes,
                        settled: None,
                    });
                }
                Err(TryAcquireError::Closed) => return Err(SubmitError::ShuttingDown),
                Err(TryAcquireError::NoPermits) => drop(bytes),
            }
        }
    }

    /// Waits for `n32` permits of `sem` until `deadline` (or shutdown).
    async fn wait_for(
        &self,
        sem: &Arc<Semaphore>,
        n32: u32,
        wait: &Wait,
        deadline: Option<tokio::time::Instant>,
        limit: Option<Duration>,
    ) -> Result<OwnedSemaphorePermit, SubmitError> {
        let draining = matches!(wait, Wait::Drain(_));
        let mut stopping = self.stopping.subscribe();
        let acquire = sem.clone().acquire_many_owned(n32);
        // Shutdown wakes every request that waits for room (but not the
        // gateway's own drain of held-back events).
        let stop = async move {
            if draining {
                std::future::pending::<()>().await;
            }
            let _ = stopping.wait_for(|s| *s).await;
        };
        let external = async {
            match wait {
                Wait::UntilShutdown(rx) => {
                    let mut rx = rx.clone();
                    let _ = rx.wait_for(|s| *s).await;
                }
                _ => std::future::pending::<()>().await,
            }
        };
        let timer = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            p = acquire => p.map_err(|_| SubmitError::ShuttingDown),
            _ = stop => Err(SubmitError::ShuttingDown),
            _ = external => Err(SubmitError::ShuttingDown),
            _ = timer => Err(self.full(limit.unwrap_or_default())),
        }
    }

    /// Sets what is called when a request finds the buffer full (once).
    pub(crate) fn on_full(&self, f: Box<dyn Fn() + Send + Sync>) {
        let _ = self.on_full.set(f);
    }

    /// Turns true when shutdown starts.
    pub(crate) fn stopping(&self) -> watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    /// Stops admitting: requests waiting for room, and any later ones, fail
    /// at once with `ShuttingDown`. Room already held stays held, and
    /// [`Wait::Drain`] still gets in.
    pub(crate) fn stop_admitting(&self) {
        let _ = self.stopping.send(true);
    }

    /// Closes the buffer: nothing gets room any more, not even a drain.
    pub(crate) fn close(&self) {
        self.events.close();
        self.bytes.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(r: Result<Room, SubmitError>) -> bool {
        matches!(r, Err(SubmitError::BufferFull { .. }))
    }

    #[test]
    fn room_is_counted_while_held_and_given_back_when_dropped() {
        let b = Buffer::new(10, 1000);
        let room = b.try_reserve(4, 300).unwrap();
        assert_eq!((b.depth(), b.depth_bytes()), (4, 300));
        assert!(full(b.try_reserve(7, 1)), "7 more events do not fit");
        assert!(full(b.try_reserve(1, 701)), "701 more bytes do not fit");
        drop(room);
        assert_eq!((b.depth(), b.depth_bytes()), (0, 0));
        assert!(b.try_reserve(10, 1000).is_ok());
    }

    #[test]
    fn a_failed_reservation_holds_nothing() {
        let b = Buffer::new(10, 100);
        assert!(full(b.try_reserve(5, 101)));
        assert_eq!(
            (b.depth(), b.depth_bytes()),
            (0, 0),
            "the events were let go"
        );
    }

    #[test]
    fn shrink_and_merge_move_exactly_what_they_say() {
        let b = Buffer::new(10, 1000);
        let mut room = b.try_reserve(6, 600).unwrap();
        room.shrink_to(2, 150);
        assert_eq!(room.held(), (2, 150));
        assert_eq!((b.depth(), b.depth_bytes()), (2, 150));
        room.shrink_to(5, 900);
        assert_eq!(room.held(), (2, 150), "shrinking never grows");
        room.merge(b.try_reserve(1, 50).unwrap());
        assert_eq!(room.held(), (3, 200));
        drop(room);
        assert_eq!(b.depth(), 0);
    }

    #[test]
    fn a_count_past_u32_is_full_or_too_large_not_a_panic() {
        let b = Buffer::new(10, 1000);
        assert!(full(b.try_reserve(usize::MAX, 1)));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let r = rt.block_on(b.reserve(usize::MAX, 1, &Wait::For(Duration::ZERO)));
        assert!(matches!(r, Err(SubmitError::BatchTooLarge { .. })));
        let r = rt.block_on(b.reserve(1, usize::MAX, &Wait::For(Duration::ZERO)));
        assert!(matches!(r, Err(SubmitError::BatchOverBudget { .. })));
    }

    #[tokio::test(start_paused = true)]
    async fn a_bounded_wait_says_how_long_it_waited() {
        let b = Buffer::new(1, 100);
        let _held = b.try_reserve(1, 10).unwrap();
        let start = tokio::time::Instant::now();
        let r = b.reserve(1, 10, &Wait::For(Duration::from_secs(2))).await;
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        match r {
            Err(SubmitError::BufferFull { waited, .. }) => {
                assert_eq!(waited, Duration::from_secs(2))
            }
            other => panic!("expected BufferFull, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_gets_room_as_soon_as_it_is_given_back() {
        let b = Arc::new(Buffer::new(2, 100));
        let held = b.try_reserve(2, 10).unwrap();
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.reserve(2, 10, &Wait::For(Duration::from_secs(5))).await })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiter.is_finished());
        drop(held);
        let room = waiter.await.unwrap().unwrap();
        assert_eq!(room.held(), (2, 10));
    }

    /// A request short of events holds no bytes while it waits, so another
    /// request can take them (two requests could otherwise wait on each
    /// other forever).
    #[tokio::test(start_paused = true)]
    async fn waiting_for_one_kind_of_room_never_holds_the_other() {
        let b = Arc::new(Buffer::new(4, 100));
        let events_hog = b.try_reserve(4, 1).unwrap();
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.reserve(2, 90, &Wait::For(Duration::from_secs(10))).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(
            b.depth_bytes(),
            1,
            "the waiter holds no bytes while short of events"
        );
        let other = b
            .try_reserve(0, 99)
            .expect("the bytes are free for another request");
        drop(other);
        drop(events_hog);
        let room = waiter.await.unwrap().unwrap();
        assert_eq!(room.held(), (2, 90));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_wakes_waiters_but_not_the_drain() {
        let b = Arc::new(Buffer::new(1, 100));
        let held = b.try_reserve(1, 10).unwrap();
        let (_tx, rx) = watch::channel(false);
        let stream = {
            let b = b.clone();
            tokio::spawn(async move { b.reserve(1, 10, &Wait::UntilShutdown(rx)).await })
        };
        let drain = {
            let b = b.clone();
            tokio::spawn(async move {
                b.reserve(1, 10, &Wait::Drain(Duration::from_secs(30)))
                    .await
            })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        b.stop_admitting();
        let r = stream.await.unwrap();
        assert!(matches!(r, Err(SubmitError::ShuttingDown)), "{r:?}");
        assert!(matches!(
            b.reserve(1, 1, &Wait::For(Duration::from_secs(1))).await,
            Err(SubmitError::ShuttingDown)
        ));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!drain.is_finished(), "the drain still waits for room");
        drop(held);
        assert!(drain.await.unwrap().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_stops_waiting_when_its_own_signal_fires() {
        let b = Arc::new(Buffer::new(1, 100));
        let _held = b.try_reserve(1, 10).unwrap();
        let (tx, rx) = watch::channel(false);
        let stream = {
            let b = b.clone();
            tokio::spawn(async move { b.reserve(1, 10, &Wait::UntilShutdown(rx)).await })
        };
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(!stream.is_finished(), "a stream waits as long as it takes");
        tx.send(true).unwrap();
        assert!(matches!(
            stream.await.unwrap(),
            Err(SubmitError::ShuttingDown)
        ));
    }

    #[tokio::test]
    async fn a_closed_buffer_gives_no_room() {
        let b = Buffer::new(10, 100);
        b.close();
        assert!(matches!(
            b.try_reserve(1, 1),
            Err(SubmitError::ShuttingDown)
        ));
        assert!(matches!(
            b.reserve(1, 1, &Wait::Drain(Duration::from_secs(1))).await,
            Err(SubmitError::ShuttingDown)
        ));
    }
}
