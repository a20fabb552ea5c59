//! The signal guards (the SignalBus): every entry signal passes through [`GUARD_ORDER`], each guard
//! a pure function of the signal and a [`SignalContext`] that allows or blocks with its failure
//! point id, a reason, the values that decided it and, where the block ends by itself, an expiry.
//! The first block wins; the guards before it are recorded as allows. Exits and cancels never come
//! here: a guard must never keep a position from being closed.
//!
//! Thresholds (every one is a `[guards]` key; defaults in [`GuardSettings::default`]):
//!
//! | guard | blocks an entry when |
//! |---|---|
//! | SIG-KILL-SWITCH | a kill switch holds, or equity (wallet + unrealized) fell `max_drawdown_pct` (5) % below its peak over `drawdown_lookback_hours` (24): a lock for `block_hours` (12) is set; equity that cannot be read blocks too (fails closed) |
//! | SIG-SYMBOL-PROBATION | a probation holds on the symbol; set for `probation_hours` (6) after `probation_losses` (3) losing trades in a row on it, or one trade losing `probation_loss_pct` (3) % |
//! | SIG-STRATEGY-OVERLAP | another strategy of the user holds, or is placing, a position on the same symbol |
//! | SIG-GOLDEN-HOUR | the venue's time (the decided candle's close) is outside every `trading_hours_utc` window (`"HH:MM-HH:MM"`; none configured: always open) |
//! | SIG-REGIME | the standard deviation of the last `regime_candles` (20) log returns is below `regime_volatility_min_pct` (0) or above `regime_volatility_max_pct` (5) % |
//! | SIG-FEE-AWARE | the expected move (average true range of `fee_atr_candles` (14), % of price) is below round-trip taker fees × `fee_multiple` (2) |
//! | SIG-ALPHA-FLOOR | the signal's score is below `min_signal_score` (0.05) |
//! | SIG-POWER-RANKING | the symbol is not in the top `power_rank_top_k` (5) of the user's symbols by \|return\| × volume ratio over `power_rank_candles` (12) |
//! | SIG-WHALE-CVD | over `intel_window` (12) intervals, the net taker flow of large intervals (notional ≥ `whale_volume_multiple` (2) × the median) runs against the signal by more than `whale_cvd_share_max` (0.3) of their volume |
//! | SIG-TAKER-AGGRESSION | taker buy/sell volume over `taker_window` (6) intervals is below `taker_ratio_long_min` (0.8) for a long, above `taker_ratio_short_max` (1.25) for a short |
//! | SIG-LIQUIDATION-WALL | an estimated liquidation cluster (positions opened on the high-volume candles of the window at `liquidation_leverage` (50)×) of at least `liquidation_wall_share` (0.25) of the window's volume sits within `liquidation_wall_distance_pct` (0.5) % against the trade |
//! | SIG-TRAP | the last candle broke the `trap_lookback` (20)-candle high (long) or low (short) on volume below `trap_volume_ratio_max` (0.8) × the mean and closed with a wick of at least `trap_wick_share_min` (0.5) of its range back against the breakout |
//!
//! Whale CVD and taker aggression need intelligence (CoinGlass, or the same series derived from
//! the market on paper); when it is missing or stale they allow and say so, and SYS-INTEL-API
//! reports the staleness: a failing data vendor does not stop trading.

// A verdict is made once per guard per signal; the size of its `Err` side does not matter.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Value, json};

use crate::clock::VenueMoment;
use crate::domain::{Candle, Side, Symbol};
use crate::failure_points::catalog::{
    FailurePointId, SIG_ALPHA_FLOOR, SIG_FEE_AWARE, SIG_GOLDEN_HOUR, SIG_KILL_SWITCH, SIG_LIQUIDATION_WALL,
    SIG_POWER_RANKING, SIG_REGIME, SIG_STRATEGY_OVERLAP, SIG_SYMBOL_PROBATION, SIG_TAKER_AGGRESSION, SIG_TRAP,
    SIG_WHALE_CVD,
};
use crate::failure_points::locks::GuardLock;
use crate::intelligence::{IntelSnapshot, WhaleSource};

pub mod equity;

/// The order every signal goes through.
pub const GUARD_ORDER: [FailurePointId; 12] = [
    SIG_KILL_SWITCH,
    SIG_SYMBOL_PROBATION,
    SIG_STRATEGY_OVERLAP,
    SIG_GOLDEN_HOUR,
    SIG_REGIME,
    SIG_FEE_AWARE,
    SIG_ALPHA_FLOOR,
    SIG_POWER_RANKING,
    SIG_WHALE_CVD,
    SIG_TAKER_AGGRESSION,
    SIG_LIQUIDATION_WALL,
    SIG_TRAP,
];

/// A trading-hours window in minutes of the UTC day, `[start, end)`; `end` may be 1440.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoursWindow {
    pub start_minute: u32,
    pub end_minute: u32,
}

impl HoursWindow {
    /// Parses `"HH:MM-HH:MM"` (end `24:00` allowed; a window may wrap midnight: `22:00-02:00`).
    pub fn parse(text: &str) -> Result<Self, String> {
        use crate::limits::excerpt;
        let minutes = |part: &str| -> Result<u32, String> {
            let shown = excerpt(part);
            let (h, m) = part.trim().split_once(':').ok_or_else(|| format!("{shown:?} is not HH:MM"))?;
            let (h, m): (u32, u32) = (
                h.parse().map_err(|_| format!("{shown:?}: bad hour"))?,
                m.parse().map_err(|_| format!("{shown:?}: bad minute"))?,
            );
            if m >= 60 || h > 24 || (h == 24 && m != 0) {
                return Err(format!("{shown:?} is not a time of day"));
            }
            Ok(h * 60 + m)
        };
        let (start, end) = text.split_once('-').ok_or_else(|| format!("{:?} is not HH:MM-HH:MM", excerpt(text)))?;
        let window = Self { start_minute: minutes(start)?, end_minute: minutes(end)? };
        if window.start_minute == window.end_minute {
            return Err(format!("{:?} is empty", excerpt(text)));
        }
        Ok(window)
    }

    fn contains(self, minute: u32) -> bool {
        if self.start_minute < self.end_minute {
            (self.start_minute..self.end_minute).contains(&minute)
        } else {
            minute >= self.start_minute || minute < self.end_minute
        }
    }
}

/// `[guards]`. Every duration (`*_hours`, `intel_age_ms_max`) is venue time: a 6 h probation is 72
/// five-minute candles whether the venue is Binance or the accelerated paper exchange
/// (`clock::VenuePace` turns it into wall time for records and operators).
#[derive(Debug, Clone, PartialEq)]
pub struct GuardSettings {
    pub max_drawdown_pct: f64,
    pub drawdown_lookback_hours: f64,
    pub block_hours: f64,
    pub probation_losses: u32,
    pub probation_loss_pct: f64,
    pub probation_hours: f64,
    pub trading_hours_utc: Vec<HoursWindow>,
    pub regime_candles: usize,
    pub regime_volatility_min_pct: f64,
    pub regime_volatility_max_pct: f64,
    pub fee_atr_candles: usize,
    pub fee_multiple: f64,
    /// Taker fee per fill, in basis points (the venue's).
    pub taker_fee_bps: f64,
    pub min_signal_score: f64,
    pub power_rank_top_k: usize,
    pub power_rank_candles: usize,
    pub intel_window: usize,
    pub intel_age_ms_max: i64,
    pub whale_volume_multiple: f64,
    pub whale_cvd_share_max: f64,
    pub taker_window: usize,
    pub taker_ratio_long_min: f64,
    pub taker_ratio_short_max: f64,
    pub liquidation_leverage: f64,
    pub liquidation_wall_distance_pct: f64,
    pub liquidation_wall_share: f64,
    pub trap_lookback: usize,
    pub trap_volume_ratio_max: f64,
    pub trap_wick_share_min: f64,
}

impl Default for GuardSettings {
    fn default() -> Self {
        Self {
            max_drawdown_pct: 5.0,
            drawdown_lookback_hours: 24.0,
            block_hours: 12.0,
            probation_losses: 3,
            probation_loss_pct: 3.0,
            probation_hours: 6.0,
            trading_hours_utc: Vec::new(),
            regime_candles: 20,
            regime_volatility_min_pct: 0.0,
            regime_volatility_max_pct: 5.0,
            fee_atr_candles: 14,
            fee_multiple: 2.0,
            taker_fee_bps: 4.0,
            min_signal_score: 0.05,
            power_rank_top_k: 5,
            power_rank_candles: 12,
            intel_window: 12,
            intel_age_ms_max: 15 * 60_000,
            whale_volume_multiple: 2.0,
            whale_cvd_share_max: 0.3,
            taker_window: 6,
            taker_ratio_long_min: 0.8,
            taker_ratio_short_max: 1.25,
            liquidation_leverage: 50.0,
            liquidation_wall_distance_pct: 0.5,
            liquidation_wall_share: 0.25,
            trap_lookback: 20,
            trap_volume_ratio_max: 0.8,
            trap_wick_share_min: 0.5,
        }
    }
}

/// The entry a strategy asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct EntrySignal {
    pub symbol: Symbol,
    pub strategy: String,
    pub side: Side,
    pub score: f64,
}

/// Another strategy slot of the same user.
#[derive(Debug, Clone, PartialEq)]
pub struct OtherSlot {
    pub strategy: String,
    pub symbol: Symbol,
    /// Signed quantity held (0: flat).
    pub position_quantity: f64,
    /// An order of that slot is being placed or is unresolved.
    pub placing: bool,
}

/// Equity as the kill switch sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EquityView {
    pub current_usdt: f64,
    pub peak_usdt: f64,
    pub peak_at_ms: i64,
}

/// Everything the guards look at for one signal.
#[derive(Debug, Clone)]
pub struct SignalContext<'a> {
    /// The decision's moment: `venue_ms` is the close of the candle decided on (locks, trading
    /// hours and intelligence age are judged by it), `wall_ms` when the decision was made.
    pub now: VenueMoment,
    /// The slot's closed candles, oldest first.
    pub candles: &'a [Candle],
    /// `Err`: why equity could not be computed (the kill switch then blocks).
    pub equity: Result<EquityView, String>,
    /// The user's uncleared locks.
    pub locks: &'a [GuardLock],
    /// Losing trades in a row on this symbol, and the newest trade's result in % (if any).
    pub loss_streak: u32,
    pub last_trade_pct: Option<f64>,
    pub other_slots: &'a [OtherSlot],
    /// The newest candle windows of every symbol the user trades (for the power ranking).
    pub universe: &'a BTreeMap<Symbol, std::sync::Arc<[Candle]>>,
    pub intelligence: Option<&'a IntelSnapshot>,
}

/// A guard's answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GuardBlock {
    pub failure_point: FailurePointId,
    pub reason: String,
    pub values: Value,
    /// When it ends by itself, if it does.
    pub until_ms: Option<i64>,
    /// A lock to store (kill switch or probation newly set).
    #[serde(skip)]
    pub new_lock: Option<Box<NewLock>>,
}

/// A lock a guard sets: stored as a [`GuardLock`] row.
#[derive(Debug, Clone, PartialEq)]
pub struct NewLock {
    pub failure_point: FailurePointId,
    pub symbol: Option<Symbol>,
    pub reason: String,
    pub values: Value,
    /// When it ends, on the wall clock and on the venue's (see `failure_points::locks`).
    pub until_ms: i64,
    pub until_venue_ms: i64,
}

/// What one guard decided.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GuardStep {
    pub guard: FailurePointId,
    pub allowed: bool,
    pub values: Value,
}

/// Proof that an entry signal passed every guard, or (with `[guards] enabled = false`) at least
/// every risk lock. The field is private: only [`evaluate`] and [`evaluate_locks`] make one, and
/// the risk gate (`trader::risk::check_entry`) takes one, so no entry reaches the router unguarded
/// and none reaches it while a kill switch or probation holds, whatever the configuration says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardsPassed(());

/// The pass of one signal through the guards.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardOutcome {
    /// Every guard that ran, in order (the last one blocked, if any did).
    pub steps: Vec<GuardStep>,
    pub block: Option<GuardBlock>,
}

impl GuardOutcome {
    /// The proof for the risk gate, when no guard blocked.
    pub fn passed(&self) -> Option<GuardsPassed> {
        self.block.is_none().then_some(GuardsPassed(()))
    }
}

impl GuardOutcome {
    /// The values of every guard that ran, by id (for the decision record).
    pub fn values(&self) -> Value {
        Value::Object(self.steps.iter().map(|s| (s.guard.as_str().to_owned(), s.values.clone())).collect())
    }
}

type Verdict = Result<Value, GuardBlock>;

fn block(failure_point: FailurePointId, reason: String, values: Value) -> Verdict {
    Err(GuardBlock { failure_point, reason, values, until_ms: None, new_lock: None })
}

/// Runs the guards in order and stops at the first block.
pub fn evaluate(signal: &EntrySignal, context: &SignalContext<'_>, settings: &GuardSettings) -> GuardOutcome {
    let mut steps = Vec::new();
    for guard in GUARD_ORDER {
        let verdict = run_guard(guard, signal, context, settings);
        match verdict {
            Ok(values) => steps.push(GuardStep { guard, allowed: true, values }),
            Err(block) => {
                steps.push(GuardStep { guard, allowed: false, values: block.values.clone() });
                return GuardOutcome { steps, block: Some(block) };
            }
        }
    }
    GuardOutcome { steps, block: None }
}

/// With `[guards] enabled = false`: only the risk locks already set (kill switches, probations)
/// are judged. Turning the guards off stops new locks from being set; it never lifts one that
/// holds: a lock ends only at its expiry or by the audited admin clear.
pub fn evaluate_locks(signal: &EntrySignal, locks: &[GuardLock], candle_close_ms: i64) -> GuardOutcome {
    let mut steps = Vec::new();
    for (guard, holding) in [
        (SIG_KILL_SWITCH, holding_kill_switch(locks, candle_close_ms)),
        (SIG_SYMBOL_PROBATION, holding_probation(signal, locks, candle_close_ms)),
    ] {
        match holding {
            None => steps.push(GuardStep { guard, allowed: true, values: json!({ "lock": null }) }),
            Some(block) => {
                steps.push(GuardStep { guard, allowed: false, values: block.values.clone() });
                return GuardOutcome { steps, block: Some(block) };
            }
        }
    }
    GuardOutcome { steps, block: None }
}

fn run_guard(
    guard: FailurePointId,
    signal: &EntrySignal,
    context: &SignalContext<'_>,
    settings: &GuardSettings,
) -> Verdict {
    match guard {
        SIG_KILL_SWITCH => kill_switch(context, settings),
        SIG_SYMBOL_PROBATION => probation(signal, context, settings),
        SIG_STRATEGY_OVERLAP => overlap(signal, context),
        SIG_GOLDEN_HOUR => golden_hour(context, settings),
        SIG_REGIME => regime(context, settings),
        SIG_FEE_AWARE => fee_aware(context, settings),
        SIG_ALPHA_FLOOR => alpha_floor(signal, settings),
        SIG_POWER_RANKING => power_ranking(signal, context, settings),
        SIG_WHALE_CVD => whale_cvd(signal, context, settings),
        SIG_TAKER_AGGRESSION => taker_aggression(signal, context, settings),
        SIG_LIQUIDATION_WALL => liquidation_wall(signal, context, settings),
        SIG_TRAP => trap(signal, context, settings),
        other => unreachable!("{other} is not a guard"),
    }
}

fn hours_ms(hours: f64) -> i64 {
    (hours * 3_600_000.0) as i64
}

fn round(value: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (value * scale).round() / scale
}

/// The kill switch lock holding on the candle closing at venue time `candle_close_ms` (the one
/// lasting longest), as a block.
fn holding_kill_switch(locks: &[GuardLock], candle_close_ms: i64) -> Option<GuardBlock> {
    let lock = locks
        .iter()
        .filter(|l| {
            l.failure_point == SIG_KILL_SWITCH.as_str() && l.symbol.is_none() && l.holds_at_venue(candle_close_ms)
        })
        .max_by_key(|l| l.until_venue_ms)?;
    Some(GuardBlock {
        failure_point: SIG_KILL_SWITCH,
        reason: format!("kill switch holds: {}", lock.reason),
        values: json!({ "lock_id": lock.id, "blocked_until_ms": lock.until_ms, "blocked_until_venue_ms": lock.until_venue_ms }),
        until_ms: Some(lock.until_ms),
        new_lock: None,
    })
}

/// The probation holding on the signal's symbol on the candle closing at venue time
/// `candle_close_ms` (the one lasting longest), as a block.
fn holding_probation(signal: &EntrySignal, locks: &[GuardLock], candle_close_ms: i64) -> Option<GuardBlock> {
    let lock = locks
        .iter()
        .filter(|l| l.failure_point == SIG_SYMBOL_PROBATION.as_str() && l.holds_at_venue(candle_close_ms))
        .filter(|l| l.symbol.as_ref() == Some(&signal.symbol))
        .max_by_key(|l| l.until_venue_ms)?;
    Some(GuardBlock {
        failure_point: SIG_SYMBOL_PROBATION,
        reason: format!("{} is on probation: {}", signal.symbol, lock.reason),
        values: json!({ "lock_id": lock.id, "until_ms": lock.until_ms, "until_venue_ms": lock.until_venue_ms }),
        until_ms: Some(lock.until_ms),
        new_lock: None,
    })
}

fn kill_switch(context: &SignalContext<'_>, settings: &GuardSettings) -> Verdict {
    if let Some(block) = holding_kill_switch(context.locks, context.now.venue_ms) {
        return Err(block);
    }
    let equity = match &context.equity {
        Ok(equity) => *equity,
        Err(why) => {
            return block(
                SIG_KILL_SWITCH,
                format!("equity cannot be computed ({why}): the kill switch fails closed"),
                json!({ "equity": null }),
            );
        }
    };
    match drawdown(&equity, context.now, settings) {
        Ok(values) => Ok(values),
        Err(new_lock) => Err(GuardBlock {
            failure_point: SIG_KILL_SWITCH,
            reason: new_lock.reason.clone(),
            values: new_lock.values.clone(),
            until_ms: Some(new_lock.until_ms),
            new_lock: Some(new_lock),
        }),
    }
}

/// The kill switch's arithmetic: the deciding values, or the lock to set when equity is
/// `max_drawdown_pct` or more below its peak. The trader runs it on every account sync (so the
/// switch trips while a position is open, not only on the next entry) and the guard on every entry.
/// The lock lasts `block_hours` of venue time from `now`.
pub fn drawdown(equity: &EquityView, now: VenueMoment, settings: &GuardSettings) -> Result<Value, Box<NewLock>> {
    let drawdown_pct =
        if equity.peak_usdt > 0.0 { (equity.peak_usdt - equity.current_usdt) / equity.peak_usdt * 100.0 } else { 0.0 };
    let values = json!({
        "equity_usdt": round(equity.current_usdt, 2),
        "peak_usdt": round(equity.peak_usdt, 2),
        "drawdown_pct": round(drawdown_pct, 3),
        "max_drawdown_pct": settings.max_drawdown_pct,
    });
    if drawdown_pct >= settings.max_drawdown_pct {
        let (until_ms, until_venue_ms) = now.after(hours_ms(settings.block_hours));
        let reason = format!(
            "equity {:.2} USDT is {:.2} % below its peak {:.2} (max_drawdown_pct {}); entries blocked for {} h",
            equity.current_usdt, drawdown_pct, equity.peak_usdt, settings.max_drawdown_pct, settings.block_hours
        );
        return Err(Box::new(NewLock {
            failure_point: SIG_KILL_SWITCH,
            symbol: None,
            reason,
            values,
            until_ms,
            until_venue_ms,
        }));
    }
    Ok(values)
}

fn probation(signal: &EntrySignal, context: &SignalContext<'_>, settings: &GuardSettings) -> Verdict {
    if let Some(block) = holding_probation(signal, context.locks, context.now.venue_ms) {
        return Err(block);
    }
    let values = json!({
        "loss_streak": context.loss_streak,
        "probation_losses": settings.probation_losses,
        "last_trade_pct": context.last_trade_pct.map(|p| round(p, 3)),
        "probation_loss_pct": settings.probation_loss_pct,
    });
    let big_loss = context.last_trade_pct.is_some_and(|pct| -pct >= settings.probation_loss_pct);
    if context.loss_streak >= settings.probation_losses || big_loss {
        let (until_ms, until_venue_ms) = context.now.after(hours_ms(settings.probation_hours));
        let reason = if big_loss {
            format!(
                "the last trade on {} lost {:.2} % (probation_loss_pct {}); on probation for {} h",
                signal.symbol,
                -context.last_trade_pct.unwrap_or_default(),
                settings.probation_loss_pct,
                settings.probation_hours
            )
        } else {
            format!(
                "{} losing trades in a row on {} (probation_losses {}); on probation for {} h",
                context.loss_streak, signal.symbol, settings.probation_losses, settings.probation_hours
            )
        };
        return Err(GuardBlock {
            failure_point: SIG_SYMBOL_PROBATION,
            reason: reason.clone(),
            values: values.clone(),
            until_ms: Some(until_ms),
            new_lock: Some(Box::new(NewLock {
                failure_point: SIG_SYMBOL_PROBATION,
                symbol: Some(signal.symbol.clone()),
                reason,
                values,
                until_ms,
                until_venue_ms,
            })),
        });
    }
    Ok(values)
}

fn overlap(signal: &EntrySignal, context: &SignalContext<'_>) -> Verdict {
    let busy: Vec<&OtherSlot> = context
        .other_slots
        .iter()
        .filter(|s| s.symbol == signal.symbol && (s.position_quantity != 0.0 || s.placing))
        .collect();
    if let Some(other) = busy.first() {
        let what =
            if other.placing { "is placing an order".to_owned() } else { format!("holds {}", other.position_quantity) };
        return block(
            SIG_STRATEGY_OVERLAP,
            format!("{} on {} {what}; one position per symbol per user", other.strategy, signal.symbol),
            json!({ "other_strategy": other.strategy, "other_quantity": other.position_quantity, "other_placing": other.placing }),
        );
    }
    Ok(json!({ "other_strategies_on_symbol": 0 }))
}

fn golden_hour(context: &SignalContext<'_>, settings: &GuardSettings) -> Verdict {
    if settings.trading_hours_utc.is_empty() {
        return Ok(json!({ "trading_hours_utc": "always" }));
    }
    // The venue's time of day: on the accelerated paper exchange, the candles' (market) time.
    let day_ms = 86_400_000;
    let venue_ms = context.now.venue_ms;
    let minute = (venue_ms.rem_euclid(day_ms) / 60_000) as u32;
    if settings.trading_hours_utc.iter().any(|w| w.contains(minute)) {
        return Ok(json!({ "minute_of_day_utc": minute }));
    }
    // The next window start after now.
    let wait_minutes =
        settings.trading_hours_utc.iter().map(|w| (w.start_minute + 1_440 - minute) % 1_440).min().unwrap_or(0);
    let until_venue_ms = (venue_ms.div_euclid(60_000) + i64::from(wait_minutes)) * 60_000;
    let (until_ms, _) = context.now.after(until_venue_ms - venue_ms);
    Err(GuardBlock {
        failure_point: SIG_GOLDEN_HOUR,
        reason: format!("{:02}:{:02} UTC is outside the trading hours", minute / 60, minute % 60),
        values: json!({ "minute_of_day_utc": minute }),
        until_ms: Some(until_ms),
        new_lock: None,
    })
}

/// Standard deviation of the last `n` log returns, in percent.
pub fn volatility_pct(candles: &[Candle], n: usize) -> Option<f64> {
    if candles.len() < n + 1 || n < 2 {
        return None;
    }
    let closes: Vec<f64> = candles[candles.len() - n - 1..].iter().map(|c| c.close).collect();
    let returns: Vec<f64> = closes.windows(2).map(|w| (w[1] / w[0]).ln()).collect();
    let mean = returns.iter().sum::<f64>() / returns.len() as f64;
    let variance = returns.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (returns.len() - 1) as f64;
    Some(variance.sqrt() * 100.0)
}

fn regime(context: &SignalContext<'_>, settings: &GuardSettings) -> Verdict {
    let Some(volatility) = volatility_pct(context.candles, settings.regime_candles) else {
        return block(
            SIG_REGIME,
            format!("fewer than {} candles: the regime cannot be judged", settings.regime_candles + 1),
            json!({ "candles": context.candles.len() }),
        );
    };
    let values = json!({
        "volatility_pct": round(volatility, 4),
        "min_pct": settings.regime_volatility_min_pct,
        "max_pct": settings.regime_volatility_max_pct,
    });
    if volatility < settings.regime_volatility_min_pct {
        return block(
            SIG_REGIME,
            format!("volatility {volatility:.4} % is below the regime floor (dead market)"),
            values,
        );
    }
    if volatility > settings.regime_volatility_max_pct {
        return block(
            SIG_REGIME,
            format!("volatility {volatility:.4} % is above the regime ceiling (chaotic market)"),
            values,
        );
    }
    Ok(values)
}

/// Average true range of the last `n` candles, in percent of the last close.
pub fn atr_pct(candles: &[Candle], n: usize) -> Option<f64> {
    if candles.len() < n + 1 || n == 0 {
        return None;
    }
    let window = &candles[candles.len() - n - 1..];
    let ranges: f64 = window
        .windows(2)
        .map(|w| (w[1].high - w[1].low).max((w[1].high - w[0].close).abs()).max((w[1].low - w[0].close).abs()))
        .sum();
    let last = window.last()?.close;
    (last > 0.0).then(|| ranges / n as f64 / last * 100.0)
}

fn fee_aware(context: &SignalContext<'_>, settings: &GuardSettings) -> Verdict {
    let Some(expected_move_pct) = atr_pct(context.candles, settings.fee_atr_candles) else {
        return block(
            SIG_FEE_AWARE,
            format!("fewer than {} candles: the expected move cannot be judged", settings.fee_atr_candles + 1),
            json!({ "candles": context.candles.len() }),
        );
    };
    let round_trip_fees_pct = 2.0 * settings.taker_fee_bps / 100.0;
    let needed_pct = round_trip_fees_pct * settings.fee_multiple;
    let values = json!({
        "expected_move_pct": round(expected_move_pct, 4),
        "round_trip_fees_pct": round(round_trip_fees_pct, 4),
        "fee_multiple": settings.fee_multiple,
    });
    if expected_move_pct < needed_pct {
        return block(
            SIG_FEE_AWARE,
            format!(
                "expected move {expected_move_pct:.4} % is less than round-trip fees {round_trip_fees_pct:.4} % × {}",
                settings.fee_multiple
            ),
            values,
        );
    }
    Ok(values)
}

fn alpha_floor(signal: &EntrySignal, settings: &GuardSettings) -> Verdict {
    let values = json!({ "score": round(signal.score, 4), "min_signal_score": settings.min_signal_score });
    // A NaN score is below every floor.
    if signal.score.is_nan() || signal.score < settings.min_signal_score {
        return block(
            SIG_ALPHA_FLOOR,
            format!("signal score {:.4} is below the floor {}", signal.score, settings.min_signal_score),
            values,
        );
    }
    Ok(values)
}

/// |return| × (recent volume / window volume) over the last `n` candles.
pub fn power_score(candles: &[Candle], n: usize) -> Option<f64> {
    if candles.len() < n + 1 || n == 0 {
        return None;
    }
    let recent = &candles[candles.len() - n..];
    let base = candles[candles.len() - n - 1].close;
    let momentum = (recent.last()?.close / base - 1.0).abs();
    let recent_volume = recent.iter().map(|c| c.volume).sum::<f64>() / n as f64;
    let all_volume = candles.iter().map(|c| c.volume).sum::<f64>() / candles.len() as f64;
    let volume_ratio = if all_volume > 0.0 { recent_volume / all_volume } else { 1.0 };
    Some(momentum * volume_ratio)
}

fn power_ranking(signal: &EntrySignal, context: &SignalContext<'_>, settings: &GuardSettings) -> Verdict {
    let mut scores: Vec<(&Symbol, f64)> = context
        .universe
        .iter()
        .filter_map(|(symbol, candles)| power_score(candles, settings.power_rank_candles).map(|s| (symbol, s)))
        .collect();
    if scores.len() <= settings.power_rank_top_k {
        return Ok(json!({ "universe": scores.len(), "top_k": settings.power_rank_top_k }));
    }
    scores.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let rank = scores.iter().position(|(symbol, _)| **symbol == signal.symbol).map(|r| r + 1);
    let values = json!({ "rank": rank, "universe": scores.len(), "top_k": settings.power_rank_top_k });
    match rank {
        Some(rank) if rank <= settings.power_rank_top_k => Ok(values),
        _ => block(
            SIG_POWER_RANKING,
            format!(
                "{} ranks {} of {} by momentum × volume; only the top {} trade",
                signal.symbol,
                rank.map_or("unranked".to_owned(), |r| r.to_string()),
                scores.len(),
                settings.power_rank_top_k
            ),
            values,
        ),
    }
}

/// Fresh intelligence for this signal, or why there is none. Its age is venue time: from the close
/// of its newest interval to the close of the candle decided on (not when it was fetched, which
/// depends on how long requests took).
fn fresh_intelligence<'a>(context: &SignalContext<'a>, settings: &GuardSettings) -> Result<&'a IntelSnapshot, Value> {
    let Some(intel) = context.intelligence else {
        return Err(json!({ "intelligence": "unavailable" }));
    };
    let Some(newest) = intel.intervals.last() else {
        return Err(json!({ "intelligence": "empty" }));
    };
    let age_ms = context.now.venue_ms - (newest.time_ms + intel.timeframe.duration_ms());
    if age_ms > settings.intel_age_ms_max {
        return Err(json!({ "intelligence": "stale", "age_ms": age_ms }));
    }
    Ok(intel)
}

fn direction(side: Side) -> f64 {
    if side == Side::Buy { 1.0 } else { -1.0 }
}

fn whale_cvd(signal: &EntrySignal, context: &SignalContext<'_>, settings: &GuardSettings) -> Verdict {
    let intel = match fresh_intelligence(context, settings) {
        Ok(intel) => intel,
        Err(values) => return Ok(values),
    };
    let Some(flow) = intel.whale_flow(settings.intel_window, settings.whale_volume_multiple) else {
        return Ok(json!({ "intelligence": "too short" }));
    };
    let share = if flow.volume_usd > 0.0 { flow.net_usd / flow.volume_usd } else { 0.0 };
    let against = -share * direction(signal.side);
    let values = json!({
        "whale_net_usd": round(flow.net_usd, 0),
        "whale_volume_usd": round(flow.volume_usd, 0),
        "net_share": round(share, 4),
        "max_against": settings.whale_cvd_share_max,
        "source": intel.source,
        "measured_on": flow.source.as_str(),
    });
    if against > settings.whale_cvd_share_max {
        return block(
            SIG_WHALE_CVD,
            format!(
                "{} CVD runs against the {}: net {:.0} USD ({:.1} % of their volume)",
                match flow.source {
                    WhaleSource::LargeTrades => "large-trade",
                    WhaleSource::LargeIntervals => "large-interval",
                },
                if signal.side == Side::Buy { "long" } else { "short" },
                flow.net_usd,
                share * 100.0
            ),
            values,
        );
    }
    Ok(values)
}

fn taker_aggression(signal: &EntrySignal, context: &SignalContext<'_>, settings: &GuardSettings) -> Verdict {
    let intel = match fresh_intelligence(context, settings) {
        Ok(intel) => intel,
        Err(values) => return Ok(values),
    };
    let Some(ratio) = intel.taker_ratio(settings.taker_window) else {
        return Ok(json!({ "intelligence": "too short" }));
    };
    let values = json!({
        "taker_buy_sell_ratio": round(ratio, 4),
        "long_min": settings.taker_ratio_long_min,
        "short_max": settings.taker_ratio_short_max,
        "source": intel.source,
    });
    let against = match signal.side {
        Side::Buy => ratio < settings.taker_ratio_long_min,
        Side::Sell => ratio > settings.taker_ratio_short_max,
    };
    if against {
        return block(
            SIG_TAKER_AGGRESSION,
            format!(
                "taker buy/sell ratio {ratio:.3} runs against the {}",
                if signal.side == Side::Buy { "long" } else { "short" }
            ),
            values,
        );
    }
    Ok(values)
}

fn liquidation_wall(signal: &EntrySignal, context: &SignalContext<'_>, settings: &GuardSettings) -> Verdict {
    let candles = context.candles;
    let Some(last) = candles.last() else { return Ok(json!({ "candles": 0 })) };
    let mut notionals: Vec<f64> = candles.iter().map(|c| c.volume * c.close).collect();
    let total: f64 = notionals.iter().sum();
    notionals.sort_by(f64::total_cmp);
    let median = notionals[notionals.len() / 2];
    // Positions opened on a high-volume candle at the assumed leverage: longs liquidate 1/L below
    // its close, shorts 1/L above. Against a long: long liquidations below; against a short:
    // short liquidations above.
    let leverage = settings.liquidation_leverage.max(1.0);
    let price = last.close;
    let distance = settings.liquidation_wall_distance_pct / 100.0;
    let cluster: f64 = candles
        .iter()
        .filter(|c| c.volume * c.close >= 2.0 * median)
        .filter_map(|c| {
            let level = match signal.side {
                Side::Buy => c.close * (1.0 - 1.0 / leverage),
                Side::Sell => c.close * (1.0 + 1.0 / leverage),
            };
            let against = match signal.side {
                Side::Buy => level <= price && level >= price * (1.0 - distance),
                Side::Sell => level >= price && level <= price * (1.0 + distance),
            };
            against.then_some(c.volume * c.close)
        })
        .sum();
    let share = if total > 0.0 { cluster / total } else { 0.0 };
    let values = json!({
        "cluster_share": round(share, 4),
        "wall_share": settings.liquidation_wall_share,
        "distance_pct": settings.liquidation_wall_distance_pct,
        "leverage": leverage,
    });
    if share >= settings.liquidation_wall_share {
        return block(
            SIG_LIQUIDATION_WALL,
            format!(
                "an estimated liquidation cluster ({:.1} % of the window's volume) sits within {} % {} price",
                share * 100.0,
                settings.liquidation_wall_distance_pct,
                if signal.side == Side::Buy { "below" } else { "above" }
            ),
            values,
        );
    }
    Ok(values)
}

fn trap(signal: &EntrySignal, context: &SignalContext<'_>, settings: &GuardSettings) -> Verdict {
    let candles = context.candles;
    if candles.len() < settings.trap_lookback + 1 {
        return Ok(json!({ "candles": candles.len() }));
    }
    let last = &candles[candles.len() - 1];
    let before = &candles[candles.len() - 1 - settings.trap_lookback..candles.len() - 1];
    let mean_volume = before.iter().map(|c| c.volume).sum::<f64>() / before.len() as f64;
    let volume_ratio = if mean_volume > 0.0 { last.volume / mean_volume } else { 1.0 };
    let range = last.high - last.low;
    let (broke, wick) = match signal.side {
        Side::Buy => {
            (last.high > before.iter().map(|c| c.high).fold(f64::MIN, f64::max), last.high - last.close.max(last.open))
        }
        Side::Sell => {
            (last.low < before.iter().map(|c| c.low).fold(f64::MAX, f64::min), last.close.min(last.open) - last.low)
        }
    };
    let wick_share = if range > 0.0 { wick / range } else { 0.0 };
    let values = json!({
        "breakout": broke,
        "volume_ratio": round(volume_ratio, 4),
        "wick_share": round(wick_share, 4),
    });
    if broke && volume_ratio < settings.trap_volume_ratio_max && wick_share >= settings.trap_wick_share_min {
        return block(
            SIG_TRAP,
            format!(
                "{} trap: a breakout on {:.0} % of the usual volume with a {:.0} % reversal wick",
                if signal.side == Side::Buy { "bull" } else { "bear" },
                volume_ratio * 100.0,
                wick_share * 100.0
            ),
            values,
        );
    }
    Ok(values)
}

#[cfg(test)]
mod tests;
