//! The trader actor: the shell around one user's [`TraderCore`].
//!
//! It starts by reloading the user's state from the database and reconciling with the exchange
//! (resolve unresolved orders, cancel orphans) before it subscribes to candles, so a restarted
//! trader never trades on a stale picture. After that it only moves messages: a closed candle goes
//! into the core, the core's commands come out as I/O (account syncs and order placement through
//! the order router, records through persistence), and the answers go back into the core.
//!
//! A start may have to wait for its turn within the start-up weight budget (minutes, when a whole
//! fleet starts at once). A user whose stored picture is recent and complete
//! ([`exits_before_reconciliation`]: open positions verified within 15 minutes, no order
//! unresolved) does not sit out that wait with its positions unmanaged: it subscribes at once and
//! decides exits (each reading its account first, as always) while entries wait. When its turn
//! comes it reconciles as soon as none of its syncs or placements is in flight, holding the
//! candles that arrive meanwhile, and then decides on them with the reconciled state.
//!
//! Every incarnation is new: a panic anywhere in it ends the incarnation, the user's supervisor
//! restarts it with backoff, and the new one rebuilds itself from the database.
//!
//! Owns failure point STATE-STRATEGY-ERROR (it records every skipped iteration) and, with the
//! core, the per-user loop's failure paths of the first seed (§1–4, §7).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::broadcast;

use crate::actors::Directory;
use crate::actors::intelligence::GetIntel;
use crate::actors::market_data::{CandleClosed, Subscribe, Unsubscribe};
use crate::actors::order_router::{ReconcileReport, ReconcileUser, SubmitIntent, SyncAccount};
use crate::actors::persistence;
use crate::clock::Clock;
use crate::domain::{Symbol, Timeframe, UserId};
use crate::failure_points::locks::GuardLock;
use crate::guards::GuardSettings;
use crate::limits::{TRADER_START_UP_ATTEMPTS_MAX, TRADER_START_UP_BACKOFF_MS_INITIAL};
use crate::persistence::outbox::DurableWrite;
use crate::persistence::{DecisionRecord, GuardDecisionRecord, TraderState};
use crate::trader::core::{
    AccountError, PlacementOutcome, SlotSpec, TraderCommand, TraderCore, TraderEvent, exits_before_reconciliation,
    halt_reason,
};
use crate::trader::risk::RiskLimits;

/// Counters shared by every incarnation of one user's trader (read by the tree snapshot and
/// tests; written only by the trader).
#[derive(Debug, Default)]
pub struct UserCounters {
    /// Iterations where the strategy ran and its result was acted on.
    pub decisions: AtomicU64,
    /// Iterations skipped, each with a recorded reason.
    pub skipped: AtomicU64,
    /// Intents handed to the order router.
    pub orders: AtomicU64,
}

/// Deliberate faults for demos and tests (`[chaos]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChaosPlan {
    /// Panic on every Nth decision of each incarnation.
    pub panic_every_decisions: u64,
}

/// Everything needed to build one incarnation; cloned into each.
#[derive(Clone)]
pub struct TraderSeed {
    pub user: UserId,
    pub slots: Vec<SlotSpec>,
    pub limits: RiskLimits,
    pub directory: Arc<Directory>,
    pub clock: Arc<dyn Clock>,
    pub counters: Arc<UserCounters>,
    pub chaos: Option<ChaosPlan>,
    /// Every decision record, for live status surfaces and tests (bounded; never blocks).
    pub decisions_tap: broadcast::Sender<DecisionRecord>,
    /// Safety net on calls to shared actors (they always answer; this bounds a hang).
    pub call_timeout: Duration,
    /// The signal guards (`None`: `[guards] enabled = false`).
    pub guards: Option<GuardSettings>,
    /// Every pass of a signal through the guards, live (bounded; never blocks).
    pub guards_tap: broadcast::Sender<GuardDecisionRecord>,
    /// How fast the exchange's clock runs (`Exchange::venue_pace`): lock durations are venue time.
    pub venue_pace: crate::clock::VenuePace,
}

impl std::fmt::Debug for TraderSeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraderSeed")
            .field("user", &self.user)
            .field("slots", &self.slots.len())
            .field("chaos", &self.chaos)
            .finish()
    }
}

/// What a trader tells its supervisor.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub enum TraderReport {
    /// State reloaded, reconciled, subscribed: trading.
    Ready { incarnation: u32, detail: String },
    /// Start-up failed; the trader stops itself right after this.
    Failed { incarnation: u32, reason: String },
    /// The exchange refuses the account's credentials; the trader stops itself right after this
    /// and must not be restarted until an operator fixes them.
    Halted { incarnation: u32, reason: String },
}

/// The longest a decision waits for intelligence.
const INTEL_WAIT_MAX: Duration = Duration::from_secs(2);

/// Stop after the current message (orderly shutdown).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct StopTrader;

/// Panic now (`[chaos] enabled` only: the admin API's crash button, to watch supervision work).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ChaosCrash {
    pub reason: String,
}

/// Where an incarnation's start stands. Written by the trader only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StartUp {
    /// Waiting for its turn or reconciling, its mailbox held: nothing is decided.
    Holding,
    /// Waiting for its turn, deciding exits on the recent state it stored; entries wait.
    ExitsOnly,
    /// Its turn came: it reconciles once no sync or placement of its own is in flight, holding
    /// the candles that arrive meanwhile.
    ReconcileDue,
    Done,
}

pub struct Trader {
    seed: TraderSeed,
    incarnation: u32,
    supervisor: Recipient<TraderReport>,
    core: TraderCore,
    /// Decisions made by this incarnation (the chaos plan counts these).
    decisions_this_incarnation: u64,
    start_up: StartUp,
    /// Account syncs and placements sent and not yet answered (the reconciliation of an early
    /// start waits until there are none).
    in_flight: u32,
    /// The newest candles of each feed that arrived while the reconciliation was due (at most one
    /// per feed), decided on once it is done.
    held_candles: Vec<CandleClosed>,
}

impl std::fmt::Debug for Trader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trader").field("user", &self.seed.user).field("incarnation", &self.incarnation).finish()
    }
}

impl Trader {
    pub fn new(seed: TraderSeed, incarnation: u32, supervisor: Recipient<TraderReport>) -> Self {
        let mut core =
            TraderCore::new(seed.user.clone(), seed.slots.clone(), seed.limits).with_venue_pace(seed.venue_pace);
        if let Some(guards) = &seed.guards {
            core = core.with_guards(guards.clone());
        }
        Self {
            seed,
            incarnation,
            supervisor,
            core,
            decisions_this_incarnation: 0,
            start_up: StartUp::Holding,
            in_flight: 0,
            held_candles: Vec::new(),
        }
    }

    fn fail(&mut self, ctx: &mut Context<Self>, reason: String) {
        tracing::error!(user = %self.seed.user, incarnation = self.incarnation, %reason, "trader: start-up failed");
        let _ = self.supervisor.try_send(TraderReport::Failed { incarnation: self.incarnation, reason });
        ctx.stop();
    }

    /// The account has no usable credentials (refused by the exchange, or missing): stop taking
    /// candles, tell the supervisor (which records the user as halted and does not restart it), and
    /// stop. Orders already sent stay in the database for the next start to resolve.
    fn halt(&mut self, ctx: &mut Context<Self>, reason: String) {
        tracing::error!(user = %self.seed.user, incarnation = self.incarnation, %reason, "trader: halted");
        if let Ok(market_data) = self.seed.directory.market_data() {
            // A full mailbox only delays this: the stopped trader's closed mailbox is dropped by
            // the next fan-out anyway.
            let _ = market_data.try_send(Unsubscribe { user: self.seed.user.clone() });
        }
        let _ = self.supervisor.try_send(TraderReport::Halted { incarnation: self.incarnation, reason });
        ctx.stop();
    }

    /// Carries out the core's commands. A decision that the chaos plan targets panics here, before
    /// any of the batch's effects, so nothing half-done is left behind.
    fn execute(&mut self, commands: Vec<TraderCommand>, ctx: &mut Context<Self>) {
        let decided = commands.iter().any(|c| matches!(c, TraderCommand::Record(record) if record.counts_as_decision));
        if decided {
            self.decisions_this_incarnation += 1;
            if let Some(chaos) = self.seed.chaos
                && self.decisions_this_incarnation.is_multiple_of(chaos.panic_every_decisions)
            {
                panic!(
                    "chaos: injected panic at decision {} of incarnation {} of user {}",
                    self.decisions_this_incarnation, self.incarnation, self.seed.user
                );
            }
        }
        for command in commands {
            match command {
                TraderCommand::Record(record) => self.record(record),
                TraderCommand::SavePosition(position) => {
                    persistence::submit_durable(&self.seed.directory, DurableWrite::Position(position));
                }
                TraderCommand::SyncAccount { slot, iteration, symbol } => {
                    self.sync_account(slot, iteration, symbol, ctx)
                }
                TraderCommand::PlaceIntent { slot, intent } => self.place_intent(slot, intent, ctx),
                TraderCommand::Halt { reason } => self.halt(ctx, reason),
                TraderCommand::SetLock(lock) => {
                    let scope =
                        lock.symbol.as_ref().map_or("every new entry".to_owned(), |s| format!("entries on {s}"));
                    crate::actors::notifier::notify(
                        &self.seed.directory,
                        format!("lock:{}:{}", lock.failure_point, lock.user),
                        crate::notify::Severity::Warning,
                        format!(
                            "{} set for {}: {scope} blocked until {} ({})",
                            lock.failure_point,
                            lock.user,
                            crate::clock::rfc3339_ms(lock.until_ms),
                            lock.reason
                        ),
                    );
                    tracing::warn!(user = %lock.user, failure_point = %lock.failure_point, symbol = ?lock.symbol.as_ref().map(Symbol::as_str), until = %crate::clock::rfc3339_ms(lock.until_ms), "guard lock set: {}", lock.reason);
                    // The lock already holds in the core; the row is what makes it outlive a restart
                    // (kept in the outbox if the database refuses it). It is in persistence's
                    // mailbox before this trader handles anything else, and its answer is awaited
                    // by a task of its own: a crash right after (before the next candle) must not
                    // take the lock along, or the next incarnation would trade through it.
                    let stored = persistence::write_enqueued(&self.seed.directory, DurableWrite::GuardLock(lock));
                    actix::spawn(async move {
                        if let Err(error) = stored.await {
                            tracing::error!(%error, "guard lock could not be stored; it holds until this trader restarts");
                        }
                    });
                }
                TraderCommand::Alert { key, text } => {
                    tracing::warn!(user = %self.seed.user, incarnation = self.incarnation, "{text}");
                    crate::actors::notifier::notify(&self.seed.directory, key, crate::notify::Severity::Warning, text);
                }
                TraderCommand::SaveRiskMemory(memory) => {
                    let at_ms = self.seed.clock.now_ms();
                    let user = self.seed.user.clone();
                    persistence::submit_durable(&self.seed.directory, DurableWrite::RiskMemory { user, memory, at_ms });
                }
                TraderCommand::RecordGuards(record) => {
                    if let Some(guard) = &record.failure_point {
                        self.seed.directory.metrics.guard_block(guard);
                    }
                    let _ = self.seed.guards_tap.send(record.clone());
                    persistence::submit_durable(&self.seed.directory, DurableWrite::GuardDecision(record));
                }
            }
        }
    }

    fn record(&mut self, record: DecisionRecord) {
        let counter =
            if record.counts_as_decision { &self.seed.counters.decisions } else { &self.seed.counters.skipped };
        if record.outcome == "skipped" || record.counts_as_decision {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        if record.outcome == "skipped" {
            // The main-loop error policy: the full context of every iteration that did not decide.
            tracing::info!(user = %record.user, symbol = %record.symbol, timeframe = %record.timeframe, strategy = %record.strategy, candle_close_ms = ?record.candle_close_ms, reason = %record.reason, "iteration skipped");
        } else {
            tracing::debug!(user = %record.user, symbol = %record.symbol, outcome = %record.outcome, reason = %record.reason, "decision");
        }
        let _ = self.seed.decisions_tap.send(record.clone());
        persistence::submit_durable(&self.seed.directory, DurableWrite::Decision(record));
    }

    /// Syncs the account and, for the guards, asks for the symbol's intelligence at the same time.
    fn sync_account(&mut self, slot: usize, iteration: u64, symbol: Symbol, ctx: &mut Context<Self>) {
        let intel_request = self
            .core
            .intelligence_wanted(slot)
            .map(|(symbol, timeframe, newest_candle_open_ms)| GetIntel { symbol, timeframe, newest_candle_open_ms });
        let request = SyncAccount { user: self.seed.user.clone(), symbol, marks: self.core.marks() };
        let (directory, timeout) = (self.seed.directory.clone(), self.seed.call_timeout);
        let intel_directory = directory.clone();
        let answer = async move {
            let router = directory.order_router().map_err(|e| AccountError::other(e.to_string()))?;
            router
                .send(request)
                .timeout(timeout)
                .await
                .map_err(|e| AccountError::other(format!("order router did not answer: {e}")))?
        };
        // Bounded short: a slow data vendor delays a decision by at most this; the fetch goes on in
        // the Intelligence actor and the next candle has it.
        let intelligence = async move {
            let (request, intelligence) = (intel_request?, intel_directory.intelligence().ok()?);
            intelligence.send(request).timeout(INTEL_WAIT_MAX).await.ok().flatten()
        };
        self.in_flight += 1;
        ctx.spawn(futures::future::join(answer, intelligence).into_actor(self).map(
            move |(result, intelligence), trader, ctx| {
                trader.in_flight -= 1;
                let now_ms = trader.seed.clock.now_ms();
                if let Some(snapshot) = intelligence {
                    trader.core.process(TraderEvent::IntelligenceUpdated { snapshot }, now_ms);
                }
                let commands = trader.core.process(TraderEvent::AccountSynced { slot, iteration, result }, now_ms);
                trader.execute(commands, ctx);
                trader.reconcile_when_idle(ctx);
            },
        ));
    }

    fn place_intent(
        &mut self,
        slot: usize,
        approved: crate::trader::risk::RiskApproved<crate::domain::OrderIntent>,
        ctx: &mut Context<Self>,
    ) {
        self.seed.counters.orders.fetch_add(1, Ordering::Relaxed);
        let client_order_id = approved.get().client_order_id.clone();
        let (directory, timeout) = (self.seed.directory.clone(), self.seed.call_timeout);
        let placement = async move {
            // Invariant 1: the intent is durable before anything can be sent (in the database, or
            // for an exit while it refuses writes, in the fsynced outbox).
            let intent = approved.get().clone();
            if let Err(error) = persistence::write(&directory, DurableWrite::CommitIntent(intent)).await {
                return PlacementOutcome::NotCommitted { reason: error.to_string() };
            }
            let router = match directory.order_router() {
                Ok(router) => router,
                Err(error) => return PlacementOutcome::Unconfirmed { reason: error.to_string() },
            };
            match router.send(SubmitIntent { intent: approved }).timeout(timeout).await {
                Ok(outcome) => outcome,
                Err(error) => PlacementOutcome::Unconfirmed { reason: format!("order router did not answer: {error}") },
            }
        };
        self.in_flight += 1;
        ctx.spawn(placement.into_actor(self).map(move |outcome, trader, ctx| {
            trader.in_flight -= 1;
            let now_ms = trader.seed.clock.now_ms();
            let commands =
                trader.core.process(TraderEvent::PlacementFinished { slot, client_order_id, outcome }, now_ms);
            trader.execute(commands, ctx);
            trader.reconcile_when_idle(ctx);
        }));
    }
}

impl Actor for Trader {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let seed = self.seed.clone();
        let feeds = self.core.feeds();
        let recipient = ctx.address().recipient();
        // Until it knows how it starts the trader handles nothing else (candles wait in the mailbox).
        ctx.wait(plan_start(seed, feeds, recipient).into_actor(self).map(|plan, trader, ctx| match plan {
            StartPlan::Hold { wait_ms } => trader.hold_until_started(wait_ms, ctx),
            StartPlan::ExitsFirst { state, open_positions, wait_ms } => {
                trader.exit_until_turn(state, open_positions, wait_ms, ctx)
            }
        }));
    }
}

/// How an incarnation starts.
enum StartPlan {
    /// Wait for the turn (`wait_ms`), reconcile, then trade: the mailbox held all along.
    Hold { wait_ms: u64 },
    /// Subscribed already; decide exits on `state` until the turn comes in `wait_ms`.
    ExitsFirst { state: (TraderState, Vec<GuardLock>), open_positions: usize, wait_ms: u64 },
}

/// Takes the start's turn within the start-up weight budget and, when it is not now, whether the
/// stored state lets the trader exit meanwhile (it is then subscribed already).
async fn plan_start(
    seed: TraderSeed,
    feeds: Vec<(Symbol, Timeframe)>,
    recipient: Recipient<CandleClosed>,
) -> StartPlan {
    let symbols = feeds.iter().map(|(symbol, _)| symbol).collect::<std::collections::BTreeSet<_>>().len();
    let weight = crate::exchange::start_pacer::start_up_weight(symbols);
    let wait_ms = seed.directory.start_up_wait_ms(weight, seed.clock.now_ms());
    if wait_ms == 0 {
        return StartPlan::Hold { wait_ms };
    }
    tracing::info!(user = %seed.user, wait_ms, weight, "trader start-up: waiting for its turn within [exchange] start_up_weight_per_minute");
    let state = match load_state(&seed).await {
        Ok(state) => state,
        Err(error) => {
            tracing::debug!(user = %seed.user, %error, "trader start-up: no exits before reconciliation (state not loaded)");
            return StartPlan::Hold { wait_ms };
        }
    };
    let open_positions = match exits_before_reconciliation(&state.0, seed.clock.now_ms()) {
        Ok(open_positions) => open_positions,
        Err(why) => {
            tracing::debug!(user = %seed.user, %why, "trader start-up: no exits before reconciliation");
            return StartPlan::Hold { wait_ms };
        }
    };
    match subscribe(&seed, &feeds, &recipient).await {
        Ok(()) => StartPlan::ExitsFirst { state, open_positions, wait_ms },
        Err(error) => {
            tracing::debug!(user = %seed.user, %error, "trader start-up: no exits before reconciliation");
            StartPlan::Hold { wait_ms }
        }
    }
}

impl Trader {
    /// The ordinary start: wait for the turn, reconcile, subscribe, with the mailbox held.
    fn hold_until_started(&mut self, wait_ms: u64, ctx: &mut Context<Self>) {
        self.start_up = StartUp::Holding;
        let (seed, feeds, recipient) = (self.seed.clone(), self.core.feeds(), ctx.address().recipient());
        let started = async move {
            if wait_ms > 0 {
                tokio::time::sleep(Duration::from_millis(wait_ms)).await;
            }
            start_up(seed, feeds, recipient).await
        };
        ctx.wait(started.into_actor(self).map(|result, trader, ctx| trader.started_up(result, ctx)));
    }

    /// The early start: decide exits on the stored state now, and reconcile when the turn comes.
    fn exit_until_turn(
        &mut self,
        (state, locks): (TraderState, Vec<GuardLock>),
        open_positions: usize,
        wait_ms: u64,
        ctx: &mut Context<Self>,
    ) {
        self.core.restore(&state);
        self.core.restore_locks(locks);
        let until = crate::clock::rfc3339_ms(self.seed.clock.now_ms() + wait_ms as i64);
        self.core.hold_entries(format!(
            "entries wait for the start-up reconciliation (its turn within [exchange] start_up_weight_per_minute comes at {until}); exits go ahead"
        ));
        self.start_up = StartUp::ExitsOnly;
        tracing::info!(user = %self.seed.user, incarnation = self.incarnation, open_positions, wait_ms, "trader start-up: deciding exits on the state stored moments ago until its reconciliation; entries wait");
        ctx.spawn(tokio::time::sleep(Duration::from_millis(wait_ms)).into_actor(self).map(|(), trader, ctx| {
            trader.start_up = StartUp::ReconcileDue;
            trader.reconcile_when_idle(ctx);
        }));
    }

    /// An early start whose turn came reconciles once nothing of its own is in flight (as the
    /// ordinary start does: no sync or placement of this user runs beside it), the mailbox held.
    fn reconcile_when_idle(&mut self, ctx: &mut Context<Self>) {
        if self.start_up != StartUp::ReconcileDue || self.in_flight > 0 {
            return;
        }
        self.hold_until_started(0, ctx);
    }

    /// The start-up's end: trading with the reconciled state, or failed, or halted.
    fn started_up(
        &mut self,
        result: Result<((TraderState, Vec<GuardLock>), ReconcileReport), AccountError>,
        ctx: &mut Context<Self>,
    ) {
        let (state, report) = match result {
            Ok(done) => done,
            Err(error) if error.credentials_refused => return self.halt(ctx, halt_reason(&error.detail)),
            Err(error) => return self.fail(ctx, error.detail),
        };
        let (state, locks) = state;
        self.core.restore(&state);
        self.core.restore_locks(locks);
        self.core.release_entries();
        self.start_up = StartUp::Done;
        let reused = if report.reads_reused.is_empty() {
            String::new()
        } else {
            format!("; not read again (read moments ago): {}", report.reads_reused.join(", "))
        };
        let detail = format!(
            "reloaded {} position(s), intent sequence {}, {} unresolved order(s); reconciled: {} resolved, {} orphan(s) cancelled, {} external order(s), {} not resolvable yet{reused}",
            state.positions.len(),
            state.last_intent_seq,
            state.unresolved_orders.len(),
            report.resolved.len(),
            report.orphans_cancelled.len(),
            report.external_orders,
            report.unresolvable.len()
        );
        tracing::info!(user = %self.seed.user, incarnation = self.incarnation, positions = ?self.core.describe_positions(), "trader ready: {detail}");
        let _ = self.supervisor.try_send(TraderReport::Ready { incarnation: self.incarnation, detail });
        for candles in std::mem::take(&mut self.held_candles) {
            self.decide_on(candles, ctx);
        }
    }

    fn decide_on(&mut self, message: CandleClosed, ctx: &mut Context<Self>) {
        let now_ms = self.seed.clock.now_ms();
        let event = TraderEvent::CandleClosed {
            symbol: message.symbol,
            timeframe: message.timeframe,
            candles: message.candles,
        };
        let commands = self.core.process(event, now_ms);
        self.execute(commands, ctx);
    }
}

/// Start-up: reload state, reconcile, subscribe, each confirmed. A dependency that is briefly
/// unavailable (a shared actor restarting, the exchange unreachable) is retried within a small
/// budget before start-up fails, so that a short outage does not count as a crash.
async fn start_up(
    seed: TraderSeed,
    feeds: Vec<(Symbol, Timeframe)>,
    recipient: Recipient<CandleClosed>,
) -> Result<((TraderState, Vec<GuardLock>), ReconcileReport), AccountError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match start_up_once(&seed, &feeds, &recipient).await {
            Ok(done) => return Ok(done),
            // Refused credentials do not heal by retrying.
            Err(error) if error.credentials_refused => return Err(error),
            Err(error) if attempt < TRADER_START_UP_ATTEMPTS_MAX => {
                let backoff_ms = TRADER_START_UP_BACKOFF_MS_INITIAL << (attempt - 1);
                tracing::warn!(user = %seed.user, attempt, backoff_ms, %error, "trader start-up: retrying");
                tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
            }
            Err(error) => return Err(error.context(format_args!("after {attempt} attempts"))),
        }
    }
}

async fn start_up_once(
    seed: &TraderSeed,
    feeds: &[(Symbol, Timeframe)],
    recipient: &Recipient<CandleClosed>,
) -> Result<((TraderState, Vec<GuardLock>), ReconcileReport), AccountError> {
    // Reconcile first, then load: the state loaded is the one reconciliation left (orders
    // resolved, positions re-synced from the exchange).
    let router = seed.directory.order_router().map_err(|e| AccountError::other(format!("reconciliation: {e}")))?;
    let mut symbols: Vec<Symbol> = feeds.iter().map(|(symbol, _)| symbol.clone()).collect();
    symbols.sort();
    symbols.dedup();
    let report = router
        .send(ReconcileUser { user: seed.user.clone(), symbols, settled: true })
        .timeout(seed.call_timeout)
        .await
        .map_err(|e| AccountError::other(format!("reconciliation: order router did not answer: {e}")))?
        .map_err(|e| e.context("reconciliation"))?;
    if let Some((client_order_id, error)) = report.cancel_failures.first() {
        // Invariant 3: never trade next to an orphan.
        return Err(AccountError::other(format!(
            "reconciliation: orphan order {client_order_id} could not be cancelled: {error}"
        )));
    }
    let state = load_state(seed).await?;
    subscribe(seed, feeds, recipient).await?;
    Ok((state, report))
}

/// The user's stored state and uncleared guard locks.
async fn load_state(seed: &TraderSeed) -> Result<(TraderState, Vec<GuardLock>), AccountError> {
    let user = seed.user.clone();
    persistence::run(&seed.directory, move |store| {
        Ok((store.load_trader_state(&user)?, store.uncleared_guard_locks(Some(&user))?))
    })
    .await
    .map_err(|e| AccountError::other(format!("loading state: {e}")))
}

/// Subscribes the trader to its feeds (again, harmlessly, after an early start).
async fn subscribe(
    seed: &TraderSeed,
    feeds: &[(Symbol, Timeframe)],
    recipient: &Recipient<CandleClosed>,
) -> Result<(), AccountError> {
    let market_data =
        seed.directory.market_data().map_err(|e| AccountError::other(format!("subscribing to candles: {e}")))?;
    let subscribe = Subscribe { user: seed.user.clone(), feeds: feeds.to_vec(), recipient: recipient.clone() };
    market_data
        .send(subscribe)
        .timeout(seed.call_timeout)
        .await
        .map_err(|e| AccountError::other(format!("subscribing to candles: market data did not answer: {e}")))
}

impl Handler<CandleClosed> for Trader {
    type Result = ();

    fn handle(&mut self, message: CandleClosed, ctx: &mut Context<Self>) {
        if self.start_up == StartUp::ReconcileDue {
            // Decided on once the reconciliation is done (the newest window of each feed).
            self.held_candles.retain(|held| (&held.symbol, held.timeframe) != (&message.symbol, message.timeframe));
            self.held_candles.push(message);
            return;
        }
        self.decide_on(message, ctx);
    }
}

impl Handler<StopTrader> for Trader {
    type Result = ();

    fn handle(&mut self, _: StopTrader, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Handler<ChaosCrash> for Trader {
    type Result = ();

    fn handle(&mut self, message: ChaosCrash, _: &mut Context<Self>) {
        panic!("chaos: {}", message.reason);
    }
}
