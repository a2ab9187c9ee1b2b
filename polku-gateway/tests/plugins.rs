//! Plugin components against real gRPC plugin servers (in this process, on
//! 127.0.0.1:0): ExternalIngestor and ExternalEmitter in a running gateway.

mod common;

use common::plugins::*;
use common::*;
use polku_gateway::proto::v1::RejectCode;
use polku_gateway::*;
use std::time::Duration;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn the_readme_builder_with_real_plugins() {
    let csv = serve_ingestor(Csv).await;
    let slack = Recorder::default();
    let slack_addr = serve_emitter(slack.clone()).await;
    let mem = MemoryEmitter::new("stdout");

    let hub = Hub::new()
        .ingestor(JsonIngestor::new())
        .ingestor(ExternalIngestor::new("csv", format!("http://{csv}")))
        .middleware(Filter::new(|e| e.event_type.starts_with("user.")))
        .middleware(Transform::new(|mut e| {
            e.metadata.insert("env".into(), "prod".into());
            e
        }))
        .emitter(mem.clone())
        // No scheme: host:port is enough.
        .emitter(ExternalEmitter::new("slack", slack_addr.to_string()));
    let gw = start(hub).await;
    let mut c = client(&gw).await;

    let r = c
        .send_event(raw_req(
            "csv",
            "",
            b"event_type,user\nuser.signup,ann\nsystem.tick,-\nuser.login,bob,extra\nuser.login,cid\n",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.accepted, 2, "{r:?}");
    assert_eq!(r.dropped, 1, "the system.tick row is filtered");
    assert_eq!(r.rejected.len(), 1);
    assert_eq!(r.rejected[0].code, RejectCode::IngestFailed as i32);
    assert_eq!(r.rejected[0].index, Some(2));
    assert!(
        r.rejected[0].message.contains("3 fields"),
        "{}",
        r.rejected[0].message
    );

    assert_eq!(mem.wait_for(2, WAIT).await, 2);
    let mut delivered = 0;
    for _ in 0..100 {
        delivered = slack.got.lock().unwrap().len();
        if delivered == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(delivered, 2, "the Slack plugin got both user events");
    let got = slack.got.lock().unwrap().clone();
    assert_eq!(got[0].metadata["user"], "ann");
    assert_eq!(got[0].metadata["env"], "prod");
    assert_eq!(got[1].metadata["user"], "cid");
    gw.shutdown().await.unwrap();
    assert_eq!(
        *slack.shutdowns.lock().unwrap(),
        1,
        "the plugin was told to flush"
    );
}

#[tokio::test]
async fn plugin_failures_are_counted_and_a_hanging_plugin_stalls_nobody() {
    let picky = Recorder::default();
    let picky_addr = serve_emitter(picky.clone()).await;
    let hung = Recorder {
        hang: true,
        ..Default::default()
    };
    let hung_addr = serve_emitter(hung.clone()).await;
    let fast = MemoryEmitter::new("fast");
    let gw = start(
        Hub::new()
            .emitter(ExternalEmitter::new("picky", picky_addr.to_string()))
            .emitter(
                ExternalEmitter::new("hung", hung_addr.to_string())
                    .with_timeout(Duration::from_secs(1)),
            )
            .emitter(fast.clone()),
    )
    .await;
    let mut c = client(&gw).await;
    let started = std::time::Instant::now();
    for b in 0..5 {
        let events = vec![
            Event::new("ok").with_id(format!("ok-{b}")),
            Event::new("fail-me").with_id(format!("bad-{b}")),
        ];
        let r = c
            .send_event(events_req("s", events))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.accepted, 2);
    }
    assert_eq!(fast.wait_for(10, WAIT).await, 10);
    assert!(
        // Were it held up, five batches behind a 1 s timeout would take 5 s.
        started.elapsed() < Duration::from_millis(2500),
        "the healthy emitter was not held up by the hung one: {:?}",
        started.elapsed()
    );
    // The picky plugin refused one event per batch: counted as failed.
    let mut s = gw.stats();
    for _ in 0..100 {
        s = gw.stats();
        if s.emitters["picky"].emitted + s.emitters["picky"].failed == 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        (s.emitters["picky"].emitted, s.emitters["picky"].failed),
        (5, 5)
    );
    // The hung plugin times out on every batch: its events count as failed.
    for _ in 0..500 {
        s = gw.stats();
        if s.emitters["hung"].failed == 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.emitters["hung"].failed, 10);
    assert_eq!(s.emitters["hung"].emitted, 0);
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_ingestor_plugin_that_is_down_gets_a_clear_error() {
    // A port with nothing behind it.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gw = start(
        Hub::new()
            .ingestor(
                ExternalIngestor::new("csv", dead.to_string())
                    .with_timeout(Duration::from_millis(500)),
            )
            .emitter(MemoryEmitter::new("m")),
    )
    .await;
    let mut c = client(&gw).await;
    let status = c
        .send_event(raw_req("csv", "", b"a,b\n1,2\n"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("plugin:csv"), "{status:?}");
    // The gateway goes on.
    let ok = c
        .send_event(events_req("s", vec![Event::new("t")]))
        .await
        .unwrap();
    assert_eq!(ok.into_inner().accepted, 1);
    assert_eq!(
        gw.stats()
            .rejected_requests(RejectReason::IngestorUnavailable),
        1
    );
    gw.shutdown().await.unwrap();
}

#[test]
fn a_bad_address_is_reported_not_a_panic() {
    let e = ExternalEmitter::new("x", "not an address");
    assert!(e.address().unwrap_err().contains("no port"));
}
