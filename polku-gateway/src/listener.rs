//! Accepting connections for the gRPC and HTTP servers: a cap on open
//! connections, TLS (with optional client certificates), and an idle timeout.
//!
//! One accept task per listener takes TCP connections, refuses those over
//! `POLKU_MAX_CONNECTIONS` (closed at once, so a client fails fast instead
//! of waiting in the kernel's backlog), runs TLS handshakes concurrently
//! under a time limit, and hands ready connections to the server. A
//! connection is idle when no request is in flight on it; after
//! `POLKU_IDLE_TIMEOUT` of that, its next read reports end of stream and the
//! server closes it. Requests are counted by [`TrackConnLayer`], so HTTP/2
//! keepalive pings do not keep an unused connection open.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::{Instant, Sleep};
use tokio_rustls::rustls;
use tracing::{debug, warn};

/// How long a client may take to finish its TLS handshake.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// `POLKU_TLS_CERT`, `POLKU_TLS_KEY` and `POLKU_TLS_CLIENT_CA`: the files
/// that turn on TLS for both listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// The server's certificate chain, PEM.
    pub cert: PathBuf,
    /// The server's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by one of these
    /// CAs (PEM); others fail the handshake.
    pub client_ca: Option<PathBuf>,
}

/// Why the TLS files could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {var} file {path}: {source}")]
    Read {
        /// The variable that names the file.
        var: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A file holds no usable PEM item of the kind needed.
    #[error("{var} file {path} holds no {what}")]
    Empty {
        /// The variable that names the file.
        var: &'static str,
        /// The file.
        path: PathBuf,
        /// What was looked for.
        what: &'static str,
    },
    /// rustls refused the certificate, key or CA.
    #[error("TLS configuration refused: {0}")]
    Rustls(String),
}

fn read_pem(var: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        var,
        path: path.to_owned(),
        source,
    })
}

fn certs(
    var: &'static str,
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    let pem = read_pem(var, path)?;
    let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::Empty {
            var,
            path: path.to_owned(),
            what: "PEM certificate",
        });
    }
    Ok(certs)
}

impl TlsConfig {
    /// Reads the files and builds the rustls server configuration, offering
    /// HTTP/2 and HTTP/1.1 by ALPN.
    pub(crate) fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        use rustls::pki_types::pem::PemObject;
        let chain = certs("POLKU_TLS_CERT", &self.cert)?;
        let key_pem = read_pem("POLKU_TLS_KEY", &self.key)?;
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| {
            TlsError::Empty {
                var: "POLKU_TLS_KEY",
                path: self.key.clone(),
                what: "PEM private key",
            }
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                for ca in certs("POLKU_TLS_CLIENT_CA", path)? {
                    roots
                        .add(ca)
                        .map_err(|e| TlsError::Rustls(format!("POLKU_TLS_CLIENT_CA: {e}")))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| TlsError::Rustls(format!("POLKU_TLS_CLIENT_CA: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| TlsError::Rustls(format!("POLKU_TLS_CERT/POLKU_TLS_KEY: {e}")))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// How a listener accepts connections.
#[derive(Debug, Clone)]
pub(crate) struct ListenerConfig {
    /// TLS for every connection, when set.
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    /// Open connections at most; more are closed at once.
    pub(crate) max_connections: usize,
    /// How long a connection may go without a request in flight.
    pub(crate) idle_timeout: Option<Duration>,
}

/// Counters of one listener, for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct ConnStats {
    pub(crate) open: AtomicU64,
    pub(crate) accepted: AtomicU64,
    pub(crate) refused_limit: AtomicU64,
    pub(crate) refused_tls: AtomicU64,
    pub(crate) closed_idle: AtomicU64,
}

/// What a connection shares with the requests on it.
#[derive(Debug)]
pub(crate) struct ConnState {
    started: Instant,
    /// Requests in flight (until their response body ends).
    active: AtomicUsize,
    /// When the last request started or ended, in ms since `started`.
    last_ms: AtomicU64,
    stats: Arc<ConnStats>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl ConnState {
    fn touch(&self) {
        self.last_ms
            .store(self.started.elapsed().as_millis() as u64, Relaxed);
    }

    /// `None` when the connection has been idle for `timeout`, else when to
    /// look again.
    fn idle_deadline(&self, timeout: Duration) -> Option<Instant> {
        let now = Instant::now();
        if self.active.load(Relaxed) > 0 {
            return Some(now + timeout);
        }
        let deadline = self.started + Duration::from_millis(self.last_ms.load(Relaxed)) + timeout;
        (deadline > now).then_some(deadline)
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

/// An accepted connection, plain or TLS.
pub(crate) struct Conn {
    io: Io,
    info: ConnInfo,
    idle: Option<(Duration, Pin<Box<Sleep>>)>,
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
    /// True once the connection has been idle past its timeout.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some((timeout, sleep)) = &mut self.idle else {
            return false;
        };
        while sleep.as_mut().poll(cx).is_ready() {
            match self.info.state.idle_deadline(*timeout) {
                None => {
                    self.info.state.stats.closed_idle.fetch_add(1, Relaxed);
                    debug!(peer = %self.info.remote_addr, "closing an idle connection");
                    self.idle = None;
                    return true;
                }
                Some(at) => sleep.as_mut().reset(at),
            }
        }
        false
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.idle_expired(cx) {
            // End of stream: the server closes the connection.
            return Poll::Ready(Ok(()));
        }
        match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
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
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            stats.refused_limit.fetch_add(1, Relaxed);
            warn!(
                peer = %peer,
                max = config.max_connections,
                "connection refused: POLKU_MAX_CONNECTIONS reached"
            );
            drop(tcp);
            continue;
        };
        // Small replies must not wait for the peer's delayed ACK.
        let _ = tcp.set_nodelay(true);
        stats.accepted.fetch_add(1, Relaxed);
        stats.open.fetch_add(1, Relaxed);
        let started = Instant::now();
        let info = ConnInfo {
            remote_addr: peer,
            local_addr: local,
            state: Arc::new(ConnState {
                started,
                active: AtomicUsize::new(0),
                last_ms: AtomicU64::new(0),
                stats: stats.clone(),
                _permit: permit,
            }),
        };
        let idle = config
            .idle_timeout
            .map(|t| (t, Box::pin(tokio::time::sleep_until(started + t))));
        match &acceptor {
            None => {
                let conn = Conn {
                    io: Io::Plain(tcp),
                    info,
                    idle,
                };
                if tx.send(conn).await.is_err() {
                    return;
                }
            }
            Some(acceptor) => {
                let (acceptor, tx, stats) = (acceptor.clone(), tx.clone(), stats.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let conn = Conn {
                                io: Io::Tls(Box::new(tls)),
                                info,
                                idle,
                            };
                            let _ = tx.send(conn).await;
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

/// Counts requests in flight per connection (for the idle timeout) and
/// puts the peer's address where tonic's `remote_addr()` finds it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TrackConnLayer;

impl<S> tower::Layer<S> for TrackConnLayer {
    type Service = TrackConn<S>;

    fn layer(&self, inner: S) -> TrackConn<S> {
        TrackConn { inner }
    }
}

/// The service of [`TrackConnLayer`].
#[derive(Debug, Clone)]
pub(crate) struct TrackConn<S> {
    inner: S,
}

/// Marks a request in flight until dropped.
#[derive(Debug)]
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn new(state: Arc<ConnState>) -> Self {
        state.active.fetch_add(1, Relaxed);
        state.touch();
        Self(state)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.active.fetch_sub(1, Relaxed);
    }
}

impl<S, B, R> tower::Service<http::Request<B>> for TrackConn<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Tracked<R>>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let ext = req.extensions();
        let info = ext.get::<ConnInfo>().cloned().or_else(|| {
            ext.get::<axum::extract::ConnectInfo<ConnInfo>>()
                .map(|c| c.0.clone())
        });
        let guard = info.map(|info| {
            req.extensions_mut()
                .insert(tonic::transport::server::TcpConnectInfo {
                    local_addr: Some(info.local_addr),
                    remote_addr: Some(info.remote_addr),
                });
            InFlight::new(info.state)
        });
        TrackedFuture {
            inner: self.inner.call(req),
            guard,
        }
    }
}

pin_project_lite::pin_project! {
    /// [`TrackConn`]'s future: the inner service's, whose response body
    /// takes over the in-flight mark (a plain struct, not a boxed future:
    /// this runs for every request).
    pub(crate) struct TrackedFuture<F> {
        #[pin]
        inner: F,
        guard: Option<InFlight>,
    }
}

impl<F, R, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<http::Response<R>, E>>,
{
    type Output = Result<http::Response<Tracked<R>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = std::task::ready!(this.inner.poll(cx))?;
        let guard = this.guard.take();
        Poll::Ready(Ok(res.map(|body| Tracked {
            inner: body,
            _guard: guard,
        })))
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted until it ends.
    pub(crate) struct Tracked<B> {
        #[pin]
        inner: B,
        _guard: Option<InFlight>,
    }
}

impl<B: http_body::Body<Data = Bytes>> http_body::Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
