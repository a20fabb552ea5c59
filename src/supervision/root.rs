//! The root supervisor: starts the shared actors (persistence, market data, order router) and one
//! [`UserSupervisor`] per user, restarts a crashed shared actor with backoff, and escalates when a
//! shared actor keeps failing: it records `escalated`, flushes persistence if it can, and tells the
//! process to exit non-zero so that systemd restarts it (in-process supervision has done what it
//! can). It also writes the periodic tree snapshot and runs the ordered shutdown.
//!
//! Shared actors get the stricter `[supervisor] shared_*` limits: a user's trader may crash many
//! times before its user is quarantined, but a shared actor that keeps failing means the process
//! itself is unwell.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures::future::join_all;
use tokio::sync::oneshot;

use crate::actors::healer::{Healer, HealerSettings};
use crate::actors::intelligence::{IntelSource, Intelligence};
use crate::actors::market_data::{MarketData, StopFeeds, SubscriptionBook};
use crate::actors::monitor::{Monitor, MonitorSettings};
use crate::actors::notifier::{Destinations, Notifier};
use crate::actors::order_router::{Drain, OrderRouter, PeriodicReconcile, RouterSettings};
use crate::actors::persistence::{self, PersistenceActor, PersistenceSettings};
use crate::actors::trader::TraderSeed;
use crate::actors::{Directory, Stop};
use crate::clock::Clock;
use crate::domain::UserId;
use crate::exchange::Exchange;
use crate::http::{HttpApi, HttpSettings};
use crate::limits::{PERSISTENCE_MAILBOX_CAPACITY, SHARED_MAILBOX_CAPACITY};
use crate::supervision::journal::{ActorKind, ChildState, EventKind, SharedJournal, SupervisionEvent};
use crate::supervision::policy::{RestartDecision, RestartPolicy, RestartTracker, seed_from_name};
use crate::supervision::user::{Readmit as UserReadmit, Shutdown as UserShutdown, UserSupervisor};
use crate::supervision::watch::{ChildExit, spawn_watched};

/// How the tree is run (from `[supervisor]` and `[exchange]`).
#[derive(Debug, Clone)]
pub struct TreeSettings {
    pub user_policy: RestartPolicy,
    pub shared_policy: RestartPolicy,
    pub status_interval: Duration,
    /// `None`: market data polls only when told to (tests step the market themselves).
    pub market_poll_interval: Option<Duration>,
    pub router: RouterSettings,
    pub persistence: PersistenceSettings,
    pub monitor: Arc<MonitorSettings>,
    pub healer: Arc<HealerSettings>,
    pub intelligence: IntelSource,
    /// Half of systemd's `WatchdogSec`, when it watches this process (`None`: no pings).
    pub watchdog_interval: Option<Duration>,
    /// Where notifications go, and the per-key rate window.
    pub notify_destinations: Destinations,
    pub notify_rate_window: Duration,
    /// The HTTP API (`None`: `[http] enabled = false`).
    pub http: Option<HttpSettings>,
    /// The circuit breakers of the other external APIs (intelligence, notification destinations).
    pub external_breaker: crate::exchange::breaker::BreakerPolicy,
    /// Periodic reconciliation: how often, within what weight, every user with their symbols.
    pub reconcile: Option<PeriodicReconcile>,
}

/// The arbiters (threads) of the shared actors.
#[derive(Debug, Clone)]
pub struct SharedArbiters {
    pub persistence: ArbiterHandle,
    pub market_data: ArbiterHandle,
    pub order_router: ArbiterHandle,
    /// The Monitor and the Healer (both mostly wait; they share one thread).
    pub monitor: ArbiterHandle,
}

/// A shared actor's incarnation ended.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct SharedExited {
    pub actor: ActorKind,
    pub incarnation: u32,
    pub exit: ChildExit,
}

/// The ordered shutdown. Answers when everything has stopped (or its deadline passed).
#[derive(Debug, Message)]
#[rtype(result = "ShutdownReport")]
pub struct ShutdownTree {
    /// Deadline for each step (in-flight orders, traders, shared actors).
    pub deadline: Duration,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Orders still being placed when the deadline passed (left as `sending`/`unknown` in the
    /// database; the next start resolves them by client order id).
    pub orders_in_flight: usize,
    /// Whether persistence confirmed the final flush.
    pub flushed: bool,
}

/// The supervision tree as the journal has it now (for the Monitor).
#[derive(Debug, Message)]
#[rtype(result = "TreeStatus")]
pub struct GetTreeStatus;

#[derive(Debug, Clone, Default)]
pub struct TreeStatus {
    pub actors: Vec<crate::failure_points::monitor::ActorObservation>,
    pub journal_write_failures: u64,
}

/// Re-admit a quarantined user (the Healer, after the cool-down). Answers whether it was.
#[derive(Debug, Message)]
#[rtype(result = "bool")]
pub struct ReadmitUser {
    pub user: UserId,
    pub reason: String,
}

/// A user supervisor's address, for tests and admin paths.
#[derive(Debug, Message)]
#[rtype(result = "Option<Addr<UserSupervisor>>")]
pub struct UserSupervisorOf(pub UserId);

/// The shared actors, in start order. Persistence first: every other actor's `started` event (and
/// anything it writes at once) is mirrored to the database through it.
const SHARED_KINDS: [ActorKind; 7] = [
    ActorKind::Persistence,
    ActorKind::Notifier,
    ActorKind::MarketData,
    ActorKind::OrderRouter,
    ActorKind::Intelligence,
    ActorKind::Monitor,
    ActorKind::Healer,
];

#[derive(Debug)]
struct SharedChild {
    tracker: RestartTracker,
    incarnation: u32,
}

pub struct RootSupervisor {
    settings: TreeSettings,
    exchange: Arc<dyn Exchange>,
    directory: Arc<Directory>,
    clock: Arc<dyn Clock>,
    journal: SharedJournal,
    arbiters: SharedArbiters,
    shared: BTreeMap<ActorKind, SharedChild>,
    /// Market data subscriptions, kept across market data restarts.
    subscriptions: SubscriptionBook,
    /// Users to start once the shared actors are up, each with its trader arbiter.
    pending_users: Vec<(TraderSeed, ArbiterHandle)>,
    users: BTreeMap<UserId, Addr<UserSupervisor>>,
    shutting_down: bool,
    /// Fired once, with the reason, when a shared actor exceeds its restart limits.
    escalation: Option<oneshot::Sender<String>>,
    /// Shutdown steps waiting for a shared actor to stop.
    stop_waiters: BTreeMap<ActorKind, Vec<oneshot::Sender<()>>>,
}

impl std::fmt::Debug for RootSupervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootSupervisor")
            .field("users", &self.users.len())
            .field("shutting_down", &self.shutting_down)
            .finish()
    }
}

impl RootSupervisor {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: TreeSettings,
        exchange: Arc<dyn Exchange>,
        directory: Arc<Directory>,
        clock: Arc<dyn Clock>,
        journal: SharedJournal,
        arbiters: SharedArbiters,
        users: Vec<(TraderSeed, ArbiterHandle)>,
        escalation: oneshot::Sender<String>,
    ) -> Self {
        let http = settings.http.is_some().then_some(ActorKind::Http);
        let shared = SHARED_KINDS
            .into_iter()
            .chain(http)
            .map(|kind| {
                journal.borrow_mut().register(kind, None, None);
                let tracker = RestartTracker::new(settings.shared_policy, seed_from_name(kind.as_str()));
                (kind, SharedChild { tracker, incarnation: 0 })
            })
            .collect();
        Self {
            settings,
            exchange,
            directory,
            clock,
            journal,
            arbiters,
            shared,
            subscriptions: SubscriptionBook::default(),
            pending_users: users,
            users: BTreeMap::new(),
            shutting_down: false,
            escalation: Some(escalation),
            stop_waiters: BTreeMap::new(),
        }
    }

    fn event(
        &self,
        actor: ActorKind,
        event: EventKind,
        incarnation: u32,
        reason: Option<String>,
        backoff_ms: Option<u64>,
    ) {
        let mut journal = self.journal.borrow_mut();
        let ts_ms = journal.now_ms();
        journal.record(SupervisionEvent { ts_ms, event, actor, user: None, incarnation, reason, backoff_ms });
    }

    fn spawn_shared(&mut self, kind: ActorKind, ctx: &mut Context<Self>) {
        let child = self.shared.get_mut(&kind).expect("Invariant: every shared kind is registered");
        child.incarnation += 1;
        let incarnation = child.incarnation;
        let root = ctx.address();
        // One exit message per incarnation, so `do_send` cannot grow the mailbox without bound.
        let on_exit = move |exit| root.do_send(SharedExited { actor: kind, incarnation, exit });
        match kind {
            ActorKind::Persistence => {
                let (settings, gauge) = (self.settings.persistence.clone(), self.directory.outbox.clone());
                let addr = spawn_watched(
                    &self.arbiters.persistence,
                    PERSISTENCE_MAILBOX_CAPACITY,
                    move || PersistenceActor::new(settings, gauge),
                    on_exit,
                );
                self.directory.set_persistence(Some(addr));
            }
            ActorKind::MarketData => {
                let (exchange, clock, book, interval) = (
                    self.exchange.clone(),
                    self.clock.clone(),
                    self.subscriptions.clone(),
                    self.settings.market_poll_interval,
                );
                let addr = spawn_watched(
                    &self.arbiters.market_data,
                    SHARED_MAILBOX_CAPACITY,
                    move || MarketData::new(exchange, clock, book, interval),
                    on_exit,
                );
                self.directory.set_market_data(Some(addr));
            }
            ActorKind::OrderRouter => {
                let (exchange, directory, clock, settings) =
                    (self.exchange.clone(), self.directory.clone(), self.clock.clone(), self.settings.router);
                let addr = spawn_watched(
                    &self.arbiters.order_router,
                    SHARED_MAILBOX_CAPACITY,
                    move || OrderRouter::new(exchange, directory, clock, settings),
                    on_exit,
                );
                if let Some(plan) = &self.settings.reconcile {
                    // A fresh mailbox: the one message fits.
                    if addr.try_send(plan.clone()).is_err() {
                        tracing::error!("order router: periodic reconciliation could not be started");
                    }
                }
                self.directory.set_order_router(Some(addr));
            }
            ActorKind::Monitor => {
                let (settings, tree, directory, exchange, clock) = (
                    self.settings.monitor.clone(),
                    ctx.address().recipient(),
                    self.directory.clone(),
                    self.exchange.clone(),
                    self.clock.clone(),
                );
                let addr = spawn_watched(
                    &self.arbiters.monitor,
                    SHARED_MAILBOX_CAPACITY,
                    move || Monitor::new(settings, tree, directory, exchange, clock),
                    on_exit,
                );
                self.directory.set_monitor(Some(addr));
            }
            ActorKind::Healer => {
                let (settings, directory, clock, readmit) = (
                    self.settings.healer.clone(),
                    self.directory.clone(),
                    self.clock.clone(),
                    ctx.address().recipient(),
                );
                let addr = spawn_watched(
                    &self.arbiters.monitor,
                    SHARED_MAILBOX_CAPACITY,
                    move || Healer::new(settings, directory, clock, readmit),
                    on_exit,
                );
                self.directory.set_healer(Some(addr));
            }
            ActorKind::Intelligence => {
                let (source, clock) = (self.settings.intelligence.clone(), self.clock.clone());
                let (breaker, directory) = (self.settings.external_breaker, self.directory.clone());
                let addr = spawn_watched(
                    &self.arbiters.monitor,
                    SHARED_MAILBOX_CAPACITY,
                    move || Intelligence::new(source, clock, breaker, directory),
                    on_exit,
                );
                self.directory.set_intelligence(Some(addr));
            }
            ActorKind::Notifier => {
                let (destinations, window, clock) =
                    (self.settings.notify_destinations.clone(), self.settings.notify_rate_window, self.clock.clone());
                let breaker = self.settings.external_breaker;
                let addr = spawn_watched(
                    &self.arbiters.monitor,
                    SHARED_MAILBOX_CAPACITY,
                    move || Notifier::new(destinations, window, clock, breaker),
                    on_exit,
                );
                self.directory.set_notifier(Some(addr));
            }
            ActorKind::Http => {
                let Some(settings) = self.settings.http.clone() else { return };
                let (directory, clock, root) = (self.directory.clone(), self.clock.clone(), ctx.address());
                let addr = spawn_watched(
                    &self.arbiters.monitor,
                    SHARED_MAILBOX_CAPACITY,
                    move || HttpApi::new(settings, directory, root, clock),
                    on_exit,
                );
                self.directory.set_http(Some(addr));
            }
            ActorKind::Trader => unreachable!("traders are supervised by their user supervisors"),
        }
        let event = if incarnation == 1 { EventKind::Started } else { EventKind::Restarted };
        self.event(kind, event, incarnation, None, None);
        self.journal.borrow_mut().set_state(kind, None, ChildState::Running, None);
    }

    fn clear_directory(&self, kind: ActorKind) {
        match kind {
            ActorKind::Persistence => self.directory.set_persistence(None),
            ActorKind::MarketData => self.directory.set_market_data(None),
            ActorKind::OrderRouter => self.directory.set_order_router(None),
            ActorKind::Monitor => self.directory.set_monitor(None),
            ActorKind::Healer => self.directory.set_healer(None),
            ActorKind::Intelligence => self.directory.set_intelligence(None),
            ActorKind::Notifier => self.directory.set_notifier(None),
            ActorKind::Http => self.directory.set_http(None),
            ActorKind::Trader => {}
        }
    }

    fn escalate(&mut self, kind: ActorKind, reason: String, ctx: &mut Context<Self>) {
        let incarnation = self.shared[&kind].incarnation;
        self.event(kind, EventKind::Escalated, incarnation, Some(reason.clone()), None);
        self.journal.borrow_mut().snapshot();
        let directory = self.directory.clone();
        let flush = async move {
            let flushed = tokio::time::timeout(Duration::from_secs(5), persistence::checkpoint(&directory)).await;
            matches!(flushed, Ok(Ok(())))
        };
        ctx.spawn(flush.into_actor(self).map(move |flushed, root, _| {
            tracing::error!(
                actor = kind.as_str(),
                flushed,
                "escalating: the process will exit non-zero so that its service manager restarts it"
            );
            if let Some(escalation) = root.escalation.take() {
                let _ = escalation.send(format!("{} escalated: {reason}", kind.as_str()));
            }
        }));
    }

    /// Every shared actor is running or being restarted within its limits (users may be
    /// quarantined or halted: they are handled), and nothing has escalated.
    fn tree_healthy(&self) -> bool {
        let journal = self.journal.borrow();
        // The HTTP API is a status surface: the trading tree is healthy without it.
        self.shared.keys().filter(|kind| **kind != ActorKind::Http).all(|kind| {
            journal
                .status(*kind, None)
                .is_some_and(|s| matches!(s.state, ChildState::Running | ChildState::Starting | ChildState::Restarting))
        }) && self.escalation.is_some()
    }

    /// Asks a shared actor to stop; the receiver fires when it has.
    fn stop_shared(&mut self, kind: ActorKind) -> Option<oneshot::Receiver<()>> {
        let sent = match kind {
            ActorKind::Persistence => self.directory.persistence().ok().map(|a| a.try_send(Stop).is_ok()),
            ActorKind::MarketData => self.directory.market_data().ok().map(|a| a.try_send(Stop).is_ok()),
            ActorKind::OrderRouter => self.directory.order_router().ok().map(|a| a.try_send(Stop).is_ok()),
            ActorKind::Monitor => self.directory.monitor().ok().map(|a| a.try_send(Stop).is_ok()),
            ActorKind::Healer => self.directory.healer().ok().map(|a| a.try_send(Stop).is_ok()),
            ActorKind::Intelligence => self.directory.intelligence().ok().map(|a| a.try_send(Stop).is_ok()),
            ActorKind::Notifier => self.directory.notifier().ok().map(|a| a.try_send(Stop).is_ok()),
            ActorKind::Http => self.directory.http().ok().map(|a| a.try_send(Stop).is_ok()),
            ActorKind::Trader => None,
        };
        if sent != Some(true) {
            return None;
        }
        let (done, stopped) = oneshot::channel();
        self.stop_waiters.entry(kind).or_default().push(done);
        Some(stopped)
    }
}

impl Actor for RootSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let kinds: Vec<ActorKind> = self.shared.keys().copied().collect();
        let ordered = SHARED_KINDS.into_iter().chain([ActorKind::Http]).filter(|kind| kinds.contains(kind));
        for kind in ordered {
            self.spawn_shared(kind, ctx);
        }
        for (seed, arbiter) in std::mem::take(&mut self.pending_users) {
            let user = seed.user.clone();
            let supervisor =
                UserSupervisor::new(seed, arbiter, self.settings.user_policy, self.journal.clone()).start();
            self.users.insert(user, supervisor);
        }
        ctx.run_interval(self.settings.status_interval, |root, _| root.journal.borrow_mut().snapshot());
        if let Some(interval) = self.settings.watchdog_interval {
            // Only a healthy tree pings: one whose shared actors keep failing stops, and systemd
            // restarts the process (after WatchdogSec) if the escalation itself cannot.
            ctx.run_interval(interval, |root, _| {
                if root.tree_healthy() {
                    crate::service::watchdog();
                } else {
                    tracing::warn!("watchdog: not pinging, a shared actor is not running");
                }
            });
        }
    }
}

impl Handler<GetTreeStatus> for RootSupervisor {
    type Result = MessageResult<GetTreeStatus>;

    fn handle(&mut self, _: GetTreeStatus, _: &mut Context<Self>) -> Self::Result {
        let journal = self.journal.borrow();
        let actors = journal
            .children()
            .map(|child| crate::failure_points::monitor::ActorObservation {
                actor: child.actor.as_str(),
                user: child.user.clone(),
                state: child.state.as_str(),
                restarts: child.restarts,
                incarnation: child.incarnation,
                since_ms: child.since_ms,
                reason: child.reason.clone(),
            })
            .collect();
        MessageResult(TreeStatus { actors, journal_write_failures: journal.write_failures() })
    }
}

impl Handler<SharedExited> for RootSupervisor {
    type Result = ();

    fn handle(&mut self, message: SharedExited, ctx: &mut Context<Self>) {
        let kind = message.actor;
        if self.shared.get(&kind).is_none_or(|child| child.incarnation != message.incarnation) {
            return;
        }
        self.clear_directory(kind);
        if self.shutting_down {
            self.event(kind, EventKind::Stopped, message.incarnation, Some("shutdown".to_owned()), None);
            for waiter in self.stop_waiters.remove(&kind).unwrap_or_default() {
                let _ = waiter.send(());
            }
            return;
        }
        let reason = match message.exit.panic {
            Some(panic) => format!("panic: {panic}"),
            None => "stopped unexpectedly".to_owned(),
        };
        self.event(kind, EventKind::Crashed, message.incarnation, Some(reason.clone()), None);
        let now_ms = self.clock.now_ms();
        let child = self.shared.get_mut(&kind).expect("Invariant: checked above");
        match child.tracker.on_failure(now_ms) {
            RestartDecision::Restart { backoff_ms, .. } => {
                self.event(kind, EventKind::Restarting, message.incarnation, Some(reason), Some(backoff_ms));
                ctx.run_later(Duration::from_millis(backoff_ms), move |root, ctx| {
                    if !root.shutting_down {
                        root.spawn_shared(kind, ctx);
                    }
                });
            }
            RestartDecision::GiveUp { failures_in_window } => {
                let policy = child.tracker.policy();
                let why = format!(
                    "{failures_in_window} failures within {} s (shared_max_restarts {}); last: {reason}",
                    policy.within_ms / 1_000,
                    policy.max_restarts
                );
                if kind == ActorKind::Http {
                    // A status surface: losing it must not stop trading. It stays down (SYS-PROCESS
                    // reports it, the operator is told) until the process restarts.
                    let why = format!("{why}; the HTTP API stays down until the process restarts, trading goes on");
                    self.event(kind, EventKind::Quarantined, message.incarnation, Some(why.clone()), None);
                    crate::actors::notifier::notify(
                        &self.directory,
                        "http:quarantined",
                        crate::notify::Severity::Critical,
                        format!("the HTTP API is down: {why}"),
                    );
                    return;
                }
                self.escalate(kind, why, ctx);
            }
        }
    }
}

impl Handler<ShutdownTree> for RootSupervisor {
    type Result = ResponseActFuture<Self, ShutdownReport>;

    fn handle(&mut self, message: ShutdownTree, _: &mut Context<Self>) -> Self::Result {
        self.shutting_down = true;
        let deadline = message.deadline;
        let (market_data, router) = (self.directory.market_data().ok(), self.directory.order_router().ok());
        let users: Vec<Addr<UserSupervisor>> = self.users.values().cloned().collect();
        // 1. No new decisions. 2. Traders stop (no new intents). 3. In-flight orders get the
        // deadline, and the router refuses anything that still arrives.
        let first = async move {
            if let Some(market_data) = market_data {
                let _ = market_data.send(StopFeeds).timeout(deadline).await;
            }
            join_all(users.iter().map(|user| user.send(UserShutdown { deadline }).timeout(deadline * 2))).await;
            match router {
                Some(router) => router.send(Drain { deadline }).timeout(deadline * 2).await.unwrap_or(usize::MAX),
                None => 0,
            }
        };
        let work = first
            .into_actor(self)
            .then(move |orders_in_flight, root, _| {
                // 4. The shared actors that depend on persistence stop (the Monitor and Healer too:
                // nothing is left to watch or heal).
                let waits: Vec<_> = [
                    ActorKind::Http,
                    ActorKind::MarketData,
                    ActorKind::OrderRouter,
                    ActorKind::Intelligence,
                    ActorKind::Monitor,
                    ActorKind::Healer,
                    ActorKind::Notifier,
                ]
                .into_iter()
                .filter_map(|kind| root.stop_shared(kind))
                .collect();
                async move {
                    join_all(waits.into_iter().map(|wait| tokio::time::timeout(deadline, wait))).await;
                    orders_in_flight
                }
                .into_actor(root)
            })
            .then(move |orders_in_flight, root, _| {
                // 5. Persistence flushes (after every queued write) and stops.
                let directory = root.directory.clone();
                async move {
                    let flushed = tokio::time::timeout(deadline, persistence::checkpoint(&directory)).await;
                    (orders_in_flight, matches!(flushed, Ok(Ok(()))))
                }
                .into_actor(root)
            })
            .then(move |(orders_in_flight, flushed), root, _| {
                let wait = root.stop_shared(ActorKind::Persistence);
                async move {
                    if let Some(wait) = wait {
                        let _ = tokio::time::timeout(deadline, wait).await;
                    }
                    ShutdownReport { orders_in_flight, flushed }
                }
                .into_actor(root)
            })
            .map(|report, root, _| {
                // 6. The final tree snapshot.
                root.journal.borrow_mut().snapshot();
                report
            });
        Box::pin(work)
    }
}

impl Handler<ReadmitUser> for RootSupervisor {
    type Result = ResponseFuture<bool>;

    fn handle(&mut self, message: ReadmitUser, _: &mut Context<Self>) -> Self::Result {
        let supervisor = self.users.get(&message.user).cloned();
        let shutting_down = self.shutting_down;
        Box::pin(async move {
            match supervisor {
                Some(supervisor) if !shutting_down => {
                    supervisor.send(UserReadmit { reason: message.reason }).await.unwrap_or(false)
                }
                _ => false,
            }
        })
    }
}

impl Handler<UserSupervisorOf> for RootSupervisor {
    type Result = Option<Addr<UserSupervisor>>;

    fn handle(&mut self, message: UserSupervisorOf, _: &mut Context<Self>) -> Self::Result {
        self.users.get(&message.0).cloned()
    }
}
