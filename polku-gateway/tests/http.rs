//! End-to-end tests of the HTTP front door: a real server on 127.0.0.1:0,
//! a real HTTP client.

mod common;

use common::*;
use polku_gateway::proto::v1::SendEventRequest;
use polku_gateway::*;
use std::io::Write as _;
use std::time::Duration;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(10);

fn url(gw: &RunningGateway, path: &str) -> String {
    format!("http://{}{}", gw.http_addr().expect("HTTP is on"), path)
}

async fn post_json(gw: &RunningGateway, path: &str, body: &str) -> (u16, serde_json::Value) {
    json_reply(
        reqwest::Client::new()
            .post(url(gw, path))
            .header("content-type", "application/json")
            .body(body.to_owned()),
    )
    .await
}

#[tokio::test]
async fn post_events_accepts_the_three_shapes() {
    let mem = MemoryEmitter::new("m");
    let gw = start(Hub::new().emitter(mem.clone())).await;

    let (s, r) = post_json(
        &gw,
        "/v1/events",
        r#"{"source":"web","events":[{"id":"1","event_type":"a"},{"id":"2"}]}"#,
    )
    .await;
    assert_eq!(s, 202, "{r}");
    assert_eq!(r["accepted"], 2);
    let (s, r) = post_json(
        &gw,
        "/v1/events",
        r#"{"id":"3","event_type":"single","payload":{"x":1}}"#,
    )
    .await;
    assert_eq!((s, r["accepted"].as_u64()), (202, Some(1)));
    let (s, r) = post_json(&gw, "/v1/events", r#"[{"id":"4"},{"id":5},{"id":"6"}]"#).await;
    assert_eq!(s, 202);
    assert_eq!(r["accepted"], 2);
    assert_eq!(r["rejected"][0]["index"], 1);
    assert_eq!(r["rejected"][0]["code"], "REJECT_CODE_INGEST_FAILED");

    assert_eq!(mem.wait_for(5, WAIT).await, 5);
    let got = mem.events();
    assert_eq!(got[0].source, "web");
    assert_eq!(got[2].payload.as_ref(), br#"{"x":1}"#);
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_bodies_get_clear_errors_and_the_server_keeps_serving() {
    let mem = MemoryEmitter::new("m");
    let mut config = test_config();
    config.limits.max_message_bytes = 4096;
    let gw = start_with(Hub::new().emitter(mem.clone()), config).await;

    let (s, r) = post_json(&gw, "/v1/events", r#"{"id": "1",, }"#).await;
    assert_eq!(s, 400);
    assert_eq!(r["reason"], "malformed_input");
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("malformed JSON input"),
        "{r}"
    );

    let big = format!(r#"{{"id":"x","payload":"{}"}}"#, "a".repeat(10_000));
    let (s, r) = post_json(&gw, "/v1/events", &big).await;
    assert_eq!(s, 413);
    assert!(r["error"].as_str().unwrap().contains("4096 bytes"), "{r}");

    // Gzip is accepted, and the limit applies to what it unpacks to.
    let client = reqwest::Client::new();
    let gz = |data: &[u8]| {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    };
    let resp = client
        .post(url(&gw, "/v1/events"))
        .header("content-encoding", "gzip")
        .body(gz(br#"{"id":"zipped"}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let bomb = gz(format!(r#"{{"id":"x","payload":"{}"}}"#, "a".repeat(100_000)).as_bytes());
    assert!(bomb.len() < 4096, "compressed small");
    let resp = client
        .post(url(&gw, "/v1/events"))
        .header("content-encoding", "gzip")
        .body(bomb)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    let resp = client
        .post(url(&gw, "/v1/events"))
        .header("content-encoding", "gzip")
        .body(&b"this is not gzip"[..])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);

    let (s, _) = post_json(&gw, "/v1/events", r#"{"id":"after"}"#).await;
    assert_eq!(s, 202, "still serving");
    assert_eq!(mem.wait_for(2, WAIT).await, 2);
    let stats = gw.stats();
    assert_eq!(stats.rejected_requests(RejectReason::MalformedInput), 2);
    assert_eq!(stats.rejected_requests(RejectReason::TooLarge), 2);
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn errors_the_framework_makes_have_json_bodies_that_say_why() {
    let gw = start(Hub::new().emitter(MemoryEmitter::new("m"))).await;
    let http = reqwest::Client::new();
    let cases = [
        (
            http.post(url(&gw, "/v1/events"))
                .header("content-encoding", "br")
                .body("[]"),
            415,
            "Content-Encoding",
        ),
        (http.get(url(&gw, "/v1/events")), 405, "method"),
        (http.get(url(&gw, "/v2/nothing")), 404, "no such endpoint"),
        (http.post(url(&gw, "/v1/ingest/%FF")).body("x"), 400, ""),
    ];
    for (req, want, says) in cases {
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        let text = resp.text().await.unwrap();
        assert_eq!(status, want, "{text}");
        assert_eq!(ct.as_deref(), Some("application/json"), "{want}: {text}");
        let body: serde_json::Value = serde_json::from_str(&text).unwrap();
        let error = body["error"].as_str().unwrap();
        assert!(error.contains(says), "{want}: {error}");
        assert!(body["reason"].is_string(), "{text}");
    }
    // Readiness keeps its plain-text answers.
    let ready = http.get(url(&gw, "/readyz")).send().await.unwrap();
    assert_eq!(ready.text().await.unwrap(), "ready\n");
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_full_buffer_answers_429_with_retry_after() {
    let stuck = GateEmitter::closed("stuck");
    let mut config = test_config();
    config.buffer.timeout = Duration::from_millis(100);
    let gw = start_with(Hub::new().emitter(stuck.clone()).buffer_capacity(2), config).await;
    let (s, _) = post_json(&gw, "/v1/events", r#"[{"id":"1"},{"id":"2"}]"#).await;
    assert_eq!(s, 202);
    let resp = reqwest::Client::new()
        .post(url(&gw, "/v1/events"))
        .body(r#"{"id":"3"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    let r: serde_json::Value = resp.json_body().await;
    assert_eq!(r["reason"], "buffer_full");
    stuck.open();
    assert_eq!(stuck.inner.wait_for(2, WAIT).await, 2);
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn ingest_by_source_then_by_content_type() {
    let mem = MemoryEmitter::new("m");
    let gw = start(
        Hub::new()
            .ingestor(JsonIngestor::new().with_sources(["github"]))
            .ingestor(PassthroughIngestor::new())
            .emitter(mem.clone()),
    )
    .await;
    let client = reqwest::Client::new();
    // The source's own ingestor, whatever the content type says.
    let r = client
        .post(url(&gw, "/v1/ingest/github"))
        .header("content-type", "text/plain")
        .body(r#"{"id":"gh-1","event_type":"push"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    // No ingestor for the source: the content type chooses.
    let r = client
        .post(url(&gw, "/v1/ingest/other"))
        .header("content-type", "application/json; charset=utf-8")
        .body(r#"[{"id":"o-1"}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    // Neither: 415, naming what there is.
    let r = client
        .post(url(&gw, "/v1/ingest/other"))
        .header("content-type", "text/csv")
        .body("a,b\n1,2\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 415);
    let body: serde_json::Value = r.json_body().await;
    assert!(
        body["error"].as_str().unwrap().contains("text/csv"),
        "{body}"
    );

    assert_eq!(mem.wait_for(2, WAIT).await, 2);
    let got = mem.events();
    assert_eq!(
        (got[0].id.as_str(), got[0].source.as_str()),
        ("gh-1", "github")
    );
    assert_eq!(
        (got[1].id.as_str(), got[1].source.as_str()),
        ("o-1", "other")
    );
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn ingest_tokens_guard_grpc_and_http_but_not_health_or_metrics() {
    let mem = MemoryEmitter::new("m");
    let mut config = test_config();
    config.access.ingest_tokens = vec!["s3cret".into(), "second".into()];
    let gw = start_with(Hub::new().emitter(mem.clone()), config).await;
    let client = reqwest::Client::new();

    for auth in [None, Some("Bearer wrong"), Some("s3cret")] {
        let mut req = client.post(url(&gw, "/v1/events")).body(r#"{"id":"x"}"#);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401, "{auth:?}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
    }
    let r = client
        .post(url(&gw, "/v1/events"))
        .header("authorization", "Bearer second")
        .body(r#"{"id":"ok-http"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    for open in ["/healthz", "/metrics"] {
        let r = client.get(url(&gw, open)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{open}");
    }

    // gRPC, unary and stream.
    let mut c = client_of(&gw).await;
    let status = c
        .send_event(events_req("s", vec![Event::new("t")]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = c
        .stream_events(tokio_stream::iter(vec![events_req(
            "s",
            vec![Event::new("t")],
        )]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let mut req = tonic::Request::new(events_req("s", vec![Event::new("t").with_id("ok-grpc")]));
    req.metadata_mut()
        .insert("authorization", "Bearer s3cret".parse().unwrap());
    assert_eq!(c.send_event(req).await.unwrap().into_inner().accepted, 1);

    assert_eq!(mem.wait_for(2, WAIT).await, 2);
    let s = gw.stats();
    assert_eq!(s.rejected_requests(RejectReason::Unauthenticated), 5);
    gw.shutdown().await.unwrap();
}

async fn client_of(
    gw: &RunningGateway,
) -> polku_gateway::proto::v1::gateway_client::GatewayClient<tonic::transport::Channel> {
    client(gw).await
}

#[tokio::test]
async fn metrics_move_by_exactly_what_was_sent() {
    let mem = MemoryEmitter::new("m");
    let gw = start(
        Hub::new()
            .middleware(Filter::new(|e| e.event_type != "noise"))
            .emitter(mem.clone()),
    )
    .await;
    let client = reqwest::Client::new();
    let get = || get_text(&client, url(&gw, "/metrics"));
    let before = get().await;
    assert_eq!(metric(&before, "polku_events_received_total"), 0);
    if cfg!(target_os = "linux") {
        let rss = metric(&before, "process_resident_memory_bytes");
        assert!(rss > 1 << 20, "the process's resident memory: {rss}");
    }

    let (s, _) = post_json(
        &gw,
        "/v1/events",
        r#"[{"id":"1","source":"client-chosen-source"},{"id":"2","event_type":"noise"},{"id":3}]"#,
    )
    .await;
    assert_eq!(s, 202);
    let (s, _) = post_json(&gw, "/v1/events", "nope").await;
    assert_eq!(s, 400);
    mem.wait_for(1, WAIT).await;

    // The emitter's task counts a batch once its emit returns.
    let mut after = get().await;
    for _ in 0..250 {
        if after.contains("polku_ingest_to_emit_seconds_count{emitter=\"m\"} 1\n") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        after = get().await;
    }
    assert_eq!(metric(&after, "polku_events_received_total"), 3);
    assert_eq!(metric(&after, "polku_events_accepted_total"), 1);
    assert_eq!(metric(&after, "polku_events_dropped_total"), 1);
    assert_eq!(
        metric(
            &after,
            r#"polku_events_rejected_total{reason="ingest_failed"}"#
        ),
        1
    );
    assert_eq!(
        metric(
            &after,
            r#"polku_requests_rejected_total{reason="malformed_input"}"#
        ),
        1
    );
    assert_eq!(
        metric(
            &after,
            r#"polku_middleware_dropped_total{middleware="filter",position="0",reason="filtered"}"#
        ),
        1
    );
    assert_eq!(
        metric(&after, r#"polku_emitter_events_emitted_total{emitter="m"}"#),
        1
    );
    assert_eq!(metric(&after, "polku_buffer_capacity_events"), 10_000);
    assert_eq!(
        metric(
            &after,
            r#"polku_http_requests_total{endpoint="/v1/events",status="202"}"#
        ),
        1
    );
    assert!(
        !after.contains("client-chosen-source"),
        "no client string in a label"
    );
    assert_eq!(
        metric(&after, r#"polku_ingest_to_emit_seconds_count{emitter="m"}"#),
        1
    );
    assert_eq!(
        metric(
            &after,
            r#"polku_ingest_to_emit_seconds_bucket{emitter="m",le="+Inf"}"#
        ),
        1
    );

    // gRPC calls are counted by method and code.
    let mut c = client_of(&gw).await;
    c.send_event(events_req("s", vec![Event::new("t")]))
        .await
        .unwrap();
    c.send_event(events_req("s", vec![])).await.unwrap();
    let bad = SendEventRequest {
        source: "s".into(),
        payload: None,
    };
    c.send_event(bad).await.unwrap_err();
    mem.wait_for(2, WAIT).await;
    let mut last = get().await;
    for _ in 0..250 {
        if last.contains("polku_ingest_to_emit_seconds_count{emitter=\"m\"} 2\n") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        last = get().await;
    }
    assert_eq!(
        metric(
            &last,
            r#"polku_grpc_requests_total{method="SendEvent",code="0"}"#
        ),
        2
    );
    assert_eq!(
        metric(
            &last,
            r#"polku_grpc_requests_total{method="SendEvent",code="3"}"#
        ),
        1
    );
    assert_eq!(
        metric(&last, r#"polku_ingest_to_emit_seconds_count{emitter="m"}"#),
        2
    );
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn readyz_turns_503_while_draining_and_healthz_stays_up() {
    let stuck = GateEmitter::closed("stuck");
    let gw = start(Hub::new().emitter(stuck.clone())).await;
    let client = reqwest::Client::new();
    let ready = url(&gw, "/readyz");
    let health = url(&gw, "/healthz");
    let events = url(&gw, "/v1/events");
    assert_eq!(
        client.get(&ready).send().await.unwrap().status().as_u16(),
        200
    );
    let (s, _) = post_json(&gw, "/v1/events", r#"{"id":"in-flight"}"#).await;
    assert_eq!(s, 202);

    let draining = tokio::spawn(gw.shutdown());
    let mut saw_503 = false;
    for _ in 0..100 {
        let r = client.get(&ready).send().await.unwrap();
        if r.status().as_u16() == 503 {
            saw_503 = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(saw_503, "readyz should say 503 while draining");
    assert_eq!(
        client.get(&health).send().await.unwrap().status().as_u16(),
        200
    );
    let r = client
        .post(&events)
        .body(r#"{"id":"late"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503, "no new events while draining");
    assert_eq!(r.headers()["retry-after"], "1");

    stuck.open();
    draining.await.unwrap().unwrap();
    let ids = stuck.inner.ids();
    assert_eq!(ids, ["in-flight"]);
}

trait JsonBody {
    async fn json_body(self) -> serde_json::Value;
}

impl JsonBody for reqwest::Response {
    async fn json_body(self) -> serde_json::Value {
        serde_json::from_str(&self.text().await.unwrap()).unwrap()
    }
}

#[tokio::test]
async fn readyz_and_grpc_health_say_not_ready_when_no_emitter_can_deliver() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

    let sick = GateEmitter::closed("sick");
    sick.open();
    let gw = start(Hub::new().emitter(sick.clone())).await;
    let client = reqwest::Client::new();
    let ready = url(&gw, "/readyz");
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", gw.grpc_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let grpc_status = |h: &mut HealthClient<tonic::transport::Channel>| {
        let mut h = h.clone();
        async move {
            h.check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .status
        }
    };
    assert_eq!(
        client.get(&ready).send().await.unwrap().status().as_u16(),
        200
    );
    assert_eq!(
        grpc_status(&mut health).await,
        ServingStatus::Serving as i32
    );

    sick.healthy
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let mut said = String::new();
    for _ in 0..50 {
        let r = client.get(&ready).send().await.unwrap();
        if r.status().as_u16() == 503 {
            said = r.text().await.unwrap();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(said.contains("no emitter can deliver"), "{said:?}");
    let mut not_serving = false;
    for _ in 0..50 {
        if grpc_status(&mut health).await == ServingStatus::NotServing as i32 {
            not_serving = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(not_serving, "gRPC health follows readyz");

    sick.healthy
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let mut serving = false;
    for _ in 0..50 {
        if grpc_status(&mut health).await == ServingStatus::Serving as i32 {
            serving = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(serving, "and recovers with it");
    let mut ok = false;
    for _ in 0..50 {
        if client.get(&ready).send().await.unwrap().status().as_u16() == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "readyz recovers too");
    gw.shutdown().await.unwrap();
}

/// A taken HTTP port fails start-up with an error that names the address
/// and the setting, and leaves nothing running: the gRPC port it had bound
/// is free again.
#[tokio::test]
async fn a_taken_http_port_fails_start_up_and_leaves_nothing_running() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let grpc = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let grpc_addr = grpc.local_addr().unwrap();
    drop(grpc);
    let mut config = test_config();
    config.listen.grpc_addr = grpc_addr;
    config.listen.http_addr = Some(taken.local_addr().unwrap());
    let hub = Hub::new()
        .ingestor(JsonIngestor::new())
        .emitter(NullEmitter::new());
    let err = hub.build().start(&config).await.unwrap_err();
    assert!(matches!(err, StartError::HttpListen { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&taken.local_addr().unwrap().to_string()) && msg.contains("POLKU_HTTP_ADDR"),
        "{msg}"
    );
    // The accept task notices its listener is gone on its next turn.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while std::net::TcpListener::bind(grpc_addr).is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gRPC port is still held after a failed start"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
