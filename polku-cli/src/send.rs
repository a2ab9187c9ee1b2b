//! `polku send`: events as JSON (one per line, or arrays, or both) from
//! files or stdin, sent in batches, with a progress bar for large inputs and
//! a summary of what was accepted, dropped and refused, and why.

use crate::{Gateway, say};
use indicatif::{ProgressBar, ProgressStyle};
use polku_proto::v1::gateway_client::GatewayClient;
use polku_proto::v1::send_event_request::Payload;
use polku_proto::v1::{RawPayload, SendEventRequest};
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// What to send.
#[derive(Debug, clap::Args)]
pub(crate) struct SendArgs {
    /// Files of JSON events (objects, one per line, or arrays); none or `-`:
    /// stdin.
    files: Vec<PathBuf>,
    /// The source of events that name none.
    #[arg(long, default_value = "polku-cli")]
    source: String,
    /// Events per request.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
}

/// Requests stay well under the gateway's default 4 MiB message limit.
const MAX_REQUEST_BYTES: usize = 1 << 20;

/// What became of the events sent.
#[derive(Debug, Default)]
struct Summary {
    accepted: u64,
    dropped: u64,
    rejected: u64,
    /// Refusals by reason, with a count.
    why: BTreeMap<String, u64>,
}

/// Counts the bytes read, for the progress bar.
struct Counting<R> {
    inner: R,
    bar: ProgressBar,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}

pub(crate) async fn run(gw: &Gateway, args: SendArgs) -> anyhow::Result<ExitCode> {
    let files: Vec<Option<PathBuf>> = if args.files.is_empty() {
        vec![None]
    } else {
        args.files
            .iter()
            .map(|f| (f.as_os_str() != "-").then(|| f.clone()))
            .collect()
    };
    let total: u64 = files
        .iter()
        .flatten()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    // A bar for files of some size; a count for stdin. Neither shows when
    // stderr is not a terminal.
    let bar = if files.iter().all(Option::is_some) && total > 1 << 20 {
        ProgressBar::new(total).with_style(
            ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        )
    } else {
        ProgressBar::new_spinner()
    };
    let mut client = GatewayClient::new(gw.channel.clone());
    let mut summary = Summary::default();
    let batch = args.batch.max(1);
    let mut pending: Vec<Box<RawValue>> = Vec::with_capacity(batch);
    let mut pending_bytes = 0;
    for f in files {
        let name = f
            .as_ref()
            .map_or("stdin".to_owned(), |p| p.display().to_string());
        let reader: Box<dyn Read> = match &f {
            Some(p) => Box::new(
                std::fs::File::open(p).map_err(|e| anyhow::anyhow!("cannot read {name}: {e}"))?,
            ),
            None => Box::new(std::io::stdin()),
        };
        let reader = std::io::BufReader::with_capacity(
            1 << 16,
            Counting {
                inner: reader,
                bar: bar.clone(),
            },
        );
        let values = serde_json::Deserializer::from_reader(reader).into_iter::<Box<RawValue>>();
        for v in values {
            let v = v.map_err(|e| anyhow::anyhow!("{name}: not JSON events: {e}"))?;
            let events = if v.get().starts_with('[') {
                serde_json::from_str::<Vec<Box<RawValue>>>(v.get())
                    .map_err(|e| anyhow::anyhow!("{name}: {e}"))?
            } else {
                vec![v]
            };
            for e in events {
                pending_bytes += e.get().len() + 1;
                pending.push(e);
                if pending.len() >= batch || pending_bytes >= MAX_REQUEST_BYTES {
                    send(gw, &mut client, &args.source, &pending, &mut summary).await?;
                    bar.set_message(format!("{} accepted", summary.accepted));
                    pending.clear();
                    pending_bytes = 0;
                }
            }
        }
    }
    if !pending.is_empty() {
        send(gw, &mut client, &args.source, &pending, &mut summary).await?;
    }
    bar.finish_and_clear();
    crate::output::line(format!(
        "accepted {}, dropped {}, rejected {}",
        summary.accepted, summary.dropped, summary.rejected
    ));
    for (why, n) in &summary.why {
        crate::output::line(format!("  {n} rejected: {why}"));
    }
    Ok(if summary.rejected > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Sends one batch, waiting while the gateway's buffer is full.
async fn send(
    gw: &Gateway,
    client: &mut GatewayClient<tonic::transport::Channel>,
    source: &str,
    events: &[Box<RawValue>],
    summary: &mut Summary,
) -> anyhow::Result<()> {
    let mut data = Vec::with_capacity(events.iter().map(|e| e.get().len() + 1).sum::<usize>() + 2);
    data.push(b'[');
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            data.push(b',');
        }
        data.extend_from_slice(e.get().as_bytes());
    }
    data.push(b']');
    let data = bytes::Bytes::from(data);
    let mut backoff = Duration::from_millis(100);
    for _ in 0..30 {
        let req = gw.request(SendEventRequest {
            source: source.to_owned(),
            payload: Some(Payload::Raw(RawPayload {
                data: data.clone(),
                format: "json".into(),
            })),
        });
        match client.send_event(req).await {
            Ok(reply) => {
                let r = reply.into_inner();
                summary.accepted += u64::from(r.accepted);
                summary.dropped += u64::from(r.dropped);
                let refused = u64::from(r.rejected_total.max(r.rejected.len() as u32));
                summary.rejected += refused;
                let mut listed = 0;
                for rej in &r.rejected {
                    *summary.why.entry(rej.message.clone()).or_default() += 1;
                    listed += 1;
                }
                if refused > listed {
                    *summary
                        .why
                        .entry("(more, not listed by the gateway)".into())
                        .or_default() += refused - listed;
                }
                return Ok(());
            }
            // The buffer is full: the gateway asks to try again later.
            Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(s) if s.code() == tonic::Code::Unavailable => return Err(say(&s)),
            Err(s) => {
                // The whole request was refused (too large, a bad token).
                if matches!(
                    s.code(),
                    tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                ) {
                    return Err(say(&s));
                }
                summary.rejected += events.len() as u64;
                *summary.why.entry(s.message().to_owned()).or_default() += events.len() as u64;
                return Ok(());
            }
        }
    }
    anyhow::bail!("the gateway's buffer stayed full for about a minute; nothing more was sent")
}
