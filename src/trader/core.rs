//! The per-user trading loop as a plain state machine: no actix, no I/O, time passed in.
//!
//! One [`TraderCore`] per user holds one slot per configured strategy. Each closed candle walks a
//! slot through the seed's loop: candles → position → signal → risk → order → persist. The core
//! never does the I/O itself; it returns [`TraderCommand`]s (sync the account, place an intent,
//! record a decision, save the position) and the trader actor feeds the answers back as
//! [`TraderEvent`]s. Every way an iteration can fail (seed §1–4, §7) ends in a recorded reason and
//! a skipped iteration:
//!
//! | failure | what the core does |
//! |---|---|
//! | candles unavailable or invalid (§1) | record `skipped`, wait for the next candle |
//! | position fetch failed (§2) | record `skipped`; never decide without a freshly verified position |
//! | strategy error (§3) | record `skipped` with the error |
//! | order rejected or failed (§4) | record it; no automatic resubmission, no duplicate |
//! | unexpected error (§7) | recorded as `skipped` by the actor; a panic goes to the supervisor |
//!
//! An order whose outcome is not final blocks new intents on its symbol until a later sync
//! resolves it, so one decision never becomes two orders.

use std::collections::BTreeMap;
use std::sync::Arc;

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;

use crate::clock::{VenueMoment, VenuePace};
use crate::domain::{
    Candle, ClientOrderId, IntentPurpose, OrderIntent, OrderState, OrderType, Position, PositionSide, Side, Symbol,
    SymbolRules, Timeframe, UserId, decimal_from_f64, validate_candles,
};
use crate::failure_points::catalog::{FailurePointId, SIG_KILL_SWITCH, SIG_SYMBOL_PROBATION};
use crate::failure_points::locks::GuardLock;
use crate::guards::equity::EquityTracker;
use crate::guards::{self, EntrySignal, GuardSettings, GuardsPassed, OtherSlot, SignalContext};
use crate::intelligence::IntelSnapshot;
use crate::records::{DecisionCause, DecisionRecord, GuardDecisionRecord, PositionRecord, TraderState};
use crate::strategy::{SignalAction, Strategy};
use crate::trader::memory::{RiskMemory, SlotMemory};
use crate::trader::risk::{self, EntryContext, RiskApproved, RiskLimits};

/// Failing iterations in a row before the operator is told.
pub const ERROR_STREAK_ALERT: u32 = 3;
/// Failing iterations in a row before the slot backs off.
pub const ERROR_STREAK_PAUSE: u32 = 5;
/// The longest back-off, in candles.
pub const ERROR_PAUSE_CANDLES_MAX: u32 = 16;

/// How old a verified position may be when a decision is made on it.
pub const POSITION_VERIFIED_AGE_MS_MAX: i64 = 30_000;

/// How recently (wall time) every open position a previous incarnation stored must have been
/// verified for the next one to exit before its start-up reconciliation is done.
pub const START_UP_EXITS_STATE_AGE_MS_MAX: i64 = 15 * 60_000;

/// Whether a trader starting from `state` may decide exits while it waits for its start-up
/// reconciliation (entries wait for it; every decision still reads the account first): it holds
/// a position to protect, no order of its is unresolved (its picture of the account is complete),
/// and every open position was verified within [`START_UP_EXITS_STATE_AGE_MS_MAX`] of `now_ms`.
/// `Err` says why not (the trader then waits for reconciliation before deciding anything).
pub fn exits_before_reconciliation(state: &TraderState, now_ms: i64) -> Result<usize, String> {
    let open: Vec<&PositionRecord> = state.positions.iter().filter(|p| !p.quantity.is_zero()).collect();
    if open.is_empty() {
        return Err("no open position to protect".to_owned());
    }
    if let Some(order) = state.unresolved_orders.first() {
        return Err(format!("order {} is unresolved", order.intent.client_order_id));
    }
    if let Some(stale) = open.iter().find(|p| now_ms - p.verified_at_ms > START_UP_EXITS_STATE_AGE_MS_MAX) {
        return Err(format!(
            "the {} position was verified {} s ago, longer than {} s",
            stale.symbol,
            (now_ms - stale.verified_at_ms) / 1_000,
            START_UP_EXITS_STATE_AGE_MS_MAX / 1_000
        ));
    }
    Ok(open.len())
}

/// One configured strategy of a user.
#[derive(Debug, Clone)]
pub struct SlotSpec {
    pub symbol: Symbol,
    pub timeframe: Timeframe,
    pub strategy: Arc<dyn Strategy>,
    pub position_size_usdt: Decimal,
}

/// An order the exchange side still has to finish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnresolvedOrder {
    pub client_order_id: ClientOrderId,
    pub state: OrderState,
}

/// The account as the order router saw it just now, for one symbol.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountSnapshot {
    pub position: Position,
    pub rules: SymbolRules,
    /// Orders on this symbol that are not final after the sync.
    pub unresolved: Vec<UnresolvedOrder>,
    pub fetched_at_ms: i64,
    /// Wallet balance + unrealized PnL (USDT), or why it could not be read (the kill switch then
    /// blocks entries: it fails closed).
    pub equity_usdt: Result<f64, String>,
    /// Why no entry may be placed for this account now, whatever the signal (exits still go
    /// through): the ledger is behind (SYS-DATABASE) or the position is unexplained
    /// (STATE-POSITION-SYNC).
    pub entries_halted: Option<EntryHalt>,
}

/// A reason outside the trader that refuses every new entry of an account for now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryHalt {
    pub failure_point: FailurePointId,
    pub reason: String,
}

/// Why the account could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountError {
    pub detail: String,
    /// The exchange refused the account's credentials (-2014, -2015, 401, a bad signature):
    /// nothing will work until an operator fixes them.
    pub credentials_refused: bool,
}

impl AccountError {
    pub fn other(detail: impl Into<String>) -> Self {
        Self { detail: detail.into(), credentials_refused: false }
    }

    /// The same error with what was being done in front of its detail.
    pub fn context(self, doing: impl std::fmt::Display) -> Self {
        Self { detail: format!("{doing}: {}", self.detail), ..self }
    }
}

impl std::fmt::Display for AccountError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

/// Why an account whose credentials the exchange refuses is halted (status and journal show this).
pub fn halt_reason(detail: &str) -> String {
    format!("no usable API credentials for this account ({detail}); trading halted until an operator fixes them")
}

/// How placing an intent ended, from the trader's point of view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlacementOutcome {
    /// The router recorded this state for the order (open, filled, rejected, unknown, ...).
    Recorded { state: OrderState, detail: String },
    /// The intent could not be committed; nothing was sent.
    NotCommitted { reason: String },
    /// The intent was committed but the router could not be reached or did not answer; the order
    /// may exist and will be resolved by its client order id.
    Unconfirmed { reason: String },
    /// The exchange refused the account's credentials; the order was recorded as rejected.
    CredentialsRefused { detail: String },
    /// The exchange refused the order with this code; it was recorded as rejected.
    Refused { code: i64, detail: String },
    /// The order executed with its placement (a market order: Binance executes it at once) and was
    /// recorded filled with its fills: `signed_quantity` (positive bought) at `average_price`.
    Executed { detail: String, signed_quantity: Decimal, average_price: Decimal },
}

/// Binance's "Margin is insufficient": an order refused for it counts as RES-CAPITAL.
pub const MARGIN_REFUSED_CODE: i64 = -2019;

/// Inputs to the core.
#[derive(Debug, Clone)]
pub enum TraderEvent {
    CandleClosed {
        symbol: Symbol,
        timeframe: Timeframe,
        candles: Result<Arc<[Candle]>, String>,
    },
    AccountSynced {
        slot: usize,
        iteration: u64,
        result: Result<AccountSnapshot, AccountError>,
    },
    PlacementFinished {
        slot: usize,
        client_order_id: ClientOrderId,
        outcome: PlacementOutcome,
    },
    /// Fresh intelligence for a symbol (the guards read the newest one).
    IntelligenceUpdated {
        snapshot: Arc<IntelSnapshot>,
    },
}

/// Outputs of the core, for the actor to carry out.
#[derive(Debug, Clone)]
pub enum TraderCommand {
    SyncAccount {
        slot: usize,
        iteration: u64,
        symbol: Symbol,
    },
    /// Commit the intent, then send it to the order router.
    PlaceIntent {
        slot: usize,
        intent: RiskApproved<OrderIntent>,
    },
    Record(DecisionRecord),
    SavePosition(PositionRecord),
    /// Stop trading this account: the exchange refuses its credentials.
    Halt {
        reason: String,
    },
    /// A guard set a kill switch or a probation: store it (it outlives restarts).
    SetLock(GuardLock),
    /// A signal's pass through the guards.
    RecordGuards(GuardDecisionRecord),
    /// Iterations of a slot keep failing: tell the operator (logged with its context, notified).
    Alert {
        key: String,
        text: String,
    },
    /// The risk locks' inputs changed (an equity peak, a losing streak): store them, so that the
    /// next incarnation judges the same.
    SaveRiskMemory(RiskMemory),
}

#[derive(Debug, Clone)]
enum Phase {
    Idle,
    Syncing { iteration: u64, candles: Arc<[Candle]>, candle_close_ms: i64 },
    Placing { client_order_id: ClientOrderId },
}

impl Phase {
    fn describe(&self) -> String {
        match self {
            Phase::Idle => "idle".to_owned(),
            Phase::Syncing { .. } => "waiting for the account sync".to_owned(),
            Phase::Placing { client_order_id } => format!("placing order {client_order_id}"),
        }
    }
}

/// What the core believes about a position (the exchange is the source of truth; this is the
/// last verified copy).
#[derive(Debug, Clone, PartialEq, Eq)]
struct KnownPosition {
    quantity: Decimal,
    entry_price: Decimal,
    mark_price: Decimal,
    verified_at_ms: i64,
}

#[derive(Debug, Clone)]
struct Slot {
    spec: SlotSpec,
    phase: Phase,
    known_position: Option<KnownPosition>,
    position_start_time_ms: Option<i64>,
    /// The newest intent's order while it is not final.
    active_order: Option<ClientOrderId>,
    /// Close time of the newest candle this slot acted on (repeated deliveries are ignored).
    last_candle_close_ms: Option<i64>,
    /// Losing trades in a row on this slot, and the newest trade's result in % (probation).
    loss_streak: u32,
    last_trade_pct: Option<f64>,
    /// The mark price when this slot's newest exit was decided: a market exit fills close to it,
    /// so the closed trade is judged at it (the next sync's mark may be a candle later).
    exit_reference_price: Option<f64>,
    /// Iterations in a row that failed (candles, position or strategy), and how many candles the
    /// slot still sits out (the per-slot error breaker: it backs off instead of asking the exchange
    /// again and again), and how many pauses this streak has had (the backoff doubles).
    error_streak: u32,
    paused_candles: u32,
    pauses: u32,
}

/// The state machine of one user's trading.
#[derive(Debug)]
pub struct TraderCore {
    user: UserId,
    slots: Vec<Slot>,
    limits: RiskLimits,
    /// Sequence of the newest intent; the next intent gets `last_intent_seq + 1`.
    last_intent_seq: u64,
    /// Sync requests issued (stale answers carry an older number and are ignored).
    iteration: u64,
    /// Set when the exchange refuses the account's credentials; from then on nothing is decided.
    halted: Option<String>,
    /// The signal guards; `None` when `[guards] enabled = false` (only the risk gate applies).
    guards: Option<GuardSettings>,
    /// How fast the venue's clock runs (set once by the trader actor, from the exchange): the
    /// guards' venue durations become wall times with it.
    venue_pace: VenuePace,
    /// Equity samples for the kill switch (written on every sync).
    equity: EquityTracker,
    /// Why the newest sync could not read equity (`None`: it could).
    equity_error: Option<String>,
    /// The user's uncleared kill switches and probations (loaded at start, added when a guard
    /// sets one; a lock past its expiry no longer blocks).
    locks: Vec<GuardLock>,
    /// The newest candle window of every symbol this user trades (power ranking).
    universe: BTreeMap<(Symbol, Timeframe), Arc<[Candle]>>,
    /// The newest intelligence per (symbol, timeframe).
    intelligence: BTreeMap<(Symbol, Timeframe), Arc<IntelSnapshot>>,
    /// The risk memory as last handed out to be stored (or restored): a new one is handed out
    /// only when it differs.
    saved_memory: Option<RiskMemory>,
    /// Why entries wait (the trader actor sets it while its start-up reconciliation is pending and
    /// exits go ahead; cleared when it is done). Read by the entry decision.
    entries_wait: Option<String>,
}

impl TraderCore {
    pub fn new(user: UserId, specs: Vec<SlotSpec>, limits: RiskLimits) -> Self {
        let slots = specs
            .into_iter()
            .map(|spec| Slot {
                spec,
                phase: Phase::Idle,
                known_position: None,
                position_start_time_ms: None,
                active_order: None,
                last_candle_close_ms: None,
                loss_streak: 0,
                last_trade_pct: None,
                exit_reference_price: None,
                error_streak: 0,
                paused_candles: 0,
                pauses: 0,
            })
            .collect();
        Self {
            user,
            slots,
            limits,
            last_intent_seq: 0,
            iteration: 0,
            halted: None,
            guards: None,
            venue_pace: VenuePace::WALL,
            // Tracked even with the guards off, so that turning them on again (a reload) finds the
            // peaks the memory kept.
            equity: EquityTracker::new(equity_lookback_ms(&GuardSettings::default(), VenuePace::WALL)),
            equity_error: Some("no account sync yet".to_owned()),
            locks: Vec::new(),
            universe: BTreeMap::new(),
            intelligence: BTreeMap::new(),
            saved_memory: None,
            entries_wait: None,
        }
    }

    /// Entries are blocked (recorded with `reason`) until [`TraderCore::release_entries`]; exits
    /// are decided as always.
    pub fn hold_entries(&mut self, reason: impl Into<String>) {
        self.entries_wait = Some(reason.into());
    }

    pub fn release_entries(&mut self) {
        self.entries_wait = None;
    }

    /// Turns the signal guards on (the server always does unless `[guards] enabled = false`).
    pub fn with_guards(mut self, settings: GuardSettings) -> Self {
        self.equity = EquityTracker::new(equity_lookback_ms(&settings, self.venue_pace));
        self.guards = Some(settings);
        self
    }

    /// The venue's pace (before [`TraderCore::with_guards`]); Binance's is the wall clock's.
    pub fn with_venue_pace(mut self, pace: VenuePace) -> Self {
        self.venue_pace = pace;
        let settings = self.guards.clone().unwrap_or_default();
        self.equity = EquityTracker::new(equity_lookback_ms(&settings, pace));
        self
    }

    /// A decision's moment: now on the wall clock, and the close of the candle decided on.
    fn moment(&self, now_ms: i64, candle_close_ms: i64) -> VenueMoment {
        VenueMoment { wall_ms: now_ms, venue_ms: candle_close_ms, pace: self.venue_pace }
    }

    /// The user's uncleared locks, as stored (at start-up).
    pub fn restore_locks(&mut self, locks: Vec<GuardLock>) {
        self.locks = locks;
    }

    /// The intelligence a slot's decision wants: (symbol, timeframe, open time of the newest
    /// candle). `None` without guards or candles, and while the slot holds a position (only
    /// entries read intelligence; an exit must never wait for it).
    /// The newest closing price of each symbol the trader has candles for (of its newest candle
    /// across timeframes): the marks an account's equity is valued at, whichever way the account
    /// was read, so that the kill switch sees the same equity from a REST read and from the stream.
    pub fn marks(&self) -> BTreeMap<Symbol, Decimal> {
        let mut newest: BTreeMap<Symbol, (i64, f64)> = BTreeMap::new();
        for ((symbol, _), candles) in &self.universe {
            if let Some(candle) = candles.last()
                && newest.get(symbol).is_none_or(|(open_ms, _)| *open_ms < candle.open_time_ms)
            {
                newest.insert(symbol.clone(), (candle.open_time_ms, candle.close));
            }
        }
        newest
            .into_iter()
            .filter_map(|(symbol, (_, close))| decimal_from_f64(close).ok().map(|mark| (symbol, mark)))
            .collect()
    }

    pub fn intelligence_wanted(&self, slot_index: usize) -> Option<(Symbol, Timeframe, i64)> {
        self.guards.as_ref()?;
        let slot = self.slots.get(slot_index)?;
        if slot.known_position.as_ref().is_some_and(|p| !p.quantity.is_zero()) {
            return None;
        }
        let newest = self.universe.get(&(slot.spec.symbol.clone(), slot.spec.timeframe))?.last()?;
        Some((slot.spec.symbol.clone(), slot.spec.timeframe, newest.open_time_ms))
    }

    /// Equity as the kill switch sees it, or why it cannot be computed. A kill switch that has run
    /// out (by the venue's clock) served its drawdown: the peak is measured from its expiry on
    /// (equity samples are wall-clock readings).
    fn equity_view(&self, now: VenueMoment) -> Result<guards::EquityView, String> {
        if let Some(why) = &self.equity_error {
            return Err(why.clone());
        }
        let since_ms = self
            .locks
            .iter()
            .filter(|l| l.failure_point == SIG_KILL_SWITCH.as_str() && !l.holds_at_venue(now.venue_ms))
            .map(|l| l.until_ms)
            .max()
            .unwrap_or(i64::MIN);
        self.equity.view_since(now.wall_ms, since_ms).ok_or_else(|| "no equity sample yet".to_owned())
    }

    /// Stores a lock a guard set, in memory now and (through the command) in the database.
    fn set_lock(&mut self, new_lock: guards::NewLock, now: VenueMoment) -> TraderCommand {
        let lock = GuardLock {
            id: 0,
            user: self.user.clone(),
            failure_point: new_lock.failure_point.as_str().to_owned(),
            symbol: new_lock.symbol,
            reason: new_lock.reason,
            values: new_lock.values,
            set_at_ms: now.wall_ms,
            until_ms: new_lock.until_ms,
            set_at_venue_ms: now.venue_ms,
            until_venue_ms: new_lock.until_venue_ms,
        };
        self.locks.push(lock.clone());
        TraderCommand::SetLock(lock)
    }

    /// The risk locks' inputs now (what must outlive this incarnation).
    pub fn risk_memory(&self) -> RiskMemory {
        RiskMemory {
            equity_peaks: self.equity.peaks(),
            slots: self
                .slots
                .iter()
                .map(|slot| SlotMemory {
                    symbol: slot.spec.symbol.clone(),
                    timeframe: slot.spec.timeframe.as_str().to_owned(),
                    strategy: slot.spec.strategy.name().to_owned(),
                    loss_streak: slot.loss_streak,
                    last_trade_pct: slot.last_trade_pct,
                })
                .collect(),
        }
    }

    /// Takes back the risk memory a previous incarnation stored: the equity peaks, and each slot's
    /// losing streak (matched by symbol, timeframe and strategy; a slot the config no longer has
    /// is forgotten, a new one starts at zero).
    pub fn restore_risk_memory(&mut self, memory: &RiskMemory) {
        self.equity.restore(&memory.equity_peaks);
        for slot in &mut self.slots {
            let stored = memory.slots.iter().find(|stored| {
                stored.symbol == slot.spec.symbol
                    && stored.timeframe == slot.spec.timeframe.as_str()
                    && stored.strategy == slot.spec.strategy.name()
            });
            if let Some(stored) = stored {
                slot.loss_streak = slot.loss_streak.max(stored.loss_streak);
                slot.last_trade_pct = slot.last_trade_pct.or(stored.last_trade_pct);
            }
        }
        self.saved_memory = Some(self.risk_memory());
    }

    /// Hands the risk memory out to be stored if it changed since it last was.
    fn save_risk_memory_if_changed(&mut self, commands: &mut Vec<TraderCommand>) {
        let memory = self.risk_memory();
        if self.saved_memory.as_ref() != Some(&memory) {
            self.saved_memory = Some(memory.clone());
            commands.push(TraderCommand::SaveRiskMemory(memory));
        }
    }

    /// Reloads what a previous incarnation left in the database.
    pub fn restore(&mut self, state: &TraderState) {
        self.last_intent_seq = self.last_intent_seq.max(state.last_intent_seq);
        if let Some(memory) = &state.risk_memory {
            self.restore_risk_memory(memory);
        }
        for slot in &mut self.slots {
            if let Some(record) = state.positions.iter().find(|p| p.symbol == slot.spec.symbol) {
                slot.known_position = Some(KnownPosition {
                    quantity: record.quantity,
                    entry_price: record.entry_price,
                    mark_price: Decimal::ZERO,
                    verified_at_ms: record.verified_at_ms,
                });
                slot.position_start_time_ms = record.position_start_time_ms;
                slot.active_order = record.active_order_id.clone();
            }
            if let Some(order) = state.unresolved_orders.iter().find(|o| o.intent.symbol == slot.spec.symbol) {
                slot.active_order = Some(order.intent.client_order_id.clone());
            }
        }
    }

    pub fn user(&self) -> &UserId {
        &self.user
    }

    pub fn last_intent_seq(&self) -> u64 {
        self.last_intent_seq
    }

    /// The (symbol, timeframe) feeds this user needs.
    pub fn feeds(&self) -> Vec<(Symbol, Timeframe)> {
        self.slots.iter().map(|s| (s.spec.symbol.clone(), s.spec.timeframe)).collect()
    }

    pub fn halted(&self) -> Option<&str> {
        self.halted.as_deref()
    }

    pub fn process(&mut self, event: TraderEvent, now_ms: i64) -> Vec<TraderCommand> {
        if self.halted.is_some() {
            return Vec::new();
        }
        match event {
            TraderEvent::CandleClosed { symbol, timeframe, candles } => {
                let matching: Vec<usize> = (0..self.slots.len())
                    .filter(|&i| self.slots[i].spec.symbol == symbol && self.slots[i].spec.timeframe == timeframe)
                    .collect();
                matching.into_iter().flat_map(|slot| self.on_candle(slot, candles.clone(), now_ms)).collect()
            }
            TraderEvent::AccountSynced { slot, iteration, result } => self.on_account(slot, iteration, result, now_ms),
            TraderEvent::PlacementFinished { slot, client_order_id, outcome } => {
                self.on_placement(slot, client_order_id, outcome, now_ms)
            }
            TraderEvent::IntelligenceUpdated { snapshot } => {
                self.intelligence.insert((snapshot.symbol.clone(), snapshot.timeframe), snapshot);
                Vec::new()
            }
        }
    }

    fn on_candle(
        &mut self,
        slot_index: usize,
        candles: Result<Arc<[Candle]>, String>,
        now_ms: i64,
    ) -> Vec<TraderCommand> {
        let candles = match candles {
            Ok(candles) => candles,
            Err(error) => return self.failed(slot_index, None, now_ms, format!("candles unavailable: {error}")),
        };
        let slot = &self.slots[slot_index];
        let Some(newest) = candles.last() else {
            return vec![self.skipped(slot_index, None, now_ms, "candles unavailable: empty window".to_owned())];
        };
        let candle_close_ms = newest.close_time_ms;
        if slot.last_candle_close_ms.is_some_and(|last| candle_close_ms <= last) {
            return Vec::new();
        }
        if !matches!(slot.phase, Phase::Idle) {
            let reason = format!("previous iteration still running ({})", slot.phase.describe());
            return vec![self.skipped(slot_index, Some(candle_close_ms), now_ms, reason)];
        }
        if let Err(problem) = validate_candles(&candles, slot.spec.timeframe) {
            let reason = format!("bad candles: {problem}");
            return self.failed_because(
                slot_index,
                Some(candle_close_ms),
                now_ms,
                reason,
                Some(DecisionCause::BadCandles),
            );
        }
        if slot.paused_candles > 0 {
            let slot = &mut self.slots[slot_index];
            slot.paused_candles -= 1;
            slot.last_candle_close_ms = Some(candle_close_ms);
            let reason = format!(
                "paused after {} failing iterations in a row ({} more candle(s) to sit out)",
                slot.error_streak, slot.paused_candles
            );
            return vec![self.skipped(slot_index, Some(candle_close_ms), now_ms, reason)];
        }
        let need = slot.spec.strategy.lookback_candles();
        if candles.len() < need {
            let reason =
                format!("not enough candles: have {}, {} needs {need}", candles.len(), slot.spec.strategy.name());
            return vec![self.skipped(slot_index, Some(candle_close_ms), now_ms, reason)];
        }
        self.universe.insert((slot.spec.symbol.clone(), slot.spec.timeframe), candles.clone());
        let holds_position = slot.known_position.as_ref().is_some_and(|p| !p.quantity.is_zero());
        if let (Some(why), false) = (&self.entries_wait, holds_position) {
            // Nothing to exit and entries wait: no account read is spent on it.
            let reason = format!("flat: {why}");
            self.slots[slot_index].last_candle_close_ms = Some(candle_close_ms);
            return vec![self.skipped(slot_index, Some(candle_close_ms), now_ms, reason)];
        }
        self.iteration += 1;
        let iteration = self.iteration;
        let slot = &mut self.slots[slot_index];
        slot.last_candle_close_ms = Some(candle_close_ms);
        slot.phase = Phase::Syncing { iteration, candles, candle_close_ms };
        vec![TraderCommand::SyncAccount { slot: slot_index, iteration, symbol: slot.spec.symbol.clone() }]
    }

    fn on_account(
        &mut self,
        slot_index: usize,
        iteration: u64,
        result: Result<AccountSnapshot, AccountError>,
        now_ms: i64,
    ) -> Vec<TraderCommand> {
        let Some(slot) = self.slots.get_mut(slot_index) else { return Vec::new() };
        let (candles, candle_close_ms) = match &slot.phase {
            Phase::Syncing { iteration: expected, candles, candle_close_ms } if *expected == iteration => {
                (candles.clone(), *candle_close_ms)
            }
            _ => return Vec::new(),
        };
        slot.phase = Phase::Idle;
        let snapshot = match result {
            Ok(snapshot) => snapshot,
            Err(error) if error.credentials_refused => return self.halt(slot_index, now_ms, error.detail),
            Err(error) => {
                return self.failed(
                    slot_index,
                    Some(candle_close_ms),
                    now_ms,
                    format!("position unavailable: {error}"),
                );
            }
        };
        let mut commands = Vec::new();
        match &snapshot.equity_usdt {
            Ok(equity) => {
                self.equity.record(snapshot.fetched_at_ms, *equity);
                self.equity_error = None;
            }
            Err(why) => self.equity_error = Some(why.clone()),
        }
        // The kill switch trips on the sync that sees the drawdown, position open or not (an entry
        // signal is not needed for it to start counting).
        let now = self.moment(now_ms, candle_close_ms);
        let kill_switch_holds =
            self.locks.iter().any(|l| l.failure_point == SIG_KILL_SWITCH.as_str() && l.holds_at_venue(now.venue_ms));
        if let (Some(settings), false) = (&self.guards, kill_switch_holds)
            && let Ok(view) = self.equity_view(now)
            && let Err(new_lock) = guards::drawdown(&view, now, settings)
        {
            let command = self.set_lock(*new_lock, now);
            commands.push(command);
        }
        let slot = &mut self.slots[slot_index];
        let quantity = snapshot.position.quantity;
        if let Some(previous) = slot.known_position.as_ref().filter(|p| !p.quantity.is_zero())
            && (quantity.is_zero() || quantity.is_sign_positive() != previous.quantity.is_sign_positive())
        {
            // The position closed since the last sync: judge the trade at the price its exit was
            // decided at (else, closed some other way, at the mark price now).
            let exit_price = slot.exit_reference_price.take().or_else(|| {
                Some(snapshot.position.mark_price)
                    .filter(|p| !p.is_zero())
                    .or_else(|| candles.last().and_then(|c| decimal_from_f64(c.close).ok()))
                    .and_then(|p| p.to_f64())
            });
            if let (Some(exit), Some(entry)) = (exit_price, previous.entry_price.to_f64())
                && entry > 0.0
            {
                let direction = if previous.quantity.is_sign_positive() { 1.0 } else { -1.0 };
                let pct = (exit / entry - 1.0) * 100.0 * direction;
                slot.loss_streak = if pct < 0.0 { slot.loss_streak + 1 } else { 0 };
                slot.last_trade_pct = Some(pct);
            }
        }
        // The new equity sample and any closed trade are the risk locks' inputs: stored now.
        self.save_risk_memory_if_changed(&mut commands);
        let slot = &mut self.slots[slot_index];
        if quantity.is_zero() {
            slot.position_start_time_ms = None;
        } else if slot.position_start_time_ms.is_none()
            || slot
                .known_position
                .as_ref()
                .is_some_and(|k| k.quantity.is_sign_positive() != quantity.is_sign_positive() || k.quantity.is_zero())
        {
            slot.position_start_time_ms = Some(now_ms);
        }
        slot.known_position = Some(KnownPosition {
            quantity,
            entry_price: snapshot.position.entry_price,
            mark_price: snapshot.position.mark_price,
            verified_at_ms: snapshot.fetched_at_ms,
        });
        slot.active_order = snapshot.unresolved.first().map(|o| o.client_order_id.clone());
        commands.push(TraderCommand::SavePosition(self.position_record(slot_index)));

        if let Some(order) = snapshot.unresolved.first() {
            let reason = format!("order {} is {}; no new order until it resolves", order.client_order_id, order.state);
            commands.push(self.skipped(slot_index, Some(candle_close_ms), now_ms, reason));
            return commands;
        }
        if now_ms - snapshot.fetched_at_ms > POSITION_VERIFIED_AGE_MS_MAX {
            let reason = format!(
                "position verified {} ms ago, older than {POSITION_VERIFIED_AGE_MS_MAX} ms",
                now_ms - snapshot.fetched_at_ms
            );
            commands.push(self.skipped(slot_index, Some(candle_close_ms), now_ms, reason));
            return commands;
        }
        let spec = self.slots[slot_index].spec.clone();
        let signal = match spec.strategy.evaluate(&candles) {
            Ok(signal) => signal,
            Err(error) => {
                commands.extend(self.failed_because(
                    slot_index,
                    Some(candle_close_ms),
                    now_ms,
                    format!("strategy error: {error}"),
                    Some(DecisionCause::StrategyError),
                ));
                return commands;
            }
        };
        // The iteration got as far as a signal: the slot's error streak is over.
        let slot = &mut self.slots[slot_index];
        (slot.error_streak, slot.pauses) = (0, 0);
        let position_side = snapshot.position.side();
        let template = DecisionRecord {
            user: self.user.clone(),
            symbol: spec.symbol.clone(),
            timeframe: spec.timeframe.as_str().to_owned(),
            strategy: spec.strategy.name().to_owned(),
            candle_close_ms: Some(candle_close_ms),
            decided_at_ms: now_ms,
            outcome: String::new(),
            reason: String::new(),
            signal: Some(signal.action.as_str().to_owned()),
            score: Some(signal.score),
            client_order_id: None,
            counts_as_decision: true,
            cause: None,
        };
        let decision = |outcome: &str, reason: String, client_order_id: Option<ClientOrderId>| {
            TraderCommand::Record(DecisionRecord {
                outcome: outcome.to_owned(),
                reason,
                client_order_id,
                ..template.clone()
            })
        };
        let wanted = match (signal.action, position_side) {
            (SignalAction::Long | SignalAction::Short, PositionSide::Flat) => Some(IntentPurpose::Entry),
            (SignalAction::Long, PositionSide::Short) | (SignalAction::Short, PositionSide::Long) => {
                Some(IntentPurpose::Exit)
            }
            (SignalAction::Exit, PositionSide::Long | PositionSide::Short) => Some(IntentPurpose::Exit),
            _ => None,
        };
        match wanted {
            None => {
                let held = match position_side {
                    PositionSide::Flat => "flat".to_owned(),
                    side => format!("{} {}", side.as_str(), quantity.abs()),
                };
                commands.push(decision("hold", format!("{held}; {}", signal.reason), None));
            }
            Some(IntentPurpose::Exit) => {
                let side = if quantity.is_sign_positive() { Side::Sell } else { Side::Buy };
                let exit_quantity =
                    crate::domain::Quantity::new(quantity.abs()).expect("Invariant: an exit has a position to close");
                let intent = self.new_intent(
                    slot_index,
                    side,
                    exit_quantity,
                    true,
                    IntentPurpose::Exit,
                    candle_close_ms,
                    now_ms,
                );
                let client_order_id = intent.client_order_id.clone();
                self.slots[slot_index].exit_reference_price = Some(snapshot.position.mark_price)
                    .filter(|p| !p.is_zero())
                    .and_then(|p| p.to_f64())
                    .or_else(|| candles.last().map(|c| c.close));
                let reason = format!("close {} {} ({})", position_side.as_str(), quantity.abs(), signal.reason);
                commands.push(decision("exit", reason, Some(client_order_id.clone())));
                self.slots[slot_index].phase = Phase::Placing { client_order_id };
                commands.push(TraderCommand::PlaceIntent { slot: slot_index, intent: risk::approve_exit(intent) });
            }
            Some(IntentPurpose::Entry) if snapshot.entries_halted.is_some() => {
                let halt = snapshot.entries_halted.as_ref().expect("Invariant: matched as set");
                commands.push(decision("blocked", format!("{}: {}", halt.failure_point, halt.reason), None));
            }
            Some(IntentPurpose::Entry) if self.entries_wait.is_some() => {
                let why = self.entries_wait.clone().expect("Invariant: matched as set");
                commands.push(decision("blocked", why, None));
            }
            Some(IntentPurpose::Entry) => {
                let side = if signal.action == SignalAction::Long { Side::Buy } else { Side::Sell };
                let price = if snapshot.position.mark_price > Decimal::ZERO {
                    Some(snapshot.position.mark_price)
                } else {
                    candles.last().and_then(|c| decimal_from_f64(c.close).ok())
                };
                let size = spec.position_size_usdt;
                let Some((price, quantity)) =
                    price.and_then(|p| snapshot.rules.quantity_floor(size / p).map(|q| (p, q)))
                else {
                    let reason = format!(
                        "size {size} USDT is less than one tradable step of {} (step {})",
                        spec.symbol, snapshot.rules.step_size
                    );
                    commands.push(decision("blocked", reason, None));
                    return commands;
                };
                let entry = EntrySignal {
                    symbol: spec.symbol.clone(),
                    strategy: spec.strategy.name().to_owned(),
                    side,
                    score: signal.score,
                };
                let now = self.moment(now_ms, candle_close_ms);
                let outcome = match &self.guards {
                    Some(settings) => self.run_guards(slot_index, &entry, &candles, settings, now),
                    // The guards are off: no new lock is set, but the locks already set still hold.
                    None => guards::evaluate_locks(&entry, &self.locks, candle_close_ms),
                };
                let guards_passed = match self.judge_guards(slot_index, outcome, now, &mut commands) {
                    Ok(passed) => passed,
                    Err(reason) => {
                        commands.push(decision("blocked", reason, None));
                        return commands;
                    }
                };
                let context = EntryContext {
                    open_positions_elsewhere: self.open_positions_elsewhere(slot_index),
                    held_notional_usdt: Decimal::ZERO,
                    added_notional_usdt: quantity.get() * price,
                };
                let intent =
                    self.new_intent(slot_index, side, quantity, false, IntentPurpose::Entry, candle_close_ms, now_ms);
                match risk::check_entry(intent, guards_passed, context, self.limits) {
                    Ok(approved) => {
                        let client_order_id = approved.get().client_order_id.clone();
                        let verb = if side == Side::Buy { "buy" } else { "sell" };
                        let reason = format!("{verb} {quantity} {} ({})", spec.symbol, signal.reason);
                        commands.push(decision("enter", reason, Some(client_order_id.clone())));
                        self.slots[slot_index].phase = Phase::Placing { client_order_id };
                        commands.push(TraderCommand::PlaceIntent { slot: slot_index, intent: approved });
                    }
                    Err(block) => {
                        // The sequence number was not used: give it back so ids stay dense.
                        self.last_intent_seq -= 1;
                        commands.push(decision("blocked", format!("{}: {}", block.failure_point, block.reason), None));
                    }
                }
            }
        }
        commands
    }

    /// Every signal guard on one entry signal.
    fn run_guards(
        &self,
        slot_index: usize,
        entry: &EntrySignal,
        candles: &[Candle],
        settings: &GuardSettings,
        now: VenueMoment,
    ) -> guards::GuardOutcome {
        let spec = &self.slots[slot_index].spec;
        let others: Vec<OtherSlot> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != slot_index)
            .map(|(_, other)| OtherSlot {
                strategy: other.spec.strategy.name().to_owned(),
                symbol: other.spec.symbol.clone(),
                position_quantity: other.known_position.as_ref().and_then(|p| p.quantity.to_f64()).unwrap_or(0.0),
                placing: other.active_order.is_some() || matches!(other.phase, Phase::Placing { .. }),
            })
            .collect();
        let slot = &self.slots[slot_index];
        // The symbols ranked against each other are the user's on this timeframe.
        let universe: BTreeMap<Symbol, Arc<[Candle]>> = self
            .universe
            .iter()
            .filter(|((_, timeframe), _)| *timeframe == spec.timeframe)
            .map(|((symbol, _), candles)| (symbol.clone(), candles.clone()))
            .collect();
        let context = SignalContext {
            now,
            candles,
            equity: self.equity_view(now),
            locks: &self.locks,
            loss_streak: slot.loss_streak,
            last_trade_pct: slot.last_trade_pct,
            other_slots: &others,
            universe: &universe,
            intelligence: self.intelligence.get(&(spec.symbol.clone(), spec.timeframe)).map(Arc::as_ref),
        };
        guards::evaluate(entry, &context, settings)
    }

    /// Records a signal's pass through the guards and stores the lock a block sets. The proof for
    /// the risk gate when nothing blocked; otherwise the `blocked` decision's reason.
    fn judge_guards(
        &mut self,
        slot_index: usize,
        outcome: guards::GuardOutcome,
        now: VenueMoment,
        commands: &mut Vec<TraderCommand>,
    ) -> Result<GuardsPassed, String> {
        let spec = &self.slots[slot_index].spec;
        let block = outcome.block.clone();
        commands.push(TraderCommand::RecordGuards(GuardDecisionRecord {
            user: self.user.clone(),
            symbol: spec.symbol.clone(),
            strategy: spec.strategy.name().to_owned(),
            decided_at_ms: now.wall_ms,
            verdict: if block.is_some() { "block" } else { "allow" }.to_owned(),
            failure_point: block.as_ref().map(|b| b.failure_point.as_str().to_owned()),
            reason: block.as_ref().map_or_else(|| "every guard allowed".to_owned(), |b| b.reason.clone()),
            values: outcome.values(),
            until_ms: block.as_ref().and_then(|b| b.until_ms),
        }));
        let Some(block) = block else {
            return Ok(outcome.passed().expect("Invariant: no block means every guard passed"));
        };
        if let Some(new_lock) = block.new_lock {
            if new_lock.failure_point == SIG_SYMBOL_PROBATION {
                // The probation serves the streak: once it expires the symbol starts afresh
                // (otherwise it could never trade again).
                let slot = &mut self.slots[slot_index];
                slot.loss_streak = 0;
                slot.last_trade_pct = None;
            }
            let command = self.set_lock(*new_lock, now);
            commands.push(command);
            self.save_risk_memory_if_changed(commands);
        }
        let until =
            block.until_ms.map(|until| format!(" (until {})", crate::clock::rfc3339_ms(until))).unwrap_or_default();
        Err(format!("{}: {}{until}", block.failure_point, block.reason))
    }

    fn on_placement(
        &mut self,
        slot_index: usize,
        client_order_id: ClientOrderId,
        outcome: PlacementOutcome,
        now_ms: i64,
    ) -> Vec<TraderCommand> {
        let Some(slot) = self.slots.get_mut(slot_index) else { return Vec::new() };
        if matches!(&slot.phase, Phase::Placing { client_order_id: placing } if *placing == client_order_id) {
            slot.phase = Phase::Idle;
        }
        let mut cause = None;
        let mut executed = None;
        let (outcome_name, reason) = match &outcome {
            PlacementOutcome::Recorded { state, detail } => {
                slot.active_order = (!state.is_final()).then(|| client_order_id.clone());
                match state {
                    OrderState::Rejected => ("order_rejected", format!("order {client_order_id} rejected: {detail}")),
                    OrderState::NotPlaced => ("order_failed", format!("order {client_order_id} not placed: {detail}")),
                    OrderState::Unknown => (
                        "order_unknown",
                        format!("order {client_order_id} outcome unknown, resolving by client id: {detail}"),
                    ),
                    _ => ("order_placed", format!("order {client_order_id} {state}: {detail}")),
                }
            }
            PlacementOutcome::NotCommitted { reason } => {
                slot.active_order = None;
                ("order_failed", format!("order {client_order_id} not committed, nothing sent: {reason}"))
            }
            PlacementOutcome::Unconfirmed { reason } => {
                slot.active_order = Some(client_order_id.clone());
                ("order_unknown", format!("order {client_order_id} unconfirmed, resolving by client id: {reason}"))
            }
            PlacementOutcome::CredentialsRefused { detail } => {
                let detail = detail.clone();
                slot.active_order = None;
                return self.halt(slot_index, now_ms, detail);
            }
            PlacementOutcome::Refused { code, detail } => {
                slot.active_order = None;
                cause = (*code == MARGIN_REFUSED_CODE).then_some(DecisionCause::MarginRefused);
                ("order_rejected", format!("order {client_order_id} rejected: {detail}"))
            }
            PlacementOutcome::Executed { detail, signed_quantity, average_price } => {
                slot.active_order = None;
                executed = Some((*signed_quantity, *average_price));
                ("order_placed", format!("order {client_order_id} filled: {detail}"))
            }
        };
        let record = DecisionRecord {
            user: self.user.clone(),
            symbol: slot.spec.symbol.clone(),
            timeframe: slot.spec.timeframe.as_str().to_owned(),
            strategy: slot.spec.strategy.name().to_owned(),
            candle_close_ms: slot.last_candle_close_ms,
            decided_at_ms: now_ms,
            outcome: outcome_name.to_owned(),
            reason,
            signal: None,
            score: None,
            client_order_id: Some(client_order_id),
            counts_as_decision: false,
            cause,
        };
        let position = match executed {
            Some((signed_quantity, price)) => self.position_record_after(slot_index, signed_quantity, price, now_ms),
            None => self.position_record(slot_index),
        };
        vec![TraderCommand::Record(record), TraderCommand::SavePosition(position)]
    }

    /// Stops all trading of this account: the exchange refuses its credentials.
    fn halt(&mut self, slot_index: usize, now_ms: i64, detail: String) -> Vec<TraderCommand> {
        let reason = halt_reason(&detail);
        self.halted = Some(reason.clone());
        for slot in &mut self.slots {
            slot.phase = Phase::Idle;
        }
        vec![self.skipped(slot_index, None, now_ms, format!("halted: {reason}")), TraderCommand::Halt { reason }]
    }

    #[allow(clippy::too_many_arguments)]
    fn new_intent(
        &mut self,
        slot_index: usize,
        side: Side,
        quantity: crate::domain::Quantity,
        reduce_only: bool,
        purpose: IntentPurpose,
        candle_close_ms: i64,
        now_ms: i64,
    ) -> OrderIntent {
        self.last_intent_seq += 1;
        let spec = &self.slots[slot_index].spec;
        OrderIntent {
            user: self.user.clone(),
            intent_seq: self.last_intent_seq,
            client_order_id: ClientOrderId::for_intent(&self.user, self.last_intent_seq),
            symbol: spec.symbol.clone(),
            side,
            order_type: OrderType::Market,
            quantity,
            reduce_only,
            purpose,
            strategy: spec.strategy.name().to_owned(),
            decision_candle_close_ms: candle_close_ms,
            created_at_ms: now_ms,
        }
    }

    /// Other symbols that hold a position or may be about to: a verified position, an order not
    /// yet final (an entry placed but not filled counts), or a placement under way. Counting the
    /// last two is what keeps two slots deciding on the same candle from both entering.
    fn open_positions_elsewhere(&self, slot_index: usize) -> u32 {
        self.slots
            .iter()
            .enumerate()
            .filter(|(i, slot)| {
                *i != slot_index
                    && (slot.known_position.as_ref().is_some_and(|p| !p.quantity.is_zero())
                        || slot.active_order.is_some()
                        || matches!(slot.phase, Phase::Placing { .. }))
            })
            .count() as u32
    }

    fn position_record(&self, slot_index: usize) -> PositionRecord {
        let slot = &self.slots[slot_index];
        let known = slot.known_position.clone();
        PositionRecord {
            user: self.user.clone(),
            symbol: slot.spec.symbol.clone(),
            quantity: known.as_ref().map_or(Decimal::ZERO, |k| k.quantity),
            entry_price: known.as_ref().map_or(Decimal::ZERO, |k| k.entry_price),
            position_start_time_ms: slot.position_start_time_ms,
            active_order_id: slot.active_order.clone(),
            verified_at_ms: known.as_ref().map_or(0, |k| k.verified_at_ms),
        }
    }

    /// The stored position once an execution of `signed_quantity` at `price` is booked on the last
    /// verified one: the row follows the fill at once (a market order executes with its placement,
    /// and the database must not hold the old position until the next sync), while the slot's own
    /// view, and the trade's judgement, wait for that sync as before. `verified_at_ms` stays the
    /// last sync's: the row is that verified position plus this trader's own fill.
    fn position_record_after(
        &self,
        slot_index: usize,
        signed_quantity: Decimal,
        price: Decimal,
        now_ms: i64,
    ) -> PositionRecord {
        let before = self.position_record(slot_index);
        let (quantity, entry_price, _) =
            crate::domain::net_position_after_fill(before.quantity, before.entry_price, signed_quantity, price);
        let opened = before.quantity.is_zero() || before.quantity.is_sign_positive() != quantity.is_sign_positive();
        let position_start_time_ms = if quantity.is_zero() {
            None
        } else if opened {
            Some(now_ms)
        } else {
            before.position_start_time_ms
        };
        PositionRecord { quantity, entry_price, position_start_time_ms, ..before }
    }

    /// An iteration that failed (candles, position, strategy): recorded as skipped, and counted.
    /// After [`ERROR_STREAK_ALERT`] in a row the operator is told once; after
    /// [`ERROR_STREAK_PAUSE`] the slot sits out candles (1, 2, 4, ... up to
    /// [`ERROR_PAUSE_CANDLES_MAX`]) before it asks the exchange again.
    fn failed(
        &mut self,
        slot_index: usize,
        candle_close_ms: Option<i64>,
        now_ms: i64,
        reason: String,
    ) -> Vec<TraderCommand> {
        self.failed_because(slot_index, candle_close_ms, now_ms, reason, None)
    }

    /// [`Self::failed`], with what the Monitor counts the skip as.
    fn failed_because(
        &mut self,
        slot_index: usize,
        candle_close_ms: Option<i64>,
        now_ms: i64,
        reason: String,
        cause: Option<DecisionCause>,
    ) -> Vec<TraderCommand> {
        let mut skipped = self.skipped(slot_index, candle_close_ms, now_ms, reason.clone());
        if let TraderCommand::Record(record) = &mut skipped {
            record.cause = cause;
        }
        let mut commands = vec![skipped];
        let user = self.user.clone();
        let slot = &mut self.slots[slot_index];
        slot.error_streak += 1;
        if slot.error_streak == ERROR_STREAK_ALERT {
            commands.push(TraderCommand::Alert {
                key: format!("iteration-errors:{user}:{}", slot.spec.symbol),
                text: format!(
                    "{user} {} {} ({}, position size {} USDT): {} iterations in a row failed; last: {reason}",
                    slot.spec.symbol,
                    slot.spec.timeframe,
                    slot.spec.strategy.name(),
                    slot.spec.position_size_usdt,
                    slot.error_streak
                ),
            });
        }
        // A slot that holds a position never sits out: its exit must stay possible.
        let holding = slot.known_position.as_ref().is_some_and(|p| !p.quantity.is_zero());
        if slot.error_streak >= ERROR_STREAK_PAUSE && slot.paused_candles == 0 && !holding {
            slot.paused_candles = (1_u32 << slot.pauses.min(16)).min(ERROR_PAUSE_CANDLES_MAX);
            slot.pauses += 1;
        }
        commands
    }

    fn skipped(&self, slot_index: usize, candle_close_ms: Option<i64>, now_ms: i64, reason: String) -> TraderCommand {
        let spec = &self.slots[slot_index].spec;
        TraderCommand::Record(DecisionRecord {
            user: self.user.clone(),
            symbol: spec.symbol.clone(),
            timeframe: spec.timeframe.as_str().to_owned(),
            strategy: spec.strategy.name().to_owned(),
            candle_close_ms,
            decided_at_ms: now_ms,
            outcome: "skipped".to_owned(),
            reason,
            signal: None,
            score: None,
            client_order_id: None,
            counts_as_decision: false,
            cause: None,
        })
    }

    /// A one-line summary per slot, for logs and the tree snapshot.
    pub fn describe_positions(&self) -> Vec<String> {
        self.slots
            .iter()
            .map(|slot| match &slot.known_position {
                Some(p) if !p.quantity.is_zero() => {
                    format!("{} {} @ {}", slot.spec.symbol, p.quantity, p.entry_price.round_dp(6))
                }
                _ => format!("{} flat", slot.spec.symbol),
            })
            .collect()
    }

    /// Position notional per slot for reporting (mark price as last verified).
    pub fn exposure_usdt(&self) -> f64 {
        self.slots
            .iter()
            .filter_map(|s| s.known_position.as_ref())
            .map(|p| (p.quantity * p.mark_price).abs().to_f64().unwrap_or(0.0))
            .sum()
    }
}

/// The kill switch's look-back on the wall clock (equity samples are wall-clock readings):
/// `drawdown_lookback_hours` of venue time at the venue's pace.
fn equity_lookback_ms(settings: &GuardSettings, pace: VenuePace) -> i64 {
    pace.wall_ms_for((settings.drawdown_lookback_hours * 3_600_000.0) as i64)
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
