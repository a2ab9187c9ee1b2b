//! End to end with real processes: the gateway binary and plugins in Rust,
//! Python and Go, registering themselves over loopback.
//!
//! The plugins need their toolchains: the Rust one is built with the
//! workspace; Python needs the packages in examples/plugins/python/
//! requirements.txt and its generated stubs; Go needs `go`. On a machine
//! without them these tests say plainly what they skipped; in CI (CI=true)
//! nothing is skipped.

mod common;
use common::{connect_port as connect, free_port, sigterm};

use polku_gateway::Event;
use polku_gateway::proto::v1::gateway_client::GatewayClient;
use polku_gateway::proto::v1::send_event_request::Payload;
use polku_gateway::proto::v1::{EventBatch, RawPayload, RejectCode, SendEventRequest};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};
use tonic::transport::Channel;

fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Skips (prints why) on a developer machine; fails in CI.
fn skip(test: &str, why: &str) {
    if in_ci() {
        panic!("{test}: {why} (CI skips nothing)");
    }
    eprintln!("SKIPPED {test}: {why}");
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The gateway binary's command, with fast heartbeats so that a dead plugin
/// goes soon, and its stdout (the events) thrown away.
fn gateway_cmd(port: u16) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_polku-gateway"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("POLKU_GRPC_ADDR", format!("127.0.0.1:{port}"))
        .env("POLKU_HTTP_ADDR", "off")
        .env("POLKU_PLUGIN_HEARTBEAT_INTERVAL", "200ms")
        .env("POLKU_PLUGIN_HEARTBEAT_TIMEOUT", "1s")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    cmd
}

fn gateway(port: u16) -> Child {
    gateway_cmd(port).spawn().expect("the gateway starts")
}

fn routed_to(name: &str, id: &str) -> SendEventRequest {
    SendEventRequest {
        source: "e2e".into(),
        payload: Some(Payload::Events(EventBatch {
            events: vec![Event::new("user.signup").with_id(id).with_route_to([name])],
        })),
    }
}

/// Sends an event routed to `name` until the gateway accepts it (the plugin
/// has registered), within `limit`.
async fn until_registered(c: &mut GatewayClient<Channel>, name: &str, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    let mut n = 0;
    while tokio::time::Instant::now() < deadline {
        n += 1;
        let r = c
            .send_event(routed_to(name, &format!("probe-{n}")))
            .await
            .unwrap()
            .into_inner();
        if r.accepted == 1 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Sends events routed to `name` until they are refused (the plugin is gone).
async fn until_removed(c: &mut GatewayClient<Channel>, name: &str, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        let r = c
            .send_event(routed_to(name, "after"))
            .await
            .unwrap()
            .into_inner();
        if r.rejected.first().map(|x| x.code) == Some(RejectCode::NoRoute as i32) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn rust_plugin_process_registers_receives_and_is_removed_when_killed() {
    let exe = Path::new(env!("CARGO_BIN_EXE_polku-gateway")).with_file_name("file_emitter");
    if !exe.exists() {
        skip(
            "rust_plugin_process",
            "the file_emitter example is not built (run the workspace tests: cargo test --workspace)",
        );
        return;
    }
    let port = free_port();
    let mut gw = gateway(port);
    let mut c = connect(port).await;
    let dir = std::env::temp_dir().join(format!("polku-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("rust-events.jsonl");
    let _ = std::fs::remove_file(&out);
    let mut plugin = Command::new(&exe)
        .env("FILE", &out)
        .env("POLKU_ADDR", format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    assert!(
        until_registered(&mut c, "file", Duration::from_secs(20)).await,
        "the Rust plugin registered"
    );
    let r = c
        .send_event(routed_to("file", "rust-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.accepted, 1);
    let mut text = String::new();
    for _ in 0..100 {
        text = std::fs::read_to_string(&out).unwrap_or_default();
        if text.contains(r#""id":"rust-1""#) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(text.contains(r#""id":"rust-1""#), "{text}");

    // Killed without a chance to unregister: removed after missed heartbeats.
    plugin.kill().await.unwrap();
    assert!(
        until_removed(&mut c, "file", Duration::from_secs(10)).await,
        "removed"
    );
    // And the gateway goes on.
    let ok = c
        .send_event(SendEventRequest {
            source: "e2e".into(),
            payload: Some(Payload::Raw(RawPayload {
                data: bytes::Bytes::from_static(br#"{"id":"still-serving"}"#),
                format: "json".into(),
            })),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.accepted, 1);
    gw.kill().await.unwrap();
}

/// The Python to run the Slack example with: its venv (scripts/test.sh makes
/// it), or python3 if that has grpc.
fn python() -> Option<PathBuf> {
    let venv = workspace().join("examples/plugins/python/.venv/bin/python");
    if venv.exists() {
        return Some(venv);
    }
    let ok = std::process::Command::new("python3")
        .args(["-c", "import grpc, grpc_tools, requests"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    ok.then(|| PathBuf::from("python3"))
}

/// A stand-in for Slack: records the JSON bodies POSTed to it.
async fn fake_slack() -> (
    u16,
    std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
) {
    use axum::routing::post;
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let store = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |body: axum::body::Bytes| {
            let store = store.clone();
            async move {
                if let Ok(v) = serde_json::from_slice(&body) {
                    store.lock().unwrap().push(v);
                }
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, got)
}

#[tokio::test]
async fn python_slack_emitter_process_posts_events_to_slack() {
    let Some(py) = python() else {
        skip(
            "python_slack_emitter",
            "no Python with grpcio, grpcio-tools and requests (pip install -r examples/plugins/python/requirements.txt)",
        );
        return;
    };
    let dir = workspace().join("examples/plugins/python");
    let (slack_port, slack) = fake_slack().await;
    let port = free_port();
    let mut gw = gateway(port);
    let mut c = connect(port).await;
    let mut plugin = Command::new(&py)
        .arg(dir.join("slack_emitter.py"))
        .current_dir(&dir)
        .env(
            "SLACK_WEBHOOK_URL",
            format!("http://127.0.0.1:{slack_port}/hook"),
        )
        .env("PLUGIN_PORT", free_port().to_string())
        .env("POLKU_ADDR", format!("127.0.0.1:{port}"))
        .env("PYTHON", &py)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    assert!(
        until_registered(&mut c, "slack", Duration::from_secs(60)).await,
        "the Python plugin registered"
    );
    let r = c
        .send_event(routed_to("slack", "py-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.accepted, 1);
    let mut messages = Vec::new();
    for _ in 0..200 {
        messages = slack.lock().unwrap().clone();
        if !messages.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        messages
            .iter()
            .any(|m| m["text"] == "*user.signup* from `e2e`"),
        "{messages:?}"
    );

    // SIGTERM: it unregisters at once (no waiting for heartbeats) and exits 0.
    sigterm(&plugin);
    let status = tokio::time::timeout(Duration::from_secs(15), plugin.wait())
        .await
        .expect("the plugin exits")
        .unwrap();
    assert!(status.success(), "{status:?}");
    let r = c
        .send_event(routed_to("slack", "after"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.rejected.first().map(|x| x.code),
        Some(RejectCode::NoRoute as i32)
    );
    gw.kill().await.unwrap();
}

/// The Go CSV example, built by scripts/test.sh, or built here if Go is there.
async fn go_ingestor() -> Option<PathBuf> {
    let dir = workspace().join("examples/plugins/go");
    let exe = dir.join("csv-ingestor");
    if exe.exists() {
        return Some(exe);
    }
    let built = Command::new("go")
        .args(["build", "-o", "csv-ingestor", "."])
        .current_dir(&dir)
        .status()
        .await
        .map(|s| s.success())
        .unwrap_or(false);
    built.then_some(exe)
}

fn csv_req(data: &'static [u8]) -> SendEventRequest {
    SendEventRequest {
        source: "csv".into(),
        payload: Some(Payload::Raw(RawPayload {
            data: bytes::Bytes::from_static(data),
            format: String::new(),
        })),
    }
}

fn go_plugin(exe: &Path, gateway_port: u16, token: Option<&str>) -> Child {
    let mut cmd = Command::new(exe);
    cmd.env("PLUGIN_PORT", free_port().to_string())
        .env("POLKU_ADDR", format!("127.0.0.1:{gateway_port}"))
        .env_remove("POLKU_PLUGIN_TOKEN")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(t) = token {
        cmd.env("POLKU_PLUGIN_TOKEN", t);
    }
    cmd.spawn().unwrap()
}

#[tokio::test]
async fn go_csv_ingestor_process_turns_rows_into_events() {
    let Some(exe) = go_ingestor().await else {
        skip(
            "go_csv_ingestor",
            "Go is not installed (the example is built with `go build`)",
        );
        return;
    };
    let port = free_port();
    let mut gw = gateway_cmd(port).stdout(Stdio::piped()).spawn().unwrap();
    let mut c = connect(port).await;
    let mut plugin = go_plugin(&exe, port, None);

    let csv = b"user,plan\nann,pro\nbob\ncid,free\n";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let reply = loop {
        match c.send_event(csv_req(csv)).await {
            Ok(r) => break r.into_inner(),
            Err(s) if s.message().contains("no ingestor serves source") => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the Go plugin never registered"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => panic!("{s:?}"),
        }
    };
    assert_eq!(reply.accepted, 2, "{reply:?}");
    assert_eq!(reply.rejected.len(), 1, "the short row is reported");
    assert_eq!(reply.rejected[0].index, Some(1));

    // The events come out of the gateway's stdout.
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(gw.stdout.take().unwrap()).lines();
    let mut rows = Vec::new();
    while rows.len() < 2 {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("an event line")
            .unwrap()
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["event_type"] == "csv.row" {
            rows.push(v);
        }
    }
    assert_eq!(rows[0]["metadata"]["user"], "ann");
    assert_eq!(rows[0]["metadata"]["plan"], "pro");
    assert_eq!(rows[0]["source"], "csv");
    assert_eq!(
        rows[0]["id"].as_str().unwrap().len(),
        36,
        "a UUID from the plugin"
    );
    assert_eq!(rows[1]["metadata"]["user"], "cid");

    // Killed: removed after missed heartbeats; the gateway goes on.
    plugin.kill().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match c.send_event(csv_req(b"a\n1\n")).await {
            Err(s) if s.message().contains("no ingestor serves source") => break,
            _ => {
                assert!(tokio::time::Instant::now() < deadline, "never removed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    gw.kill().await.unwrap();
}

#[tokio::test]
async fn a_plugin_process_with_a_wrong_or_missing_token_is_refused() {
    let Some(exe) = go_ingestor().await else {
        skip("plugin_token", "Go is not installed");
        return;
    };
    let port = free_port();
    let mut gw = gateway_cmd(port)
        .env("POLKU_PLUGIN_TOKEN", "e2e-s3cret")
        .spawn()
        .unwrap();
    let mut c = connect(port).await;
    for token in [None, Some("wrong")] {
        let mut plugin = go_plugin(&exe, port, token);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let err = c.send_event(csv_req(b"a\n1\n")).await.unwrap_err();
        assert!(
            err.message().contains("no ingestor serves source"),
            "{token:?}: not registered: {err:?}"
        );
        plugin.kill().await.unwrap();
    }
    let mut plugin = go_plugin(&exe, port, Some("e2e-s3cret"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if c.send_event(csv_req(b"a\n1\n")).await.is_ok() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the right token registers"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    plugin.kill().await.unwrap();
    gw.kill().await.unwrap();
}

/// A plugin process killed with SIGKILL while a stream sends it events: the
/// gateway keeps accepting and serving, retries what the dead plugin did not
/// take, and once the plugin is back (same address) every acknowledged event
/// is in its file.
#[tokio::test]
async fn a_plugin_killed_mid_stream_gets_every_acknowledged_event_once_back() {
    use std::collections::BTreeSet;
    use std::sync::{Arc, Mutex};
    let exe = Path::new(env!("CARGO_BIN_EXE_polku-gateway")).with_file_name("file_emitter");
    if !exe.exists() {
        skip(
            "plugin_killed_mid_stream",
            "the file_emitter example is not built (run the workspace tests: cargo test --workspace)",
        );
        return;
    }
    let port = free_port();
    let mut gw = gateway_cmd(port)
        .env("POLKU_EMIT_BREAKER_COOLDOWN", "300ms")
        .env("POLKU_EMIT_RETRY_MAX_BACKOFF", "300ms")
        .spawn()
        .unwrap();
    let mut c = connect(port).await;
    let dir = std::env::temp_dir().join(format!("polku-e2e-kill-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("killed.jsonl");
    let _ = std::fs::remove_file(&out);
    let plugin_addr = format!("127.0.0.1:{}", free_port());
    let plugin = || {
        Command::new(&exe)
            .env("FILE", &out)
            .env("PLUGIN_ADDR", &plugin_addr)
            .env("POLKU_ADDR", format!("127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let mut first = plugin();
    assert!(until_registered(&mut c, "file", Duration::from_secs(20)).await);

    let acked: Arc<Mutex<BTreeSet<String>>> = Default::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let streamer = {
        let (mut c, acked, stop) = (c.clone(), acked.clone(), stop.clone());
        tokio::spawn(async move {
            let (tx, rx) = tokio::sync::mpsc::channel::<SendEventRequest>(2);
            let mut replies = c
                .stream_events(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .unwrap()
                .into_inner();
            let mut seq = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                seq += 1;
                let ids: Vec<String> = (0..20).map(|i| format!("k{seq}-{i}")).collect();
                let events = ids
                    .iter()
                    .map(|id| Event::new("t").with_id(id).with_route_to(["file"]))
                    .collect();
                tx.send(SendEventRequest {
                    source: "e2e".into(),
                    payload: Some(Payload::Events(EventBatch { events })),
                })
                .await
                .unwrap();
                let r = replies.message().await.unwrap().unwrap();
                let refused: BTreeSet<u32> = r.rejected.iter().filter_map(|x| x.index).collect();
                acked.lock().unwrap().extend(
                    ids.into_iter()
                        .enumerate()
                        .filter(|(i, _)| !refused.contains(&(*i as u32)))
                        .map(|(_, id)| id),
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.kill().await.unwrap();
    let at_kill = acked.lock().unwrap().len();
    // The stream goes on against the dead plugin for a while.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    streamer.await.unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(
        at_kill > 0 && acked.len() > at_kill,
        "{at_kill} then {}",
        acked.len()
    );

    // Back on the same address: what was acknowledged arrives.
    let mut second = plugin();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (written, lines) = loop {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        let written: BTreeSet<String> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["id"].as_str().map(str::to_owned))
            .collect();
        if acked.is_subset(&written) || tokio::time::Instant::now() > deadline {
            break (written, text.lines().count());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let lost: Vec<_> = acked.difference(&written).take(5).collect();
    assert!(
        lost.is_empty(),
        "acknowledged but never written: {lost:?} ({} of {})",
        acked.difference(&written).count(),
        acked.len()
    );
    eprintln!(
        "plugin killed mid-stream: {} acknowledged, all written; {} lines for {} ids",
        acked.len(),
        lines,
        written.len()
    );
    second.kill().await.unwrap();
    gw.kill().await.unwrap();
}
