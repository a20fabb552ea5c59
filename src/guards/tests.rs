//! Allow and block cases of every guard, at the documented default thresholds.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::*;
use crate::domain::Timeframe;
use crate::intelligence::{IntelInterval, IntelSnapshot};

const NOW_MS: i64 = 1_700_000_000_000;

fn symbol(name: &str) -> Symbol {
    Symbol::new(name).unwrap()
}

fn signal(side: Side) -> EntrySignal {
    EntrySignal { symbol: symbol("BTCUSDT"), strategy: "ema_crossover".into(), side, score: 0.5 }
}

/// `n` candles wobbling ±`swing` % around 100 with volume 10: a calm, tradable market.
fn calm(n: usize, swing: f64) -> Vec<Candle> {
    (0..n)
        .map(|i| {
            let close = 100.0 * (1.0 + if i % 2 == 0 { swing } else { -swing } / 100.0);
            Candle {
                open_time_ms: i as i64 * 300_000,
                close_time_ms: i as i64 * 300_000 + 299_999,
                open: 100.0,
                high: close.max(100.0) * 1.001,
                low: close.min(100.0) * 0.999,
                close,
                volume: 10.0,
                taker_buy_volume: None,
                large_trades: None,
            }
        })
        .collect()
}

struct Fixture {
    candles: Vec<Candle>,
    equity: Result<EquityView, String>,
    locks: Vec<GuardLock>,
    loss_streak: u32,
    last_trade_pct: Option<f64>,
    others: Vec<OtherSlot>,
    universe: BTreeMap<Symbol, Arc<[Candle]>>,
    intelligence: Option<IntelSnapshot>,
    now: VenueMoment,
}

impl Fixture {
    fn new() -> Self {
        Self {
            candles: calm(60, 0.5),
            equity: Ok(EquityView { current_usdt: 10_000.0, peak_usdt: 10_000.0, peak_at_ms: NOW_MS }),
            locks: Vec::new(),
            loss_streak: 0,
            last_trade_pct: None,
            others: Vec::new(),
            universe: BTreeMap::new(),
            intelligence: None,
            now: VenueMoment::wall(NOW_MS),
        }
    }

    fn context(&self) -> SignalContext<'_> {
        SignalContext {
            now: self.now,
            candles: &self.candles,
            equity: self.equity.clone(),
            locks: &self.locks,
            loss_streak: self.loss_streak,
            last_trade_pct: self.last_trade_pct,
            other_slots: &self.others,
            universe: &self.universe,
            intelligence: self.intelligence.as_ref(),
        }
    }

    fn run(&self, guard: FailurePointId, signal: &EntrySignal, settings: &GuardSettings) -> Verdict {
        run_guard(guard, signal, &self.context(), settings)
    }
}

fn blocked(verdict: Verdict, guard: FailurePointId) -> GuardBlock {
    match verdict {
        Err(block) => {
            assert_eq!(block.failure_point, guard);
            block
        }
        Ok(values) => panic!("{guard} allowed: {values}"),
    }
}

fn lock(failure_point: FailurePointId, symbol_name: Option<&str>, until_ms: i64) -> GuardLock {
    GuardLock {
        id: 7,
        user: crate::domain::UserId::new("u1").unwrap(),
        failure_point: failure_point.as_str().into(),
        symbol: symbol_name.map(symbol),
        reason: "set earlier".into(),
        values: json!({}),
        set_at_ms: NOW_MS - 1_000,
        until_ms,
        set_at_venue_ms: NOW_MS - 1_000,
        until_venue_ms: until_ms,
    }
}

#[test]
fn a_calm_market_passes_every_guard_in_order() {
    let fixture = Fixture::new();
    let outcome = evaluate(&signal(Side::Buy), &fixture.context(), &GuardSettings::default());
    assert_eq!(outcome.block, None, "{:?}", outcome.steps);
    let order: Vec<FailurePointId> = outcome.steps.iter().map(|s| s.guard).collect();
    assert_eq!(order, GUARD_ORDER);
    assert_eq!(outcome.values().as_object().unwrap().len(), GUARD_ORDER.len());
}

#[test]
fn the_first_block_stops_the_pass_and_earlier_guards_are_recorded_as_allows() {
    let mut fixture = Fixture::new();
    fixture.others.push(OtherSlot {
        strategy: "rsi_reversion".into(),
        symbol: symbol("BTCUSDT"),
        position_quantity: 0.01,
        placing: false,
    });
    let outcome = evaluate(&signal(Side::Buy), &fixture.context(), &GuardSettings::default());
    assert_eq!(outcome.block.as_ref().map(|b| b.failure_point), Some(SIG_STRATEGY_OVERLAP));
    assert_eq!(outcome.steps.len(), 3);
    assert!(outcome.steps[0].allowed && outcome.steps[1].allowed && !outcome.steps[2].allowed);
}

#[test]
fn kill_switch_trips_at_max_drawdown_holds_its_lock_and_fails_closed() {
    let settings = GuardSettings::default();
    let mut fixture = Fixture::new();
    // 4.9 % down: allowed.
    fixture.equity = Ok(EquityView { current_usdt: 9_510.0, peak_usdt: 10_000.0, peak_at_ms: NOW_MS - 60_000 });
    assert!(fixture.run(SIG_KILL_SWITCH, &signal(Side::Buy), &settings).is_ok());
    // 5 % down: blocked, with a 12 h lock.
    fixture.equity = Ok(EquityView { current_usdt: 9_500.0, peak_usdt: 10_000.0, peak_at_ms: NOW_MS - 60_000 });
    let block = blocked(fixture.run(SIG_KILL_SWITCH, &signal(Side::Buy), &settings), SIG_KILL_SWITCH);
    assert_eq!(block.until_ms, Some(NOW_MS + 12 * 3_600_000));
    let new_lock = *block.new_lock.expect("a new lock");
    assert_eq!((new_lock.symbol, new_lock.until_ms), (None, NOW_MS + 12 * 3_600_000));
    assert_eq!(block.values["drawdown_pct"], 5.0);
    // A holding lock blocks even with equity back at the peak; an expired one does not.
    fixture.equity = Ok(EquityView { current_usdt: 10_000.0, peak_usdt: 10_000.0, peak_at_ms: NOW_MS });
    fixture.locks = vec![lock(SIG_KILL_SWITCH, None, NOW_MS + 5_000)];
    let block = blocked(fixture.run(SIG_KILL_SWITCH, &signal(Side::Sell), &settings), SIG_KILL_SWITCH);
    assert_eq!((block.until_ms, block.new_lock), (Some(NOW_MS + 5_000), None));
    fixture.locks = vec![lock(SIG_KILL_SWITCH, None, NOW_MS)];
    assert!(fixture.run(SIG_KILL_SWITCH, &signal(Side::Buy), &settings).is_ok());
    // Equity unknown: blocked, saying so.
    fixture.equity = Err("balance unavailable: timeout".into());
    let block = blocked(fixture.run(SIG_KILL_SWITCH, &signal(Side::Buy), &settings), SIG_KILL_SWITCH);
    assert!(block.reason.contains("fails closed"), "{}", block.reason);
}

#[test]
fn probation_after_three_losses_or_one_big_loss_and_only_on_its_symbol() {
    let settings = GuardSettings::default();
    let mut fixture = Fixture::new();
    fixture.loss_streak = 2;
    fixture.last_trade_pct = Some(-1.0);
    assert!(fixture.run(SIG_SYMBOL_PROBATION, &signal(Side::Buy), &settings).is_ok());
    fixture.loss_streak = 3;
    let block = blocked(fixture.run(SIG_SYMBOL_PROBATION, &signal(Side::Buy), &settings), SIG_SYMBOL_PROBATION);
    let new_lock = *block.new_lock.unwrap();
    assert_eq!((new_lock.symbol, new_lock.until_ms), (Some(symbol("BTCUSDT")), NOW_MS + 6 * 3_600_000));
    fixture.loss_streak = 1;
    fixture.last_trade_pct = Some(-3.0);
    blocked(fixture.run(SIG_SYMBOL_PROBATION, &signal(Side::Buy), &settings), SIG_SYMBOL_PROBATION);
    fixture.last_trade_pct = Some(2.0);
    fixture.locks = vec![lock(SIG_SYMBOL_PROBATION, Some("ETHUSDT"), NOW_MS + 10_000)];
    assert!(fixture.run(SIG_SYMBOL_PROBATION, &signal(Side::Buy), &settings).is_ok());
    fixture.locks = vec![lock(SIG_SYMBOL_PROBATION, Some("BTCUSDT"), NOW_MS + 10_000)];
    let block = blocked(fixture.run(SIG_SYMBOL_PROBATION, &signal(Side::Buy), &settings), SIG_SYMBOL_PROBATION);
    assert_eq!((block.until_ms, block.new_lock), (Some(NOW_MS + 10_000), None));
}

#[test]
fn overlap_blocks_a_symbol_another_strategy_holds_or_is_placing() {
    let settings = GuardSettings::default();
    let mut fixture = Fixture::new();
    fixture.others = vec![OtherSlot {
        strategy: "rsi_reversion".into(),
        symbol: symbol("ETHUSDT"),
        position_quantity: 1.0,
        placing: true,
    }];
    assert!(fixture.run(SIG_STRATEGY_OVERLAP, &signal(Side::Buy), &settings).is_ok());
    fixture.others[0].symbol = symbol("BTCUSDT");
    fixture.others[0].position_quantity = 0.0;
    let block = blocked(fixture.run(SIG_STRATEGY_OVERLAP, &signal(Side::Buy), &settings), SIG_STRATEGY_OVERLAP);
    assert!(block.reason.contains("placing"), "{}", block.reason);
}

#[test]
fn golden_hour_blocks_outside_the_windows_until_the_next_one_opens() {
    let mut settings = GuardSettings::default();
    let mut fixture = Fixture::new();
    // 2023-11-14 22:13:20 UTC.
    assert!(fixture.run(SIG_GOLDEN_HOUR, &signal(Side::Buy), &settings).is_ok(), "no windows: always open");
    settings.trading_hours_utc =
        vec![HoursWindow::parse("08:00-12:00").unwrap(), HoursWindow::parse("22:00-02:00").unwrap()];
    assert!(fixture.run(SIG_GOLDEN_HOUR, &signal(Side::Buy), &settings).is_ok(), "inside the wrapping window");
    settings.trading_hours_utc = vec![HoursWindow::parse("08:00-12:00").unwrap()];
    let block = blocked(fixture.run(SIG_GOLDEN_HOUR, &signal(Side::Buy), &settings), SIG_GOLDEN_HOUR);
    // Next 08:00 UTC is 9 h 47 min later.
    assert_eq!(block.until_ms, Some((NOW_MS / 60_000 + 9 * 60 + 47) * 60_000));
    fixture.now = VenueMoment::wall(NOW_MS + (9 * 60 + 47) * 60_000);
    assert!(fixture.run(SIG_GOLDEN_HOUR, &signal(Side::Buy), &settings).is_ok());
    assert!(HoursWindow::parse("25:00-01:00").is_err());
    assert!(HoursWindow::parse("10:00-10:00").is_err());
    assert!(HoursWindow::parse("0800-1200").is_err());
}

#[test]
fn regime_blocks_dead_and_chaotic_markets() {
    let mut settings = GuardSettings::default();
    let mut fixture = Fixture::new();
    assert!(fixture.run(SIG_REGIME, &signal(Side::Buy), &settings).is_ok());
    fixture.candles = calm(60, 4.0);
    blocked(fixture.run(SIG_REGIME, &signal(Side::Buy), &settings), SIG_REGIME);
    fixture.candles = calm(60, 0.01);
    settings.regime_volatility_min_pct = 0.1;
    let block = blocked(fixture.run(SIG_REGIME, &signal(Side::Buy), &settings), SIG_REGIME);
    assert!(block.reason.contains("dead"), "{}", block.reason);
    fixture.candles = calm(5, 0.5);
    blocked(fixture.run(SIG_REGIME, &signal(Side::Buy), &settings), SIG_REGIME);
}

#[test]
fn fee_aware_blocks_moves_smaller_than_fees_times_k() {
    let settings = GuardSettings::default();
    let mut fixture = Fixture::new();
    // ±0.5 % swings: ATR ≈ 1 %, fees 0.08 % × 2.
    assert!(fixture.run(SIG_FEE_AWARE, &signal(Side::Buy), &settings).is_ok());
    fixture.candles = calm(60, 0.01);
    for candle in &mut fixture.candles {
        candle.high = candle.close.max(candle.open) * 1.000_1;
        candle.low = candle.close.min(candle.open) * 0.999_9;
    }
    let block = blocked(fixture.run(SIG_FEE_AWARE, &signal(Side::Buy), &settings), SIG_FEE_AWARE);
    assert_eq!(block.values["round_trip_fees_pct"], 0.08);
}

#[test]
fn alpha_floor_blocks_weak_and_nan_scores() {
    let settings = GuardSettings::default();
    let fixture = Fixture::new();
    assert!(fixture.run(SIG_ALPHA_FLOOR, &signal(Side::Buy), &settings).is_ok());
    let weak = EntrySignal { score: 0.01, ..signal(Side::Buy) };
    blocked(fixture.run(SIG_ALPHA_FLOOR, &weak, &settings), SIG_ALPHA_FLOOR);
    let nan = EntrySignal { score: f64::NAN, ..signal(Side::Buy) };
    blocked(fixture.run(SIG_ALPHA_FLOOR, &nan, &settings), SIG_ALPHA_FLOOR);
}

#[test]
fn power_ranking_keeps_only_the_top_k_of_a_larger_universe() {
    let settings = GuardSettings { power_rank_top_k: 1, ..GuardSettings::default() };
    let mut fixture = Fixture::new();
    let trending: Vec<Candle> = calm(60, 0.5)
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            c.close *= 1.0 + i as f64 / 100.0;
            c.high = c.close * 1.01;
            c
        })
        .collect();
    fixture.universe.insert(symbol("BTCUSDT"), calm(60, 0.5).into());
    assert!(fixture.run(SIG_POWER_RANKING, &signal(Side::Buy), &settings).is_ok(), "a universe of one");
    fixture.universe.insert(symbol("ETHUSDT"), trending.clone().into());
    let block = blocked(fixture.run(SIG_POWER_RANKING, &signal(Side::Buy), &settings), SIG_POWER_RANKING);
    assert_eq!(block.values["rank"], 2);
    fixture.universe.insert(symbol("BTCUSDT"), trending.into());
    fixture.universe.insert(symbol("ETHUSDT"), calm(60, 0.5).into());
    assert!(fixture.run(SIG_POWER_RANKING, &signal(Side::Buy), &settings).is_ok());
}

/// Intelligence whose newest (5-minute) interval closes at `newest_close_ms`.
fn intel(flows: &[(f64, f64)], newest_close_ms: i64) -> IntelSnapshot {
    let interval_ms = Timeframe::M5.duration_ms();
    let first_open_ms = newest_close_ms - interval_ms * flows.len() as i64;
    IntelSnapshot {
        symbol: symbol("BTCUSDT"),
        timeframe: Timeframe::M5,
        source: "derived",
        fetched_at_ms: newest_close_ms,
        intervals: flows
            .iter()
            .enumerate()
            .map(|(index, &(buy, sell))| IntelInterval {
                time_ms: first_open_ms + index as i64 * interval_ms,
                taker_buy_usd: buy,
                taker_sell_usd: sell,
                long_liquidation_usd: 0.0,
                short_liquidation_usd: 0.0,
                open_interest_usd: None,
                funding_rate_pct: None,
                long_short_ratio: None,
                large_trades: None,
            })
            .collect(),
    }
}

#[test]
fn whale_cvd_blocks_against_large_flow_and_allows_without_fresh_data() {
    let settings = GuardSettings::default();
    let mut fixture = Fixture::new();
    let allowed = fixture.run(SIG_WHALE_CVD, &signal(Side::Buy), &settings).unwrap();
    assert_eq!(allowed["intelligence"], "unavailable");
    // Eleven ordinary intervals and one large one selling hard.
    let mut flows = vec![(50.0, 50.0); 11];
    flows.push((100.0, 400.0));
    fixture.intelligence = Some(intel(&flows, NOW_MS));
    let block = blocked(fixture.run(SIG_WHALE_CVD, &signal(Side::Buy), &settings), SIG_WHALE_CVD);
    assert!(block.reason.contains("against the long"), "{}", block.reason);
    assert!(fixture.run(SIG_WHALE_CVD, &signal(Side::Sell), &settings).is_ok(), "with the short");
    // Its age is venue time from its newest interval's close to the decided candle's close, however
    // recently it was fetched.
    let mut old = intel(&flows, NOW_MS - settings.intel_age_ms_max);
    fixture.intelligence = Some(old.clone());
    assert!(fixture.run(SIG_WHALE_CVD, &signal(Side::Buy), &settings).is_err(), "exactly the age limit: fresh");
    old = intel(&flows, NOW_MS - settings.intel_age_ms_max - 1);
    old.fetched_at_ms = NOW_MS;
    fixture.intelligence = Some(old);
    assert_eq!(fixture.run(SIG_WHALE_CVD, &signal(Side::Buy), &settings).unwrap()["intelligence"], "stale");
}

#[test]
fn locks_and_trading_hours_run_on_the_venues_clock() {
    let settings = GuardSettings { probation_losses: 1, ..GuardSettings::default() };
    // The accelerated paper exchange: one 5-minute candle per wall second; its market time is
    // 10 days ahead of the wall clock.
    let pace = crate::clock::VenuePace::new(300_000, 1_000);
    let venue_ms = NOW_MS + 10 * 86_400_000;
    let mut fixture = Fixture::new();
    fixture.now = VenueMoment { wall_ms: NOW_MS, venue_ms, pace };
    fixture.loss_streak = 1;
    let block = blocked(fixture.run(SIG_SYMBOL_PROBATION, &signal(Side::Buy), &settings), SIG_SYMBOL_PROBATION);
    let new_lock = *block.new_lock.unwrap();
    // 6 h of market time: 72 candles, 72 wall seconds.
    assert_eq!((new_lock.until_ms, new_lock.until_venue_ms), (NOW_MS + 72_000, venue_ms + 6 * 3_600_000));
    assert_eq!(block.until_ms, Some(NOW_MS + 72_000));
    // A stored lock holds by the venue's clock, whatever the wall clock says.
    fixture.loss_streak = 0;
    let mut stored = lock(SIG_SYMBOL_PROBATION, Some("BTCUSDT"), NOW_MS - 1);
    stored.until_venue_ms = venue_ms + 1;
    fixture.locks = vec![stored.clone()];
    blocked(fixture.run(SIG_SYMBOL_PROBATION, &signal(Side::Buy), &settings), SIG_SYMBOL_PROBATION);
    stored.until_ms = NOW_MS + 3_600_000;
    stored.until_venue_ms = venue_ms;
    fixture.locks = vec![stored];
    assert!(fixture.run(SIG_SYMBOL_PROBATION, &signal(Side::Buy), &settings).is_ok());
    // Trading hours are the venue's time of day (2023-11-24 22:13:20 there): the block lasts until
    // 08:00 there, 9 h 47 min of market time, 117.4 wall seconds.
    let hours = GuardSettings { trading_hours_utc: vec![HoursWindow::parse("08:00-12:00").unwrap()], ..settings };
    let block = blocked(fixture.run(SIG_GOLDEN_HOUR, &signal(Side::Buy), &hours), SIG_GOLDEN_HOUR);
    assert!(block.reason.starts_with("22:13 UTC"), "{}", block.reason);
    let wait_venue_ms = (venue_ms / 60_000 + 9 * 60 + 47) * 60_000 - venue_ms;
    assert_eq!(block.until_ms, Some(NOW_MS + pace.wall_ms_for(wait_venue_ms)));
}

#[test]
fn taker_aggression_blocks_a_long_into_sellers_and_a_short_into_buyers() {
    let settings = GuardSettings::default();
    let mut fixture = Fixture::new();
    fixture.intelligence = Some(intel(&[(70.0, 100.0); 6], NOW_MS));
    blocked(fixture.run(SIG_TAKER_AGGRESSION, &signal(Side::Buy), &settings), SIG_TAKER_AGGRESSION);
    assert!(fixture.run(SIG_TAKER_AGGRESSION, &signal(Side::Sell), &settings).is_ok());
    fixture.intelligence = Some(intel(&[(130.0, 100.0); 6], NOW_MS));
    blocked(fixture.run(SIG_TAKER_AGGRESSION, &signal(Side::Sell), &settings), SIG_TAKER_AGGRESSION);
    assert!(fixture.run(SIG_TAKER_AGGRESSION, &signal(Side::Buy), &settings).is_ok());
}

#[test]
fn liquidation_wall_blocks_a_cluster_just_against_the_trade() {
    let settings = GuardSettings::default();
    let mut fixture = Fixture::new();
    assert!(fixture.run(SIG_LIQUIDATION_WALL, &signal(Side::Buy), &settings).is_ok());
    // Heavy buying at 102.2 a while ago: longs at 50× liquidate near 100.16, just below a 100.3 price.
    let n = fixture.candles.len();
    for candle in &mut fixture.candles[n - 20..n - 15] {
        candle.close = 102.2;
        candle.high = 102.3;
        candle.volume = 100.0;
    }
    fixture.candles[n - 1].close = 100.3;
    fixture.candles[n - 1].high = 100.4;
    let block = blocked(fixture.run(SIG_LIQUIDATION_WALL, &signal(Side::Buy), &settings), SIG_LIQUIDATION_WALL);
    assert!(block.reason.contains("below"), "{}", block.reason);
    assert!(fixture.run(SIG_LIQUIDATION_WALL, &signal(Side::Sell), &settings).is_ok());
}

#[test]
fn trap_blocks_a_thin_breakout_with_a_reversal_wick() {
    let settings = GuardSettings::default();
    let mut fixture = Fixture::new();
    assert!(fixture.run(SIG_TRAP, &signal(Side::Buy), &settings).is_ok());
    let last = fixture.candles.last_mut().unwrap();
    *last = Candle { open: 100.0, high: 103.0, low: 99.9, close: 100.4, volume: 5.0, ..*last };
    let block = blocked(fixture.run(SIG_TRAP, &signal(Side::Buy), &settings), SIG_TRAP);
    assert!(block.reason.contains("bull trap"), "{}", block.reason);
    // The same breakout on heavy volume is not a trap.
    fixture.candles.last_mut().unwrap().volume = 30.0;
    assert!(fixture.run(SIG_TRAP, &signal(Side::Buy), &settings).is_ok());
    // A bear trap mirrors it.
    let last = fixture.candles.last_mut().unwrap();
    *last = Candle { open: 100.0, high: 100.1, low: 97.0, close: 99.6, volume: 5.0, ..*last };
    blocked(fixture.run(SIG_TRAP, &signal(Side::Sell), &settings), SIG_TRAP);
}
