//! `polku plugins` and `polku failures`: the registered plugins, and what
//! an emitter gave up on.

use crate::{Gateway, say};
use polku_proto::v1::admin_client::AdminClient;
use polku_proto::v1::{
    DiscardFailuresRequest, EvictPluginRequest, ListFailuresRequest, ListPluginsRequest,
    ResendFailuresRequest,
};
use std::process::ExitCode;

/// `polku plugins [list | evict ID]`.
#[derive(Debug, clap::Args)]
pub(crate) struct PluginsArgs {
    #[command(subcommand)]
    action: Option<PluginsAction>,
}

#[derive(Debug, clap::Subcommand)]
enum PluginsAction {
    /// The registered plugins (the default).
    List,
    /// Removes a plugin as if it had unregistered.
    Evict {
        /// Its id, as `polku plugins` lists it.
        id: String,
    },
}

/// `polku failures list|resend|discard EMITTER`.
#[derive(Debug, clap::Args)]
pub(crate) struct FailuresArgs {
    #[command(subcommand)]
    action: FailuresAction,
}

#[derive(Debug, clap::Subcommand)]
enum FailuresAction {
    /// The failures, oldest first, as JSON lines (event, reason, retryable).
    List {
        emitter: String,
        #[arg(long, default_value_t = 0)]
        offset: u32,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Sends the oldest failures to the emitter again.
    Resend {
        emitter: String,
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// Lets every stored failure go.
    Discard { emitter: String },
}

pub(crate) async fn plugins(gw: &Gateway, args: PluginsArgs) -> anyhow::Result<ExitCode> {
    let mut client = AdminClient::new(gw.channel.clone());
    match args.action.unwrap_or(PluginsAction::List) {
        PluginsAction::List => {
            let r = client
                .list_plugins(gw.request(ListPluginsRequest {}))
                .await
                .map_err(|s| say(&s))?
                .into_inner();
            if r.plugins.is_empty() {
                crate::output::line("no plugins registered");
            } else {
                crate::output::line(format!(
                    "{:<38} {:<20} {:<9} {:<28} LAST HEARTBEAT",
                    "ID", "NAME", "KIND", "ADDRESS"
                ));
                for p in r.plugins {
                    crate::output::line(format!(
                        "{:<38} {:<20} {:<9} {:<28} {:.1}s ago",
                        p.id,
                        p.name,
                        p.kind,
                        p.address,
                        p.last_heartbeat_ms_ago as f64 / 1000.0
                    ));
                }
            }
        }
        PluginsAction::Evict { id } => {
            client
                .evict_plugin(gw.request(EvictPluginRequest { id: id.clone() }))
                .await
                .map_err(|s| say(&s))?;
            crate::output::line(format!("evicted {id}"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn failures(gw: &Gateway, args: FailuresArgs) -> anyhow::Result<ExitCode> {
    let mut client = AdminClient::new(gw.channel.clone());
    match args.action {
        FailuresAction::List {
            emitter,
            offset,
            limit,
        } => {
            let r = client
                .list_failures(gw.request(ListFailuresRequest {
                    emitter,
                    offset,
                    limit,
                }))
                .await
                .map_err(|s| say(&s))?
                .into_inner();
            for f in &r.failures {
                crate::output::line(serde_json::json!({
                    "reason": f.reason,
                    "retryable": f.retryable,
                    "failed_at_unix_ns": f.failed_at_unix_ns,
                    "event": f.event.as_ref().map(polku_core::json::event_value),
                }));
            }
            eprintln!("{} of {} stored failures", r.failures.len(), r.total);
        }
        FailuresAction::Resend { emitter, limit } => {
            let r = client
                .resend_failures(gw.request(ResendFailuresRequest { emitter, limit }))
                .await
                .map_err(|s| say(&s))?
                .into_inner();
            crate::output::line(format!("resent {}, {} still stored", r.resent, r.remaining));
        }
        FailuresAction::Discard { emitter } => {
            let r = client
                .discard_failures(gw.request(DiscardFailuresRequest { emitter }))
                .await
                .map_err(|s| say(&s))?
                .into_inner();
            crate::output::line(format!("discarded {}", r.discarded));
        }
    }
    Ok(ExitCode::SUCCESS)
}
