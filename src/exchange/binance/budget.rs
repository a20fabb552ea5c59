//! One request-weight budget per exchange host, shared by every user: Binance limits weight per
//! IP, not per key. Each answer's `X-MBX-USED-WEIGHT-1M` header says how much of the minute is
//! used; requests that would go past `HEADROOM` of the limit wait for the next minute instead of
//! provoking a 429. A 429 pauses every request for its `Retry-After`; a 418 ban refuses every
//! request until the ban ends, without sending anything.

use crate::exchange::ExchangeError;

/// Share of the per-minute limit bulwark allows itself.
const HEADROOM: f64 = 0.9;
const MINUTE_MS: i64 = 60_000;

/// What a request may do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    Go,
    /// Wait this long and ask again.
    Wait {
        ms: u64,
    },
    Refuse(ExchangeError),
}

#[derive(Debug, Clone)]
pub struct WeightBudget {
    limit_per_minute: u32,
    /// Weight used in `minute` (from the newest header, plus what was sent since).
    used: u32,
    /// Local minute number that `used` belongs to.
    minute: i64,
    banned_until_ms: Option<i64>,
    paused_until_ms: Option<i64>,
}

impl WeightBudget {
    pub fn new(limit_per_minute: u32) -> Self {
        Self { limit_per_minute, used: 0, minute: 0, banned_until_ms: None, paused_until_ms: None }
    }

    pub fn set_limit(&mut self, limit_per_minute: u32) {
        self.limit_per_minute = limit_per_minute.max(1);
    }

    pub fn used(&self) -> u32 {
        self.used
    }

    pub fn limit(&self) -> u32 {
        self.limit_per_minute
    }

    pub fn banned_until_ms(&self, now_ms: i64) -> Option<i64> {
        self.banned_until_ms.filter(|until| *until > now_ms)
    }

    fn roll(&mut self, now_ms: i64) {
        let minute = now_ms.div_euclid(MINUTE_MS);
        if minute != self.minute {
            self.minute = minute;
            self.used = 0;
        }
    }

    /// Asks to send a request of `weight`; on `Go` the weight is counted.
    pub fn admit(&mut self, weight: u32, now_ms: i64) -> Admission {
        if let Some(until_ms) = self.banned_until_ms(now_ms) {
            return Admission::Refuse(ExchangeError::Banned { until_ms });
        }
        if let Some(until_ms) = self.paused_until_ms.filter(|until| *until > now_ms) {
            return Admission::Wait { ms: (until_ms - now_ms) as u64 };
        }
        self.roll(now_ms);
        let allowed = (f64::from(self.limit_per_minute) * HEADROOM) as u32;
        if weight > 0 && self.used + weight > allowed {
            let next_minute_ms = (self.minute + 1) * MINUTE_MS;
            return Admission::Wait { ms: (next_minute_ms - now_ms).max(1) as u64 };
        }
        self.used += weight;
        Admission::Go
    }

    /// The exchange's own count for this minute. Answers arrive out of order, and the local count
    /// includes requests the exchange has not counted yet, so the higher of the two stands.
    pub fn observe_used(&mut self, used: u32, now_ms: i64) {
        self.roll(now_ms);
        self.used = self.used.max(used);
    }

    pub fn ban(&mut self, until_ms: i64) {
        self.banned_until_ms = Some(self.banned_until_ms.map_or(until_ms, |current| current.max(until_ms)));
    }

    pub fn pause(&mut self, until_ms: i64) {
        self.paused_until_ms = Some(self.paused_until_ms.map_or(until_ms, |current| current.max(until_ms)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_wait_for_the_next_minute_before_the_limit() {
        let mut budget = WeightBudget::new(100);
        let t = 1_700_000_050_000; // 10 s into a minute (minute 28_333_334 starts at ..._040_000)
        for _ in 0..18 {
            assert_eq!(budget.admit(5, t), Admission::Go);
        }
        assert_eq!(budget.used(), 90);
        assert_eq!(budget.admit(5, t), Admission::Wait { ms: 50_000 });
        assert_eq!(budget.admit(5, t + 50_000), Admission::Go, "a new minute");
    }

    #[test]
    fn the_exchange_header_is_authoritative() {
        let mut budget = WeightBudget::new(100);
        let t = 1_700_000_000_000;
        budget.observe_used(89, t);
        assert!(matches!(budget.admit(5, t), Admission::Wait { .. }));
        assert_eq!(budget.admit(0, t), Admission::Go, "weightless requests (orders) are not throttled");
        budget.observe_used(40, t);
        assert_eq!(budget.used(), 89, "an older answer with a lower count does not lower it");
    }

    #[test]
    fn a_ban_refuses_everything_until_it_ends() {
        let mut budget = WeightBudget::new(100);
        let t = 1_700_000_000_000;
        budget.ban(t + 30_000);
        assert_eq!(budget.admit(1, t), Admission::Refuse(ExchangeError::Banned { until_ms: t + 30_000 }));
        assert_eq!(budget.admit(0, t + 29_999), Admission::Refuse(ExchangeError::Banned { until_ms: t + 30_000 }));
        assert_eq!(budget.admit(1, t + 30_000), Admission::Go);
    }

    #[test]
    fn a_429_pauses_every_request() {
        let mut budget = WeightBudget::new(100);
        let t = 1_700_000_000_000;
        budget.pause(t + 2_000);
        assert_eq!(budget.admit(1, t + 500), Admission::Wait { ms: 1_500 });
        assert_eq!(budget.admit(1, t + 2_000), Admission::Go);
    }
}
