//! Trend following on two exponential moving averages: long while the fast EMA is above the slow
//! one, short while it is below. Conviction grows with the gap between them (1 % = full).

use std::collections::BTreeMap;

use crate::domain::Candle;
use crate::strategy::params::{ParamProblem, ParamReader};
use crate::strategy::{Signal, SignalAction, Strategy, StrategyError, closes, indicator_error, last_two};

const NAME: &str = "ema_crossover";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmaCrossover {
    fast: usize,
    slow: usize,
}

impl EmaCrossover {
    pub fn from_params(params: &BTreeMap<String, f64>) -> Result<Self, Vec<ParamProblem>> {
        let mut reader = ParamReader::new(params);
        let fast = reader.period("fast", 9, 2, 98);
        let slow = reader.period("slow", 21, 3, 99);
        if fast >= slow {
            reader.problem("slow", format!("must be greater than fast ({fast}), got {slow}"));
        }
        reader.finish(NAME, Self { fast, slow })
    }
}

impl Strategy for EmaCrossover {
    fn name(&self) -> &'static str {
        NAME
    }

    fn lookback_candles(&self) -> usize {
        // Two slow periods of warm-up so the seed value (an SMA) has faded.
        2 * self.slow + 1
    }

    fn evaluate(&self, candles: &[Candle]) -> Result<Signal, StrategyError> {
        let closes = closes(NAME, candles, self.lookback_candles())?;
        let mut fast = vec![0.0; closes.len()];
        let mut slow = vec![0.0; closes.len()];
        kand::ohlcv::ema::ema(&closes, self.fast, None, &mut fast).map_err(indicator_error(NAME, "ema fast"))?;
        kand::ohlcv::ema::ema(&closes, self.slow, None, &mut slow).map_err(indicator_error(NAME, "ema slow"))?;
        let (_, fast_last) = last_two(NAME, "ema fast", &fast)?;
        let (_, slow_last) = last_two(NAME, "ema slow", &slow)?;
        let gap_pct = (fast_last - slow_last) / slow_last * 100.0;
        let action = if gap_pct > 0.0 {
            SignalAction::Long
        } else if gap_pct < 0.0 {
            SignalAction::Short
        } else {
            SignalAction::Flat
        };
        Ok(Signal {
            action,
            score: gap_pct.abs().min(1.0),
            reason: format!("EMA{} {fast_last:.6} vs EMA{} {slow_last:.6} ({gap_pct:+.3}%)", self.fast, self.slow),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::test_support::{candles, rise_then_fall};

    fn strategy() -> EmaCrossover {
        EmaCrossover::from_params(&BTreeMap::from([("fast".into(), 3.0), ("slow".into(), 8.0)])).unwrap()
    }

    #[test]
    fn long_in_an_uptrend_short_after_the_turn() {
        let up = strategy().evaluate(&candles(&rise_then_fall(40, 0))).unwrap();
        assert_eq!(up.action, SignalAction::Long);
        assert!(up.score > 0.0 && up.score <= 1.0);
        let down = strategy().evaluate(&candles(&rise_then_fall(40, 15))).unwrap();
        assert_eq!(down.action, SignalAction::Short, "{}", down.reason);
    }

    #[test]
    fn a_flat_market_has_no_opinion() {
        let flat = strategy().evaluate(&candles(&[100.0; 40])).unwrap();
        assert_eq!(flat.action, SignalAction::Flat);
        assert_eq!(flat.score, 0.0);
    }

    #[test]
    fn slow_must_exceed_fast() {
        let problems =
            EmaCrossover::from_params(&BTreeMap::from([("fast".into(), 10.0), ("slow".into(), 5.0)])).unwrap_err();
        assert_eq!(problems[0].param.as_deref(), Some("slow"));
    }
}
