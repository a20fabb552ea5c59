//! Market intelligence: open interest, funding, liquidations, the long/short account ratio,
//! taker buy/sell volume and large-trade flow per (symbol, interval), as the whale-CVD and
//! taker-aggression guards read them. Two sources give the same [`IntelSnapshot`]:
//! - [`coinglass`]: the CoinGlass API v4 (`CG-API-KEY`, `{code, msg, data}` envelope, numbers as
//!   strings or floats); it has no large-trade flow;
//! - [`derive`]: the same series derived deterministically from the candles market data already
//!   has. Taker flow is the venue's own where the candle carries it (Binance's kline taker-buy
//!   volume; on paper and in `bulwark sim`, the recorded trades of [`tape`]), and large-trade flow
//!   comes with candles streamed while the trades were followed ([`large_trades`]: Binance's
//!   aggTrade stream, the paper tape). `bulwark sim` serves the derived series on its
//!   CoinGlass-shaped endpoints, so both sources are exercised in tests.

pub mod coinglass;
pub mod derive;
pub mod large_trades;
pub mod tape;

use serde::Serialize;

use crate::domain::{LargeTrades, Symbol, Timeframe};

/// One interval of every series (values in USD unless named otherwise).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IntelInterval {
    pub time_ms: i64,
    pub taker_buy_usd: f64,
    pub taker_sell_usd: f64,
    pub long_liquidation_usd: f64,
    pub short_liquidation_usd: f64,
    /// Open interest at the interval's close.
    pub open_interest_usd: Option<f64>,
    /// Funding rate at the interval's close, in percent.
    pub funding_rate_pct: Option<f64>,
    pub long_short_ratio: Option<f64>,
    /// The interval's large trades by aggressor side, where its trades were followed
    /// ([`large_trades`]); `None` from CoinGlass and for intervals fetched by REST.
    pub large_trades: Option<LargeTrades>,
}

/// Every series of one (symbol, interval), oldest interval first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IntelSnapshot {
    pub symbol: Symbol,
    pub timeframe: Timeframe,
    /// `coinglass` or `derived`.
    pub source: &'static str,
    pub fetched_at_ms: i64,
    pub intervals: Vec<IntelInterval>,
}

/// Net taker flow of a window's large participants.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WhaleFlow {
    /// Buy minus sell, USD.
    pub net_usd: f64,
    /// Buy plus sell, USD.
    pub volume_usd: f64,
    pub source: WhaleSource,
}

/// What a [`WhaleFlow`] was measured on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WhaleSource {
    /// The large trades of every interval of the window (each trade against the mean trade of the
    /// interval before).
    LargeTrades,
    /// The taker flow of the intervals whose volume is a multiple of the window's median: the
    /// fallback when some interval's trades were not followed.
    LargeIntervals,
}

impl WhaleSource {
    pub fn as_str(self) -> &'static str {
        match self {
            WhaleSource::LargeTrades => "large_trades",
            WhaleSource::LargeIntervals => "large_intervals",
        }
    }
}

impl IntelSnapshot {
    fn window(&self, n: usize) -> Option<&[IntelInterval]> {
        (n > 0 && self.intervals.len() >= n).then(|| &self.intervals[self.intervals.len() - n..])
    }

    /// Taker buy volume over taker sell volume in the last `n` intervals.
    pub fn taker_ratio(&self, n: usize) -> Option<f64> {
        let window = self.window(n)?;
        let buy: f64 = window.iter().map(|i| i.taker_buy_usd).sum();
        let sell: f64 = window.iter().map(|i| i.taker_sell_usd).sum();
        (sell > 0.0).then(|| buy / sell)
    }

    /// Cumulative volume delta over the last `n` intervals (buy − sell, USD).
    pub fn cvd(&self, n: usize) -> Option<f64> {
        Some(self.window(n)?.iter().map(|i| i.taker_buy_usd - i.taker_sell_usd).sum())
    }

    /// The flow of the large participants over the last `n` intervals: the large trades' net when
    /// every interval has them, else the CVD of the intervals whose taker volume is at least
    /// `multiple` × the window's median.
    pub fn whale_flow(&self, n: usize, multiple: f64) -> Option<WhaleFlow> {
        let window = self.window(n)?;
        let followed: Option<Vec<LargeTrades>> = window.iter().map(|i| i.large_trades).collect();
        if let Some(large_trades) = followed {
            let (net_usd, volume_usd) = large_trades.iter().fold((0.0, 0.0), |(net, volume), large| {
                (net + large.buy_usd - large.sell_usd, volume + large.buy_usd + large.sell_usd)
            });
            return Some(WhaleFlow { net_usd, volume_usd, source: WhaleSource::LargeTrades });
        }
        let mut volumes: Vec<f64> = window.iter().map(|i| i.taker_buy_usd + i.taker_sell_usd).collect();
        volumes.sort_by(f64::total_cmp);
        let median = volumes[volumes.len() / 2];
        let large = window.iter().filter(|i| i.taker_buy_usd + i.taker_sell_usd >= multiple * median);
        let (net_usd, volume_usd) = large.fold((0.0, 0.0), |(net, volume), i| {
            (net + i.taker_buy_usd - i.taker_sell_usd, volume + i.taker_buy_usd + i.taker_sell_usd)
        });
        Some(WhaleFlow { net_usd, volume_usd, source: WhaleSource::LargeIntervals })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interval(buy: f64, sell: f64) -> IntelInterval {
        IntelInterval {
            time_ms: 0,
            taker_buy_usd: buy,
            taker_sell_usd: sell,
            long_liquidation_usd: 0.0,
            short_liquidation_usd: 0.0,
            open_interest_usd: None,
            funding_rate_pct: None,
            long_short_ratio: None,
            large_trades: None,
        }
    }

    #[test]
    fn taker_ratio_cvd_and_whale_flow_over_a_window() {
        let snapshot = IntelSnapshot {
            symbol: Symbol::new("BTCUSDT").unwrap(),
            timeframe: Timeframe::M5,
            source: "derived",
            fetched_at_ms: 0,
            intervals: vec![interval(100.0, 100.0), interval(60.0, 40.0), interval(50.0, 50.0), interval(100.0, 300.0)],
        };
        assert_eq!(snapshot.taker_ratio(2), Some(150.0 / 350.0));
        assert_eq!(snapshot.cvd(3), Some(20.0 - 200.0));
        // Median volume of the last 3 is 100; only the 400 interval is ≥ 2 × 100.
        let by_intervals = WhaleFlow { net_usd: -200.0, volume_usd: 400.0, source: WhaleSource::LargeIntervals };
        assert_eq!(snapshot.whale_flow(3, 2.0), Some(by_intervals));
        assert_eq!(snapshot.taker_ratio(5), None);
    }

    #[test]
    fn whale_flow_reads_large_trades_when_every_interval_has_them() {
        let mut intervals = vec![interval(100.0, 100.0), interval(60.0, 40.0), interval(100.0, 300.0)];
        for (interval, (buy_usd, sell_usd)) in intervals.iter_mut().zip([(30.0, 0.0), (0.0, 10.0), (5.0, 5.0)]) {
            interval.large_trades = Some(LargeTrades { buy_usd, sell_usd });
        }
        let mut snapshot = IntelSnapshot {
            symbol: Symbol::new("BTCUSDT").unwrap(),
            timeframe: Timeframe::M5,
            source: "derived",
            fetched_at_ms: 0,
            intervals,
        };
        let by_trades = WhaleFlow { net_usd: 20.0, volume_usd: 50.0, source: WhaleSource::LargeTrades };
        assert_eq!(snapshot.whale_flow(3, 2.0), Some(by_trades));
        // One interval without followed trades (fetched by REST): the whole window falls back.
        snapshot.intervals[1].large_trades = None;
        assert_eq!(snapshot.whale_flow(3, 2.0).map(|flow| flow.source), Some(WhaleSource::LargeIntervals));
        assert_eq!(snapshot.whale_flow(1, 2.0).map(|flow| flow.source), Some(WhaleSource::LargeTrades));
    }
}
