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
use polku_core::{Routes, Str};
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

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

/// A router's rules, in the order they were added: `()` for none, and each
/// [`Router::route`] wraps the rules before it in a [`Rule`]. Every
/// predicate has its own type in the chain, so it is called directly (and
/// inlined), not through a boxed closure.
pub trait Rules: Send + Sync + 'static {
    /// Adds the emitters of every rule that matches `event`, in rule order:
    /// the first match's list as it is when `route_to` is still empty, later
    /// ones without repeats.
    fn apply(&self, event: &mut Event);

    /// How many rules there are.
    fn count(&self) -> usize;
}

impl Rules for () {
    #[inline(always)]
    fn apply(&self, _: &mut Event) {}

    fn count(&self) -> usize {
        0
    }
}

/// One routing rule, after the rules `R` added before it; see [`Rules`].
pub struct Rule<R, P> {
    earlier: R,
    predicate: P,
    /// The rule's emitters, without repeats.
    emitters: Routes,
}

impl<R: fmt::Debug, P> fmt::Debug for Rule<R, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rule")
            .field("earlier", &self.earlier)
            .field("emitters", &self.emitters)
            .finish_non_exhaustive()
    }
}

impl<R, P> Rules for Rule<R, P>
where
    R: Rules,
    P: Fn(&Event) -> bool + Send + Sync + 'static,
{
    #[inline(always)]
    fn apply(&self, e: &mut Event) {
        self.earlier.apply(e);
        if (self.predicate)(e) {
            if e.route_to.is_empty() {
                // The first match: one clone of a ready-made list.
                e.route_to = self.emitters.clone();
            } else {
                for name in self.emitters.iter() {
                    if !e.route_to.contains(name) {
                        e.route_to.push(name.clone());
                    }
                }
            }
        }
    }

    fn count(&self) -> usize {
        self.earlier.count() + 1
    }
}

struct Table<R> {
    rules: R,
    default: Option<Routes>,
    unroutable: Unroutable,
}

/// A layer that sets `route_to` from rules. `R` is the chain of rules that
/// [`Router::route`] builds; code that holds a router names it as
/// `Router<impl Rules>` or lets the type be inferred.
pub struct Router<R = ()> {
    table: Arc<Table<R>>,
    drops: DropCounts,
}

impl<R> Clone for Router<R> {
    fn clone(&self) -> Self {
        Router {
            table: self.table.clone(),
            drops: self.drops.clone(),
        }
    }
}

impl<R: Rules> fmt::Debug for Router<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("rules", &self.table.rules.count())
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
    /// A router with no rules, no default route, and unroutable events dropped.
    pub fn new() -> Self {
        Router {
            table: Arc::new(Table {
                rules: (),
                default: None,
                unroutable: Unroutable::Drop,
            }),
            drops: DropCounts::default(),
        }
    }
}

/// A router is configured before it is used; a table already shared with a
/// layer cannot change (its rules are closures, which cannot be copied).
const CONFIGURE_FIRST: &str = "configure a Router before using it as a layer";

impl<R: Rules> Router<R> {
    fn table_mut(&mut self) -> &mut Table<R> {
        Arc::get_mut(&mut self.table).expect(CONFIGURE_FIRST)
    }

    /// Adds a rule: events matching `predicate` go to `emitters`.
    pub fn route<P, I, S>(self, predicate: P, emitters: I) -> Router<Rule<R, P>>
    where
        P: Fn(&Event) -> bool + Send + Sync + 'static,
        I: IntoIterator<Item = S>,
        S: Into<Str>,
    {
        let mut routes = Routes::new();
        for name in emitters {
            let name = name.into();
            if !routes.contains(&name) {
                routes.push(name);
            }
        }
        let table = Arc::into_inner(self.table).expect(CONFIGURE_FIRST);
        Router {
            table: Arc::new(Table {
                rules: Rule {
                    earlier: table.rules,
                    predicate,
                    emitters: routes,
                },
                default: table.default,
                unroutable: table.unroutable,
            }),
            drops: self.drops,
        }
    }

    /// Where events that no rule matches go.
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

    /// Events dropped, by reason (`unroutable`).
    pub fn drops(&self) -> &DropCounts {
        &self.drops
    }
}

impl<S, R: Rules> Layer<S> for Router<R> {
    type Service = RouteService<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        register("route", &self.drops);
        RouteService {
            inner,
            router: self.clone(),
        }
    }
}

/// The service that [`Router`] makes.
pub struct RouteService<S, R = ()> {
    inner: S,
    router: Router<R>,
}

impl<S: Clone, R> Clone for RouteService<S, R> {
    fn clone(&self) -> Self {
        RouteService {
            inner: self.inner.clone(),
            router: self.router.clone(),
        }
    }
}

impl<S: fmt::Debug, R: Rules> fmt::Debug for RouteService<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteService")
            .field("inner", &self.inner)
            .field("router", &self.router)
            .finish()
    }
}

impl<S, R> RouteService<S, R> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, taken out.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<R: Rules> Table<R> {
    /// Fills `route_to`; false when the event is to be dropped.
    #[inline]
    fn place(&self, e: &mut Event) -> bool {
        if !e.route_to.is_empty() {
            return true;
        }
        self.rules.apply(e);
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

impl<S, R> Service<Vec<Event>> for RouteService<S, R>
where
    S: Service<Vec<Event>>,
    R: Rules,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut batch: Vec<Event>) -> Self::Future {
        let table = &self.router.table;
        self.router
            .drops
            .retain(DropReason::Unroutable, &mut batch, |e| table.place(e));
        self.inner.call(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity;
    use tower::ServiceExt;

    async fn run<R: Rules>(r: &Router<R>, batch: Vec<Event>) -> Vec<Event> {
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
