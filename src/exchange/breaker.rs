//! Circuit breakers (closed → open → half-open), pure: time is passed in. `failures_max`
//! failures within `window_ms` open a breaker for `open_ms` (seed Gap 3: 5 in 60 s, 5 minutes);
//! then one probe is let through: its success closes the breaker, its failure opens it again. A
//! 418 ban opens it until the ban ends. While open, nothing is sent: callers get the breaker's
//! name and `until` as their reason to skip.

use std::collections::VecDeque;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerPolicy {
    pub failures_max: u32,
    pub window_ms: i64,
    pub open_ms: i64,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self { failures_max: 5, window_ms: 60_000, open_ms: 300_000 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// A change of state, to log and notify once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub to: BreakerState,
    pub until_ms: Option<i64>,
    pub reason: String,
}

#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    policy: BreakerPolicy,
    state: BreakerState,
    /// Failure times in the window (closed state).
    failures: VecDeque<i64>,
    open_until_ms: i64,
    opened_at_ms: i64,
    probe_in_flight: bool,
    /// When the probe in flight was let through: a probe whose outcome never came back (its
    /// caller gave up) is replaced after `open_ms`, so the breaker cannot stay half-open forever.
    probe_started_ms: i64,
    last_failure: Option<String>,
}

/// Logs a transition of the breaker called `name` (each transition once, never each refused call).
pub fn log_transition(name: &str, transition: &Transition) {
    match transition.to {
        BreakerState::Open => {
            let until =
                transition.until_ms.map(|u| format!(" until {}", crate::clock::rfc3339_ms(u))).unwrap_or_default();
            tracing::warn!(target: "breaker", breaker = name, "circuit breaker {name} opened{until}: {}", transition.reason)
        }
        _ => tracing::info!(target: "breaker", breaker = name, state = transition.to.as_str(), "{}", transition.reason),
    }
}

/// Why a call may not go out now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub until_ms: i64,
    pub last_failure: Option<String>,
}

impl CircuitBreaker {
    pub fn new(policy: BreakerPolicy) -> Self {
        Self {
            policy,
            state: BreakerState::Closed,
            failures: VecDeque::new(),
            open_until_ms: 0,
            opened_at_ms: 0,
            probe_in_flight: false,
            probe_started_ms: 0,
            last_failure: None,
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    pub fn open_until_ms(&self) -> Option<i64> {
        (self.state != BreakerState::Closed).then_some(self.open_until_ms)
    }

    pub fn opened_at_ms(&self) -> Option<i64> {
        (self.state != BreakerState::Closed).then_some(self.opened_at_ms)
    }

    pub fn last_failure(&self) -> Option<&str> {
        self.last_failure.as_deref()
    }

    /// Whether a call may go out now. An open breaker past its time lets exactly one probe through
    /// (half-open); the transition, if any, is returned for the log.
    pub fn admit(&mut self, now_ms: i64) -> Result<Option<Transition>, Refused> {
        match self.state {
            BreakerState::Closed => Ok(None),
            BreakerState::Open if now_ms >= self.open_until_ms => {
                self.state = BreakerState::HalfOpen;
                self.probe_in_flight = true;
                self.probe_started_ms = now_ms;
                Ok(Some(Transition {
                    to: BreakerState::HalfOpen,
                    until_ms: None,
                    reason: "cool-down over: one probe request".to_owned(),
                }))
            }
            BreakerState::HalfOpen
                if !self.probe_in_flight || now_ms - self.probe_started_ms >= self.policy.open_ms =>
            {
                self.probe_in_flight = true;
                self.probe_started_ms = now_ms;
                Ok(None)
            }
            BreakerState::Open | BreakerState::HalfOpen => {
                Err(Refused { until_ms: self.open_until_ms, last_failure: self.last_failure.clone() })
            }
        }
    }

    /// The exchange answered (whatever it said): a half-open breaker closes. An answer to a call
    /// let through before the breaker opened does not close an open one (only its probe may).
    pub fn on_success(&mut self) -> Option<Transition> {
        match self.state {
            BreakerState::Closed => {
                self.failures.clear();
                None
            }
            BreakerState::Open => None,
            BreakerState::HalfOpen => {
                self.failures.clear();
                self.probe_in_flight = false;
                self.state = BreakerState::Closed;
                Some(Transition { to: BreakerState::Closed, until_ms: None, reason: "a request succeeded".to_owned() })
            }
        }
    }

    /// The call ended without telling whether the host works (our own rate-limit wait, a ban seen
    /// on another breaker): a probe in flight is released, so the next call probes again.
    pub fn release_probe(&mut self) {
        self.probe_in_flight = false;
    }

    /// A request failed without an answer (connection, timeout, 5xx, malformed, 429).
    pub fn on_failure(&mut self, now_ms: i64, detail: &str) -> Option<Transition> {
        self.last_failure = Some(detail.to_owned());
        self.probe_in_flight = false;
        match self.state {
            BreakerState::HalfOpen => Some(self.open(now_ms, now_ms + self.policy.open_ms, "the probe failed")),
            BreakerState::Open => None,
            BreakerState::Closed => {
                self.failures.push_back(now_ms);
                while self.failures.front().is_some_and(|at| now_ms - at >= self.policy.window_ms) {
                    self.failures.pop_front();
                }
                (self.failures.len() as u32 >= self.policy.failures_max).then(|| {
                    let reason = format!("{} failures within {} s", self.failures.len(), self.policy.window_ms / 1_000);
                    self.open(now_ms, now_ms + self.policy.open_ms, &reason)
                })
            }
        }
    }

    /// The host banned us (418) until `until_ms`: open until then, whatever the state.
    pub fn force_open(&mut self, now_ms: i64, until_ms: i64, reason: &str) -> Option<Transition> {
        self.last_failure = Some(reason.to_owned());
        if self.state == BreakerState::Open && self.open_until_ms >= until_ms {
            return None;
        }
        Some(self.open(now_ms, until_ms, reason))
    }

    fn open(&mut self, now_ms: i64, until_ms: i64, reason: &str) -> Transition {
        if self.state == BreakerState::Closed {
            self.opened_at_ms = now_ms;
        }
        self.state = BreakerState::Open;
        self.open_until_ms = until_ms;
        self.failures.clear();
        self.probe_in_flight = false;
        Transition { to: BreakerState::Open, until_ms: Some(until_ms), reason: reason.to_owned() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_failures_in_a_minute_open_it_for_five_minutes_then_one_probe_decides() {
        let mut breaker = CircuitBreaker::new(BreakerPolicy::default());
        for t in 0..4 {
            assert_eq!(breaker.on_failure(t * 1_000, "503"), None);
        }
        let opened = breaker.on_failure(4_000, "503").unwrap();
        assert_eq!((opened.to, opened.until_ms), (BreakerState::Open, Some(304_000)));
        assert_eq!(breaker.admit(200_000), Err(Refused { until_ms: 304_000, last_failure: Some("503".into()) }));
        // The cool-down ends: one probe, and nothing else meanwhile.
        assert_eq!(breaker.admit(304_000).unwrap().unwrap().to, BreakerState::HalfOpen);
        assert!(breaker.admit(304_001).is_err(), "one probe at a time");
        // The probe fails: open again for five minutes.
        assert_eq!(breaker.on_failure(304_500, "503").unwrap().until_ms, Some(604_500));
        assert_eq!(breaker.admit(604_500).unwrap().unwrap().to, BreakerState::HalfOpen);
        assert_eq!(breaker.on_success().unwrap().to, BreakerState::Closed);
        assert_eq!(breaker.admit(604_600), Ok(None));
    }

    #[test]
    fn a_probe_that_never_reports_is_replaced_and_a_late_answer_does_not_close_an_open_breaker() {
        let policy = BreakerPolicy { failures_max: 1, window_ms: 60_000, open_ms: 1_000 };
        let mut breaker = CircuitBreaker::new(policy);
        breaker.on_failure(0, "503");
        assert_eq!(breaker.on_success(), None, "an answer to an older call: still open");
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(breaker.admit(1_000).is_ok(), "the probe");
        assert!(breaker.admit(1_500).is_err());
        // The probe's caller gave up: after open_ms another probe goes.
        assert!(breaker.admit(2_000).is_ok());
        breaker.release_probe();
        assert!(breaker.admit(2_001).is_ok(), "released: the next call probes");
    }

    #[test]
    fn failures_spread_over_more_than_the_window_do_not_open_it_and_a_ban_does() {
        let mut breaker = CircuitBreaker::new(BreakerPolicy::default());
        for t in 0..10 {
            assert_eq!(breaker.on_failure(t * 20_000, "timeout"), None, "at most 3 in any 60 s");
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
        let banned = breaker.force_open(0, 120_000, "418 banned").unwrap();
        assert_eq!(banned.until_ms, Some(120_000));
        assert!(breaker.admit(119_999).is_err());
        assert!(breaker.admit(120_000).is_ok());
    }
}
