//! Hostile clients: the worst shapes of request that fit within the default
//! limits. Each is refused (or bounded) with an answer that names the
//! problem, the gateway keeps serving, and nothing accepted is lost.

mod common;

use bytes::Bytes;
use common::*;
use polku_gateway::proto::v1::send_event_request::Payload;
use polku_gateway::proto::v1::{RawPayload, SendEventRequest};
use polku_gateway::*;
use prost::Message as _;
use std::time::Duration;

/// `[1,1,...,1]`: about two million records in 4 MiB, none of them an event.
fn two_million_ones() -> String {
    format!("[{}1]", "1,".repeat(2_000_000))
}

/// A gRPC `SendEventRequest` whose batch is `n` empty events (two bytes each).
fn empty_events_message(n: usize) -> Bytes {
    let batch: Vec<u8> = [0x0a, 0x00].repeat(n);
    let mut wire = Vec::new();
    prost::encoding::bytes::encode(2, &batch, &mut wire);
    Bytes::from(wire)
}

fn http(gw: &RunningGateway, path: &str) -> String {
    format!("http://{}{path}", gw.http_addr().unwrap())
}

#[tokio::test]
async fn a_request_of_millions_of_tiny_records_is_refused_whole_on_every_path() {
    let mem = MemoryEmitter::new("m");
    let gw = start(
        Hub::new()
            .ingestor(JsonIngestor::new())
            .emitter(mem.clone()),
    )
    .await;
    let limit = Config::default().limits.max_events_per_request;
    let words = format!("at least {} events, over the limit of {limit}", limit + 1);
    let ones = two_million_ones();
    assert!(ones.len() < Config::default().limits.max_message_bytes);

    // HTTP, POST /v1/events: 413 at once, a short answer.
    let http_client = reqwest::Client::new();
    let resp = http_client
        .post(http(&gw, "/v1/events"))
        .header("content-type", "application/json")
        .body(ones.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    let text = resp.text().await.unwrap();
    assert!(text.len() < 1000, "a short reply, not {} bytes", text.len());
    assert!(
        text.contains(&words) && text.contains("too_many_events"),
        "{text}"
    );

    // HTTP, a raw body for the JSON ingestor.
    let resp = http_client
        .post(http(&gw, "/v1/ingest/app"))
        .header("content-type", "application/json")
        .body(ones.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    assert!(resp.text().await.unwrap().contains(&words));

    // gRPC, raw JSON in a SendEvent.
    let mut c = client(&gw).await;
    let raw = SendEventRequest {
        source: "app".into(),
        payload: Some(Payload::Raw(RawPayload {
            data: Bytes::from(ones),
            format: "json".into(),
        })),
    };
    let status = c.send_event(raw).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains(&words), "{status:?}");

    // gRPC, 4 MiB of empty protobuf events, on the direct path and through
    // tonic (a stream).
    let message = empty_events_message(2_000_000);
    let status = send_raw_message(&gw, message.clone()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains(&words), "{status:?}");

    // A stream answers the message with an error and goes on.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut replies = c
        .stream_events(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let huge = SendEventRequest::decode(message).unwrap_or_else(|_| unreachable!());
    tx.send(huge).await.unwrap();
    let first = replies.message().await.unwrap().unwrap();
    let error = first.error.expect("the message is refused");
    assert_eq!(error.code, tonic::Code::InvalidArgument as i32);
    assert!(error.message.contains(&words), "{error:?}");
    tx.send(events_req("app", numbered("after", 3)))
        .await
        .unwrap();
    let second = replies.message().await.unwrap().unwrap();
    assert_eq!(second.accepted, 3, "the stream goes on");
    drop(tx);
    assert!(replies.message().await.unwrap().is_none());

    // Still serving, and what was accepted arrives.
    let r = c
        .send_event(events_req("app", numbered("ok", 2)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.accepted, 2);
    mem.wait_for(5, Duration::from_secs(5)).await;
    assert_eq!(gw.stats().rejected_requests(RejectReason::TooManyEvents), 5);
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_reply_lists_the_first_hundred_refusals_and_counts_them_all() {
    let mem = MemoryEmitter::new("m");
    let gw = start(
        Hub::new()
            .ingestor(JsonIngestor::new())
            .emitter(mem.clone()),
    )
    .await;
    // 150 bad records and two events, over HTTP.
    let body = format!(r#"[{{"id":"a"}},{}{{"id":"b"}}]"#, "7,".repeat(150));
    let resp = reqwest::Client::new()
        .post(http(&gw, "/v1/events"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let v: serde_json::Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(v["accepted"], 2);
    assert_eq!(v["rejected_total"], 150);
    assert_eq!(v["rejected"].as_array().unwrap().len(), 100);
    assert_eq!(v["rejected"][0]["index"], 1);

    // The same over gRPC.
    let mut c = client(&gw).await;
    let data = format!("[{}{{\"id\":\"c\"}}]", "7,".repeat(150));
    let r = c
        .send_event(SendEventRequest {
            source: "app".into(),
            payload: Some(Payload::Raw(RawPayload {
                data: Bytes::from(data),
                format: "json".into(),
            })),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.accepted, r.rejected_total), (1, 150));
    assert_eq!(r.rejected.len(), 100);
    mem.wait_for(3, Duration::from_secs(5)).await;
    gw.shutdown().await.unwrap();
}
