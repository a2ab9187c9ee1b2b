//! The S3 emitter's settings (`POLKU_EMIT_S3_*`).

use super::ConfigError;
use super::env::Env;
use polku_emit::{S3Compression, S3Emitter, S3EmitterError};
use std::time::Duration;

/// The S3 emitter (named `s3`), on when a bucket is given. Credentials come
/// from the standard AWS variables and provider chain.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct S3EmitSettings {
    /// `POLKU_EMIT_S3_BUCKET`: the bucket. Set, events go to S3.
    pub bucket: Option<String>,
    /// `POLKU_EMIT_S3_ENDPOINT`: an S3-compatible store's URL (path-style
    /// addressing); default AWS.
    pub endpoint: Option<String>,
    /// `POLKU_EMIT_S3_REGION`: the region (default `AWS_REGION`, else
    /// `us-east-1`).
    pub region: Option<String>,
    /// `POLKU_EMIT_S3_PREFIX`: the key prefix template, with `{yyyy}`,
    /// `{mm}`, `{dd}`, `{hh}` (each event's time, UTC) and `{source}`.
    /// Default `events/{yyyy}/{mm}/{dd}/{hh}/`.
    pub prefix: String,
    /// `POLKU_EMIT_S3_COMPRESSION`: `gzip` (default), `zstd` or `none`.
    pub compression: S3Compression,
    /// `POLKU_EMIT_S3_MAX_EVENTS`: events per object at most (default
    /// 100000).
    pub max_events: usize,
    /// `POLKU_EMIT_S3_MAX_BYTES`: bytes of lines per object, before
    /// compression, at most (default 64 MiB).
    pub max_bytes: usize,
    /// `POLKU_EMIT_S3_MAX_AGE`: how long an object stays open at most
    /// (default 60s).
    pub max_age: Duration,
}

impl Default for S3EmitSettings {
    fn default() -> Self {
        S3EmitSettings {
            bucket: None,
            endpoint: None,
            region: None,
            prefix: polku_emit::DEFAULT_S3_PREFIX.to_owned(),
            compression: S3Compression::Gzip,
            max_events: 100_000,
            max_bytes: 64 << 20,
            max_age: Duration::from_secs(60),
        }
    }
}

const PREFIX: &str = "a key prefix, with {yyyy}, {mm}, {dd}, {hh} and {source} as placeholders";

impl S3EmitSettings {
    pub(super) fn read(&mut self, env: &Env<'_>) -> Result<(), ConfigError> {
        let set = |v: String| Some(v.trim().to_owned()).filter(|v| !v.is_empty());
        if let Some(b) = env.raw("POLKU_EMIT_S3_BUCKET") {
            self.bucket = Some(
                set(b.clone())
                    .ok_or_else(|| Env::bad("POLKU_EMIT_S3_BUCKET", &b, "a bucket name"))?,
            );
        }
        if let Some(e) = env.raw("POLKU_EMIT_S3_ENDPOINT") {
            let t = e.trim();
            if !(t.starts_with("http://") || t.starts_with("https://")) {
                return Err(Env::bad(
                    "POLKU_EMIT_S3_ENDPOINT",
                    &e,
                    "an http:// or https:// URL",
                ));
            }
            self.endpoint = set(e);
        }
        if let Some(r) = env.raw("POLKU_EMIT_S3_REGION") {
            self.region = set(r);
        }
        if let Some(p) = env.raw("POLKU_EMIT_S3_PREFIX") {
            self.prefix = p.trim().to_owned();
        }
        if let Some(c) = env.choice(
            "POLKU_EMIT_S3_COMPRESSION",
            &[
                ("gzip", S3Compression::Gzip),
                ("zstd", S3Compression::Zstd),
                ("none", S3Compression::None),
            ],
            "gzip, zstd or none",
        )? {
            self.compression = c;
        }
        if let Some(n) = env.number(
            "POLKU_EMIT_S3_MAX_EVENTS",
            1,
            100_000_000,
            "a number of events from 1 to 100000000",
        )? {
            self.max_events = n as usize;
        }
        if let Some(n) = env.number(
            "POLKU_EMIT_S3_MAX_BYTES",
            1024,
            5 << 30,
            "a number of bytes from 1024 to 5368709120",
        )? {
            self.max_bytes = n as usize;
        }
        if let Some(d) = env.duration("POLKU_EMIT_S3_MAX_AGE", true)? {
            self.max_age = d;
        }
        // Refuse what the client would refuse now, not at the first event.
        self.emitter()?;
        Ok(())
    }

    /// The emitter these settings describe; `None` without a bucket.
    pub(super) fn emitter(&self) -> Result<Option<S3Emitter>, ConfigError> {
        let Some(bucket) = &self.bucket else {
            return Ok(None);
        };
        let mut b = S3Emitter::builder(bucket.clone())
            .prefix(self.prefix.clone())
            .compression(self.compression)
            .max_events(self.max_events)
            .max_bytes(self.max_bytes)
            .max_age(self.max_age);
        if let Some(e) = &self.endpoint {
            b = b.endpoint(e.clone());
        }
        if let Some(r) = &self.region {
            b = b.region(r.clone());
        }
        b.build().map(Some).map_err(|e| match e {
            S3EmitterError::Prefix(_) => Env::bad("POLKU_EMIT_S3_PREFIX", &self.prefix, PREFIX),
            S3EmitterError::Client(message) => ConfigError {
                var: "POLKU_EMIT_S3_ENDPOINT",
                value: format!(
                    "{} (the S3 client says: {message})",
                    self.endpoint.as_deref().unwrap_or("(AWS)")
                ),
                expected: "an endpoint and AWS_* credentials the S3 client takes",
            },
            other => Env::bad("POLKU_EMIT_S3_BUCKET", &other.to_string(), "a bucket name"),
        })
    }
}
