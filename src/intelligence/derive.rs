//! The intelligence series derived deterministically from candles (on paper, and in `bulwark
//! sim`'s CoinGlass-shaped endpoints), and the true taker flow from recorded trades.
//!
//! | series | from each candle |
//! |---|---|
//! | open interest | a rolling 48-candle traded notional × 10 |
//! | funding rate | the close's distance from its 24-candle mean, in percent / 8, clamped to ±0.75 |
//! | liquidations | traded notional × the candle's fall (longs) or rise (shorts) × 5 |
//! | long/short account ratio | 50 % ± 15 % by the 12-candle return |
//! | taker buy/sell | the candle's taker-buy volume × close, and the rest of its notional; without it (recorded candles), the notional split by where the close sits in the range |
//! | large trades | the candle's own (streamed candles whose trades were followed), else none |

use crate::domain::{Candle, Symbol, Timeframe};
use crate::intelligence::{IntelInterval, IntelSnapshot};

/// Traded notional of a candle (volume × close).
pub fn notional(candle: &Candle) -> f64 {
    candle.volume * candle.close
}

/// Open interest per candle (USD).
pub fn open_interest(candles: &[Candle]) -> Vec<f64> {
    (0..candles.len()).map(|i| candles[i.saturating_sub(47)..=i].iter().map(notional).sum::<f64>() * 10.0).collect()
}

/// Funding rate per candle (percent).
pub fn funding_rate_pct(candles: &[Candle]) -> Vec<f64> {
    (0..candles.len())
        .map(|i| {
            let window = &candles[i.saturating_sub(23)..=i];
            let mean = window.iter().map(|c| c.close).sum::<f64>() / window.len() as f64;
            ((candles[i].close - mean) / mean * 100.0 / 8.0).clamp(-0.75, 0.75)
        })
        .collect()
}

/// (long, short) liquidations per candle (USD).
pub fn liquidations(candle: &Candle) -> (f64, f64) {
    let change = (candle.close - candle.open) / candle.open;
    (notional(candle) * (-change).max(0.0) * 5.0, notional(candle) * change.max(0.0) * 5.0)
}

/// Long percent of accounts per candle.
pub fn long_percent(candles: &[Candle]) -> Vec<f64> {
    (0..candles.len())
        .map(|i| {
            let back = candles[i.saturating_sub(12)].close;
            50.0 + 15.0 * ((candles[i].close - back) / back * 50.0).tanh()
        })
        .collect()
}

/// (taker buy, taker sell) notional of a candle: from its taker-buy volume where the venue gave
/// it, else split by where the close sits in the range.
pub fn taker_split(candle: &Candle) -> (f64, f64) {
    if let Some(bought) = candle.taker_buy_volume {
        let bought = bought.clamp(0.0, candle.volume.max(0.0));
        return (bought * candle.close, (candle.volume - bought).max(0.0) * candle.close);
    }
    let share = if candle.high > candle.low { (candle.close - candle.low) / (candle.high - candle.low) } else { 0.5 };
    let total = notional(candle);
    (total * share, total * (1.0 - share))
}

/// Every series from candles, as one snapshot.
pub fn from_candles(symbol: Symbol, timeframe: Timeframe, candles: &[Candle], fetched_at_ms: i64) -> IntelSnapshot {
    let (oi, funding, long) = (open_interest(candles), funding_rate_pct(candles), long_percent(candles));
    let intervals = candles
        .iter()
        .enumerate()
        .map(|(i, candle)| {
            let (taker_buy_usd, taker_sell_usd) = taker_split(candle);
            let (long_liquidation_usd, short_liquidation_usd) = liquidations(candle);
            IntelInterval {
                time_ms: candle.open_time_ms,
                taker_buy_usd,
                taker_sell_usd,
                long_liquidation_usd,
                short_liquidation_usd,
                open_interest_usd: Some(oi[i]),
                funding_rate_pct: Some(funding[i]),
                long_short_ratio: Some(long[i] / (100.0 - long[i])),
                large_trades: candle.large_trades,
            }
        })
        .collect();
    IntelSnapshot { symbol, timeframe, source: "derived", fetched_at_ms, intervals }
}

/// One recorded public trade: `side` is the taker's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Trade {
    pub time_ms: i64,
    pub taker_buys: bool,
    pub price: f64,
    pub amount: f64,
}

/// True taker flow per interval from trades: (interval open ms, buy notional, sell notional).
pub fn taker_flow_from_trades(trades: &[Trade], interval_ms: i64) -> Vec<(i64, f64, f64)> {
    let mut flow: Vec<(i64, f64, f64)> = Vec::new();
    for trade in trades {
        let open_ms = trade.time_ms - trade.time_ms.rem_euclid(interval_ms);
        let notional = trade.price * trade.amount;
        if flow.last().is_none_or(|(open, _, _)| *open != open_ms) {
            flow.push((open_ms, 0.0, 0.0));
        }
        let bucket = flow.last_mut().expect("Invariant: pushed above");
        if trade.taker_buys {
            bucket.1 += notional;
        } else {
            bucket.2 += notional;
        }
    }
    flow
}

/// Parses the recorded trades CSV (`,timestamp,id,type,side,price,amount,cost,date`).
pub fn parse_trades_csv(text: &str) -> Result<Vec<Trade>, String> {
    text.lines()
        .skip(1)
        .filter(|line| !line.trim().is_empty())
        .enumerate()
        .map(|(index, line)| {
            let fields: Vec<&str> = line.split(',').collect();
            let bad = |what: &str| format!("trade row {}: {what}: {line:?}", index + 1);
            if fields.len() < 8 {
                return Err(bad("expected 9 columns"));
            }
            let taker_buys = match fields[4] {
                "buy" => true,
                "sell" => false,
                _ => return Err(bad("side must be buy or sell")),
            };
            let number = |i: usize, what: &str| fields[i].parse::<f64>().map_err(|_| bad(what));
            Ok(Trade {
                time_ms: fields[1].parse().map_err(|_| bad("bad timestamp"))?,
                taker_buys,
                price: number(5, "bad price")?,
                amount: number(6, "bad amount")?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRADES: &str = include_str!("../../data/replay/public_trades_list.csv");

    #[test]
    fn taker_flow_and_cvd_from_the_recorded_trades() {
        let trades = parse_trades_csv(TRADES).unwrap();
        assert_eq!(trades.len(), 1_000);
        let flow = taker_flow_from_trades(&trades, 60_000);
        // 09:20:00 → 09:23:27: four one-minute intervals.
        assert_eq!(flow.len(), 4);
        let total: f64 = trades.iter().map(|t| t.price * t.amount).sum();
        let flowed: f64 = flow.iter().map(|(_, buy, sell)| buy + sell).sum();
        assert!((total - flowed).abs() < 1e-6 * total);
        let cvd: f64 = flow.iter().map(|(_, buy, sell)| buy - sell).sum();
        let by_trade: f64 =
            trades.iter().map(|t| if t.taker_buys { t.price * t.amount } else { -t.price * t.amount }).sum();
        assert!((cvd - by_trade).abs() < 1e-6 * total);

        // The candle estimate on the same minutes: one candle per minute from the trades.
        let mut agree = 0;
        for (open_ms, buy, sell) in &flow {
            let minute: Vec<&Trade> = trades.iter().filter(|t| t.time_ms - t.time_ms % 60_000 == *open_ms).collect();
            let candle = Candle {
                open_time_ms: *open_ms,
                close_time_ms: open_ms + 59_999,
                open: minute[0].price,
                high: minute.iter().map(|t| t.price).fold(f64::MIN, f64::max),
                low: minute.iter().map(|t| t.price).fold(f64::MAX, f64::min),
                close: minute[minute.len() - 1].price,
                volume: minute.iter().map(|t| t.amount).sum(),
                taker_buy_volume: None,
                large_trades: None,
            };
            let (estimated_buy, estimated_sell) = taker_split(&candle);
            assert!(estimated_buy >= 0.0 && estimated_sell >= 0.0);
            if (estimated_buy - estimated_sell).signum() == (buy - sell).signum() {
                agree += 1;
            }
        }
        // Recorded so that a change to the estimate is noticed; not a claim that it is accurate.
        println!("candle estimate agrees with the true CVD sign on {agree} of {} minutes", flow.len());
    }

    #[test]
    fn a_bad_trade_row_is_named() {
        let error =
            parse_trades_csv(",timestamp,id,type,side,price,amount,cost,date\n0,1,2,,hold,1,1,1,x\n").unwrap_err();
        assert!(error.contains("row 1") && error.contains("side"), "{error}");
    }
}
