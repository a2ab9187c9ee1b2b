//! `polku tap`: live events at a stage, one JSON line each (or a readable
//! line with `--pretty`), with why for drops and refusals.

use crate::{Gateway, say};
use polku_proto::v1::TapRequest;
use polku_proto::v1::admin_client::AdminClient;
use std::io::Write as _;
use std::process::ExitCode;

/// What to tap.
#[derive(Debug, clap::Args)]
pub(crate) struct TapArgs {
    /// `accepted`, `rejected`, `dropped` or `emitter:NAME`.
    #[arg(long, default_value = "accepted")]
    stage: String,
    /// Only events that match: `source=...`, `event_type=...`, comma-separated.
    #[arg(long)]
    filter: Option<String>,
    /// One event in N.
    #[arg(long, default_value_t = 1)]
    sample: u32,
    /// Stop (exit 0) after this many events.
    #[arg(long)]
    limit: Option<u64>,
    /// A line for people instead of JSON.
    #[arg(long)]
    pretty: bool,
}

/// The source and event type a `--filter` asks for.
fn parse_filter(f: Option<&str>) -> anyhow::Result<(String, String)> {
    let (mut source, mut event_type) = (String::new(), String::new());
    for part in f.unwrap_or("").split(',').filter(|p| !p.trim().is_empty()) {
        match part.trim().split_once('=') {
            Some(("source", v)) => source = v.trim().to_owned(),
            Some(("event_type", v)) => event_type = v.trim().to_owned(),
            _ => anyhow::bail!(
                "bad --filter part {part:?}: expected source=... or event_type=..., comma-separated"
            ),
        }
    }
    Ok((source, event_type))
}

pub(crate) async fn run(gw: &Gateway, args: TapArgs) -> anyhow::Result<ExitCode> {
    let (source, event_type) = parse_filter(args.filter.as_deref())?;
    let mut client = AdminClient::new(gw.channel.clone());
    let mut stream = client
        .tap(gw.request(TapRequest {
            stage: args.stage,
            source,
            event_type,
            sample: args.sample,
        }))
        .await
        .map_err(|s| say(&s))?
        .into_inner();
    let mut out = std::io::stdout().lock();
    let mut seen = 0u64;
    let mut lost_told = 0u64;
    while let Some(batch) = stream.message().await.map_err(|s| say(&s))? {
        if batch.lost > lost_told {
            eprintln!(
                "polku tap: {} tap events lost so far (this tap read too slowly)",
                batch.lost
            );
            lost_told = batch.lost;
        }
        let mut lines = Vec::with_capacity(256 * batch.events.len());
        let mut n = 0;
        for msg in batch.events {
            let Some(event) = msg.event else { continue };
            if args.pretty {
                let reason = if msg.reason.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", msg.reason)
                };
                let _ = write!(
                    lines,
                    "[{}] {} {} from {}{reason}",
                    msg.stage, event.event_type, event.id, event.source
                );
            } else {
                let mut v = serde_json::json!({
                    "stage": msg.stage,
                    "event": polku_core::json::event_value(&event),
                });
                if !msg.reason.is_empty() {
                    v["reason"] = msg.reason.into();
                }
                let _ = serde_json::to_writer(&mut lines, &v);
            }
            lines.push(b'\n');
            n += 1;
            if args.limit.is_some_and(|l| seen + n >= l) {
                break;
            }
        }
        seen += n;
        if out.write_all(&lines).and_then(|()| out.flush()).is_err() {
            // The reader went away (a closed pipe): done.
            return Ok(ExitCode::SUCCESS);
        }
        if args.limit.is_some_and(|l| seen >= l) {
            return Ok(ExitCode::SUCCESS);
        }
    }
    anyhow::bail!("the gateway ended the tap (shutting down?)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_name_a_source_and_an_event_type() {
        assert_eq!(
            parse_filter(Some("source=web, event_type=order.placed")).unwrap(),
            ("web".to_owned(), "order.placed".to_owned())
        );
        assert_eq!(parse_filter(None).unwrap(), (String::new(), String::new()));
        assert!(parse_filter(Some("tenant=x")).is_err());
    }
}
