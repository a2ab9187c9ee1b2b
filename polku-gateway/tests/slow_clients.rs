//! Slow clients on real sockets: half-sent headers, bodies that never end,
//! gRPC messages that stall half-way, replies nobody reads, and a listener
//! full of such clients that must still answer health and readiness.

mod common;

use bytes::Bytes;
use common::*;
use polku_gateway::*;
use prost::Message;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Everything the server sends on `s` until it closes it (or `within` ends).
async fn read_to_close(s: &mut TcpStream, within: Duration) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn metrics_text(gw: &RunningGateway) -> String {
    get_text(
        &reqwest::Client::new(),
        format!("http://{}/metrics", gw.http_addr().unwrap()),
    )
    .await
}

#[tokio::test]
async fn half_sent_headers_are_cut_off_and_health_answers_while_the_listener_is_full() {
    let mem = MemoryEmitter::new("m");
    let mut config = test_config();
    config.listen.max_connections = 50;
    config.listen.header_timeout = Some(Duration::from_secs(3));
    let gw = start_with(Hub::new().emitter(mem.clone()), config).await;
    let http = gw.http_addr().unwrap();

    // Fifty clients that each send half a request header: the listener's cap.
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(http).await.unwrap();
        s.write_all(b"POST /v1/events HTTP/1.1\r\nHost: polku\r\nContent-")
            .await
            .unwrap();
        slow.push(s);
    }
    let started = Instant::now();
    // Let the accept loop take all fifty before the probes come.
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Health and readiness still answer, on connections over the cap.
    let probe = |path: &'static str| async move {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap()
            .get(format!("http://{http}{path}"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path} does not answer with the listener full: {e}"))
    };
    let ready = probe("/readyz").await;
    assert_eq!(ready.status(), 200);
    assert_eq!(ready.text().await.unwrap(), "ready\n");
    assert_eq!(probe("/healthz").await.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the probes ran while the slow clients held the cap"
    );

    // Ingestion over the cap is refused plainly, not left waiting.
    let refused = reqwest::Client::new()
        .post(format!("http://{http}/v1/events"))
        .body(r#"{"source":"s","event_type":"t"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    let body: serde_json::Value = serde_json::from_str(&refused.text().await.unwrap()).unwrap();
    assert_eq!(body["reason"], "too_many_connections");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("POLKU_MAX_CONNECTIONS"),
        "{body}"
    );

    // The header deadline closes every slow connection, and not at once.
    for s in &mut slow {
        assert!(
            closed_by_server(s, Duration::from_secs(8)).await,
            "a half-sent header is cut off"
        );
    }
    let cut_after = started.elapsed();
    assert!(cut_after >= Duration::from_millis(2500), "{cut_after:?}");

    // The room comes back for ingestion.
    let ok = reqwest::Client::new()
        .post(format!("http://{http}/v1/events"))
        .body(r#"{"source":"s","event_type":"t","id":"after"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 202);
    mem.wait_for(1, Duration::from_secs(5)).await;

    let m = metrics_text(&gw).await;
    assert_eq!(
        metric(
            &m,
            "polku_connections_timeouts_total{listener=\"http\",reason=\"header\"}"
        ),
        50
    );
    assert!(
        metric(
            &m,
            "polku_connections_reserved_total{listener=\"http\",outcome=\"accepted\"}"
        ) >= 3
    );
    assert_eq!(
        metric(
            &m,
            "polku_connections_reserved_total{listener=\"http\",outcome=\"refused\"}"
        ),
        1
    );
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_header_deadline_runs_from_a_connections_start_and_from_each_requests_first_byte() {
    let mut config = test_config();
    config.listen.header_timeout = Some(Duration::from_millis(800));
    let gw = start_with(Hub::new().emitter(MemoryEmitter::new("m")), config).await;
    let http = gw.http_addr().unwrap();

    // A connection that never sends a byte, on either listener.
    for addr in [http, gw.grpc_addr()] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let t = Instant::now();
        assert!(closed_by_server(&mut s, Duration::from_secs(5)).await);
        assert!(t.elapsed() >= Duration::from_millis(600), "{addr}");
    }

    // An HTTP/2 connection that opens but sends no request.
    let tcp = TcpStream::connect(gw.grpc_addr()).await.unwrap();
    let (_send, conn) = h2::client::handshake(tcp).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_secs(5), conn)
            .await
            .is_ok(),
        "an HTTP/2 connection with no request is closed"
    );

    // Keep-alive: idle between requests is the idle timeout's business, but
    // a later request half-sent is cut off.
    let mut s = TcpStream::connect(http).await.unwrap();
    let get = b"GET /healthz HTTP/1.1\r\nHost: polku\r\n\r\n";
    s.write_all(get).await.unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.write_all(get).await.unwrap();
    let n = s.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "an idle keep-alive connection is not cut by the header deadline"
    );
    s.write_all(b"GET /healthz HTTP/1.1\r\nHo").await.unwrap();
    let t = Instant::now();
    assert!(closed_by_server(&mut s, Duration::from_secs(5)).await);
    assert!(t.elapsed() >= Duration::from_millis(600));

    let m = metrics_text(&gw).await;
    assert_eq!(
        metric(
            &m,
            "polku_connections_timeouts_total{listener=\"http\",reason=\"header\"}"
        ),
        2
    );
    assert_eq!(
        metric(
            &m,
            "polku_connections_timeouts_total{listener=\"grpc\",reason=\"header\"}"
        ),
        2
    );
    gw.shutdown().await.unwrap();
}

/// An HTTP/2 connection to the gRPC port.
async fn h2_connect(gw: &RunningGateway) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(gw.grpc_addr()).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send.ready().await.unwrap()
}

fn grpc_request(method: &str) -> http::Request<()> {
    http::Request::post(format!("http://polku/polku.v1.Gateway/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

fn framed(message: &[u8]) -> Vec<u8> {
    let mut v = vec![0];
    v.extend_from_slice(&(message.len() as u32).to_be_bytes());
    v.extend_from_slice(message);
    v
}

/// The status of a call: from trailers-only headers, or from the trailers.
async fn status_of(response: h2::client::ResponseFuture) -> (tonic::Status, Vec<Bytes>) {
    let (parts, mut body) = response.await.unwrap().into_parts();
    if let Some(status) = tonic::Status::from_header_map(&parts.headers) {
        return (status, Vec::new());
    }
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        body.flow_control().release_capacity(chunk.len()).unwrap();
        data.push(chunk);
    }
    let trailers = body.trailers().await.unwrap().expect("trailers");
    (tonic::Status::from_header_map(&trailers).unwrap(), data)
}

#[tokio::test]
async fn bodies_and_grpc_messages_that_stall_fail_with_the_limit_named() {
    let mem = MemoryEmitter::new("m");
    let mut config = test_config();
    config.listen.body_timeout = Some(Duration::from_secs(1));
    let gw = start_with(Hub::new().emitter(mem.clone()), config).await;
    let http = gw.http_addr().unwrap();

    // HTTP: ten bytes of a hundred, then nothing.
    let mut s = TcpStream::connect(http).await.unwrap();
    s.write_all(
        b"POST /v1/events HTTP/1.1\r\nHost: polku\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n[{\"source\"",
    )
    .await
    .unwrap();
    let t = Instant::now();
    let reply = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("POLKU_BODY_TIMEOUT"), "{reply}");
    assert!(reply.contains("\"reason\":\"body_timeout\""), "{reply}");
    assert!(t.elapsed() >= Duration::from_millis(800));
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "and the connection closes"
    );

    // Unary gRPC: a message announced at 100 bytes, 10 sent.
    let mut send = h2_connect(&gw).await;
    let (response, mut stream) = send.send_request(grpc_request("SendEvent"), false).unwrap();
    let mut partial = vec![0u8];
    partial.extend_from_slice(&100u32.to_be_bytes());
    partial.extend_from_slice(&[0u8; 10]);
    stream.send_data(Bytes::from(partial), false).unwrap();
    let (status, _) = tokio::time::timeout(Duration::from_secs(5), status_of(response))
        .await
        .expect("the call fails instead of waiting");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("POLKU_BODY_TIMEOUT"),
        "{status:?}"
    );

    // A stream may wait between messages as long as it likes, but one
    // message that stalls half-way ends it.
    let (response, mut stream) = send
        .send_request(grpc_request("StreamEvents"), false)
        .unwrap();
    let first = events_req("st", numbered("st1", 2)).encode_to_vec();
    stream
        .send_data(Bytes::from(framed(&first)), false)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = events_req("st", numbered("st2", 3)).encode_to_vec();
    let second = framed(&second);
    stream
        .send_data(Bytes::copy_from_slice(&second), false)
        .unwrap();
    stream
        .send_data(Bytes::copy_from_slice(&second[..8]), false)
        .unwrap();
    let (status, replies) = tokio::time::timeout(Duration::from_secs(5), status_of(response))
        .await
        .expect("the stream ends instead of waiting");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("POLKU_BODY_TIMEOUT"),
        "{status:?}"
    );
    let replies: Vec<u8> = replies.concat();
    let mut accepted = 0;
    let mut rest = &replies[..];
    while rest.len() >= 5 {
        let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
        let reply = polku_gateway::proto::v1::SendEventResponse::decode(&rest[5..5 + len]).unwrap();
        accepted += reply.accepted;
        rest = &rest[5 + len..];
    }
    assert_eq!(accepted, 5, "both whole messages were accepted");
    mem.wait_for(5, Duration::from_secs(5)).await;

    let m = metrics_text(&gw).await;
    assert_eq!(
        metric(
            &m,
            "polku_connections_timeouts_total{listener=\"http\",reason=\"body\"}"
        ),
        1
    );
    assert_eq!(
        metric(
            &m,
            "polku_connections_timeouts_total{listener=\"grpc\",reason=\"body\"}"
        ),
        2
    );
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_client_that_stops_reading_replies_is_cut_off() {
    let mut config = test_config();
    config.listen.body_timeout = Some(Duration::from_secs(1));
    let gw = start_with(Hub::new().emitter(MemoryEmitter::new("m")), config).await;
    let http = gw.http_addr().unwrap();

    // A small receive window and thousands of pipelined requests whose
    // replies are never read: the gateway's writes stop making progress.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(http).await.unwrap();
    let requests = b"GET /metrics HTTP/1.1\r\nHost: polku\r\n\r\n".repeat(2000);
    let (mut rd, mut wr) = s.split();
    // Writing may itself block once the gateway stops reading; bound it.
    let _ = tokio::time::timeout(Duration::from_secs(3), wr.write_all(&requests)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut got = 0usize;
    let mut buf = [0u8; 64 * 1024];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(5), rd.read(&mut buf)).await {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => got += n,
        }
    };
    assert!(
        closed,
        "the gateway closed the connection (read {got} bytes)"
    );
    let m = metrics_text(&gw).await;
    assert_eq!(
        metric(
            &m,
            "polku_connections_timeouts_total{listener=\"http\",reason=\"write\"}"
        ),
        1
    );
    drop(s);
    gw.shutdown().await.unwrap();
}

/// How many events the replies in a stream's body accepted.
fn accepted_in(replies: &[Bytes]) -> u32 {
    let replies: Vec<u8> = replies.concat();
    let mut accepted = 0;
    let mut rest = &replies[..];
    while rest.len() >= 5 {
        let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
        let reply = polku_gateway::proto::v1::SendEventResponse::decode(&rest[5..5 + len]).unwrap();
        accepted += reply.accepted;
        rest = &rest[5 + len..];
    }
    accepted
}

#[tokio::test]
async fn a_stream_message_that_cannot_be_read_ends_the_stream_and_earlier_replies_stand() {
    let mem = MemoryEmitter::new("m");
    let gw = start(Hub::new().emitter(mem.clone())).await;
    let mut send = h2_connect(&gw).await;
    let (response, mut stream) = send
        .send_request(grpc_request("StreamEvents"), false)
        .unwrap();
    let good = |tag: &str| Bytes::from(framed(&events_req("st", numbered(tag, 2)).encode_to_vec()));
    stream.send_data(good("before"), false).unwrap();
    stream
        .send_data(Bytes::from(framed(b"\xff\xff\xff\xff\xff")), false)
        .unwrap();
    stream.send_data(good("after"), true).unwrap();
    let (status, replies) = tokio::time::timeout(Duration::from_secs(5), status_of(response))
        .await
        .unwrap();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("malformed protobuf"),
        "{status:?}"
    );
    assert_eq!(
        accepted_in(&replies),
        2,
        "the message before it was accepted"
    );
    mem.wait_for(2, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ids: Vec<String> = mem.events().iter().map(|e| e.id.to_string()).collect();
    assert!(ids.iter().all(|id| id.starts_with("before")), "{ids:?}");
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_stream_that_reads_no_replies_ends_unavailable_at_shutdown_and_loses_nothing_acknowledged()
 {
    let mem = MemoryEmitter::new("m");
    let gw = start(Hub::new().emitter(mem.clone())).await;
    // A client whose receive window holds only a few replies, and which
    // reads none of them while it sends.
    let tcp = TcpStream::connect(gw.grpc_addr()).await.unwrap();
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(64)
        .handshake(tcp)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut send = send.ready().await.unwrap();
    let (response, mut stream) = send
        .send_request(grpc_request("StreamEvents"), false)
        .unwrap();
    const PER: usize = 3;
    for i in 0..200 {
        let m = framed(&events_req("st", numbered(&format!("m{i:03}"), PER)).encode_to_vec());
        stream.send_data(Bytes::from(m), false).unwrap();
    }
    // Let the gateway take what it will until its reply queue is full.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let taken = mem.len();
    assert!(taken > 0 && taken < 200 * PER, "{taken} events taken");
    gw.shutdown().await.unwrap();

    // Now read: the replies there are, then how the stream ended.
    let (status, replies) = tokio::time::timeout(Duration::from_secs(10), status_of(response))
        .await
        .unwrap();
    assert_eq!(
        status.code(),
        tonic::Code::Unavailable,
        "never OK: {status:?}"
    );
    let acked = accepted_in(&replies) as usize;
    let delivered = mem.len();
    if status
        .message()
        .contains("reply to the last message was not sent")
    {
        assert_eq!(delivered, acked + PER, "{status:?}");
    } else {
        assert_eq!(delivered, acked, "{status:?}");
    }
    assert!(acked > 0);
}

/// An HTTP/2 frame on stream `stream`.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut v = vec![len[1], len[2], len[3], kind, flags];
    v.extend_from_slice(&stream.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

#[tokio::test]
async fn an_http2_header_block_left_open_is_cut_off_even_after_a_first_request() {
    let mut config = test_config();
    config.listen.header_timeout = Some(Duration::from_millis(800));
    let gw = start_with(Hub::new().emitter(MemoryEmitter::new("m")), config).await;
    let mut s = TcpStream::connect(gw.grpc_addr()).await.unwrap();
    let mut wire = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    wire.extend(h2_frame(0x4, 0, 0, &[])); // SETTINGS
    // A whole request: GET / (HPACK static entries), END_HEADERS | END_STREAM.
    wire.extend(h2_frame(
        0x1,
        0x4 | 0x1,
        1,
        &[0x82, 0x86, 0x84, 0x41, 0x01, b'x'],
    ));
    s.write_all(&wire).await.unwrap();
    // Its answer comes: the connection served a request.
    let mut buf = [0u8; 4096];
    let mut got = 0;
    while got < 9 + 9 {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "the server answers the first request");
        got += n;
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // A second request's HEADERS without END_HEADERS, and no CONTINUATION.
    s.write_all(&h2_frame(0x1, 0x1, 3, &[0x82, 0x86]))
        .await
        .unwrap();
    let t = Instant::now();
    assert!(
        closed_by_server(&mut s, Duration::from_secs(5)).await,
        "an open header block is cut off"
    );
    assert!(
        t.elapsed() >= Duration::from_millis(600),
        "{:?}",
        t.elapsed()
    );
    let m = metrics_text(&gw).await;
    assert_eq!(
        metric(
            &m,
            "polku_connections_timeouts_total{listener=\"grpc\",reason=\"header\"}"
        ),
        1
    );
    gw.shutdown().await.unwrap();
}
