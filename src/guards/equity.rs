//! The kill switch's memory: equity samples (wallet balance + unrealized PnL, read on every account
//! sync) over the drawdown look-back, and the peak among them. Pure: time is passed in. Bounded:
//! samples closer than [`SAMPLE_SPACING_MS_MIN`] to the previous one replace it, and at most
//! [`EQUITY_SAMPLES_MAX`] are kept.

use std::collections::VecDeque;

use crate::guards::EquityView;

/// Samples closer together than this are merged (the newer value wins, the peak is kept).
pub const SAMPLE_SPACING_MS_MIN: i64 = 1_000;
/// The most samples kept, whatever the look-back.
pub const EQUITY_SAMPLES_MAX: usize = 20_000;

#[derive(Debug, Clone)]
pub struct EquityTracker {
    lookback_ms: i64,
    /// (time, equity), oldest first.
    samples: VecDeque<(i64, f64)>,
}

impl EquityTracker {
    pub fn new(lookback_ms: i64) -> Self {
        Self { lookback_ms, samples: VecDeque::new() }
    }

    /// Records the equity read at `at_ms`; a non-finite value is ignored.
    pub fn record(&mut self, at_ms: i64, equity_usdt: f64) {
        if !equity_usdt.is_finite() {
            return;
        }
        match self.samples.back_mut() {
            // A higher value close to the previous one replaces it (a lower one is kept beside it,
            // so a peak is never overwritten by a fall).
            Some(last) if at_ms - last.0 < SAMPLE_SPACING_MS_MIN && equity_usdt >= last.1 => {
                *last = (at_ms, equity_usdt);
            }
            _ => self.samples.push_back((at_ms, equity_usdt)),
        }
        while self.samples.front().is_some_and(|(t, _)| at_ms - t > self.lookback_ms)
            || self.samples.len() > EQUITY_SAMPLES_MAX
        {
            self.samples.pop_front();
        }
    }

    /// The newest equity and the peak over the look-back, as of `now_ms`.
    pub fn view(&self, now_ms: i64) -> Option<EquityView> {
        self.view_since(now_ms, i64::MIN)
    }

    /// The same, counting only samples from `since_ms` on for the peak: when a kill switch clears,
    /// the drawdown it served is not counted again (otherwise a flat account could never trade).
    pub fn view_since(&self, now_ms: i64, since_ms: i64) -> Option<EquityView> {
        let current = *self.samples.back()?;
        let (peak_at_ms, peak_usdt) = self
            .samples
            .iter()
            .filter(|(t, _)| now_ms - t <= self.lookback_ms && *t >= since_ms)
            .fold(current, |best, sample| if sample.1 > best.1 { *sample } else { best });
        Some(EquityView { current_usdt: current.1, peak_usdt, peak_at_ms })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_is_the_highest_sample_within_the_look_back() {
        let mut tracker = EquityTracker::new(10_000);
        assert!(tracker.view(0).is_none());
        tracker.record(0, 1_000.0);
        tracker.record(2_000, 1_100.0);
        tracker.record(4_000, 1_040.0);
        let view = tracker.view(4_000).unwrap();
        assert_eq!((view.current_usdt, view.peak_usdt, view.peak_at_ms), (1_040.0, 1_100.0, 2_000));
        // The peak leaves the look-back.
        tracker.record(13_000, 1_030.0);
        let view = tracker.view(13_000).unwrap();
        assert_eq!((view.current_usdt, view.peak_usdt), (1_030.0, 1_040.0));
        tracker.record(13_100, f64::NAN);
        assert_eq!(tracker.view(13_100).unwrap().current_usdt, 1_030.0);
        // Counting from a kill switch's expiry on, the older peak is not counted.
        let fresh = tracker.view_since(13_100, 13_000).unwrap();
        assert_eq!((fresh.current_usdt, fresh.peak_usdt), (1_030.0, 1_030.0));
    }
}
