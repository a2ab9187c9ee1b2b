//! End to end with real processes: the gateway binary and plugins in Rust,
//! Python and Go, registering themselves over loopback.
//!
//! The plugins need their toolchains: the Rust one is built with the
//! workspace; Python needs the packages in examples/plugins/python/
//! requirements.txt and its generated stubs; Go needs `go`. On a machine
//! without them these tests say plainly what they skipped; in CI (CI=true)
//! nothing is skipped.

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

#[allow(dead_code)]
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The gateway binary, with fast heartbeats so that a dead plugin goes soon.
fn gateway(port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_polku-gateway"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("POLKU_GRPC_ADDR", format!("127.0.0.1:{port}"))
        .env("POLKU_HTTP_ADDR", "off")
        .env("POLKU_PLUGIN_HEARTBEAT_INTERVAL", "200ms")
        .env("POLKU_PLUGIN_HEARTBEAT_TIMEOUT", "1s")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("the gateway starts")
}

async fn connect(port: u16) -> GatewayClient<Channel> {
    for _ in 0..200 {
        if let Ok(c) = GatewayClient::connect(format!("http://127.0.0.1:{port}")).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the gateway did not listen on {port}");
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
