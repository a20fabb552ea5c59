//! The exchange's clock as seen from here: `exchange = anchor_exchange + (local - anchor_local) ×
//! rate`, from `GET /fapi/v1/time` samples. Binance's clock runs at rate 1 (measured rates within
//! 1 % of it are taken as exactly 1); `bulwark sim` replays markets faster than real time, so its
//! clock runs faster, and the same model follows it. Signed requests carry this estimate as their
//! `timestamp`; a `-1021` answer forces a re-sync.

/// Re-sync period once the rate is known to be 1 (a real exchange).
pub const SYNC_INTERVAL_MS_REAL_TIME: i64 = 30_000;
/// Re-sync period for an accelerated clock (small errors in the rate grow fast).
pub const SYNC_INTERVAL_MS_ACCELERATED: i64 = 2_000;
/// Shortest local baseline between two samples to estimate the rate from.
const RATE_BASELINE_MS_MIN: i64 = 200;
/// Rates this close to 1 are exactly 1.
const RATE_SNAP: f64 = 0.01;

#[derive(Debug, Clone, Default)]
pub struct ExchangeClock {
    /// Newest sample: local time at the middle of the round trip, and the exchange's time.
    anchor: Option<(i64, i64)>,
    /// How far the anchor's local time can be off (local ms): half the sample's round trip, plus
    /// the millisecond resolution.
    anchor_error_local_ms: i64,
    rate: Option<f64>,
    /// Relative error of `rate` (both samples' anchor errors over their baseline); 0 once the rate
    /// is snapped to exactly 1.
    rate_error: f64,
    /// Set by a `-1021`: the estimate is wrong, sync before the next signed request.
    stale: bool,
}

impl ExchangeClock {
    /// Records a `/time` answer received between `sent_local_ms` and `received_local_ms`.
    pub fn add_sample(&mut self, sent_local_ms: i64, received_local_ms: i64, exchange_ms: i64) {
        let round_trip_ms = (received_local_ms - sent_local_ms).max(0);
        let local_ms = sent_local_ms + round_trip_ms / 2;
        let anchor_error_local_ms = round_trip_ms / 2 + 1;
        if let Some((anchor_local_ms, anchor_exchange_ms)) = self.anchor
            && local_ms - anchor_local_ms >= RATE_BASELINE_MS_MIN
        {
            let baseline_ms = (local_ms - anchor_local_ms) as f64;
            let rate = (exchange_ms - anchor_exchange_ms) as f64 / baseline_ms;
            if (rate - 1.0).abs() < RATE_SNAP {
                self.rate = Some(1.0);
                self.rate_error = 0.0;
            } else {
                self.rate = Some(rate.clamp(0.01, 1_000_000.0));
                self.rate_error = (self.anchor_error_local_ms + anchor_error_local_ms) as f64 / baseline_ms;
            }
        }
        self.anchor = Some((local_ms, exchange_ms));
        self.anchor_error_local_ms = anchor_error_local_ms;
        self.stale = false;
    }

    /// The exchange's time now, if any sample was taken.
    pub fn now_ms(&self, local_ms: i64) -> Option<i64> {
        let (anchor_local_ms, anchor_exchange_ms) = self.anchor?;
        let rate = self.rate.unwrap_or(1.0);
        Some(anchor_exchange_ms + ((local_ms - anchor_local_ms) as f64 * rate).round() as i64)
    }

    /// How far `now_ms(local_ms)` may be from the exchange's real time (exchange ms): the anchor's
    /// error plus the rate's error over the time since the anchor, at the exchange's rate. For a
    /// real exchange this is half a round trip; for an accelerated one it is multiplied by the
    /// acceleration, which is why candle fetches wait for it.
    pub fn error_ms(&self, local_ms: i64) -> Option<i64> {
        let (anchor_local_ms, _) = self.anchor?;
        let rate = self.rate.unwrap_or(1.0);
        let elapsed_ms = (local_ms - anchor_local_ms).max(0) as f64;
        Some(((self.anchor_error_local_ms as f64 + elapsed_ms * self.rate_error) * rate).ceil() as i64)
    }

    /// Whether a sample is due: none yet, the rate still unknown, marked stale, or the last sample
    /// older than the re-sync period.
    pub fn needs_sync(&self, local_ms: i64) -> bool {
        let Some((anchor_local_ms, _)) = self.anchor else { return true };
        let age_ms = local_ms - anchor_local_ms;
        match self.rate {
            _ if self.stale => true,
            None => age_ms >= RATE_BASELINE_MS_MIN,
            Some(1.0) => age_ms >= SYNC_INTERVAL_MS_REAL_TIME,
            Some(_) => age_ms >= SYNC_INTERVAL_MS_ACCELERATED,
        }
    }

    pub fn invalidate(&mut self) {
        self.stale = true;
    }

    pub fn rate(&self) -> Option<f64> {
        self.rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_real_time_exchange_has_rate_one_and_a_constant_offset() {
        let mut clock = ExchangeClock::default();
        assert!(clock.needs_sync(0));
        clock.add_sample(1_000, 1_040, 5_000_020); // offset ≈ +4_999_000
        assert_eq!(clock.now_ms(1_020), Some(5_000_020));
        assert!(clock.needs_sync(1_300), "the rate is still unknown");
        clock.add_sample(31_000, 31_020, 5_030_012); // 1.0003: noise, snapped to 1
        assert_eq!(clock.rate(), Some(1.0));
        assert_eq!(clock.now_ms(41_010), Some(5_040_012));
        assert!(!clock.needs_sync(41_010));
        assert!(clock.needs_sync(61_011));
    }

    #[test]
    fn an_accelerated_exchange_is_followed() {
        let mut clock = ExchangeClock::default();
        clock.add_sample(0, 0, 1_000_000);
        clock.add_sample(1_000, 1_000, 1_300_000); // 300x
        assert_eq!(clock.rate(), Some(300.0));
        assert_eq!(clock.now_ms(1_500), Some(1_450_000));
        assert!(clock.needs_sync(3_000));
    }

    #[test]
    fn the_error_bound_is_half_a_round_trip_for_a_real_exchange() {
        let mut clock = ExchangeClock::default();
        clock.add_sample(1_000, 1_080, 5_000_040);
        clock.add_sample(31_000, 31_060, 5_030_030);
        assert_eq!(clock.rate(), Some(1.0));
        // Half of the newest 60 ms round trip plus 1 ms; the snapped rate adds nothing over time.
        assert_eq!(clock.error_ms(31_030), Some(31));
        assert_eq!(clock.error_ms(61_000), Some(31));
    }

    #[test]
    fn the_error_bound_of_an_accelerated_clock_grows_with_the_acceleration_and_the_time_since_sync() {
        let mut clock = ExchangeClock::default();
        clock.add_sample(0, 8, 1_000_000); // anchor error 5 ms
        clock.add_sample(1_999, 2_009, 1_600_000); // 300x; anchor error 6 ms; baseline 2_000 ms
        assert_eq!(clock.rate(), Some(300.0));
        // At the anchor: 6 ms × 300. A second later: (6 + 1_000 × 11 / 2_000) × 300.
        assert_eq!(clock.error_ms(2_004), Some(1_800));
        assert_eq!(clock.error_ms(3_004), Some(3_450));
    }

    #[test]
    fn a_stale_clock_asks_for_a_sync() {
        let mut clock = ExchangeClock::default();
        clock.add_sample(0, 0, 10);
        clock.add_sample(1_000, 1_000, 1_010);
        assert!(!clock.needs_sync(1_001));
        clock.invalidate();
        assert!(clock.needs_sync(1_001));
    }
}
