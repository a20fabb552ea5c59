//! OrderRouter: the only path from bulwark to the exchange for orders and account state.
//!
//! Exactly-once placement rests on three rules (BRIEF invariant 1):
//! 1. An intent is committed (state `pending`, deterministic client order id) before it reaches
//!    the router; the router moves it to `sending` with a compare-and-set before the request
//!    leaves, so an intent that reconciliation already declared `not_placed` is never sent.
//! 2. A request that may have executed (timeout, lost response, -1006/-1007, duplicate id) is never
//!    resent: the order becomes `unknown` and is resolved by querying its client order id.
//!    Only a failure that provably executed nothing (connection refused, 503 "Service
//!    Unavailable") is retried, with the same client order id.
//! 3. An order not found by its id is known to be unplaced only after its last request's
//!    timestamp plus the receive window plus a clock-skew margin has passed: after that the
//!    exchange can no longer accept it. Only then is it sent again, with the **same** client order
//!    id (a few times, while the intent is fresh), or else declared `not_placed`.
//!
//! The router keeps no trading state of its own beyond the set of intents it is placing right now;
//! everything else is in the database, so a restarted router resumes from there.
//!
//! Owns failure points SYS-EXCHANGE-API (order and account calls) and STATE-ORPHAN-ORDERS.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix::prelude::*;
use rust_decimal::Decimal;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::actors::persistence;
use crate::actors::{Directory, PositionRead};
use crate::clock::Clock;
use crate::domain::{ClientOrderId, ExchangeOrder, OrderIntent, OrderState, Symbol, UserId};
use crate::exchange::{Exchange, ExchangeError};
use crate::failure_points::catalog::{STATE_POSITION_SYNC, SYS_DATABASE};
use crate::limits::{OPEN_ORDERS_SWEEP_REUSE_MS, ORDER_RESOLVE_QUERIES_PER_SYNC_MAX, POSITION_VERIFIED_REUSE_MS};
use crate::persistence::outbox::{Durability, DurableWrite};
use crate::persistence::{OrderTransition, StoredOrder};
use crate::trader::core::{AccountError, AccountSnapshot, EntryHalt, PlacementOutcome, UnresolvedOrder};
use crate::trader::risk::RiskApproved;

pub(crate) mod account_feed;

/// Order-path timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouterSettings {
    /// The receive window orders are signed with.
    pub recv_window_ms: i64,
    /// Extra time, beyond the receive window, before "not found" means "never placed".
    pub clock_skew_margin_ms: i64,
    /// A safety net around any one exchange call (the exchange client has its own, shorter,
    /// per-request timeouts; this catches an implementation that hangs). A call cut off here is an
    /// unknown outcome.
    pub exchange_timeout: Duration,
    /// Attempts to send an order when earlier attempts provably executed nothing.
    pub send_attempts_max: u32,
    pub send_backoff_ms_initial: u64,
    /// A committed intent the router is not placing, older than this, was never sent.
    pub pending_grace_ms: i64,
    /// Times an order found never placed (after its receive window) is sent again with the same id.
    pub resubmissions_max: u32,
    /// An intent older than this is not resubmitted; it ends `not_placed` and the trader decides
    /// afresh.
    pub resubmit_age_ms_max: i64,
}

impl Default for RouterSettings {
    fn default() -> Self {
        Self {
            recv_window_ms: 5_000,
            clock_skew_margin_ms: 1_000,
            exchange_timeout: Duration::from_secs(10),
            send_attempts_max: 3,
            send_backoff_ms_initial: 200,
            pending_grace_ms: 10_000,
            resubmissions_max: 4,
            resubmit_age_ms_max: 60_000,
        }
    }
}

/// Resolve unresolved orders on one symbol, then read the position: what a trader needs before
/// every decision.
#[derive(Debug, Message)]
#[rtype(result = "Result<AccountSnapshot, AccountError>")]
pub struct SyncAccount {
    pub user: UserId,
    pub symbol: Symbol,
    /// The newest closing price of each symbol the trader follows: positions are valued at these
    /// for the account's equity (a held symbol without one is valued as the exchange reports it).
    pub marks: BTreeMap<Symbol, Decimal>,
}

/// Reconnect one user's account stream and read a snapshot on the new connection (the Healer's
/// action for SYS-USER-STREAM). `Ok(false)`: the venue streams no account.
#[derive(Debug, Message)]
#[rtype(result = "Result<bool, AccountError>")]
pub struct ReconnectAccountStream {
    pub user: UserId,
}

/// Place a committed, risk-approved intent.
#[derive(Debug, Message)]
#[rtype(result = "PlacementOutcome")]
pub struct SubmitIntent {
    pub intent: RiskApproved<OrderIntent>,
}

/// Start-up reconciliation of one user (seed §6): resolve every unresolved order, cancel open
/// exchange orders with bulwark's prefix that the database does not know.
#[derive(Debug, Message)]
#[rtype(result = "Result<ReconcileReport, AccountError>")]
pub struct ReconcileUser {
    pub user: UserId,
    /// The user's configured symbols: each one's position is read from the exchange and, where it
    /// differs from the database, re-synced and recorded (empty: positions are not checked). Only
    /// for a user whose trader is not trading (its start-up, `bulwark reconcile`): a running trader
    /// owns its positions, and a write here would race its syncs.
    pub symbols: Vec<Symbol>,
    /// The user's trader is not trading now (its start-up, `bulwark reconcile`): a position the
    /// fills do not explain halts entries after this one pass. Otherwise (the Healer, periodic
    /// passes) a fill may be between its record and the position read after it, and only two
    /// passes in a row that agree halt.
    pub settled: bool,
}

/// Stop sending new orders, and wait until none is being placed or the deadline passes. Returns
/// how many are still in flight (they stay in the database as `sending`/`unknown` for the next start
/// to resolve).
#[derive(Debug, Message)]
#[rtype(result = "usize")]
pub struct Drain {
    pub deadline: Duration,
}

/// Is this order's placement running now? A sync or reconciliation reports such an order as it
/// stands and looks it up only once its placement has ended; a caller that must know what the next
/// sync will see (the simulation's driver, after releasing a held answer) waits for `false`.
#[derive(Debug, Message)]
#[rtype(result = "bool")]
pub struct IsPlacing {
    pub client_order_id: ClientOrderId,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReconcileReport {
    /// Unresolved orders looked up, with the state each ended in.
    pub resolved: Vec<(ClientOrderId, OrderState)>,
    pub orphans_cancelled: Vec<ClientOrderId>,
    pub cancel_failures: Vec<(ClientOrderId, String)>,
    /// Open orders without bulwark's prefix (left alone).
    pub external_orders: usize,
    /// Orders that could not be looked up this time, with why. They stay unresolved (a trader
    /// decides nothing on their symbol until a later sync resolves them); the others go on.
    pub unresolvable: Vec<(ClientOrderId, String)>,
    /// Positions the exchange holds differently from the database: re-synced from the exchange,
    /// with what each was before and after.
    pub positions_resynced: Vec<(Symbol, String)>,
    /// Fills imported because the database lacked them (symbol, how many the exchange listed).
    pub fills_imported: Vec<(Symbol, usize)>,
    /// The fills still do not explain a position: the user's entries are halted, with why.
    pub entries_halted: Option<String>,
    /// What was not read again because a recent read still holds (a restart soon after a sweep).
    pub reads_reused: Vec<String>,
    /// Every open order of the account was listed at this time (not only its symbols').
    pub swept_at_ms: Option<i64>,
}

impl ReconcileReport {
    /// Orders not final yet, which a later pass will settle: their outcome is unknown until the
    /// receive window closes, they were committed moments ago, or they are open on the exchange
    /// (bulwark places market orders: an open one is about to fill, and its fills would be missing
    /// from the database if reconciliation stopped here).
    pub fn waiting_orders(&self) -> usize {
        self.resolved.iter().filter(|(_, state)| !state.is_final()).count()
    }

    /// This pass followed by a `later` one over the same user: the newest state of each order, every
    /// orphan cancelled, and what the later pass still found.
    pub fn followed_by(mut self, later: ReconcileReport) -> ReconcileReport {
        for (client_order_id, state) in later.resolved {
            match self.resolved.iter_mut().find(|(id, _)| *id == client_order_id) {
                Some(entry) => entry.1 = state,
                None => self.resolved.push((client_order_id, state)),
            }
        }
        self.orphans_cancelled.extend(later.orphans_cancelled);
        self.positions_resynced.extend(later.positions_resynced);
        self.fills_imported.extend(later.fills_imported);
        ReconcileReport {
            resolved: self.resolved,
            orphans_cancelled: self.orphans_cancelled,
            cancel_failures: later.cancel_failures,
            external_orders: later.external_orders,
            unresolvable: later.unresolvable,
            positions_resynced: self.positions_resynced,
            fills_imported: self.fills_imported,
            entries_halted: later.entries_halted,
            reads_reused: later.reads_reused,
            swept_at_ms: later.swept_at_ms.or(self.swept_at_ms),
        }
    }
}

/// What every router operation needs; cloned into each request's future so that no future
/// borrows the actor.
#[derive(Clone)]
struct RouterContext {
    exchange: Arc<dyn Exchange>,
    directory: Arc<Directory>,
    clock: Arc<dyn Clock>,
    settings: RouterSettings,
    /// Set by `Drain` (written by the actor, read by request futures, which outlive a handler):
    /// from then on no order request is resubmitted, only looked up.
    draining: Arc<AtomicBool>,
}

pub struct OrderRouter {
    context: RouterContext,
    /// Intents whose placement is running in this incarnation. Inserted when a SubmitIntent is
    /// accepted, removed when its future ends; read by syncs and reconciliation so that they never
    /// judge an order that is mid-flight. Each sync and reconciliation takes a snapshot of it when
    /// it starts; the set is shared copy-on-write (`Arc::make_mut`) so that a snapshot costs a
    /// reference count, not a copy of the set's table per request (with thousands of syncs waiting
    /// at a candle close, those copies were the router's largest use of memory: `benches/fleet.rs`).
    in_flight: Arc<HashSet<ClientOrderId>>,
    /// Drain requests waiting for `in_flight` to empty (at most a few: one per shutdown).
    drain_waiters: Vec<oneshot::Sender<()>>,
    /// Set by the first [`Drain`]: from then on no new order is sent.
    draining: bool,
    /// A periodic reconciliation pass is running (one at a time).
    reconciling: bool,
}

impl std::fmt::Debug for OrderRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderRouter").field("in_flight", &self.in_flight.len()).finish()
    }
}

impl OrderRouter {
    pub fn new(
        exchange: Arc<dyn Exchange>,
        directory: Arc<Directory>,
        clock: Arc<dyn Clock>,
        settings: RouterSettings,
    ) -> Self {
        Self {
            context: RouterContext { exchange, directory, clock, settings, draining: Arc::new(AtomicBool::new(false)) },
            in_flight: Arc::new(HashSet::new()),
            drain_waiters: Vec::new(),
            draining: false,
            reconciling: false,
        }
    }

    fn finish(&mut self, client_order_id: &ClientOrderId) {
        Arc::make_mut(&mut self.in_flight).remove(client_order_id);
        if self.in_flight.is_empty() {
            for waiter in self.drain_waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
    }
}

impl Actor for OrderRouter {
    type Context = Context<Self>;
}

/// A reconciliation pass every `interval` (`[reconcile] interval_secs`), over the next users in
/// turn as far as the pass's share of `weight_per_minute` pays for (a user's estimated cost: the
/// position list, 5, and one open-orders listing per symbol): unresolved orders looked up and
/// orphans cancelled, each action recorded, so every user is reconciled within
/// [`PeriodicReconcile::coverage_ms`]. Positions are not re-synced here: a running trader keeps them
/// current on every sync, and the database copy lags a fill by design until then (a periodic write
/// would race the trader's); STATE-POSITION-SYNC watches them. The root sends it to every
/// incarnation; a pass still running when the next is due is not doubled.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct PeriodicReconcile {
    pub interval: Duration,
    pub weight_per_minute: u32,
    pub users: Vec<(UserId, Vec<Symbol>)>,
}

/// Binance's weight for the position list a reconciliation's sweep reads.
const RECONCILE_POSITION_LIST_WEIGHT: usize = 5;

impl PeriodicReconcile {
    /// Each user's estimated weight for one reconciliation.
    fn costs(&self) -> Vec<(UserId, usize)> {
        self.users
            .iter()
            .map(|(user, symbols)| (user.clone(), RECONCILE_POSITION_LIST_WEIGHT + symbols.len()))
            .collect()
    }

    fn weight_per_pass(&self) -> u64 {
        crate::failure_points::monitor::orphan_weight_per_run(self.weight_per_minute, self.interval.as_millis() as i64)
    }

    /// How long until every user was reconciled once: the passes one turn takes, times the interval.
    pub fn coverage_ms(&self) -> i64 {
        crate::failure_points::monitor::orphan_coverage_ms(
            &self.costs(),
            self.weight_per_pass(),
            self.interval.as_millis() as i64,
        )
    }
}

impl Handler<PeriodicReconcile> for OrderRouter {
    type Result = ();

    fn handle(&mut self, message: PeriodicReconcile, ctx: &mut Context<Self>) {
        tracing::info!(
            interval_secs = message.interval.as_secs(),
            weight_per_minute = message.weight_per_minute,
            users = message.users.len(),
            every_user_within_secs = message.coverage_ms() / 1_000,
            "order router: periodic reconciliation planned"
        );
        let (costs, weight_per_pass) = (message.costs(), message.weight_per_pass());
        let mut cursor = 0;
        ctx.run_interval(message.interval, move |router, ctx| {
            if router.draining || router.reconciling {
                return;
            }
            router.reconciling = true;
            // The rota (shared with the Monitor's orphan check): from the cursor on, in turn.
            let (chosen, next) = crate::failure_points::monitor::orphan_batch(&costs, cursor, weight_per_pass);
            cursor = next;
            let users: Vec<UserId> = chosen.into_iter().map(|index| costs[index].0.clone()).collect();
            let (context, placing) = (router.context.clone(), router.in_flight.clone());
            let pass = async move {
                for user in &users {
                    match reconcile_user(&context, user, &[], false, &placing).await {
                        Ok(report) => {
                            let changed = report.orphans_cancelled.len()
                                + report.positions_resynced.len()
                                + report.fills_imported.len();
                            if changed > 0 || !report.cancel_failures.is_empty() {
                                tracing::warn!(
                                    %user,
                                    orphans_cancelled = report.orphans_cancelled.len(),
                                    cancel_failures = report.cancel_failures.len(),
                                    positions_resynced = report.positions_resynced.len(),
                                    fills_imported = report.fills_imported.len(),
                                    entries_halted = report.entries_halted.is_some(),
                                    "periodic reconciliation acted"
                                );
                            }
                        }
                        Err(error) if error.credentials_refused => {
                            tracing::error!(%user, error = %error.detail, "periodic reconciliation: the exchange refused the user's credentials; its trader halts at its next decision");
                            context.directory.credentials_refused.write().insert(user.clone(), error.detail);
                        }
                        Err(error) => tracing::warn!(%user, error = %error.detail, "periodic reconciliation failed"),
                    }
                }
            };
            ctx.spawn(pass.into_actor(router).map(|(), router, _| router.reconciling = false));
        });
    }
}

impl Handler<SyncAccount> for OrderRouter {
    type Result = ResponseFuture<Result<AccountSnapshot, AccountError>>;

    fn handle(&mut self, message: SyncAccount, _: &mut Context<Self>) -> Self::Result {
        let context = self.context.clone();
        let placing = self.in_flight.clone();
        Box::pin(async move { sync_account(&context, &message, &placing).await })
    }
}

impl Handler<ReconnectAccountStream> for OrderRouter {
    type Result = ResponseFuture<Result<bool, AccountError>>;

    fn handle(&mut self, message: ReconnectAccountStream, _: &mut Context<Self>) -> Self::Result {
        let context = self.context.clone();
        Box::pin(async move { account_feed::reconnect(&context, &message.user).await })
    }
}

impl Handler<SubmitIntent> for OrderRouter {
    type Result = ResponseActFuture<Self, PlacementOutcome>;

    fn handle(&mut self, message: SubmitIntent, _: &mut Context<Self>) -> Self::Result {
        let intent = message.intent.into_inner();
        let client_order_id = intent.client_order_id.clone();
        if self.draining {
            // Committed but never sent: the next start declares it not placed.
            let detail = "the order router is shutting down; not sent".to_owned();
            return Box::pin(fut::ready(PlacementOutcome::Recorded { state: OrderState::Pending, detail }));
        }
        if let Some(why) = self.context.directory.outbox().records_unkept {
            // What this order would record (its state, its fills) could be lost: it is not sent.
            // It stays `pending` and the next start (or reconciliation) declares it not placed.
            let detail = format!("records cannot be kept ({why}); not sent");
            return Box::pin(fut::ready(PlacementOutcome::Recorded { state: OrderState::Pending, detail }));
        }
        if !Arc::make_mut(&mut self.in_flight).insert(client_order_id.clone()) {
            let reason = format!("order {client_order_id} is already being placed");
            return Box::pin(fut::ready(PlacementOutcome::Unconfirmed { reason }));
        }
        let context = self.context.clone();
        Box::pin(async move { place(&context, intent).await }.into_actor(self).map(move |outcome, router, _| {
            router.finish(&client_order_id);
            let result = match &outcome {
                PlacementOutcome::Recorded { state, .. } => state.as_str(),
                PlacementOutcome::NotCommitted { .. } => "not_committed",
                PlacementOutcome::Unconfirmed { .. } => "unconfirmed",
                PlacementOutcome::CredentialsRefused { .. } => "credentials_refused",
                PlacementOutcome::Refused { .. } => "rejected",
                PlacementOutcome::Executed { .. } => "filled",
            };
            router.context.directory.metrics.order(result);
            outcome
        }))
    }
}

impl Handler<ReconcileUser> for OrderRouter {
    type Result = ResponseFuture<Result<ReconcileReport, AccountError>>;

    fn handle(&mut self, message: ReconcileUser, _: &mut Context<Self>) -> Self::Result {
        let context = self.context.clone();
        let placing = self.in_flight.clone();
        Box::pin(
            async move { reconcile_user(&context, &message.user, &message.symbols, message.settled, &placing).await },
        )
    }
}

impl Handler<IsPlacing> for OrderRouter {
    type Result = bool;

    fn handle(&mut self, message: IsPlacing, _: &mut Context<Self>) -> bool {
        self.in_flight.contains(&message.client_order_id)
    }
}

impl Handler<Drain> for OrderRouter {
    type Result = ResponseActFuture<Self, usize>;

    fn handle(&mut self, message: Drain, _: &mut Context<Self>) -> Self::Result {
        self.draining = true;
        self.context.draining.store(true, Ordering::SeqCst);
        if self.in_flight.is_empty() {
            return Box::pin(fut::ready(0));
        }
        let (done, drained) = oneshot::channel();
        self.drain_waiters.push(done);
        Box::pin(
            async move { tokio::time::timeout(message.deadline, drained).await }
                .into_actor(self)
                .map(|_, router, _| router.in_flight.len()),
        )
    }
}

/// An exchange call with the router's timeout; a timeout is an unknown outcome.
async fn call<T>(
    context: &RouterContext,
    what: &str,
    request: impl Future<Output = Result<T, ExchangeError>>,
) -> Result<T, ExchangeError> {
    match tokio::time::timeout(context.settings.exchange_timeout, request).await {
        Ok(result) => result,
        Err(_) => Err(ExchangeError::UnknownOutcome {
            detail: format!("{what}: no answer within {} ms", context.settings.exchange_timeout.as_millis()),
        }),
    }
}

/// A compare-and-set that must be durable before the caller acts (marking an order `sending`
/// before its request leaves): in the database, or (while it refuses writes) in the fsynced outbox,
/// judged against the database and the records ahead of it. `Ok(false)` when another writer moved
/// it first.
async fn transition_now(context: &RouterContext, transition: OrderTransition) -> Result<bool, String> {
    match persistence::write(&context.directory, DurableWrite::OrderTransition(transition)).await {
        Ok(Durability::Applied { changed } | Durability::Queued { changed, .. }) => Ok(changed),
        Err(error) => Err(error.to_string()),
    }
}

/// How recording what the exchange said about an order ended.
enum Recorded {
    /// The database has it.
    Moved,
    /// Another writer moved the order first; nothing was written.
    Overtaken,
    /// The database refuses writes; the change (with its fills) waits in the durable outbox.
    Queued { depth: usize },
}

/// Records a fact the exchange reported (an order's new state, its fills) durably: in the
/// database, or in the outbox while the database refuses writes. The order row keeps its old,
/// unresolved state until then, so a later sync reads the order again: nothing is lost even if
/// the outbox itself fails.
async fn record_transition(context: &RouterContext, transition: OrderTransition) -> Result<Recorded, String> {
    match persistence::write(&context.directory, DurableWrite::OrderTransition(transition)).await {
        Ok(Durability::Applied { changed: true }) => Ok(Recorded::Moved),
        Ok(Durability::Applied { changed: false }) => Ok(Recorded::Overtaken),
        Ok(Durability::Queued { depth, .. }) => Ok(Recorded::Queued { depth }),
        Err(error) => Err(error.to_string()),
    }
}

fn queued_note(depth: usize) -> String {
    format!(" (kept in the durable outbox at depth {depth}: the database refuses writes)")
}

async fn load_order(context: &RouterContext, client_order_id: &ClientOrderId) -> Result<Option<StoredOrder>, String> {
    let client_order_id = client_order_id.clone();
    persistence::run(&context.directory, move |store| store.order(&client_order_id)).await.map_err(|e| e.to_string())
}

/// The state the database holds now (after a lost compare-and-set).
async fn current_state(context: &RouterContext, client_order_id: &ClientOrderId) -> OrderState {
    match load_order(context, client_order_id).await {
        Ok(Some(order)) => order.state,
        _ => OrderState::Unknown,
    }
}

async fn place(context: &RouterContext, intent: OrderIntent) -> PlacementOutcome {
    let (user, symbol, side) = (intent.user.clone(), intent.symbol.clone(), intent.side);
    let client_order_id = intent.client_order_id.clone();
    let outcome = send(context, intent, OrderState::Pending, 0).await;
    let PlacementOutcome::Recorded { state, detail } = &outcome else { return outcome };
    if !state.is_final() {
        return outcome;
    }
    // An order that ended with its placement (a market order executes at once) leaves the symbol
    // settled: read so now, while the placement is still the trader's, and the next close's sync
    // answers without a database read behind that close's records.
    let _ = unresolved_orders_of(context, &user, &symbol).await;
    if *state == OrderState::Filled
        && let Ok(Some(order)) = load_order(context, &client_order_id).await
        && let Some(average_price) = order.average_price
        && !order.filled_quantity.is_zero()
    {
        // What it executed, as recorded with its fills: the trader books it on its stored position.
        let signed_quantity = side.sign() * order.filled_quantity;
        return PlacementOutcome::Executed { detail: detail.clone(), signed_quantity, average_price };
    }
    outcome
}

/// Sends an intent's order request with its one client order id: first from `pending`, or again
/// from `unknown`/`sending` once an earlier request provably can no longer execute. Every send is
/// preceded by a compare-and-set to `sending` on the order's state *and* its send count (the
/// version), so two writers can never both send, and a writer whose attempt was taken over can
/// no longer change the order. `sends_before` is the send count the caller read.
async fn send(context: &RouterContext, intent: OrderIntent, from: OrderState, sends_before: u32) -> PlacementOutcome {
    let client_order_id = intent.client_order_id.clone();
    let (mut from, mut sends) = (from, sends_before);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let now_ms = context.clock.now_ms();
        let mut to_sending = OrderTransition::new(client_order_id.clone(), from, OrderState::Sending, now_ms);
        // The request is signed with this time: the exchange refuses it once recv_window has
        // passed since, which is what lets "not found after the window" mean "never placed".
        to_sending.sent_at_ms = Some(now_ms);
        to_sending.expected_send_attempts = Some(sends);
        match transition_now(context, to_sending).await {
            Ok(true) => sends += 1,
            Ok(false) => {
                let state = current_state(context, &client_order_id).await;
                return PlacementOutcome::Recorded {
                    state,
                    detail: format!("intent was no longer {from} after {sends} send(s) (now {state}); not sent"),
                };
            }
            Err(error) => {
                return PlacementOutcome::NotCommitted {
                    reason: format!("could not mark the order as sending ({error}); nothing was sent"),
                };
            }
        }
        let request = intent.request(now_ms);
        let result = call(context, "create order", context.exchange.create_order(&intent.user, &request)).await;
        let error = match result {
            Ok(order) => return adopt(context, &intent, (OrderState::Sending, sends), Decimal::ZERO, order).await,
            Err(error) => error,
        };
        tracing::warn!(user = %intent.user, client_order_id = %client_order_id, attempt, %error, "order router: create order failed");
        match &error {
            ExchangeError::Duplicate { .. } => {
                // An order with this id exists: adopt it rather than place another.
                return match call(
                    context,
                    "query order",
                    context.exchange.order_by_client_id(&intent.user, &intent.symbol, &client_order_id),
                )
                .await
                {
                    Ok(Some(order)) => {
                        adopt(context, &intent, (OrderState::Sending, sends), Decimal::ZERO, order).await
                    }
                    _ => {
                        mark(
                            context,
                            &client_order_id,
                            (OrderState::Sending, sends),
                            OrderState::Unknown,
                            error.to_string(),
                        )
                        .await
                    }
                };
            }
            error if error.order_may_exist() => {
                return mark(
                    context,
                    &client_order_id,
                    (OrderState::Sending, sends),
                    OrderState::Unknown,
                    error.to_string(),
                )
                .await;
            }
            error if error.nothing_executed() && attempt < context.settings.send_attempts_max => {
                from = OrderState::Sending;
                let backoff_ms = context.settings.send_backoff_ms_initial << (attempt - 1);
                tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
            }
            ExchangeError::Retryable { .. }
            | ExchangeError::Unreachable { .. }
            | ExchangeError::BreakerOpen { .. }
            | ExchangeError::RateLimited { .. }
            | ExchangeError::Banned { .. } => {
                return mark(
                    context,
                    &client_order_id,
                    (OrderState::Sending, sends),
                    OrderState::NotPlaced,
                    error.to_string(),
                )
                .await;
            }
            ExchangeError::Auth { .. } => {
                let detail = error.to_string();
                mark(context, &client_order_id, (OrderState::Sending, sends), OrderState::Rejected, detail.clone())
                    .await;
                return PlacementOutcome::CredentialsRefused { detail };
            }
            ExchangeError::Rejected { .. } | ExchangeError::UnknownOutcome { .. } | ExchangeError::Malformed { .. } => {
                let recorded = mark(
                    context,
                    &client_order_id,
                    (OrderState::Sending, sends),
                    OrderState::Rejected,
                    error.to_string(),
                )
                .await;
                // The exchange's refusal code goes with it (what the Monitor counts, typed).
                return match (&error, recorded) {
                    (
                        ExchangeError::Rejected { code, .. },
                        PlacementOutcome::Recorded { state: OrderState::Rejected, detail },
                    ) => PlacementOutcome::Refused { code: *code, detail },
                    (_, recorded) => recorded,
                };
            }
        }
    }
}

/// Records a state reached without an exchange order to adopt.
/// `from` is the state and send count the caller read (see [`send`]).
async fn mark(
    context: &RouterContext,
    client_order_id: &ClientOrderId,
    from: (OrderState, u32),
    to: OrderState,
    detail: String,
) -> PlacementOutcome {
    let now_ms = context.clock.now_ms();
    let mut change = OrderTransition::new(client_order_id.clone(), from.0, to, now_ms);
    change.expected_send_attempts = Some(from.1);
    change.last_error = Some(detail.clone());
    if to == OrderState::Unknown {
        // The request was signed and sent no later than now (the attempt has ended), so its
        // receive window is counted from now: never from before the call, which could be earlier
        // than a signature made after a wait for rate-limit budget.
        change.sent_at_ms = Some(now_ms);
    }
    match record_transition(context, change).await {
        Ok(Recorded::Moved) => PlacementOutcome::Recorded { state: to, detail },
        Ok(Recorded::Queued { depth }) => {
            PlacementOutcome::Recorded { state: to, detail: format!("{detail}{}", queued_note(depth)) }
        }
        Ok(Recorded::Overtaken) => {
            let state = current_state(context, client_order_id).await;
            PlacementOutcome::Recorded { state, detail: format!("{detail} (already {state})") }
        }
        Err(error) => PlacementOutcome::Unconfirmed { reason: format!("{detail}; and recording it failed: {error}") },
    }
}

/// Takes the exchange's view of an order into the database (with its fills, atomically).
/// `from` is the state and send count the caller read (see [`send`]).
async fn adopt(
    context: &RouterContext,
    intent: &OrderIntent,
    from: (OrderState, u32),
    known_filled: Decimal,
    order: ExchangeOrder,
) -> PlacementOutcome {
    let (from, sends) = from;
    let mut to = order.status.order_state();
    let mut change = OrderTransition::new(intent.client_order_id.clone(), from, to, context.clock.now_ms());
    change.expected_send_attempts = Some(sends);
    change.exchange_order_id = Some(order.exchange_order_id.clone());
    change.filled_quantity = Some(order.filled_quantity);
    change.average_price = order.average_price;
    if !order.filled_quantity.is_zero() {
        let listing = context.exchange.order_fills(&intent.user, &intent.symbol, &order.exchange_order_id);
        match call(context, "order fills", listing).await {
            Ok(fills) => {
                change.fills = fills;
                let shown: Decimal = change.fills.iter().map(|f| f.quantity).sum();
                if shown < order.filled_quantity && to.is_final() && from.may_become(OrderState::Open) {
                    // The exchange says done but has not listed every fill yet: record the fills it
                    // listed and keep the order open, so the next sync looks again. An order is
                    // never marked done with a fill missing.
                    to = OrderState::Open;
                    change.to = to;
                    change.last_error = Some(format!("fills listed for {shown} of {} filled", order.filled_quantity));
                }
            }
            Err(error) => {
                // Without its fills a filled order must not be marked done. But it exists: record
                // it as open with its exchange id (an open order is never resubmitted), and let the
                // next sync read its fills.
                let detail = format!("order {} but its fills could not be read: {error}", order.status.as_str());
                if from == OrderState::Open || !from.may_become(OrderState::Open) {
                    return PlacementOutcome::Recorded { state: from, detail };
                }
                to = OrderState::Open;
                change.to = to;
                change.filled_quantity = None;
                change.average_price = None;
                change.last_error = Some(detail);
            }
        }
    }
    let detail = format!("exchange order {} {}", order.exchange_order_id, order.status.as_str());
    // The fills read here may be ones the stream never delivers (dropped): the book must not take
    // its position on that symbol for confirmed until the stream's update for them comes.
    account_feed::note_read_fills(context, &intent.user, &order, &change.fills);
    if from == to && order.filled_quantity == known_filled {
        return PlacementOutcome::Recorded { state: to, detail };
    }
    match record_transition(context, change).await {
        Ok(Recorded::Moved) => {
            // What the stream told of it before this answer came is recorded now (an order this
            // answer already finished needs none of it: its fills were read with the answer).
            account_feed::record_waiting_updates(context, &intent.client_order_id, to == OrderState::Open).await;
            PlacementOutcome::Recorded { state: to, detail }
        }
        Ok(Recorded::Queued { depth }) => {
            PlacementOutcome::Recorded { state: to, detail: format!("{detail}{}", queued_note(depth)) }
        }
        Ok(Recorded::Overtaken) => {
            let state = current_state(context, &intent.client_order_id).await;
            PlacementOutcome::Recorded { state, detail: format!("{detail} (database already had {state})") }
        }
        Err(error) => PlacementOutcome::Unconfirmed { reason: format!("{detail}; recording it failed: {error}") },
    }
}

/// Brings one unresolved order up to date with the exchange. Returns the state it is in after.
async fn resolve_order(
    context: &RouterContext,
    order: &StoredOrder,
    placing: &HashSet<ClientOrderId>,
) -> Result<OrderState, AccountError> {
    let intent = &order.intent;
    if placing.contains(&intent.client_order_id) {
        return Ok(order.state);
    }
    let now_ms = context.clock.now_ms();
    // While records wait in the outbox the database is behind (this order's newest state or send
    // time may be among them): what the exchange reports is still recorded, but nothing is
    // decided from the order's absence (resending it, or declaring it never placed).
    let ledger_behind = context.directory.outbox().depth > 0;
    if order.state == OrderState::Pending {
        if ledger_behind || now_ms - intent.created_at_ms < context.settings.pending_grace_ms {
            return Ok(order.state);
        }
        let detail = "committed but never sent (its trader stopped before sending it)".to_owned();
        return Ok(
            match mark(
                context,
                &intent.client_order_id,
                (OrderState::Pending, order.send_attempts),
                OrderState::NotPlaced,
                detail,
            )
            .await
            {
                PlacementOutcome::Recorded { state, .. } => state,
                _ => order.state,
            },
        );
    }
    let found = call(
        context,
        "query order",
        context.exchange.order_by_client_id(&intent.user, &intent.symbol, &intent.client_order_id),
    )
    .await
    .map_err(account_error)?;
    match found {
        Some(exchange_order) => {
            let outcome =
                adopt(context, intent, (order.state, order.send_attempts), order.filled_quantity, exchange_order).await;
            let (state, detail) = match outcome {
                PlacementOutcome::Recorded { state, detail } => (state, detail),
                PlacementOutcome::Unconfirmed { reason } => (order.state, reason),
                other => (order.state, format!("{other:?}")),
            };
            if !state.is_final() {
                // Why it is not settled yet (reconcile passes again while any order is not).
                tracing::info!(user = %intent.user, client_order_id = %intent.client_order_id, %state, %detail, "order router: order not final yet");
            }
            Ok(state)
        }
        None => {
            let window_closed_at_ms = order.sent_at_ms.unwrap_or(intent.created_at_ms)
                + context.settings.recv_window_ms
                + context.settings.clock_skew_margin_ms;
            if order.state == OrderState::Open {
                tracing::warn!(client_order_id = %intent.client_order_id, "order router: an open order is no longer known to the exchange");
                return Ok(order.state);
            }
            if ledger_behind || now_ms <= window_closed_at_ms {
                return Ok(order.state);
            }
            // The exchange can no longer accept the earlier request: it was never placed. Send it
            // again with the same client order id while the intent is fresh (a duplicate answer
            // would mean it exists after all, and is adopted).
            let age_ms = now_ms - intent.created_at_ms;
            let sends_allowed = 1 + context.settings.resubmissions_max;
            if order.send_attempts < sends_allowed && age_ms <= context.settings.resubmit_age_ms_max {
                if context.draining.load(Ordering::SeqCst) {
                    // Shutting down: nothing new leaves; the next start looks again.
                    return Ok(order.state);
                }
                tracing::info!(user = %intent.user, client_order_id = %intent.client_order_id, sends = order.send_attempts, "order router: not found after the receive window; resubmitting with the same id");
                return Ok(match send(context, intent.clone(), order.state, order.send_attempts).await {
                    PlacementOutcome::Recorded { state, .. } => state,
                    _ => order.state,
                });
            }
            let detail = format!(
                "not found by client order id after its receive window closed; not resubmitted ({} request(s) sent, intent {} s old)",
                order.send_attempts,
                age_ms / 1_000
            );
            Ok(
                match mark(
                    context,
                    &intent.client_order_id,
                    (order.state, order.send_attempts),
                    OrderState::NotPlaced,
                    detail,
                )
                .await
                {
                    PlacementOutcome::Recorded { state, .. } => state,
                    _ => order.state,
                },
            )
        }
    }
}

async fn sync_account(
    context: &RouterContext,
    request: &SyncAccount,
    placing: &HashSet<ClientOrderId>,
) -> Result<AccountSnapshot, AccountError> {
    let (user, symbol) = (&request.user, &request.symbol);
    if let Some(refusal) = context.directory.credentials_refused.read().get(user) {
        return Err(AccountError { credentials_refused: true, detail: refusal.clone() });
    }
    let (unresolved_orders, rows_read_at) = unresolved_orders_of(context, user, symbol).await?;
    // With nothing of this symbol in flight, a verified book is the account: no exchange request.
    // Orders placed and not yet recorded final count once the stream told their end (their fills
    // are recorded from it); anything else in flight (being placed, unknown), or a stream that
    // does not tell in time, is read by REST.
    if let Some(book) = account_feed::ensure_stream(context, user)
        && (unresolved_orders.is_empty()
            || account_feed::placed_orders_done(context, user, symbol, &book, &unresolved_orders, rows_read_at).await)
        && let Some(read) = account_feed::verified_read(context, user, symbol, &book).await?
        && read.positions.iter().all(|position| request.marks.contains_key(&position.symbol))
    {
        let rules =
            call(context, "symbol rules", context.exchange.symbol_rules(symbol)).await.map_err(account_error)?;
        context.directory.metrics.account_sync("book");
        return Ok(account_snapshot(context, request, read.positions, Ok(read.wallet_usdt), rules, Vec::new()));
    }
    context.directory.metrics.account_sync("rest");
    for order in unresolved_orders.iter().take(ORDER_RESOLVE_QUERIES_PER_SYNC_MAX) {
        if let Err(error) = resolve_order(context, order, placing).await {
            tracing::warn!(%user, client_order_id = %order.intent.client_order_id, %error, "order router: could not resolve order");
        }
    }
    let positions = call(context, "positions", context.exchange.positions(user)).await.map_err(account_error)?;
    let rules = call(context, "symbol rules", context.exchange.symbol_rules(symbol)).await.map_err(account_error)?;
    let unresolved = if unresolved_orders.is_empty() {
        Vec::new()
    } else {
        let (user, symbol) = (user.clone(), symbol.clone());
        persistence::run(&context.directory, move |store| store.unresolved_orders(&user, Some(&symbol)))
            .await
            .map_err(|e| AccountError::other(format!("database: {e}")))?
            .into_iter()
            .map(|o| UnresolvedOrder { client_order_id: o.intent.client_order_id, state: o.state })
            .collect()
    };
    // Equity for the kill switch; a failure here does not fail the sync (exits must still work),
    // it makes the kill switch block entries.
    let wallet_usdt = match call(context, "balance", context.exchange.balance(user)).await {
        Ok(balance) => Ok(balance.wallet_balance),
        Err(error) => Err(format!("balance unavailable: {error}")),
    };
    Ok(account_snapshot(context, request, positions, wallet_usdt, rules, unresolved))
}

/// `symbol`'s unresolved orders of `user`: none without a database read when a read found none and
/// none of the user's order rows changed since (`OrderRowStamps`). With the user's row stamp as it
/// was before the read: a row written after it changes the stamp.
async fn unresolved_orders_of(
    context: &RouterContext,
    user: &UserId,
    symbol: &Symbol,
) -> Result<(Vec<StoredOrder>, u64), AccountError> {
    let stamps = context.directory.outbox.order_rows();
    let stamp_before_read = stamps.stamp(user);
    if stamps.is_settled(user, symbol) {
        return Ok((Vec::new(), stamp_before_read));
    }
    let (key_user, key_symbol) = (user.clone(), symbol.clone());
    let orders =
        persistence::run(&context.directory, move |store| store.unresolved_orders(&key_user, Some(&key_symbol)))
            .await
            .map_err(|e| AccountError::other(format!("database: {e}")))?;
    if orders.is_empty() {
        stamps.note_settled(user, symbol, stamp_before_read);
    }
    Ok((orders, stamp_before_read))
}

/// What a sync answers, from every position the account holds and its wallet (read by REST or from
/// the verified book): the symbol's position and the equity, both valued at the trader's marks, so
/// that the two ways of reading give the same numbers.
fn account_snapshot(
    context: &RouterContext,
    request: &SyncAccount,
    positions: Vec<crate::domain::Position>,
    wallet_usdt: Result<Decimal, String>,
    rules: crate::domain::SymbolRules,
    unresolved: Vec<UnresolvedOrder>,
) -> AccountSnapshot {
    let (user, symbol) = (&request.user, &request.symbol);
    let fetched_at_ms = context.clock.now_ms();
    let mut position = positions
        .iter()
        .find(|position| position.symbol == *symbol)
        .cloned()
        .unwrap_or_else(|| crate::domain::Position::flat(symbol.clone(), Decimal::ZERO));
    if let Some(mark) = request.marks.get(symbol) {
        position.mark_price = *mark;
        position.unrealized_pnl = position.quantity * (*mark - position.entry_price);
    }
    context.directory.note_position_verified(
        user,
        symbol,
        PositionRead { at_ms: fetched_at_ms, quantity: position.quantity },
    );
    let equity_usdt = wallet_usdt.and_then(|wallet| account_feed::equity_f64(wallet, &positions, &request.marks));
    AccountSnapshot {
        position,
        rules,
        unresolved,
        fetched_at_ms,
        equity_usdt,
        entries_halted: entries_halted(context, user),
    }
}

/// Why entries are refused for `user` now: the database is behind (records wait in the outbox, or
/// it is full), or reconciliation could not explain the user's position from its fills.
fn entries_halted(context: &RouterContext, user: &UserId) -> Option<EntryHalt> {
    let outbox = context.directory.outbox();
    if let Some(why) = &outbox.records_unkept {
        let reason = format!("records cannot be kept ({why}); no order until they can");
        return Some(EntryHalt { failure_point: SYS_DATABASE, reason });
    }
    if outbox.depth > 0 {
        let full = if outbox.is_full() { ", which is full" } else { "" };
        return Some(EntryHalt {
            failure_point: SYS_DATABASE,
            reason: format!(
                "the database refuses writes and {} record(s) wait in the durable outbox{full}; no entry until they are replayed",
                outbox.depth
            ),
        });
    }
    if let Some(refusal) = &outbox.refusal {
        let reason = format!(
            "the database refuses writes ({}: {}); no entry until it takes them again",
            refusal.kind.as_str(),
            refusal.detail
        );
        return Some(EntryHalt { failure_point: SYS_DATABASE, reason });
    }
    context.directory.position_hold(user).map(|reason| EntryHalt { failure_point: STATE_POSITION_SYNC, reason })
}

/// Compares the exchange's position on `symbol` with the database's; a difference (a position the
/// bot does not know of, or a stale one) is written from the exchange and recorded as a
/// `position_resynced` reconcile action. The Monitor's STATE-POSITION-SYNC then reports whether the
/// recorded fills add up to it.
async fn resync_position(
    context: &RouterContext,
    user: &UserId,
    symbol: &Symbol,
    listed: Option<crate::domain::Position>,
    report: &mut ReconcileReport,
) -> Result<(), AccountError> {
    let database = |e: crate::persistence::StoreError| AccountError::other(format!("database: {e}"));
    let exchange = match listed {
        Some(listed) => listed,
        None => call(context, "position", context.exchange.position(user, symbol))
            .await
            .map_err(|e| account_error(e).context(format_args!("reading the {symbol} position")))?,
    };
    let read = PositionRead { at_ms: context.clock.now_ms(), quantity: exchange.quantity };
    context.directory.note_position_verified(user, symbol, read);
    let (key_user, key_symbol) = (user.clone(), symbol.clone());
    let stored = persistence::run(&context.directory, move |store| store.position(&key_user, &key_symbol))
        .await
        .map_err(database)?;
    let stored_quantity = stored.as_ref().map_or(Decimal::ZERO, |p| p.quantity);
    if stored_quantity == exchange.quantity {
        return Ok(());
    }
    let detail = format!(
        "{symbol}: the exchange holds {} @ {}, the database had {stored_quantity}; re-synced from the exchange",
        exchange.quantity, exchange.entry_price
    );
    tracing::warn!(%user, %symbol, %detail, "reconciliation: position re-synced");
    let now_ms = context.clock.now_ms();
    let record = crate::persistence::PositionRecord {
        user: user.clone(),
        symbol: symbol.clone(),
        quantity: exchange.quantity,
        entry_price: exchange.entry_price,
        position_start_time_ms: stored.as_ref().and_then(|p| p.position_start_time_ms).or(Some(now_ms)),
        active_order_id: stored.as_ref().and_then(|p| p.active_order_id.clone()),
        verified_at_ms: now_ms,
    };
    persistence::write(&context.directory, DurableWrite::Position(record)).await.map_err(database)?;
    // Routine when the recorded fills explain the new quantity (the trader stopped after a fill
    // was recorded but before it saved the position): a catch-up. Otherwise the exchange holds
    // what bulwark's ledger does not explain, which STATE-POSITION-SYNC reports.
    let (key_user, key_symbol) = (user.clone(), symbol.clone());
    let explained =
        persistence::run(&context.directory, move |store| store.position_fill_mismatches_of(Some(&key_user)))
            .await
            .map(|mismatches| !mismatches.iter().any(|m| m.symbol == key_symbol))
            .unwrap_or(false);
    let action = if explained { "position_caught_up" } else { "position_resynced" };
    record_action(context, user, action, None, &detail).await?;
    report.positions_resynced.push((symbol.clone(), detail));
    Ok(())
}

/// Records what reconciliation did (durably: in the database or the outbox).
async fn record_action(
    context: &RouterContext,
    user: &UserId,
    action: &str,
    client_order_id: Option<&ClientOrderId>,
    detail: &str,
) -> Result<(), AccountError> {
    let write = DurableWrite::ReconcileAction {
        user: user.clone(),
        action: action.to_owned(),
        client_order_id: client_order_id.cloned(),
        detail: detail.to_owned(),
        at_ms: context.clock.now_ms(),
    };
    persistence::write(&context.directory, write)
        .await
        .map(|_| ())
        .map_err(|e| AccountError::other(format!("database: recording {action}: {e}")))
}

/// An exchange failure while reading an account; refused credentials halt the account.
fn account_error(error: ExchangeError) -> AccountError {
    AccountError { credentials_refused: matches!(error, ExchangeError::Auth { .. }), detail: error.to_string() }
}

async fn reconcile_user(
    context: &RouterContext,
    user: &UserId,
    symbols: &[Symbol],
    settled: bool,
    placing: &HashSet<ClientOrderId>,
) -> Result<ReconcileReport, AccountError> {
    let database = |e: crate::persistence::StoreError| AccountError::other(format!("database: {e}"));
    let mut report = ReconcileReport::default();
    let unresolved = {
        let user = user.clone();
        persistence::run(&context.directory, move |store| store.unresolved_orders(&user, None))
            .await
            .map_err(database)?
    };
    for order in &unresolved {
        let id = &order.intent.client_order_id;
        match resolve_order(context, order, placing).await {
            Ok(state) => report.resolved.push((id.clone(), state)),
            // Refused credentials refuse every order: the user is halted.
            Err(error) if error.credentials_refused => return Err(error.context(format_args!("resolving {id}"))),
            Err(error) => {
                tracing::warn!(%user, client_order_id = %id, error = %error.detail, "reconciliation: order could not be resolved now");
                report.unresolvable.push((id.clone(), error.detail));
            }
        }
    }
    let (open_orders, positions_listed) = list_open_orders(context, user, symbols, &mut report).await?;
    for open in open_orders {
        if !open.client_order_id.is_bulwark() {
            report.external_orders += 1;
            continue;
        }
        if placing.contains(&open.client_order_id) {
            continue;
        }
        let known = load_order(context, &open.client_order_id).await.map_err(AccountError::other)?;
        let why = match &known {
            None => "orphan: open on the exchange, unknown to the database".to_owned(),
            Some(stored) if stored.state.is_final() => {
                format!("open on the exchange but the database has it {}", stored.state)
            }
            Some(_) => continue,
        };
        let mut result =
            call(context, "cancel order", context.exchange.cancel_order(user, &open.symbol, &open.client_order_id))
                .await;
        // A retried cancel whose first attempt went through is refused as unknown (-2011): look
        // the order up; if it is no longer open, the cancel (or a fill) has happened.
        if let Err(ExchangeError::Rejected { code: -2011, .. }) = &result
            && let Ok(Some(order)) = call(
                context,
                "order by client id",
                context.exchange.order_by_client_id(user, &open.symbol, &open.client_order_id),
            )
            .await
            && !order.status.is_open()
        {
            result = Ok(order);
        }
        let (action, detail) = match &result {
            Ok(_) => ("orphan_cancelled", why.clone()),
            Err(error) => ("orphan_cancel_failed", format!("{why}; cancel failed: {error}")),
        };
        tracing::warn!(%user, client_order_id = %open.client_order_id, action, %detail, "reconciliation");
        record_action(context, user, action, Some(&open.client_order_id), &detail).await?;
        match result {
            Ok(_) => report.orphans_cancelled.push(open.client_order_id),
            Err(error) => report.cancel_failures.push((open.client_order_id, error.to_string())),
        }
    }
    if let Some(swept_at_ms) = report.swept_at_ms
        && report.cancel_failures.is_empty()
    {
        context.directory.note_open_orders_swept(user, swept_at_ms);
    }
    let reads = context.directory.account_reads(user);
    let now_ms = context.clock.now_ms();
    for symbol in symbols {
        // Read moments ago (a restart after a crash) with nothing of this user in flight, and the
        // database holds what was read: no weight is spent on it now. The database may lag that
        // read (the trader died between the sync and writing its position): then it is read and
        // written again, or a shutdown before the next sync would leave the database wrong.
        let read_recently = reads
            .positions_verified
            .get(symbol)
            .filter(|read| now_ms - read.at_ms < POSITION_VERIFIED_REUSE_MS && unresolved.is_empty());
        if let Some(read) = read_recently
            && stored_position_quantity(context, user, symbol).await? == read.quantity
        {
            report.reads_reused.push(format!("{symbol} position"));
            continue;
        }
        let listed = positions_listed.as_deref().map(|positions| {
            positions
                .iter()
                .find(|position| position.symbol == *symbol)
                .cloned()
                .unwrap_or_else(|| crate::domain::Position::flat(symbol.clone(), Decimal::ZERO))
        });
        resync_position(context, user, symbol, listed, &mut report).await?;
    }
    explain_positions(context, user, settled, &mut report).await?;
    Ok(report)
}

/// The quantity the database holds for `user`'s `symbol` position (zero without a row).
async fn stored_position_quantity(
    context: &RouterContext,
    user: &UserId,
    symbol: &Symbol,
) -> Result<Decimal, AccountError> {
    let (key_user, key_symbol) = (user.clone(), symbol.clone());
    let stored = persistence::run(&context.directory, move |store| store.position(&key_user, &key_symbol))
        .await
        .map_err(|e| AccountError::other(format!("database: {e}")))?;
    Ok(stored.map_or(Decimal::ZERO, |position| position.quantity))
}

/// The account's open orders: every one (with every position, read in the same sweep: on Binance
/// the position list and the symbols it names, weight 5 + 1 a symbol), or, for a trader
/// (re)starting soon after such a sweep found the account clean, those on its own symbols (weight
/// 1 each, no positions).
async fn list_open_orders(
    context: &RouterContext,
    user: &UserId,
    symbols: &[Symbol],
    report: &mut ReconcileReport,
) -> Result<(Vec<ExchangeOrder>, Option<Vec<crate::domain::Position>>), AccountError> {
    let now_ms = context.clock.now_ms();
    let swept_recently = context
        .directory
        .account_reads(user)
        .open_orders_swept_at_ms
        .is_some_and(|at_ms| now_ms - at_ms < OPEN_ORDERS_SWEEP_REUSE_MS);
    if swept_recently && !symbols.is_empty() {
        let mut open_orders = Vec::new();
        for symbol in symbols {
            let listing = call(context, "open orders", context.exchange.open_orders(user, Some(symbol)))
                .await
                .map_err(|e| account_error(e).context(format_args!("listing open orders on {symbol}")))?;
            open_orders.extend(listing);
        }
        report.reads_reused.push("open orders beyond its symbols (swept moments ago)".to_owned());
        return Ok((open_orders, None));
    }
    let (positions, open_orders) =
        call(context, "positions and open orders", context.exchange.positions_and_open_orders(user))
            .await
            .map_err(|e| account_error(e).context("listing open orders"))?;
    // Counted as a sweep once every orphan in it is cancelled (`reconcile_user`): a cancel that
    // failed fails the start-up, and the next one sweeps again.
    report.swept_at_ms = Some(now_ms);
    Ok((open_orders, Some(positions)))
}

/// How far back reconciliation looks for fills the database lacks (Binance's trade-list window).
const FILL_IMPORT_LOOKBACK_MS: i64 = 7 * 24 * 3_600_000;

/// For each of `user`'s positions that its recorded fills do not add up to: imports the fills the
/// exchange lists and the database lacks — of bulwark's own orders (linked to them), and of
/// trades bulwark did not make (recorded without a client order id, and reported: a trade on the
/// account behind bulwark's back). If the fills still do not explain the position (history beyond
/// the exchange's window), the user's entries are halted with the reason until a later pass finds
/// it explained; exits go on. Each import, halt and resumption is recorded.
async fn explain_positions(
    context: &RouterContext,
    user: &UserId,
    settled: bool,
    report: &mut ReconcileReport,
) -> Result<(), AccountError> {
    let database = |e: crate::persistence::StoreError| AccountError::other(format!("database: {e}"));
    if context.directory.outbox().depth > 0 {
        // The ledger is behind (its fills may be in the outbox): nothing can be judged from it,
        // and entries are halted for SYS-DATABASE meanwhile.
        return Ok(());
    }
    let mismatched = |context: &RouterContext| {
        let user = user.clone();
        let directory = context.directory.clone();
        async move { persistence::run(&directory, move |store| store.position_fill_mismatches_of(Some(&user))).await }
    };
    let mut mismatches = mismatched(context).await.map_err(database)?;
    let (mut imported_any, mut listing_failed) = (false, false);
    for mismatch in &mismatches {
        let symbol = &mismatch.symbol;
        let since_ms = context.clock.now_ms() - FILL_IMPORT_LOOKBACK_MS;
        let listed = match call(context, "account fills", context.exchange.fills(user, symbol, since_ms)).await {
            Ok(listed) => listed,
            Err(error) => {
                let error = account_error(error).context(format_args!("listing the {symbol} fills"));
                if error.credentials_refused {
                    return Err(error);
                }
                // Not judged this pass: a listing that failed proves nothing (a later pass looks again).
                tracing::warn!(%user, %symbol, error = %error.detail, "reconciliation: fills could not be listed now");
                listing_failed = true;
                continue;
            }
        };
        let own: HashSet<String> = {
            let (user, symbol) = (user.clone(), symbol.clone());
            persistence::run(&context.directory, move |store| store.exchange_order_ids(&user, &symbol))
                .await
                .map_err(database)?
                .into_iter()
                .collect()
        };
        if listed.is_empty() {
            continue;
        }
        let foreign = listed.iter().filter(|f| !own.contains(&f.exchange_order_id)).count();
        let count = listed.len();
        let fills = listed.into_iter().map(|f| (f, None)).collect();
        let write = DurableWrite::Fills { user: user.clone(), fills, at_ms: context.clock.now_ms() };
        if let Durability::Applied { changed: true } | Durability::Queued { .. } =
            persistence::write(&context.directory, write).await.map_err(database)?
        {
            let detail = format!(
                "{symbol}: fills the database lacked imported from the exchange's trade list ({count} listed, {foreign} of them from orders bulwark did not place)"
            );
            tracing::warn!(%user, %symbol, "reconciliation: {detail}");
            record_action(context, user, "fills_imported", None, &detail).await?;
            report.fills_imported.push((symbol.clone(), count));
            imported_any = true;
        }
    }
    if imported_any {
        mismatches = mismatched(context).await.map_err(database)?;
    }
    let held = context.directory.position_hold(user);
    if listing_failed && !mismatches.is_empty() {
        return Ok(());
    }
    if mismatches.is_empty() {
        context.directory.position_suspects.write().remove(user);
        if held.is_some() {
            context.directory.position_holds.write().remove(user);
            let detail = "the recorded fills explain every position again; entries resume".to_owned();
            tracing::warn!(%user, "reconciliation: {detail}");
            record_action(context, user, "entries_resumed", None, &detail).await?;
        }
        return Ok(());
    }
    let reason = mismatches
        .iter()
        .map(|m| format!("{}: the exchange holds {}, the recorded fills net {}", m.symbol, m.recorded, m.from_fills))
        .collect::<Vec<_>>()
        .join("; ");
    let reason = format!("{reason}; entries halted until the position is explained (a trade bulwark did not make?)");
    // While the user's trader runs, a pass can fall between a fill and the position read that
    // follows it: only a mismatch seen by two passes in a row halts. At a trader's start the
    // account is settled (`settled`), and one pass is enough.
    let seen_before = context.directory.position_suspects.write().insert(user.clone(), reason.clone()).is_some();
    if !settled && !seen_before && held.is_none() {
        tracing::info!(%user, %reason, "reconciliation: position does not match the fills; halting if the next pass agrees");
        return Ok(());
    }
    if held.as_deref() != Some(reason.as_str()) {
        context.directory.position_holds.write().insert(user.clone(), reason.clone());
        tracing::error!(%user, %reason, "reconciliation: position does not match the fills; entries halted");
        record_action(context, user, "entries_halted", None, &reason).await?;
        crate::actors::notifier::notify(
            &context.directory,
            format!("position-hold:{user}"),
            crate::notify::Severity::Critical,
            format!("STATE-POSITION-SYNC: {user}'s entries are halted: {reason}"),
        );
    }
    report.entries_halted = Some(reason);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> ClientOrderId {
        ClientOrderId::parse(text).unwrap()
    }

    #[test]
    fn a_later_reconcile_pass_updates_states_and_keeps_what_was_done() {
        let first = ReconcileReport {
            resolved: vec![(id("bw-u1-1"), OrderState::Unknown), (id("bw-u1-2"), OrderState::Filled)],
            orphans_cancelled: vec![id("bw-u1-9")],
            cancel_failures: vec![(id("bw-u1-8"), "503".to_owned())],
            external_orders: 1,
            unresolvable: vec![(id("bw-u1-4"), "-1121 Invalid symbol.".to_owned())],
            ..ReconcileReport::default()
        };
        assert_eq!(first.waiting_orders(), 1);
        let later = ReconcileReport {
            resolved: vec![
                (id("bw-u1-1"), OrderState::NotPlaced),
                (id("bw-u1-3"), OrderState::Open),
                (id("bw-u1-4"), OrderState::Filled),
            ],
            orphans_cancelled: vec![id("bw-u1-8")],
            cancel_failures: Vec::new(),
            external_orders: 1,
            ..ReconcileReport::default()
        };
        let merged = first.followed_by(later);
        assert_eq!(
            merged.resolved,
            vec![
                (id("bw-u1-1"), OrderState::NotPlaced),
                (id("bw-u1-2"), OrderState::Filled),
                (id("bw-u1-3"), OrderState::Open),
                (id("bw-u1-4"), OrderState::Filled)
            ]
        );
        assert_eq!(merged.orphans_cancelled, vec![id("bw-u1-9"), id("bw-u1-8")]);
        assert!(merged.cancel_failures.is_empty(), "the later pass cancelled it");
        assert!(merged.unresolvable.is_empty(), "the later pass resolved it");
        assert_eq!(merged.waiting_orders(), 1, "an open order is not settled: its fills are still to come");
    }

    #[test]
    fn periodic_reconciliation_takes_users_in_turn_within_its_weight() {
        let plan = |users: usize, symbols_each: usize| PeriodicReconcile {
            interval: Duration::from_secs(300),
            weight_per_minute: 240,
            users: (0..users)
                .map(|n| {
                    let symbols = (0..symbols_each).map(|_| Symbol::new("XRPUSDT").unwrap()).collect();
                    (UserId::new(&format!("u{n}")).unwrap(), symbols)
                })
                .collect(),
        };
        // 240 a minute over 300 s pays 1,200 a pass: four users (6 each) every pass.
        assert_eq!(plan(4, 1).weight_per_pass(), 1_200);
        assert_eq!(plan(4, 1).coverage_ms(), 300_000);
        // 1,000 users on one symbol each: 200 a pass, every user within five passes (25 minutes).
        assert_eq!(plan(1_000, 1).coverage_ms(), 5 * 300_000);
        // Three symbols each (8): 150 a pass, seven passes.
        assert_eq!(plan(1_000, 3).coverage_ms(), 7 * 300_000);
    }
}
