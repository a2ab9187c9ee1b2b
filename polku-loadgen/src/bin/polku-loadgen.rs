//! Drives a POLKU gateway and reports what it sustained. See `--help`.
// The report is this program's output: printing to stdout is its job.
#![allow(clippy::print_stdout)]

use anyhow::{Context as _, bail};
use bytes::{Buf, BufMut, Bytes};
use hdrhistogram::Histogram;
use polku_proto::v1::SendEventResponse;
use prost::Message as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

const HELP: &str = "\
polku-loadgen: drive a POLKU gateway and report throughput, latency and memory

  --mode unary|stream|http   what to drive (default stream)
  --grpc HOST:PORT           gateway gRPC address (default 127.0.0.1:50051)
  --http HOST:PORT           gateway HTTP address, for /v1/events and /metrics (default 127.0.0.1:8080)
  --batch N                  events per request (default 1000)
  --event-bytes N            encoded size of each event (default 200)
  --concurrency N            concurrent callers / streams (default 4)
  --connections N            HTTP/2 connections for gRPC (default: one per caller, at most 8)
  --window N                 messages in flight per stream (default 4)
  --rate N                   events per second in all, 0 = flat out (default 0)
  --duration D               measured time, e.g. 10s (default 10s)
  --warmup D                 time before measuring (default 2s)
  --emitter NAME             emitter whose deliveries count (default null)
  --ids                      give every event a unique id (default: the gateway assigns them)
";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Unary,
    Stream,
    Http,
}

#[derive(Debug, Clone)]
struct Args {
    mode: Mode,
    grpc: String,
    http: String,
    batch: usize,
    event_bytes: usize,
    concurrency: usize,
    connections: usize,
    window: usize,
    rate: f64,
    duration: Duration,
    warmup: Duration,
    emitter: String,
    ids: bool,
}

fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().with_context(|| format!("bad duration {s:?}"))?;
    Ok(match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n * 60),
        _ => bail!("bad duration {s:?}: use 500ms, 10s or 2m"),
    })
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        mode: Mode::Stream,
        grpc: "127.0.0.1:50051".into(),
        http: "127.0.0.1:8080".into(),
        batch: 1000,
        event_bytes: 200,
        concurrency: 4,
        connections: 0,
        window: 4,
        rate: 0.0,
        duration: Duration::from_secs(10),
        warmup: Duration::from_secs(2),
        emitter: "null".into(),
        ids: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            print!("{HELP}");
            std::process::exit(0);
        }
        if flag == "--ids" {
            a.ids = true;
            continue;
        }
        let value = it
            .next()
            .with_context(|| format!("{flag} needs a value (see --help)"))?;
        let num = |v: &str| -> anyhow::Result<usize> {
            v.parse()
                .with_context(|| format!("{flag} takes a whole number, not {v:?}"))
        };
        match flag.as_str() {
            "--mode" => {
                a.mode = match value.as_str() {
                    "unary" => Mode::Unary,
                    "stream" => Mode::Stream,
                    "http" => Mode::Http,
                    _ => bail!("--mode is unary, stream or http, not {value:?}"),
                }
            }
            "--grpc" => a.grpc = value,
            "--http" => a.http = value,
            "--batch" => a.batch = num(&value)?.max(1),
            "--event-bytes" => a.event_bytes = num(&value)?,
            "--concurrency" => a.concurrency = num(&value)?.max(1),
            "--connections" => a.connections = num(&value)?,
            "--window" => a.window = num(&value)?.max(1),
            "--rate" => {
                a.rate = value
                    .parse()
                    .with_context(|| format!("bad --rate {value:?}"))?
            }
            "--duration" => a.duration = parse_duration(&value)?,
            "--warmup" => a.warmup = parse_duration(&value)?,
            "--emitter" => a.emitter = value,
            _ => bail!("unknown flag {flag} (see --help)"),
        }
    }
    if a.connections == 0 {
        a.connections = a.concurrency.min(8);
    }
    Ok(a)
}

/// Sends pre-encoded request bytes as they are; decodes replies.
#[derive(Debug, Clone, Default)]
struct RawCodec;

#[derive(Debug)]
struct RawEncoder;

#[derive(Debug)]
struct ReplyDecoder;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = SendEventResponse;
    type Encoder = RawEncoder;
    type Decoder = ReplyDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> ReplyDecoder {
        ReplyDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for ReplyDecoder {
    type Item = SendEventResponse;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut DecodeBuf<'_>,
    ) -> Result<Option<SendEventResponse>, tonic::Status> {
        let r = SendEventResponse::decode(src.copy_to_bytes(src.remaining()))
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        Ok(Some(r))
    }
}

/// What every worker adds to.
#[derive(Debug)]
struct Totals {
    sent: AtomicU64,
    acked: AtomicU64,
    errors: AtomicU64,
    /// Acknowledgement latency in microseconds, measured from when a request
    /// was due (so a slow server cannot hide queueing: no coordinated omission).
    latency: Mutex<Histogram<u64>>,
    measuring: AtomicBool,
    first_error: Mutex<Option<String>>,
}

impl Totals {
    fn record(&self, due: Instant, events: u64) {
        self.acked.fetch_add(events, Relaxed);
        if self.measuring.load(Relaxed) {
            let us = due.elapsed().as_micros() as u64;
            let _ = self.latency.lock().unwrap().record(us.max(1));
        }
    }

    fn error(&self, e: impl std::fmt::Display) {
        self.errors.fetch_add(1, Relaxed);
        let mut first = self.first_error.lock().unwrap();
        if first.is_none() {
            *first = Some(e.to_string());
        }
    }
}

/// Paces one worker: when its next request is due.
struct Pace {
    next: Instant,
    period: Option<Duration>,
}

impl Pace {
    fn new(args: &Args) -> Self {
        let per_worker = args.rate / args.concurrency as f64;
        Pace {
            next: Instant::now(),
            period: (args.rate > 0.0)
                .then(|| Duration::from_secs_f64(args.batch as f64 / per_worker)),
        }
    }

    /// Waits until the next request is due and returns when that was.
    async fn due(&mut self) -> Instant {
        match self.period {
            None => Instant::now(),
            Some(p) => {
                let due = self.next;
                self.next += p;
                tokio::time::sleep_until(due).await;
                due
            }
        }
    }
}

fn request_bytes(args: &Args, worker: usize, seq: u64) -> Bytes {
    let prefix = args.ids.then(|| format!("w{worker}-{seq}"));
    polku_loadgen::encode_request(polku_loadgen::batch_request(
        args.batch,
        args.event_bytes,
        prefix.as_deref(),
    ))
}

async fn unary_worker(
    args: Arc<Args>,
    id: usize,
    channel: Channel,
    totals: Arc<Totals>,
    stop: Arc<AtomicBool>,
) {
    let path = http::uri::PathAndQuery::from_static("/polku.v1.Gateway/SendEvent");
    let mut grpc = tonic::client::Grpc::new(channel);
    let fixed = request_bytes(&args, id, 0);
    let mut pace = Pace::new(&args);
    let mut seq = 0;
    while !stop.load(Relaxed) {
        let body = if args.ids {
            seq += 1;
            request_bytes(&args, id, seq)
        } else {
            fixed.clone()
        };
        let due = pace.due().await;
        if let Err(e) = grpc.ready().await {
            totals.error(e);
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        totals.sent.fetch_add(args.batch as u64, Relaxed);
        match grpc
            .unary(tonic::Request::new(body), path.clone(), RawCodec)
            .await
        {
            Ok(r) => totals.record(due, u64::from(r.get_ref().accepted)),
            Err(status) => totals.error(format!("{:?}: {}", status.code(), status.message())),
        }
    }
}

async fn stream_worker(
    args: Arc<Args>,
    id: usize,
    channel: Channel,
    totals: Arc<Totals>,
    stop: Arc<AtomicBool>,
) {
    let path = http::uri::PathAndQuery::from_static("/polku.v1.Gateway/StreamEvents");
    let mut grpc = tonic::client::Grpc::new(channel);
    if let Err(e) = grpc.ready().await {
        totals.error(e);
        return;
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(args.window);
    let inflight = Arc::new(tokio::sync::Semaphore::new(args.window));
    let sent_at: Arc<Mutex<std::collections::VecDeque<Instant>>> = Default::default();
    let response = grpc.streaming(
        tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
        path,
        RawCodec,
    );
    let sender = {
        let (args, totals, stop, inflight, sent_at) = (
            args.clone(),
            totals.clone(),
            stop.clone(),
            inflight.clone(),
            sent_at.clone(),
        );
        tokio::spawn(async move {
            let fixed = request_bytes(&args, id, 0);
            let mut pace = Pace::new(&args);
            let mut seq = 0;
            while !stop.load(Relaxed) {
                let body = if args.ids {
                    seq += 1;
                    request_bytes(&args, id, seq)
                } else {
                    fixed.clone()
                };
                let due = pace.due().await;
                let Ok(permit) = inflight.clone().acquire_owned().await else {
                    break;
                };
                permit.forget();
                sent_at.lock().unwrap().push_back(due);
                totals.sent.fetch_add(args.batch as u64, Relaxed);
                if tx.send(body).await.is_err() {
                    break;
                }
            }
        })
    };
    let mut inbound = match response.await {
        Ok(r) => r.into_inner(),
        Err(status) => {
            totals.error(format!("{:?}: {}", status.code(), status.message()));
            sender.abort();
            return;
        }
    };
    loop {
        match inbound.message().await {
            Ok(Some(reply)) => {
                let due = sent_at
                    .lock()
                    .unwrap()
                    .pop_front()
                    .unwrap_or_else(Instant::now);
                if let Some(err) = &reply.error {
                    totals.error(format!("refused: {}", err.message));
                } else {
                    totals.record(due, u64::from(reply.accepted));
                }
                inflight.add_permits(1);
            }
            Ok(None) => break,
            Err(status) => {
                if !stop.load(Relaxed) {
                    totals.error(format!("{:?}: {}", status.code(), status.message()));
                }
                break;
            }
        }
        if stop.load(Relaxed) && sent_at.lock().unwrap().is_empty() {
            break;
        }
    }
    sender.abort();
}

async fn http_worker(
    args: Arc<Args>,
    id: usize,
    client: reqwest::Client,
    totals: Arc<Totals>,
    stop: Arc<AtomicBool>,
) {
    let url = format!("http://{}/v1/events", args.http);
    let events = polku_loadgen::batch_request(args.batch, args.event_bytes, None);
    let fixed = polku_loadgen::json_body(&events);
    let mut pace = Pace::new(&args);
    let mut seq = 0u64;
    while !stop.load(Relaxed) {
        let body = if args.ids {
            seq += 1;
            let prefix = format!("w{id}-{seq}");
            polku_loadgen::json_body(&polku_loadgen::batch_request(
                args.batch,
                args.event_bytes,
                Some(&prefix),
            ))
        } else {
            fixed.clone()
        };
        let due = pace.due().await;
        totals.sent.fetch_add(args.batch as u64, Relaxed);
        let resp = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await;
        match resp {
            Ok(r) if r.status().as_u16() == 202 => {
                let text = r.bytes().await.unwrap_or_default();
                totals.record(due, accepted_of(&text));
            }
            Ok(r) => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                totals.error(format!("HTTP {status}: {text}"));
            }
            Err(e) => {
                totals.error(e);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The `accepted` count of a `202` reply, without a JSON parser.
fn accepted_of(body: &[u8]) -> u64 {
    let key = b"\"accepted\":";
    body.windows(key.len())
        .position(|w| w == key)
        .map(|i| {
            body[i + key.len()..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .fold(0u64, |n, b| n * 10 + u64::from(b - b'0'))
        })
        .unwrap_or(0)
}

/// What the gateway's /metrics says.
#[derive(Debug, Default, Clone)]
struct Scrape {
    delivered: u64,
    rss: u64,
    /// Ingest-to-emit histogram: (upper bound in seconds, cumulative count).
    buckets: Vec<(f64, u64)>,
}

async fn scrape(client: &reqwest::Client, args: &Args) -> Option<Scrape> {
    let text = client
        .get(format!("http://{}/metrics", args.http))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let mut s = Scrape::default();
    let emitted = format!(
        "polku_emitter_events_emitted_total{{emitter=\"{}\"}} ",
        args.emitter
    );
    let bucket = format!(
        "polku_ingest_to_emit_seconds_bucket{{emitter=\"{}\",le=\"",
        args.emitter
    );
    for line in text.lines() {
        if let Some(v) = line.strip_prefix(&emitted) {
            s.delivered = v.trim().parse().unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("process_resident_memory_bytes ") {
            s.rss = v.trim().parse().unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix(&bucket)
            && let Some((le, count)) = rest.split_once("\"} ")
        {
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(0.0)
            };
            s.buckets.push((le, count.trim().parse().unwrap_or(0)));
        }
    }
    Some(s)
}

/// A quantile of the ingest-to-emit histogram between two scrapes: the
/// bucket it falls in, as "<= bound".
fn histogram_quantile(before: &Scrape, after: &Scrape, q: f64) -> Option<f64> {
    let deltas: Vec<(f64, u64)> = after
        .buckets
        .iter()
        .map(|(le, c)| {
            let b = before
                .buckets
                .iter()
                .find(|(l, _)| l == le)
                .map_or(0, |(_, c)| *c);
            (*le, c.saturating_sub(b))
        })
        .collect();
    let total = deltas.last()?.1;
    if total == 0 {
        return None;
    }
    let want = (total as f64 * q).ceil() as u64;
    deltas.iter().find(|(_, c)| *c >= want).map(|(le, _)| *le)
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(parse_args()?);
    let totals = Arc::new(Totals {
        sent: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        latency: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?),
        measuring: AtomicBool::new(false),
        first_error: Mutex::new(None),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let metrics = reqwest::Client::new();
    let idle = scrape(&metrics, &args).await;
    if idle.is_none() {
        eprintln!(
            "note: no /metrics at {}: delivered and memory will not be shown",
            args.http
        );
    }

    eprintln!(
        "polku-loadgen: {:?}, {} events x {} B per request, {} callers, rate {}, warm-up {:?}, measuring {:?}",
        args.mode,
        args.batch,
        args.event_bytes,
        args.concurrency,
        if args.rate > 0.0 {
            format!("{} ev/s", args.rate)
        } else {
            "flat out".into()
        },
        args.warmup,
        args.duration
    );
    let mut workers = Vec::new();
    let channels: Vec<Channel> = if args.mode == Mode::Http {
        Vec::new()
    } else {
        let mut v = Vec::new();
        for _ in 0..args.connections {
            v.push(
                Channel::from_shared(format!("http://{}", args.grpc))?
                    .tcp_nodelay(true)
                    .initial_stream_window_size(Some(4 << 20))
                    .initial_connection_window_size(Some(16 << 20))
                    .connect()
                    .await
                    .with_context(|| format!("cannot connect to {}", args.grpc))?,
            );
        }
        v
    };
    let http_client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    for id in 0..args.concurrency {
        let (a, t, s) = (args.clone(), totals.clone(), stop.clone());
        workers.push(match args.mode {
            Mode::Unary => tokio::spawn(unary_worker(
                a,
                id,
                channels[id % channels.len()].clone(),
                t,
                s,
            )),
            Mode::Stream => tokio::spawn(stream_worker(
                a,
                id,
                channels[id % channels.len()].clone(),
                t,
                s,
            )),
            Mode::Http => tokio::spawn(http_worker(a, id, http_client.clone(), t, s)),
        });
    }

    tokio::time::sleep(args.warmup).await;
    let start_scrape = scrape(&metrics, &args).await.unwrap_or_default();
    let (sent0, acked0) = (totals.sent.load(Relaxed), totals.acked.load(Relaxed));
    totals.measuring.store(true, Relaxed);
    let started = Instant::now();
    let mut peak_rss = start_scrape.rss;
    let mut last = (sent0, acked0, start_scrape.delivered, Instant::now());
    println!(
        "{:>6} {:>12} {:>12} {:>12} {:>9}",
        "t(s)", "sent/s", "acked/s", "delivered/s", "rss(MB)"
    );
    while started.elapsed() < args.duration {
        tokio::time::sleep(
            Duration::from_secs(1).min(args.duration.saturating_sub(started.elapsed())),
        )
        .await;
        let s = scrape(&metrics, &args).await.unwrap_or_default();
        peak_rss = peak_rss.max(s.rss);
        let (sent, acked) = (totals.sent.load(Relaxed), totals.acked.load(Relaxed));
        let dt = last.3.elapsed().as_secs_f64();
        println!(
            "{:>6.1} {:>12.0} {:>12.0} {:>12.0} {:>9.1}",
            started.elapsed().as_secs_f64(),
            (sent - last.0) as f64 / dt,
            (acked - last.1) as f64 / dt,
            s.delivered.saturating_sub(last.2) as f64 / dt,
            mb(s.rss)
        );
        last = (sent, acked, s.delivered, Instant::now());
    }
    let elapsed = started.elapsed().as_secs_f64();
    totals.measuring.store(false, Relaxed);
    let end_scrape = scrape(&metrics, &args).await.unwrap_or_default();
    let (sent1, acked1) = (totals.sent.load(Relaxed), totals.acked.load(Relaxed));
    stop.store(true, Relaxed);
    for w in workers {
        let _ = tokio::time::timeout(Duration::from_secs(5), w).await;
    }
    // Let the gateway finish what it acknowledged, then read the final count.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let final_scrape = scrape(&metrics, &args).await.unwrap_or_default();

    let h = totals.latency.lock().unwrap().clone();
    let calls = args.batch as f64;
    println!();
    println!(
        "mode {:?}, batch {}, event {} B, callers {}, measured {:.1} s",
        args.mode, args.batch, args.event_bytes, args.concurrency, elapsed
    );
    println!(
        "sent       {:>12.0} events/s",
        (sent1 - sent0) as f64 / elapsed
    );
    println!(
        "acked      {:>12.0} events/s  ({:.0} requests/s)",
        (acked1 - acked0) as f64 / elapsed,
        (acked1 - acked0) as f64 / elapsed / calls
    );
    if idle.is_some() {
        println!(
            "delivered  {:>12.0} events/s  (to emitter {:?})",
            end_scrape.delivered.saturating_sub(start_scrape.delivered) as f64 / elapsed,
            args.emitter
        );
    }
    println!(
        "ack latency  p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms  ({} requests)",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.9) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.value_at_quantile(0.999) as f64 / 1000.0,
        h.max() as f64 / 1000.0,
        h.len()
    );
    if let Some(p99) = histogram_quantile(&start_scrape, &end_scrape, 0.99) {
        let p50 = histogram_quantile(&start_scrape, &end_scrape, 0.5).unwrap_or(p99);
        println!(
            "ingest-to-emit (gateway histogram)  p50 <= {:.2} ms  p99 <= {:.2} ms",
            p50 * 1000.0,
            p99 * 1000.0
        );
    }
    if let Some(idle) = &idle {
        println!(
            "gateway rss  idle {:.1} MB  peak {:.1} MB  (sampled each second)",
            mb(idle.rss),
            mb(peak_rss)
        );
    }
    let errors = totals.errors.load(Relaxed);
    if errors > 0 {
        println!(
            "errors {errors}; first: {}",
            totals
                .first_error
                .lock()
                .unwrap()
                .clone()
                .unwrap_or_default()
        );
    }
    if idle.is_some() {
        let lost = acked1.saturating_sub(
            final_scrape
                .delivered
                .saturating_sub(idle.as_ref().map_or(0, |i| i.delivered)),
        );
        println!("acked but not yet delivered at the end: {lost}");
    }
    Ok(())
}
