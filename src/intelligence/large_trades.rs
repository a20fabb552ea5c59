//! Large trades, as the whale-CVD guard reads them: a trade is large when its notional is at
//! least [`LARGE_TRADE_MEAN_MULTIPLE`] times the mean trade of the interval before, and an
//! interval's large-trade flow is their notional by aggressor side ([`LargeTrades`]).
//!
//! [`LargeTradeMeter`] follows one symbol's trade stream (Binance's aggTrade, or the paper
//! market's recorded tape) into that flow per interval of one timeframe. It answers for an
//! interval only when it followed the whole of it: a trade seen before the interval began, and the
//! interval before measured (its mean is the threshold). A trade delivered twice (a rotation's
//! overlap) is counted once by its id; a trade older than an interval already handed out is late
//! and ignored.

use std::collections::VecDeque;

use crate::domain::LargeTrades;

/// A trade is large from this multiple of the mean trade notional of the interval before. On the
/// recorded trades (`data/replay/public_trades_list.csv`) 5× the mean picks 55 of 1,000 trades,
/// which carry half of the traded notional.
pub const LARGE_TRADE_MEAN_MULTIPLE: f64 = 5.0;
/// Finished intervals a meter keeps for `take` (the closed kline comes moments after its end).
const FINISHED_KEPT: usize = 4;

/// One trade as a venue reports it (Binance: an aggregate trade).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MarketTrade {
    /// The venue's id, increasing per symbol.
    pub id: u64,
    pub time_ms: i64,
    pub price: f64,
    pub quantity: f64,
    /// The taker bought (Binance: `m` is false, the buyer was not the maker).
    pub taker_buys: bool,
}

impl MarketTrade {
    pub fn notional_usd(&self) -> f64 {
        self.price * self.quantity
    }
}

#[derive(Debug, Clone, Copy)]
struct Interval {
    open_ms: i64,
    trades: u64,
    notional_usd: f64,
    /// Whether the interval was followed from its start with a threshold known.
    whole: bool,
    large: LargeTrades,
}

/// Follows one symbol's trades into per-interval large-trade flow for one timeframe. Written by
/// the owner of the trade stream (one market connection) only.
#[derive(Debug, Clone)]
pub struct LargeTradeMeter {
    interval_ms: i64,
    /// Newest trade id counted.
    last_id: Option<u64>,
    /// Time of the first trade followed.
    first_trade_ms: Option<i64>,
    /// Mean trade notional of the newest finished interval that had trades.
    previous_mean_usd: Option<f64>,
    current: Option<Interval>,
    /// End of the newest interval finished: trades before it are late.
    finished_through_ms: i64,
    finished: VecDeque<(i64, LargeTrades)>,
}

impl LargeTradeMeter {
    pub fn new(interval_ms: i64) -> Self {
        Self {
            interval_ms: interval_ms.max(1),
            last_id: None,
            first_trade_ms: None,
            previous_mean_usd: None,
            current: None,
            finished_through_ms: i64::MIN,
            finished: VecDeque::new(),
        }
    }

    /// Counts one trade (once, whatever the number of deliveries).
    pub fn record(&mut self, trade: &MarketTrade) {
        if self.last_id.is_some_and(|last| trade.id <= last) || trade.time_ms < self.finished_through_ms {
            return;
        }
        self.last_id = Some(trade.id);
        let open_ms = trade.time_ms - trade.time_ms.rem_euclid(self.interval_ms);
        if self.current.is_some_and(|current| current.open_ms < open_ms) {
            self.finish_current();
        }
        let first_trade_ms = *self.first_trade_ms.get_or_insert(trade.time_ms);
        let previous_mean_usd = self.previous_mean_usd;
        let current = self.current.get_or_insert(Interval {
            open_ms,
            trades: 0,
            notional_usd: 0.0,
            whole: first_trade_ms < open_ms && previous_mean_usd.is_some(),
            large: LargeTrades::default(),
        });
        let notional_usd = trade.notional_usd();
        current.trades += 1;
        current.notional_usd += notional_usd;
        if previous_mean_usd.is_some_and(|mean| notional_usd >= LARGE_TRADE_MEAN_MULTIPLE * mean) {
            if trade.taker_buys {
                current.large.buy_usd += notional_usd;
            } else {
                current.large.sell_usd += notional_usd;
            }
        }
    }

    /// The large-trade flow of the interval opening at `open_ms` once it has closed, if it was
    /// followed whole; later trades of it are then ignored as late.
    pub fn take(&mut self, open_ms: i64) -> Option<LargeTrades> {
        if self.current.is_some_and(|current| current.open_ms <= open_ms) {
            self.finish_current();
        }
        self.finished_through_ms = self.finished_through_ms.max(open_ms + self.interval_ms);
        let index = self.finished.iter().position(|(open, _)| *open == open_ms)?;
        self.finished.remove(index).map(|(_, large)| large)
    }

    fn finish_current(&mut self) {
        let Some(current) = self.current.take() else { return };
        if current.trades > 0 {
            self.previous_mean_usd = Some(current.notional_usd / current.trades as f64);
        }
        self.finished_through_ms = self.finished_through_ms.max(current.open_ms + self.interval_ms);
        if current.whole {
            self.finished.push_back((current.open_ms, current.large));
            while self.finished.len() > FINISHED_KEPT {
                self.finished.pop_front();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trade(id: u64, time_ms: i64, quantity: f64, taker_buys: bool) -> MarketTrade {
        MarketTrade { id, time_ms, price: 10.0, quantity, taker_buys }
    }

    #[test]
    fn only_intervals_followed_whole_are_measured_against_the_mean_before() {
        let mut meter = LargeTradeMeter::new(1_000);
        // Interval 0 is not followed from its start (its first trade is the first seen).
        for (id, (time_ms, quantity)) in [(500, 1.0), (600, 3.0)].into_iter().enumerate() {
            meter.record(&trade(id as u64, time_ms, quantity, true));
        }
        // Interval 1: the mean before is 20 USD, so large is 100 USD and up.
        meter.record(&trade(2, 1_100, 10.0, true));
        meter.record(&trade(3, 1_200, 12.0, false));
        meter.record(&trade(4, 1_300, 9.0, true));
        // Delivered twice (a rotation's overlap): counted once.
        meter.record(&trade(3, 1_200, 12.0, false));
        assert_eq!(meter.take(0), None, "not followed from its start");
        assert_eq!(meter.take(1_000), Some(LargeTrades { buy_usd: 100.0, sell_usd: 120.0 }));
        assert_eq!(meter.take(1_000), None, "handed out once");
        // A trade of an interval already handed out is late.
        meter.record(&trade(5, 1_900, 1_000.0, true));
        meter.record(&trade(6, 2_100, 1.0, true));
        assert_eq!(meter.take(2_000), Some(LargeTrades::default()), "the mean before is 103.3: none is large");
    }

    #[test]
    fn a_quiet_interval_is_measured_against_the_last_one_with_trades() {
        let mut meter = LargeTradeMeter::new(1_000);
        meter.record(&trade(1, 900, 1.0, true));
        meter.record(&trade(2, 1_900, 2.0, true));
        // Nothing in interval 2; interval 3 is judged against interval 1's mean (20 USD).
        meter.record(&trade(3, 3_500, 10.0, false));
        assert_eq!(meter.take(2_000), None, "no trade: nothing to hand out");
        assert_eq!(meter.take(3_000), Some(LargeTrades { buy_usd: 0.0, sell_usd: 100.0 }));
    }
}
