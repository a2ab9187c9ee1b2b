//! The direct `SendEvent` path on the wire: a raw HTTP/2 client frames the
//! calls itself, so it can split messages, send bad prefixes, hold a body
//! open, or ask for compression, which tonic's client never does.

mod common;

use bytes::Bytes;
use common::*;
use polku_gateway::proto::v1::SendEventResponse;
use polku_gateway::*;
use prost::Message;
use std::time::Duration;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(10);

/// An HTTP/2 connection to the gateway's gRPC port.
async fn connect(gw: &RunningGateway) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(gw.grpc_addr())
        .await
        .unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send.ready().await.unwrap()
}

/// The request headers of a SendEvent call, plus `extra`.
fn send_event_request(extra: &[(&'static str, &'static str)]) -> http::Request<()> {
    let mut req = http::Request::post("http://polku/polku.v1.Gateway/SendEvent")
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    req.body(()).unwrap()
}

/// A gRPC message: flag, big-endian length, bytes.
fn framed(flag: u8, message: &[u8]) -> Vec<u8> {
    let mut v = vec![flag];
    v.extend_from_slice(&(message.len() as u32).to_be_bytes());
    v.extend_from_slice(message);
    v
}

/// A SendEventRequest carrying one event with this id.
fn one_event(id: &str) -> Vec<u8> {
    events_req("wire", vec![Event::new("wire.test").with_id(id)]).encode_to_vec()
}

/// The call's outcome: the status (from the headers if trailers-only, else
/// the trailers) and the response body.
async fn outcome(
    response: h2::client::ResponseFuture,
) -> (tonic::Status, Bytes, http::response::Parts) {
    let (parts, mut body) = response.await.unwrap().into_parts();
    if let Some(status) = tonic::Status::from_header_map(&parts.headers) {
        return (status, Bytes::new(), parts);
    }
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        body.flow_control().release_capacity(chunk.len()).unwrap();
        data.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.unwrap().expect("trailers");
    let status = tonic::Status::from_header_map(&trailers).expect("grpc-status");
    (status, Bytes::from(data), parts)
}

/// Sends `parts` as separate DATA frames and ends the stream.
async fn call(
    send: &mut h2::client::SendRequest<Bytes>,
    req: http::Request<()>,
    parts: Vec<Vec<u8>>,
) -> (tonic::Status, Bytes, http::response::Parts) {
    let (response, mut stream) = send.send_request(req, false).unwrap();
    let n = parts.len();
    for (i, part) in parts.into_iter().enumerate() {
        stream.send_data(Bytes::from(part), i + 1 == n).unwrap();
    }
    if n == 0 {
        stream.send_data(Bytes::new(), true).unwrap();
    }
    tokio::time::timeout(WAIT, outcome(response))
        .await
        .expect("answered")
}

/// A good call on `send`: accepted, one event.
async fn good_call(send: &mut h2::client::SendRequest<Bytes>, id: &str) {
    good_call_with(send, &[], id).await;
}

/// A good call with `extra` headers: accepted, one event.
async fn good_call_with(
    send: &mut h2::client::SendRequest<Bytes>,
    extra: &[(&'static str, &'static str)],
    id: &str,
) {
    let (status, body, _) = call(
        send,
        send_event_request(extra),
        vec![framed(0, &one_event(id))],
    )
    .await;
    assert_eq!(status.code(), Code::Ok, "{id}: {status:?}");
    let reply = SendEventResponse::decode(&body[5..]).unwrap();
    assert_eq!(reply.accepted, 1, "{id}: {reply:?}");
}

/// Sends the headers and `first` but never ends the body: the answer must
/// come without the rest. Gives the status.
async fn call_left_open(send: &mut h2::client::SendRequest<Bytes>, first: &[u8]) -> tonic::Status {
    let (response, mut stream) = send.send_request(send_event_request(&[]), false).unwrap();
    if !first.is_empty() {
        stream
            .send_data(Bytes::copy_from_slice(first), false)
            .unwrap();
    }
    let (status, _, _) = tokio::time::timeout(WAIT, outcome(response))
        .await
        .expect("answered without the rest of the body");
    drop(stream);
    status
}

/// Replies of calls that finish while others are in flight on their
/// connection wait one turn to leave together: every one of them still
/// leaves, beside a call whose body stays open, on the gateway's default
/// scheduler.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn many_calls_at_once_on_one_connection_each_get_their_reply() {
    let mem = MemoryEmitter::new("m");
    let gw = start(Hub::new().emitter(mem.clone())).await;
    let send = connect(&gw).await;
    // In flight all along: the others' replies always have company.
    let (open, body) = send
        .clone()
        .send_request(send_event_request(&[]), false)
        .unwrap();
    // One at a time: each reply is put off, and nothing but the gateway
    // itself wakes its connection to send it.
    for i in 0..3 {
        let mut send = send.clone().ready().await.unwrap();
        good_call(&mut send, &format!("alone{i}")).await;
    }
    // 64 at once: h2's client (0.4.20) closes a connection on which more
    // than about 100 small replies wait unread, whatever the server does.
    let calls: Vec<_> = (0..64)
        .map(|i| {
            let send = send.clone();
            tokio::spawn(async move {
                let mut send = send.ready().await.unwrap();
                good_call(&mut send, &format!("c{i}")).await;
            })
        })
        .collect();
    for c in calls {
        tokio::time::timeout(WAIT, c)
            .await
            .expect("each reply comes")
            .unwrap();
    }
    mem.wait_for(67, WAIT).await;
    assert_eq!(mem.events().len(), 67);
    drop((open, body));
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_message_split_across_frames_is_read_whole_and_delivered() {
    let mem = MemoryEmitter::new("m");
    let gw = start(Hub::new().emitter(mem.clone())).await;
    let mut send = connect(&gw).await;

    let whole = framed(0, &one_event("split"));
    // The prefix itself is cut in two, and the message in two more.
    let parts = vec![
        whole[..2].to_vec(),
        whole[2..9].to_vec(),
        whole[9..20].to_vec(),
        whole[20..].to_vec(),
    ];
    let (status, body, head) = call(&mut send, send_event_request(&[]), parts).await;
    assert_eq!(status.code(), Code::Ok, "{status:?}");
    assert_eq!(head.headers["content-type"], "application/grpc");
    assert_eq!(body[0], 0, "not compressed");
    let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
    assert_eq!(body.len(), 5 + len, "one framed message");
    let reply = SendEventResponse::decode(&body[5..]).unwrap();
    assert_eq!(reply.accepted, 1);
    mem.wait_for(1, WAIT).await;
    assert_eq!(mem.events()[0].id, "split");
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_framing_gets_a_status_that_says_why_and_the_connection_keeps_serving() {
    let mem = MemoryEmitter::new("m");
    let gw = start(Hub::new().emitter(mem.clone())).await;
    let mut send = connect(&gw).await;

    let good = framed(0, &one_event("x"));
    let cases: Vec<(&str, Vec<Vec<u8>>, Code, &str)> = vec![
        ("no message", vec![], Code::Internal, "has no message"),
        (
            "cut short",
            vec![good[..good.len() - 1].to_vec()],
            Code::Internal,
            "ended inside its message",
        ),
        (
            "two messages",
            vec![good.clone(), good.clone()],
            Code::Internal,
            "more followed it (use StreamEvents)",
        ),
        (
            "compressed flag, no encoding",
            vec![framed(1, &one_event("x"))],
            Code::Internal,
            "names no grpc-encoding",
        ),
        (
            "not protobuf",
            vec![framed(0, b"\xff\xff\xff")],
            Code::InvalidArgument,
            "malformed protobuf message",
        ),
    ];
    for (i, (name, parts, code, says)) in cases.into_iter().enumerate() {
        let (status, _, head) = call(&mut send, send_event_request(&[]), parts).await;
        assert_eq!(status.code(), code, "{name}: {status:?}");
        assert!(
            status.message().contains(says),
            "{name}: {:?} should say {says:?}",
            status.message()
        );
        assert_eq!(head.headers["content-type"], "application/grpc", "{name}");
        good_call(&mut send, &format!("after-{i}")).await;
    }
    mem.wait_for(5, WAIT).await;
    assert_eq!(mem.len(), 5, "only the good calls delivered");
    assert_eq!(
        gw.stats()
            .rejected_requests(RejectReason::MalformedProtobuf),
        1
    );
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_oversized_call_is_refused_before_its_body_is_sent() {
    let mut config = test_config();
    config.limits.max_message_bytes = 64 * 1024;
    let gw = start_with(Hub::new().emitter(MemoryEmitter::new("m")), config).await;
    let mut send = connect(&gw).await;

    // The prefix announces 1 MiB; the stream stays open and nothing follows.
    let status = call_left_open(&mut send, &[0, 0, 0x10, 0, 0]).await;
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(
        status
            .message()
            .contains("1048576 bytes, the limit is 65536 (POLKU_MAX_MESSAGE_BYTES)"),
        "{status:?}"
    );
    assert_eq!(gw.stats().rejected_requests(RejectReason::TooLarge), 1);
    good_call(&mut send, "after").await;
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_compressed_call_goes_to_tonic_which_says_what_it_accepts() {
    let mem = MemoryEmitter::new("m");
    let gw = start(Hub::new().emitter(mem.clone())).await;
    let mut send = connect(&gw).await;

    let (status, _, _) = call(
        &mut send,
        send_event_request(&[("grpc-encoding", "gzip")]),
        vec![framed(1, b"\x1f\x8b")],
    )
    .await;
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    assert!(status.message().contains("gzip"), "{status:?}");
    // "identity" is no compression: the direct path takes it.
    good_call_with(&mut send, &[("grpc-encoding", "identity")], "identity").await;
    mem.wait_for(1, WAIT).await;
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_call_without_the_token_is_refused_before_its_message_is_read() {
    let mut config = test_config();
    config.access.ingest_tokens = vec!["s3cret".into()];
    let mem = MemoryEmitter::new("m");
    let gw = start_with(Hub::new().emitter(mem.clone()), config).await;
    let mut send = connect(&gw).await;

    // Headers only; the body never comes.
    let status = call_left_open(&mut send, &[]).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("authorization: Bearer"),
        "{status:?}"
    );
    assert_eq!(
        gw.stats().rejected_requests(RejectReason::Unauthenticated),
        1
    );

    good_call_with(
        &mut send,
        &[("authorization", "Bearer s3cret")],
        "with-token",
    )
    .await;
    mem.wait_for(1, WAIT).await;
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_client_deadline_ends_a_call_waiting_for_buffer_room_and_nothing_of_it_is_kept() {
    let mut config = test_config();
    config.buffer.timeout = Duration::from_secs(30);
    let gate = GateEmitter::closed("gate");
    let gw = start_with(Hub::new().buffer_capacity(1).emitter(gate.clone()), config).await;
    let mut send = connect(&gw).await;

    // The buffer's one place is taken and the emitter is stuck.
    good_call(&mut send, "first").await;
    // The next call waits for room; its 200 ms deadline ends it, long
    // before the 30 s buffer timeout would.
    let started = std::time::Instant::now();
    let (status, _, _) = call(
        &mut send,
        send_event_request(&[("grpc-timeout", "200m")]),
        vec![framed(0, &one_event("late"))],
    )
    .await;
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the deadline ended it"
    );

    gate.open();
    good_call(&mut send, "after").await;
    gate.inner.wait_for(2, WAIT).await;
    let ids = gate.inner.ids();
    assert_eq!(
        ids,
        vec!["first".to_string(), "after".to_string()],
        "the late call's event was never accepted"
    );
    gw.shutdown().await.unwrap();
}
