//! Retries of idempotent exchange calls (candles, positions, balances, order queries, cancels),
//! pure: the caller passes the attempt, the error, the time and a random number. Exponential
//! backoff with full jitter (a random delay up to `backoff_ms_initial × 2^(attempt−1)`, at most
//! `backoff_ms_max`); only failures that may pass are retried: never a refused key (`Auth`) or a
//! refusal (`Rejected`, `Duplicate`); a 429 waits at least its `Retry-After`; a ban longer than
//! the longest backoff is not waited out here (the circuit breaker takes it). Order creation never
//! comes here: it keeps the exactly-once flow of the order router.

use crate::exchange::ExchangeError;

/// `[retry]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts_max: u32,
    pub backoff_ms_initial: u64,
    pub backoff_ms_max: u64,
}

impl Default for RetryPolicy {
    /// The seed's recommendation: 3 attempts from 2 s.
    fn default() -> Self {
        Self { attempts_max: 3, backoff_ms_initial: 2_000, backoff_ms_max: 30_000 }
    }
}

impl RetryPolicy {
    /// How long to wait before attempt `attempt + 1` after `attempt` failed with `error`; `None`:
    /// do not retry. `random` is uniform in `[0, 1)`.
    pub fn delay_ms(&self, attempt: u32, error: &ExchangeError, now_ms: i64, random: f64) -> Option<u64> {
        if attempt >= self.attempts_max {
            return None;
        }
        let ceiling = self.backoff_ms_initial.saturating_mul(1 << (attempt - 1).min(20)).min(self.backoff_ms_max);
        let jittered = (ceiling as f64 * random.clamp(0.0, 1.0)) as u64;
        match error {
            ExchangeError::Auth { .. } | ExchangeError::Rejected { .. } | ExchangeError::Duplicate { .. } => None,
            ExchangeError::RateLimited { retry_after_ms } => {
                (*retry_after_ms <= self.backoff_ms_max).then(|| jittered.max(*retry_after_ms))
            }
            ExchangeError::Banned { until_ms } => {
                let wait_ms = (until_ms - now_ms).max(0) as u64;
                (wait_ms <= self.backoff_ms_max).then(|| jittered.max(wait_ms))
            }
            ExchangeError::Retryable { .. }
            | ExchangeError::Unreachable { .. }
            | ExchangeError::BreakerOpen { .. }
            | ExchangeError::UnknownOutcome { .. }
            | ExchangeError::Malformed { .. } => Some(jittered),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retryable() -> ExchangeError {
        ExchangeError::Retryable { detail: "connection refused".into() }
    }

    #[test]
    fn backoff_doubles_under_full_jitter_up_to_the_cap_and_stops_after_the_last_attempt() {
        let policy = RetryPolicy { attempts_max: 5, backoff_ms_initial: 2_000, backoff_ms_max: 5_000 };
        assert_eq!(policy.delay_ms(1, &retryable(), 0, 0.999_999), Some(1_999));
        assert_eq!(policy.delay_ms(2, &retryable(), 0, 0.5), Some(2_000));
        assert_eq!(policy.delay_ms(3, &retryable(), 0, 0.999_999), Some(4_999), "capped at backoff_ms_max");
        assert_eq!(policy.delay_ms(1, &retryable(), 0, 0.0), Some(0), "full jitter reaches zero");
        assert_eq!(policy.delay_ms(5, &retryable(), 0, 0.5), None);
    }

    #[test]
    fn refusals_are_never_retried_and_429s_and_short_bans_are_waited_out() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.delay_ms(1, &ExchangeError::Auth { detail: "-2015".into() }, 0, 0.5), None);
        assert_eq!(policy.delay_ms(1, &ExchangeError::Rejected { code: -1121, msg: "symbol".into() }, 0, 0.5), None);
        assert_eq!(policy.delay_ms(1, &ExchangeError::RateLimited { retry_after_ms: 1_500 }, 0, 0.1), Some(1_500));
        assert_eq!(policy.delay_ms(1, &ExchangeError::RateLimited { retry_after_ms: 60_000 }, 0, 0.1), None);
        assert_eq!(policy.delay_ms(1, &ExchangeError::Banned { until_ms: 10_000 }, 0, 0.0), Some(10_000));
        assert_eq!(policy.delay_ms(1, &ExchangeError::Banned { until_ms: 120_000 }, 0, 0.0), None, "the breaker's job");
        assert!(policy.delay_ms(1, &ExchangeError::UnknownOutcome { detail: "timeout".into() }, 0, 0.5).is_some());
    }
}
