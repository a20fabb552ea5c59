//! The kill switch's memory: equity (wallet balance + unrealized PnL, read on every account sync)
//! and the peaks it may still be measured from over the drawdown look-back. Pure: time is passed
//! in. Bounded and durable: only the samples that can still be a peak are kept (each one higher
//! than every sample after it: the suffix maxima), at most [`EQUITY_PEAKS_MAX`] of them, and they
//! are what a trader stores and reloads ([`EquityTracker::peaks`] / [`EquityTracker::restore`]),
//! so that a crash or a restart never measures drawdown from a lower peak than before.

use std::collections::VecDeque;

use crate::guards::EquityView;

/// The most peak candidates kept. Beyond it the two oldest are merged into one that keeps the
/// higher value with the later time: the peak it stands for lasts longer than it would have, never
/// shorter (the kill switch can only be stricter for it, never looser).
pub const EQUITY_PEAKS_MAX: usize = 512;

#[derive(Debug, Clone, PartialEq)]
pub struct EquityTracker {
    lookback_ms: i64,
    /// The newest equity read (time, value); `None` until a sync reads it.
    current: Option<(i64, f64)>,
    /// Suffix maxima within the look-back, oldest first: each sample is the highest of every
    /// sample from its time on, so values strictly decrease; the newest sample is always last.
    peaks: VecDeque<(i64, f64)>,
}

impl EquityTracker {
    pub fn new(lookback_ms: i64) -> Self {
        Self { lookback_ms, current: None, peaks: VecDeque::new() }
    }

    /// Records the equity read at `at_ms`; a non-finite value is ignored.
    pub fn record(&mut self, at_ms: i64, equity_usdt: f64) {
        if !equity_usdt.is_finite() {
            return;
        }
        self.current = Some((at_ms, equity_usdt));
        while self.peaks.back().is_some_and(|(_, value)| *value <= equity_usdt) {
            self.peaks.pop_back();
        }
        self.peaks.push_back((at_ms, equity_usdt));
        self.forget_before(at_ms - self.lookback_ms);
        while self.peaks.len() > EQUITY_PEAKS_MAX {
            let (Some(oldest), Some(next)) = (self.peaks.pop_front(), self.peaks.pop_front()) else { break };
            self.peaks.push_front((next.0, oldest.1));
        }
    }

    fn forget_before(&mut self, oldest_ms: i64) {
        while self.peaks.front().is_some_and(|(at_ms, _)| *at_ms < oldest_ms) {
            self.peaks.pop_front();
        }
    }

    /// The newest equity and the peak over the look-back, as of `now_ms`.
    pub fn view(&self, now_ms: i64) -> Option<EquityView> {
        self.view_since(now_ms, i64::MIN)
    }

    /// The same, counting only samples from `since_ms` on for the peak: when a kill switch clears,
    /// the drawdown it served is not counted again (otherwise a flat account could never trade).
    pub fn view_since(&self, now_ms: i64, since_ms: i64) -> Option<EquityView> {
        let (current_at_ms, current_usdt) = self.current?;
        // The first candidate from `since_ms` on is the highest sample from then on.
        let (peak_at_ms, peak_usdt) = self
            .peaks
            .iter()
            .find(|(at_ms, _)| *at_ms >= since_ms && now_ms - at_ms <= self.lookback_ms)
            .copied()
            .filter(|(_, peak)| *peak > current_usdt)
            .unwrap_or((current_at_ms, current_usdt));
        Some(EquityView { current_usdt, peak_usdt, peak_at_ms })
    }

    /// What must outlive this trader for the kill switch to judge the same after a restart: the
    /// peak candidates (time, equity), oldest first.
    pub fn peaks(&self) -> Vec<(i64, f64)> {
        self.peaks.iter().copied().collect()
    }

    /// Takes back the peak candidates a previous incarnation stored (merged with any recorded
    /// since). The current equity is not restored: the next sync reads it.
    pub fn restore(&mut self, peaks: &[(i64, f64)]) {
        let recorded: Vec<(i64, f64)> = self.peaks.drain(..).collect();
        let mut all: Vec<(i64, f64)> = peaks.iter().copied().filter(|(_, value)| value.is_finite()).collect();
        all.extend(recorded);
        all.sort_by_key(|(at_ms, _)| *at_ms);
        for (at_ms, value) in all {
            while self.peaks.back().is_some_and(|(_, kept)| *kept <= value) {
                self.peaks.pop_back();
            }
            self.peaks.push_back((at_ms, value));
        }
        if let Some((newest_ms, _)) = self.peaks.back().copied() {
            self.forget_before(newest_ms - self.lookback_ms);
        }
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

    #[test]
    fn restored_peaks_measure_drawdown_as_before_the_restart() {
        let mut before = EquityTracker::new(60_000);
        for (at_ms, equity) in [(0, 10_000.0), (1_000, 10_200.0), (2_000, 9_900.0), (3_000, 9_800.0)] {
            before.record(at_ms, equity);
        }
        let stored = before.peaks();
        assert_eq!(stored, vec![(1_000, 10_200.0), (2_000, 9_900.0), (3_000, 9_800.0)], "suffix maxima");
        let mut after = EquityTracker::new(60_000);
        after.restore(&stored);
        assert!(after.view(3_500).is_none(), "no current equity until a sync reads it");
        after.record(4_000, 9_700.0);
        let view = after.view(4_000).unwrap();
        assert_eq!((view.peak_usdt, view.peak_at_ms, view.current_usdt), (10_200.0, 1_000, 9_700.0));
        // Once the old peak leaves the look-back, the next candidate stands.
        let later = after.view(61_500).unwrap();
        assert_eq!(later.peak_usdt, 9_900.0);
    }

    #[test]
    fn a_full_memory_merges_its_oldest_peaks_towards_stricter_never_looser() {
        let mut tracker = EquityTracker::new(i64::MAX / 4);
        // Falling equity: every sample is a candidate.
        for i in 0..(EQUITY_PEAKS_MAX as i64 + 10) {
            tracker.record(i * 1_000, 100_000.0 - i as f64);
        }
        assert_eq!(tracker.peaks().len(), EQUITY_PEAKS_MAX);
        let peaks = tracker.peaks();
        // The highest value is still there, and now lasts as long as a later sample would.
        assert_eq!(peaks[0].1, 100_000.0);
        assert!(peaks[0].0 > 0);
        assert!(peaks.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 > w[1].1), "{:?}", &peaks[..3]);
    }
}
