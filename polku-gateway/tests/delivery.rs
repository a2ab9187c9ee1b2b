//! Emitters that keep their promises, against real servers the tests start:
//! retries until a destination comes back, the circuit breaker, the failure
//! store and its admin endpoints, queue policies, and lingering.

mod common;

use axum::extract::State;
use axum::http::StatusCode;
use common::*;
use polku_gateway::*;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A webhook receiver: answers `status` (200 unless told otherwise) and
/// records the ids of every event it was sent, and how many POSTs.
#[derive(Debug, Default)]
struct Receiver {
    status: AtomicU16,
    posts: AtomicUsize,
    ids: Mutex<Vec<String>>,
}

impl Receiver {
    fn ids(&self) -> Vec<String> {
        self.ids.lock().unwrap().clone()
    }
    fn unique(&self) -> BTreeSet<String> {
        self.ids().into_iter().collect()
    }
    fn set_status(&self, s: u16) {
        self.status.store(s, Relaxed);
    }
}

async fn hook(State(r): State<Arc<Receiver>>, body: bytes::Bytes) -> (StatusCode, &'static str) {
    r.posts.fetch_add(1, Relaxed);
    let status = match r.status.load(Relaxed) {
        0 => 200,
        s => s,
    };
    if status == 200 {
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let mut ids = r.ids.lock().unwrap();
        for e in v["events"].as_array().unwrap() {
            ids.push(e["id"].as_str().unwrap().to_owned());
        }
        (StatusCode::OK, "ok")
    } else {
        (
            StatusCode::from_u16(status).unwrap(),
            "schema mismatch: field `user` is required",
        )
    }
}

/// Serves the receiver on `listener`.
fn serve_receiver(listener: tokio::net::TcpListener, r: Arc<Receiver>) {
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(r);
    tokio::spawn(async move { axum::serve(listener, app).await });
}

async fn receiver() -> (Arc<Receiver>, SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let r = Arc::new(Receiver::default());
    serve_receiver(listener, r.clone());
    (r, addr)
}

/// A loopback address that nothing listens on (yet).
fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], common::free_port()))
}

fn webhook(addr: SocketAddr) -> WebhookEmitter {
    WebhookEmitter::new(format!("http://{addr}/hook"))
        .unwrap()
        .timeout(Duration::from_secs(2))
}

fn quick_retries(attempts: u32) -> RetryPolicy {
    RetryPolicy::new(attempts, Duration::from_secs(60))
        .unwrap()
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .unwrap()
}

async fn http_json(
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new().request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    json_reply(req).await
}

async fn metrics(gw: &RunningGateway) -> String {
    get_text(
        &reqwest::Client::new(),
        format!("http://{}/metrics", gw.http_addr().unwrap()),
    )
    .await
}

#[tokio::test]
async fn a_destination_down_for_a_while_then_back_receives_every_accepted_event() {
    let addr = free_addr();
    let resilient = Resilience::new()
        .timeout(Duration::from_secs(2))
        .retry(quick_retries(10_000))
        .breaker(BreakerConfig::new(3, Duration::from_millis(300)).unwrap())
        .failure_store(1000, 1 << 20)
        .unwrap()
        .wrap(webhook(addr).named("hook"));
    let gw = start(Hub::new().emitter(resilient)).await;
    let mut c = client(&gw).await;
    let mut sent = BTreeSet::new();
    for i in 0..20 {
        let events = numbered(&format!("b{i}"), 10);
        sent.extend(events.iter().map(|e| e.id.to_string()));
        let r = c
            .send_event(events_req("src", events))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.accepted, 10, "accepted while the destination is down");
    }

    // Down: nothing arrives, the emitter retries and its breaker opens.
    wait_until("the breaker opens", || {
        gw.stats().emitters["hook"].breaker_opened >= 1
    })
    .await;
    let s = gw.stats().emitters["hook"];
    assert_eq!(s.emitted, 0);
    assert_eq!(s.failed, 0, "nothing given up on");
    assert!(s.retries >= 3, "{s:?}");
    assert!(
        metrics(&gw)
            .await
            .contains("polku_emitter_retries_total{emitter=\"hook\"}")
    );

    // Back, on the same address.
    let r = Arc::new(Receiver::default());
    serve_receiver(
        tokio::net::TcpListener::bind(addr).await.unwrap(),
        r.clone(),
    );
    wait_until("every event arrives", || r.unique().len() == 200).await;
    assert_eq!(r.unique(), sent, "every accepted id, as given");
    assert_eq!(
        r.ids().len(),
        200,
        "no duplicates: refused connections never delivered"
    );
    wait_until("the emitter counts them", || {
        gw.stats().emitters["hook"].emitted == 200
    })
    .await;
    let s = gw.stats().emitters["hook"];
    assert_eq!((s.failed, s.failure_store_events), (0, 0));
    assert_eq!(s.breaker, Some(BreakerState::Closed));
    gw.shutdown().await.unwrap();
}

/// Stores each batch, then answers 503 for the first `fail_after_store` POSTs:
/// a destination that took the batch but could not say so.
async fn forgetful_receiver(fail_after_store: usize) -> (Arc<Receiver>, SocketAddr) {
    async fn handler(State(r): State<Arc<Receiver>>, body: bytes::Bytes) -> StatusCode {
        let n = r.posts.fetch_add(1, Relaxed);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let mut ids = r.ids.lock().unwrap();
        for e in v["events"].as_array().unwrap() {
            ids.push(e["id"].as_str().unwrap().to_owned());
        }
        if n < r.status.load(Relaxed) as usize {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let r = Arc::new(Receiver::default());
    r.status.store(fail_after_store as u16, Relaxed);
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(handler))
        .with_state(r.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (r, addr)
}

#[tokio::test]
async fn retries_may_duplicate_and_every_event_sent_again_is_counted() {
    let (r, addr) = forgetful_receiver(2).await;
    let resilient = Resilience::default()
        .retry(quick_retries(5))
        .wrap(webhook(addr).named("hook"));
    let gw = start(Hub::new().emitter(resilient)).await;
    gw.send("src", numbered("d", 4), Duration::from_secs(1))
        .await
        .unwrap();
    wait_until("delivered", || gw.stats().emitters["hook"].emitted == 4).await;
    let s = gw.stats().emitters["hook"];
    let duplicates = r.ids().len() - r.unique().len();
    assert_eq!(r.unique().len(), 4);
    assert_eq!((s.retries, s.retried_events), (2, 8));
    assert_eq!(
        duplicates as u64, s.retried_events,
        "each duplicate was a counted retry"
    );
    assert!(
        metrics(&gw)
            .await
            .contains("polku_emitter_events_retried_total{emitter=\"hook\"} 8")
    );
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_permanent_refusal_goes_to_the_failure_store_to_be_listed_and_resent() {
    let (r, addr) = receiver().await;
    r.set_status(422);
    let resilient = Resilience::default()
        .retry(quick_retries(5))
        .wrap(webhook(addr).named("hook"));
    let gw = start(Hub::new().emitter(resilient)).await;
    let admin = format!("http://{}/v1/emitters", gw.http_addr().unwrap());
    gw.send("src", numbered("p", 5), Duration::from_secs(1))
        .await
        .unwrap();
    wait_until("the store has them", || {
        gw.stats().emitters["hook"].failure_store_events == 5
    })
    .await;
    assert_eq!(r.posts.load(Relaxed), 1, "a 4xx is not retried");
    let s = gw.stats().emitters["hook"];
    assert_eq!((s.failed, s.failure_store_stored, s.retries), (5, 5, 0));

    let (status, list) =
        http_json(reqwest::Method::GET, format!("{admin}/hook/failures"), None).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["total"], 5);
    let failures = list["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 5);
    assert_eq!(failures[0]["event"]["id"], "p-0");
    assert_eq!(failures[0]["retryable"], false);
    let reason = failures[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("422") && reason.contains("schema mismatch"),
        "{reason}"
    );
    let (_, page) = http_json(
        reqwest::Method::GET,
        format!("{admin}/hook/failures?offset=3&limit=10"),
        None,
    )
    .await;
    assert_eq!(page["failures"].as_array().unwrap().len(), 2);
    assert_eq!(page["failures"][0]["event"]["id"], "p-3");
    let (status, bad) = http_json(
        reqwest::Method::GET,
        format!("{admin}/hook/failures?limit=lots"),
        None,
    )
    .await;
    assert_eq!(status, 400);
    assert!(bad["error"].as_str().unwrap().contains("limit"), "{bad}");

    let (_, overview) = http_json(reqwest::Method::GET, admin.clone(), None).await;
    assert_eq!(overview["emitters"][0]["name"], "hook");
    assert_eq!(overview["emitters"][0]["failure_store"]["events"], 5);
    assert!(
        metrics(&gw)
            .await
            .contains("polku_emitter_failure_store_events{emitter=\"hook\"} 5")
    );

    // The receiver is fixed: send them again.
    r.set_status(200);
    let (status, resent) = http_json(
        reqwest::Method::POST,
        format!("{admin}/hook/failures/resend"),
        None,
    )
    .await;
    assert_eq!(status, 202, "{resent}");
    assert_eq!(
        (resent["resent"].as_u64(), resent["remaining"].as_u64()),
        (Some(5), Some(0))
    );
    wait_until("they arrive", || r.unique().len() == 5).await;
    assert_eq!(r.ids(), ["p-0", "p-1", "p-2", "p-3", "p-4"]);
    wait_until("counted", || gw.stats().emitters["hook"].emitted == 5).await;
    assert_eq!(gw.stats().emitters["hook"].resent, 5);

    // Discarding; and errors that name the problem.
    r.set_status(400);
    gw.send("src", numbered("q", 2), Duration::from_secs(1))
        .await
        .unwrap();
    wait_until("stored", || {
        gw.stats().emitters["hook"].failure_store_events == 2
    })
    .await;
    let (status, gone) = http_json(
        reqwest::Method::DELETE,
        format!("{admin}/hook/failures"),
        None,
    )
    .await;
    assert_eq!((status, gone["discarded"].as_u64()), (200, Some(2)));
    let (status, err) =
        http_json(reqwest::Method::GET, format!("{admin}/nope/failures"), None).await;
    assert_eq!(status, 404);
    assert!(
        err["error"].as_str().unwrap().contains("running: hook"),
        "{err}"
    );
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn admin_endpoints_need_the_admin_token_when_one_is_set() {
    let mut config = test_config();
    config.access.admin_token = Some("adm1n".into());
    let gw = start_with(Hub::new().emitter(MemoryEmitter::new("m")), config).await;
    let url = format!("http://{}/v1/emitters", gw.http_addr().unwrap());
    let (status, body) = http_json(reqwest::Method::GET, url.clone(), None).await;
    assert_eq!(status, 401);
    assert!(
        body["error"].as_str().unwrap().contains("admin token"),
        "{body}"
    );
    let (status, _) = http_json(reqwest::Method::GET, url.clone(), Some("wrong")).await;
    assert_eq!(status, 401);
    let (status, body) = http_json(reqwest::Method::GET, url.clone(), Some("adm1n")).await;
    assert_eq!(status, 200);
    assert_eq!(body["emitters"][0]["name"], "m");
    // A plain emitter keeps no failure store: said so.
    let (status, body) = http_json(
        reqwest::Method::GET,
        format!("{url}/m/failures"),
        Some("adm1n"),
    )
    .await;
    assert_eq!(status, 404);
    assert!(
        body["error"].as_str().unwrap().contains("no failure store"),
        "{body}"
    );
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_breaker_opens_fails_fast_shows_in_health_then_half_opens_and_closes() {
    let (r, addr) = receiver().await;
    r.set_status(503);
    let resilient = Resilience::new()
        .retry(RetryPolicy::new(1, Duration::from_secs(60)).unwrap())
        .breaker(BreakerConfig::new(3, Duration::from_secs(2)).unwrap())
        .failure_store(100, 1 << 20)
        .unwrap()
        .wrap(webhook(addr).named("hook"));
    let gw = start(Hub::new().emitter(resilient)).await;
    let http = gw.http_addr().unwrap();
    for i in 0..3 {
        gw.send("src", numbered(&format!("a{i}"), 1), Duration::from_secs(1))
            .await
            .unwrap();
    }
    wait_until("the breaker opens", || {
        gw.stats().emitters["hook"].breaker == Some(BreakerState::Open)
    })
    .await;
    assert_eq!(r.posts.load(Relaxed), 3);

    // Open: batches fail at once without a POST, into the failure store.
    for i in 0..3 {
        gw.send("src", numbered(&format!("f{i}"), 1), Duration::from_secs(1))
            .await
            .unwrap();
    }
    wait_until("all six stored", || {
        gw.stats().emitters["hook"].failure_store_events == 6
    })
    .await;
    assert_eq!(
        r.posts.load(Relaxed),
        3,
        "failed fast: the destination saw nothing"
    );
    let (_, list) = http_json(
        reqwest::Method::GET,
        format!("http://{http}/v1/emitters/hook/failures?offset=5"),
        None,
    )
    .await;
    let reason = list["failures"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("circuit breaker open"), "{reason}");
    let m = metrics(&gw).await;
    assert!(
        m.contains("polku_emitter_breaker_state{emitter=\"hook\",state=\"open\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("polku_emitter_breaker_opened_total{emitter=\"hook\"} 1"),
        "{m}"
    );
    // The only emitter cannot deliver: not ready, in HTTP and gRPC health.
    let ready = || async {
        reqwest::get(format!("http://{http}/readyz"))
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    let mut status = 0;
    for _ in 0..100 {
        status = ready().await;
        if status == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, 503, "readyz while the breaker is open");

    // The destination recovers; after the cool-down one probe goes through
    // and closes the breaker.
    r.set_status(200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    gw.send("src", numbered("probe", 1), Duration::from_secs(1))
        .await
        .unwrap();
    wait_until("the probe arrives", || r.unique().contains("probe-0")).await;
    wait_until("closed", || {
        gw.stats().emitters["hook"].breaker == Some(BreakerState::Closed)
    })
    .await;
    let m = metrics(&gw).await;
    assert!(
        m.contains("polku_emitter_breaker_state{emitter=\"hook\",state=\"closed\"} 1"),
        "{m}"
    );
    let mut status = 0;
    for _ in 0..100 {
        status = ready().await;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, 200, "ready again");
    gw.shutdown().await.unwrap();
}

/// Sends `batches` batches of 100 over gRPC; returns how many were accepted
/// and how many `fast` had `window` after the first send.
async fn run_load(
    hub: Hub,
    fast: &MemoryEmitter,
    batches: usize,
    window: Duration,
) -> (u32, usize) {
    let mut config = test_config();
    config.buffer.timeout = Duration::from_millis(100);
    let gw = start_with(hub.buffer_capacity(1000), config).await;
    let mut c = client(&gw).await;
    let started = tokio::time::Instant::now();
    let mut accepted = 0;
    for i in 0..batches {
        if let Ok(r) = c
            .send_event(events_req("src", numbered(&format!("l{i}"), 100)))
            .await
        {
            accepted += r.into_inner().accepted;
        }
    }
    tokio::time::sleep_until(started + window).await;
    let delivered = fast.len();
    drop(c);
    let _ = tokio::time::timeout(Duration::from_secs(1), gw.shutdown()).await;
    (accepted, delivered)
}

#[tokio::test]
async fn a_dead_emitter_does_not_slow_a_healthy_one() {
    // Baseline: the healthy emitter alone.
    let fast = MemoryEmitter::new("fast");
    let (accepted_alone, alone) = run_load(
        Hub::new().emitter(fast.clone()),
        &fast,
        30,
        Duration::from_secs(2),
    )
    .await;
    assert_eq!((accepted_alone, alone), (3000, 3000));

    // Now beside a destination that accepts connections and never answers,
    // whose queue drops the newest when it holds 200 events. The load is
    // three times the buffer.
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung_addr = hung.local_addr().unwrap();
    let _keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hung.accept().await {
            held.push(s);
        }
    });
    let dead = Resilience::default()
        .timeout(Duration::from_millis(500))
        .wrap(webhook(hung_addr).named("dead"));
    let fast = MemoryEmitter::new("fast");
    let hub = Hub::new().emitter(fast.clone()).emitter_with(
        dead,
        EmitterOptions::default().queue_full(QueueFull::DropNewest { max_events: 200 }),
    );
    let (accepted, beside_dead) = run_load(hub, &fast, 30, Duration::from_secs(2)).await;
    assert_eq!(
        accepted, 3000,
        "nothing refused: the dead emitter never filled the buffer"
    );
    assert_eq!(
        beside_dead, alone,
        "the healthy emitter delivered as much in the same time"
    );
}

#[tokio::test]
async fn block_is_the_default_and_pushes_back_instead_of_dropping() {
    let stuck = GateEmitter::closed("stuck");
    let mut config = test_config();
    config.buffer.timeout = Duration::from_millis(100);
    let gw = start_with(
        Hub::new().emitter(stuck.clone()).buffer_capacity(100),
        config,
    )
    .await;
    gw.send("src", numbered("a", 100), Duration::from_millis(100))
        .await
        .unwrap();
    let err = gw
        .send("src", numbered("b", 1), Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(matches!(err, SubmitError::BufferFull { .. }), "{err}");
    stuck.open();
    wait_until("delivered", || stuck.inner.len() == 100).await;
    assert_eq!(gw.stats().emitters["stuck"].dropped_queue_full, 0);
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn drop_oldest_keeps_the_newest_and_counts_what_it_dropped() {
    let stuck = GateEmitter::closed("stuck");
    let other = MemoryEmitter::new("other");
    let gw = start(
        Hub::new()
            .emitter(other.clone())
            .emitter_with(
                stuck.clone(),
                EmitterOptions::default().queue_full(QueueFull::DropOldest { max_events: 20 }),
            )
            .buffer_capacity(1000),
    )
    .await;
    for i in 0..10 {
        gw.send(
            "src",
            numbered(&format!("o{i}"), 10),
            Duration::from_millis(100),
        )
        .await
        .unwrap();
        if i == 0 {
            // Let the stuck emitter take the first batch into its call.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    wait_until("the other has all", || other.len() == 100).await;
    // The stuck emitter holds the first batch in its call; of the nine that
    // queued behind it, the two newest fit.
    wait_until("drops counted", || {
        gw.stats().emitters["stuck"].dropped_queue_full == 70
    })
    .await;
    stuck.open();
    wait_until("delivered", || stuck.inner.len() == 30).await;
    let ids = stuck.inner.ids();
    assert!(ids.contains(&"o0-0".to_owned()) && ids.contains(&"o9-9".to_owned()));
    assert!(!ids.contains(&"o5-0".to_owned()));
    let m = metrics(&gw).await;
    assert!(
        m.contains(
            "polku_emitter_events_dropped_total{emitter=\"stuck\",reason=\"queue_full\"} 70"
        ),
        "{m}"
    );
    assert_eq!(
        gw.stats().buffer_depth,
        0,
        "dropped batches gave their room back"
    );
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn linger_gathers_small_batches_into_bigger_posts() {
    let (r, addr) = receiver().await;
    let gw = start(Hub::new().emitter_with(
        webhook(addr).named("hook"),
        EmitterOptions::default().linger(Duration::from_millis(300), 50),
    ))
    .await;
    for i in 0..10 {
        gw.send(
            "src",
            numbered(&format!("s{i}"), 5),
            Duration::from_millis(100),
        )
        .await
        .unwrap();
    }
    wait_until("all arrive", || r.ids().len() == 50).await;
    let posts = r.posts.load(Relaxed);
    assert!(posts <= 3, "10 small batches went out in {posts} POSTs");
    let ids = r.ids();
    assert_eq!(ids.first().unwrap(), "s0-0", "in order");
    assert_eq!(ids.last().unwrap(), "s9-4");
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_downstream_gateway_that_starts_late_gets_every_event() {
    let addr = free_addr();
    let forward = Resilience::new()
        .timeout(Duration::from_secs(2))
        .retry(quick_retries(10_000))
        .wrap(GrpcEmitter::new([addr.to_string()]).unwrap().named("down"));
    let up = start(Hub::new().emitter(forward)).await;
    let mut c = client(&up).await;
    for i in 0..5 {
        c.send_event(events_req("src", numbered(&format!("g{i}"), 10)))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(up.stats().emitters["down"].retries > 0);

    let mem = MemoryEmitter::new("mem");
    let mut config = test_config();
    config.listen.grpc_addr = addr;
    config.listen.http_addr = None;
    let down = start_with(Hub::new().emitter(mem.clone()), config).await;
    wait_until("all arrive downstream", || mem.len() == 50).await;
    let ids: BTreeSet<String> = mem.ids().into_iter().collect();
    assert_eq!(ids.len(), 50);
    wait_until("counted upstream", || {
        up.stats().emitters["down"].emitted == 50
    })
    .await;
    up.shutdown().await.unwrap();
    down.shutdown().await.unwrap();
}

/// Accepted events do not wait behind the caller's next request: by the time
/// `send` returns (on this one-thread runtime, where nothing else can run in
/// between), the emitter has already had them. This is what keeps
/// ingest-to-emit latency low under load (BENCHMARKS.md, half load).
#[tokio::test(flavor = "current_thread")]
async fn the_emitter_runs_before_the_sender_gets_its_answer() {
    let mem = MemoryEmitter::new("memory");
    let gw = start(Hub::new().emitter(mem.clone())).await;
    for round in 1..=3 {
        gw.send("src", numbered("now", 2), Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(
            mem.len(),
            2 * round,
            "round {round}: delivered before the answer"
        );
    }
    gw.shutdown().await.unwrap();
}

/// Asks the gateway to gather what is queued for it; holds its first call
/// until let go, and records the size of each call.
#[derive(Debug)]
struct Gatherer {
    sizes: Mutex<Vec<usize>>,
    gate: tokio::sync::Semaphore,
}

#[async_trait::async_trait]
impl Emitter for Gatherer {
    fn name(&self) -> &str {
        "gatherer"
    }

    async fn emit(&self, events: &[Event]) -> Result<(), EmitError> {
        let first = {
            let mut sizes = self.sizes.lock().unwrap();
            sizes.push(events.len());
            sizes.len() == 1
        };
        if first {
            self.gate.acquire().await.unwrap().forget();
        }
        Ok(())
    }

    fn gathers_up_to(&self) -> Option<usize> {
        Some(100)
    }
}

#[tokio::test]
async fn an_emitter_that_asks_to_gather_gets_the_queued_requests_in_one_call() {
    let g = Arc::new(Gatherer {
        sizes: Mutex::new(Vec::new()),
        gate: tokio::sync::Semaphore::new(0),
    });
    // The Hub's defaults: the emitter's own ask decides.
    let gw = start(Hub::new().emitter_arc(g.clone())).await;
    let mut c = client(&gw).await;
    c.send_event(events_req("src", numbered("first", 1)))
        .await
        .unwrap();
    wait_until("the first call is under way", || {
        g.sizes.lock().unwrap().len() == 1
    })
    .await;
    // Ten unary requests wait in the queue meanwhile.
    for i in 0..10 {
        c.send_event(events_req("src", numbered(&format!("n{i}"), 1)))
            .await
            .unwrap();
    }
    g.gate.add_permits(1);
    wait_until("all delivered", || {
        g.sizes.lock().unwrap().iter().sum::<usize>() == 11
    })
    .await;
    assert_eq!(*g.sizes.lock().unwrap(), [1, 10], "the ten in one call");
    gw.shutdown().await.unwrap();
}
