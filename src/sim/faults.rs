//! Seeded fault injection for `bulwark sim`. A [`FaultPlan`] has a global [`FaultSpec`] and
//! optional per-endpoint ones (an endpoint's spec replaces the global one for that endpoint; keys
//! look like `"POST /fapi/v1/order"`). Every request draws its faults from one seeded generator,
//! so a run with the same seed and the same request sequence meets the same faults.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::limits::excerpt;

/// Faults for one endpoint (or all).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultSpec {
    /// Added to every answer.
    pub latency_ms: u64,
    /// Share of requests refused with 503 "Service Unavailable." (nothing executed).
    pub error_5xx_rate: f64,
    /// Share of requests executed and then answered 503 "Unknown error…" (outcome unknown).
    pub unknown_503_rate: f64,
    /// Share of requests held for `hang_ms` before being processed (the client times out; the
    /// request is processed late, and the receive window usually refuses it then).
    pub hang_rate: f64,
    pub hang_ms: u64,
    /// Share of requests executed and then answered with a broken connection.
    pub lost_response_rate: f64,
    /// Share of requests executed and then answered with a body that is not JSON.
    pub malformed_rate: f64,
    /// The next this-many requests are refused with 429.
    pub burst_429: u32,
    /// Ban the client (418) for this many seconds, from when the plan is applied.
    pub ban_418_secs: u64,
    /// Shifts the exchange's clock (what `/fapi/v1/time` says and what signed timestamps are
    /// checked against).
    pub clock_skew_ms: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultPlan {
    pub global: FaultSpec,
    pub endpoints: BTreeMap<String, FaultSpec>,
}

/// Longest hang or latency a plan may ask for.
const DELAY_MS_MAX: u64 = 600_000;
/// Longest ban a plan may ask for.
const BAN_SECS_MAX: u64 = 86_400;

impl FaultSpec {
    fn problems(&self, path: &str) -> Vec<String> {
        let mut problems = Vec::new();
        for (name, rate) in [
            ("error_5xx_rate", self.error_5xx_rate),
            ("unknown_503_rate", self.unknown_503_rate),
            ("hang_rate", self.hang_rate),
            ("lost_response_rate", self.lost_response_rate),
            ("malformed_rate", self.malformed_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                problems.push(format!("{path}.{name}: must be from 0 to 1, got {rate}"));
            }
        }
        let total = self.error_5xx_rate
            + self.unknown_503_rate
            + self.hang_rate
            + self.lost_response_rate
            + self.malformed_rate;
        if total > 1.0 + 1e-9 {
            problems.push(format!("{path}: the fault rates add up to {total}, more than 1"));
        }
        for (name, ms) in [("latency_ms", self.latency_ms), ("hang_ms", self.hang_ms)] {
            if ms > DELAY_MS_MAX {
                problems.push(format!("{path}.{name}: at most {DELAY_MS_MAX}, got {ms}"));
            }
        }
        if self.hang_rate > 0.0 && self.hang_ms == 0 {
            problems.push(format!("{path}.hang_ms: must be set when hang_rate is"));
        }
        if self.ban_418_secs > BAN_SECS_MAX {
            problems.push(format!("{path}.ban_418_secs: at most {BAN_SECS_MAX}, got {}", self.ban_418_secs));
        }
        problems
    }
}

impl FaultPlan {
    /// Every problem, each naming its field.
    pub fn problems(&self, prefix: &str) -> Vec<String> {
        let mut problems = self.global.problems(&format!("{prefix}.global"));
        for (endpoint, spec) in &self.endpoints {
            if !endpoint.contains(' ') || !endpoint.contains('/') {
                problems.push(format!("{prefix}.endpoints.{:?}: expected \"METHOD /path\"", excerpt(endpoint)));
            }
            problems.extend(spec.problems(&format!("{prefix}.endpoints.{:?}", excerpt(endpoint))));
        }
        problems
    }

    pub fn spec(&self, endpoint: &str) -> &FaultSpec {
        self.endpoints.get(endpoint).unwrap_or(&self.global)
    }

    /// The longest ban any spec asks for.
    pub fn ban_secs(&self) -> u64 {
        self.endpoints.values().map(|s| s.ban_418_secs).chain([self.global.ban_418_secs]).max().unwrap_or(0)
    }
}

/// What happens after a request is executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aftermath {
    Answer,
    /// 503 "Unknown error…": executed, outcome unknown to the client.
    Unknown503,
    /// Executed; the connection breaks before the answer is complete.
    LoseResponse,
    /// Executed; the answer is not JSON.
    Malformed,
}

/// The faults one request meets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Draw {
    pub latency_ms: u64,
    pub refuse_429: bool,
    pub refuse_5xx: bool,
    pub hang_ms: Option<u64>,
    pub aftermath: Aftermath,
    pub clock_skew_ms: i64,
}

/// The live plan, its random source and its remaining 429 bursts.
#[derive(Debug)]
pub struct Faults {
    plan: FaultPlan,
    random: ChaCha8Rng,
    /// Remaining burst per endpoint key (or `"*"` for the global spec).
    bursts_left: BTreeMap<String, u32>,
}

impl Faults {
    pub fn new(plan: FaultPlan, seed: u64) -> Self {
        let mut faults = Self {
            plan: FaultPlan::default(),
            random: ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_fa17),
            bursts_left: BTreeMap::new(),
        };
        faults.apply(plan);
        faults
    }

    pub fn plan(&self) -> &FaultPlan {
        &self.plan
    }

    /// Replaces the plan (bursts start over).
    pub fn apply(&mut self, plan: FaultPlan) {
        self.bursts_left = plan
            .endpoints
            .iter()
            .map(|(endpoint, spec)| (endpoint.clone(), spec.burst_429))
            .chain([("*".to_owned(), plan.global.burst_429)])
            .filter(|(_, n)| *n > 0)
            .collect();
        self.plan = plan;
    }

    /// The exchange clock's skew now (for `/fapi/v1/time` and timestamp checks).
    pub fn clock_skew_ms(&self, endpoint: &str) -> i64 {
        self.plan.spec(endpoint).clock_skew_ms
    }

    pub fn draw(&mut self, endpoint: &str) -> Draw {
        let key = if self.plan.endpoints.contains_key(endpoint) { endpoint.to_owned() } else { "*".to_owned() };
        let spec = self.plan.spec(endpoint).clone();
        let refuse_429 = match self.bursts_left.get_mut(&key) {
            Some(left) if *left > 0 => {
                *left -= 1;
                true
            }
            _ => false,
        };
        // One draw decides among the mutually exclusive faults.
        let roll: f64 = self.random.random();
        let mut edge = spec.error_5xx_rate;
        let refuse_5xx = roll < edge;
        let mut hang_ms = None;
        let mut aftermath = Aftermath::Answer;
        if !refuse_5xx {
            for (rate, outcome) in [
                (spec.hang_rate, None),
                (spec.unknown_503_rate, Some(Aftermath::Unknown503)),
                (spec.lost_response_rate, Some(Aftermath::LoseResponse)),
                (spec.malformed_rate, Some(Aftermath::Malformed)),
            ] {
                let start = edge;
                edge += rate;
                if roll >= start && roll < edge {
                    match outcome {
                        None => hang_ms = Some(spec.hang_ms),
                        Some(outcome) => aftermath = outcome,
                    }
                    break;
                }
            }
        }
        Draw {
            latency_ms: spec.latency_ms,
            refuse_429,
            refuse_5xx,
            hang_ms,
            aftermath,
            clock_skew_ms: spec.clock_skew_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(spec: FaultSpec) -> FaultPlan {
        FaultPlan {
            global: FaultSpec::default(),
            endpoints: BTreeMap::from([("POST /fapi/v1/order".to_owned(), spec)]),
        }
    }

    #[test]
    fn rates_are_honoured_and_reproducible() {
        let spec = FaultSpec { lost_response_rate: 0.2, hang_rate: 0.1, hang_ms: 3_000, ..FaultSpec::default() };
        let run = |seed| {
            let mut faults = Faults::new(plan(spec.clone()), seed);
            (0..10_000).map(|_| faults.draw("POST /fapi/v1/order")).collect::<Vec<_>>()
        };
        let draws = run(7);
        assert_eq!(draws, run(7), "the same seed, the same faults");
        let lost = draws.iter().filter(|d| d.aftermath == Aftermath::LoseResponse).count();
        let hung = draws.iter().filter(|d| d.hang_ms == Some(3_000)).count();
        assert!((1_800..2_200).contains(&lost), "{lost}");
        assert!((850..1_150).contains(&hung), "{hung}");
        assert!(draws.iter().all(|d| !(d.hang_ms.is_some() && d.aftermath != Aftermath::Answer)), "exclusive");
    }

    #[test]
    fn an_endpoint_spec_replaces_the_global_one() {
        let mut faults = Faults::new(plan(FaultSpec { error_5xx_rate: 1.0, ..FaultSpec::default() }), 1);
        assert!(faults.draw("POST /fapi/v1/order").refuse_5xx);
        assert!(!faults.draw("GET /fapi/v1/klines").refuse_5xx);
    }

    #[test]
    fn bursts_run_out() {
        let mut faults = Faults::new(
            FaultPlan { global: FaultSpec { burst_429: 2, ..FaultSpec::default() }, ..FaultPlan::default() },
            1,
        );
        let refused: Vec<bool> = (0..4).map(|_| faults.draw("GET /fapi/v1/klines").refuse_429).collect();
        assert_eq!(refused, [true, true, false, false]);
    }

    #[test]
    fn bad_plans_are_named() {
        let bad = FaultPlan {
            global: FaultSpec { error_5xx_rate: 1.5, hang_rate: 0.1, ..FaultSpec::default() },
            endpoints: BTreeMap::from([("klines".to_owned(), FaultSpec::default())]),
        };
        let problems = bad.problems("sim.faults");
        assert!(problems.iter().any(|p| p.starts_with("sim.faults.global.error_5xx_rate")), "{problems:?}");
        assert!(problems.iter().any(|p| p.starts_with("sim.faults.global.hang_ms")), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("\"klines\": expected")), "{problems:?}");
    }
}
