//! Rust plugins built on polku-plugin-sdk, against a real gateway: one call
//! serves, registers, keeps the registration alive through a gateway
//! restart, and unregisters on shutdown.

mod common;

use common::*;
use polku_gateway::*;
use polku_plugin_sdk::{ServeConfig, serve_emitter};
use std::time::Duration;
use tokio::sync::oneshot;

const WAIT: Duration = Duration::from_secs(10);

fn fast_config(port: u16) -> Config {
    let mut c = test_config();
    c.listen.grpc_addr = format!("127.0.0.1:{port}").parse().unwrap();
    c.plugins.heartbeat_interval = Duration::from_millis(100);
    c.plugins.heartbeat_timeout = Duration::from_millis(500);
    c
}

async fn wait_until(mut ok: impl FnMut() -> bool) -> bool {
    for _ in 0..250 {
        if ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn an_sdk_plugin_registers_receives_and_unregisters() {
    let port = free_port();
    let gw = start_with(Hub::new(), fast_config(port)).await;
    let plugin_side = MemoryEmitter::new("audit");
    let (stop, stopped) = oneshot::channel::<()>();
    let config = ServeConfig::default().with_gateway(Some(format!("localhost:{port}")));
    let plugin = tokio::spawn(serve_emitter(plugin_side.clone(), config, async {
        let _ = stopped.await;
    }));
    assert!(wait_until(|| gw.plugins() == 1).await, "registered");

    let mut c = client(&gw).await;
    let r = c
        .send_event(events_req(
            "s",
            vec![Event::new("login").with_id("p-1").with_route_to(["audit"])],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.accepted, 1);
    assert_eq!(plugin_side.wait_for(1, WAIT).await, 1);
    assert_eq!(plugin_side.events()[0].id, "p-1");

    // Heartbeats keep it registered well past the timeout.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(gw.plugins(), 1);

    stop.send(()).unwrap();
    plugin.await.unwrap().unwrap();
    assert_eq!(
        gw.plugins(),
        0,
        "unregistered on shutdown, not left to expire"
    );
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_sdk_plugin_registers_again_when_the_gateway_restarts() {
    let port = free_port();
    let first = start_with(Hub::new(), fast_config(port)).await;
    let plugin_side = MemoryEmitter::new("audit");
    let (stop, stopped) = oneshot::channel::<()>();
    let config = ServeConfig::default().with_gateway(Some(format!("127.0.0.1:{port}")));
    let plugin = tokio::spawn(serve_emitter(plugin_side.clone(), config, async {
        let _ = stopped.await;
    }));
    assert!(wait_until(|| first.plugins() == 1).await);
    first.shutdown().await.unwrap();

    // A new gateway on the same address knows nothing of the plugin...
    let second = start_with(Hub::new(), fast_config(port)).await;
    // ...until the plugin's next heartbeat is refused and it registers again.
    assert!(
        wait_until(|| second.plugins() == 1).await,
        "registered again"
    );
    let mut c = client(&second).await;
    c.send_event(events_req(
        "s",
        vec![Event::new("t").with_route_to(["audit"])],
    ))
    .await
    .unwrap();
    assert_eq!(plugin_side.wait_for(1, WAIT).await, 1);

    stop.send(()).unwrap();
    plugin.await.unwrap().unwrap();
    second.shutdown().await.unwrap();
}
