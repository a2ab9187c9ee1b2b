//! Accepting connections for the gRPC and HTTP servers: a cap on open
//! connections, TLS (with optional client certificates), and the deadlines
//! that keep slow clients from holding a listener.
//!
//! One accept task per listener takes TCP connections, runs TLS handshakes
//! concurrently under a time limit, and hands ready connections to the
//! server. Over `POLKU_MAX_CONNECTIONS`, a small reserve
//! (`POLKU_RESERVED_CONNECTIONS`) is still accepted: those connections serve
//! health, readiness and metrics only, so a listener full of ingestion
//! clients can still be watched; past the reserve, connections are closed at
//! once (a client fails fast instead of waiting in the kernel's backlog).
//!
//! Deadlines, each ending a connection with end of stream on its next read
//! (the server then closes it):
//! - `POLKU_HEADER_TIMEOUT`: a connection's first request must arrive within
//!   it of the connection's start, a later HTTP/1.1 request within it of its
//!   first byte, and an HTTP/2 header block (HEADERS, then CONTINUATION
//!   frames) within it of its first frame ([`H2Frames`] follows the frames;
//!   an idle HTTP/2 connection reads pings, which start nothing);
//! - `POLKU_IDLE_TIMEOUT`: no request in flight for this long. Requests are
//!   counted by [`TrackConnLayer`], so HTTP/2 keepalive pings do not keep an
//!   unused connection open;
//! - `POLKU_BODY_TIMEOUT`: a request body (an HTTP body whole, a gRPC
//!   message from its first byte) must arrive within it, else the request
//!   fails with a status naming the limit ([`body::Timed`]); and a reply that
//!   makes no progress for this long (a client that stopped reading) ends
//!   the connection.
//!
//! The parts: [`tls`] (the TLS files), [`track`] (each request: in flight,
//! its body deadline, the reserve's refusals), [`body`] (the body deadline)
//! and [`h2`] (HTTP/2 frames, for the header deadline); accepting and the
//! connection deadlines are here.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::{Instant, Sleep};
use tokio_rustls::rustls;
use tracing::{debug, warn};

/// How long a client may take to finish its TLS handshake.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a reserved connection may take to send its request's headers
/// (a probe sends them at once; a slow client must not hold the reserve).
const RESERVED_HEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// `pending_ms` when no HTTP/1.1 request has begun to arrive.
const NOT_PENDING: u64 = u64::MAX;

mod body;
mod h2;
mod tls;
mod track;

pub(crate) use body::BodyTimeout;
use h2::H2Frames;
pub use tls::{TlsConfig, TlsError};
pub(crate) use track::{Reserve, TrackConnLayer};

/// How a listener accepts connections.
#[derive(Debug, Clone)]
pub(crate) struct ListenerConfig {
    /// TLS for every connection, when set.
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    /// Open connections at most; more are closed at once.
    pub(crate) max_connections: usize,
    /// How long a connection may go without a request in flight.
    pub(crate) idle_timeout: Option<Duration>,
    /// How long a client may take to send a request's headers.
    pub(crate) header_timeout: Option<Duration>,
    /// How long a body (or one gRPC message) may take to arrive, and a
    /// reply may go without progress.
    pub(crate) body_timeout: Option<Duration>,
    /// Connections accepted over `max_connections` for health only.
    pub(crate) reserved: usize,
}

/// Counters of one listener, for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct ConnStats {
    pub(crate) open: AtomicU64,
    pub(crate) accepted: AtomicU64,
    pub(crate) refused_limit: AtomicU64,
    pub(crate) refused_tls: AtomicU64,
    pub(crate) closed_idle: AtomicU64,
    /// Connections accepted into the reserve over `POLKU_MAX_CONNECTIONS`.
    pub(crate) reserved: AtomicU64,
    /// Requests refused on a reserved connection (not health or metrics).
    pub(crate) reserved_refused: AtomicU64,
    /// Connections closed for not sending a request's headers in time.
    pub(crate) cut_header: AtomicU64,
    /// Requests whose body (or gRPC message) did not arrive in time.
    pub(crate) cut_body: AtomicU64,
    /// Connections closed because their replies made no progress.
    pub(crate) cut_write: AtomicU64,
}

/// [`ConnStats`] read at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ConnCounts {
    pub(crate) open: u64,
    pub(crate) accepted: u64,
    pub(crate) refused_limit: u64,
    pub(crate) refused_tls: u64,
    pub(crate) closed_idle: u64,
    pub(crate) reserved: u64,
    pub(crate) reserved_refused: u64,
    pub(crate) cut_header: u64,
    pub(crate) cut_body: u64,
    pub(crate) cut_write: u64,
}

impl ConnStats {
    /// The counters now.
    pub(crate) fn snapshot(&self) -> ConnCounts {
        ConnCounts {
            open: self.open.load(Relaxed),
            accepted: self.accepted.load(Relaxed),
            refused_limit: self.refused_limit.load(Relaxed),
            refused_tls: self.refused_tls.load(Relaxed),
            closed_idle: self.closed_idle.load(Relaxed),
            reserved: self.reserved.load(Relaxed),
            reserved_refused: self.reserved_refused.load(Relaxed),
            cut_header: self.cut_header.load(Relaxed),
            cut_body: self.cut_body.load(Relaxed),
            cut_write: self.cut_write.load(Relaxed),
        }
    }
}

/// What a connection shares with the requests on it.
#[derive(Debug)]
pub(crate) struct ConnState {
    started: Instant,
    /// Requests in flight (until their response body ends).
    active: AtomicUsize,
    /// Requests whose response body ended, ever.
    finished: AtomicUsize,
    /// When the last request started or ended, in ms since `started`.
    last_ms: AtomicU64,
    /// Whether any request has started on this connection.
    any_request: std::sync::atomic::AtomicBool,
    /// When the bytes of an HTTP/1.1 request began to arrive with none in
    /// flight, in ms since `started`; [`NOT_PENDING`] otherwise.
    pending_ms: AtomicU64,
    /// Over `POLKU_MAX_CONNECTIONS`: serves health, readiness, metrics only.
    reserved: bool,
    /// `POLKU_BODY_TIMEOUT`, for the requests on this connection.
    body_timeout: Option<Duration>,
    stats: Arc<ConnStats>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl ConnState {
    fn touch(&self) {
        self.last_ms.store(self.ms_since_start(), Relaxed);
    }

    fn ms_since_start(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn at_ms(&self, ms: u64) -> Instant {
        self.started + Duration::from_millis(ms)
    }
}

impl Drop for ConnState {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Relaxed);
    }
}

/// Who is on the other end of a connection; in every request's extensions.
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    /// The peer's address.
    pub(crate) remote_addr: SocketAddr,
    /// This side's address.
    pub(crate) local_addr: SocketAddr,
    state: Arc<ConnState>,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// Why a connection was ended by a deadline.
#[derive(Debug, Clone, Copy)]
enum Cut {
    Idle,
    Header,
}

/// An accepted connection, plain or TLS.
pub(crate) struct Conn {
    io: Io,
    info: ConnInfo,
    idle_timeout: Option<Duration>,
    header_timeout: Option<Duration>,
    /// Wakes the reader at the next deadline.
    timer: Option<Pin<Box<Sleep>>>,
    /// HTTP/2 (from the connection preface), once its first bytes are in.
    h2: Option<bool>,
    /// The HTTP/2 frames read so far, followed until the protocol is known
    /// (and for good if it is HTTP/2).
    frames: H2Frames,
    /// Since when an HTTP/2 header block has been open (a HEADERS frame
    /// whose CONTINUATION has not come).
    block_since: Option<Instant>,
    /// Set once a deadline has ended the connection.
    cut: bool,
    /// Since when a write has made no progress.
    write_stall: Option<Pin<Box<Sleep>>>,
    /// Turns the current write was put off (see [`Conn::put_off`]).
    put_off: u8,
    /// `state.finished` at the last flush or turn put off.
    finished_seen: usize,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("remote_addr", &self.info.remote_addr)
            .field("tls", &matches!(self.io, Io::Tls(_)))
            .finish()
    }
}

impl Conn {
    /// The next deadline, or why the connection is past one.
    fn next_deadline(&self, now: Instant) -> Result<Option<Instant>, Cut> {
        let s = &self.info.state;
        // An open HTTP/2 header block stalls the whole connection, streams
        // in flight or not: it must end within the header deadline.
        let block = match (self.header_timeout, self.block_since) {
            (Some(h), Some(since)) => {
                let at = since + h;
                if at <= now {
                    return Err(Cut::Header);
                }
                Some(at)
            }
            _ => None,
        };
        if s.active.load(Relaxed) > 0 {
            // A request in flight: its body has its own deadline. Look again
            // later (keeping the timer already set, not one per read).
            let Some(every) = self.idle_timeout.or(self.header_timeout) else {
                return Ok(block);
            };
            let kept = self.timer.as_ref().map(|t| t.deadline());
            let again = kept.filter(|at| *at > now).unwrap_or(now + every);
            return Ok(Some(block.map_or(again, |b| b.min(again))));
        }
        let mut next: Option<Instant> = block;
        if let Some(idle) = self.idle_timeout {
            let at = s.at_ms(s.last_ms.load(Relaxed)) + idle;
            if at <= now {
                return Err(Cut::Idle);
            }
            next = Some(next.map_or(at, |n| n.min(at)));
        }
        if let Some(header) = self.header_timeout {
            let since = if !s.any_request.load(Relaxed) {
                Some(s.started)
            } else {
                match s.pending_ms.load(Relaxed) {
                    NOT_PENDING => None,
                    ms => Some(s.at_ms(ms)),
                }
            };
            if let Some(since) = since {
                let at = since + header;
                if at <= now {
                    return Err(Cut::Header);
                }
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        Ok(next)
    }

    /// Arms the timer for the next deadline; `Some` once one has passed.
    fn poll_deadlines(&mut self, cx: &mut Context<'_>) -> Option<Cut> {
        loop {
            let at = match self.next_deadline(Instant::now()) {
                Err(cut) => return Some(cut),
                Ok(None) => return None,
                Ok(Some(at)) => at,
            };
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
            if timer.deadline() != at {
                timer.as_mut().reset(at);
            }
            if timer.as_mut().poll(cx).is_pending() {
                return None;
            }
        }
    }

    /// Notes bytes read: the protocol, from the first ones; the start of an
    /// HTTP/1.1 request arriving on a connection with none in flight; and
    /// HTTP/2 header blocks opening and closing.
    fn saw(&mut self, bytes: &[u8]) {
        const PREFACE: &[u8] = b"PRI * HTTP/2.0";
        if self.h2.is_none() {
            let n = bytes.len().min(PREFACE.len());
            if bytes[..n] != PREFACE[..n] {
                self.h2 = Some(false);
            } else if n >= 3 {
                self.h2 = Some(true);
            }
        }
        if self.h2 != Some(false) {
            let open = self.frames.feed(bytes);
            match (open, self.block_since) {
                (true, None) => self.block_since = Some(Instant::now()),
                (false, Some(_)) => self.block_since = None,
                _ => {}
            }
        }
        let s = &self.info.state;
        if self.h2 == Some(false)
            && s.any_request.load(Relaxed)
            && s.active.load(Relaxed) == 0
            && s.pending_ms.load(Relaxed) == NOT_PENDING
        {
            s.pending_ms.store(s.ms_since_start(), Relaxed);
        }
    }

    /// Whether to put this write off for one turn of the scheduler: on an
    /// HTTP/2 connection where calls finished since the last write (their
    /// replies are in it) and others are still in flight, whose replies may
    /// be about to join it. The work-stealing scheduler runs a connection
    /// the moment a reply wakes it, so each reply of many small calls went
    /// out in a `writev` of its own (nearly one per call, a third of the
    /// core in the kernel's loopback path). Again while more calls finished
    /// during the last turn, up to [`PUT_OFF_TURNS`] turns; then the write
    /// goes with whatever is there. A stream's acknowledgements (no call
    /// finished) go at once.
    fn put_off(&mut self, cx: &mut Context<'_>) -> bool {
        if self.h2 != Some(true) || self.put_off >= PUT_OFF_TURNS {
            return false;
        }
        let s = &self.info.state;
        let finished = s.finished.load(Relaxed);
        if s.active.load(Relaxed) == 0 || finished == self.finished_seen {
            return false;
        }
        self.put_off += 1;
        self.finished_seen = finished;
        // Woken from within its own poll, the task goes to the back of the
        // queue: the tasks ready now (other calls finishing) run first.
        cx.waker().wake_by_ref();
        true
    }

    /// `Err` once a write has made no progress for `POLKU_BODY_TIMEOUT`.
    fn stalled<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if r.is_ready() {
            self.write_stall = None;
            return r;
        }
        let Some(limit) = self.info.state.body_timeout else {
            return r;
        };
        let stall = self
            .write_stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if stall.as_mut().poll(cx).is_pending() {
            return r;
        }
        self.write_stall = None;
        self.info.state.stats.cut_write.fetch_add(1, Relaxed);
        debug!(peer = %self.info.remote_addr, "closing a connection whose replies are not read");
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client read no reply for POLKU_BODY_TIMEOUT",
        )))
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.cut {
            return Poll::Ready(Ok(()));
        }
        if let Some(cut) = this.poll_deadlines(cx) {
            this.cut = true;
            this.timer = None;
            let stats = &this.info.state.stats;
            match cut {
                Cut::Idle => {
                    stats.closed_idle.fetch_add(1, Relaxed);
                    debug!(peer = %this.info.remote_addr, "closing an idle connection");
                }
                Cut::Header => {
                    stats.cut_header.fetch_add(1, Relaxed);
                    debug!(
                        peer = %this.info.remote_addr,
                        "closing a connection that sent no request headers within POLKU_HEADER_TIMEOUT"
                    );
                }
            }
            // End of stream: the server closes the connection.
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        if buf.filled().len() > before {
            this.saw(&buf.filled()[before..]);
        }
        r
    }
}

/// The most turns of the scheduler a write waits for more replies.
const PUT_OFF_TURNS: u8 = 3;

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.put_off(cx) {
            return Poll::Pending;
        }
        let r = match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        };
        self.stalled(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.put_off(cx) {
            return Poll::Pending;
        }
        let r = match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        };
        self.stalled(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        };
        if r.is_ready() {
            // What was written goes out: the next write may be put off.
            self.put_off = 0;
            self.finished_seen = self.info.state.finished.load(Relaxed);
        }
        self.stalled(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

/// The connections a listener has accepted, ready for a server: a stream
/// for tonic, an [`axum::serve::Listener`] for axum.
#[derive(Debug)]
pub(crate) struct Accepted {
    rx: mpsc::Receiver<Conn>,
    local: SocketAddr,
}

impl Accepted {
    /// Starts accepting on `listener`. Accepting stops when this is dropped.
    pub(crate) fn start(
        listener: TcpListener,
        config: ListenerConfig,
        stats: Arc<ConnStats>,
    ) -> io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(accept_loop(listener, local, config, stats, tx));
        Ok(Self { rx, local })
    }
}

impl futures_util::Stream for Accepted {
    type Item = io::Result<Conn>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|c| c.map(Ok))
    }
}

impl axum::serve::Listener for Accepted {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        match self.rx.recv().await {
            Some(c) => {
                let peer = c.info.remote_addr;
                (c, peer)
            }
            // The accept task ends only when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Accepted>>
    for ConnInfo
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, Accepted>) -> Self {
        stream.io().info.clone()
    }
}

async fn accept_loop(
    listener: TcpListener,
    local: SocketAddr,
    config: ListenerConfig,
    stats: Arc<ConnStats>,
    tx: mpsc::Sender<Conn>,
) {
    let permits = Arc::new(Semaphore::new(config.max_connections));
    let reserve = Arc::new(Semaphore::new(config.reserved));
    let acceptor = config.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = tx.closed() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(err) => {
                // Out of file descriptors and the like: wait a little
                // rather than spin; per-connection errors just move on.
                debug!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        let (permit, reserved) = match permits.clone().try_acquire_owned() {
            Ok(p) => (p, false),
            Err(_) => match reserve.clone().try_acquire_owned() {
                Ok(p) => {
                    stats.reserved.fetch_add(1, Relaxed);
                    debug!(
                        peer = %peer,
                        "POLKU_MAX_CONNECTIONS reached: a reserved connection, for health and metrics only"
                    );
                    (p, true)
                }
                Err(_) => {
                    stats.refused_limit.fetch_add(1, Relaxed);
                    warn!(
                        peer = %peer,
                        max = config.max_connections,
                        "connection refused: POLKU_MAX_CONNECTIONS reached"
                    );
                    drop(tcp);
                    continue;
                }
            },
        };
        // Small replies must not wait for the peer's delayed ACK.
        let _ = tcp.set_nodelay(true);
        stats.accepted.fetch_add(1, Relaxed);
        stats.open.fetch_add(1, Relaxed);
        let info = ConnInfo {
            remote_addr: peer,
            local_addr: local,
            state: Arc::new(ConnState {
                started: Instant::now(),
                active: AtomicUsize::new(0),
                finished: AtomicUsize::new(0),
                last_ms: AtomicU64::new(0),
                any_request: std::sync::atomic::AtomicBool::new(false),
                pending_ms: AtomicU64::new(NOT_PENDING),
                reserved,
                body_timeout: config.body_timeout,
                stats: stats.clone(),
                _permit: permit,
            }),
        };
        let header_timeout = if reserved {
            Some(
                config
                    .header_timeout
                    .map_or(RESERVED_HEADER_TIMEOUT, |t| t.min(RESERVED_HEADER_TIMEOUT)),
            )
        } else {
            config.header_timeout
        };
        let idle_timeout = config.idle_timeout;
        let conn = move |io| Conn {
            io,
            info,
            idle_timeout,
            header_timeout,
            timer: None,
            h2: None,
            frames: H2Frames::default(),
            block_since: None,
            cut: false,
            write_stall: None,
            put_off: 0,
            finished_seen: 0,
        };
        match &acceptor {
            None => {
                if tx.send(conn(Io::Plain(tcp))).await.is_err() {
                    return;
                }
            }
            Some(acceptor) => {
                let (acceptor, tx, stats) = (acceptor.clone(), tx.clone(), stats.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send(conn(Io::Tls(Box::new(tls)))).await;
                        }
                        Ok(Err(err)) => {
                            stats.refused_tls.fetch_add(1, Relaxed);
                            debug!(peer = %peer, error = %err, "TLS handshake failed");
                        }
                        Err(_) => {
                            stats.refused_tls.fetch_add(1, Relaxed);
                            debug!(peer = %peer, "TLS handshake timed out");
                        }
                    }
                });
            }
        }
    }
}
