//! Check events against rules; drop the invalid ones, or send them to a dead
//! letter emitter.
//!
//! ```
//! use polku_core::Event;
//! use polku_middleware::{Validator, identity};
//! use tower::{Layer, ServiceExt};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let validator = Validator::new().require_source().payload_json();
//! let svc = validator.layer(identity());
//! let out = svc
//!     .oneshot(vec![
//!         Event::new("ok").with_source("app").with_payload(r#"{"a":1}"#),
//!         Event::new("no-source"),
//!     ])
//!     .await
//!     .unwrap();
//! assert_eq!(out.len(), 1);
//! assert_eq!(validator.invalid(), 1);
//!
//! // Or keep them, routed to a dead letter emitter, with the reason.
//! let validator = Validator::new().payload_json().invalid_to("dead-letter").unwrap();
//! let out = validator
//!     .layer(identity())
//!     .oneshot(vec![Event::new("bad").with_payload("hello")])
//!     .await
//!     .unwrap();
//! assert_eq!(out[0].route_to, ["dead-letter"]);
//! assert_eq!(
//!     out[0].metadata["polku.invalid"],
//!     "payload is not valid JSON: expected value at line 1 column 1"
//! );
//! assert_eq!(validator.diverted(), 1);
//! # });
//! ```
//!
//! `Validator` is the layer; [`ValidateService`] is the service it makes.
//! Every rule is off until its builder method turns it on. Rules are checked
//! in this order, and the first that fails gives the reason: `require_id`,
//! `require_source`, `require_event_type`, `max_field_len`,
//! `max_metadata_entries`, `max_payload_bytes`, `payload_json` (the costly
//! JSON parse comes last, after the size check).
//!
//! Dropped events are counted as [`DropReason::Invalid`]; events sent to the
//! dead letter are not drops and are counted apart, see
//! [`Validator::diverted`].

use crate::drops::{DropCounts, DropReason, register};
use polku_core::Event;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// The metadata key that holds why an event sent to the dead letter failed.
pub const INVALID_KEY: &str = "polku.invalid";

/// A [`Validator`] configuration that makes no sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValidateError {
    /// `invalid_to` was given an empty emitter name.
    #[error("the dead letter emitter name must not be empty")]
    EmptyDeadLetter,
}

#[derive(Debug, Clone, Default)]
struct Rules {
    require_id: bool,
    require_source: bool,
    require_event_type: bool,
    payload_json: bool,
    max_payload_bytes: Option<usize>,
    max_metadata_entries: Option<usize>,
    max_field_len: Option<usize>,
    invalid_to: Option<String>,
}

/// Why an event failed; its `Display` is the message put in `polku.invalid`.
enum Violation<'a> {
    Empty(&'static str),
    FieldTooLong {
        field: Field<'a>,
        len: usize,
        max: usize,
    },
    TooManyEntries {
        len: usize,
        max: usize,
    },
    PayloadTooLarge {
        len: usize,
        max: usize,
    },
    NotJson(serde_json::Error),
}

enum Field<'a> {
    Named(&'static str),
    MetadataKey(&'a str),
    MetadataValue(&'a str),
}

/// At most this many characters of a metadata key are quoted in a message.
const QUOTE_MAX: usize = 64;

impl fmt::Display for Field<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let quoted = |f: &mut fmt::Formatter<'_>, what: &str, key: &str| match key
            .char_indices()
            .nth(QUOTE_MAX)
        {
            Some((cut, _)) => write!(f, "{what} {:?}...", &key[..cut]),
            None => write!(f, "{what} {key:?}"),
        };
        match self {
            Field::Named(name) => f.write_str(name),
            Field::MetadataKey(key) => quoted(f, "metadata key", key),
            Field::MetadataValue(key) => quoted(f, "metadata value of", key),
        }
    }
}

impl fmt::Display for Violation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Empty(field) => write!(f, "{field} is empty"),
            Violation::FieldTooLong { field, len, max } => {
                write!(f, "{field} is {len} bytes long, over the limit of {max}")
            }
            Violation::TooManyEntries { len, max } => {
                write!(f, "{len} metadata entries, over the limit of {max}")
            }
            Violation::PayloadTooLarge { len, max } => {
                write!(f, "payload is {len} bytes, over the limit of {max}")
            }
            Violation::NotJson(err) => write!(f, "payload is not valid JSON: {err}"),
        }
    }
}

impl Rules {
    /// The first rule `e` breaks, if any.
    fn check<'a>(&self, e: &'a Event) -> Result<(), Violation<'a>> {
        if self.require_id && e.id.is_empty() {
            return Err(Violation::Empty("id"));
        }
        if self.require_source && e.source.is_empty() {
            return Err(Violation::Empty("source"));
        }
        if self.require_event_type && e.event_type.is_empty() {
            return Err(Violation::Empty("event_type"));
        }
        if let Some(max) = self.max_field_len {
            let too_long = |field: Field<'a>, s: &str| {
                if s.len() > max {
                    Err(Violation::FieldTooLong {
                        field,
                        len: s.len(),
                        max,
                    })
                } else {
                    Ok(())
                }
            };
            too_long(Field::Named("id"), &e.id)?;
            too_long(Field::Named("source"), &e.source)?;
            too_long(Field::Named("event_type"), &e.event_type)?;
            for (k, v) in &e.metadata {
                too_long(Field::MetadataKey(k), k)?;
                too_long(Field::MetadataValue(k), v)?;
            }
        }
        if let Some(max) = self.max_metadata_entries.filter(|&m| e.metadata.len() > m) {
            return Err(Violation::TooManyEntries {
                len: e.metadata.len(),
                max,
            });
        }
        if let Some(max) = self.max_payload_bytes.filter(|&m| e.payload.len() > m) {
            return Err(Violation::PayloadTooLarge {
                len: e.payload.len(),
                max,
            });
        }
        if self.payload_json && !e.payload.is_empty() {
            // A borrowed `RawValue` checks the syntax without building a tree.
            serde_json::from_slice::<&serde_json::value::RawValue>(&e.payload)
                .map_err(Violation::NotJson)?;
        }
        Ok(())
    }
}

/// A layer that checks every event against its rules.
///
/// Clones share the configuration's counters: [`Validator::invalid`] and
/// [`Validator::diverted`] count for this layer and every service it made.
#[derive(Clone, Default)]
pub struct Validator {
    rules: Arc<Rules>,
    drops: DropCounts,
    diverted: Arc<AtomicU64>,
}

impl fmt::Debug for Validator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Validator")
            .field("rules", &self.rules)
            .field("invalid", &self.invalid())
            .field("diverted", &self.diverted())
            .finish()
    }
}

impl Validator {
    /// A validator with no rules yet: every event passes.
    pub fn new() -> Self {
        Self::default()
    }

    fn rules(&mut self) -> &mut Rules {
        Arc::make_mut(&mut self.rules)
    }

    /// The id must not be empty.
    pub fn require_id(mut self) -> Self {
        self.rules().require_id = true;
        self
    }

    /// The source must not be empty.
    pub fn require_source(mut self) -> Self {
        self.rules().require_source = true;
        self
    }

    /// The event type must not be empty.
    pub fn require_event_type(mut self) -> Self {
        self.rules().require_event_type = true;
        self
    }

    /// The payload, when not empty, must be valid JSON (any JSON value).
    pub fn payload_json(mut self) -> Self {
        self.rules().payload_json = true;
        self
    }

    /// The payload may hold at most `max` bytes (zero: it must be empty).
    pub fn max_payload_bytes(mut self, max: usize) -> Self {
        self.rules().max_payload_bytes = Some(max);
        self
    }

    /// The event may have at most `max` metadata entries.
    pub fn max_metadata_entries(mut self, max: usize) -> Self {
        self.rules().max_metadata_entries = Some(max);
        self
    }

    /// The id, source, event type and each metadata key and value may be at
    /// most `max` bytes long (UTF-8 bytes, not characters).
    pub fn max_field_len(mut self, max: usize) -> Self {
        self.rules().max_field_len = Some(max);
        self
    }

    /// Instead of dropping an invalid event, keep it with `route_to` set to
    /// just `emitter` and the reason in its `polku.invalid` metadata entry
    /// ([`INVALID_KEY`]). Such events are counted by [`Validator::diverted`].
    ///
    /// # Errors
    ///
    /// [`ValidateError::EmptyDeadLetter`] when `emitter` is empty (an empty
    /// `route_to` would mean every emitter).
    pub fn invalid_to(mut self, emitter: impl Into<String>) -> Result<Self, ValidateError> {
        let emitter = emitter.into();
        if emitter.is_empty() {
            return Err(ValidateError::EmptyDeadLetter);
        }
        self.rules().invalid_to = Some(emitter);
        Ok(self)
    }

    /// Invalid events dropped so far (reason: invalid), by this layer and
    /// every service it made.
    pub fn invalid(&self) -> u64 {
        self.drops.get(DropReason::Invalid)
    }

    /// Invalid events sent to the dead letter so far (not counted as drops).
    pub fn diverted(&self) -> u64 {
        self.diverted.load(Relaxed)
    }

    /// The drop counters (reason: invalid).
    pub fn drops(&self) -> &DropCounts {
        &self.drops
    }
}

impl<S> Layer<S> for Validator {
    type Service = ValidateService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        register("validate", &self.drops);
        ValidateService {
            inner,
            rules: self.rules.clone(),
            drops: self.drops.clone(),
            diverted: self.diverted.clone(),
        }
    }
}

/// The service made by [`Validator`]: drops or diverts invalid events, then
/// calls `inner`.
pub struct ValidateService<S> {
    inner: S,
    rules: Arc<Rules>,
    drops: DropCounts,
    diverted: Arc<AtomicU64>,
}

impl<S: Clone> Clone for ValidateService<S> {
    fn clone(&self) -> Self {
        ValidateService {
            inner: self.inner.clone(),
            rules: self.rules.clone(),
            drops: self.drops.clone(),
            diverted: self.diverted.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for ValidateService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValidateService")
            .field("inner", &self.inner)
            .field("rules", &self.rules)
            .finish_non_exhaustive()
    }
}

impl<S> ValidateService<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S> Service<Vec<Event>> for ValidateService<S>
where
    S: Service<Vec<Event>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut batch: Vec<Event>) -> Self::Future {
        let rules = &*self.rules;
        match &rules.invalid_to {
            None => {
                self.drops
                    .retain(DropReason::Invalid, &mut batch, |e| rules.check(e).is_ok());
            }
            Some(dead_letter) => {
                let mut diverted = 0u64;
                for e in &mut batch {
                    let Err(why) = rules.check(e) else { continue };
                    let why = why.to_string();
                    e.metadata
                        .insert(INVALID_KEY.to_string().into(), why.into());
                    e.route_to.clear();
                    e.route_to.push(dead_letter.clone());
                    diverted += 1;
                }
                if diverted > 0 {
                    self.diverted.fetch_add(diverted, Relaxed);
                }
            }
        }
        self.inner.call(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity;
    use tower::ServiceExt;

    async fn run(v: &Validator, batch: Vec<Event>) -> Vec<Event> {
        v.layer(identity()).oneshot(batch).await.unwrap()
    }

    fn good() -> Event {
        Event::new("user.signup")
            .with_id("1")
            .with_source("app")
            .with_metadata("env", "prod")
            .with_payload(r#"{"user":"ana"}"#)
    }

    fn all_rules() -> Validator {
        Validator::new()
            .require_id()
            .require_source()
            .require_event_type()
            .payload_json()
            .max_payload_bytes(32)
            .max_metadata_entries(2)
            .max_field_len(16)
    }

    /// The `polku.invalid` message for `e` under `v`, or "valid".
    async fn reason(v: &Validator, e: Event) -> String {
        let v = v.clone().invalid_to("dlq").unwrap();
        let out = run(&v, vec![e]).await;
        out[0]
            .metadata
            .get(INVALID_KEY)
            .cloned()
            .unwrap_or_else(|| "valid".into())
            .to_string()
    }

    #[tokio::test]
    async fn conforms() {
        let v = all_rules();
        let out =
            crate::conformance::check("validate", &v, v.drops(), vec![good(), Event::new("x")])
                .await;
        assert_eq!(out, [good()]);

        let v = all_rules().invalid_to("dlq").unwrap();
        let out =
            crate::conformance::check("validate", &v, v.drops(), vec![good(), Event::new("x")])
                .await;
        assert_eq!(out.len(), 2);
    }

    #[tokio::test]
    async fn empty_batch_and_everything_dropped() {
        let v = all_rules();
        assert!(run(&v, vec![]).await.is_empty());
        assert_eq!(v.invalid(), 0);
        let out = run(&v, vec![Event::new("a"), Event::new("b")]).await;
        assert!(out.is_empty());
        assert_eq!(v.invalid(), 2);
        assert_eq!(v.drops().get(DropReason::Invalid), 2);
        assert_eq!(v.diverted(), 0);
    }

    #[tokio::test]
    async fn no_rules_pass_everything() {
        let v = Validator::new();
        let odd = Event::default().with_payload("not json");
        assert_eq!(run(&v, vec![odd.clone()]).await, [odd]);
        assert_eq!(v.invalid(), 0);
    }

    #[tokio::test]
    async fn each_rule_reports_its_reason() {
        let v = all_rules();
        assert_eq!(reason(&v, good()).await, "valid");
        assert_eq!(reason(&v, good().with_id("")).await, "id is empty");
        assert_eq!(reason(&v, good().with_source("")).await, "source is empty");
        let mut e = good();
        e.event_type = polku_core::Str::new();
        assert_eq!(reason(&v, e).await, "event_type is empty");
        assert_eq!(
            reason(&v, good().with_source("a-very-long-source")).await,
            "source is 18 bytes long, over the limit of 16"
        );
        assert_eq!(
            reason(&v, good().with_metadata("a-very-long-key!!", "x")).await,
            "metadata key \"a-very-long-key!!\" is 17 bytes long, over the limit of 16"
        );
        assert_eq!(
            reason(&v, good().with_metadata("k", "a-very-long-value")).await,
            "metadata value of \"k\" is 17 bytes long, over the limit of 16"
        );
        assert_eq!(
            reason(&v, good().with_metadata("a", "1").with_metadata("b", "2")).await,
            "3 metadata entries, over the limit of 2"
        );
        assert_eq!(
            reason(&v, good().with_payload(vec![b' '; 33])).await,
            "payload is 33 bytes, over the limit of 32"
        );
        assert_eq!(
            reason(&v, good().with_payload("hello")).await,
            "payload is not valid JSON: expected value at line 1 column 1"
        );
        assert_eq!(
            reason(&v, good().with_payload("{} x")).await,
            "payload is not valid JSON: trailing characters at line 1 column 4"
        );
        // An empty payload is not checked; any JSON value is fine.
        assert_eq!(reason(&v, good().with_payload("")).await, "valid");
        assert_eq!(
            reason(&v, good().with_payload(" [1, null] ")).await,
            "valid"
        );
        // Limits are inclusive.
        assert_eq!(
            reason(&v, good().with_source("sixteen-bytes-ok")).await,
            "valid"
        );
    }

    #[tokio::test]
    async fn the_first_failed_rule_wins() {
        let e = Event::default()
            .with_payload("nope")
            .with_metadata("a", "1");
        let v = all_rules().max_metadata_entries(0);
        assert_eq!(reason(&v, e.clone()).await, "id is empty");
        let v = Validator::new().payload_json().max_metadata_entries(0);
        assert_eq!(
            reason(&v, e).await,
            "1 metadata entries, over the limit of 0"
        );
    }

    #[tokio::test]
    async fn long_keys_are_cut_in_the_message() {
        let v = Validator::new().max_field_len(4);
        let key = "k".repeat(100);
        let msg = reason(&v, Event::new("t").with_metadata(key, "v")).await;
        assert!(
            msg.starts_with(&format!("metadata key \"{}\"...", "k".repeat(QUOTE_MAX))),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn dead_letter_keeps_order_and_counts_apart() {
        let v = all_rules().invalid_to("dead-letter").unwrap();
        let bad = good()
            .with_payload("hello")
            .with_route_to(["stdout", "slack"]);
        let out = run(&v, vec![good(), bad, good().with_id("")]).await;
        assert_eq!(out.len(), 3);
        assert_eq!(out[0], good(), "a valid event is untouched");
        assert_eq!(out[1].route_to, ["dead-letter"]);
        assert_eq!(
            out[1].metadata[INVALID_KEY],
            "payload is not valid JSON: expected value at line 1 column 1"
        );
        assert_eq!(out[1].metadata["env"], "prod", "other metadata kept");
        assert_eq!(out[2].route_to, ["dead-letter"]);
        assert_eq!(out[2].metadata[INVALID_KEY], "id is empty");
        assert_eq!(v.diverted(), 2);
        assert_eq!(v.invalid(), 0);
        assert_eq!(v.drops().total(), 0, "diverted events are not drops");
        let again = v.clone();
        run(&again, vec![Event::default()]).await;
        assert_eq!(v.diverted(), 3, "clones share the count");
    }

    #[test]
    fn bad_config_is_rejected() {
        assert_eq!(
            Validator::new().invalid_to("").unwrap_err(),
            ValidateError::EmptyDeadLetter
        );
        assert_eq!(
            ValidateError::EmptyDeadLetter.to_string(),
            "the dead letter emitter name must not be empty"
        );
    }
}
