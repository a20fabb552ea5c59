//! Restart arithmetic, as a plain struct with the time passed in: exponential backoff with jitter
//! and an OTP-style restart-intensity window ("more than `max_restarts` failures within
//! `within_ms` and the supervisor gives up").

use std::collections::VecDeque;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The `[supervisor]` settings for one kind of child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    pub max_restarts: u32,
    pub within_ms: i64,
    pub backoff_ms_initial: u64,
    pub backoff_ms_max: u64,
}

/// Upper bound of the random stretch added to each backoff, as a fraction of it. With the base
/// doubling each time and a stretch below 100 %, successive backoffs never shrink.
const JITTER_FRACTION: f64 = 0.25;

/// What to do after a child failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartDecision {
    /// Restart after `backoff_ms`; `failures_in_window` counts this failure.
    Restart { backoff_ms: u64, failures_in_window: u32 },
    /// Too many failures in the window: stop restarting.
    GiveUp { failures_in_window: u32 },
}

/// Failure history of one child.
#[derive(Debug)]
pub struct RestartTracker {
    policy: RestartPolicy,
    /// Failure times inside the window, oldest first; never longer than `max_restarts + 1`.
    failures_ms: VecDeque<i64>,
    /// Restarts ever granted (for status output).
    restarts_total: u32,
    jitter: ChaCha8Rng,
}

impl RestartTracker {
    /// `jitter_seed` makes the jitter reproducible (derive it from the child's name).
    pub fn new(policy: RestartPolicy, jitter_seed: u64) -> Self {
        Self { policy, failures_ms: VecDeque::new(), restarts_total: 0, jitter: ChaCha8Rng::seed_from_u64(jitter_seed) }
    }

    pub fn policy(&self) -> RestartPolicy {
        self.policy
    }

    pub fn restarts_total(&self) -> u32 {
        self.restarts_total
    }

    /// Records a failure at `now_ms` and decides.
    pub fn on_failure(&mut self, now_ms: i64) -> RestartDecision {
        self.failures_ms.push_back(now_ms);
        while self.failures_ms.front().is_some_and(|&t| now_ms - t > self.policy.within_ms) {
            self.failures_ms.pop_front();
        }
        let failures_in_window = self.failures_ms.len() as u32;
        if failures_in_window > self.policy.max_restarts {
            return RestartDecision::GiveUp { failures_in_window };
        }
        self.restarts_total += 1;
        let exponent = (failures_in_window - 1).min(30);
        let base_ms = self.policy.backoff_ms_initial.saturating_mul(1_u64 << exponent).min(self.policy.backoff_ms_max);
        let stretch_ms = (base_ms as f64 * JITTER_FRACTION * self.jitter.random::<f64>()) as u64;
        let backoff_ms = (base_ms + stretch_ms).min(self.policy.backoff_ms_max);
        RestartDecision::Restart { backoff_ms, failures_in_window }
    }

    /// Forgets the failure history (after an operator or the healer re-admits the child).
    pub fn reset(&mut self) {
        self.failures_ms.clear();
    }
}

/// A stable seed from a name (for per-child jitter).
pub fn seed_from_name(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RestartPolicy {
        RestartPolicy { max_restarts: 3, within_ms: 60_000, backoff_ms_initial: 500, backoff_ms_max: 30_000 }
    }

    fn backoff(decision: RestartDecision) -> u64 {
        match decision {
            RestartDecision::Restart { backoff_ms, .. } => backoff_ms,
            other => panic!("expected a restart, got {other:?}"),
        }
    }

    #[test]
    fn backoff_grows_exponentially_within_its_bounds() {
        let mut tracker = RestartTracker::new(policy(), 1);
        let delays: Vec<u64> = (0..3).map(|i| backoff(tracker.on_failure(i * 1_000))).collect();
        for (i, delay) in delays.iter().enumerate() {
            let base = 500 << i;
            assert!(
                (base..=base + base / 4).contains(delay),
                "restart {i}: {delay} ms not in [{base}, {}]",
                base + base / 4
            );
        }
        assert!(delays.windows(2).all(|w| w[0] < w[1]), "{delays:?}");
    }

    #[test]
    fn backoff_is_capped() {
        let policy =
            RestartPolicy { max_restarts: 100, within_ms: 1_000_000, backoff_ms_initial: 1_000, backoff_ms_max: 5_000 };
        let mut tracker = RestartTracker::new(policy, 2);
        let delays: Vec<u64> = (0..10).map(|i| backoff(tracker.on_failure(i))).collect();
        assert!(delays.iter().all(|d| *d <= 5_000), "{delays:?}");
        assert_eq!(*delays.last().unwrap(), 5_000);
    }

    #[test]
    fn more_than_max_restarts_in_the_window_gives_up() {
        let mut tracker = RestartTracker::new(policy(), 3);
        for t in [0, 10_000, 20_000] {
            assert!(matches!(tracker.on_failure(t), RestartDecision::Restart { .. }));
        }
        assert_eq!(tracker.on_failure(30_000), RestartDecision::GiveUp { failures_in_window: 4 });
        assert_eq!(tracker.restarts_total(), 3);
    }

    #[test]
    fn failures_outside_the_window_are_forgotten() {
        let mut tracker = RestartTracker::new(policy(), 4);
        for t in [0, 10_000, 20_000] {
            tracker.on_failure(t);
        }
        // 61 s after the first failure, only two remain in the window.
        match tracker.on_failure(61_000) {
            RestartDecision::Restart { failures_in_window, backoff_ms } => {
                assert_eq!(failures_in_window, 3);
                assert!(backoff_ms >= 2_000);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn jitter_is_reproducible_per_seed() {
        let run = |seed| {
            let mut tracker = RestartTracker::new(policy(), seed);
            (0..3).map(|i| backoff(tracker.on_failure(i))).collect::<Vec<_>>()
        };
        assert_eq!(run(9), run(9));
        assert_ne!(run(9), run(10));
    }

    #[test]
    fn reset_forgets_history() {
        let mut tracker = RestartTracker::new(policy(), 5);
        for t in 0..4 {
            tracker.on_failure(t);
        }
        tracker.reset();
        assert!(matches!(tracker.on_failure(5), RestartDecision::Restart { failures_in_window: 1, .. }));
    }
}
