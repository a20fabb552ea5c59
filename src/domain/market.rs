//! Candles and timeframes, and the data-quality checks every candle window passes before a
//! strategy sees it (failure points DATA-CORRUPT and DATA-MISSING).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A candle interval, named as Binance names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Timeframe {
    M1,
    M3,
    M5,
    M15,
    M30,
    H1,
    H2,
    H4,
    H6,
    H8,
    H12,
    D1,
}

impl Timeframe {
    pub const ALL: [Timeframe; 12] = [
        Timeframe::M1,
        Timeframe::M3,
        Timeframe::M5,
        Timeframe::M15,
        Timeframe::M30,
        Timeframe::H1,
        Timeframe::H2,
        Timeframe::H4,
        Timeframe::H6,
        Timeframe::H8,
        Timeframe::H12,
        Timeframe::D1,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Timeframe::M1 => "1m",
            Timeframe::M3 => "3m",
            Timeframe::M5 => "5m",
            Timeframe::M15 => "15m",
            Timeframe::M30 => "30m",
            Timeframe::H1 => "1h",
            Timeframe::H2 => "2h",
            Timeframe::H4 => "4h",
            Timeframe::H6 => "6h",
            Timeframe::H8 => "8h",
            Timeframe::H12 => "12h",
            Timeframe::D1 => "1d",
        }
    }

    pub fn duration_ms(self) -> i64 {
        const MINUTE_MS: i64 = 60_000;
        match self {
            Timeframe::M1 => MINUTE_MS,
            Timeframe::M3 => 3 * MINUTE_MS,
            Timeframe::M5 => 5 * MINUTE_MS,
            Timeframe::M15 => 15 * MINUTE_MS,
            Timeframe::M30 => 30 * MINUTE_MS,
            Timeframe::H1 => 60 * MINUTE_MS,
            Timeframe::H2 => 120 * MINUTE_MS,
            Timeframe::H4 => 240 * MINUTE_MS,
            Timeframe::H6 => 360 * MINUTE_MS,
            Timeframe::H8 => 480 * MINUTE_MS,
            Timeframe::H12 => 720 * MINUTE_MS,
            Timeframe::D1 => 1_440 * MINUTE_MS,
        }
    }

    /// Open time of the most recent candle of this timeframe that has fully closed at `now_ms`.
    pub fn last_closed_open_ms(self, now_ms: i64) -> i64 {
        let duration_ms = self.duration_ms();
        now_ms.div_euclid(duration_ms) * duration_ms - duration_ms
    }
}

impl fmt::Display for Timeframe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Timeframe {
    type Err = String;
    fn from_str(value: &str) -> Result<Self, String> {
        Timeframe::ALL.into_iter().find(|tf| tf.as_str() == value).ok_or_else(|| {
            let known: Vec<&str> = Timeframe::ALL.iter().map(|tf| tf.as_str()).collect();
            format!("unknown timeframe {:?} (expected one of {})", crate::limits::excerpt(value), known.join(", "))
        })
    }
}

impl TryFrom<String> for Timeframe {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        value.parse()
    }
}

impl From<Timeframe> for String {
    fn from(value: Timeframe) -> String {
        value.as_str().to_owned()
    }
}

/// One OHLCV candle. Prices are `f64` because they feed indicators; they never become order
/// parameters without going through [`crate::domain::decimal_from_f64`] and symbol rounding.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Candle {
    pub open_time_ms: i64,
    /// Inclusive, as on Binance: `open_time_ms + duration - 1`.
    pub close_time_ms: i64,
    pub open: f64,
    pub high: f64,
    pub low: f64,
    pub close: f64,
    pub volume: f64,
    /// Base-asset volume bought by takers, where the venue reports it (Binance's kline field 9,
    /// the kline stream's `V`; the paper market's recorded tape); `None` for recorded candles
    /// without it.
    #[serde(default)]
    pub taker_buy_volume: Option<f64>,
    /// The interval's large trades by aggressor side, where the venue's trades were followed
    /// through the whole interval (Binance's aggTrade stream; the paper market's recorded tape);
    /// `None` otherwise (a REST kline never carries them).
    #[serde(default)]
    pub large_trades: Option<LargeTrades>,
}

/// Notional (quote asset, USD for USDⓈ-M) of an interval's large trades by aggressor side: a trade
/// is large when its notional is at least [`crate::intelligence::large_trades::LARGE_TRADE_MEAN_MULTIPLE`]
/// times the mean trade of the interval before.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LargeTrades {
    pub buy_usd: f64,
    pub sell_usd: f64,
}

/// The two intervals' large trades together (a longer candle made of shorter ones).
impl std::ops::Add for LargeTrades {
    type Output = Self;
    fn add(self, other: Self) -> Self {
        Self { buy_usd: self.buy_usd + other.buy_usd, sell_usd: self.sell_usd + other.sell_usd }
    }
}

/// What is wrong with a candle window.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DataProblem {
    #[error("no candles")]
    Empty,
    #[error("candle {index} (open {open_time_ms}): {what}")]
    Corrupt { index: usize, open_time_ms: i64, what: String },
    #[error("candle {index} (open {open_time_ms}) is not after the previous one (open {previous_open_time_ms})")]
    OutOfOrder { index: usize, open_time_ms: i64, previous_open_time_ms: i64 },
    #[error("{missing} candle(s) missing before open {open_time_ms}")]
    Gap { open_time_ms: i64, missing: i64 },
    #[error("newest candle closed at {close_time_ms} but a candle closing at {expected_close_time_ms} was expected")]
    Stale { close_time_ms: i64, expected_close_time_ms: i64 },
    #[error("only {have} candles, the strategy needs {need}")]
    NotEnough { have: usize, need: usize },
}

/// Checks a window of closed candles of one timeframe: every value finite and sane, open times
/// strictly increasing and exactly one timeframe apart.
pub fn validate_candles(candles: &[Candle], timeframe: Timeframe) -> Result<(), DataProblem> {
    if candles.is_empty() {
        return Err(DataProblem::Empty);
    }
    let duration_ms = timeframe.duration_ms();
    for (index, candle) in candles.iter().enumerate() {
        let corrupt = |what: String| DataProblem::Corrupt { index, open_time_ms: candle.open_time_ms, what };
        let values = [candle.open, candle.high, candle.low, candle.close];
        if values.iter().chain([&candle.volume]).any(|v| !v.is_finite()) {
            return Err(corrupt("a value is not a finite number".to_owned()));
        }
        if values.iter().any(|v| *v <= 0.0) {
            return Err(corrupt("a price is zero or negative".to_owned()));
        }
        if candle.volume < 0.0 {
            return Err(corrupt(format!("negative volume {}", candle.volume)));
        }
        if candle.high < candle.low {
            return Err(corrupt(format!("high {} is below low {}", candle.high, candle.low)));
        }
        if candle.high < candle.open.max(candle.close) || candle.low > candle.open.min(candle.close) {
            return Err(corrupt("open or close outside the high-low range".to_owned()));
        }
        if candle.close_time_ms != candle.open_time_ms + duration_ms - 1 {
            return Err(corrupt(format!("close time {} does not match a {timeframe} candle", candle.close_time_ms)));
        }
        if index > 0 {
            let previous_open_time_ms = candles[index - 1].open_time_ms;
            if candle.open_time_ms <= previous_open_time_ms {
                return Err(DataProblem::OutOfOrder {
                    index,
                    open_time_ms: candle.open_time_ms,
                    previous_open_time_ms,
                });
            }
            let step_ms = candle.open_time_ms - previous_open_time_ms;
            if step_ms != duration_ms {
                return Err(DataProblem::Gap { open_time_ms: candle.open_time_ms, missing: step_ms / duration_ms - 1 });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn candle(open_time_ms: i64, close: f64) -> Candle {
        Candle {
            open_time_ms,
            close_time_ms: open_time_ms + Timeframe::M5.duration_ms() - 1,
            open: close,
            high: close * 1.01,
            low: close * 0.99,
            close,
            volume: 10.0,
            taker_buy_volume: None,
            large_trades: None,
        }
    }

    fn window(n: usize) -> Vec<Candle> {
        (0..n).map(|i| candle(i as i64 * 300_000, 1.0 + i as f64 * 0.01)).collect()
    }

    #[test]
    fn timeframes_parse_and_print() {
        for tf in Timeframe::ALL {
            assert_eq!(tf.as_str().parse::<Timeframe>().unwrap(), tf);
        }
        let err = "7m".parse::<Timeframe>().unwrap_err();
        assert!(err.contains("7m") && err.contains("5m"), "{err}");
    }

    #[test]
    fn last_closed_candle_open() {
        // At 00:12:30 the last closed 5m candle opened at 00:05.
        assert_eq!(Timeframe::M5.last_closed_open_ms(750_000), 300_000);
        // Exactly on a boundary the candle that just ended is closed.
        assert_eq!(Timeframe::M5.last_closed_open_ms(600_000), 300_000);
    }

    #[test]
    fn a_clean_window_passes() {
        assert_eq!(validate_candles(&window(50), Timeframe::M5), Ok(()));
    }

    #[test]
    fn corrupt_candles_are_named() {
        let mut candles = window(10);
        candles[3].close = f64::NAN;
        assert!(matches!(validate_candles(&candles, Timeframe::M5), Err(DataProblem::Corrupt { index: 3, .. })));

        let mut candles = window(10);
        candles[4].low = -1.0;
        assert!(matches!(validate_candles(&candles, Timeframe::M5), Err(DataProblem::Corrupt { index: 4, .. })));

        let mut candles = window(10);
        candles[5].high = candles[5].low * 0.5;
        assert!(matches!(validate_candles(&candles, Timeframe::M5), Err(DataProblem::Corrupt { index: 5, .. })));
    }

    #[test]
    fn disorder_and_gaps_are_named() {
        let mut candles = window(10);
        candles[7].open_time_ms = candles[6].open_time_ms;
        candles[7].close_time_ms = candles[6].close_time_ms;
        assert!(matches!(validate_candles(&candles, Timeframe::M5), Err(DataProblem::OutOfOrder { index: 7, .. })));

        let mut candles = window(10);
        candles.remove(5);
        assert!(matches!(validate_candles(&candles, Timeframe::M5), Err(DataProblem::Gap { missing: 1, .. })));
        assert_eq!(validate_candles(&[], Timeframe::M5), Err(DataProblem::Empty));
    }
}
