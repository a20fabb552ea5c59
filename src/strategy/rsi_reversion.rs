//! Mean reversion on the Relative Strength Index (Wilder): long when oversold, short when
//! overbought, exit when the RSI crosses back over its middle level.

use std::collections::BTreeMap;

use crate::domain::Candle;
use crate::strategy::params::{ParamProblem, ParamReader};
use crate::strategy::{Signal, SignalAction, Strategy, StrategyError, closes, indicator_error, last_two};

const NAME: &str = "rsi_reversion";

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RsiReversion {
    period: usize,
    oversold: f64,
    overbought: f64,
    exit_level: f64,
}

impl RsiReversion {
    pub fn from_params(params: &BTreeMap<String, f64>) -> Result<Self, Vec<ParamProblem>> {
        let mut reader = ParamReader::new(params);
        let period = reader.period("period", 14, 2, 49);
        let oversold = reader.real("oversold", 30.0, 1.0, 49.0);
        let overbought = reader.real("overbought", 70.0, 51.0, 99.0);
        let exit_level = reader.real("exit_level", 50.0, 1.0, 99.0);
        if !(oversold < exit_level && exit_level < overbought) {
            reader.problem(
                "exit_level",
                format!("must lie between oversold ({oversold}) and overbought ({overbought}), got {exit_level}"),
            );
        }
        reader.finish(NAME, Self { period, oversold, overbought, exit_level })
    }
}

impl Strategy for RsiReversion {
    fn name(&self) -> &'static str {
        NAME
    }

    fn lookback_candles(&self) -> usize {
        // Wilder smoothing needs several periods to forget its seed.
        4 * self.period + 1
    }

    fn evaluate(&self, candles: &[Candle]) -> Result<Signal, StrategyError> {
        let closes = closes(NAME, candles, self.lookback_candles())?;
        let mut rsi = vec![0.0; closes.len()];
        let mut average_gain = vec![0.0; closes.len()];
        let mut average_loss = vec![0.0; closes.len()];
        kand::ohlcv::rsi::rsi(&closes, self.period, &mut rsi, &mut average_gain, &mut average_loss)
            .map_err(indicator_error(NAME, "rsi"))?;
        let (previous, last) = last_two(NAME, "rsi", &rsi)?;
        let crossed_exit = (previous - self.exit_level).signum() != (last - self.exit_level).signum();
        let (action, score) = if last < self.oversold {
            (SignalAction::Long, (self.oversold - last) / self.oversold)
        } else if last > self.overbought {
            (SignalAction::Short, (last - self.overbought) / (100.0 - self.overbought))
        } else if crossed_exit {
            (SignalAction::Exit, 0.5)
        } else {
            (SignalAction::Flat, 0.0)
        };
        Ok(Signal {
            action,
            score: score.clamp(0.0, 1.0),
            reason: format!(
                "RSI{} {last:.2} (was {previous:.2}; oversold {}, overbought {}, exit {})",
                self.period, self.oversold, self.overbought, self.exit_level
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::test_support::candles;

    fn strategy() -> RsiReversion {
        RsiReversion::from_params(&BTreeMap::from([("period".into(), 5.0)])).unwrap()
    }

    fn zigzag(n: usize) -> Vec<f64> {
        (0..n).map(|i| 100.0 + if i % 2 == 0 { 1.0 } else { -1.0 }).collect()
    }

    #[test]
    fn oversold_is_long_and_overbought_is_short() {
        let mut falling = zigzag(30);
        falling.extend((1..=8).map(|i| 100.0 - 3.0 * i as f64));
        assert_eq!(strategy().evaluate(&candles(&falling)).unwrap().action, SignalAction::Long);
        let mut rising = zigzag(30);
        rising.extend((1..=8).map(|i| 100.0 + 3.0 * i as f64));
        assert_eq!(strategy().evaluate(&candles(&rising)).unwrap().action, SignalAction::Short);
    }

    #[test]
    fn crossing_the_middle_exits_and_calm_is_flat() {
        // Oversold after a fall, then a steady recovery: candle by candle the signal goes from
        // long, through the middle level (exit), and never straight from long to short.
        let mut recovering = zigzag(30);
        recovering.extend((1..=8).map(|i| 100.0 - 3.0 * i as f64));
        let bottom = recovering.len();
        recovering.extend((1..=12).map(|i| 76.0 + 2.0 * i as f64));
        let actions: Vec<SignalAction> = (bottom..=recovering.len())
            .map(|n| strategy().evaluate(&candles(&recovering[..n])).unwrap().action)
            .collect();
        assert_eq!(actions[0], SignalAction::Long, "{actions:?}");
        let first_exit =
            actions.iter().position(|a| *a == SignalAction::Exit).expect("the recovery crosses the middle");
        assert!(
            actions[..first_exit].iter().all(|a| matches!(a, SignalAction::Long | SignalAction::Flat)),
            "{actions:?}"
        );
        let calm: Vec<f64> = (0..40).map(|i| 100.0 + if i % 4 < 2 { 0.5 } else { -0.5 }).collect();
        let signal = strategy().evaluate(&candles(&calm)).unwrap();
        assert!(matches!(signal.action, SignalAction::Flat | SignalAction::Exit), "{}", signal.reason);
    }

    #[test]
    fn thresholds_must_be_ordered() {
        let params = BTreeMap::from([("oversold".into(), 40.0), ("exit_level".into(), 30.0)]);
        let problems = RsiReversion::from_params(&params).unwrap_err();
        assert_eq!(problems[0].param.as_deref(), Some("exit_level"));
    }
}
