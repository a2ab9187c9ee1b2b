//! Property tests against a running gateway: arbitrary bytes and arbitrary
//! JSON sent to the HTTP and gRPC endpoints always get a clear answer (202,
//! or a 4xx / gRPC status with a message that says what is wrong), never a
//! server error, and the gateway keeps serving.

mod common;

use bytes::Bytes;
use common::*;
use polku_gateway::proto::v1::send_event_request::Payload;
use polku_gateway::proto::v1::{RawPayload, SendEventRequest};
use polku_gateway::*;
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};
use serde_json::Value;

/// JSON documents shaped like events often enough to reach deep into the
/// decoder: event field names as keys, nested arrays and objects.
fn json_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        prop::sample::select(vec![
            "id",
            "event_type",
            "eventType",
            "source",
            "metadata",
            "payload",
            "payload_base64",
            "route_to",
            "severity",
            "timestamp_unix_ns",
            "events",
        ])
        .prop_map(str::to_owned),
        "[a-z_]{0,8}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        json_value().prop_map(|v| v.to_string().into_bytes()),
        // Well-formed events with arbitrary strings, so acceptance is reached too.
        prop::collection::vec((".{0,40}", ".{1,40}"), 1..4).prop_map(|events| {
            let events: Vec<Value> = events
                .into_iter()
                .map(|(id, t)| serde_json::json!({"id": id, "event_type": t}))
                .collect();
            Value::Array(events).to_string().into_bytes()
        }),
    ]
}

fn runner() -> TestRunner {
    TestRunner::new(RunnerConfig {
        cases: 300,
        failure_persistence: None,
        ..RunnerConfig::default()
    })
}

/// A runtime and a gateway with both ingestors, for the property runs.
fn gateway() -> (tokio::runtime::Runtime, RunningGateway) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let gw = rt.block_on(start(
        Hub::new()
            .ingestor(JsonIngestor::new())
            .ingestor(PassthroughIngestor::new())
            .emitter(MemoryEmitter::new("m")),
    ));
    (rt, gw)
}

#[test]
fn http_endpoints_answer_any_body_with_202_or_a_4xx_that_says_why() {
    let (rt, gw) = gateway();
    let base = format!("http://{}", gw.http_addr().unwrap());
    let http = reqwest::Client::new();
    let target = (
        prop::sample::select(vec!["/v1/events", "/v1/ingest/app"]),
        prop::sample::select(vec![
            "application/json",
            "application/x-protobuf",
            "text/csv",
            "",
        ]),
    );
    let statuses = std::cell::RefCell::new(std::collections::BTreeMap::<u16, u32>::new());
    runner()
        .run(&(body(), target), |(body, (path, content_type))| {
            let (status, text) = rt.block_on(async {
                let resp = http
                    .post(format!("{base}{path}"))
                    .header("content-type", content_type)
                    .body(body)
                    .send()
                    .await
                    .expect("the gateway answers");
                (resp.status().as_u16(), resp.text().await.unwrap())
            });
            *statuses.borrow_mut().entry(status).or_default() += 1;
            prop_assert!(
                status == 202 || (400..500).contains(&status),
                "{path} {content_type}: {status} {text}"
            );
            if status != 202 {
                let v: Value = serde_json::from_str(&text).map_err(|e| {
                    TestCaseError::fail(format!("error body not JSON: {e}: {text}"))
                })?;
                let message = v["error"].as_str().unwrap_or_default();
                prop_assert!(!message.is_empty(), "no message: {text}");
            }
            Ok(())
        })
        .unwrap();
    let statuses = statuses.into_inner();
    assert!(
        statuses.contains_key(&202) && statuses.keys().any(|s| *s >= 400),
        "both outcomes were reached: {statuses:?}"
    );
    let health = rt.block_on(async {
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(health, 200);
    rt.block_on(gw.shutdown()).unwrap();
}

#[test]
fn grpc_answers_any_message_with_ok_or_a_status_that_says_why() {
    let (rt, gw) = gateway();
    let mut client = rt.block_on(client(&gw));
    let codes = std::cell::RefCell::new(std::collections::BTreeMap::<String, u32>::new());
    let check = |result: Result<(), tonic::Status>| -> Result<(), TestCaseError> {
        if let Err(status) = result {
            *codes
                .borrow_mut()
                .entry(format!("{:?}", status.code()))
                .or_default() += 1;
            prop_assert!(
                !matches!(
                    status.code(),
                    tonic::Code::Internal | tonic::Code::Unknown | tonic::Code::Unavailable
                ),
                "{status:?}"
            );
            prop_assert!(!status.message().is_empty(), "{status:?}");
            if std::env::var_os("POLKU_SHOW_ERRORS").is_some() {
                eprintln!("{:?}: {}", status.code(), status.message());
            }
        } else {
            *codes.borrow_mut().entry("Ok".into()).or_default() += 1;
        }
        Ok(())
    };

    // Arbitrary bytes as the request message itself.
    runner()
        .run(&prop::collection::vec(any::<u8>(), 0..256), |data| {
            let r = rt.block_on(send_raw_message(&gw, Bytes::from(data)));
            check(r.map(|_| ()))
        })
        .unwrap();
    // Well-formed requests carrying arbitrary raw payloads, in every format.
    let raw = (
        body(),
        prop::sample::select(vec!["json", "protobuf", "csv", ""]),
    );
    runner()
        .run(&raw, |(data, format)| {
            let req = SendEventRequest {
                source: "prop".into(),
                payload: Some(Payload::Raw(RawPayload {
                    data: Bytes::from(data),
                    format: format.into(),
                })),
            };
            let r = rt.block_on(client.clone().send_event(req));
            check(r.map(|_| ()))
        })
        .unwrap();
    let codes = codes.into_inner();
    assert!(
        codes.contains_key("Ok") && codes.contains_key("InvalidArgument"),
        "both outcomes were reached: {codes:?}"
    );
    let r = rt
        .block_on(client.send_event(events_req("after", numbered("after", 1))))
        .unwrap()
        .into_inner();
    assert_eq!(r.accepted, 1, "the gateway goes on serving");
    rt.block_on(gw.shutdown()).unwrap();
}
