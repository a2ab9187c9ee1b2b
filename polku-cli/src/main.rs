//! `polku`: the command for the people who run a POLKU gateway. It talks to
//! the gateway's gRPC port: the admin service (`polku.v1.Admin`) for `tap`,
//! `top`, `plugins` and `failures`, and the ingestion service for `send`.
//!
//! ```text
//! polku tap --stage dropped --limit 10
//! polku top
//! polku send events.jsonl
//! polku failures list webhook
//! ```

mod admin;
mod output;
mod send;
mod tap;
mod top;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

/// Watch and drive a running POLKU gateway.
#[derive(Debug, Parser)]
#[command(name = "polku", version, about)]
struct Cli {
    /// The gateway's gRPC address (HOST:PORT, or a URL; https:// for TLS).
    #[arg(
        long,
        env = "POLKU_GATEWAY",
        default_value = "127.0.0.1:50051",
        global = true
    )]
    gateway: String,
    /// A bearer token: the admin token for tap, top, plugins and failures,
    /// an ingest token for send.
    #[arg(long, env = "POLKU_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// The CA certificate that signed the gateway's (PEM); turns on TLS.
    #[arg(long, global = true)]
    cacert: Option<PathBuf>,
    /// A client certificate (PEM), with --key, for gateways that ask for one.
    #[arg(long, global = true)]
    cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, global = true)]
    key: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Live events at a stage, as JSON lines.
    Tap(tap::TapArgs),
    /// A live view of the gateway: rates, drops, buffer, emitters, plugins.
    Top(top::TopArgs),
    /// Send events (JSON lines or arrays) from files or stdin.
    Send(send::SendArgs),
    /// List registered plugins, or evict one.
    Plugins(admin::PluginsArgs),
    /// An emitter's failure store: list, resend, discard.
    Failures(admin::FailuresArgs),
}

/// A connection to the gateway, and the token each call carries.
#[derive(Debug, Clone)]
pub(crate) struct Gateway {
    pub(crate) channel: Channel,
    token: Option<MetadataValue<tonic::metadata::Ascii>>,
    pub(crate) address: String,
}

impl Gateway {
    /// `req` with the token, if any.
    pub(crate) fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        if let Some(t) = &self.token {
            req.metadata_mut().insert("authorization", t.clone());
        }
        req
    }
}

async fn connect(cli: &Cli) -> anyhow::Result<Gateway> {
    let tls = polku_proto::tls::ClientTls::from_files(
        polku_proto::tls::ClientTlsVars {
            ca: "--cacert",
            cert: "--cert",
            key: "--key",
        },
        cli.cacert.as_deref(),
        cli.cert.as_deref(),
        cli.key.as_deref(),
    )?;
    let address = if cli.gateway.contains("://") {
        cli.gateway.clone()
    } else if tls.is_configured() {
        format!("https://{}", cli.gateway)
    } else {
        format!("http://{}", cli.gateway)
    };
    if tls.is_configured() && !tls.has_identity() {
        let _ = HANG_UP_HINT
            .set("the gateway hung up: if it asks for client certificates, give --cert and --key");
    }
    let endpoint = tls
        .endpoint(&address)
        .with_context(|| format!("bad gateway address {address:?}"))?
        .connect_timeout(Duration::from_secs(5));
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot reach the gateway at {address}"))?;
    let token = cli
        .token
        .as_deref()
        .map(|t| format!("Bearer {t}").parse())
        .transpose()
        .context("the token must be printable ASCII")?;
    Ok(Gateway {
        channel,
        token,
        address,
    })
}

/// What to add when the gateway drops a call: set when TLS is on without a
/// client certificate, the likeliest reason a gateway hangs up.
static HANG_UP_HINT: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

/// A gRPC error as a person reads it.
pub(crate) fn say(status: &tonic::Status) -> anyhow::Error {
    let hint = match (status.code(), HANG_UP_HINT.get()) {
        (tonic::Code::Cancelled | tonic::Code::Unavailable | tonic::Code::Unknown, Some(h)) => {
            format!(" ({h})")
        }
        _ => String::new(),
    };
    anyhow::anyhow!("{:?}: {}{hint}", status.code(), status.message())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("polku: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        let gw = connect(&cli).await?;
        match cli.command {
            Command::Tap(a) => tap::run(&gw, a).await,
            Command::Top(a) => top::run(&gw, a).await,
            Command::Send(a) => send::run(&gw, a).await,
            Command::Plugins(a) => admin::plugins(&gw, a).await,
            Command::Failures(a) => admin::failures(&gw, a).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("polku: {e:#}");
            ExitCode::FAILURE
        }
    }
}
