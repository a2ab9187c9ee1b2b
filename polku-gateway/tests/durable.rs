//! The durable buffer (`POLKU_BUFFER_DIR`) as an operator runs it: the real
//! binary under unary, stream and HTTP load, killed with SIGKILL, then
//! started again on the same directory; every event it acknowledged comes
//! out on stdout, in one run or the other.

mod common;
use common::{connect_port as connect, free_port, sigterm};

use polku_gateway::Event;
use polku_gateway::proto::v1::send_event_request::Payload;
use polku_gateway::proto::v1::{EventBatch, SendEventRequest};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

/// A directory of its own under the system's temporary one, removed at drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("polku-durable-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn gateway(grpc: u16, http: u16, dir: &Path) -> Command {
    let mut cmd = common::gateway_process(grpc, http);
    cmd.env("POLKU_BUFFER_DIR", dir);
    cmd
}

/// Collects the ids of the events the child prints on stdout, as they come.
fn collect_ids(child: &mut Child, into: Arc<Mutex<Vec<String>>>) -> tokio::task::JoinHandle<()> {
    let out = child.stdout.take().unwrap();
    tokio::spawn(async move {
        let mut lines = BufReader::new(out).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            // The last line of a killed process may be cut short: that event
            // was not delivered whole, and comes out again after the restart.
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&l) {
                into.lock()
                    .unwrap()
                    .push(v["id"].as_str().unwrap().to_owned());
            }
        }
    })
}

fn batch(source: &str, events: Vec<Event>) -> SendEventRequest {
    SendEventRequest {
        source: source.into(),
        payload: Some(Payload::Events(EventBatch { events })),
    }
}

fn ids(prefix: String, n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| Event::new("load").with_id(format!("{prefix}-{i}")))
        .collect()
}

type Ids = Arc<Mutex<BTreeSet<String>>>;

/// Unary, stream and HTTP senders that record what was acknowledged; they
/// end when the gateway goes.
fn load(grpc: u16, http: u16, acked: &Ids, sent: &Ids) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for w in 0..4 {
        let (acked, sent) = (acked.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = connect(grpc).await;
            for seq in 0.. {
                let events = ids(format!("u{w}-{seq}"), 20);
                let these: Vec<String> = events.iter().map(|e| e.id.to_string()).collect();
                sent.lock().unwrap().extend(these.iter().cloned());
                match c.send_event(batch("unary", events)).await {
                    Ok(r) if r.get_ref().accepted == 20 => acked.lock().unwrap().extend(these),
                    Ok(r) => panic!("partly accepted: {:?}", r.get_ref()),
                    Err(_) => return,
                }
            }
        }));
    }
    for w in 0..2 {
        let (acked, sent) = (acked.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = connect(grpc).await;
            let (tx, rx) = tokio::sync::mpsc::channel::<SendEventRequest>(4);
            let Ok(replies) = c
                .stream_events(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
            else {
                return;
            };
            let mut replies = replies.into_inner();
            for seq in 0.. {
                let events = ids(format!("s{w}-{seq}"), 200);
                let these: Vec<String> = events.iter().map(|e| e.id.to_string()).collect();
                sent.lock().unwrap().extend(these.iter().cloned());
                if tx.send(batch("stream", events)).await.is_err() {
                    return;
                }
                match replies.message().await {
                    Ok(Some(r)) if r.error.is_none() && r.accepted == 200 => {
                        acked.lock().unwrap().extend(these);
                    }
                    _ => return,
                }
            }
        }));
    }
    for w in 0..2 {
        let (acked, sent) = (acked.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            // Once the gateway is up.
            drop(connect(grpc).await);
            let client = reqwest::Client::new();
            for seq in 0.. {
                let these: Vec<String> = (0..10).map(|i| format!("h{w}-{seq}-{i}")).collect();
                let body: Vec<serde_json::Value> = these
                    .iter()
                    .map(|id| serde_json::json!({"id": id, "event_type": "load"}))
                    .collect();
                sent.lock().unwrap().extend(these.iter().cloned());
                let r = client
                    .post(format!("http://127.0.0.1:{http}/v1/events"))
                    .header("content-type", "application/json")
                    .body(serde_json::Value::Array(body).to_string())
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 202 => acked.lock().unwrap().extend(these),
                    Ok(r) if r.status() == 503 || r.status() == 429 => {}
                    Ok(r) => panic!("HTTP answered {}", r.status()),
                    Err(_) => return,
                }
            }
        }));
    }
    tasks
}

async fn stderr_of(child: &mut Child) -> String {
    let mut err = String::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        child.stderr.take().unwrap().read_to_string(&mut err),
    )
    .await;
    err
}

#[tokio::test]
async fn kill_9_under_load_loses_nothing_acknowledged() {
    kill_9_under_load("kill9", &[]).await;
}

/// Acknowledged once the kernel has it, synced later: a crash of the
/// process (not of the machine) still loses nothing.
#[tokio::test]
async fn kill_9_with_a_sync_interval_loses_nothing_acknowledged_either() {
    kill_9_under_load("kill9-interval", &[("POLKU_BUFFER_SYNC_INTERVAL", "1h")]).await;
}

async fn kill_9_under_load(name: &str, env: &[(&str, &str)]) {
    let dir = TempDir::new(name);
    let (grpc, http) = (free_port(), free_port());
    let mut first = gateway(grpc, http, &dir.0)
        .envs(env.iter().copied())
        .spawn()
        .unwrap();
    let printed: Arc<Mutex<Vec<String>>> = Default::default();
    // Its stdout is not read until it is killed: the pipe fills, the stdout
    // emitter waits, and the buffer holds thousands of acknowledged events
    // that only the disk has when the process dies.
    let acked: Ids = Default::default();
    let sent: Ids = Default::default();
    let tasks = load(grpc, http, &acked, &sent);

    // Until every kind of call has been acknowledged a good many times.
    let kinds = |a: &BTreeSet<String>, p: &str| a.iter().filter(|i| i.starts_with(p)).count();
    for _ in 0..200 {
        {
            let a = acked.lock().unwrap();
            if kinds(&a, "u") > 1_000 && kinds(&a, "s") > 4_000 && kinds(&a, "h") > 500 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.start_kill().unwrap();
    let status = first.wait().await.unwrap();
    assert!(!status.success(), "killed: {status:?}");
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    let reader = collect_ids(&mut first, printed.clone());
    let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
    let acked = acked.lock().unwrap().clone();
    for p in ["u", "s", "h"] {
        assert!(kinds(&acked, p) > 0, "some {p} calls were acknowledged");
    }
    let before_kill = printed.lock().unwrap().len();
    eprintln!(
        "acknowledged {} (unary {}, stream {}, http {}), printed before the kill {before_kill}",
        acked.len(),
        kinds(&acked, "u"),
        kinds(&acked, "s"),
        kinds(&acked, "h")
    );
    assert!(
        acked.len() > before_kill + 1000,
        "the kill left acknowledged events undelivered ({} acknowledged, {before_kill} printed)",
        acked.len()
    );

    // Started again on the same directory, it delivers the rest.
    let (grpc, http) = (free_port(), free_port());
    let mut second = gateway(grpc, http, &dir.0)
        .envs(env.iter().copied())
        .spawn()
        .unwrap();
    let reader = collect_ids(&mut second, printed.clone());
    drop(connect(grpc).await);
    let delivered = || {
        printed
            .lock()
            .unwrap()
            .iter()
            .cloned()
            .collect::<BTreeSet<String>>()
    };
    for _ in 0..600 {
        if acked.is_subset(&delivered()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = reqwest::get(format!("http://127.0.0.1:{http}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    sigterm(&second);
    let status = tokio::time::timeout(Duration::from_secs(30), second.wait())
        .await
        .unwrap()
        .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
    let err = stderr_of(&mut second).await;
    assert!(status.success(), "{status:?}: {err}");

    let delivered = delivered();
    let lost: Vec<&String> = acked.difference(&delivered).take(5).collect();
    assert!(
        lost.is_empty(),
        "acknowledged but never delivered: {lost:?} (of {} acknowledged, {} printed before the kill)",
        acked.len(),
        before_kill
    );
    let sent = sent.lock().unwrap();
    assert!(delivered.is_subset(&sent), "nothing that was not sent");
    assert!(
        err.contains("replaying"),
        "the restart says it replays: {err}"
    );
    let replayed = common::metric(&metrics, "polku_buffer_replayed_events_total");
    assert!(
        replayed > 0,
        "the restart replayed: {}",
        metrics
            .lines()
            .filter(|l| l.starts_with("polku_buffer"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // At least once: what the first run printed after the last cursor save
    // comes out again; never more than what was replayed.
    let printed = printed.lock().unwrap();
    let twice = printed.len() - delivered.len();
    assert!(
        twice as u64 <= replayed,
        "{twice} duplicates, {replayed} replayed"
    );
}

#[tokio::test]
async fn a_second_gateway_on_one_directory_is_a_clear_start_up_error() {
    let dir = TempDir::new("lock");
    let (grpc, http) = (free_port(), free_port());
    let mut first = gateway(grpc, http, &dir.0).spawn().unwrap();
    let _ = connect(grpc).await;
    let (grpc2, http2) = (free_port(), free_port());
    let mut second = gateway(grpc2, http2, &dir.0).spawn().unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), second.wait())
        .await
        .expect("the second one exits")
        .unwrap();
    let err = stderr_of(&mut second).await;
    assert!(!status.success());
    assert!(
        err.contains("in use by another gateway") && err.contains("POLKU_BUFFER_DIR"),
        "{err}"
    );
    // The first goes on serving.
    let mut c = connect(grpc).await;
    let r = c
        .send_event(batch("a", vec![Event::new("x").with_id("still")]))
        .await
        .unwrap();
    assert_eq!(r.get_ref().accepted, 1);
    sigterm(&first);
    assert!(first.wait().await.unwrap().success());
}

/// A webhook destination that records the ids it is sent.
fn serve_hook(listener: tokio::net::TcpListener, got: Arc<Mutex<Vec<String>>>) {
    async fn hook(
        axum::extract::State(got): axum::extract::State<Arc<Mutex<Vec<String>>>>,
        body: bytes::Bytes,
    ) -> &'static str {
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let mut got = got.lock().unwrap();
        for e in v["events"].as_array().unwrap() {
            got.push(e["id"].as_str().unwrap().to_owned());
        }
        "ok"
    }
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(got);
    tokio::spawn(async move { axum::serve(listener, app).await });
}

async fn metrics_of(http: u16) -> String {
    let url = format!("http://127.0.0.1:{http}/metrics");
    match reqwest::get(&url).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Polls `/metrics` until `line_start` reads `want` (30 s at most).
async fn metric_reaches(http: u16, line_start: &str, want: u64) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let m = metrics_of(http).await;
        if m.lines().any(|l| l.starts_with(line_start)) && common::metric(&m, line_start) == want {
            return m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{line_start} never reached {want}:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_destination_down_across_a_crash_gets_everything_once_it_is_back() {
    let dir = TempDir::new("down");
    let (grpc, http, hook_port) = (free_port(), free_port(), free_port());
    let start = || {
        let mut c = gateway(grpc, http, &dir.0);
        c.env(
            "POLKU_EMIT_WEBHOOK_URL",
            format!("http://127.0.0.1:{hook_port}/hook"),
        )
        .env("POLKU_EMIT_RETRY_MAX_ATTEMPTS", "3")
        .env("POLKU_EMIT_RETRY_BACKOFF", "500ms")
        .env("POLKU_EMIT_BREAKER_FAILURES", "0");
        c.spawn().unwrap()
    };
    let stored = "polku_emitter_failure_store_events{emitter=\"webhook\"}";
    let mut first = start();
    let mut c = connect(grpc).await;
    let mut acked = BTreeSet::new();
    let mut send = async |prefix: &str| {
        for r in 0..4 {
            let events = ids(format!("{prefix}{r}"), 50);
            let reply = c.send_event(batch("s", events.clone())).await.unwrap();
            assert_eq!(reply.into_inner().accepted, 50);
            acked.extend(events.into_iter().map(|e| e.id.to_string()));
        }
    };
    // Nothing listens on the hook's port: the first 200 run out of tries
    // into the failure store; the next 200 are still being tried at the kill.
    send("given-up-").await;
    metric_reaches(http, stored, 200).await;
    send("trying-").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let m = metrics_of(http).await;
    assert_eq!(
        common::metric(&m, stored),
        200,
        "the second 200 are not given up on yet"
    );
    first.kill().await.unwrap();
    let _ = first.wait().await;

    // The destination is back, and so is the gateway.
    let got: Arc<Mutex<Vec<String>>> = Default::default();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", hook_port))
        .await
        .unwrap();
    serve_hook(listener, got.clone());
    let mut second = start();
    connect(grpc).await;
    let m = metric_reaches(http, stored, 200).await;
    assert!(
        common::metric(&m, "polku_buffer_failure_disk_bytes") > 0,
        "the store was read back from its file"
    );
    // The ones being tried come back by themselves (the log's replay)...
    let delivered = || got.lock().unwrap().iter().cloned().collect::<BTreeSet<_>>();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !acked
        .iter()
        .filter(|id| id.starts_with("trying-"))
        .all(|id| delivered().contains(id))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the log's replay did not deliver"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ...and the given-up ones when the operator resends them.
    let resend = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{http}/v1/emitters/webhook/failures/resend"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resend.status(), 202, "{}", resend.text().await.unwrap());
    metric_reaches(http, stored, 0).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !acked.is_subset(&delivered()) {
        assert!(
            std::time::Instant::now() < deadline,
            "never delivered: {:?}",
            acked.difference(&delivered()).take(5).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sigterm(&second);
    let status = tokio::time::timeout(Duration::from_secs(30), second.wait())
        .await
        .unwrap()
        .unwrap();
    let err = stderr_of(&mut second).await;
    assert!(status.success(), "{err}");
    assert!(
        err.contains("failure store read back from disk"),
        "the restart says where the failures came from: {err}"
    );
    assert!(delivered().is_subset(&acked), "nothing that was not sent");
}

/// A real write error, not a simulated one: the gateway runs under a file
/// size limit (`ulimit -f`, with SIGXFSZ ignored so a write past it fails
/// with EFBIG instead of killing the process), below the size at which the
/// log would start its next segment. Once the segment reaches the limit,
/// every batch is refused with RESOURCE_EXHAUSTED naming the disk, the
/// gateway keeps serving, and everything it acknowledged comes out.
#[tokio::test]
async fn a_write_error_refuses_clearly_and_loses_nothing_acknowledged() {
    let dir = TempDir::new("efbig");
    let (grpc, http) = (free_port(), free_port());
    // 4 MiB of budget: segments of 512 KiB; the file limit is 192 KiB.
    let mut cmd = Command::new("bash");
    cmd.args([
        "-c",
        &format!(
            "trap '' XFSZ; ulimit -f 192; exec {}",
            env!("CARGO_BIN_EXE_polku-gateway")
        ),
    ])
    .env_clear()
    .env("POLKU_GRPC_ADDR", format!("127.0.0.1:{grpc}"))
    .env("POLKU_HTTP_ADDR", format!("127.0.0.1:{http}"))
    .env("POLKU_LOG_LEVEL", "info")
    .env("POLKU_BUFFER_DIR", &dir.0)
    .env("POLKU_BUFFER_MAX_DISK_BYTES", "4194304")
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    let printed = Arc::new(Mutex::new(Vec::new()));
    let reader = collect_ids(&mut child, printed.clone());
    let mut c = connect(grpc).await;
    let mut acked = BTreeSet::new();
    let mut refused = Vec::new();
    for seq in 0..400 {
        let events: Vec<Event> = (0..50)
            .map(|i| {
                Event::new("load")
                    .with_id(format!("b{seq}-{i}"))
                    .with_payload(vec![b'x'; 100])
            })
            .collect();
        let these: Vec<String> = events.iter().map(|e| e.id.to_string()).collect();
        match c.send_event(batch("efbig", events)).await {
            Ok(r) => {
                assert_eq!(r.get_ref().accepted, 50);
                acked.extend(these);
            }
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                assert!(status.message().contains("disk"), "{}", status.message());
                refused.extend(these);
                if refused.len() >= 500 {
                    break;
                }
            }
        }
    }
    assert!(
        acked.len() >= 1000,
        "the log took {} events before the limit",
        acked.len()
    );
    assert_eq!(refused.len(), 500, "the limit was reached and held");
    eprintln!(
        "{} events acknowledged before the file size limit, then 500 refused",
        acked.len()
    );
    // Still serving: health answers, and the refusals are counted.
    let m = metrics_of(http).await;
    assert!(
        common::metric(&m, "polku_buffer_disk_refused_total{reason=\"io\"}") >= 10,
        "{m}"
    );
    sigterm(&child);
    let status = child.wait().await.unwrap();
    reader.await.unwrap();
    let err = stderr_of(&mut child).await;
    assert!(status.success(), "exit {status:?}\n{err}");
    assert!(err.contains("buffer"), "the error is logged:\n{err}");
    let printed: BTreeSet<String> = printed.lock().unwrap().iter().cloned().collect();
    let missing: Vec<_> = acked.difference(&printed).take(5).collect();
    assert!(
        missing.is_empty(),
        "acknowledged, never printed: {missing:?}"
    );
    let leaked: Vec<_> = refused
        .iter()
        .filter(|id| printed.contains(*id))
        .take(5)
        .collect();
    assert!(leaked.is_empty(), "refused, yet printed: {leaked:?}");

    // Without the limit, the same directory opens whole and takes events.
    let (grpc, http) = (free_port(), free_port());
    let mut child = gateway(grpc, http, &dir.0).spawn().unwrap();
    let printed = Arc::new(Mutex::new(Vec::new()));
    let reader = collect_ids(&mut child, printed.clone());
    let mut c = connect(grpc).await;
    let r = c
        .send_event(batch("efbig", vec![Event::new("x").with_id("after")]))
        .await
        .unwrap();
    assert_eq!(r.get_ref().accepted, 1);
    sigterm(&child);
    assert!(child.wait().await.unwrap().success());
    reader.await.unwrap();
    let err = stderr_of(&mut child).await;
    assert!(!err.contains("damaged"), "{err}");
    assert_eq!(
        *printed.lock().unwrap(),
        ["after"],
        "nothing replayed twice"
    );
}
