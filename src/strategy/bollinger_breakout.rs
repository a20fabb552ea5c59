//! Volatility breakout on Bollinger Bands: long when the close breaks above the upper band, short
//! below the lower band, exit when the close crosses back over the middle band.

use std::collections::BTreeMap;

use crate::domain::Candle;
use crate::strategy::params::{ParamProblem, ParamReader};
use crate::strategy::{Signal, SignalAction, Strategy, StrategyError, closes, indicator_error, last_two};

const NAME: &str = "bollinger_breakout";

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BollingerBreakout {
    period: usize,
    deviations: f64,
}

impl BollingerBreakout {
    pub fn from_params(params: &BTreeMap<String, f64>) -> Result<Self, Vec<ParamProblem>> {
        let mut reader = ParamReader::new(params);
        let period = reader.period("period", 20, 2, 150);
        let deviations = reader.real("deviations", 2.0, 0.5, 5.0);
        reader.finish(NAME, Self { period, deviations })
    }
}

impl Strategy for BollingerBreakout {
    fn name(&self) -> &'static str {
        NAME
    }

    fn lookback_candles(&self) -> usize {
        self.period + 1
    }

    fn evaluate(&self, candles: &[Candle]) -> Result<Signal, StrategyError> {
        let closes = closes(NAME, candles, self.lookback_candles())?;
        let n = closes.len();
        let (mut upper, mut middle, mut lower) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        let (mut sma, mut variance, mut sum, mut sum_squares) =
            (vec![0.0; n], vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        kand::ohlcv::bbands::bbands(
            &closes,
            self.period,
            self.deviations,
            self.deviations,
            &mut upper,
            &mut middle,
            &mut lower,
            &mut sma,
            &mut variance,
            &mut sum,
            &mut sum_squares,
        )
        .map_err(indicator_error(NAME, "bbands"))?;
        let (_, upper_last) = last_two(NAME, "upper band", &upper)?;
        let (middle_previous, middle_last) = last_two(NAME, "middle band", &middle)?;
        let (_, lower_last) = last_two(NAME, "lower band", &lower)?;
        let (close_previous, close_last) = last_two(NAME, "close", &closes)?;
        let half_width = (upper_last - middle_last).max(f64::EPSILON);
        let crossed_middle = (close_previous - middle_previous).signum() != (close_last - middle_last).signum();
        let (action, score) = if close_last > upper_last {
            (SignalAction::Long, (close_last - upper_last) / half_width)
        } else if close_last < lower_last {
            (SignalAction::Short, (lower_last - close_last) / half_width)
        } else if crossed_middle {
            (SignalAction::Exit, 0.5)
        } else {
            (SignalAction::Flat, 0.0)
        };
        Ok(Signal {
            action,
            score: score.clamp(0.0, 1.0),
            reason: format!(
                "close {close_last:.6} vs BB{}x{} [{lower_last:.6}, {middle_last:.6}, {upper_last:.6}]",
                self.period, self.deviations
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::test_support::candles;

    fn strategy() -> BollingerBreakout {
        BollingerBreakout::from_params(&BTreeMap::from([("period".into(), 10.0)])).unwrap()
    }

    fn calm(n: usize) -> Vec<f64> {
        (0..n).map(|i| 100.0 + if i % 2 == 0 { 0.2 } else { -0.2 }).collect()
    }

    #[test]
    fn a_break_above_the_band_is_long_and_below_is_short() {
        let mut up = calm(30);
        up.push(105.0);
        assert_eq!(strategy().evaluate(&candles(&up)).unwrap().action, SignalAction::Long);
        let mut down = calm(30);
        down.push(95.0);
        assert_eq!(strategy().evaluate(&candles(&down)).unwrap().action, SignalAction::Short);
    }

    #[test]
    fn crossing_the_middle_band_exits() {
        let mut closes = calm(30);
        closes.extend([101.0, 99.9]);
        let signal = strategy().evaluate(&candles(&closes)).unwrap();
        assert_eq!(signal.action, SignalAction::Exit, "{}", signal.reason);
    }
}
