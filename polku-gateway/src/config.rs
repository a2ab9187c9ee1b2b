//! Configuration from `POLKU_*` environment variables.

use std::net::SocketAddr;
use std::time::Duration;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// How the stdout emitter writes events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StdoutMode {
    /// One JSON line per event.
    #[default]
    Json,
    /// Readable lines for people.
    Pretty,
}

/// Everything the gateway reads from its environment. `Default` gives the
/// documented defaults. Its `Debug` hides the tokens.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// `POLKU_GRPC_ADDR`: where gRPC listens. Default `0.0.0.0:50051`.
    pub grpc_addr: SocketAddr,
    /// `POLKU_HTTP_ADDR`: where HTTP listens, or `None` (`off`). Default `0.0.0.0:8080`.
    pub http_addr: Option<SocketAddr>,
    /// `POLKU_INGEST_TOKENS`: bearer tokens that may ingest (comma-separated);
    /// empty means ingestion is open. Health and metrics stay open.
    pub ingest_tokens: Vec<String>,
    /// `POLKU_PLUGIN_TOKEN`: when set, plugin registration needs this bearer
    /// token; when not, only loopback peers may register.
    pub plugin_token: Option<String>,
    /// `POLKU_PLUGIN_ALLOWED_HOSTS`: hosts a plugin address may name
    /// (comma-separated). Default `localhost,127.0.0.1,::1`.
    pub plugin_allowed_hosts: Vec<String>,
    /// `POLKU_PLUGIN_MAX`: the most plugins registered at once. Default 64.
    pub plugin_max: usize,
    /// `POLKU_PLUGIN_HEARTBEAT_INTERVAL`: how often plugins send heartbeats. Default `5s`.
    pub plugin_heartbeat_interval: Duration,
    /// `POLKU_PLUGIN_HEARTBEAT_TIMEOUT`: a plugin silent this long is removed.
    /// Default three intervals.
    pub plugin_heartbeat_timeout: Duration,
    /// `POLKU_PLUGIN_TIMEOUT`: timeout of every call to a plugin. Default `5s`.
    pub plugin_timeout: Duration,
    /// `POLKU_EMIT_STDOUT`: print events to stdout. Default: on when no
    /// other emitter is configured.
    pub emit_stdout: Option<bool>,
    /// `POLKU_EMIT_WEBHOOK_URL`: webhook URLs (comma-separated); one
    /// [`WebhookEmitter`](polku_emit::WebhookEmitter) each, named `webhook`
    /// (or `webhook-1`, `webhook-2`, ... when there are several).
    pub webhook_urls: Vec<String>,
    /// `POLKU_EMIT_WEBHOOK_HEADERS`: headers for every webhook POST,
    /// `Name: value` pairs separated by `;`.
    pub webhook_headers: Vec<(String, String)>,
    /// `POLKU_EMIT_WEBHOOK_SECRET`: sign webhook POSTs (Standard Webhooks).
    pub webhook_secret: Option<String>,
    /// `POLKU_EMIT_GRPC_ENDPOINTS`: other gateways to forward to
    /// (comma-separated `host:port`); one [`GrpcEmitter`](polku_emit::GrpcEmitter)
    /// named `grpc` over all of them.
    pub grpc_endpoints: Vec<String>,
    /// `POLKU_BUFFER_CAPACITY`: events the buffer holds. Default 10000.
    pub buffer_capacity: usize,
    /// `POLKU_BUFFER_TIMEOUT`: how long SendEvent waits for room in a full
    /// buffer before RESOURCE_EXHAUSTED. Default `5s`.
    pub buffer_timeout: Duration,
    /// `POLKU_MAX_MESSAGE_BYTES`: largest request message. Default 4 MiB.
    pub max_message_bytes: usize,
    /// `POLKU_SHUTDOWN_TIMEOUT`: how long shutdown may take to deliver what
    /// was accepted. Default `30s`.
    pub shutdown_timeout: Duration,
    /// `POLKU_LOG_LEVEL`: a tracing filter such as `info` or `polku=debug`. Default `info`.
    pub log_level: String,
    /// `POLKU_LOG_FORMAT`: `text` or `json`. Default `text`.
    pub log_format: LogFormat,
    /// `POLKU_STDOUT_FORMAT`: `json` or `pretty`. Default `json`.
    pub stdout_format: StdoutMode,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("grpc_addr", &self.grpc_addr)
            .field("http_addr", &self.http_addr)
            .field(
                "ingest_tokens",
                &format_args!("<{} hidden>", self.ingest_tokens.len()),
            )
            .field(
                "plugin_token",
                &self.plugin_token.as_ref().map(|_| "<hidden>"),
            )
            .field("plugin_allowed_hosts", &self.plugin_allowed_hosts)
            .field("plugin_max", &self.plugin_max)
            .field("plugin_heartbeat_interval", &self.plugin_heartbeat_interval)
            .field("plugin_heartbeat_timeout", &self.plugin_heartbeat_timeout)
            .field("plugin_timeout", &self.plugin_timeout)
            .field("emit_stdout", &self.emit_stdout)
            .field("webhook_urls", &self.webhook_urls)
            .field(
                "webhook_headers",
                &format_args!("<{} hidden>", self.webhook_headers.len()),
            )
            .field(
                "webhook_secret",
                &self.webhook_secret.as_ref().map(|_| "<hidden>"),
            )
            .field("grpc_endpoints", &self.grpc_endpoints)
            .field("buffer_capacity", &self.buffer_capacity)
            .field("buffer_timeout", &self.buffer_timeout)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("log_level", &self.log_level)
            .field("log_format", &self.log_format)
            .field("stdout_format", &self.stdout_format)
            .finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            grpc_addr: SocketAddr::from(([0, 0, 0, 0], 50051)),
            http_addr: Some(SocketAddr::from(([0, 0, 0, 0], 8080))),
            ingest_tokens: Vec::new(),
            plugin_token: None,
            plugin_allowed_hosts: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            plugin_max: 64,
            plugin_heartbeat_interval: Duration::from_secs(5),
            plugin_heartbeat_timeout: Duration::from_secs(15),
            plugin_timeout: Duration::from_secs(5),
            emit_stdout: None,
            webhook_urls: Vec::new(),
            webhook_headers: Vec::new(),
            webhook_secret: None,
            grpc_endpoints: Vec::new(),
            buffer_capacity: 10_000,
            buffer_timeout: Duration::from_secs(5),
            max_message_bytes: 4 * 1024 * 1024,
            shutdown_timeout: Duration::from_secs(30),
            log_level: "info".to_owned(),
            log_format: LogFormat::Text,
            stdout_format: StdoutMode::Json,
        }
    }
}

/// A `POLKU_*` variable with a value the gateway cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}={value:?} is not valid: expected {expected}")]
pub struct ConfigError {
    /// The variable's name.
    pub var: &'static str,
    /// The value it had.
    pub value: String,
    /// What it should be.
    pub expected: &'static str,
}

/// The largest buffer POLKU_BUFFER_CAPACITY allows.
pub(crate) const MAX_BUFFER_CAPACITY: usize = 100_000_000;

impl Config {
    /// The emitters the environment asks for: webhooks, other gateways, and
    /// stdout (on by default when nothing else is configured). Call it inside
    /// a tokio runtime (the gRPC emitter's connections need one).
    pub fn emitters(&self) -> Vec<std::sync::Arc<dyn polku_core::Emitter>> {
        let mut out: Vec<std::sync::Arc<dyn polku_core::Emitter>> = Vec::new();
        if !self.grpc_endpoints.is_empty() {
            // Checked when the configuration was read.
            if let Ok(g) = polku_emit::GrpcEmitter::new(&self.grpc_endpoints) {
                out.push(std::sync::Arc::new(g));
            }
        }
        let many = self.webhook_urls.len() > 1;
        for (i, url) in self.webhook_urls.iter().enumerate() {
            // Checked when the configuration was read.
            let Ok(mut w) = polku_emit::WebhookEmitter::new(url) else {
                continue;
            };
            w = w.named(if many {
                format!("webhook-{}", i + 1)
            } else {
                "webhook".to_owned()
            });
            for (n, v) in &self.webhook_headers {
                if let Ok(next) = w.clone().header(n, v) {
                    w = next;
                }
            }
            if let Some(s) = &self.webhook_secret {
                if let Ok(next) = w.clone().signing_secret(s) {
                    w = next;
                }
            }
            out.push(std::sync::Arc::new(w));
        }
        if self.emit_stdout.unwrap_or(out.is_empty()) {
            out.push(std::sync::Arc::new(match self.stdout_format {
                StdoutMode::Json => polku_emit::StdoutEmitter::new(),
                StdoutMode::Pretty => polku_emit::StdoutEmitter::pretty(),
            }));
        }
        out
    }

    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the configuration through `get` (a variable's value, if set).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut c = Config::default();
        let bad = |var: &'static str, value: &str, expected: &'static str| ConfigError {
            var,
            value: value.to_owned(),
            expected,
        };
        if let Some(v) = get("POLKU_GRPC_ADDR") {
            c.grpc_addr = v.trim().parse().map_err(|_| {
                bad(
                    "POLKU_GRPC_ADDR",
                    &v,
                    "an IP address and port, such as 0.0.0.0:50051 or [::1]:50051",
                )
            })?;
        }
        if let Some(v) = get("POLKU_HTTP_ADDR") {
            c.http_addr = if v.trim().eq_ignore_ascii_case("off") {
                None
            } else {
                Some(v.trim().parse().map_err(|_| {
                    bad(
                        "POLKU_HTTP_ADDR",
                        &v,
                        "an IP address and port, such as 0.0.0.0:8080, or off",
                    )
                })?)
            };
        }
        if let Some(v) = get("POLKU_INGEST_TOKENS") {
            let tokens: Vec<String> = v
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect();
            let printable = tokens
                .iter()
                .all(|t| t.bytes().all(|b| b.is_ascii_graphic()));
            if tokens.is_empty() || !printable {
                // Never echo the value: it holds secrets.
                return Err(ConfigError {
                    var: "POLKU_INGEST_TOKENS",
                    value: "<hidden>".to_owned(),
                    expected: "one or more tokens of printable characters, comma-separated",
                });
            }
            c.ingest_tokens = tokens;
        }
        if let Some(v) = get("POLKU_PLUGIN_TOKEN") {
            let t = v.trim();
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ConfigError {
                    var: "POLKU_PLUGIN_TOKEN",
                    value: "<hidden>".to_owned(),
                    expected: "a token of printable characters, without spaces",
                });
            }
            c.plugin_token = Some(t.to_owned());
        }
        if let Some(v) = get("POLKU_PLUGIN_ALLOWED_HOSTS") {
            let hosts: Vec<String> = v
                .split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(str::to_owned)
                .collect();
            if hosts.is_empty()
                || hosts.iter().any(|h| {
                    h.contains(['/', ' ', ':'])
                        && !h.contains("::")
                        && h.parse::<std::net::IpAddr>().is_err()
                })
            {
                return Err(bad(
                    "POLKU_PLUGIN_ALLOWED_HOSTS",
                    &v,
                    "host names or IP addresses, comma-separated, such as localhost,10.0.0.5",
                ));
            }
            c.plugin_allowed_hosts = hosts;
        }
        if let Some(v) = get("POLKU_PLUGIN_MAX") {
            c.plugin_max = v
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=10_000).contains(n))
                .ok_or_else(|| {
                    bad(
                        "POLKU_PLUGIN_MAX",
                        &v,
                        "a number of plugins from 1 to 10000",
                    )
                })?;
        }
        let mut timeout_set = false;
        if let Some(v) = get("POLKU_PLUGIN_HEARTBEAT_INTERVAL") {
            c.plugin_heartbeat_interval =
                parse_duration(&v).filter(|d| !d.is_zero()).ok_or_else(|| {
                    bad(
                        "POLKU_PLUGIN_HEARTBEAT_INTERVAL",
                        &v,
                        "a duration such as 5s or 500ms",
                    )
                })?;
        }
        if let Some(v) = get("POLKU_PLUGIN_HEARTBEAT_TIMEOUT") {
            c.plugin_heartbeat_timeout =
                parse_duration(&v).filter(|d| !d.is_zero()).ok_or_else(|| {
                    bad(
                        "POLKU_PLUGIN_HEARTBEAT_TIMEOUT",
                        &v,
                        "a duration such as 15s",
                    )
                })?;
            timeout_set = true;
        }
        if !timeout_set {
            c.plugin_heartbeat_timeout = c.plugin_heartbeat_interval * 3;
        }
        if c.plugin_heartbeat_timeout <= c.plugin_heartbeat_interval {
            return Err(ConfigError {
                var: "POLKU_PLUGIN_HEARTBEAT_TIMEOUT",
                value: format!("{:?}", c.plugin_heartbeat_timeout),
                expected: "a duration longer than POLKU_PLUGIN_HEARTBEAT_INTERVAL",
            });
        }
        if let Some(v) = get("POLKU_PLUGIN_TIMEOUT") {
            c.plugin_timeout = parse_duration(&v)
                .filter(|d| !d.is_zero())
                .ok_or_else(|| bad("POLKU_PLUGIN_TIMEOUT", &v, "a duration such as 5s or 500ms"))?;
        }
        if let Some(v) = get("POLKU_EMIT_STDOUT") {
            c.emit_stdout = Some(match v.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "on" | "yes" => true,
                "0" | "false" | "off" | "no" => false,
                _ => return Err(bad("POLKU_EMIT_STDOUT", &v, "on or off")),
            });
        }
        if let Some(v) = get("POLKU_EMIT_WEBHOOK_URL") {
            c.webhook_urls = v
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect();
            if c.webhook_urls.is_empty()
                || c.webhook_urls
                    .iter()
                    .any(|u| polku_emit::WebhookEmitter::new(u).is_err())
            {
                return Err(bad(
                    "POLKU_EMIT_WEBHOOK_URL",
                    &v,
                    "one or more http(s) URLs, comma-separated",
                ));
            }
        }
        if let Some(v) = get("POLKU_EMIT_GRPC_ENDPOINTS") {
            c.grpc_endpoints = v
                .split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(str::to_owned)
                .collect();
            if c.grpc_endpoints.is_empty()
                || c.grpc_endpoints
                    .iter()
                    .any(|e| polku_core::address::normalize_address(e).is_err())
            {
                return Err(bad(
                    "POLKU_EMIT_GRPC_ENDPOINTS",
                    &v,
                    "host:port endpoints (http:// optional), comma-separated",
                ));
            }
        }
        if let Some(v) = get("POLKU_EMIT_WEBHOOK_HEADERS") {
            let mut headers = Vec::new();
            for pair in v.split(';').map(str::trim).filter(|p| !p.is_empty()) {
                let ok = pair.split_once(':').filter(|(n, _)| !n.trim().is_empty());
                let Some((name, value)) = ok else {
                    return Err(ConfigError {
                        var: "POLKU_EMIT_WEBHOOK_HEADERS",
                        value: "<hidden>".to_owned(),
                        expected: "`Name: value` pairs separated by `;`",
                    });
                };
                headers.push((name.trim().to_owned(), value.trim().to_owned()));
            }
            let probe = headers.iter().try_fold(
                polku_emit::WebhookEmitter::new("http://127.0.0.1/").map_err(|_| ()),
                |w, (n, val)| Ok::<_, ()>(w.and_then(|w| w.header(n, val).map_err(|_| ()))),
            );
            if !matches!(probe, Ok(Ok(_))) {
                return Err(ConfigError {
                    var: "POLKU_EMIT_WEBHOOK_HEADERS",
                    value: "<hidden>".to_owned(),
                    expected: "valid header names and values, `Name: value` pairs separated by `;`",
                });
            }
            c.webhook_headers = headers;
        }
        if let Some(v) = get("POLKU_EMIT_WEBHOOK_SECRET") {
            let usable = polku_emit::WebhookEmitter::new("http://127.0.0.1/")
                .ok()
                .and_then(|w| w.signing_secret(v.trim()).ok())
                .is_some();
            if !usable {
                return Err(ConfigError {
                    var: "POLKU_EMIT_WEBHOOK_SECRET",
                    value: "<hidden>".to_owned(),
                    expected: "a non-empty secret, or whsec_<base64>",
                });
            }
            c.webhook_secret = Some(v.trim().to_owned());
        }
        if let Some(v) = get("POLKU_BUFFER_CAPACITY") {
            c.buffer_capacity = v
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_BUFFER_CAPACITY).contains(n))
                .ok_or_else(|| {
                    bad(
                        "POLKU_BUFFER_CAPACITY",
                        &v,
                        "a whole number of events from 1 to 100000000",
                    )
                })?;
        }
        if let Some(v) = get("POLKU_BUFFER_TIMEOUT") {
            c.buffer_timeout = parse_duration(&v).ok_or_else(|| {
                bad(
                    "POLKU_BUFFER_TIMEOUT",
                    &v,
                    "a duration such as 5s, 500ms or 1m",
                )
            })?;
        }
        if let Some(v) = get("POLKU_MAX_MESSAGE_BYTES") {
            c.max_message_bytes = v
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1024..=1 << 30).contains(n))
                .ok_or_else(|| {
                    bad(
                        "POLKU_MAX_MESSAGE_BYTES",
                        &v,
                        "a number of bytes from 1024 to 1073741824",
                    )
                })?;
        }
        if let Some(v) = get("POLKU_SHUTDOWN_TIMEOUT") {
            c.shutdown_timeout = parse_duration(&v).ok_or_else(|| {
                bad(
                    "POLKU_SHUTDOWN_TIMEOUT",
                    &v,
                    "a duration such as 30s, 500ms or 1m",
                )
            })?;
        }
        if let Some(v) = get("POLKU_LOG_LEVEL") {
            let ok =
                !v.trim().is_empty() && tracing_subscriber::EnvFilter::try_new(v.trim()).is_ok();
            if !ok {
                return Err(bad(
                    "POLKU_LOG_LEVEL",
                    &v,
                    "a level (error, warn, info, debug, trace) or a filter such as polku=debug",
                ));
            }
            c.log_level = v.trim().to_owned();
        }
        if let Some(v) = get("POLKU_LOG_FORMAT") {
            c.log_format = match v.trim().to_ascii_lowercase().as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                _ => return Err(bad("POLKU_LOG_FORMAT", &v, "text or json")),
            };
        }
        if let Some(v) = get("POLKU_STDOUT_FORMAT") {
            c.stdout_format = match v.trim().to_ascii_lowercase().as_str() {
                "json" => StdoutMode::Json,
                "pretty" => StdoutMode::Pretty,
                _ => return Err(bad("POLKU_STDOUT_FORMAT", &v, "json or pretty")),
            };
        }
        Ok(c)
    }
}

/// `250ms`, `5s`, `2m`, `1h`, or a plain number of seconds.
fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    Some(match unit.trim() {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn defaults_match_the_readme() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.grpc_addr.to_string(), "0.0.0.0:50051");
        assert_eq!(c.buffer_capacity, 10_000);
        assert_eq!(c.log_level, "info");
        assert_eq!(c.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(c.max_message_bytes, 4 << 20);
    }

    #[test]
    fn values_are_read() {
        let c = cfg(&[
            ("POLKU_GRPC_ADDR", "127.0.0.1:6000"),
            ("POLKU_BUFFER_CAPACITY", "42"),
            ("POLKU_BUFFER_TIMEOUT", "250ms"),
            ("POLKU_SHUTDOWN_TIMEOUT", "2m"),
            ("POLKU_LOG_LEVEL", "polku=debug,warn"),
            ("POLKU_LOG_FORMAT", "JSON"),
            ("POLKU_STDOUT_FORMAT", "pretty"),
            ("POLKU_MAX_MESSAGE_BYTES", "65536"),
        ])
        .unwrap();
        assert_eq!(c.grpc_addr.port(), 6000);
        assert_eq!(c.buffer_capacity, 42);
        assert_eq!(c.buffer_timeout, Duration::from_millis(250));
        assert_eq!(c.shutdown_timeout, Duration::from_secs(120));
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.stdout_format, StdoutMode::Pretty);
        assert_eq!(c.max_message_bytes, 65536);
    }

    #[test]
    fn emitters_from_the_environment() {
        let names = |c: &Config| {
            c.emitters()
                .iter()
                .map(|e| e.name().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&cfg(&[]).unwrap()), ["stdout"], "stdout by default");
        let one = cfg(&[("POLKU_EMIT_WEBHOOK_URL", "http://127.0.0.1:9/h")]).unwrap();
        assert_eq!(
            names(&one),
            ["webhook"],
            "stdout off once another emitter is set"
        );
        let two = cfg(&[
            (
                "POLKU_EMIT_WEBHOOK_URL",
                "http://a.invalid/1, http://b.invalid/2",
            ),
            ("POLKU_EMIT_STDOUT", "on"),
            (
                "POLKU_EMIT_WEBHOOK_HEADERS",
                "Authorization: Bearer x; X-Team: core",
            ),
        ])
        .unwrap();
        assert_eq!(names(&two), ["webhook-1", "webhook-2", "stdout"]);
        assert_eq!(
            two.webhook_headers[1],
            ("X-Team".to_owned(), "core".to_owned())
        );
        assert!(
            !format!("{two:?}").contains("Bearer x"),
            "headers hidden in Debug"
        );
    }

    #[test]
    fn bad_values_name_the_variable_and_what_it_expects() {
        for (var, value) in [
            ("POLKU_GRPC_ADDR", "localhost"),
            ("POLKU_BUFFER_CAPACITY", "0"),
            ("POLKU_BUFFER_CAPACITY", "lots"),
            ("POLKU_BUFFER_TIMEOUT", "5 parsecs"),
            ("POLKU_SHUTDOWN_TIMEOUT", "-1s"),
            ("POLKU_LOG_LEVEL", "info,[broken"),
            ("POLKU_LOG_FORMAT", "xml"),
            ("POLKU_STDOUT_FORMAT", "yaml"),
            ("POLKU_MAX_MESSAGE_BYTES", "1"),
            ("POLKU_EMIT_STDOUT", "maybe"),
            ("POLKU_EMIT_WEBHOOK_URL", "ftp://x/y"),
            ("POLKU_EMIT_WEBHOOK_HEADERS", "no colon here"),
            ("POLKU_EMIT_WEBHOOK_SECRET", "whsec_!!!"),
            ("POLKU_EMIT_GRPC_ENDPOINTS", "no-port-here"),
            ("POLKU_PLUGIN_MAX", "0"),
            ("POLKU_PLUGIN_HEARTBEAT_INTERVAL", "never"),
        ] {
            let err = cfg(&[(var, value)]).unwrap_err();
            assert_eq!(err.var, var);
            let msg = err.to_string();
            assert!(msg.starts_with(&format!("{var}=")), "{msg}");
            assert!(msg.contains("expected"), "{msg}");
        }
    }
}
