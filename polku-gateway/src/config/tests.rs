//! The configuration read from the environment: defaults, values, errors.

use super::*;
use std::collections::HashMap;
use std::time::Duration;

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
    assert_eq!(c.listen.grpc_addr.to_string(), "0.0.0.0:50051");
    assert_eq!(c.buffer.capacity, 10_000);
    assert_eq!(c.log.level, "info");
    assert_eq!(c.runtime.shutdown_timeout, Duration::from_secs(30));
    assert_eq!(c.limits.max_message_bytes, 4 << 20);
    assert_eq!(c.runtime.worker_threads, None, "one per CPU");
    assert_eq!(c.runtime.scheduler, Scheduler::WorkStealing);
    assert!(c.access.trust_loopback);
    assert_eq!(c.buffer.dir, None, "memory unless told");
    assert_eq!(c.buffer.max_disk_bytes, 1 << 30);
    assert_eq!(c.buffer.cursor_interval, Duration::from_millis(100));
    assert_eq!(c.buffer.sync_interval, None, "acknowledged after the sync");
}

#[test]
fn kafka_emitter_settings_are_read_and_checked() {
    let c = cfg(&[
        ("POLKU_EMIT_KAFKA_BROKERS", "127.0.0.1:9092, 127.0.0.1:9093"),
        ("POLKU_EMIT_KAFKA_TOPIC", "events-{source}"),
        ("POLKU_EMIT_KAFKA_KEY", "metadata.tenant"),
        ("POLKU_EMIT_KAFKA_FORMAT", "protobuf"),
        ("POLKU_EMIT_KAFKA_IN_FLIGHT", "3"),
        (
            "POLKU_EMIT_KAFKA_OPTIONS",
            "security.protocol=SASL_PLAINTEXT; sasl.mechanism=PLAIN; sasl.username=u; sasl.password=hunter2",
        ),
    ])
    .unwrap();
    let k = &c.emit.kafka;
    assert_eq!(k.brokers, ["127.0.0.1:9092", "127.0.0.1:9093"]);
    assert_eq!(k.topic, "events-{source}");
    assert_eq!(k.key, polku_emit::KafkaKey::Metadata("tenant".into()));
    assert_eq!(k.format, polku_emit::KafkaFormat::Protobuf);
    assert_eq!(k.options[3].0, "sasl.password");
    assert!(
        !format!("{c:?}").contains("hunter2"),
        "the password is never shown"
    );
    let emitters = c.emitters().unwrap();
    let names: Vec<&str> = emitters.iter().map(|(e, _)| e.name()).collect();
    assert_eq!(names, ["kafka"], "Kafka alone: no stdout");
    assert_eq!(emitters[0].1.in_flight, 3, "calls under way at once");

    // What the client refuses is refused at start-up, naming the key only.
    let err = cfg(&[
        ("POLKU_EMIT_KAFKA_BROKERS", "127.0.0.1:9092"),
        (
            "POLKU_EMIT_KAFKA_OPTIONS",
            "sasl.password=hunter2;no.such.thing=1",
        ),
    ])
    .unwrap_err();
    assert_eq!(err.var, "POLKU_EMIT_KAFKA_OPTIONS");
    assert_eq!(err.value, "no.such.thing=<hidden>");
    assert!(!err.to_string().contains("hunter2"), "{err}");
    let err = cfg(&[
        ("POLKU_EMIT_KAFKA_BROKERS", "127.0.0.1:9092"),
        ("POLKU_EMIT_KAFKA_TOPIC", "{tenant}"),
    ])
    .unwrap_err();
    assert_eq!(err.var, "POLKU_EMIT_KAFKA_TOPIC");
    let err = cfg(&[("POLKU_EMIT_KAFKA_OPTIONS", "no equals sign")]).unwrap_err();
    assert_eq!(
        (err.var, err.value.as_str()),
        ("POLKU_EMIT_KAFKA_OPTIONS", "<hidden>")
    );
}

#[test]
fn s3_emitter_settings_are_read_and_checked() {
    let c = cfg(&[
        ("POLKU_EMIT_S3_BUCKET", " events "),
        ("POLKU_EMIT_S3_ENDPOINT", "http://127.0.0.1:9000"),
        ("POLKU_EMIT_S3_REGION", "eu-north-1"),
        ("POLKU_EMIT_S3_PREFIX", "raw/{source}/{yyyy}/{mm}/{dd}/"),
        ("POLKU_EMIT_S3_COMPRESSION", "zstd"),
        ("POLKU_EMIT_S3_MAX_EVENTS", "5000"),
        ("POLKU_EMIT_S3_MAX_BYTES", "1048576"),
        ("POLKU_EMIT_S3_MAX_AGE", "15s"),
    ])
    .unwrap();
    let s = &c.emit.s3;
    assert_eq!(s.bucket.as_deref(), Some("events"));
    assert_eq!(s.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
    assert_eq!(s.region.as_deref(), Some("eu-north-1"));
    assert_eq!(s.prefix, "raw/{source}/{yyyy}/{mm}/{dd}/");
    assert_eq!(s.compression, polku_emit::S3Compression::Zstd);
    assert_eq!((s.max_events, s.max_bytes), (5000, 1 << 20));
    assert_eq!(s.max_age, Duration::from_secs(15));
    let emitters = c.emitters().unwrap();
    let names: Vec<&str> = emitters.iter().map(|(e, _)| e.name()).collect();
    assert_eq!(names, ["s3"], "S3 alone: no stdout");
    assert_eq!(emitters[0].1.in_flight, 0, "as many calls as it asks for");
    assert_eq!(emitters[0].0.calls_at_once(), 1024);

    for (var, value, expected) in [
        ("POLKU_EMIT_S3_PREFIX", "{region}/", "{yyyy}"),
        ("POLKU_EMIT_S3_COMPRESSION", "brotli", "gzip, zstd or none"),
        ("POLKU_EMIT_S3_ENDPOINT", "127.0.0.1:9000", "http://"),
        ("POLKU_EMIT_S3_MAX_AGE", "0s", "above zero"),
        ("POLKU_EMIT_S3_BUCKET", " ", "a bucket name"),
    ] {
        let mut vars = vec![(var, value)];
        if var != "POLKU_EMIT_S3_BUCKET" {
            vars.push(("POLKU_EMIT_S3_BUCKET", "events"));
        }
        let err = cfg(&vars).unwrap_err();
        assert_eq!(err.var, var, "{err}");
        assert!(err.to_string().contains(expected), "{err}");
    }
}

#[test]
fn durable_buffer_settings_are_read() {
    let c = cfg(&[
        ("POLKU_BUFFER_DIR", "/var/lib/polku"),
        ("POLKU_BUFFER_MAX_DISK_BYTES", "1048576"),
        ("POLKU_BUFFER_CURSOR_INTERVAL", "1s"),
        ("POLKU_BUFFER_SYNC_INTERVAL", "50ms"),
    ])
    .unwrap();
    assert_eq!(
        c.buffer.dir.as_deref(),
        Some(std::path::Path::new("/var/lib/polku"))
    );
    assert_eq!(c.buffer.max_disk_bytes, 1 << 20);
    assert_eq!(c.buffer.cursor_interval, Duration::from_secs(1));
    assert_eq!(c.buffer.sync_interval, Some(Duration::from_millis(50)));
    let off = cfg(&[("POLKU_BUFFER_SYNC_INTERVAL", "0")]).unwrap();
    assert_eq!(
        off.buffer.sync_interval, None,
        "0 is the default: sync first"
    );
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
        ("POLKU_WORKER_THREADS", "3"),
        ("POLKU_SCHEDULER", "Single-Thread"),
    ])
    .unwrap();
    assert_eq!(c.runtime.worker_threads, Some(3));
    assert_eq!(c.runtime.scheduler, Scheduler::SingleThread);
    assert_eq!(c.listen.grpc_addr.port(), 6000);
    assert_eq!(c.buffer.capacity, 42);
    assert_eq!(c.buffer.timeout, Duration::from_millis(250));
    assert_eq!(c.runtime.shutdown_timeout, Duration::from_secs(120));
    assert_eq!(c.log.format, LogFormat::Json);
    assert_eq!(c.emit.stdout_format, StdoutMode::Pretty);
    assert_eq!(c.limits.max_message_bytes, 65536);
}

#[test]
fn emitters_from_the_environment() {
    let names = |c: &Config| {
        c.emitters()
            .unwrap()
            .iter()
            .map(|(e, _)| e.name().to_owned())
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
    let null = cfg(&[("POLKU_EMIT_NULL", "on")]).unwrap();
    assert_eq!(names(&null), ["null"], "null alone: no stdout");
    assert_eq!(
        two.emit.webhook.headers[1],
        ("X-Team".to_owned(), Secret::new("core"))
    );
    assert!(
        !format!("{two:?}").contains("Bearer x"),
        "headers hidden in Debug"
    );
}

/// How the gateway runs the configured emitter named `name`.
fn options_of(emitters: &[ConfiguredEmitter], name: &str) -> crate::EmitterOptions {
    emitters
        .iter()
        .find(|(e, _)| e.name() == name)
        .unwrap_or_else(|| panic!("no emitter {name}"))
        .1
}

#[tokio::test]
async fn round_trip_emitters_take_the_batches_already_queued_in_one_call() {
    let c = cfg(&[
        ("POLKU_EMIT_WEBHOOK_URL", "http://127.0.0.1:9/h"),
        ("POLKU_EMIT_WEBHOOK_BATCH_SIZE", "200"),
        ("POLKU_EMIT_GRPC_ENDPOINTS", "127.0.0.1:9"),
        ("POLKU_EMIT_STDOUT", "on"),
    ])
    .unwrap();
    let gathers = |max_events| {
        Some(crate::Linger {
            max_wait: Duration::ZERO,
            max_events,
        })
    };
    let emitters = c.emitters().unwrap();
    let linger = |name: &str| options_of(&emitters, name).linger;
    assert_eq!(linger("grpc"), gathers(1000));
    assert_eq!(
        linger("webhook"),
        gathers(200),
        "up to a POST's size, no wait"
    );
    assert_eq!(linger("stdout"), None, "stdout asks for its own");
    assert_eq!(c.plugin_emitter_options().linger, gathers(1000));
    let in_flight = |name: &str| options_of(&emitters, name).in_flight;
    assert_eq!(
        (in_flight("webhook"), in_flight("grpc")),
        (1, 1),
        "in order by default"
    );
    let stdout = &emitters
        .iter()
        .find(|(e, _)| e.name() == "stdout")
        .unwrap()
        .0;
    assert_eq!(
        (stdout.calls_at_once(), stdout.gathers_up_to()),
        (4, Some(1000)),
        "a few calls wait for a write while the next ones gather what is queued"
    );

    let c = cfg(&[
        ("POLKU_EMIT_WEBHOOK_URL", "http://127.0.0.1:9/h"),
        ("POLKU_EMIT_WEBHOOK_IN_FLIGHT", "4"),
        ("POLKU_EMIT_GRPC_ENDPOINTS", "127.0.0.1:9"),
        ("POLKU_EMIT_GRPC_IN_FLIGHT", "8"),
    ])
    .unwrap();
    let emitters = c.emitters().unwrap();
    let in_flight = |name: &str| options_of(&emitters, name).in_flight;
    assert_eq!((in_flight("webhook"), in_flight("grpc")), (4, 8));
    for var in ["POLKU_EMIT_WEBHOOK_IN_FLIGHT", "POLKU_EMIT_GRPC_IN_FLIGHT"] {
        let err = cfg(&[(var, "0")]).unwrap_err().to_string();
        assert!(err.contains(var) && err.contains("from 1 to 1024"), "{err}");
    }
}

#[test]
fn bad_values_name_the_variable_and_what_it_expects() {
    for (var, value) in [
        ("POLKU_GRPC_ADDR", "localhost"),
        ("POLKU_BUFFER_CAPACITY", "0"),
        ("POLKU_BUFFER_CAPACITY", "lots"),
        ("POLKU_BUFFER_TIMEOUT", "5 parsecs"),
        ("POLKU_BUFFER_MAX_DISK_BYTES", "1000"),
        ("POLKU_BUFFER_SYNC_INTERVAL", "soon"),
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
        ("POLKU_EMIT_KAFKA_BROKERS", "no-port-here"),
        ("POLKU_EMIT_KAFKA_KEY", "partition"),
        ("POLKU_EMIT_KAFKA_FORMAT", "avro"),
        ("POLKU_EMIT_KAFKA_IN_FLIGHT", "0"),
        ("POLKU_PLUGIN_MAX", "0"),
        ("POLKU_PLUGIN_HEARTBEAT_INTERVAL", "never"),
        ("POLKU_EMIT_TIMEOUT", "0s"),
        ("POLKU_EMIT_RETRY_MAX_ATTEMPTS", "0"),
        ("POLKU_EMIT_RETRY_MAX_AGE", "forever"),
        ("POLKU_EMIT_RETRY_BACKOFF", "0ms"),
        ("POLKU_EMIT_RETRY_MAX_BACKOFF", "1ms"),
        ("POLKU_EMIT_BREAKER_FAILURES", "-1"),
        ("POLKU_EMIT_BREAKER_COOLDOWN", "0s"),
        ("POLKU_EMIT_FAILURE_STORE_EVENTS", "many"),
        ("POLKU_EMIT_FAILURE_STORE_BYTES", "0"),
        ("POLKU_EMIT_QUEUE_FULL", "drop_random"),
        ("POLKU_EMIT_QUEUE_MAX_EVENTS", "0"),
        ("POLKU_EMIT_WEBHOOK_BATCH_SIZE", "0"),
        ("POLKU_EMIT_WEBHOOK_LINGER", "soon"),
        ("POLKU_ADMIN_TOKEN", " "),
        ("POLKU_MAX_EVENTS_PER_REQUEST", "0"),
        ("POLKU_MAX_ID_BYTES", "8"),
        ("POLKU_MAX_SOURCE_BYTES", "0"),
        ("POLKU_MAX_EVENT_TYPE_BYTES", "100000"),
        ("POLKU_MAX_ROUTES", "none"),
        ("POLKU_MAX_METADATA_ENTRIES", "lots"),
        ("POLKU_MAX_METADATA_BYTES", "-1"),
        ("POLKU_BUFFER_MAX_BYTES", "1000"),
        ("POLKU_MAX_CONCURRENT_STREAMS", "0"),
        ("POLKU_WORKER_THREADS", "0"),
        ("POLKU_WORKER_THREADS", "all"),
        ("POLKU_SCHEDULER", "fifo"),
        ("POLKU_KEEPALIVE_INTERVAL", "0s"),
        ("POLKU_KEEPALIVE_TIMEOUT", "never"),
        ("POLKU_MAX_CONNECTIONS", "0"),
        ("POLKU_IDLE_TIMEOUT", "later"),
        ("POLKU_HEADER_TIMEOUT", "slow"),
        ("POLKU_TRUST_LOOPBACK", "maybe"),
        ("POLKU_RESERVED_CONNECTIONS", "5000"),
        ("POLKU_BODY_TIMEOUT", "-3s"),
        ("POLKU_IDLE_TIMEOUT", "99999999999h"),
        ("POLKU_SHUTDOWN_TIMEOUT", "9000h"),
        ("POLKU_BUFFER_TIMEOUT", "5124095576030431h"),
        ("POLKU_TLS_CERT", " "),
    ] {
        let err = cfg(&[(var, value)]).unwrap_err();
        assert_eq!(err.var, var);
        let msg = err.to_string();
        assert!(msg.starts_with(&format!("{var}=")), "{msg}");
        assert!(msg.contains("expected"), "{msg}");
    }
}

#[test]
fn tls_files_come_in_pairs_and_client_ca_needs_them() {
    let c = cfg(&[
        ("POLKU_TLS_CERT", "/etc/polku/cert.pem"),
        ("POLKU_TLS_KEY", "/etc/polku/key.pem"),
        ("POLKU_TLS_CLIENT_CA", "/etc/polku/ca.pem"),
        ("POLKU_IDLE_TIMEOUT", "0"),
        ("POLKU_HEADER_TIMEOUT", "0"),
        ("POLKU_BODY_TIMEOUT", "2s"),
        ("POLKU_TRUST_LOOPBACK", "off"),
        ("POLKU_MAX_CONNECTIONS", "10"),
    ])
    .unwrap();
    assert_eq!(c.listen.header_timeout, None);
    assert!(!c.access.trust_loopback);
    assert_eq!(c.listen.body_timeout, Some(Duration::from_secs(2)));
    let tls = c.listen.tls.unwrap();
    assert_eq!(tls.cert, std::path::Path::new("/etc/polku/cert.pem"));
    assert_eq!(tls.key, std::path::Path::new("/etc/polku/key.pem"));
    assert_eq!(
        tls.client_ca.as_deref(),
        Some(std::path::Path::new("/etc/polku/ca.pem"))
    );
    assert_eq!(c.listen.idle_timeout, None);
    assert_eq!(c.listen.max_connections, 10);
    let err = cfg(&[("POLKU_TLS_CERT", "/c.pem")]).unwrap_err();
    assert_eq!(err.var, "POLKU_TLS_KEY");
    let err = cfg(&[("POLKU_TLS_KEY", "/k.pem")]).unwrap_err();
    assert_eq!(err.var, "POLKU_TLS_CERT");
    let err = cfg(&[("POLKU_EMIT_GRPC_TLS_CA", "/no/such/ca.pem")]).unwrap_err();
    assert_eq!(err.var, "POLKU_EMIT_GRPC_TLS_CA");
    let err = cfg(&[("POLKU_PLUGIN_TLS_CERT", "/no/such/cert.pem")]).unwrap_err();
    assert_eq!(err.var, "POLKU_PLUGIN_TLS_CERT");
    assert!(err.to_string().contains("set together"), "{err}");
    let err = cfg(&[("POLKU_TLS_CLIENT_CA", "/ca.pem")]).unwrap_err();
    assert_eq!(err.var, "POLKU_TLS_CLIENT_CA");
    assert!(err.to_string().contains("POLKU_TLS_CERT"), "{err}");
}

#[test]
fn delivery_settings_from_the_environment() {
    let c = cfg(&[
        ("POLKU_EMIT_WEBHOOK_URL", "http://127.0.0.1:9/h"),
        ("POLKU_EMIT_STDOUT", "on"),
        ("POLKU_EMIT_TIMEOUT", "3s"),
        ("POLKU_EMIT_RETRY_MAX_ATTEMPTS", "4"),
        ("POLKU_EMIT_RETRY_MAX_AGE", "1m"),
        ("POLKU_EMIT_RETRY_BACKOFF", "50ms"),
        ("POLKU_EMIT_RETRY_MAX_BACKOFF", "2s"),
        ("POLKU_EMIT_BREAKER_FAILURES", "0"),
        ("POLKU_EMIT_FAILURE_STORE_EVENTS", "500"),
        ("POLKU_EMIT_FAILURE_STORE_BYTES", "65536"),
        ("POLKU_EMIT_QUEUE_FULL", "drop_oldest"),
        ("POLKU_EMIT_QUEUE_MAX_EVENTS", "2000"),
        ("POLKU_EMIT_WEBHOOK_BATCH_SIZE", "100"),
        ("POLKU_EMIT_WEBHOOK_LINGER", "250ms"),
        ("POLKU_ADMIN_TOKEN", "adm"),
    ])
    .unwrap();
    assert_eq!(c.emit.timeout, Duration::from_secs(3));
    assert_eq!(c.delivery.retry_max_attempts, 4);
    assert_eq!(c.delivery.breaker_failures, 0);
    assert_eq!(
        c.access.admin_token.as_ref().map(Secret::expose),
        Some("adm")
    );
    assert!(
        !format!("{c:?}").contains("adm\""),
        "the admin token is hidden"
    );
    let r = c.resilience().unwrap();
    assert_eq!(
        r,
        polku_emit::resilience::Resilience::new()
            .timeout(Duration::from_secs(3))
            .retry(
                polku_emit::resilience::RetryPolicy::new(4, Duration::from_secs(60))
                    .unwrap()
                    .backoff(Duration::from_millis(50), Duration::from_secs(2))
                    .unwrap()
            )
            .failure_store(500, 65536)
            .unwrap(),
        "no breaker when its threshold is 0"
    );
    let emitters = c.emitters().unwrap();
    let (hook, opts) = &emitters[0];
    assert_eq!(hook.name(), "webhook");
    let store = hook
        .delivery_state()
        .and_then(|d| d.failure_store())
        .unwrap();
    assert_eq!(store.bounds(), (500, 65536));
    assert_eq!(
        opts.queue_full,
        crate::QueueFull::DropOldest { max_events: 2000 }
    );
    assert_eq!(
        opts.linger,
        Some(crate::Linger {
            max_wait: Duration::from_millis(250),
            max_events: 100
        })
    );
    let (stdout, opts) = &emitters[1];
    assert!(
        stdout.delivery_state().is_none(),
        "stdout is local: no retries"
    );
    assert_eq!(
        opts.queue_full,
        crate::QueueFull::Block,
        "the webhooks' queue policy is theirs: stdout's queue blocks"
    );

    let defaults = Config::default().resilience().unwrap();
    assert_eq!(defaults, polku_emit::resilience::Resilience::default());
}

#[test]
fn secrets_are_hidden_wherever_the_config_is_printed() {
    let c = cfg(&[
        ("POLKU_INGEST_TOKENS", "ing1,ing2"),
        ("POLKU_PLUGIN_TOKEN", "pt-9f2c"),
        ("POLKU_ADMIN_TOKEN", "adm"),
        ("POLKU_EMIT_WEBHOOK_URL", "http://127.0.0.1:9/h"),
        (
            "POLKU_EMIT_WEBHOOK_SECRET",
            "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQ=",
        ),
        ("POLKU_EMIT_WEBHOOK_HEADERS", "Authorization: Bearer hdr"),
    ])
    .unwrap();
    let printed = format!("{c:?} {c:#?}");
    for secret in ["ing1", "ing2", "pt-9f2c", "adm\"", "c2VjcmV0", "Bearer hdr"] {
        assert!(!printed.contains(secret), "{secret} shows in {printed}");
    }
    assert_eq!(c.access.ingest_tokens[1].expose(), "ing2");
    assert_eq!(
        c.access.plugin_token.as_ref().map(Secret::expose),
        Some("pt-9f2c")
    );
}

#[test]
fn plugin_settings_are_the_registrys_own() {
    let c = cfg(&[
        ("POLKU_PLUGIN_TIMEOUT", "750ms"),
        ("POLKU_PLUGIN_MAX", "3"),
        ("POLKU_PLUGIN_HEARTBEAT_INTERVAL", "2s"),
    ])
    .unwrap();
    assert_eq!(c.plugins.call_timeout, Duration::from_millis(750));
    assert_eq!(c.plugins.max_plugins, 3);
    assert_eq!(
        c.plugins.heartbeat_timeout,
        Duration::from_secs(6),
        "three intervals"
    );
    assert_eq!(
        Config::default().plugins,
        polku_discovery::RegistryConfig::default(),
        "one set of defaults"
    );
    assert_eq!(
        Config::default().plugins.call_timeout,
        polku_core::DEFAULT_PLUGIN_TIMEOUT
    );
}

/// Values a library user sets in code go through the same checks when the
/// emitters are built: a bad one is an error that names its variable, never
/// an emitter quietly left out or a header quietly dropped.
#[test]
fn bad_values_set_in_code_are_errors_not_skipped() {
    let hook = |c: &mut Config| c.emit.webhook.urls = vec!["http://127.0.0.1:9/h".into()];
    let mut c = Config::default();
    c.emit.webhook.urls = vec!["ftp://x/y".into()];
    assert_eq!(c.emitters().unwrap_err().var, "POLKU_EMIT_WEBHOOK_URL");
    let mut c = Config::default();
    hook(&mut c);
    c.emit.webhook.headers = vec![("Bad Name".into(), Secret::new("v"))];
    assert_eq!(c.emitters().unwrap_err().var, "POLKU_EMIT_WEBHOOK_HEADERS");
    let mut c = Config::default();
    hook(&mut c);
    c.emit.webhook.batch_size = 0;
    assert_eq!(
        c.emitters().unwrap_err().var,
        "POLKU_EMIT_WEBHOOK_BATCH_SIZE"
    );
    let mut c = Config::default();
    c.emit.grpc.endpoints = vec!["no-port-here".into()];
    assert_eq!(c.emitters().unwrap_err().var, "POLKU_EMIT_GRPC_ENDPOINTS");
    let mut c = Config::default();
    c.delivery.retry_max_attempts = 0;
    assert_eq!(
        c.resilience().unwrap_err().var,
        "POLKU_EMIT_RETRY_MAX_ATTEMPTS"
    );
    let mut c = Config::default();
    c.delivery.failure_store_bytes = 0;
    assert_eq!(
        c.resilience().unwrap_err().var,
        "POLKU_EMIT_FAILURE_STORE_BYTES"
    );
}
