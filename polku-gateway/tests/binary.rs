//! The `polku-gateway` binary as an operator runs it: a real process, real
//! environment variables, real signals.

mod common;
use common::{connect_port as connect, free_port, sigterm};

use polku_gateway::Event;
use polku_gateway::proto::v1::send_event_request::Payload;
use polku_gateway::proto::v1::{EventBatch, SendEventRequest};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

fn gateway(port: u16) -> Command {
    common::gateway_process(port, 0)
}

/// Everything the process writes to stdout, then its exit status (within 30 s).
async fn stdout_then_exit(child: &mut Child) -> (String, std::process::ExitStatus) {
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .await
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    (out, status)
}

fn batch(source: &str, events: Vec<Event>) -> SendEventRequest {
    SendEventRequest {
        source: source.into(),
        payload: Some(Payload::Events(EventBatch { events })),
    }
}

#[tokio::test]
async fn events_go_to_stdout_and_sigterm_drains_then_exits_zero() {
    let err = stdout_then_sigterm_drain(&[]).await;
    assert!(err.contains("scheduler=WorkStealing"), "{err}");
}

#[tokio::test]
async fn the_single_thread_scheduler_serves_and_drains_the_same() {
    let err = stdout_then_sigterm_drain(&[("POLKU_SCHEDULER", "single-thread")]).await;
    assert!(err.contains("scheduler=SingleThread workers=1"), "{err}");
}

/// Starts the binary with `env`, sends events, sends SIGTERM while the last
/// burst may still be in the buffer, and checks that every accepted event
/// came out on stdout and the exit was clean. Gives stderr.
async fn stdout_then_sigterm_drain(env: &[(&str, &str)]) -> String {
    let port = free_port();
    let mut child = gateway(port).envs(env.iter().copied()).spawn().unwrap();
    let mut c = connect(port).await;

    let r = c
        .send_event(batch(
            "my-app",
            vec![Event::new("user.signup").with_id("1")],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.accepted, 1);
    // A burst, then SIGTERM straight away: every accepted event must come out.
    let mut accepted = 1;
    for b in 0..20 {
        let events = (0..50)
            .map(|i| Event::new("burst").with_id(format!("b{b}-{i}")))
            .collect();
        accepted += c
            .send_event(batch("load", events))
            .await
            .unwrap()
            .into_inner()
            .accepted;
    }
    assert_eq!(accepted, 1001);
    sigterm(&child);

    let (out, status) = stdout_then_exit(&mut child).await;
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .await
        .unwrap();
    assert!(status.success(), "exit status {status:?}; stderr:\n{err}");

    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1001, "one JSON line per accepted event");
    assert_eq!(
        lines[0].split(",\"timestamp_unix_ns\"").next().unwrap(),
        r#"{"id":"1""#
    );
    assert!(
        lines[0].contains(r#""source":"my-app","event_type":"user.signup""#),
        "{}",
        lines[0]
    );
    assert!(err.contains("POLKU gateway listening"), "{err}");
    assert!(err.contains("SIGTERM received"), "{err}");
    assert!(err.contains("shutdown complete"), "{err}");
    err
}

#[tokio::test]
async fn a_bad_variable_stops_startup_with_a_message_naming_it() {
    for (var, value) in [
        ("POLKU_BUFFER_CAPACITY", "lots"),
        ("POLKU_GRPC_ADDR", "localhost"),
        ("POLKU_LOG_FORMAT", "xml"),
        ("POLKU_SHUTDOWN_TIMEOUT", "soon"),
        // Would overflow the clock on the first connection, not at start-up.
        ("POLKU_IDLE_TIMEOUT", "99999999999h"),
    ] {
        let out = gateway(free_port()).env(var, value).output().await.unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}={value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(var), "{var}: {err}");
        assert!(err.contains("expected"), "{var}: {err}");
    }
}

#[tokio::test]
async fn a_clean_shutdown_says_what_the_failure_stores_still_hold() {
    let port = free_port();
    let http = free_port();
    // A webhook nobody listens on: every batch fails at once, into the store.
    let dead = free_port();
    let mut child = gateway(port)
        .env("POLKU_HTTP_ADDR", format!("127.0.0.1:{http}"))
        .env(
            "POLKU_EMIT_WEBHOOK_URL",
            format!("http://127.0.0.1:{dead}/hook"),
        )
        .env("POLKU_EMIT_RETRY_MAX_ATTEMPTS", "1")
        .env("POLKU_EMIT_BREAKER_FAILURES", "0")
        .spawn()
        .unwrap();
    let mut c = connect(port).await;
    let events = (0..3)
        .map(|i| Event::new("t").with_id(format!("kept-{i}")))
        .collect();
    assert_eq!(
        c.send_event(batch("s", events))
            .await
            .unwrap()
            .into_inner()
            .accepted,
        3
    );
    let url = format!("http://127.0.0.1:{http}/metrics");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let m = reqwest::get(&url).await.unwrap().text().await.unwrap();
        if m.contains("polku_emitter_failure_store_events{emitter=\"webhook\"} 3") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sigterm(&child);
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .await
        .unwrap();
    assert!(status.success(), "{err}");
    let line = err
        .lines()
        .find(|l| l.contains("failure store still holds"))
        .unwrap_or_else(|| panic!("no word on the failure store: {err}"));
    assert!(
        line.contains("webhook") && line.contains("events=3"),
        "{line}"
    );
    assert!(err.contains("failure_store_events=3"), "{err}");
}

#[tokio::test]
async fn a_taken_port_is_reported_plainly() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = gateway(port).output().await.unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot listen for gRPC"), "{err}");
    assert!(err.contains("POLKU_GRPC_ADDR"), "{err}");
}

/// The README's quick start, word for word: grpcurl with reflection, no .proto files.
#[tokio::test]
async fn readme_grpcurl_call_works_as_written() {
    let Some(grpcurl) = find_grpcurl() else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("grpcurl is required in CI (.ci/run installs it)");
        }
        eprintln!("SKIPPED readme_grpcurl_call_works_as_written: grpcurl is not installed");
        return;
    };
    let port = free_port();
    let mut child = gateway(port).spawn().unwrap();
    connect(port).await;
    let body = r#"{
  "source": "my-app",
  "events": {"events": [{"id": "1", "event_type": "user.signup"}]}
}"#;
    let out = tokio::process::Command::new(&grpcurl)
        .args([
            "-plaintext",
            "-d",
            body,
            &format!("localhost:{port}"),
            "polku.v1.Gateway/SendEvent",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "grpcurl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply = String::from_utf8_lossy(&out.stdout);
    assert!(reply.contains(r#""accepted": 1"#), "{reply}");

    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(line.starts_with(r#"{"id":"1","#), "{line}");
    assert!(line.contains(r#""event_type":"user.signup""#), "{line}");

    // grpcurl lists the gateway through reflection.
    let out = tokio::process::Command::new(&grpcurl)
        .args(["-plaintext", &format!("localhost:{port}"), "list"])
        .output()
        .await
        .unwrap();
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(list.lines().any(|l| l == "polku.v1.Gateway"), "{list}");
    sigterm(&child);
    assert!(child.wait().await.unwrap().success());
}

fn find_grpcurl() -> Option<std::path::PathBuf> {
    let mut dirs: Vec<std::path::PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(std::path::Path::new(&home).join("go/bin"));
    }
    if let Some(gopath) = std::env::var_os("GOPATH") {
        dirs.push(std::path::Path::new(&gopath).join("bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("grpcurl"))
        .find(|p| p.is_file())
}

#[tokio::test]
async fn webhook_emitter_from_the_environment_posts_signed_batches() {
    use axum::routing::post;
    let got = std::sync::Arc::new(std::sync::Mutex::new(
        Vec::<(axum::http::HeaderMap, String)>::new(),
    ));
    let store = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |headers: axum::http::HeaderMap, body: String| {
            let store = store.clone();
            async move {
                store.lock().unwrap().push((headers, body));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let port = free_port();
    let mut child = gateway(port)
        .env(
            "POLKU_EMIT_WEBHOOK_URL",
            format!("http://127.0.0.1:{hook_port}/hook"),
        )
        .env(
            "POLKU_EMIT_WEBHOOK_HEADERS",
            "Authorization: Bearer hook-token",
        )
        .env(
            "POLKU_EMIT_WEBHOOK_SECRET",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        )
        .spawn()
        .unwrap();
    let mut c = connect(port).await;
    let r = c
        .send_event(batch(
            "my-app",
            vec![Event::new("user.signup").with_id("w-1")],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.accepted, 1);
    let mut posts = Vec::new();
    for _ in 0..200 {
        posts = got.lock().unwrap().clone();
        if !posts.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(posts.len(), 1);
    let (headers, body) = &posts[0];
    assert_eq!(headers["authorization"], "Bearer hook-token");
    assert!(
        headers["webhook-signature"]
            .to_str()
            .unwrap()
            .starts_with("v1,")
    );
    assert!(body.contains(r#""id":"w-1""#), "{body}");
    sigterm(&child);
    let (out, status) = stdout_then_exit(&mut child).await;
    assert!(status.success());
    assert!(
        out.is_empty(),
        "stdout is off once a webhook is configured: {out}"
    );
}

/// SIGTERM while unary calls and streams are still sending: every event the
/// gateway acknowledged comes out on stdout before it exits, checked by id,
/// and nothing comes out that it was never sent.
#[tokio::test]
async fn sigterm_under_load_delivers_every_acknowledged_event_by_id() {
    use std::collections::BTreeSet;
    use std::sync::{Arc, Mutex};
    let port = free_port();
    let mut child = gateway(port).spawn().unwrap();
    let c = connect(port).await;
    let acked: Arc<Mutex<BTreeSet<String>>> = Default::default();
    let sent: Arc<Mutex<BTreeSet<String>>> = Default::default();
    let ids = |prefix: String, n: usize| -> Vec<Event> {
        (0..n)
            .map(|i| Event::new("load").with_id(format!("{prefix}-{i}")))
            .collect()
    };
    let mut tasks = Vec::new();
    for w in 0..4 {
        let (mut c, acked, sent) = (c.clone(), acked.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            for seq in 0.. {
                let events = ids(format!("u{w}-{seq}"), 20);
                let these: Vec<String> = events.iter().map(|e| e.id.to_string()).collect();
                sent.lock().unwrap().extend(these.iter().cloned());
                match c.send_event(batch("unary", events)).await {
                    Ok(r) if r.get_ref().accepted == 20 => {
                        acked.lock().unwrap().extend(these);
                    }
                    Ok(r) => panic!("partly accepted: {:?}", r.get_ref()),
                    Err(_) => return, // shutting down, or gone
                }
            }
        }));
    }
    for w in 0..2 {
        let (mut c, acked, sent) = (c.clone(), acked.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            let (tx, rx) = tokio::sync::mpsc::channel::<SendEventRequest>(4);
            let mut replies = match c
                .stream_events(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
            {
                Ok(r) => r.into_inner(),
                Err(_) => return,
            };
            let mut pending: std::collections::VecDeque<Vec<String>> = Default::default();
            for seq in 0.. {
                let events = ids(format!("s{w}-{seq}"), 50);
                let these: Vec<String> = events.iter().map(|e| e.id.to_string()).collect();
                sent.lock().unwrap().extend(these.iter().cloned());
                pending.push_back(these);
                if tx.send(batch("stream", events)).await.is_err() {
                    return;
                }
                match replies.message().await {
                    Ok(Some(r)) if r.error.is_none() && r.accepted == 50 => {
                        acked
                            .lock()
                            .unwrap()
                            .extend(pending.pop_front().unwrap_or_default());
                    }
                    _ => return,
                }
            }
        }));
    }
    // Let the load run, then SIGTERM in the middle of it.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let before = acked.lock().unwrap().len();
    assert!(before > 500, "load was flowing: {before} acknowledged");
    sigterm(&child);

    let (out, status) = stdout_then_exit(&mut child).await;
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    assert!(status.success(), "exit status {status:?}");
    let delivered: BTreeSet<String> = out
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(delivered.len(), out.lines().count(), "no event twice");
    let acked = acked.lock().unwrap();
    let sent = sent.lock().unwrap();
    let lost: Vec<&String> = acked.difference(&delivered).take(5).collect();
    assert!(
        lost.is_empty(),
        "acknowledged but not delivered: {lost:?} (of {})",
        acked.len()
    );
    assert!(delivered.is_subset(&sent), "nothing that was not sent");
    assert!(acked.len() >= before);
}

/// The gateway process's resident memory, in bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Load far above what the destination takes, for seconds: the buffer stays
/// within its byte budget, the process's memory stays bounded, health keeps
/// answering, the excess is refused with RESOURCE_EXHAUSTED, and once the
/// load stops every acknowledged event is delivered.
#[tokio::test]
async fn overload_stays_within_the_budget_keeps_health_and_delivers_every_ack() {
    use axum::routing::post;
    use std::collections::BTreeSet;
    use std::sync::{Arc, Mutex};
    // A destination that takes about 1000 events a second.
    let delivered: Arc<Mutex<BTreeSet<String>>> = Default::default();
    let store = delivered.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |body: String| {
            let store = store.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                let mut s = store.lock().unwrap();
                for e in v["events"].as_array().unwrap() {
                    s.insert(e["id"].as_str().unwrap().to_owned());
                }
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });

    const BUDGET: u64 = 2 << 20;
    let (port, http_port) = (free_port(), free_port());
    let mut child = gateway(port)
        .env("POLKU_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
        .env(
            "POLKU_EMIT_WEBHOOK_URL",
            format!("http://127.0.0.1:{hook_port}/hook"),
        )
        .env("POLKU_EMIT_WEBHOOK_BATCH_SIZE", "20")
        .env("POLKU_BUFFER_MAX_BYTES", BUDGET.to_string())
        .env("POLKU_BUFFER_TIMEOUT", "20ms")
        .env("POLKU_LOG_LEVEL", "warn")
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let c = connect(port).await;
    let idle_rss = rss_bytes(pid);

    // Eight senders, each 50 events of 4 KiB a request, as fast as they can:
    // without the byte budget the default 10000-event buffer would hold 40 MiB.
    let acked: Arc<Mutex<BTreeSet<String>>> = Default::default();
    let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let payload = bytes::Bytes::from(vec![b'x'; 4096]);
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (mut c, acked, refused, stop, payload) = (
            c.clone(),
            acked.clone(),
            refused.clone(),
            stop.clone(),
            payload.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut seq = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                seq += 1;
                let events: Vec<Event> = (0..50)
                    .map(|i| {
                        Event::new("load")
                            .with_id(format!("o{w}-{seq}-{i}"))
                            .with_payload(payload.clone())
                    })
                    .collect();
                let ids: Vec<String> = events.iter().map(|e| e.id.to_string()).collect();
                match c.send_event(batch("overload", events)).await {
                    Ok(r) => {
                        assert_eq!(r.get_ref().accepted, 50, "{:?}", r.get_ref());
                        acked.lock().unwrap().extend(ids);
                    }
                    Err(s) => {
                        assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
                        refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    // For three seconds: health answers, the buffer stays in its budget.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let (mut peak_rss, mut peak_buffer, mut health_checks) = (0u64, 0u64, 0);
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < until {
        let h = http
            .get(format!("http://127.0.0.1:{http_port}/healthz"))
            .send()
            .await
            .expect("health answers under overload");
        assert_eq!(h.status(), 200);
        health_checks += 1;
        let m = http
            .get(format!("http://127.0.0.1:{http_port}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let buffer: u64 = m
            .lines()
            .find_map(|l| l.strip_prefix("polku_buffer_bytes "))
            .unwrap()
            .parse()
            .unwrap();
        peak_buffer = peak_buffer.max(buffer);
        peak_rss = peak_rss.max(rss_bytes(pid));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let refused = refused.load(std::sync::atomic::Ordering::Relaxed);
    let acked = acked.lock().unwrap().clone();
    assert!(refused > 0, "the load was above capacity");
    assert!(!acked.is_empty());
    assert!(health_checks >= 10, "{health_checks} health checks");
    assert!(
        peak_buffer <= BUDGET,
        "buffer {peak_buffer} over its budget {BUDGET}"
    );
    assert!(
        peak_rss < idle_rss + (24 << 20),
        "resident memory grew from {idle_rss} to {peak_rss}"
    );
    eprintln!(
        "overload: {} acked, {refused} requests refused, buffer peak {peak_buffer} B, RSS {} -> {} KiB",
        acked.len(),
        idle_rss >> 10,
        peak_rss >> 10
    );

    // Every acknowledged event reaches the destination.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let missing = acked.difference(&delivered.lock().unwrap()).count();
        if missing == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{missing} acknowledged events never delivered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sigterm(&child);
    let (_, status) = stdout_then_exit(&mut child).await;
    assert!(status.success());
}

/// The byte budget bounds what the process holds, for the worst-shaped events
/// a client can build within the default limits: tiny payloads in 3 MiB of
/// whitespace (a slice would pin the whole body), tiny events beside 3 MiB
/// refused siblings, and events made of the most metadata entries of one
/// byte each. The destination (stdout, never read) takes nothing, so every
/// accepted event stays in the buffer until the budget refuses more.
#[tokio::test]
async fn worst_shaped_events_keep_memory_within_a_small_multiple_of_the_byte_budget() {
    const BUDGET: u64 = 16 << 20;
    const PAD: usize = 3 << 20;
    let (port, http_port) = (free_port(), free_port());
    let mut child = gateway(port)
        .env("POLKU_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
        .env("POLKU_BUFFER_MAX_BYTES", BUDGET.to_string())
        .env("POLKU_BUFFER_CAPACITY", "1000000")
        .env("POLKU_BUFFER_TIMEOUT", "10ms")
        .env("POLKU_LOG_LEVEL", "warn")
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut c = connect(port).await;
    let http = reqwest::Client::new();
    let metric = |text: &str, name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {name} in /metrics"))
            .parse()
            .unwrap()
    };
    let metrics = || async {
        http.get(format!("http://127.0.0.1:{http_port}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let idle_rss = rss_bytes(pid);
    let mut peak_rss = idle_rss;
    let mut accepted = 0u64;

    // 1. A tiny event in 3 MiB of whitespace, over HTTP, forty times.
    let mut body = br#"[{"event_type":"pad","payload":{"a":1}}"#.to_vec();
    body.resize(body.len() + PAD, b' ');
    body.push(b']');
    let body = bytes::Bytes::from(body);
    for _ in 0..40 {
        let r = http
            .post(format!("http://127.0.0.1:{http_port}/v1/events"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        assert_eq!(status, 202, "{text}");
        assert!(text.contains(r#""accepted":1"#), "{text}");
        accepted += 1;
        peak_rss = peak_rss.max(rss_bytes(pid));
    }

    // 2. A tiny event beside a 3 MiB sibling refused for its id, over gRPC.
    let big = bytes::Bytes::from(vec![b'x'; PAD]);
    for i in 0..40 {
        let events = vec![
            Event::new("sibling").with_id(format!("kept-{i}")),
            Event::new("sibling")
                .with_id("i".repeat(300))
                .with_payload(big.clone()),
        ];
        let r = c.send_event(batch("worst", events)).await.unwrap();
        let r = r.into_inner();
        assert_eq!(r.accepted, 1, "{r:?}");
        assert_eq!(r.rejected.len(), 1, "{r:?}");
        accepted += 1;
        peak_rss = peak_rss.max(rss_bytes(pid));
    }

    // 3. Events of 64 one-byte metadata entries, until the budget refuses.
    let refused_at = loop {
        let events: Vec<Event> = (0..1000)
            .map(|_| {
                let mut e = Event::new("m");
                for k in 0..64u8 {
                    e.metadata
                        .insert(char::from(b'0' + k).to_string().into(), "v".into());
                }
                e
            })
            .collect();
        match c.send_event(batch("worst", events)).await {
            Ok(r) => accepted += u64::from(r.into_inner().accepted),
            Err(s) => {
                assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
                break accepted;
            }
        }
        peak_rss = peak_rss.max(rss_bytes(pid));
        assert!(accepted < 1_000_000, "the byte budget never refused");
    };
    let m = metrics().await;
    let held = metric(&m, "polku_buffer_bytes");
    peak_rss = peak_rss.max(rss_bytes(pid));
    eprintln!(
        "worst shapes: {refused_at} events accepted, buffer {held} B of {BUDGET}, RSS {} -> {} KiB (peak)",
        idle_rss >> 10,
        peak_rss >> 10
    );
    assert!(held <= BUDGET, "buffer {held} over its budget {BUDGET}");
    assert!(
        held > BUDGET / 2,
        "the budget was not filled ({held} of {BUDGET}): the test proves nothing"
    );
    assert!(
        peak_rss < idle_rss + 3 * BUDGET,
        "resident memory grew from {idle_rss} to {peak_rss} with a budget of {BUDGET}"
    );
    child.kill().await.unwrap();
}
