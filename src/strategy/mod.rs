//! Trading strategies: pure functions from a window of closed candles to a [`Signal`].
//!
//! A strategy never sees the position, the account or the clock, and never panics on bad input:
//! indicator failures (too few candles, NaN) come back as a [`StrategyError`], which the trader
//! records as the reason it skipped the iteration (seed §3). Indicators come from `kand`, a
//! TA-Lib-compatible crate whose functions return errors instead of panicking.

mod bollinger_breakout;
mod ema_crossover;
mod params;
mod rsi_reversion;

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::domain::Candle;

pub use params::ParamProblem;

/// What a strategy wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalAction {
    /// Be long: enter when flat, exit a short.
    Long,
    /// Be short: enter when flat, exit a long.
    Short,
    /// No opinion: keep whatever is held.
    Flat,
    /// Close any position, enter nothing.
    Exit,
}

impl SignalAction {
    pub fn as_str(self) -> &'static str {
        match self {
            SignalAction::Long => "long",
            SignalAction::Short => "short",
            SignalAction::Flat => "flat",
            SignalAction::Exit => "exit",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Signal {
    pub action: SignalAction,
    /// Conviction in `[0, 1]`.
    pub score: f64,
    /// The values that decided it, for the decision log.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StrategyError {
    #[error("{strategy} needs {need} candles, got {have}")]
    NotEnoughCandles { strategy: &'static str, have: usize, need: usize },
    #[error("{strategy}: indicator {indicator} failed: {detail}")]
    Indicator { strategy: &'static str, indicator: &'static str, detail: String },
    #[error("{strategy}: indicator {indicator} produced {value}")]
    NotFinite { strategy: &'static str, indicator: &'static str, value: f64 },
}

/// A trading strategy. Implementations are stateless, so a restarted trader needs nothing but the
/// candles to resume.
pub trait Strategy: Send + Sync + fmt::Debug {
    fn name(&self) -> &'static str;

    /// Closed candles needed for a meaningful signal (indicator warm-up included).
    fn lookback_candles(&self) -> usize;

    fn evaluate(&self, candles: &[Candle]) -> Result<Signal, StrategyError>;
}

/// The strategies a config may name.
pub const STRATEGY_NAMES: [&str; 3] = ["ema_crossover", "rsi_reversion", "bollinger_breakout"];

/// Builds a strategy from its config name and numeric parameters. Every problem is reported, each
/// naming its parameter.
pub fn build(name: &str, params: &BTreeMap<String, f64>) -> Result<Box<dyn Strategy>, Vec<ParamProblem>> {
    match name {
        "ema_crossover" => ema_crossover::EmaCrossover::from_params(params).map(|s| Box::new(s) as Box<dyn Strategy>),
        "rsi_reversion" => rsi_reversion::RsiReversion::from_params(params).map(|s| Box::new(s) as Box<dyn Strategy>),
        "bollinger_breakout" => {
            bollinger_breakout::BollingerBreakout::from_params(params).map(|s| Box::new(s) as Box<dyn Strategy>)
        }
        other => Err(vec![ParamProblem {
            param: None,
            message: format!(
                "unknown strategy {:?} (expected one of {})",
                crate::limits::excerpt(other),
                STRATEGY_NAMES.join(", ")
            ),
        }]),
    }
}

/// Closing prices of a window, checked to be enough for `need`.
fn closes(strategy: &'static str, candles: &[Candle], need: usize) -> Result<Vec<f64>, StrategyError> {
    if candles.len() < need {
        return Err(StrategyError::NotEnoughCandles { strategy, have: candles.len(), need });
    }
    Ok(candles.iter().map(|c| c.close).collect())
}

/// The last two values of an indicator series, both finite.
fn last_two(strategy: &'static str, indicator: &'static str, series: &[f64]) -> Result<(f64, f64), StrategyError> {
    let [.., previous, last] = series else {
        return Err(StrategyError::Indicator { strategy, indicator, detail: "fewer than two values".into() });
    };
    for value in [*previous, *last] {
        if !value.is_finite() {
            return Err(StrategyError::NotFinite { strategy, indicator, value });
        }
    }
    Ok((*previous, *last))
}

fn indicator_error(strategy: &'static str, indicator: &'static str) -> impl Fn(kand::KandError) -> StrategyError {
    move |error| StrategyError::Indicator { strategy, indicator, detail: error.to_string() }
}

#[cfg(test)]
pub(crate) mod test_support {
    use crate::domain::{Candle, Timeframe};

    /// Candles whose closes are `closes`, 5 minutes apart.
    pub fn candles(closes: &[f64]) -> Vec<Candle> {
        closes
            .iter()
            .enumerate()
            .map(|(i, &close)| {
                let open_time_ms = i as i64 * Timeframe::M5.duration_ms();
                Candle {
                    open_time_ms,
                    close_time_ms: open_time_ms + Timeframe::M5.duration_ms() - 1,
                    open: close,
                    high: close * 1.001,
                    low: close * 0.999,
                    close,
                    volume: 100.0,
                    taker_buy_volume: None,
                    large_trades: None,
                }
            })
            .collect()
    }

    /// A price that rises `n` steps then falls `m` steps.
    pub fn rise_then_fall(n: usize, m: usize) -> Vec<f64> {
        let mut closes: Vec<f64> = (0..n).map(|i| 100.0 + i as f64).collect();
        let top = *closes.last().unwrap();
        closes.extend((1..=m).map(|i| top - 2.0 * i as f64));
        closes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_strategy_builds_with_defaults() {
        for name in STRATEGY_NAMES {
            let strategy = build(name, &BTreeMap::new()).unwrap();
            assert_eq!(strategy.name(), name);
            assert!(strategy.lookback_candles() <= crate::limits::CANDLE_WINDOW_LEN);
        }
    }

    #[test]
    fn unknown_strategies_and_parameters_are_named() {
        let problems = build("martingale", &BTreeMap::new()).unwrap_err();
        assert!(problems[0].message.contains("martingale"));
        let params = BTreeMap::from([("fats".to_owned(), 3.0), ("slow".to_owned(), -1.0)]);
        let problems = build("ema_crossover", &params).unwrap_err();
        let named: Vec<Option<&str>> = problems.iter().map(|p| p.param.as_deref()).collect();
        assert!(named.contains(&Some("fats")) && named.contains(&Some("slow")), "{problems:?}");
    }

    #[test]
    fn strategies_return_errors_not_panics_on_bad_data() {
        let mut bad = test_support::candles(&test_support::rise_then_fall(80, 20));
        bad[90].close = f64::NAN;
        for name in STRATEGY_NAMES {
            let strategy = build(name, &BTreeMap::new()).unwrap();
            assert!(strategy.evaluate(&bad).is_err(), "{name} on NaN");
            assert!(
                matches!(strategy.evaluate(&bad[..3]), Err(StrategyError::NotEnoughCandles { .. })),
                "{name} on 3 candles"
            );
        }
    }
}
