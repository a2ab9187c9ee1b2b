//! Helpers shared by the gateway's integration tests.
#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod pki;
pub mod plugins;

use async_trait::async_trait;
use bytes::{Buf, BufMut, Bytes};
use polku_gateway::proto::v1::gateway_client::GatewayClient;
use polku_gateway::proto::v1::send_event_request::Payload;
use polku_gateway::proto::v1::{EventBatch, RawPayload, SendEventRequest};
use polku_gateway::{Config, EmitError, Emitter, Event, Hub, RunningGateway};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

/// A loopback port that nothing listens on, for a process or a server the
/// test starts later. Port 0 cannot serve there (the other side must be told
/// the port first), and a port that the OS handed out for port 0 and that was
/// let go can be handed out again at once, to another test's listener or to
/// an outgoing connection's source port. So these come from below the OS's
/// ephemeral range (32768 and up on Linux), from a counter that no two calls
/// in a process share, at an offset from the process id (test binaries run
/// one after another), and only once a bind shows the port free.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = (std::process::id() % 97) * 120;
    loop {
        let n = NEXT.fetch_add(1, Relaxed);
        assert!(
            n < SPAN,
            "no free loopback port left below the ephemeral range"
        );
        let port = (FIRST + (base + n) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A config for tests: loopback, port 0, short timeouts.
pub fn test_config() -> Config {
    let mut c = Config::default();
    c.listen.grpc_addr = "127.0.0.1:0".parse().unwrap();
    c.listen.http_addr = Some("127.0.0.1:0".parse().unwrap());
    c.buffer.timeout = Duration::from_millis(200);
    c.runtime.shutdown_timeout = Duration::from_secs(10);
    c
}

pub async fn start(hub: Hub) -> RunningGateway {
    start_with(hub, test_config()).await
}

pub async fn start_with(hub: Hub, config: Config) -> RunningGateway {
    hub.build().start(&config).await.expect("gateway starts")
}

pub async fn client(gw: &RunningGateway) -> GatewayClient<Channel> {
    GatewayClient::connect(format!("http://{}", gw.grpc_addr()))
        .await
        .expect("client connects")
}

pub fn events_req(source: &str, events: Vec<Event>) -> SendEventRequest {
    SendEventRequest {
        source: source.into(),
        payload: Some(Payload::Events(EventBatch { events })),
    }
}

pub fn raw_req(source: &str, format: &str, data: &'static [u8]) -> SendEventRequest {
    SendEventRequest {
        source: source.into(),
        payload: Some(Payload::Raw(RawPayload {
            data: Bytes::from_static(data),
            format: format.into(),
        })),
    }
}

/// `n` events with ids `{prefix}-{i}`.
pub fn numbered(prefix: &str, n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| Event::new("test.event").with_id(format!("{prefix}-{i}")))
        .collect()
}

/// An emitter that holds every batch until the test opens the gate, then
/// records it. Stands in for a destination that is stuck.
#[derive(Debug, Clone)]
pub struct GateEmitter {
    pub name: String,
    pub gate: Arc<Semaphore>,
    pub inner: polku_gateway::MemoryEmitter,
    /// What `healthy()` answers.
    pub healthy: Arc<std::sync::atomic::AtomicBool>,
}

impl GateEmitter {
    pub fn closed(name: &str) -> Self {
        GateEmitter {
            name: name.into(),
            gate: Arc::new(Semaphore::new(0)),
            inner: polku_gateway::MemoryEmitter::new(name),
            healthy: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        }
    }
    pub fn open(&self) {
        self.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    }
}

#[async_trait]
impl Emitter for GateEmitter {
    fn name(&self) -> &str {
        &self.name
    }
    async fn emit(&self, events: &[Event]) -> Result<(), EmitError> {
        let _p = self.gate.acquire().await.map_err(|_| EmitError::Closed)?;
        self.inner.emit(events).await
    }
    async fn healthy(&self) -> bool {
        self.healthy.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A codec that sends bytes as they are: for feeding the server garbage.
#[derive(Debug, Clone, Default)]
pub struct RawBytesCodec;

#[derive(Debug)]
pub struct RawBytes;

impl Codec for RawBytesCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawBytes;
    type Decoder = RawBytes;
    fn encoder(&mut self) -> RawBytes {
        RawBytes
    }
    fn decoder(&mut self) -> RawBytes {
        RawBytes
    }
}

impl Encoder for RawBytes {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawBytes {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// Calls SendEvent with the given bytes as the request message.
pub async fn send_raw_message(gw: &RunningGateway, body: Bytes) -> Result<Bytes, tonic::Status> {
    let channel = Channel::from_shared(format!("http://{}", gw.grpc_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel).max_encoding_message_size(usize::MAX);
    grpc.ready().await.unwrap();
    grpc.unary(
        tonic::Request::new(body),
        http::uri::PathAndQuery::from_static("/polku.v1.Gateway/SendEvent"),
        RawBytesCodec,
    )
    .await
    .map(|r| r.into_inner())
}

/// The `polku-gateway` binary as an operator runs it: only the given
/// environment, gRPC on `grpc`, HTTP on `http` (`0` for any port), logs at
/// info; stdout and stderr piped, killed when dropped.
pub fn gateway_process(grpc: u16, http: u16) -> tokio::process::Command {
    use std::process::Stdio;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_polku-gateway"));
    cmd.env_clear()
        .env("POLKU_GRPC_ADDR", format!("127.0.0.1:{grpc}"))
        .env("POLKU_HTTP_ADDR", format!("127.0.0.1:{http}"))
        .env("POLKU_LOG_LEVEL", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// The value of the metric line that starts with `line_start` (a name, with
/// its labels if any) in a `/metrics` text.
pub fn metric(text: &str, line_start: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(line_start) && l[line_start.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("no metric line {line_start:?} in:\n{text}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// The body of a GET, for `/metrics` and the like.
pub async fn get_text(client: &reqwest::Client, url: String) -> String {
    client.get(url).send().await.unwrap().text().await.unwrap()
}

/// True once the server closes `s` (end of stream or reset) within `within`;
/// whatever it sends before that is read and dropped.
pub async fn closed_by_server(s: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// Whether `cond` holds within `within`, looking every 20 ms.
pub async fn holds_within(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `cond` holds (up to 10 s), else fails the test saying `what`.
pub async fn wait_until(what: &str, cond: impl FnMut() -> bool) {
    if !holds_within(Duration::from_secs(10), cond).await {
        panic!("timed out waiting until {what}");
    }
}

/// A client of a gateway process that is starting on `port` (up to 10 s).
pub async fn connect_port(port: u16) -> GatewayClient<Channel> {
    for _ in 0..200 {
        if let Ok(c) = GatewayClient::connect(format!("http://127.0.0.1:{port}")).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the gateway did not start listening on port {port}");
}

/// Sends SIGTERM to a child process, as an operator's `kill` does.
pub fn sigterm(child: &tokio::process::Child) {
    let pid = child.id().expect("still running");
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -TERM {pid}");
}

/// Sends an HTTP request and gives its status and body: the JSON, or the
/// text as a JSON string when it is not JSON.
pub async fn json_reply(req: reqwest::RequestBuilder) -> (u16, serde_json::Value) {
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

/// Runs `scripts/SCRIPT DIR` once for every test binary, unless `ready`
/// already exists (a lock directory keeps two binaries from fetching at
/// once); `what` names the download in failures.
pub fn fetch_once(ready: &std::path::Path, dir: &std::path::Path, script: &str, what: &str) {
    use std::time::Instant;
    if ready.exists() {
        return;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::create_dir_all(dir).unwrap();
    let lock = dir.join("fetching");
    let deadline = Instant::now() + Duration::from_secs(300);
    while std::fs::create_dir(&lock).is_err() {
        assert!(
            Instant::now() < deadline,
            "another test has been fetching {what} for 5 minutes"
        );
        std::thread::sleep(Duration::from_millis(200));
        if ready.exists() {
            return;
        }
    }
    let status = std::process::Command::new("bash")
        .arg(root.join("scripts").join(script))
        .arg(dir)
        .status();
    let _ = std::fs::remove_dir(&lock);
    assert!(
        status.is_ok_and(|s| s.success()),
        "scripts/{script} could not fetch {what} (it needs mvn and Maven Central)"
    );
}

/// Starts `java ARGS` minded by a shell, its output to `log`: SIGTERM to
/// the shell stops the JVM gracefully, and the JVM is killed if the test
/// process dies first. `env` is put before `java` (`LOG_LEVEL=warn`).
pub fn spawn_jvm(env: &str, args: &str, log: &std::path::Path) -> std::process::Child {
    use std::process::{Command, Stdio};
    let log = std::fs::File::create(log).unwrap();
    let script = format!(
        "{env} java {args} & j=$!\n\
         trap 'kill -TERM $j; wait $j; exit 0' TERM\n\
         while kill -0 {} 2>/dev/null && kill -0 $j 2>/dev/null; do sleep 0.2; done\n\
         kill -9 $j 2>/dev/null",
        std::process::id()
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("sh starts java")
}

/// Stops a process from [`spawn_jvm`] as an operator would (SIGTERM), and
/// waits (killing it after 30 s).
pub fn stop_jvm(mut child: std::process::Child) {
    use std::time::Instant;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
