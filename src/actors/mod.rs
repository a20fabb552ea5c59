//! The actor shells. Each actor translates messages and does I/O; the decisions live in plain
//! structs elsewhere (`trader::core`, `supervision::policy`, `persistence::Store`,
//! `exchange::paper::venue`). See `actors.md` for the tree, every message, and which failure
//! points each actor owns.

pub mod healer;
pub mod intelligence;
pub mod market_data;
pub mod monitor;
pub mod notifier;
pub mod order_router;
pub mod persistence;
pub mod trader;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use actix::Addr;
use parking_lot::RwLock;
use tokio::sync::Semaphore;

use crate::actors::healer::Healer;
use crate::actors::intelligence::Intelligence;
use crate::actors::market_data::MarketData;
use crate::actors::monitor::Monitor;
use crate::actors::notifier::Notifier;
use crate::actors::order_router::OrderRouter;
use crate::actors::persistence::PersistenceActor;
use crate::limits::PERSISTENCE_IN_FLIGHT_MAX;

/// Where the current incarnation of each shared actor can be reached.
///
/// A restarted actor has a new address (see `supervision::watch`), so nobody keeps a shared
/// actor's address for long: they ask the directory each time. The root supervisor writes an
/// entry when it starts an incarnation and clears it when that incarnation exits; everyone else
/// only reads. An empty entry means "restarting": callers record that as their reason to skip.
pub struct Directory {
    persistence: RwLock<Option<Addr<PersistenceActor>>>,
    market_data: RwLock<Option<Addr<MarketData>>>,
    order_router: RwLock<Option<Addr<OrderRouter>>>,
    monitor: RwLock<Option<Addr<Monitor>>>,
    healer: RwLock<Option<Addr<Healer>>>,
    intelligence: RwLock<Option<Addr<Intelligence>>>,
    notifier: RwLock<Option<Addr<Notifier>>>,
    /// Requests to persistence that are queued or running, across every caller. actix lets each
    /// sender put one message past the mailbox's capacity and every `Addr` clone is a new sender,
    /// so the mailbox alone bounds nothing here; these permits do (see `persistence::run` and
    /// `persistence::submit`). A permit is released when its operation has run (or was dropped).
    pub(crate) persistence_permits: Arc<Semaphore>,
    /// Fire-and-forget writes refused because every permit was taken (read by status surfaces).
    pub(crate) persistence_writes_refused: AtomicU64,
}

impl Default for Directory {
    fn default() -> Self {
        Self {
            persistence: RwLock::default(),
            market_data: RwLock::default(),
            order_router: RwLock::default(),
            monitor: RwLock::default(),
            healer: RwLock::default(),
            intelligence: RwLock::default(),
            notifier: RwLock::default(),
            persistence_permits: Arc::new(Semaphore::new(PERSISTENCE_IN_FLIGHT_MAX)),
            persistence_writes_refused: AtomicU64::new(0),
        }
    }
}

impl fmt::Debug for Directory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Directory")
            .field("persistence", &self.persistence.read().is_some())
            .field("market_data", &self.market_data.read().is_some())
            .field("order_router", &self.order_router.read().is_some())
            .field("monitor", &self.monitor.read().is_some())
            .field("healer", &self.healer.read().is_some())
            .field("intelligence", &self.intelligence.read().is_some())
            .field("notifier", &self.notifier.read().is_some())
            .finish()
    }
}

/// A shared actor is between incarnations (or stopped).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} is not running (restarting or stopped)")]
pub struct NotRunning(pub &'static str);

impl Directory {
    /// Fire-and-forget writes refused so far because persistence was saturated.
    pub fn persistence_writes_refused(&self) -> u64 {
        self.persistence_writes_refused.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn persistence(&self) -> Result<Addr<PersistenceActor>, NotRunning> {
        self.persistence.read().clone().ok_or(NotRunning("persistence"))
    }

    pub fn market_data(&self) -> Result<Addr<MarketData>, NotRunning> {
        self.market_data.read().clone().ok_or(NotRunning("market_data"))
    }

    pub fn order_router(&self) -> Result<Addr<OrderRouter>, NotRunning> {
        self.order_router.read().clone().ok_or(NotRunning("order_router"))
    }

    pub fn monitor(&self) -> Result<Addr<Monitor>, NotRunning> {
        self.monitor.read().clone().ok_or(NotRunning("monitor"))
    }

    pub fn healer(&self) -> Result<Addr<Healer>, NotRunning> {
        self.healer.read().clone().ok_or(NotRunning("healer"))
    }

    pub fn intelligence(&self) -> Result<Addr<Intelligence>, NotRunning> {
        self.intelligence.read().clone().ok_or(NotRunning("intelligence"))
    }

    pub fn notifier(&self) -> Result<Addr<Notifier>, NotRunning> {
        self.notifier.read().clone().ok_or(NotRunning("notifier"))
    }

    pub(crate) fn set_notifier(&self, addr: Option<Addr<Notifier>>) {
        *self.notifier.write() = addr;
    }

    pub(crate) fn set_intelligence(&self, addr: Option<Addr<Intelligence>>) {
        *self.intelligence.write() = addr;
    }

    pub(crate) fn set_monitor(&self, addr: Option<Addr<Monitor>>) {
        *self.monitor.write() = addr;
    }

    pub(crate) fn set_healer(&self, addr: Option<Addr<Healer>>) {
        *self.healer.write() = addr;
    }

    pub(crate) fn set_persistence(&self, addr: Option<Addr<PersistenceActor>>) {
        *self.persistence.write() = addr;
    }

    pub(crate) fn set_market_data(&self, addr: Option<Addr<MarketData>>) {
        *self.market_data.write() = addr;
    }

    pub(crate) fn set_order_router(&self, addr: Option<Addr<OrderRouter>>) {
        *self.order_router.write() = addr;
    }
}

/// Stop after the messages already queued (orderly shutdown of a shared actor: its supervisor
/// knows not to restart it).
#[derive(Debug, actix::Message)]
#[rtype(result = "()")]
pub struct Stop;

macro_rules! stop_handler {
    ($actor:ty) => {
        impl actix::Handler<Stop> for $actor {
            type Result = ();
            fn handle(&mut self, _: Stop, ctx: &mut actix::Context<Self>) {
                actix::ActorContext::stop(ctx);
            }
        }
    };
}

stop_handler!(PersistenceActor);
stop_handler!(MarketData);
stop_handler!(OrderRouter);
stop_handler!(Monitor);
stop_handler!(Healer);
stop_handler!(Intelligence);
stop_handler!(Notifier);
