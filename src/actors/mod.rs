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

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

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
use crate::domain::{Symbol, UserId};
pub use crate::failure_points::database::{DatabaseRefusal, DatabaseRefusalKind, OutboxStatus};
use crate::failure_points::monitor::RunRecord;
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
    http: RwLock<Option<Addr<crate::http::HttpApi>>>,
    /// Requests to persistence that are queued or running, across every caller. actix lets each
    /// sender put one message past the mailbox's capacity and every `Addr` clone is a new sender,
    /// so the mailbox alone bounds nothing here; these permits do (see `persistence::run` and
    /// `persistence::submit`). A permit is released when its operation has run (or was dropped).
    pub(crate) persistence_permits: Arc<Semaphore>,
    /// Fire-and-forget writes refused because every permit was taken (read by status surfaces).
    pub(crate) persistence_writes_refused: AtomicU64,
    /// The durable outbox as the persistence actor last left it (written by it; read by the order
    /// router, which halts entries while it holds records, and by the Monitor).
    pub(crate) outbox: Arc<OutboxGauge>,
    /// Users whose exchange position the recorded fills still do not explain after reconciliation
    /// imported what it could, with why (written by the order router's reconciliation; read by its
    /// account syncs, which halt those users' entries, and by status surfaces).
    pub(crate) position_holds: RwLock<BTreeMap<UserId, String>>,
    /// Users whose credentials the exchange refused on a request no decision made (the periodic
    /// reconciliation), with the refusal: a decision on a verified account book asks the exchange
    /// nothing, so without this a revoked key would go unnoticed until the next request of the
    /// user's own. Written by the order router; read by its account syncs, which answer
    /// "credentials refused" so the trader halts. Kept for this process's life (a fixed key needs a
    /// restart, as every halt does).
    pub(crate) credentials_refused: RwLock<BTreeMap<UserId, String>>,
    /// The Monitor's newest run, written by the Monitor after each run and read by the HTTP API
    /// (status, health, metrics, history) without a database read.
    latest_monitor_run: RwLock<Option<Arc<RunRecord>>>,
    /// Users whose position the last reconciliation pass could not explain, not (yet) halted:
    /// a second pass in a row that agrees halts them (written and read by the order router).
    pub(crate) position_suspects: RwLock<BTreeMap<UserId, String>>,
    /// Counted events for `/metrics` (orders by result, guard blocks; exchange requests are counted
    /// by the exchange wrapper into the same registry).
    pub metrics: crate::metrics::Metrics,
    /// What the order router last read of each account and when (a full open-orders sweep, each
    /// symbol's position), so that a trader restarting soon after spends request weight only on
    /// what must be read again. Written and read by the order router (across its incarnations).
    pub(crate) account_reads: RwLock<BTreeMap<UserId, AccountReads>>,
    /// Each user's account as its exchange stream tells it (issue 14), for decisions without an
    /// exchange request. Written by the order router's stream tasks and account syncs (across its
    /// incarnations); read by its syncs.
    pub(crate) account_books:
        RwLock<BTreeMap<UserId, Arc<parking_lot::Mutex<crate::trader::account_book::AccountBook>>>>,
    /// What a stream told of bulwark orders whose placement was not recorded yet (the exchange's
    /// stream runs ahead of its answer), replayed once the placement records the order open.
    /// Written by the order router's stream tasks and placements; read by its placements.
    pub(crate) stream_updates_waiting: parking_lot::Mutex<order_router::account_feed::WaitingUpdates>,
    /// Woken each time a stream task applied an event to a book (an account sync waiting for its
    /// orders' final events listens). Notified by the stream tasks; awaited by account syncs.
    pub(crate) account_events_applied: tokio::sync::Notify,
    /// Paces trader start-ups within their share of the request weight (`None`: a venue without a
    /// weight limit). Set by the server at start; reserved from by trader start-ups.
    start_up_pacer: parking_lot::Mutex<Option<crate::exchange::start_pacer::StartUpPacer>>,
}

/// When the order router last read parts of one account (venue time, ms).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountReads {
    /// Every open order of the account listed (no symbol filter: weight 40 on Binance) and every
    /// `bw-` order among them known to the database or cancelled.
    pub open_orders_swept_at_ms: Option<i64>,
    /// Each symbol's position read from the exchange: when, and the quantity it held.
    pub positions_verified: BTreeMap<Symbol, PositionRead>,
}

/// One read of a position from the exchange (kept by [`AccountReads`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PositionRead {
    pub at_ms: i64,
    /// Signed: negative for a short.
    pub quantity: rust_decimal::Decimal,
}

/// The durable outbox's depth and history, and the database's write health, shared across
/// persistence incarnations. Written by the persistence actor only; read by the order router
/// (entry halts, placements), the Monitor (SYS-DATABASE) and the HTTP API (`/health`, status).
#[derive(Debug, Default)]
pub struct OutboxGauge {
    depth: AtomicUsize,
    capacity: AtomicUsize,
    replayed_total: AtomicU64,
    rejected_total: AtomicU64,
    /// Why the database last refused a write (cleared when the outbox drains).
    last_error: RwLock<Option<String>>,
    /// The database refuses writes now (`None`: the last write went through).
    refusal: RwLock<Option<DatabaseRefusal>>,
    /// Records neither the database nor the outbox could keep, since start.
    records_lost_total: AtomicU64,
    /// Why the newest record could be kept nowhere (`None` once one is kept again): while set, the
    /// order router places no order, since what it would record could be lost.
    records_unkept: RwLock<Option<String>>,
    /// Whose order rows changed when, so that an account sync need not read the database to know
    /// a symbol still has nothing unresolved. Stamped by the persistence actor as it applies (or
    /// queues) each order record; read and marked by the order router's syncs.
    pub(crate) order_rows: OrderRowStamps,
}

/// Which (user, symbol) had no unresolved order when last read, still true unless the user's order
/// rows changed since: a sync that finds its mark current skips the database read (issue 14: a
/// decision on a verified account reads neither the exchange nor the database).
///
/// Every change takes a new stamp, greater than any before, after it is applied and before its
/// writer is answered (the persistence actor does both in one handler). A sync takes the user's
/// stamp *before* its read and marks the symbol settled under it only if the read found nothing;
/// the mark counts only while the user's stamp is still that one, so a change anywhere in between
/// voids it.
#[derive(Debug, Default)]
pub struct OrderRowStamps {
    /// The last stamp handed out.
    last_stamp: AtomicU64,
    /// Stamped when a change's user could not be told (everyone's rows may have changed).
    everyone_changed_at: AtomicU64,
    /// Each user's newest change.
    user_changed_at: RwLock<std::collections::HashMap<UserId, u64>>,
    /// (user, symbol) found with nothing unresolved, under the user's stamp of before that read.
    settled_at: RwLock<std::collections::HashMap<(UserId, Symbol), u64>>,
}

impl OrderRowStamps {
    /// The user's current stamp (the newest change that may have touched its rows).
    pub fn stamp(&self, user: &UserId) -> u64 {
        let own = self.user_changed_at.read().get(user).copied().unwrap_or(0);
        own.max(self.everyone_changed_at.load(Ordering::SeqCst))
    }

    /// `user`'s order rows changed (`None`: anyone's may have).
    pub fn note_changed(&self, user: Option<&UserId>) {
        let stamp = self.last_stamp.fetch_add(1, Ordering::SeqCst) + 1;
        match user {
            Some(user) => {
                self.user_changed_at.write().insert(user.clone(), stamp);
            }
            None => self.everyone_changed_at.store(stamp, Ordering::SeqCst),
        }
    }

    /// A read begun under `stamp_before_read` found nothing of `symbol` unresolved.
    pub fn note_settled(&self, user: &UserId, symbol: &Symbol, stamp_before_read: u64) {
        if self.stamp(user) == stamp_before_read {
            self.settled_at.write().insert((user.clone(), symbol.clone()), stamp_before_read);
        }
    }

    /// Nothing of `symbol` is unresolved for `user`: read so, and nothing of the user's changed since.
    pub fn is_settled(&self, user: &UserId, symbol: &Symbol) -> bool {
        let marked = self.settled_at.read().get(&(user.clone(), symbol.clone())).copied();
        marked.is_some_and(|marked| marked == self.stamp(user))
    }
}

impl OutboxGauge {
    /// Whose order rows changed when (see [`OrderRowStamps`]).
    pub fn order_rows(&self) -> &OrderRowStamps {
        &self.order_rows
    }

    pub fn status(&self) -> OutboxStatus {
        OutboxStatus {
            depth: self.depth.load(Ordering::Relaxed),
            capacity: self.capacity.load(Ordering::Relaxed),
            replayed_total: self.replayed_total.load(Ordering::Relaxed),
            rejected_total: self.rejected_total.load(Ordering::Relaxed),
            last_error: self.last_error.read().clone(),
            refusal: self.refusal.read().clone(),
            records_lost_total: self.records_lost_total.load(Ordering::Relaxed),
            records_unkept: self.records_unkept.read().clone(),
        }
    }

    /// The database refuses writes (`Some`), or takes them again (`None`). Keeps the first
    /// `since_ms` while the same kind of refusal goes on.
    pub(crate) fn set_refusal(&self, refusal: Option<DatabaseRefusal>) {
        let mut current = self.refusal.write();
        match (&*current, refusal) {
            (Some(held), Some(new)) if held.kind == new.kind => {
                *current = Some(DatabaseRefusal { since_ms: held.since_ms, ..new });
            }
            (_, new) => *current = new,
        }
    }

    pub(crate) fn refusal(&self) -> Option<DatabaseRefusal> {
        self.refusal.read().clone()
    }

    /// A record was kept nowhere (`Some(why)`, counted), or one was kept again (`None`).
    pub(crate) fn set_records_unkept(&self, why: Option<String>) {
        if why.is_some() {
            self.records_lost_total.fetch_add(1, Ordering::Relaxed);
        }
        let mut current = self.records_unkept.write();
        if current.is_some() || why.is_some() {
            *current = why;
        }
    }

    pub(crate) fn set_depth(&self, depth: usize, capacity: usize) {
        self.depth.store(depth, Ordering::Relaxed);
        self.capacity.store(capacity, Ordering::Relaxed);
        if depth == 0 {
            *self.last_error.write() = None;
        }
    }

    pub(crate) fn set_last_error(&self, error: String) {
        *self.last_error.write() = Some(error);
    }

    pub(crate) fn count_replayed(&self) {
        self.replayed_total.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_rejected(&self) {
        self.rejected_total.fetch_add(1, Ordering::Relaxed);
    }
}

impl Default for Directory {
    fn default() -> Self {
        Self::with_metrics(crate::metrics::Metrics::new())
    }
}

impl Directory {
    /// The same directory with `permits` persistence permits instead of the floor
    /// ([`crate::limits::persistence_in_flight_max`] sizes them for a fleet).
    /// Trader start-ups take at most `weight_per_minute` of request weight together.
    pub fn with_start_up_pacer(self, weight_per_minute: u32, now_ms: i64) -> Self {
        *self.start_up_pacer.lock() = Some(crate::exchange::start_pacer::StartUpPacer::new(weight_per_minute, now_ms));
        self
    }

    /// How long a trader start-up costing `weight` waits for its turn (ms; 0 without a pacer).
    pub fn start_up_wait_ms(&self, weight: u32, now_ms: i64) -> u64 {
        self.start_up_pacer.lock().as_mut().map_or(0, |pacer| pacer.reserve(weight, now_ms))
    }

    pub fn with_persistence_permits(mut self, permits: usize) -> Self {
        self.persistence_permits = Arc::new(Semaphore::new(permits.max(1)));
        self
    }

    /// An empty directory counting into `metrics`.
    pub fn with_metrics(metrics: crate::metrics::Metrics) -> Self {
        Self {
            persistence: RwLock::default(),
            market_data: RwLock::default(),
            order_router: RwLock::default(),
            monitor: RwLock::default(),
            healer: RwLock::default(),
            intelligence: RwLock::default(),
            notifier: RwLock::default(),
            http: RwLock::default(),
            persistence_permits: Arc::new(Semaphore::new(PERSISTENCE_IN_FLIGHT_MAX)),
            persistence_writes_refused: AtomicU64::new(0),
            outbox: Arc::new(OutboxGauge::default()),
            position_holds: RwLock::default(),
            credentials_refused: RwLock::default(),
            position_suspects: RwLock::default(),
            account_reads: RwLock::default(),
            account_books: RwLock::default(),
            stream_updates_waiting: parking_lot::Mutex::default(),
            account_events_applied: tokio::sync::Notify::new(),
            start_up_pacer: parking_lot::Mutex::default(),
            latest_monitor_run: RwLock::default(),
            metrics,
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
        self.persistence_writes_refused.load(Ordering::Relaxed)
    }

    /// The durable outbox now.
    pub fn outbox(&self) -> OutboxStatus {
        self.outbox.status()
    }

    /// Users whose entries are halted because their position does not match their fills.
    pub fn position_holds(&self) -> BTreeMap<UserId, String> {
        self.position_holds.read().clone()
    }

    /// The Monitor's newest run (every failure point's status).
    pub fn latest_monitor_run(&self) -> Option<Arc<RunRecord>> {
        self.latest_monitor_run.read().clone()
    }

    pub(crate) fn set_latest_monitor_run(&self, run: RunRecord) {
        *self.latest_monitor_run.write() = Some(Arc::new(run));
    }

    /// What the order router last read of `user`'s account.
    pub fn account_reads(&self, user: &UserId) -> AccountReads {
        self.account_reads.read().get(user).cloned().unwrap_or_default()
    }

    pub(crate) fn note_open_orders_swept(&self, user: &UserId, at_ms: i64) {
        self.account_reads.write().entry(user.clone()).or_default().open_orders_swept_at_ms = Some(at_ms);
    }

    pub(crate) fn note_position_verified(&self, user: &UserId, symbol: &Symbol, read: PositionRead) {
        self.account_reads.write().entry(user.clone()).or_default().positions_verified.insert(symbol.clone(), read);
    }

    /// The exchange's refusal of `user`'s credentials, if a request no decision made met one.
    pub fn credentials_refusal(&self, user: &UserId) -> Option<String> {
        self.credentials_refused.read().get(user).cloned()
    }

    /// Why `user`'s entries are halted for an unexplained position, if they are.
    pub fn position_hold(&self, user: &UserId) -> Option<String> {
        self.position_holds.read().get(user).cloned()
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

    pub(crate) fn set_http(&self, addr: Option<Addr<crate::http::HttpApi>>) {
        *self.http.write() = addr;
    }

    pub(crate) fn http(&self) -> Result<Addr<crate::http::HttpApi>, NotRunning> {
        self.http.read().clone().ok_or(NotRunning("http"))
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
stop_handler!(crate::http::HttpApi);

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> UserId {
        UserId::new(id).unwrap()
    }

    fn symbol(id: &str) -> Symbol {
        Symbol::new(id).unwrap()
    }

    #[test]
    fn a_settled_mark_holds_until_the_users_orders_change() {
        let stamps = OrderRowStamps::default();
        let (u1, u2, xrp) = (user("u1"), user("u2"), symbol("XRPUSDT"));
        assert!(!stamps.is_settled(&u1, &xrp), "nothing is known before a read");
        stamps.note_settled(&u1, &xrp, stamps.stamp(&u1));
        assert!(stamps.is_settled(&u1, &xrp));
        stamps.note_changed(Some(&u2));
        assert!(stamps.is_settled(&u1, &xrp), "another user's order changes nothing of u1's");
        stamps.note_changed(Some(&u1));
        assert!(!stamps.is_settled(&u1, &xrp), "u1's own change voids the mark");
        stamps.note_settled(&u1, &xrp, stamps.stamp(&u1));
        stamps.note_changed(None);
        assert!(!stamps.is_settled(&u1, &xrp), "a change of unknown user voids every mark");
    }

    #[test]
    fn a_read_overtaken_by_a_change_marks_nothing() {
        let stamps = OrderRowStamps::default();
        let (u1, xrp) = (user("u1"), symbol("XRPUSDT"));
        // The read begins, an intent is committed, the read (which missed it) answers "none".
        let before_read = stamps.stamp(&u1);
        stamps.note_changed(Some(&u1));
        stamps.note_settled(&u1, &xrp, before_read);
        assert!(!stamps.is_settled(&u1, &xrp));
        // Marked first, changed after: the change still voids it.
        let before_read = stamps.stamp(&u1);
        stamps.note_settled(&u1, &xrp, before_read);
        stamps.note_changed(Some(&u1));
        assert!(!stamps.is_settled(&u1, &xrp));
    }
}
