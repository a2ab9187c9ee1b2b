//! Plugin self-registration on the gateway's gRPC port: Register (checked),
//! Heartbeat, Unregister, expiry, and the guards around them.

mod common;

use common::plugins::*;
use common::*;
use polku_gateway::proto::v1::plugin_registry_client::PluginRegistryClient;
use polku_gateway::proto::v1::{
    HeartbeatRequest, PluginInfo, PluginType, RegisterRequest, RegisterResponse, RejectCode,
    UnregisterRequest,
};
use polku_gateway::*;
use std::time::Duration;
use tonic::transport::Channel;
use tonic::{Code, Status};

const WAIT: Duration = Duration::from_secs(10);

fn fast_config() -> Config {
    let mut c = test_config();
    c.plugins.heartbeat_interval = Duration::from_millis(100);
    c.plugins.heartbeat_timeout = Duration::from_millis(400);
    c.plugins.call_timeout = Duration::from_millis(500);
    c
}

async fn registry(gw: &RunningGateway) -> PluginRegistryClient<Channel> {
    PluginRegistryClient::connect(format!("http://{}", gw.grpc_addr()))
        .await
        .unwrap()
}

fn emitter_info(name: &str) -> PluginInfo {
    PluginInfo {
        name: format!("{name}-emitter"),
        r#type: PluginType::Emitter as i32,
        emitter_name: name.into(),
        ..Default::default()
    }
}

async fn register(
    r: &mut PluginRegistryClient<Channel>,
    info: PluginInfo,
    address: String,
) -> Result<RegisterResponse, Status> {
    r.register(RegisterRequest {
        info: Some(info),
        address,
    })
    .await
    .map(|r| r.into_inner())
}

async fn wait_until(ok: impl FnMut() -> bool) -> bool {
    holds_within(Duration::from_secs(4), ok).await
}

#[tokio::test]
async fn a_registered_emitter_gets_its_events_at_once_and_leaves_cleanly() {
    let slack = Recorder::named("slack");
    let addr = serve_emitter(slack.clone()).await;
    let mem = MemoryEmitter::new("stdout");
    let gw = start_with(Hub::new().emitter(mem.clone()), fast_config()).await;
    let mut reg = registry(&gw).await;
    let mut c = client(&gw).await;

    // Before: "slack" is nowhere.
    let r = c
        .send_event(events_req(
            "s",
            vec![Event::new("t").with_route_to(["slack"])],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.rejected[0].code, RejectCode::NoRoute as i32);

    // Without a scheme; the registry checks the plugin by calling Info.
    let reply = register(&mut reg, emitter_info("slack"), addr.to_string())
        .await
        .unwrap();
    assert!(!reply.plugin_id.is_empty());
    assert_eq!(reply.heartbeat_interval_ms, 100);
    assert_eq!(gw.plugins(), 1);
    let metrics = reqwest::get(format!("http://{}/metrics", gw.http_addr().unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("\npolku_plugins_registered 1\n"),
        "{metrics}"
    );

    let r = c
        .send_event(events_req(
            "s",
            vec![Event::new("t").with_id("to-slack").with_route_to(["slack"])],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.accepted, 1);
    assert!(wait_until(|| slack.len() == 1).await);
    reg.heartbeat(HeartbeatRequest {
        plugin_id: reply.plugin_id.clone(),
    })
    .await
    .unwrap();

    reg.unregister(UnregisterRequest {
        plugin_id: reply.plugin_id.clone(),
    })
    .await
    .unwrap();
    assert_eq!(gw.plugins(), 0);
    let r = c
        .send_event(events_req(
            "s",
            vec![Event::new("t").with_route_to(["slack"])],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.rejected[0].code,
        RejectCode::NoRoute as i32,
        "traffic stops at once"
    );
    let status = reg
        .heartbeat(HeartbeatRequest {
            plugin_id: reply.plugin_id,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains("register again"), "{status:?}");
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_plugin_that_misses_heartbeats_is_removed_and_the_gateway_goes_on() {
    let p = Recorder::named("quiet");
    let addr = serve_emitter(p.clone()).await;
    let mem = MemoryEmitter::new("stdout");
    let gw = start_with(Hub::new().emitter(mem.clone()), fast_config()).await;
    let mut reg = registry(&gw).await;
    let reply = register(&mut reg, emitter_info("quiet"), format!("http://{addr}"))
        .await
        .unwrap();
    // Heartbeats keep it alive past the timeout...
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        reg.heartbeat(HeartbeatRequest {
            plugin_id: reply.plugin_id.clone(),
        })
        .await
        .unwrap();
    }
    assert_eq!(gw.plugins(), 1);
    // ...and silence removes it.
    assert!(wait_until(|| gw.plugins() == 0).await, "expired");
    let mut c = client(&gw).await;
    let r = c
        .send_event(events_req(
            "s",
            vec![Event::new("t").with_route_to(["quiet"]), Event::new("u")],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.accepted, 1, "broadcast still works");
    assert_eq!(
        r.rejected.len(),
        1,
        "routed to the removed plugin: refused, not lost"
    );
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn registration_is_checked() {
    let real = Recorder::named("slack");
    let addr = serve_emitter(real.clone()).await;
    let mut config = fast_config();
    config.plugins.max_plugins = 2;
    let gw = start_with(Hub::new().emitter(MemoryEmitter::new("stdout")), config).await;
    let mut reg = registry(&gw).await;

    // Not what it says it is.
    let err = register(&mut reg, emitter_info("pager"), addr.to_string())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("\"slack\""), "{err:?}");
    // Not reachable.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let err = register(&mut reg, emitter_info("x"), dead.to_string())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("cannot reach"), "{err:?}");
    // A host that is not allowed: refused before anything dials it.
    let err = register(&mut reg, emitter_info("x"), "192.0.2.1:9001".into())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("POLKU_PLUGIN_ALLOWED_HOSTS"),
        "{err:?}"
    );
    // Bad requests.
    let err = register(&mut reg, emitter_info(""), addr.to_string())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = register(&mut reg, emitter_info("x"), "nowhere".into())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("no port"), "{err:?}");
    // A name configured in code cannot be taken.
    let stdout = Recorder::named("stdout");
    let stdout_addr = serve_emitter(stdout).await;
    let err = register(&mut reg, emitter_info("stdout"), stdout_addr.to_string())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert_eq!(gw.plugins(), 0, "nothing half-registered");

    // The cap.
    register(&mut reg, emitter_info("slack"), addr.to_string())
        .await
        .unwrap();
    let b = Recorder::named("b");
    let b_addr = serve_emitter(b).await;
    register(&mut reg, emitter_info("b"), b_addr.to_string())
        .await
        .unwrap();
    let c = Recorder::named("c");
    let c_addr = serve_emitter(c).await;
    let err = register(&mut reg, emitter_info("c"), c_addr.to_string())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn registrations_at_the_same_time_do_not_pass_the_cap_together() {
    let mut config = fast_config();
    config.plugins.max_plugins = 2;
    let gw = start_with(Hub::new().emitter(MemoryEmitter::new("m")), config).await;
    let mut calls = Vec::new();
    for i in 0..8 {
        let name = format!("p{i}");
        let addr = serve_emitter(Recorder::named(&name)).await;
        let mut reg = registry(&gw).await;
        calls.push(tokio::spawn(async move {
            register(&mut reg, emitter_info(&name), addr.to_string()).await
        }));
    }
    let mut ok = 0;
    for c in calls {
        match c.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                assert!(e.message().contains("POLKU_PLUGIN_MAX"), "{e:?}");
            }
        }
    }
    assert_eq!(ok, 2, "exactly the cap registered");
    assert_eq!(gw.plugins(), 2);
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_restarted_plugin_takes_its_name_back_and_a_stranger_cannot() {
    let first = Recorder::named("slack");
    let addr = serve_emitter(first.clone()).await;
    let gw = start_with(Hub::new(), fast_config()).await;
    let mut reg = registry(&gw).await;
    let one = register(&mut reg, emitter_info("slack"), addr.to_string())
        .await
        .unwrap();
    // Same name, same address: the restart replaces the old registration.
    let two = register(&mut reg, emitter_info("slack"), format!("http://{addr}"))
        .await
        .unwrap();
    assert_ne!(one.plugin_id, two.plugin_id);
    assert_eq!(gw.plugins(), 1);
    let err = reg
        .heartbeat(HeartbeatRequest {
            plugin_id: one.plugin_id,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // Another address claiming the live name: refused.
    let stranger = Recorder::named("slack");
    let s_addr = serve_emitter(stranger).await;
    let err = register(&mut reg, emitter_info("slack"), s_addr.to_string())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");

    let mut c = client(&gw).await;
    c.send_event(events_req("s", vec![Event::new("t")]))
        .await
        .unwrap();
    assert!(
        wait_until(|| first.len() == 1).await,
        "the one slack plugin gets it"
    );
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_ingestor_plugin_registers_for_its_source() {
    let addr = serve_ingestor(Csv).await;
    let mem = MemoryEmitter::new("m");
    let gw = start_with(Hub::new().emitter(mem.clone()), fast_config()).await;
    let mut reg = registry(&gw).await;
    let info = PluginInfo {
        name: "csv-ingestor".into(),
        r#type: PluginType::Ingestor as i32,
        sources: vec!["csv".into()],
        ..Default::default()
    };
    let reply = register(&mut reg, info, addr.to_string()).await.unwrap();
    let mut c = client(&gw).await;
    let r = c
        .send_event(raw_req("csv", "", b"event_type,who\nuser.signup,ann\n"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.accepted, 1);
    mem.wait_for(1, WAIT).await;
    assert_eq!(mem.events()[0].metadata["who"], "ann");
    reg.unregister(UnregisterRequest {
        plugin_id: reply.plugin_id,
    })
    .await
    .unwrap();
    let err = c
        .send_event(raw_req("csv", "", b"a\n1\n"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("no ingestor serves source \"csv\""),
        "{err:?}"
    );
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn with_a_plugin_token_every_registry_call_needs_it() {
    let p = Recorder::named("slack");
    let addr = serve_emitter(p).await;
    let mut config = fast_config();
    config.access.plugin_token = Some("plug-s3cret".into());
    let gw = start_with(Hub::new(), config).await;
    let mut reg = registry(&gw).await;
    let err = register(&mut reg, emitter_info("slack"), addr.to_string())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut wrong = tonic::Request::new(RegisterRequest {
        info: Some(emitter_info("slack")),
        address: addr.to_string(),
    });
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer nope".parse().unwrap());
    assert_eq!(
        reg.register(wrong).await.unwrap_err().code(),
        Code::Unauthenticated
    );

    let mut right = tonic::Request::new(RegisterRequest {
        info: Some(emitter_info("slack")),
        address: addr.to_string(),
    });
    right
        .metadata_mut()
        .insert("authorization", "Bearer plug-s3cret".parse().unwrap());
    let id = reg.register(right).await.unwrap().into_inner().plugin_id;
    let hb = reg
        .heartbeat(HeartbeatRequest {
            plugin_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(hb.code(), Code::Unauthenticated, "heartbeats need it too");
    let un = reg
        .unregister(UnregisterRequest { plugin_id: id })
        .await
        .unwrap_err();
    assert_eq!(un.code(), Code::Unauthenticated, "and unregistering");
    assert_eq!(gw.plugins(), 1);
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn plugin_retryable_failures_are_retried_and_a_hung_plugin_trips_its_breaker() {
    use std::sync::atomic::Ordering::Relaxed;
    let flaky = Recorder::named("flaky");
    flaky.flaky.store(2, Relaxed);
    let hung = Recorder {
        hang: true,
        ..Recorder::named("hung")
    };
    let flaky_addr = serve_emitter(flaky.clone()).await;
    let hung_addr = serve_emitter(hung.clone()).await;
    let mut config = fast_config();
    config.plugins.call_timeout = Duration::from_millis(300);
    config.plugins.heartbeat_timeout = Duration::from_secs(30);
    config.delivery.retry_max_attempts = 3;
    config.delivery.retry_backoff = Duration::from_millis(20);
    config.delivery.retry_max_backoff = Duration::from_millis(50);
    config.delivery.breaker_failures = 3;
    config.delivery.breaker_cooldown = Duration::from_secs(30);
    let mem = MemoryEmitter::new("stdout");
    let gw = start_with(Hub::new().emitter(mem.clone()), config).await;
    let mut reg = registry(&gw).await;
    register(&mut reg, emitter_info("flaky"), flaky_addr.to_string())
        .await
        .unwrap();
    register(&mut reg, emitter_info("hung"), hung_addr.to_string())
        .await
        .unwrap();

    let started = tokio::time::Instant::now();
    gw.send(
        "s",
        vec![
            Event::new("t").with_id("f1").with_route_to(["flaky"]),
            Event::new("t").with_id("h1").with_route_to(["hung"]),
            Event::new("t").with_id("m1").with_route_to(["stdout"]),
        ],
        WAIT,
    )
    .await
    .unwrap();
    // The healthy emitter is not held up by the hung plugin.
    assert!(wait_until(|| mem.len() == 1).await);
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    // Two "busy" answers, then delivered on the third try.
    assert!(wait_until(|| flaky.len() == 1).await);
    assert_eq!(flaky.calls.load(Relaxed), 3);
    assert_eq!(gw.stats().emitters["flaky"].retries, 2);
    assert_eq!(gw.stats().emitters["flaky"].failed, 0);

    // Three timed-out calls: the hung plugin's breaker opens, and its event
    // waits in the failure store.
    assert!(wait_until(|| gw.stats().emitters["hung"].breaker == Some(BreakerState::Open)).await);
    let s = gw.stats().emitters["hung"];
    assert_eq!((s.retries, s.failure_store_events), (2, 1), "{s:?}");
    let admin = format!(
        "http://{}/v1/emitters/hung/failures",
        gw.http_addr().unwrap()
    );
    let list: serde_json::Value =
        serde_json::from_str(&reqwest::get(admin).await.unwrap().text().await.unwrap()).unwrap();
    let reason = list["failures"][0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("gave up after 3 attempts") && reason.contains("300ms"),
        "{reason}"
    );
    // Now its traffic fails fast, without another call to the plugin: the
    // retry waits for the breaker's cool-down to send the probe.
    let calls = hung.calls.load(Relaxed);
    gw.send("s", vec![Event::new("t").with_route_to(["hung"])], WAIT)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(hung.calls.load(Relaxed), calls, "the plugin was not called");
    let s = gw.stats().emitters["hung"];
    assert_eq!((s.queued, s.retries), (1, 3), "held for the probe: {s:?}");
    let _ = tokio::time::timeout(Duration::from_secs(2), gw.shutdown()).await;
}

/// An admin call to the gateway's HTTP port: status and JSON body.
async fn admin(
    gw: &RunningGateway,
    method: reqwest::Method,
    path: &str,
) -> (u16, serde_json::Value) {
    json_reply(
        reqwest::Client::new().request(method, format!("http://{}{path}", gw.http_addr().unwrap())),
    )
    .await
}

/// How many events an emitter's failure store holds, as the admin API says.
async fn stored(gw: &RunningGateway, name: &str) -> usize {
    let (status, body) = admin(
        gw,
        reqwest::Method::GET,
        &format!("/v1/emitters/{name}/failures"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["total"].as_u64().unwrap() as usize
}

/// A config whose plugins do not expire while a test registers by hand,
/// and whose breaker cools down fast.
fn churn_config() -> Config {
    let mut c = fast_config();
    c.plugins.heartbeat_timeout = Duration::from_secs(60);
    c.delivery.breaker_cooldown = Duration::from_millis(200);
    c.delivery.retry_max_backoff = Duration::from_millis(200);
    c
}

#[tokio::test]
async fn a_plugin_that_registers_again_takes_over_its_failure_store_and_only_the_gateway_says_shutdown()
 {
    let gw = start_with(Hub::new().emitter(MemoryEmitter::new("m")), churn_config()).await;
    let mut reg = registry(&gw).await;
    let first = Recorder::named("audit");
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let stop_first = serve_emitter_at(first.clone(), addr).await;
    register(&mut reg, emitter_info("audit"), addr.to_string())
        .await
        .unwrap();
    let mut c = client(&gw).await;
    let to_audit = |e: Event| e.with_route_to(["audit"]);
    c.send_event(events_req(
        "s",
        vec![
            to_audit(Event::new("fail-me").with_id("refused")),
            to_audit(Event::new("t").with_id("one")),
        ],
    ))
    .await
    .unwrap();
    assert!(wait_until(|| first.len() == 1).await);
    for _ in 0..100 {
        if stored(&gw, "audit").await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stored(&gw, "audit").await, 1);

    // The plugin restarts (a new process on the same address) and
    // registers again under its name.
    stop_first.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = Recorder::named("audit");
    let _keep_second = serve_emitter_at(second.clone(), addr).await;
    register(&mut reg, emitter_info("audit"), addr.to_string())
        .await
        .unwrap();
    assert_eq!(gw.plugins(), 1);
    assert_eq!(
        stored(&gw, "audit").await,
        1,
        "the failure store carried on"
    );
    c.send_event(events_req(
        "s",
        vec![to_audit(Event::new("t").with_id("two"))],
    ))
    .await
    .unwrap();
    assert!(wait_until(|| second.len() == 1).await);
    assert_eq!(second.got.lock().unwrap()[0].id, "two");
    assert_eq!(first.len(), 1, "nothing more to the old process");
    // The stored event is resent to the new process (which refuses it too).
    let calls = second.calls.load(std::sync::atomic::Ordering::Relaxed);
    let (status, body) = admin(
        &gw,
        reqwest::Method::POST,
        "/v1/emitters/audit/failures/resend",
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert!(
        wait_until(|| second.calls.load(std::sync::atomic::Ordering::Relaxed) > calls).await,
        "the resend reached the new process"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        *second.shutdowns.lock().unwrap(),
        0,
        "the replaced registration says no Shutdown to the process now at its address"
    );
    assert_eq!(
        *first.shutdowns.lock().unwrap(),
        0,
        "no Shutdown when replaced"
    );
    gw.shutdown().await.unwrap();
    assert_eq!(*first.shutdowns.lock().unwrap(), 0);
    assert_eq!(
        *second.shutdowns.lock().unwrap(),
        1,
        "the gateway's own stop says Shutdown"
    );
}

#[tokio::test]
async fn a_removed_plugin_keeps_its_undelivered_events_listable_and_resendable_under_its_name() {
    let mem = MemoryEmitter::new("m");
    let gw = start_with(Hub::new().emitter(mem.clone()), churn_config()).await;
    let mut reg = registry(&gw).await;
    // A plugin that takes calls and never answers them.
    let hung = Recorder {
        hang: true,
        ..Recorder::named("audit")
    };
    let hung_addr = serve_emitter(hung.clone()).await;
    let reply = register(&mut reg, emitter_info("audit"), hung_addr.to_string())
        .await
        .unwrap();
    let mut c = client(&gw).await;
    for b in 0..3 {
        let events = numbered(&format!("q{b}"), 4)
            .into_iter()
            .map(|e| e.with_route_to(["audit"]))
            .collect();
        assert_eq!(
            c.send_event(events_req("s", events))
                .await
                .unwrap()
                .into_inner()
                .accepted,
            4
        );
    }
    assert!(wait_until(|| hung.calls.load(std::sync::atomic::Ordering::Relaxed) > 0).await);

    // It goes away with twelve events undelivered.
    reg.unregister(UnregisterRequest {
        plugin_id: reply.plugin_id,
    })
    .await
    .unwrap();
    let mut held = 0;
    for _ in 0..500 {
        held = stored(&gw, "audit").await;
        if held == 12 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(held, 12, "every undelivered event is kept under its name");
    let (_, body) = admin(&gw, reqwest::Method::GET, "/v1/emitters/audit/failures").await;
    let reason = body["failures"][0]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(reason.contains("removed"), "{body}");
    let (_, list) = admin(&gw, reqwest::Method::GET, "/v1/emitters").await;
    let audit = list["emitters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "audit")
        .cloned()
        .expect("a removed plugin with stored events is listed");
    assert_eq!(audit["registered"], false);
    let (status, body) = admin(
        &gw,
        reqwest::Method::POST,
        "/v1/emitters/audit/failures/resend",
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["reason"], "not_registered");
    // Nothing of it holds the gateway up.
    c.send_event(events_req("s", numbered("other", 5)))
        .await
        .unwrap();
    assert!(wait_until(|| mem.len() == 5).await);

    // Back, at a new address: the stored events go to it on resend.
    let back = Recorder::named("audit");
    let back_addr = serve_emitter(back.clone()).await;
    register(&mut reg, emitter_info("audit"), back_addr.to_string())
        .await
        .unwrap();
    let (status, body) = admin(
        &gw,
        reqwest::Method::POST,
        "/v1/emitters/audit/failures/resend",
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert!(
        wait_until(|| back.len() == 12).await,
        "{} resent",
        back.len()
    );
    assert_eq!(stored(&gw, "audit").await, 0);
    gw.shutdown().await.unwrap();
    assert_eq!(
        *hung.shutdowns.lock().unwrap(),
        0,
        "no Shutdown to a removed plugin"
    );
    assert_eq!(*back.shutdowns.lock().unwrap(), 1);
}
