//! The `polku` command against a real gateway (in this process, on
//! loopback ports): every subcommand, and `top` in a real terminal (tmux).

// The gateway's own test certificates: a CA, a server and a client.
#[path = "../../polku-gateway/tests/common/pki.rs"]
#[allow(dead_code, unreachable_pub)]
mod pki;

use polku_gateway::proto::v1::gateway_client::GatewayClient;
use polku_gateway::proto::v1::send_event_request::Payload;
use polku_gateway::proto::v1::{EventBatch, SendEventRequest};
use polku_gateway::{
    Config, Deduplicator, EmitError, Emitter, Event, Filter, Hub, JsonIngestor, MemoryEmitter,
    Resilience, RunningGateway,
};
use std::process::Output;
use std::time::Duration;

fn config() -> Config {
    let mut c = Config::default();
    c.listen.grpc_addr = "127.0.0.1:0".parse().unwrap();
    c.listen.http_addr = Some("127.0.0.1:0".parse().unwrap());
    c
}

/// An emitter that refuses everything, for `polku failures`.
#[derive(Debug)]
struct Refuses;

#[polku_plugin_sdk::async_trait]
impl Emitter for Refuses {
    fn name(&self) -> &str {
        "refuses"
    }
    async fn emit(&self, _: &[Event]) -> Result<(), EmitError> {
        Err(EmitError::Rejected {
            message: "the destination said no".into(),
        })
    }
}

async fn gateway(config: Config) -> (RunningGateway, MemoryEmitter) {
    let mem = MemoryEmitter::new("mem");
    let refuses = Resilience::new()
        .failure_store(100, 1 << 20)
        .unwrap()
        .wrap(Refuses);
    let hub = Hub::new()
        .ingestor(JsonIngestor::new())
        .middleware(Filter::new(|e: &Event| &*e.event_type != "debug"))
        .middleware(Deduplicator::new(Duration::from_secs(60), 10_000).unwrap())
        .emitter(mem.clone())
        .emitter(refuses);
    let gw = hub.build().start(&config).await.expect("gateway starts");
    (gw, mem)
}

fn polku(gw: &RunningGateway) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_polku"));
    cmd.env_clear()
        .env("POLKU_GATEWAY", gw.grpc_addr().to_string())
        .kill_on_drop(true);
    cmd
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

async fn send(gw: &RunningGateway, source: &str, events: Vec<Event>) {
    let mut c = GatewayClient::connect(format!("http://{}", gw.grpc_addr()))
        .await
        .unwrap();
    c.send_event(SendEventRequest {
        source: source.into(),
        payload: Some(Payload::Events(EventBatch { events })),
    })
    .await
    .unwrap();
}

fn events(prefix: &str, n: usize, event_type: &str) -> Vec<Event> {
    (0..n)
        .map(|i| {
            Event::new(event_type)
                .with_id(format!("{prefix}-{i}"))
                .with_route_to(["mem"])
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_reads_lines_and_arrays_and_says_what_was_refused() {
    let (gw, mem) = gateway(config()).await;
    let dir = std::env::temp_dir().join(format!("polku-cli-send-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("events.jsonl");
    let mut body = String::new();
    for i in 0..2500 {
        body.push_str(&format!(
            "{{\"id\":\"l-{i}\",\"event_type\":\"order.placed\",\"route_to\":[\"mem\"]}}\n"
        ));
    }
    body.push_str(
        "[{\"id\":\"a-1\",\"event_type\":\"x\",\"route_to\":[\"mem\"]},\n {\"id\":\"a-2\",\"event_type\":\"x\",\"route_to\":[\"mem\"]}]\n",
    );
    // A typo: the gateway refuses the field by name.
    body.push_str("{\"id\":\"bad\",\"event_typ\":\"x\"}\n");
    std::fs::write(&file, body).unwrap();
    let out = polku(&gw)
        .args(["send", "--batch", "1000"])
        .arg(&file)
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "refused: non-zero\n{stdout}{stderr}"
    );
    assert!(
        stdout.contains("accepted 2502, dropped 0, rejected 1"),
        "{stdout}{stderr}"
    );
    assert!(
        stdout.contains("event_typ"),
        "the reason names the field: {stdout}"
    );
    assert_eq!(mem.len(), 2502);

    // From stdin, all accepted: exit 0.
    let mut child = polku(&gw)
        .args(["send", "--source", "pipe"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use tokio::io::AsyncWriteExt as _;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(b"{\"event_type\":\"y\",\"route_to\":[\"mem\"]}\n")
            .await
            .unwrap();
    }
    let out = child.wait_with_output().await.unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(text(&out).0.contains("accepted 1,"), "{:?}", text(&out));
    assert_eq!(mem.events().last().unwrap().source, "pipe");
    let _ = std::fs::remove_dir_all(&dir);
    gw.shutdown().await.unwrap();
}

/// Starts `polku tap ARGS` and waits until its tap is in place.
async fn tap(gw: &RunningGateway, args: &[&str]) -> tokio::process::Child {
    let child = polku(gw)
        .arg("tap")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The tap is in place once the gateway counts it; there is no other
    // signal, so give the process a moment.
    tokio::time::sleep(Duration::from_millis(700)).await;
    child
}

async fn lines(child: tokio::process::Child) -> Vec<serde_json::Value> {
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("the tap ended at its limit")
        .unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    text(&out)
        .0
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tap_shows_each_stage_with_why_and_stops_at_its_limit() {
    let (gw, _mem) = gateway(config()).await;
    let accepted = tap(
        &gw,
        &[
            "--stage",
            "accepted",
            "--filter",
            "source=web",
            "--limit",
            "3",
        ],
    )
    .await;
    let dropped = tap(
        &gw,
        &[
            "--stage",
            "dropped",
            "--filter",
            "event_type=debug",
            "--limit",
            "3",
        ],
    )
    .await;
    let twice = tap(
        &gw,
        &[
            "--stage",
            "dropped",
            "--filter",
            "event_type=dup",
            "--limit",
            "1",
        ],
    )
    .await;
    let rejected = tap(&gw, &["--stage", "rejected", "--limit", "1"]).await;
    let delivered = tap(&gw, &["--stage", "emitter:mem", "--limit", "2"]).await;
    let failed = tap(&gw, &["--stage", "emitter:refuses", "--limit", "1"]).await;
    send(&gw, "api", events("api", 5, "order.placed")).await;
    send(&gw, "web", events("web", 5, "order.placed")).await;
    send(&gw, "web", events("dbg", 2, "debug")).await;
    // One request, two middleware dropping: the filter a debug event, the
    // deduplicator the second copy of an id.
    let mut mixed = events("dup", 1, "dup");
    mixed.push(mixed[0].clone());
    mixed.extend(events("dbg-x", 1, "debug"));
    send(&gw, "web", mixed).await;
    // An id past the limit is refused alone.
    let mut long = events("long", 1, "order.placed");
    long[0].id = "x".repeat(10_000).into();
    send(&gw, "web", long).await;
    send(
        &gw,
        "web",
        vec![
            Event::new("t")
                .with_id("to-refuses")
                .with_route_to(["refuses"]),
        ],
    )
    .await;

    let got = lines(accepted).await;
    assert_eq!(got.len(), 3);
    for l in &got {
        assert_eq!(l["stage"], "accepted");
        assert_eq!(l["event"]["source"], "web", "{l}");
    }
    // Each dropped event carries the one middleware that dropped it, even
    // in a request where another dropped one too (the last here).
    let got = lines(dropped).await;
    assert_eq!(got.len(), 3);
    for l in &got {
        assert_eq!(l["event"]["event_type"], "debug", "{l}");
        assert_eq!(l["reason"], "filter: filtered", "{l}");
    }
    assert_eq!(got[2]["event"]["id"], "dbg-x-0");
    let got = lines(twice).await;
    assert_eq!(got[0]["event"]["id"], "dup-0");
    assert_eq!(got[0]["reason"], "dedup: duplicate", "{}", got[0]);

    let got = lines(rejected).await;
    assert!(
        got[0]["reason"].as_str().unwrap().contains("id"),
        "{}",
        got[0]
    );
    let got = lines(delivered).await;
    assert!(got.iter().all(|l| l["reason"] == "delivered"), "{got:?}");
    let got = lines(failed).await;
    assert_eq!(got[0]["event"]["id"], "to-refuses");
    assert!(
        got[0]["reason"]
            .as_str()
            .unwrap()
            .contains("the destination said no"),
        "{}",
        got[0]
    );
    // A stage that does not exist is said plainly.
    let out = polku(&gw)
        .args(["tap", "--stage", "buffered"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).1.contains("unknown stage"), "{:?}", text(&out));
    gw.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_once_prints_the_emitters_and_the_counts() {
    let (gw, _mem) = gateway(config()).await;
    send(&gw, "web", events("w", 7, "order.placed")).await;
    send(&gw, "web", events("d", 3, "debug")).await;
    let out = polku(&gw).args(["top", "--once"]).output().await.unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("received 10"), "{stdout}");
    assert!(stdout.contains("accepted 7"), "{stdout}");
    assert!(
        stdout.contains("mem") && stdout.contains("refuses"),
        "{stdout}"
    );
    assert!(stdout.contains("filter:filtered 3"), "{stdout}");
    gw.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_in_a_real_terminal_shows_the_emitters_and_moves() {
    if std::process::Command::new("tmux")
        .arg("-V")
        .output()
        .is_err()
    {
        assert!(
            std::env::var("CI").is_err(),
            "tmux is needed for this test, and CI skips nothing"
        );
        eprintln!("tmux is not installed: passed over");
        return;
    }
    let (gw, _mem) = gateway(config()).await;
    let session = format!("polku-top-{}", std::process::id());
    let cmd = format!(
        "{} --gateway {} top --interval-ms 200",
        env!("CARGO_BIN_EXE_polku"),
        gw.grpc_addr()
    );
    let started = std::process::Command::new("tmux")
        .args([
            "new-session",
            "-d",
            "-x",
            "140",
            "-y",
            "40",
            "-s",
            &session,
            &cmd,
        ])
        .status()
        .unwrap();
    assert!(started.success());
    let capture = || {
        let out = std::process::Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &session])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mut screens = Vec::new();
    for round in 0..3 {
        send(
            &gw,
            "web",
            events(&format!("r{round}"), 100, "order.placed"),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        screens.push(capture());
    }
    // `q` ends the view and so the session; kill it in case it did not.
    let quiet = |args: &[&str]| {
        let _ = std::process::Command::new("tmux")
            .args(args)
            .stderr(std::process::Stdio::null())
            .status();
    };
    quiet(&["send-keys", "-t", &session, "q"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    quiet(&["kill-session", "-t", &session]);
    let last = screens.last().unwrap();
    assert!(last.contains("EMITTER") && last.contains("mem"), "{last}");
    assert!(last.contains("received 300"), "{last}");
    assert_ne!(screens[0], screens[2], "the screen moves");
    assert!(screens[0].contains("received 100"), "{}", screens[0]);
    gw.shutdown().await.unwrap();
}

/// An emitter plugin served in this process, for `polku plugins`.
#[derive(Debug)]
struct Plugin;

#[polku_plugin_sdk::async_trait]
impl Emitter for Plugin {
    fn name(&self) -> &str {
        "from-plugin"
    }
    async fn emit(&self, _: &[Event]) -> Result<(), EmitError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_are_listed_and_evicted_and_failures_listed_resent_and_discarded() {
    let (gw, _mem) = gateway(config()).await;
    let config =
        polku_plugin_sdk::ServeConfig::default().with_gateway(Some(gw.grpc_addr().to_string()));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let plugin = tokio::spawn(polku_plugin_sdk::serve_emitter(Plugin, config, async {
        let _ = stop_rx.await;
    }));
    let mut listed = String::new();
    for _ in 0..100 {
        let out = polku(&gw).arg("plugins").output().await.unwrap();
        listed = text(&out).0;
        if listed.contains("from-plugin") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        listed.contains("from-plugin") && listed.contains("emitter"),
        "{listed}"
    );
    let id = listed
        .lines()
        .find(|l| l.contains("from-plugin"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_owned();
    let out = polku(&gw)
        .args(["plugins", "evict", &id])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    let out = polku(&gw)
        .args(["plugins", "evict", &id])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success(), "evicted already");
    assert!(text(&out).1.contains("NotFound"), "{:?}", text(&out));
    let _ = stop_tx.send(());
    let _ = plugin.await;

    // Failures: three refused events in the store.
    send(
        &gw,
        "web",
        (0..3)
            .map(|i| {
                Event::new("t")
                    .with_id(format!("f-{i}"))
                    .with_route_to(["refuses"])
            })
            .collect(),
    )
    .await;
    let mut out = String::new();
    for _ in 0..50 {
        out = text(
            &polku(&gw)
                .args(["failures", "list", "refuses"])
                .output()
                .await
                .unwrap(),
        )
        .0;
        if out.lines().count() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let listed: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 3, "{out}");
    assert_eq!(listed[0]["event"]["id"], "f-0");
    assert_eq!(
        listed[0]["reason"],
        "destination rejected the batch: the destination said no"
    );
    let out = polku(&gw)
        .args(["failures", "resend", "refuses", "--limit", "1"])
        .output()
        .await
        .unwrap();
    assert!(text(&out).0.contains("resent 1"), "{:?}", text(&out));
    let out = polku(&gw)
        .args(["failures", "discard", "refuses"])
        .output()
        .await
        .unwrap();
    assert!(text(&out).0.contains("discarded"), "{:?}", text(&out));
    let out = polku(&gw)
        .args(["failures", "list", "nope"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).1.contains("nope"), "{:?}", text(&out));
    gw.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_service_is_guarded_by_the_admin_token() {
    let mut c = config();
    c.access.admin_token = Some(polku_gateway::Secret::new("s3cret"));
    let (gw, _mem) = gateway(c).await;
    let out = polku(&gw).args(["top", "--once"]).output().await.unwrap();
    assert!(!out.status.success());
    assert!(text(&out).1.contains("admin token"), "{:?}", text(&out));
    let out = polku(&gw)
        .args(["top", "--once", "--token", "s3cret"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    gw.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_options_reach_a_gateway_that_asks_for_client_certificates() {
    let pki = pki::Pki::new("polku-cli");
    let mut c = config();
    c.listen.tls = Some(pki.server_tls(true));
    let (gw, _mem) = gateway(c).await;
    let with = |args: &[&str]| {
        let mut cmd = polku(&gw);
        cmd.args(args);
        cmd
    };
    let ca = pki.ca.cert_path.to_str().unwrap().to_owned();
    let cert = pki.client.cert_path.to_str().unwrap().to_owned();
    let key = pki.client.key_path.to_str().unwrap().to_owned();
    let out = with(&[
        "--cacert", &ca, "--cert", &cert, "--key", &key, "top", "--once",
    ])
    .output()
    .await
    .unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(text(&out).0.contains("mem"), "{:?}", text(&out));
    // No client certificate: the handshake fails, and it is said.
    let out = with(&["--cacert", &ca, "top", "--once"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).1.contains("--cert and --key"),
        "{:?}",
        text(&out)
    );
    // Half an identity is refused before connecting, naming the option.
    let out = with(&["--cacert", &ca, "--cert", &cert, "top", "--once"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).1.contains("--key"), "{:?}", text(&out));
    let _ = std::fs::remove_dir_all(&pki.dir);
    gw.shutdown().await.unwrap();
}
