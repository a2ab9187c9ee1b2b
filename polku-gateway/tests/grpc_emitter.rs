//! One POLKU feeding others: the GrpcEmitter against real downstream gateways.

mod common;

use common::*;
use polku_gateway::*;
use std::collections::BTreeSet;
use std::time::Duration;

#[tokio::test]
async fn batches_spread_over_downstreams_and_fail_over_when_one_goes() {
    let a_mem = MemoryEmitter::new("a");
    let b_mem = MemoryEmitter::new("b");
    let a = start(Hub::new().emitter(a_mem.clone())).await;
    let b = start(Hub::new().emitter(b_mem.clone())).await;
    // With and without a scheme.
    let forward = GrpcEmitter::new([
        a.grpc_addr().to_string(),
        format!("http://{}", b.grpc_addr()),
    ])
    .unwrap()
    .named("downstream")
    .timeout(Duration::from_secs(2));
    let up = start(Hub::new().emitter(forward)).await;
    let mut c = client(&up).await;

    for i in 0..10 {
        let r = c
            .send_event(events_req("src", numbered(&format!("x{i}"), 5)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.accepted, 5);
    }
    let total = || a_mem.len() + b_mem.len();
    for _ in 0..200 {
        if total() == 50 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(total(), 50);
    assert!(
        !a_mem.is_empty() && !b_mem.is_empty(),
        "load is spread: {} / {}",
        a_mem.len(),
        b_mem.len()
    );
    let mut ids: BTreeSet<String> = a_mem.ids().into_iter().collect();
    ids.extend(b_mem.events().into_iter().map(|e| e.id.to_string()));
    assert_eq!(ids.len(), 50, "every id arrives once, as given");
    assert!(ids.contains("x3-4"));
    assert_eq!(a_mem.events()[0].source, "src");

    // One downstream goes away: everything goes to the other, nothing fails.
    a.shutdown().await.unwrap();
    for i in 0..10 {
        c.send_event(events_req("src", numbered(&format!("y{i}"), 5)))
            .await
            .unwrap();
    }
    let y = || {
        b_mem
            .events()
            .iter()
            .filter(|e| e.id.starts_with('y'))
            .count()
    };
    for _ in 0..250 {
        if y() == 50 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(y(), 50, "all failed over to b");
    // The upstream counts a batch once its emit returns: wait for the last.
    let mut s = up.stats();
    for _ in 0..250 {
        s = up.stats();
        if s.emitters["downstream"].emitted + s.emitters["downstream"].failed == 100 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.emitters["downstream"].failed, 0);
    assert_eq!(s.emitters["downstream"].emitted, 100);
    up.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test]
async fn when_every_downstream_is_gone_the_batch_fails_and_is_counted() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let forward = GrpcEmitter::new([dead.to_string()])
        .unwrap()
        .timeout(Duration::from_millis(500));
    let up = start(Hub::new().emitter(forward)).await;
    let mut c = client(&up).await;
    c.send_event(events_req("s", numbered("z", 3)))
        .await
        .unwrap();
    let mut failed = 0;
    for _ in 0..200 {
        failed = up.stats().emitters["grpc"].failed;
        if failed == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(failed, 3);
    up.shutdown().await.unwrap();
}

#[test]
fn bad_endpoints_are_refused() {
    assert_eq!(
        GrpcEmitter::new(Vec::<String>::new()).unwrap_err(),
        GrpcEmitterError::NoEndpoints
    );
    assert!(GrpcEmitter::new(["no-port"]).is_err());
}
