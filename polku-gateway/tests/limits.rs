//! Limits with clear errors: events per request, id length, metadata entries
//! and bytes. The gateway keeps serving, and what was valid goes on.

mod common;

use common::*;
use polku_gateway::proto::v1::RejectCode;
use polku_gateway::*;
use std::future::Future as _;
use std::time::Duration;

fn limited() -> Config {
    let mut c = test_config();
    c.limits.max_events_per_request = 5;
    c.limits.max_id_bytes = 40;
    c.limits.max_metadata_entries = 3;
    c.limits.max_metadata_bytes = 64;
    c
}

#[tokio::test]
async fn events_over_a_limit_are_refused_one_by_one_with_the_reason() {
    let mem = MemoryEmitter::new("m");
    let gw = start_with(Hub::new().emitter(mem.clone()), limited()).await;
    let mut c = client(&gw).await;
    let mut many = Event::new("t").with_id("many");
    for i in 0..4 {
        many.metadata.insert(format!("k{i}").into(), "v".into());
    }
    let big = Event::new("t")
        .with_id("big")
        .with_metadata("k", "x".repeat(100));
    let r = c
        .send_event(events_req(
            "src",
            vec![
                Event::new("t").with_id("x".repeat(41)),
                many,
                Event::new("t").with_id("fine"),
                big,
            ],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.accepted, 1);
    assert_eq!(r.rejected.len(), 3);
    let by_index = |i: u32| r.rejected.iter().find(|x| x.index == Some(i)).unwrap();
    assert!(
        r.rejected
            .iter()
            .all(|x| x.code == RejectCode::Invalid as i32)
    );
    assert!(
        by_index(0)
            .message
            .contains("id is 41 bytes long, over the limit of 40 (POLKU_MAX_ID_BYTES)")
    );
    assert_eq!(by_index(0).id, "", "an over-long id is not echoed back");
    assert!(
        by_index(1)
            .message
            .contains("4 entries, over the limit of 3 (POLKU_MAX_METADATA_ENTRIES)")
    );
    assert_eq!(by_index(1).id, "many");
    assert!(
        by_index(3)
            .message
            .contains("101 bytes, over the limit of 64 (POLKU_MAX_METADATA_BYTES)")
    );
    mem.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(mem.events()[0].id, "fine");
    let s = gw.stats();
    assert_eq!(s.rejected(RejectReason::InvalidEvent), 3);
    assert_eq!((s.received, s.accepted), (4, 1));
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn long_sources_event_types_and_route_lists_are_refused_one_by_one() {
    let mem = MemoryEmitter::new("m");
    let mut config = test_config();
    config.limits.max_source_bytes = 8;
    config.limits.max_event_type_bytes = 8;
    config.limits.max_routes = 2;
    let gw = start_with(Hub::new().emitter(mem.clone()), config).await;
    let mut c = client(&gw).await;
    let events = vec![
        Event::new("t").with_id("src").with_source("s".repeat(9)),
        Event::new("t".repeat(9)).with_id("type"),
        Event::new("t")
            .with_id("routes")
            .with_route_to(["m", "a", "b"]),
        Event::new("t")
            .with_id("name")
            .with_route_to(["n".repeat(257)]),
        Event::new("t").with_id("fine").with_route_to(["m", "x"]),
    ];
    let r = c
        .send_event(events_req("ok", events))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.accepted, 1, "{r:?}");
    let msg = |id: &str| {
        r.rejected
            .iter()
            .find(|x| x.id == id)
            .unwrap_or_else(|| panic!("{id} not refused: {r:?}"))
            .message
            .clone()
    };
    assert!(
        msg("src").contains("source is 9 bytes long, over the limit of 8 (POLKU_MAX_SOURCE_BYTES)")
    );
    assert!(
        msg("type").contains(
            "event_type is 9 bytes long, over the limit of 8 (POLKU_MAX_EVENT_TYPE_BYTES)"
        )
    );
    assert!(
        msg("routes").contains("route_to has 3 entries, over the limit of 2 (POLKU_MAX_ROUTES)")
    );
    assert!(msg("name").contains("a route_to name is 257 bytes long"));

    // The request's source counts for the events that take it.
    let r = c
        .send_event(events_req(
            &"r".repeat(9),
            vec![
                Event::new("t").with_id("takes"),
                Event::new("t").with_id("own").with_source("mine"),
            ],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.accepted, 1, "{r:?}");
    assert_eq!(r.rejected[0].id, "takes");
    assert!(r.rejected[0].message.contains("POLKU_MAX_SOURCE_BYTES"));
    mem.wait_for(2, Duration::from_secs(5)).await;
    let ids: Vec<String> = mem.events().iter().map(|e| e.id.to_string()).collect();
    assert_eq!(ids, ["fine", "own"]);
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn too_many_events_in_one_request_is_refused_whole_and_the_gateway_goes_on() {
    let mem = MemoryEmitter::new("m");
    let gw = start_with(Hub::new().emitter(mem.clone()), limited()).await;
    let mut c = client(&gw).await;
    let status = c
        .send_event(events_req("src", numbered("a", 6)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("6 events, over the limit of 5 per request (POLKU_MAX_EVENTS_PER_REQUEST)"),
        "{status:?}"
    );
    let r = c
        .send_event(events_req("src", numbered("b", 5)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.accepted, 5, "still serving");

    // HTTP says 413 with the same words.
    let body = serde_json::to_string(
        &(0..6)
            .map(|i| serde_json::json!({"id": format!("h{i}"), "event_type": "t"}))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let resp = reqwest::Client::new()
        .post(format!("http://{}/v1/events", gw.http_addr().unwrap()))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("POLKU_MAX_EVENTS_PER_REQUEST") && text.contains("too_many_events"),
        "{text}"
    );
    assert_eq!(gw.stats().rejected_requests(RejectReason::TooManyEvents), 2);
    mem.wait_for(5, Duration::from_secs(5)).await;
    gw.shutdown().await.unwrap();
}

fn big(prefix: &str, n: usize, payload: usize) -> Vec<Event> {
    (0..n)
        .map(|i| {
            Event::new("t")
                .with_id(format!("{prefix}-{i}"))
                .with_payload(vec![b'x'; payload])
        })
        .collect()
}

#[tokio::test]
async fn the_byte_budget_refuses_large_events_while_the_count_is_small() {
    let stuck = GateEmitter::closed("stuck");
    let mut config = test_config();
    config.buffer.max_bytes = 1 << 20;
    config.buffer.timeout = Duration::from_millis(200);
    let gw = start_with(Hub::new().emitter(stuck.clone()), config).await;
    let mut c = client(&gw).await;
    // Two batches of ten 50 KB events fit in 1 MiB; a third does not,
    // though the buffer holds 20 of its 10,000 events.
    for p in ["a", "b"] {
        let r = c
            .send_event(events_req("src", big(p, 10, 50_000)))
            .await
            .unwrap();
        assert_eq!(r.into_inner().accepted, 10);
    }
    let s = gw.stats();
    assert!(
        s.buffer_bytes > 1_000_000 && s.buffer_bytes <= 1 << 20,
        "{}",
        s.buffer_bytes
    );
    assert_eq!(s.buffer_depth, 20);
    let status = c
        .send_event(events_req("src", big("c", 10, 50_000)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(status.message().contains("1048576 bytes"), "{status:?}");

    // HTTP says 429 with Retry-After.
    let body = serde_json::json!([{"id": "h", "event_type": "t", "payload": "x".repeat(200_000)}]);
    let resp = reqwest::Client::new()
        .post(format!("http://{}/v1/events", gw.http_addr().unwrap()))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    let m = reqwest::get(format!("http://{}/metrics", gw.http_addr().unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("polku_buffer_max_bytes 1048576"), "{m}");

    // Delivered, the room comes back; nothing accepted was lost.
    stuck.open();
    stuck.inner.wait_for(20, Duration::from_secs(5)).await;
    for _ in 0..100 {
        if gw.stats().buffer_bytes == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(gw.stats().buffer_bytes, 0);
    let r = c
        .send_event(events_req("src", big("c", 10, 50_000)))
        .await
        .unwrap();
    assert_eq!(r.into_inner().accepted, 10);
    stuck.inner.wait_for(30, Duration::from_secs(5)).await;

    // One batch bigger than the whole budget can never fit: said so at once.
    let status = c
        .send_event(events_req("src", big("d", 3, 400_000)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("POLKU_BUFFER_MAX_BYTES"),
        "{status:?}"
    );
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_server_advertises_its_concurrent_stream_cap() {
    let mut config = test_config();
    config.listen.max_concurrent_streams = 7;
    let gw = start_with(Hub::new().emitter(MemoryEmitter::new("m")), config).await;
    let tcp = tokio::net::TcpStream::connect(gw.grpc_addr())
        .await
        .unwrap();
    let (h2, mut conn) = h2::client::handshake(tcp).await.unwrap();
    // Drive the connection until the server's SETTINGS have been read.
    let cap = tokio::time::timeout(
        Duration::from_secs(5),
        std::future::poll_fn(|cx| {
            let _ = std::pin::Pin::new(&mut conn).poll(cx);
            match conn.max_concurrent_send_streams() {
                7 => std::task::Poll::Ready(7),
                _ => std::task::Poll::Pending,
            }
        }),
    )
    .await;
    assert_eq!(cap, Ok(7), "SETTINGS_MAX_CONCURRENT_STREAMS");
    drop(h2);
    drop(conn);
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn events_kept_from_a_mostly_dropped_request_do_not_pin_its_buffer() {
    let mem = MemoryEmitter::new("m");
    let gw = start_with(
        Hub::new()
            .middleware(Filter::new(|e| e.id == "keep"))
            .emitter(mem.clone()),
        test_config(),
    )
    .await;
    // Sixteen 64 KiB payloads sliced from one 1 MiB request buffer.
    let big = bytes::Bytes::from((0..1u32 << 20).map(|i| i as u8).collect::<Vec<u8>>());
    let events: Vec<Event> = (0..16)
        .map(|i| {
            let id = if i == 3 {
                "keep".to_owned()
            } else {
                format!("drop-{i}")
            };
            Event::new("t")
                .with_id(id)
                .with_payload(big.slice(i * 65536..(i + 1) * 65536))
        })
        .collect();
    let report = gw
        .send("src", events, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(report.accepted, 1);
    mem.wait_for(1, Duration::from_secs(5)).await;
    let kept = mem.events()[0].payload.clone();
    assert_eq!(kept, big.slice(3 * 65536..4 * 65536), "same bytes");
    let buffer = big.as_ptr() as usize..big.as_ptr() as usize + big.len();
    assert!(
        !buffer.contains(&(kept.as_ptr() as usize)),
        "the kept payload still points into the 1 MiB request buffer"
    );

    // Even when all of a request is kept, its payloads leave the request's
    // buffer (which may hold padding the budget never saw) for one buffer of
    // the batch's own: one copy per batch, the payloads side by side.
    let mem2 = MemoryEmitter::new("m2");
    let gw2 = start_with(Hub::new().emitter(mem2.clone()), test_config()).await;
    let events: Vec<Event> = (0..4)
        .map(|i| Event::new("t").with_payload(big.slice(i * 131072..i * 131072 + 65536)))
        .collect();
    gw2.send("src", events, Duration::from_secs(1))
        .await
        .unwrap();
    mem2.wait_for(4, Duration::from_secs(5)).await;
    let got = mem2.events();
    for (i, e) in got.iter().enumerate() {
        assert_eq!(e.payload, big.slice(i * 131072..i * 131072 + 65536));
        assert!(!buffer.contains(&(e.payload.as_ptr() as usize)));
    }
    assert_eq!(
        got[1].payload.as_ptr() as usize,
        got[0].payload.as_ptr() as usize + 65536,
        "one buffer for the batch"
    );
    gw.shutdown().await.unwrap();
    gw2.shutdown().await.unwrap();
}

/// An in-process send reports each refusal with its code and place, as the
/// wire replies do.
#[tokio::test]
async fn an_in_process_send_reports_each_refusal_typed() {
    let mut config = test_config();
    config.limits.max_id_bytes = 36;
    let gw = start_with(Hub::new().emitter(MemoryEmitter::new("m")), config).await;
    let report = gw
        .send(
            "s",
            vec![
                Event::new("t").with_id("ok"),
                Event::new("t").with_id("x".repeat(37)),
                Event::new("t").with_id("lost").with_route_to(["nowhere"]),
            ],
            Duration::from_secs(1),
        )
        .await
        .unwrap();
    assert_eq!(report.accepted, 1);
    let codes: Vec<_> = report.rejected.iter().map(|r| r.code).collect();
    assert_eq!(codes, [RejectCode::Invalid, RejectCode::NoRoute]);
    assert_eq!(report.rejected[0].index, Some(1));
    assert!(report.rejected[0].message.contains("POLKU_MAX_ID_BYTES"));
    assert_eq!(report.rejected[1].id, "lost");
    assert!(
        report.rejected[1].message.contains("running: m"),
        "{:?}",
        report.rejected[1]
    );
    gw.shutdown().await.unwrap();
}
