//! `polku top`: a live view of the gateway, refreshed every interval:
//! events in and out per second, per stage and per emitter, drops by
//! reason, refusals, the buffer's fill, breakers, failure stores, plugins
//! and their last heartbeat. `--once` prints one snapshot, for scripts.

use crate::{Gateway, say};
use crossterm::event::{self, Event, KeyCode, KeyModifiers};
use crossterm::{cursor, execute, terminal};
use polku_proto::v1::StatsReply;
use polku_proto::v1::StatsRequest;
use polku_proto::v1::admin_client::AdminClient;
use std::fmt::Write as _;
use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;
use std::time::Duration;

/// How to watch.
#[derive(Debug, clap::Args)]
pub(crate) struct TopArgs {
    /// Print one snapshot and exit.
    #[arg(long)]
    once: bool,
    /// How often the view refreshes, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
}

pub(crate) async fn run(gw: &Gateway, args: TopArgs) -> anyhow::Result<ExitCode> {
    let mut client = AdminClient::new(gw.channel.clone());
    let mut fetch = async || {
        client
            .stats(gw.request(StatsRequest {}))
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| say(&s))
    };
    let first = fetch().await?;
    if args.once {
        crate::output::text(&render(&gw.address, None, &first, "\n"));
        return Ok(ExitCode::SUCCESS);
    }
    let every = Duration::from_millis(args.interval_ms.max(50));
    let mut out = std::io::stdout();
    let live = out.is_terminal() && terminal::enable_raw_mode().is_ok();
    if live {
        execute!(out, terminal::EnterAlternateScreen, cursor::Hide)?;
    }
    let mut prev = first;
    let result = async {
        loop {
            if live {
                // Also the wait: a key ends the view.
                if event::poll(every)?
                    && let Event::Key(k) = event::read()?
                    && (k.code == KeyCode::Char('q')
                        || k.code == KeyCode::Esc
                        || (k.code == KeyCode::Char('c')
                            && k.modifiers.contains(KeyModifiers::CONTROL)))
                {
                    return Ok(());
                }
            } else {
                tokio::time::sleep(every).await;
            }
            let now = fetch().await?;
            let screen = render(
                &gw.address,
                Some(&prev),
                &now,
                if live { "\r\n" } else { "\n" },
            );
            if live {
                execute!(
                    out,
                    cursor::MoveTo(0, 0),
                    terminal::Clear(terminal::ClearType::All)
                )?;
                out.write_all(screen.as_bytes())?;
            } else {
                out.write_all(screen.as_bytes())?;
                out.write_all(b"\n")?;
            }
            out.flush()?;
            prev = now;
        }
    }
    .await;
    if live {
        let _ = execute!(out, cursor::Show, terminal::LeaveAlternateScreen);
        let _ = terminal::disable_raw_mode();
    }
    result.map(|()| ExitCode::SUCCESS)
}

/// Per second between two snapshots.
fn rate(prev: Option<&StatsReply>, now: &StatsReply, f: impl Fn(&StatsReply) -> u64) -> String {
    let Some(p) = prev else {
        return "-".into();
    };
    let secs = (now.unix_ns - p.unix_ns) as f64 / 1e9;
    if secs <= 0.0 {
        return "-".into();
    }
    format!("{:.0}/s", f(now).saturating_sub(f(p)) as f64 / secs)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

/// One screen, lines ending with `nl`.
fn render(address: &str, prev: Option<&StatsReply>, s: &StatsReply, nl: &str) -> String {
    let mut o = String::new();
    let t = polku_core::time::UtcTime::from_unix_ns(s.unix_ns);
    let rejected: u64 = s.rejected.values().sum();
    let _ = write!(
        o,
        "POLKU {address}  {:02}:{:02}:{:02} UTC{}{nl}{nl}",
        t.hour,
        t.minute,
        t.second,
        if prev.is_some() { "  (q quits)" } else { "" }
    );
    let _ = write!(
        o,
        "IN       received {} ({})  accepted {} ({})  dropped {}  rejected {}{nl}",
        s.received,
        rate(prev, s, |x| x.received),
        s.accepted,
        rate(prev, s, |x| x.accepted),
        s.dropped,
        rejected
    );
    let _ = write!(
        o,
        "BUFFER   {} / {} events   {} / {}{nl}{nl}",
        s.buffer_events,
        s.buffer_capacity,
        mib(s.buffer_bytes),
        mib(s.buffer_max_bytes)
    );
    let _ = write!(
        o,
        "{:<20} {:>10} {:>12} {:>8} {:>8} {:<10} {:>8} {:>8}{nl}",
        "EMITTER", "OUT", "EMITTED", "FAILED", "QUEUED", "BREAKER", "RETRIES", "STORED"
    );
    for e in &s.emitters {
        let name = e.name.clone();
        let out = rate(prev, s, |x| {
            x.emitters
                .iter()
                .find(|y| y.name == name)
                .map_or(0, |y| y.emitted)
        });
        let _ = write!(
            o,
            "{:<20} {:>10} {:>12} {:>8} {:>8} {:<10} {:>8} {:>8}{nl}",
            e.name,
            out,
            e.emitted,
            e.failed,
            e.queued,
            if e.breaker.is_empty() {
                "-"
            } else {
                &e.breaker
            },
            e.retries,
            e.failure_store_events
        );
    }
    if !s.dropped_by.is_empty() {
        let _ = write!(o, "{nl}DROPPED ");
        for (why, n) in &s.dropped_by {
            let _ = write!(o, "  {why} {n}");
        }
        o.push_str(nl);
    }
    if rejected > 0 {
        let _ = write!(o, "{nl}REJECTED");
        for (why, n) in s.rejected.iter().filter(|(_, n)| **n > 0) {
            let _ = write!(o, "  {why} {n}");
        }
        o.push_str(nl);
    }
    let _ = write!(o, "{nl}PLUGINS  {}{nl}", s.plugins.len());
    for p in &s.plugins {
        let _ = write!(
            o,
            "  {:<20} {:<9} {:<28} heartbeat {:.1}s ago  ({}){nl}",
            p.name,
            p.kind,
            p.address,
            p.last_heartbeat_ms_ago as f64 / 1000.0,
            p.id
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use polku_proto::v1::EmitterStats;

    #[test]
    fn a_screen_shows_rates_emitters_and_refusals() {
        let at = |secs: i64, received: u64, emitted: u64| StatsReply {
            unix_ns: secs * 1_000_000_000,
            received,
            accepted: received,
            rejected: [("buffer_full".to_owned(), 3)].into_iter().collect(),
            emitters: vec![EmitterStats {
                name: "stdout".into(),
                emitted,
                ..Default::default()
            }],
            ..Default::default()
        };
        let (a, b) = (at(100, 1000, 900), at(102, 3000, 2900));
        let screen = render("http://127.0.0.1:50051", Some(&a), &b, "\n");
        assert!(screen.contains("received 3000 (1000/s)"), "{screen}");
        assert!(screen.contains("stdout"), "{screen}");
        assert!(screen.contains("1000/s"), "{screen}");
        assert!(screen.contains("buffer_full 3"), "{screen}");
        let once = render("x", None, &b, "\n");
        assert!(once.contains("received 3000 (-)"), "{once}");
    }
}
