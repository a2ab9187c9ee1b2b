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

#[tokio::test]
async fn routes_stay_local_and_batches_split_to_what_the_far_side_takes() {
    let far_mem = MemoryEmitter::new("store");
    let mut far_config = test_config();
    // The far side takes requests of 64 KiB at most.
    far_config.limits.max_message_bytes = 64 << 10;
    let far = start_with(Hub::new().emitter(far_mem.clone()), far_config).await;
    let url = far.grpc_addr().to_string();

    // Routed here to "central": the far side has no emitter of that name.
    let central = GrpcEmitter::new([&url]).unwrap().named("central");
    let near = start(Hub::new().emitter(central)).await;
    let mut c = client(&near).await;
    let routed = Event::new("t").with_id("routed").with_route_to(["central"]);
    let r = c
        .send_event(events_req("s", vec![routed]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.accepted, 1);
    far_mem.wait_for(1, Duration::from_secs(10)).await;
    let got = far_mem.events();
    assert_eq!(got[0].id, "routed");
    assert!(
        got[0].route_to.is_empty(),
        "forwarded without the local route"
    );
    near.shutdown().await.unwrap();

    // Forwarding routes on purpose: the far side refuses what it cannot route.
    let keep = GrpcEmitter::new([&url]).unwrap().forward_routes(true);
    let err = keep
        .emit(&[Event::new("t").with_id("kept").with_route_to(["central"])])
        .await
        .unwrap_err();
    let EmitError::Partial { failures } = err else {
        panic!("{err}")
    };
    assert!(failures[0].message.contains("route_to"), "{failures:?}");

    // 300 events of 1 KiB (300 KiB) in one batch, to a 64 KiB receiver: the
    // first request is refused as too large, and the halves go through. One
    // event of 100 KiB can never go: it alone fails, for good.
    let splitter = GrpcEmitter::new([&url]).unwrap();
    let mut batch: Vec<Event> = (0..300)
        .map(|i| {
            let mut e = Event::new("t").with_id(format!("big-{i}"));
            e.payload = vec![b'x'; 1024].into();
            e
        })
        .collect();
    batch[150].payload = vec![b'y'; 100 << 10].into();
    let err = splitter.emit(&batch).await.unwrap_err();
    let EmitError::Partial { failures } = err else {
        panic!("{err}")
    };
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].index, 150);
    assert!(!failures[0].retryable);
    assert!(
        failures[0].message.contains("too large"),
        "{}",
        failures[0].message
    );
    far_mem.wait_for(1 + 299, Duration::from_secs(10)).await;
    let ids: BTreeSet<String> = far_mem.ids().into_iter().collect();
    assert_eq!(ids.len(), 300, "routed + 299 of the big batch, each once");
    assert!(!ids.contains("big-150"));

    // Told the far side's limit, it never sends a request it would refuse.
    let sized = GrpcEmitter::new([&url])
        .unwrap()
        .max_request_bytes(60 << 10);
    let refused_before = far.stats().rejected_requests(RejectReason::TooLarge);
    batch.remove(150);
    sized.emit(&batch).await.unwrap();
    assert_eq!(
        far.stats().rejected_requests(RejectReason::TooLarge),
        refused_before
    );
    far.shutdown().await.unwrap();
}

/// Hundreds of forwarding calls at once on one connection: the far side's
/// replies come back in bursts, and the emitter's HTTP/2 client takes them
/// all (h2 closes a connection on which more small frames wait unread than
/// its budget, half the connection window, allows).
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn hundreds_of_calls_in_flight_on_one_connection_all_come_back() {
    let far_mem = MemoryEmitter::new("far");
    let far = start(Hub::new().emitter(far_mem.clone())).await;
    let forward = GrpcEmitter::new([far.grpc_addr().to_string()])
        .unwrap()
        .named("forward");
    let near =
        start(Hub::new().emitter_with(forward, EmitterOptions::default().in_flight(512))).await;
    let c = client(&near).await;
    let sends: Vec<_> = (0..2000)
        .map(|i| {
            let mut c = c.clone();
            tokio::spawn(async move {
                c.send_event(events_req("src", numbered(&format!("n{i}"), 1)))
                    .await
                    .unwrap()
                    .into_inner()
                    .accepted
            })
        })
        .collect();
    for s in sends {
        assert_eq!(s.await.unwrap(), 1);
    }
    far_mem.wait_for(2000, Duration::from_secs(20)).await;
    let stats = near.stats();
    assert_eq!(
        stats.emitters["forward"].failed, 0,
        "no forwarding call failed"
    );
    assert_eq!(far_mem.len(), 2000);
}
