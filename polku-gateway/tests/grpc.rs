//! End-to-end tests of the gRPC front door: a real server on 127.0.0.1:0,
//! real tonic clients.

mod common;

use bytes::Bytes;
use common::*;
use polku_gateway::proto::v1::{RejectCode, SendEventRequest};
use polku_gateway::*;
use std::collections::HashSet;
use std::time::Duration;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn readme_call_reaches_the_emitter_intact() {
    let mem = MemoryEmitter::new("memory");
    let gw = start(Hub::new().emitter(mem.clone())).await;
    let mut c = client(&gw).await;

    // The README's grpcurl call, as a Rust client makes it.
    let mut signup = Event::new("user.signup").with_id("1");
    signup.metadata.insert("plan".into(), "pro".into());
    signup.payload = Bytes::from_static(b"\x00binary\xff");
    let reply = c
        .send_event(events_req("my-app", vec![signup.clone()]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.accepted, 1);
    assert!(reply.rejected.is_empty());

    assert_eq!(mem.wait_for(1, WAIT).await, 1);
    let got = &mem.events()[0];
    assert_eq!(got.id, "1");
    assert_eq!(got.source, "my-app", "the request's source fills in");
    assert_eq!(got.event_type, "user.signup");
    assert_eq!(got.metadata, signup.metadata);
    assert_eq!(got.payload, signup.payload);
    assert!(got.timestamp_unix_ns > 0, "a missing timestamp is set");

    // The emitter's task counts a batch once its emit returns.
    let mut s = gw.stats();
    for _ in 0..250 {
        s = gw.stats();
        if s.emitters["memory"].emitted == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!((s.received, s.accepted), (1, 1));
    assert_eq!(s.emitters["memory"].emitted, 1);
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn given_ids_are_kept_byte_for_byte_and_missing_ones_generated() {
    let mem = MemoryEmitter::new("memory");
    let gw = start(Hub::new().emitter(mem.clone())).await;
    let mut c = client(&gw).await;
    let odd = "  Ünïcödé id / with spaces\t";
    let events = vec![
        Event::new("a").with_id(odd),
        Event::new("b"),
        Event::new("c"),
    ];
    let reply = c
        .send_event(events_req("s", events))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.accepted, 3);
    mem.wait_for(3, WAIT).await;
    let got = mem.events();
    assert_eq!(got[0].id, odd);
    for e in &got[1..] {
        let u = uuid_version(&e.id);
        assert_eq!(u, Some(7), "generated id {:?} should be a UUIDv7", e.id);
    }
    assert_ne!(got[1].id, got[2].id);
    gw.shutdown().await.unwrap();
}

fn uuid_version(s: &str) -> Option<u8> {
    // 8-4-4-4-12 hex; the version is the first digit of the third group.
    let parts: Vec<&str> = s.split('-').collect();
    let shape = parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12];
    if !shape || !s.chars().all(|c| c == '-' || c.is_ascii_hexdigit()) {
        return None;
    }
    parts[2][..1].parse::<u8>().ok()
}

#[tokio::test]
async fn streamed_events_arrive_in_order_with_one_reply_per_message() {
    let mem = MemoryEmitter::new("memory");
    let gw = start(Hub::new().emitter(mem.clone())).await;
    let mut c = client(&gw).await;

    let messages = 50;
    let per = 20;
    let outbound = async_stream::stream! {
        for m in 0..messages {
            yield events_req("stream", numbered(&format!("m{m:03}"), per));
        }
    };
    let mut replies = c.stream_events(outbound).await.unwrap().into_inner();
    let mut n_replies = 0;
    while let Some(r) = replies.message().await.unwrap() {
        assert_eq!(r.accepted as usize, per);
        assert!(r.error.is_none());
        n_replies += 1;
    }
    assert_eq!(n_replies, messages);
    assert_eq!(mem.wait_for(messages * per, WAIT).await, messages * per);
    let ids = mem.ids();
    let expected: Vec<String> = (0..messages)
        .flat_map(|m| (0..per).map(move |i| format!("m{m:03}-{i}")))
        .collect();
    assert_eq!(ids, expected, "order within a stream is kept");
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn raw_json_goes_through_the_json_ingestor_with_per_record_errors() {
    let mem = MemoryEmitter::new("memory");
    let gw = start(
        Hub::new()
            .ingestor(JsonIngestor::new())
            .ingestor(PassthroughIngestor::new())
            .emitter(mem.clone()),
    )
    .await;
    let mut c = client(&gw).await;
    let reply = c
        .send_event(raw_req(
            "webhook",
            "json",
            br#"[{"id":"j1","event_type":"a","payload":{"x":1}},{"id":5},{"id":"j3"}]"#,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.accepted, 2);
    assert_eq!(reply.rejected.len(), 1);
    assert_eq!(reply.rejected[0].index, Some(1));
    assert_eq!(reply.rejected[0].code, RejectCode::IngestFailed as i32);
    assert!(
        reply.rejected[0].message.contains("invalid type"),
        "{}",
        reply.rejected[0].message
    );

    mem.wait_for(2, WAIT).await;
    let got = mem.events();
    assert_eq!(got[0].id, "j1");
    assert_eq!(got[0].source, "webhook");
    assert_eq!(got[0].payload, Bytes::from_static(br#"{"x":1}"#));
    assert_eq!(got[1].id, "j3");
    let s = gw.stats();
    assert_eq!(s.received, 3);
    assert_eq!(s.rejected(RejectReason::IngestFailed), 1);
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn raw_bytes_to_a_gateway_without_ingestors_are_refused_in_plain_words() {
    let mem = MemoryEmitter::new("memory");
    let gw = start_with(Hub::new().emitter(mem.clone()), test_config()).await;
    let mut c = client(&gw).await;
    let status = c.send_event(raw_req("s", "csv", b"a,b")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().ends_with("(known formats: none)"),
        "{status:?}"
    );
    let status = c.send_event(raw_req("s", "", b"a,b")).await.unwrap_err();
    assert!(
        status.message().contains(
            "(sources with an ingestor: none); or name a format in raw.format (known formats: none)"
        ),
        "{status:?}"
    );
    // Events in POLKU's own schema need no ingestor.
    let ok = c
        .send_event(events_req("s", vec![Event::new("t")]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.accepted, 1);
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn every_bad_input_gets_its_status_and_the_server_keeps_serving() {
    let mem = MemoryEmitter::new("memory");
    let mut config = test_config();
    config.limits.max_message_bytes = 64 * 1024;
    let gw = start_with(
        Hub::new()
            .ingestor(JsonIngestor::new())
            .ingestor(PassthroughIngestor::new())
            .emitter(mem.clone()),
        config,
    )
    .await;
    let mut c = client(&gw).await;

    struct Case {
        name: &'static str,
        req: SendEventRequest,
        code: Code,
        says: &'static str,
        reason: RejectReason,
    }
    let big: &'static [u8] = Box::leak(vec![b' '; 100 * 1024].into_boxed_slice());
    let cases = vec![
        Case {
            name: "invalid JSON",
            req: raw_req("s", "json", b"{\"id\": \"1\",, }"),
            code: Code::InvalidArgument,
            says: "malformed JSON input",
            reason: RejectReason::MalformedInput,
        },
        Case {
            name: "malformed protobuf in a raw payload",
            req: raw_req("s", "protobuf", b"\x0a\xff\xff\xff\xff"),
            code: Code::InvalidArgument,
            says: "not a polku.v1.EventBatch",
            reason: RejectReason::MalformedInput,
        },
        Case {
            name: "unknown format",
            req: raw_req("s", "xml", b"<event/>"),
            code: Code::InvalidArgument,
            says: "unknown format \"xml\"",
            reason: RejectReason::UnknownFormat,
        },
        Case {
            name: "unknown source",
            req: raw_req("nobody", "", b"a,b,c"),
            code: Code::InvalidArgument,
            says: "no ingestor serves source \"nobody\"",
            reason: RejectReason::UnknownSource,
        },
        Case {
            name: "no payload",
            req: SendEventRequest {
                source: "s".into(),
                payload: None,
            },
            code: Code::InvalidArgument,
            says: "request has no payload",
            reason: RejectReason::EmptyRequest,
        },
        Case {
            name: "over the size limit",
            req: raw_req("s", "json", big),
            code: Code::OutOfRange,
            says: "too large",
            reason: RejectReason::TooLarge,
        },
    ];
    for case in cases {
        let before = gw.stats().rejected_requests(case.reason);
        let status = c.send_event(case.req).await.unwrap_err();
        assert_eq!(status.code(), case.code, "{}: {status:?}", case.name);
        assert!(
            status.message().contains(case.says),
            "{}: message {:?} should say {:?}",
            case.name,
            status.message(),
            case.says
        );
        assert_eq!(
            gw.stats().rejected_requests(case.reason),
            before + 1,
            "{}: counted as {:?}",
            case.name,
            case.reason
        );
        // The same connection still works.
        let ok = c
            .send_event(events_req(
                "s",
                vec![Event::new("after").with_id(case.name)],
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ok.accepted, 1, "{}: server keeps serving", case.name);
    }

    // A message that is not protobuf at all, straight on the wire.
    let status = send_raw_message(&gw, Bytes::from_static(b"\xff\xff\xff\xff\xff"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("malformed protobuf"),
        "{status:?}"
    );
    assert_eq!(
        gw.stats()
            .rejected_requests(RejectReason::MalformedProtobuf),
        1
    );

    let ok = c
        .send_event(events_req("s", vec![Event::new("last")]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.accepted, 1);
    // Six cases, each followed by one good event, and the last good one.
    mem.wait_for(7, WAIT).await;
    assert_eq!(mem.len(), 7, "only the good requests were delivered");
    assert_eq!(gw.stats().accepted, 7);
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_bad_message_in_a_stream_is_answered_and_the_stream_goes_on() {
    let mem = MemoryEmitter::new("memory");
    let gw = start(
        Hub::new()
            .ingestor(JsonIngestor::new())
            .emitter(mem.clone()),
    )
    .await;
    let mut c = client(&gw).await;
    let outbound = tokio_stream_iter(vec![
        events_req("s", numbered("a", 2)),
        raw_req("s", "json", b"not json"),
        raw_req("s", "yaml", b"a: 1"),
        events_req("s", numbered("b", 3)),
    ]);
    let mut replies = c.stream_events(outbound).await.unwrap().into_inner();
    let mut got = Vec::new();
    while let Some(r) = replies.message().await.unwrap() {
        got.push(r);
    }
    assert_eq!(got.len(), 4);
    assert_eq!(got[0].accepted, 2);
    let e1 = got[1].error.as_ref().expect("invalid JSON is refused");
    assert_eq!(e1.code, Code::InvalidArgument as i32);
    assert_eq!(e1.reason, "malformed_input");
    assert!(
        e1.message.contains("malformed JSON input"),
        "{}",
        e1.message
    );
    let e2 = got[2].error.as_ref().expect("unknown format is refused");
    assert_eq!(e2.reason, "unknown_format");
    assert_eq!(got[3].accepted, 3);
    assert_eq!(mem.wait_for(5, WAIT).await, 5);
    let s = gw.stats();
    assert_eq!(s.rejected_requests(RejectReason::MalformedInput), 1);
    assert_eq!(s.rejected_requests(RejectReason::UnknownFormat), 1);
    gw.shutdown().await.unwrap();
}

fn tokio_stream_iter(
    v: Vec<SendEventRequest>,
) -> impl tokio_stream::Stream<Item = SendEventRequest> + Send + 'static {
    tokio_stream::iter(v)
}

#[tokio::test]
async fn full_buffer_answers_resource_exhausted_and_loses_nothing_acknowledged() {
    let stuck = GateEmitter::closed("stuck");
    let mut config = test_config();
    config.buffer.timeout = Duration::from_millis(100);
    let gw = start_with(
        // 95: the tenth batch of ten finds room for only five, and must take none.
        Hub::new().emitter(stuck.clone()).buffer_capacity(95),
        config,
    )
    .await;
    let mut c = client(&gw).await;

    let mut acked = HashSet::new();
    let mut refused = 0;
    for b in 0..15 {
        let batch = numbered(&format!("b{b}"), 10);
        match c.send_event(events_req("s", batch.clone())).await {
            Ok(r) => {
                assert_eq!(r.into_inner().accepted, 10);
                acked.extend(batch.into_iter().map(|e| e.id.to_string()));
            }
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(status.message().contains("buffer full"), "{status:?}");
                refused += 1;
            }
        }
    }
    assert_eq!(acked.len(), 90, "whole batches only: nine fit");
    assert_eq!(refused, 6);
    let s = gw.stats();
    assert_eq!(s.buffer_depth, 90, "nothing of a refused batch got in");
    assert_eq!(s.rejected_requests(RejectReason::BufferFull), 6);
    assert_eq!(s.rejected(RejectReason::BufferFull), 60);

    // A batch bigger than the whole buffer can never fit: said at once.
    let status = c
        .send_event(events_req("s", numbered("huge", 96)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("larger than the whole buffer"),
        "{status:?}"
    );

    // The destination recovers: every acknowledged event arrives, nothing else.
    stuck.open();
    assert_eq!(stuck.inner.wait_for(90, WAIT).await, 90);
    let delivered: HashSet<String> = stuck.inner.ids().into_iter().collect();
    assert_eq!(delivered, acked);
    // And there is room again.
    let r = c
        .send_event(events_req("s", numbered("later", 10)))
        .await
        .unwrap();
    assert_eq!(r.into_inner().accepted, 10);
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_full_buffer_stops_a_stream_from_reading_until_there_is_room() {
    let stuck = GateEmitter::closed("stuck");
    let gw = start(Hub::new().emitter(stuck.clone()).buffer_capacity(50)).await;
    let mut c = client(&gw).await;
    let (tx, rx) = tokio::sync::mpsc::channel(100);
    let mut replies = c
        .stream_events(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for b in 0..10 {
        tx.send(events_req("s", numbered(&format!("s{b}"), 10)))
            .await
            .unwrap();
    }
    // Five batches fit; the sixth waits for room, so no sixth reply yet.
    for _ in 0..5 {
        assert_eq!(replies.message().await.unwrap().unwrap().accepted, 10);
    }
    let waited = tokio::time::timeout(Duration::from_millis(300), replies.message()).await;
    assert!(waited.is_err(), "no reply while the buffer is full");
    assert_eq!(gw.stats().buffer_depth, 50);

    stuck.open();
    for _ in 5..10 {
        assert_eq!(replies.message().await.unwrap().unwrap().accepted, 10);
    }
    drop(tx);
    assert!(replies.message().await.unwrap().is_none());
    assert_eq!(stuck.inner.wait_for(100, WAIT).await, 100);
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_stuck_emitter_does_not_stall_the_others() {
    let stuck = GateEmitter::closed("stuck");
    let fast = MemoryEmitter::new("fast");
    let gw = start(
        Hub::new()
            .emitter(stuck.clone())
            .emitter(fast.clone())
            .buffer_capacity(1000),
    )
    .await;
    let mut c = client(&gw).await;
    for b in 0..20 {
        let r = c
            .send_event(events_req("s", numbered(&format!("x{b}"), 10)))
            .await
            .unwrap();
        assert_eq!(r.into_inner().accepted, 10);
    }
    assert_eq!(
        fast.wait_for(200, WAIT).await,
        200,
        "the healthy emitter got everything"
    );
    assert!(stuck.inner.is_empty());
    assert_eq!(gw.stats().emitters["stuck"].queued, 200);
    stuck.open();
    assert_eq!(stuck.inner.wait_for(200, WAIT).await, 200);
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn route_to_picks_emitters_and_unknown_routes_are_refused() {
    let a = MemoryEmitter::new("a");
    let b = MemoryEmitter::new("b");
    let gw = start(Hub::new().emitter(a.clone()).emitter(b.clone())).await;
    let mut c = client(&gw).await;
    let events = vec![
        Event::new("t").with_id("to-a").with_route_to(["a"]),
        Event::new("t").with_id("to-both"),
        Event::new("t")
            .with_id("to-nowhere")
            .with_route_to(["slack"]),
        Event::new("t")
            .with_id("to-b-and-unknown")
            .with_route_to(["b", "gone"]),
    ];
    let r = c
        .send_event(events_req("s", events))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.accepted, 3);
    assert_eq!(r.rejected.len(), 1);
    assert_eq!(r.rejected[0].id, "to-nowhere");
    assert_eq!(r.rejected[0].code, RejectCode::NoRoute as i32);
    assert_eq!(
        r.rejected[0].index, None,
        "refused after middleware: the id says which"
    );
    assert!(
        r.rejected[0].message.contains("\"slack\""),
        "{}",
        r.rejected[0].message
    );

    a.wait_for(2, WAIT).await;
    b.wait_for(2, WAIT).await;
    let ids = |m: &MemoryEmitter| {
        m.events()
            .into_iter()
            .map(|e| e.id.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&a), ["to-a", "to-both"]);
    assert_eq!(ids(&b), ["to-both", "to-b-and-unknown"]);
    assert_eq!(gw.stats().rejected(RejectReason::NoRoute), 1);
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_delivers_every_event_in_flight() {
    let slow = MemoryEmitter::new("slow").with_delay(Duration::from_millis(20));
    let gw = start(Hub::new().emitter(slow.clone()).buffer_capacity(10_000)).await;
    let mut c = client(&gw).await;
    let mut acked = 0;
    for b in 0..40 {
        let r = c
            .send_event(events_req("s", numbered(&format!("f{b}"), 50)))
            .await
            .unwrap();
        acked += r.into_inner().accepted as usize;
    }
    assert_eq!(acked, 2000);
    assert!(
        slow.len() < 2000,
        "events are still in flight when shutdown starts"
    );
    gw.shutdown().await.unwrap();
    assert_eq!(slow.len(), 2000, "shutdown delivered everything accepted");
}

#[tokio::test]
async fn shutdown_that_cannot_deliver_in_time_says_how_many_are_left() {
    let stuck = GateEmitter::closed("stuck");
    let mut config = test_config();
    config.runtime.shutdown_timeout = Duration::from_millis(300);
    let gw = start_with(Hub::new().emitter(stuck.clone()), config).await;
    gw.send("s", numbered("left", 7), Duration::from_secs(1))
        .await
        .unwrap();
    match gw.shutdown().await {
        Err(ShutdownError::Timeout { undelivered, .. }) => assert_eq!(undelivered, 7),
        other => panic!("expected a timeout, got {other:?}"),
    }
}

#[tokio::test]
async fn after_shutdown_starts_new_requests_are_refused() {
    let mem = MemoryEmitter::new("m");
    let gw = start(Hub::new().emitter(mem.clone())).await;
    let addr = gw.grpc_addr();
    gw.shutdown().await.unwrap();
    // The listener is gone: connecting fails rather than silently dropping.
    let res =
        polku_gateway::proto::v1::gateway_client::GatewayClient::connect(format!("http://{addr}"))
            .await;
    assert!(res.is_err());
}

#[tokio::test]
async fn reflection_lists_the_gateway_and_health_answers() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let gw = start(Hub::new().emitter(MemoryEmitter::new("m"))).await;
    let url = format!("http://{}", gw.grpc_addr());

    let channel = tonic::transport::Channel::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut refl = ServerReflectionClient::new(channel.clone());
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = refl
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let msg = resp.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
        panic!("unexpected reflection answer: {msg:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"polku.v1.Gateway".to_string()), "{names:?}");
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );

    let mut health = HealthClient::new(channel);
    for service in ["", "polku.v1.Gateway"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "{service:?}");
    }
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn middleware_runs_in_order_and_dropped_events_are_not_acknowledged() {
    let mem = MemoryEmitter::new("memory");
    let filter = Filter::new(|e| e.event_type.starts_with("user."));
    let gw = start(
        Hub::new()
            .middleware(filter.clone())
            .middleware(Transform::new(|mut e| {
                // Runs after the filter: it only ever sees user events.
                assert!(e.event_type.starts_with("user."));
                e.metadata.insert("env".into(), "prod".into());
                e
            }))
            .emitter(mem.clone())
            .buffer_capacity(10),
    )
    .await;
    let mut c = client(&gw).await;
    let events = vec![
        Event::new("user.signup").with_id("u1"),
        Event::new("system.tick").with_id("s1"),
        Event::new("user.login").with_id("u2"),
    ];
    let r = c
        .send_event(events_req("s", events))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.accepted, r.dropped), (2, 1));
    assert_eq!(filter.filtered(), 1);
    mem.wait_for(2, WAIT).await;
    let got = mem.events();
    assert_eq!(
        got.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["u1", "u2"]
    );
    assert!(got.iter().all(|e| e.metadata["env"] == "prod"));
    let s = gw.stats();
    assert_eq!((s.received, s.accepted, s.dropped), (3, 2, 1));

    // Dropped events give their buffer room back: ten more fit in a buffer of ten.
    let more: Vec<Event> = (0..10)
        .map(|i| Event::new("user.x").with_id(format!("m{i}")))
        .collect();
    mem.wait_for(2, WAIT).await;
    let r = c
        .send_event(events_req("s", more))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.accepted, 10);
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_ends_open_streams_and_delivers_what_they_sent() {
    let slow = MemoryEmitter::new("slow").with_delay(Duration::from_millis(10));
    let gw = start(Hub::new().emitter(slow.clone())).await;
    let mut c = client(&gw).await;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let mut replies = c
        .stream_events(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut acked = 0;
    for b in 0..10 {
        tx.send(events_req("s", numbered(&format!("o{b}"), 30)))
            .await
            .unwrap();
        acked += replies.message().await.unwrap().unwrap().accepted;
    }
    assert_eq!(acked, 300);
    // The client keeps its stream open; shutdown must not wait for it forever.
    let started = std::time::Instant::now();
    gw.shutdown().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        slow.len(),
        300,
        "everything the stream had acknowledged arrived"
    );
    // The client is told plainly that the stream ended because of shutdown.
    let end = replies.message().await.unwrap_err();
    assert_eq!(end.code(), Code::Unavailable, "{end:?}");
    assert!(end.message().contains("shutting down"), "{end:?}");
    drop(tx);
}

#[tokio::test]
async fn a_stream_on_a_full_buffer_really_stops_reading() {
    let stuck = GateEmitter::closed("stuck");
    let gw = start(Hub::new().emitter(stuck.clone()).buffer_capacity(10)).await;
    let mut c = client(&gw).await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut replies = c
        .stream_events(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(events_req("s", numbered("fill", 10)))
        .await
        .unwrap();
    assert_eq!(replies.message().await.unwrap().unwrap().accepted, 10);

    // 2000 messages of 2 KiB (4 MiB) would all go through in a moment if
    // the server kept reading. It must not: only what fits in the HTTP/2
    // windows and the small channels can leave the client.
    let producer = tokio::spawn(async move {
        let payload = Bytes::from(vec![b'x'; 2048]);
        let mut sent = 0usize;
        for i in 0..2000 {
            let e = Event::new("t")
                .with_id(format!("p{i}"))
                .with_payload(payload.clone());
            if tokio::time::timeout(
                Duration::from_millis(500),
                tx.send(events_req("s", vec![e])),
            )
            .await
            .is_err()
            {
                break;
            }
            sent += 1;
        }
        sent
    });
    let sent = producer.await.unwrap();
    assert!(
        sent < 1000,
        "the client could push {sent} messages into a full gateway"
    );
    assert_eq!(gw.stats().accepted, 10);
    stuck.open();
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_call_waiting_for_room_is_told_at_once_when_shutdown_starts() {
    let stuck = GateEmitter::closed("stuck");
    let mut config = test_config();
    config.buffer.timeout = Duration::from_secs(60);
    config.runtime.shutdown_timeout = Duration::from_secs(2);
    let gw = start_with(Hub::new().emitter(stuck.clone()).buffer_capacity(5), config).await;
    let mut c = client(&gw).await;
    c.send_event(events_req("s", numbered("fill", 5)))
        .await
        .unwrap();
    let mut c2 = c.clone();
    let waiting = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let r = c2.send_event(events_req("s", numbered("late", 1))).await;
        (r, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stuck2 = stuck.clone();
    let shutdown = tokio::spawn(async move { gw.shutdown().await });
    let (r, took) = waiting.await.unwrap();
    let status = r.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("shutting down"), "{status:?}");
    assert!(took < Duration::from_secs(5), "waited {took:?}");
    stuck2.open();
    shutdown.await.unwrap().unwrap();
    let ids = stuck.inner.ids();
    assert_eq!(ids.len(), 5);
    assert!(ids.iter().all(|id| id.starts_with("fill")));
}

/// Turns every batch into itself plus one summary event.
#[derive(Clone, Debug)]
struct AddSummary;

impl<S> tower::Layer<S> for AddSummary {
    type Service = tower::util::MapRequest<S, fn(Vec<Event>) -> Vec<Event>>;
    fn layer(&self, inner: S) -> Self::Service {
        fn add(mut b: Vec<Event>) -> Vec<Event> {
            let n = b.len();
            b.push(Event::new("summary").with_id(format!("summary-of-{n}")));
            b
        }
        tower::util::MapRequest::new(inner, add as fn(Vec<Event>) -> Vec<Event>)
    }
}

#[tokio::test]
async fn middleware_that_adds_events_needs_room_and_never_waits_for_it() {
    let stuck = GateEmitter::closed("stuck");
    let gw = start(
        Hub::new()
            .middleware(AddSummary)
            .emitter(stuck.clone())
            .buffer_capacity(6),
    )
    .await;
    let mut c = client(&gw).await;
    let r = c
        .send_event(events_req("s", numbered("a", 2)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.accepted, 3, "two events and their summary");
    // Three events fit in the three places left, but with their summary they
    // need four: the extra place is not there, so the request is refused at
    // once (it must not wait while holding the three).
    let status = c
        .send_event(events_req("s", numbered("b", 3)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(
        gw.stats().buffer_depth,
        3,
        "the refused request holds no room"
    );
    stuck.open();
    assert_eq!(stuck.inner.wait_for(3, WAIT).await, 3);
    gw.shutdown().await.unwrap();
}

/// A middleware that panics on a batch containing an event of type "boom".
#[derive(Clone, Debug)]
struct Boom;

impl<S> tower::Layer<S> for Boom {
    type Service = tower::util::MapRequest<S, fn(Vec<Event>) -> Vec<Event>>;
    fn layer(&self, inner: S) -> Self::Service {
        fn check(b: Vec<Event>) -> Vec<Event> {
            assert!(b.iter().all(|e| e.event_type != "boom"), "boom");
            b
        }
        tower::util::MapRequest::new(inner, check as fn(Vec<Event>) -> Vec<Event>)
    }
}

#[tokio::test]
async fn a_panicking_middleware_fails_the_request_and_the_gateway_goes_on() {
    let mem = MemoryEmitter::new("m");
    let gw = start(
        Hub::new()
            .middleware(Boom)
            .emitter(mem.clone())
            .buffer_capacity(10),
    )
    .await;
    let mut c = client(&gw).await;
    let status = c
        .send_event(events_req("s", vec![Event::new("boom")]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("middleware"), "{status:?}");
    // Its buffer room came back, and the next request works.
    let r = c
        .send_event(events_req("s", numbered("ok", 10)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.accepted, 10);
    // The same on a stream: answered in the reply, and the stream goes on.
    let mut replies = c
        .stream_events(tokio_stream::iter(vec![
            events_req("s", vec![Event::new("boom")]),
            events_req("s", vec![Event::new("fine")]),
        ]))
        .await
        .unwrap()
        .into_inner();
    let first = replies.message().await.unwrap().unwrap();
    assert_eq!(first.error.unwrap().reason, "middleware_failed");
    assert_eq!(replies.message().await.unwrap().unwrap().accepted, 1);
    assert_eq!(mem.wait_for(11, WAIT).await, 11);
    assert_eq!(gw.stats().rejected(RejectReason::MiddlewareFailed), 2);
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_event_refused_after_dedup_saw_it_is_no_duplicate_when_sent_again() {
    let mem = MemoryEmitter::new("m");
    let gw = start(
        Hub::new()
            .middleware(Deduplicator::new(Duration::from_secs(60), 1000).unwrap())
            .emitter(mem.clone()),
    )
    .await;
    let c = client(&gw).await;
    let send = |events: Vec<Event>| {
        let mut c = c.clone();
        async move {
            c.send_event(events_req("s", events))
                .await
                .unwrap()
                .into_inner()
        }
    };
    // Refused after the deduplicator passed it: no emitter of that name.
    let r = send(vec![Event::new("t").with_id("x").with_route_to(["ghost"])]).await;
    assert_eq!((r.accepted, r.dropped), (0, 0));
    assert_eq!(r.rejected[0].code, RejectCode::NoRoute as i32);
    // Sent again as it should have been: accepted, not a duplicate.
    let r = send(vec![Event::new("t").with_id("x")]).await;
    assert_eq!(
        (r.accepted, r.dropped),
        (1, 0),
        "the retry is not a duplicate"
    );
    // Now it was accepted, so it is one.
    let r = send(vec![
        Event::new("t").with_id("x"),
        Event::new("t").with_id("y"),
    ])
    .await;
    assert_eq!((r.accepted, r.dropped), (1, 1));
    assert_eq!(mem.wait_for(2, WAIT).await, 2);
    let ids: Vec<String> = mem.events().iter().map(|e| e.id.to_string()).collect();
    assert_eq!(ids, ["x", "y"]);
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn drops_are_counted_per_middleware_and_reason_in_chain_order() {
    let mem = MemoryEmitter::new("m");
    let gw = start(
        Hub::new()
            .middleware(Filter::new(|e| e.event_type != "noise"))
            .middleware(Deduplicator::new(Duration::from_secs(60), 1000).unwrap())
            .middleware(tower::timeout::TimeoutLayer::new(Duration::from_secs(5)))
            .middleware(
                Router::new()
                    .route(|e| e.event_type == "known", ["m"])
                    .on_unroutable(Unroutable::Drop),
            )
            .emitter(mem.clone()),
    )
    .await;
    let mut c = client(&gw).await;
    let events = vec![
        Event::new("known").with_id("a"),
        Event::new("noise").with_id("b"),
        Event::new("known").with_id("a"),
        Event::new("stray").with_id("c"),
        Event::new("known").with_id("d"),
    ];
    let r = c
        .send_event(events_req("s", events))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.accepted, r.dropped), (2, 3));
    let s = gw.stats();
    let seen: Vec<(&str, Vec<(DropReason, u64)>)> = s
        .middleware
        .iter()
        .map(|m| (m.name, m.dropped.clone().into_iter().collect()))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("filter", vec![(DropReason::Filtered, 1)]),
            ("dedup", vec![(DropReason::Duplicate, 1)]),
            // tower's TimeoutLayer counts nothing and is not listed.
            ("route", vec![(DropReason::Unroutable, 1)]),
        ]
    );
    assert_eq!(s.dropped, 3);
    mem.wait_for(2, WAIT).await;
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn aggregator_summaries_come_by_count_by_timer_and_at_shutdown() {
    let mem = MemoryEmitter::new("m");
    let gw = start(
        Hub::new()
            .middleware(Aggregator::new(3, Duration::from_millis(300)).unwrap())
            .emitter(mem.clone())
            .flush_interval(Duration::from_millis(20)),
    )
    .await;
    let mut c = client(&gw).await;
    let events = vec![
        Event::new("beat"),
        Event::new("beat"),
        Event::new("beat"),
        Event::new("tick"),
    ];
    let r = c
        .send_event(events_req("s", events))
        .await
        .unwrap()
        .into_inner();
    // Four folded in, one summary out: the reply balances what was sent
    // (accepted + dropped = 4); the aggregator's own counter says 4 folded.
    assert_eq!((r.accepted, r.dropped), (1, 3));
    assert_eq!(gw.stats().middleware[0].dropped[&DropReason::Aggregated], 4);
    assert_eq!(mem.wait_for(1, WAIT).await, 1);
    // The `tick` window closes by the timer, with no request to carry it.
    assert_eq!(mem.wait_for(2, WAIT).await, 2);
    let got = mem.events();
    assert_eq!(got[0].metadata["polku.count"], "3");
    assert_eq!(got[1].metadata["polku.group"], "tick");
    // A window still open at shutdown is flushed, not lost.
    c.send_event(events_req("s", vec![Event::new("late")]))
        .await
        .unwrap();
    gw.shutdown().await.unwrap();
    let got = mem.events();
    assert_eq!(got.len(), 3);
    assert_eq!(got[2].metadata["polku.group"], "late");
}

#[tokio::test]
async fn a_client_that_disconnects_mid_stream_loses_only_what_was_never_acknowledged() {
    let stuck = GateEmitter::closed("stuck");
    let gw = start(Hub::new().emitter(stuck.clone()).buffer_capacity(20)).await;
    // Its own connection, so that dropping it really closes the socket.
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", gw.grpc_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = polku_gateway::proto::v1::gateway_client::GatewayClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let mut replies = c
        .stream_events(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for p in ["a", "b"] {
        tx.send(events_req("s", numbered(p, 10))).await.unwrap();
        assert_eq!(replies.message().await.unwrap().unwrap().accepted, 10);
    }
    // The buffer is full: this one waits for room, unacknowledged.
    tx.send(events_req("s", numbered("c", 10))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(gw.stats().accepted, 20);

    // The client vanishes mid-stream.
    drop(replies);
    drop(tx);
    drop(c);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The gateway goes on; what it acknowledged is delivered, and the
    // message it never acknowledged was not half-taken.
    stuck.open();
    stuck.inner.wait_for(20, Duration::from_secs(5)).await;
    let mut other = client(&gw).await;
    let r = other
        .send_event(events_req("s", numbered("d", 5)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.accepted, 5);
    stuck.inner.wait_for(25, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ids = stuck.inner.ids();
    assert_eq!(ids.len(), 25, "{ids:?}");
    assert!(ids.iter().all(|id| !id.starts_with("c-")), "{ids:?}");
    assert_eq!(gw.stats().accepted, 25);
    gw.shutdown().await.unwrap();
}
