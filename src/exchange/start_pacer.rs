//! Spreads trader start-ups over time so that their REST reads (the start-up reconciliation, the
//! account snapshot, the first syncs) take at most a fixed share of the request weight Binance
//! allows per IP. Without it a fleet starting at once spends the whole minute's budget on the
//! first few hundred start-ups, every other start-up's reads wait past their bound and fail, and
//! nobody decides (issue 14: 464 of 500 users still starting after three candles).
//!
//! A token bucket over estimated weight: full at first (a minute's share may start at once), refilled
//! at `weight_per_minute`; a start-up that finds it short reserves its weight anyway (the bucket goes
//! below zero) and waits until the refill covers it, so start-ups go in the order they asked.
//! Pure: the caller passes the time and sleeps.

/// The start-up weight bucket. Written and read by trader start-ups (through the `Directory`).
#[derive(Debug, Clone)]
pub struct StartUpPacer {
    weight_per_minute: f64,
    /// Weight available now; below zero: reserved ahead by start-ups still waiting.
    tokens: f64,
    updated_ms: i64,
}

const MINUTE_MS: f64 = 60_000.0;

impl StartUpPacer {
    /// A full bucket: `weight_per_minute` of start-ups may begin at once.
    pub fn new(weight_per_minute: u32, now_ms: i64) -> Self {
        let weight_per_minute = f64::from(weight_per_minute.max(1));
        Self { weight_per_minute, tokens: weight_per_minute, updated_ms: now_ms }
    }

    /// Reserves `cost` weight for one start-up; returns how long it waits before it begins (ms).
    pub fn reserve(&mut self, cost: u32, now_ms: i64) -> u64 {
        let elapsed_ms = (now_ms - self.updated_ms).max(0) as f64;
        self.tokens = (self.tokens + elapsed_ms * self.weight_per_minute / MINUTE_MS).min(self.weight_per_minute);
        self.updated_ms = self.updated_ms.max(now_ms);
        self.tokens -= f64::from(cost);
        if self.tokens >= 0.0 { 0 } else { (-self.tokens * MINUTE_MS / self.weight_per_minute).ceil() as u64 }
    }
}

/// What one trader's start-up is estimated to cost on Binance: the position list and each symbol's
/// open orders (reconciliation, 5 + 1 a symbol), the account snapshot on its stream (position list
/// and balance, 10), the listenKey (1) and a first sync by REST while the stream connects (10).
pub fn start_up_weight(symbols: usize) -> u32 {
    26 + symbols as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minutes_share_starts_at_once_and_the_rest_in_order_at_the_refill_rate() {
        let mut pacer = StartUpPacer::new(1_200, 0);
        // 1,200 a minute, 30 each: 40 start at once.
        let waits: Vec<u64> = (0..42).map(|_| pacer.reserve(30, 0)).collect();
        assert!(waits[..40].iter().all(|&wait| wait == 0), "{waits:?}");
        // The 41st waits for 30 weight of refill (1.5 s), the 42nd for 60 (3 s).
        assert_eq!(&waits[40..], &[1_500, 3_000]);
        // Time passing pays back what was reserved ahead before anything new starts at once.
        assert_eq!(pacer.reserve(30, 1_500), 3_000);
    }

    #[test]
    fn an_idle_pacer_refills_to_one_minutes_share_and_no_more() {
        let mut pacer = StartUpPacer::new(600, 0);
        assert_eq!(pacer.reserve(600, 0), 0);
        assert_eq!(pacer.reserve(60, 0), 6_000);
        // An hour later the bucket is full again, not an hour's worth.
        assert_eq!(pacer.reserve(600, 3_600_000), 0);
        assert_eq!(pacer.reserve(1, 3_600_000), 100);
    }
}
