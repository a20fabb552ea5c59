//! Seeded fault injection for `bulwark sim`. A [`FaultPlan`] has a global [`FaultSpec`] and
//! optional per-endpoint ones (an endpoint's spec replaces the global one for that endpoint; keys
//! look like `"POST /fapi/v1/order"`). Every request draws its faults from one seeded generator,
//! so a run with the same seed and the same request sequence meets the same faults.
//!
//! The plan's `user_stream` part ([`StreamFaultSpec`]) does the same for user data stream events:
//! each event a connection is about to send draws what happens to it (delivered, dropped,
//! duplicated, delayed, or the connection dropped, stalled or its key expired); its `market_stream`
//! part does it for the closed candles of market connections (no key to expire there).

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

/// Faults of the user data stream, drawn per event a connection is about to send (heartbeat
/// pings included: a quiet account's connection can drop or stall too). The rates are exclusive
/// shares of one draw.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamFaultSpec {
    /// The connection is closed instead of sending the event (the client reconnects; REST has it).
    pub disconnect_rate: f64,
    /// The connection stays open and sends nothing more (no event, no ping, no pong): Binance's
    /// answer on a wrong path. Only the client's silence watchdog finds it.
    pub stall_rate: f64,
    /// The account's listenKey expires now: `listenKeyExpired` instead of the event.
    pub expire_rate: f64,
    /// The event is sent twice.
    pub duplicate_rate: f64,
    /// The event is sent `delay_ms` later, after the ones behind it (out of order).
    pub delay_rate: f64,
    pub delay_ms: u64,
    /// The event is not sent at all (the REST state still has it).
    pub drop_rate: f64,
}

impl StreamFaultSpec {
    fn problems(&self, path: &str) -> Vec<String> {
        let rates = [
            ("disconnect_rate", self.disconnect_rate),
            ("stall_rate", self.stall_rate),
            ("expire_rate", self.expire_rate),
            ("duplicate_rate", self.duplicate_rate),
            ("delay_rate", self.delay_rate),
            ("drop_rate", self.drop_rate),
        ];
        let mut problems: Vec<String> = rates
            .iter()
            .filter(|(_, rate)| !(0.0..=1.0).contains(rate))
            .map(|(name, rate)| format!("{path}.{name}: must be from 0 to 1, got {rate}"))
            .collect();
        let total: f64 = rates.iter().map(|(_, rate)| rate).sum();
        if total > 1.0 + 1e-9 {
            problems.push(format!("{path}: the fault rates add up to {total}, more than 1"));
        }
        if self.delay_ms > DELAY_MS_MAX {
            problems.push(format!("{path}.delay_ms: at most {DELAY_MS_MAX}, got {}", self.delay_ms));
        }
        if self.delay_rate > 0.0 && self.delay_ms == 0 {
            problems.push(format!("{path}.delay_ms: must be set when delay_rate is"));
        }
        problems
    }
}

/// What happens to one user data stream event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamDraw {
    Deliver,
    Disconnect,
    Stall,
    Expire,
    Duplicate,
    Delay { ms: u64 },
    Drop,
}

impl StreamDraw {
    /// The name counted in `/sim/stats` (`None` for a delivery).
    pub fn fault_name(self) -> Option<&'static str> {
        match self {
            StreamDraw::Deliver => None,
            StreamDraw::Disconnect => Some("disconnect"),
            StreamDraw::Stall => Some("stall"),
            StreamDraw::Expire => Some("expire"),
            StreamDraw::Duplicate => Some("duplicate"),
            StreamDraw::Delay { .. } => Some("delay"),
            StreamDraw::Drop => Some("drop"),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultPlan {
    pub global: FaultSpec,
    pub endpoints: BTreeMap<String, FaultSpec>,
    /// Faults of every user data stream connection.
    pub user_stream: StreamFaultSpec,
    /// Faults of every market connection, drawn per closed candle (and per ping) it sends.
    pub market_stream: StreamFaultSpec,
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
        problems.extend(self.user_stream.problems(&format!("{prefix}.user_stream")));
        problems.extend(self.market_stream.problems(&format!("{prefix}.market_stream")));
        if self.market_stream.expire_rate > 0.0 {
            problems
                .push(format!("{prefix}.market_stream.expire_rate: a market connection has no listenKey to expire"));
        }
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

impl Faults {
    /// What happens to the next user data stream event (from the same seeded generator).
    pub fn draw_stream(&mut self) -> StreamDraw {
        draw_stream_event(&self.plan.user_stream, &mut self.random)
    }

    /// What happens to the next closed candle (or ping) a market connection sends.
    pub fn draw_market_stream(&mut self) -> StreamDraw {
        draw_stream_event(&self.plan.market_stream, &mut self.random)
    }
}

/// One draw of a stream fault plan: the rates are exclusive shares of one roll.
fn draw_stream_event(spec: &StreamFaultSpec, random: &mut ChaCha8Rng) -> StreamDraw {
    let outcomes = [
        (spec.disconnect_rate, StreamDraw::Disconnect),
        (spec.stall_rate, StreamDraw::Stall),
        (spec.expire_rate, StreamDraw::Expire),
        (spec.duplicate_rate, StreamDraw::Duplicate),
        (spec.delay_rate, StreamDraw::Delay { ms: spec.delay_ms }),
        (spec.drop_rate, StreamDraw::Drop),
    ];
    if outcomes.iter().all(|(rate, _)| *rate <= 0.0) {
        return StreamDraw::Deliver;
    }
    let roll: f64 = random.random();
    let mut edge = 0.0;
    for (rate, outcome) in outcomes {
        edge += rate;
        if roll < edge {
            return outcome;
        }
    }
    StreamDraw::Deliver
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(spec: FaultSpec) -> FaultPlan {
        FaultPlan {
            global: FaultSpec::default(),
            endpoints: BTreeMap::from([("POST /fapi/v1/order".to_owned(), spec)]),
            ..FaultPlan::default()
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
    fn stream_faults_are_drawn_at_their_rates_reproducibly_and_checked() {
        let user_stream = StreamFaultSpec {
            drop_rate: 0.2,
            duplicate_rate: 0.1,
            delay_rate: 0.1,
            delay_ms: 500,
            ..StreamFaultSpec::default()
        };
        let run = |seed| {
            let mut faults = Faults::new(FaultPlan { user_stream: user_stream.clone(), ..FaultPlan::default() }, seed);
            (0..10_000).map(|_| faults.draw_stream()).collect::<Vec<_>>()
        };
        let draws = run(5);
        assert_eq!(draws, run(5), "the same seed, the same faults");
        let count = |draw: StreamDraw| draws.iter().filter(|d| **d == draw).count();
        assert!((1_800..2_200).contains(&count(StreamDraw::Drop)), "{}", count(StreamDraw::Drop));
        assert!((850..1_150).contains(&count(StreamDraw::Duplicate)));
        assert!((850..1_150).contains(&count(StreamDraw::Delay { ms: 500 })));
        assert_eq!(count(StreamDraw::Stall) + count(StreamDraw::Disconnect) + count(StreamDraw::Expire), 0);
        // No stream fault planned: nothing drawn (the request faults' sequence is not disturbed).
        assert_eq!(Faults::new(FaultPlan::default(), 5).draw_stream(), StreamDraw::Deliver);
        let wrong = StreamFaultSpec { drop_rate: 0.8, stall_rate: 0.5, delay_rate: 0.1, ..StreamFaultSpec::default() };
        let problems = FaultPlan { user_stream: wrong, ..FaultPlan::default() }.problems("faults");
        assert!(problems.iter().any(|p| p.contains("faults.user_stream: the fault rates add up to")), "{problems:?}");
        assert!(problems.iter().any(|p| p == "faults.user_stream.delay_ms: must be set when delay_rate is"));
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
            ..FaultPlan::default()
        };
        let problems = bad.problems("sim.faults");
        assert!(problems.iter().any(|p| p.starts_with("sim.faults.global.error_5xx_rate")), "{problems:?}");
        assert!(problems.iter().any(|p| p.starts_with("sim.faults.global.hang_ms")), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("\"klines\": expected")), "{problems:?}");
    }
}
