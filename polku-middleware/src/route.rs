//! Set `route_to` by rules, so that each event reaches the emitters it should.
//!
//! An emitter receives an event when its `route_to` is empty or names it. The
//! router fills `route_to` for events that have none:
//! - every rule whose predicate matches adds its emitters (in rule order,
//!   without repeats);
//! - an event that no rule matches gets the default route, if one is set;
//! - an event that no rule and no default can place is *unroutable*, and the
//!   [`Unroutable`] policy decides: drop it and count it (the default), send
//!   it to a named emitter (a dead letter), or send it to every emitter.
//!
//! An event that already carries a `route_to` keeps it: the producer chose.
//!
//! ```
//! use polku_core::Event;
//! use polku_middleware::{Router, Unroutable, identity};
//! use tower::{Layer, ServiceExt};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let router = Router::new()
//!     .route(|e| e.event_type.starts_with("billing."), ["slack", "s3"])
//!     .route(|e| e.severity >= 4, ["pager"])
//!     .on_unroutable(Unroutable::SendTo("dead-letter".into()));
//! let out = router
//!     .layer(identity())
//!     .oneshot(vec![Event::new("billing.paid"), Event::new("user.signup")])
//!     .await
//!     .unwrap();
//! assert_eq!(out[0].route_to, ["slack", "s3"]);
//! assert_eq!(out[1].route_to, ["dead-letter"]);
//! # });
//! ```

use crate::drops::{DropCounts, DropReason, register};
use polku_core::Event;
use polku_core::Str;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

type Predicate = dyn Fn(&Event) -> bool + Send + Sync;

/// What to do with an event that no rule and no default route can place.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Unroutable {
    /// Drop it, counted as `unroutable`.
    #[default]
    Drop,
    /// Send it to this emitter (a dead letter, for example).
    SendTo(Str),
    /// Send it to every emitter (leave `route_to` empty).
    Broadcast,
}

struct Rule {
    predicate: Box<Predicate>,
    /// The rule's emitters, without repeats.
    emitters: polku_core::Routes,
}

struct Table {
    rules: Vec<Rule>,
    default: Option<polku_core::Routes>,
    unroutable: Unroutable,
}

/// A layer that sets `route_to` from rules.
#[derive(Clone)]
pub struct Router {
    table: Arc<Table>,
    drops: DropCounts,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("rules", &self.table.rules.len())
            .field("default", &self.table.default)
            .field("unroutable", &self.table.unroutable)
            .field("drops", &self.drops)
            .finish()
    }
}

impl Default for Router {
    fn default() -> Self {
        Self::new()
    }
}

impl Router {
    /// A router with no rules, no default, and unroutable events dropped.
    pub fn new() -> Self {
        Router {
            table: Arc::new(Table {
                rules: Vec::new(),
                default: None,
                unroutable: Unroutable::Drop,
            }),
            drops: DropCounts::default(),
        }
    }

    fn table_mut(&mut self) -> &mut Table {
        // A router is configured before it is used, so the table is not
        // shared yet; if it is, the rules are copied... which closures cannot
        // be, so configuration after `layer` is refused loudly.
        Arc::get_mut(&mut self.table).expect("configure a Router before using it as a layer")
    }

    /// Events for which `predicate` is true go to these emitters.
    pub fn route<P, I, S>(mut self, predicate: P, emitters: I) -> Self
    where
        P: Fn(&Event) -> bool + Send + Sync + 'static,
        I: IntoIterator<Item = S>,
        S: Into<Str>,
    {
        let mut routes = polku_core::Routes::new();
        for name in emitters {
            let name = name.into();
            if !routes.contains(&name) {
                routes.push(name);
            }
        }
        self.table_mut().rules.push(Rule {
            predicate: Box::new(predicate),
            emitters: routes,
        });
        self
    }

    /// Events that no rule matches go to these emitters.
    pub fn default_route<I, S>(mut self, emitters: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<Str>,
    {
        self.table_mut().default = Some(emitters.into_iter().map(Into::into).collect());
        self
    }

    /// What to do with events that no rule and no default can place.
    pub fn on_unroutable(mut self, policy: Unroutable) -> Self {
        self.table_mut().unroutable = policy;
        self
    }

    /// The drop counters (reason: unroutable).
    pub fn drops(&self) -> &DropCounts {
        &self.drops
    }
}

impl<S> Layer<S> for Router {
    type Service = RouteService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        register("route", &self.drops);
        RouteService {
            inner,
            router: self.clone(),
        }
    }
}

/// The service made by [`Router`].
#[derive(Clone)]
pub struct RouteService<S> {
    inner: S,
    router: Router,
}

impl<S: fmt::Debug> fmt::Debug for RouteService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteService")
            .field("inner", &self.inner)
            .field("router", &self.router)
            .finish()
    }
}

impl<S> RouteService<S> {
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

impl Table {
    /// Fills `route_to`; false when the event is to be dropped.
    #[inline]
    fn place(&self, e: &mut Event) -> bool {
        if !e.route_to.is_empty() {
            return true;
        }
        // The first rule that matches gives its emitters as they are (one
        // clone of a ready-made list); later matches add theirs without
        // repeats.
        let mut rules = self.rules.iter();
        for rule in rules.by_ref() {
            if (rule.predicate)(e) {
                e.route_to = rule.emitters.clone();
                break;
            }
        }
        for rule in rules {
            if (rule.predicate)(e) {
                for name in rule.emitters.iter() {
                    if !e.route_to.contains(name) {
                        e.route_to.push(name.clone());
                    }
                }
            }
        }
        if !e.route_to.is_empty() {
            return true;
        }
        if let Some(default) = &self.default {
            e.route_to = default.clone();
            return true;
        }
        match &self.unroutable {
            Unroutable::Drop => false,
            Unroutable::SendTo(name) => {
                e.route_to.push(name.clone());
                true
            }
            Unroutable::Broadcast => true,
        }
    }
}

impl<S> Service<Vec<Event>> for RouteService<S>
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
        let before = batch.len();
        let table = &self.router.table;
        batch.retain_mut(|e| table.place(e));
        self.router
            .drops
            .add(DropReason::Unroutable, before - batch.len());
        self.inner.call(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity;
    use tower::ServiceExt;

    async fn run(r: &Router, batch: Vec<Event>) -> Vec<Event> {
        r.layer(identity()).oneshot(batch).await.unwrap()
    }

    fn routes(out: &[Event]) -> Vec<Vec<String>> {
        out.iter()
            .map(|e| e.route_to.iter().map(|r| r.to_string()).collect())
            .collect()
    }

    #[tokio::test]
    async fn conforms() {
        let r = Router::new().route(|e| e.event_type == "a", ["x"]);
        let out = crate::conformance::check(
            "route",
            &r,
            r.drops(),
            vec![Event::new("a"), Event::new("b")],
        )
        .await;
        assert_eq!(out.len(), 1);
    }

    #[tokio::test]
    async fn matching_rules_add_their_emitters_in_order_without_repeats() {
        let r = Router::new()
            .route(|e| e.event_type.starts_with("user."), ["crm", "stdout"])
            .route(|e| e.source == "web", ["stdout", "web-log"])
            .route(|e| e.severity == 4, ["pager", "pager", "crm"]);
        let out = run(
            &r,
            vec![
                Event::new("user.signup").with_source("web"),
                Event::new("user.signup").with_source("app"),
                Event::new("page.view").with_source("web"),
                Event {
                    severity: 4,
                    ..Event::new("page.view").with_source("app")
                },
            ],
        )
        .await;
        assert_eq!(
            routes(&out),
            vec![
                vec!["crm", "stdout", "web-log"],
                vec!["crm", "stdout"],
                vec!["stdout", "web-log"],
                vec!["pager", "crm"],
            ]
        );
    }

    #[tokio::test]
    async fn default_then_policy() {
        let with_default = Router::new()
            .route(|_| false, ["x"])
            .default_route(["stdout"]);
        assert_eq!(
            routes(&run(&with_default, vec![Event::new("t")]).await),
            vec![vec!["stdout"]]
        );

        let drop = Router::new().route(|_| false, ["x"]);
        assert!(
            run(&drop, vec![Event::new("t"), Event::new("u")])
                .await
                .is_empty()
        );
        assert_eq!(drop.drops().get(DropReason::Unroutable), 2);

        let dead = Router::new().on_unroutable(Unroutable::SendTo("dead".into()));
        assert_eq!(
            routes(&run(&dead, vec![Event::new("t")]).await),
            vec![vec!["dead"]]
        );

        let all = Router::new().on_unroutable(Unroutable::Broadcast);
        let out = run(&all, vec![Event::new("t")]).await;
        assert_eq!(out.len(), 1);
        assert!(out[0].route_to.is_empty());
        assert_eq!(all.drops().total(), 0);
    }

    #[tokio::test]
    async fn a_route_chosen_by_the_producer_is_kept() {
        let r = Router::new().route(|_| true, ["x"]);
        let out = run(&r, vec![Event::new("t").with_route_to(["mine"])]).await;
        assert_eq!(routes(&out), vec![vec!["mine"]]);
    }

    #[tokio::test]
    async fn empty_batch() {
        let r = Router::new();
        assert!(run(&r, vec![]).await.is_empty());
    }
}
