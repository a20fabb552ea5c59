//! The trade tape of the paper market and `bulwark sim`, driven by recorded trades: each candle
//! trades a run of [`TRADES_PER_CANDLE`] consecutive public trades of
//! `data/replay/public_trades_list.csv` (real sizes, real aggressor sides, real clustering),
//! scaled to the candle's volume, spread evenly over its duration along a price path through its
//! open, high, low and close. The run is the one whose buy share comes nearest to where the candle
//! closes in its range (an up-candle is bought into), chosen among the near ones by the candle's
//! index so that neighbouring candles do not repeat one run.
//!
//! From the tape come the kline's taker-buy volume (`V`) and trade count (`n`), the sim's aggTrade
//! stream, and the paper market's large-trade flow ([`crate::intelligence::large_trades`]): so the
//! taker-aggression and whale-CVD guards judge recorded trades on paper, and the same trades
//! reach a Binance client through the simulator.

use std::sync::OnceLock;

use crate::domain::{Candle, LargeTrades};
use crate::intelligence::derive::{Trade, parse_trades_csv};
use crate::intelligence::large_trades::{LargeTradeMeter, MarketTrade};

/// Trades of one candle.
pub const TRADES_PER_CANDLE: usize = 60;
/// Runs whose buy share is within this of the target are all candidates.
const SHARE_TOLERANCE: f64 = 0.02;

const RECORDED_TRADES: &str = include_str!("../../data/replay/public_trades_list.csv");

/// The recorded trades and every run of [`TRADES_PER_CANDLE`] of them (wrapping around), sorted
/// by buy share.
struct Recording {
    trades: Vec<Trade>,
    /// (buy share of the run's quantity, index of its first trade).
    runs: Vec<(f64, usize)>,
}

fn recording() -> &'static Recording {
    static RECORDING: OnceLock<Recording> = OnceLock::new();
    RECORDING.get_or_init(|| {
        let trades = parse_trades_csv(RECORDED_TRADES).expect("Invariant: the embedded recording parses (unit-tested)");
        let mut runs: Vec<(f64, usize)> = (0..trades.len())
            .map(|start| {
                let run = (0..TRADES_PER_CANDLE).map(|i| &trades[(start + i) % trades.len()]);
                let (bought, total) = run.fold((0.0, 0.0), |(bought, total), trade| {
                    (if trade.taker_buys { bought + trade.amount } else { bought }, total + trade.amount)
                });
                (if total > 0.0 { bought / total } else { 0.5 }, start)
            })
            .collect();
        runs.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        Recording { trades, runs }
    })
}

/// Where the close sits in the candle's range (0 at the low, 1 at the high; 0.5 without a range).
fn close_share(candle: &Candle) -> f64 {
    if candle.high > candle.low { (candle.close - candle.low) / (candle.high - candle.low) } else { 0.5 }
}

/// The first recorded trade of the candle's run.
fn run_start(candle: &Candle, candle_index: u64) -> usize {
    let runs = &recording().runs;
    let target = close_share(candle);
    let low = runs.partition_point(|(share, _)| *share < target - SHARE_TOLERANCE);
    let high = runs.partition_point(|(share, _)| *share <= target + SHARE_TOLERANCE);
    if low < high {
        return runs[low + (candle_index % (high - low) as u64) as usize].1;
    }
    // None within the tolerance: the nearest.
    let nearest = [low.saturating_sub(1), low.min(runs.len() - 1)]
        .into_iter()
        .min_by(|a, b| (runs[*a].0 - target).abs().total_cmp(&(runs[*b].0 - target).abs()))
        .unwrap_or(0);
    runs[nearest].1
}

/// The price at `fraction` (0 to 1) of the candle: open, then the extreme away from the close,
/// then the other extreme, then the close, in straight lines.
fn price_at(candle: &Candle, fraction: f64) -> f64 {
    let (first, second) =
        if candle.close >= candle.open { (candle.low, candle.high) } else { (candle.high, candle.low) };
    let points = [candle.open, first, second, candle.close];
    let position = fraction.clamp(0.0, 1.0) * 3.0;
    let segment = (position.floor() as usize).min(2);
    let within = position - segment as f64;
    points[segment] + (points[segment + 1] - points[segment]) * within
}

/// The candle's trades, oldest first: ids `candle index × TRADES_PER_CANDLE + i`, times strictly
/// inside the candle, prices within its high and low, quantities summing to its volume.
pub fn candle_trades(candle: &Candle) -> Vec<MarketTrade> {
    let recording = recording();
    let duration_ms = (candle.close_time_ms + 1 - candle.open_time_ms).max(1);
    let candle_index = candle.open_time_ms.div_euclid(duration_ms).max(0) as u64;
    let start = run_start(candle, candle_index);
    let run: Vec<&Trade> =
        (0..TRADES_PER_CANDLE).map(|i| &recording.trades[(start + i) % recording.trades.len()]).collect();
    let recorded_total: f64 = run.iter().map(|trade| trade.amount).sum();
    let steps = TRADES_PER_CANDLE as i64;
    run.iter()
        .enumerate()
        .map(|(i, trade)| {
            let fraction = (2 * i as i64 + 1) as f64 / (2 * steps) as f64;
            MarketTrade {
                id: candle_index * TRADES_PER_CANDLE as u64 + i as u64,
                time_ms: candle.open_time_ms + (2 * i as i64 + 1) * duration_ms / (2 * steps),
                price: price_at(candle, fraction),
                quantity: if recorded_total > 0.0 { trade.amount / recorded_total * candle.volume } else { 0.0 },
                taker_buys: trade.taker_buys,
            }
        })
        .collect()
}

/// Base-asset volume the takers bought.
pub fn taker_buy_volume(trades: &[MarketTrade]) -> f64 {
    trades.iter().filter(|trade| trade.taker_buys).map(|trade| trade.quantity).sum()
}

/// The large-trade flow of `trades` (one candle), measured against the candle before's trades as
/// a trade stream would measure it.
pub fn large_trades(previous: &[MarketTrade], trades: &[MarketTrade], interval_ms: i64) -> Option<LargeTrades> {
    let mut meter = LargeTradeMeter::new(interval_ms);
    previous.iter().chain(trades).for_each(|trade| meter.record(trade));
    meter.take(trades.first()?.time_ms.div_euclid(interval_ms) * interval_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candle(index: i64, open: f64, high: f64, low: f64, close: f64) -> Candle {
        Candle {
            open_time_ms: index * 300_000,
            close_time_ms: index * 300_000 + 299_999,
            open,
            high,
            low,
            close,
            volume: 1_000.0,
            taker_buy_volume: None,
            large_trades: None,
        }
    }

    #[test]
    fn the_recording_parses_and_every_run_has_its_share() {
        let recording = recording();
        assert_eq!(recording.trades.len(), 1_000);
        assert_eq!(recording.runs.len(), 1_000);
        assert!(recording.runs.windows(2).all(|pair| pair[0].0 <= pair[1].0));
        assert!(recording.runs[0].0 < 0.05 && recording.runs[999].0 > 0.95, "runs from all sells to all buys");
    }

    #[test]
    fn a_candles_trades_stay_inside_it_and_add_up_to_its_volume() {
        let up = candle(7, 100.0, 104.0, 99.0, 103.0);
        let trades = candle_trades(&up);
        assert_eq!(trades.len(), TRADES_PER_CANDLE);
        assert!(trades.iter().all(|t| t.time_ms > up.open_time_ms && t.time_ms < up.close_time_ms));
        assert!(trades.windows(2).all(|pair| pair[0].time_ms < pair[1].time_ms && pair[0].id + 1 == pair[1].id));
        assert!(trades.iter().all(|t| t.price >= up.low && t.price <= up.high));
        let total: f64 = trades.iter().map(|t| t.quantity).sum();
        assert!((total - up.volume).abs() < 1e-9, "{total}");
        // Closing near its high, the candle trades a run that mostly bought.
        let bought = taker_buy_volume(&trades) / up.volume;
        assert!((bought - 0.8).abs() <= SHARE_TOLERANCE + 1e-9, "buy share {bought} for a close at 0.8 of the range");
        assert_eq!(candle_trades(&up), trades, "the same candle trades the same tape");
    }

    #[test]
    fn neighbouring_candles_of_one_shape_trade_different_runs() {
        let first = candle_trades(&candle(10, 100.0, 101.0, 99.0, 100.0));
        let second = candle_trades(&candle(11, 100.0, 101.0, 99.0, 100.0));
        let sides = |trades: &[MarketTrade]| trades.iter().map(|t| t.taker_buys).collect::<Vec<_>>();
        assert_ne!(sides(&first), sides(&second));
    }

    #[test]
    fn large_trades_are_measured_against_the_candle_before() {
        let previous = candle_trades(&candle(20, 100.0, 101.0, 99.0, 100.5));
        let trades = candle_trades(&candle(21, 100.5, 102.0, 100.0, 101.5));
        let large = large_trades(&previous, &trades, 300_000).expect("followed whole");
        let mean = previous.iter().map(MarketTrade::notional_usd).sum::<f64>() / previous.len() as f64;
        let expected = trades.iter().filter(|t| t.notional_usd() >= 5.0 * mean).fold((0.0, 0.0), |(buy, sell), t| {
            if t.taker_buys { (buy + t.notional_usd(), sell) } else { (buy, sell + t.notional_usd()) }
        });
        assert_eq!((large.buy_usd, large.sell_usd), expected);
        assert!(expected.0 + expected.1 > 0.0, "the recorded tape has large trades");
    }
}
