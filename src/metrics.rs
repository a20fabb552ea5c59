//! Process metrics for `GET /metrics` (Prometheus text format).
//!
//! Two kinds: events counted as they happen ([`Metrics`]: exchange requests and their latency by
//! endpoint, orders by result, guard blocks by guard), held in one long-lived registry shared
//! through the [`Directory`](crate::actors::Directory) and the exchange wrapper; and states read at
//! scrape time ([`Snapshot`]: decisions, users by state, restarts and quarantines, breakers,
//! failure points, outbox depth, request weight), encoded into a fresh registry next to them.

use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Counted as it happens. Cheap to clone (the vectors are shared handles).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    exchange_requests: IntCounterVec,
    exchange_seconds: HistogramVec,
    orders: IntCounterVec,
    guard_blocks: IntCounterVec,
    account_syncs: IntCounterVec,
    stream_order_updates: IntCounterVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let exchange_requests = IntCounterVec::new(
            Opts::new("bulwark_exchange_requests_total", "Exchange requests by endpoint and outcome."),
            &["endpoint", "outcome"],
        )
        .expect("Invariant: valid metric");
        let exchange_seconds = HistogramVec::new(
            HistogramOpts::new("bulwark_exchange_request_seconds", "Exchange request latency by endpoint.")
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["endpoint"],
        )
        .expect("Invariant: valid metric");
        let orders =
            IntCounterVec::new(Opts::new("bulwark_orders_total", "Order placements by how they ended."), &["result"])
                .expect("Invariant: valid metric");
        let guard_blocks = IntCounterVec::new(
            Opts::new("bulwark_guard_blocks_total", "Entry signals blocked, by the guard that blocked them."),
            &["guard"],
        )
        .expect("Invariant: valid metric");
        let account_syncs = IntCounterVec::new(
            Opts::new(
                "bulwark_account_syncs_total",
                "Account syncs before a decision, by where the account was read: `book` (the verified account stream, no request) or `rest`.",
            ),
            &["source"],
        )
        .expect("Invariant: valid metric");
        let stream_order_updates = IntCounterVec::new(
            Opts::new(
                "bulwark_stream_order_updates_total",
                "Updates of bulwark's open orders from the account stream: `recorded`, `already_recorded` (a REST read was first), `waiting_for_placement` (it arrived before the order's placement was recorded; recorded once it is), or `left_to_rest` (a fill did not follow on from the recorded ones, or too many updates wait).",
            ),
            &["result"],
        )
        .expect("Invariant: valid metric");
        for metric in [
            exchange_requests.clone(),
            orders.clone(),
            guard_blocks.clone(),
            account_syncs.clone(),
            stream_order_updates.clone(),
        ] {
            registry.register(Box::new(metric)).expect("Invariant: registered once");
        }
        registry.register(Box::new(exchange_seconds.clone())).expect("Invariant: registered once");
        Self {
            registry,
            exchange_requests,
            exchange_seconds,
            orders,
            guard_blocks,
            account_syncs,
            stream_order_updates,
        }
    }

    /// One exchange request: `endpoint` (`klines`, `create_order`, ...), `outcome` (`ok` or an
    /// error class), how long it took.
    pub fn exchange_request(&self, endpoint: &str, outcome: &str, elapsed: Duration) {
        self.exchange_requests.with_label_values(&[endpoint, outcome]).inc();
        self.exchange_seconds.with_label_values(&[endpoint]).observe(elapsed.as_secs_f64());
    }

    /// A request the endpoint's circuit breaker refused (nothing was sent: no latency to observe).
    pub fn exchange_refused(&self, endpoint: &str) {
        self.exchange_requests.with_label_values(&[endpoint, "breaker_open"]).inc();
    }

    /// A placement ended: `filled`, `open`, `rejected`, `not_placed`, `unknown`, `not_committed`, ...
    pub fn order(&self, result: &str) {
        self.orders.with_label_values(&[result]).inc();
    }

    /// An account sync answered from `source` (`book` or `rest`).
    pub fn account_sync(&self, source: &str) {
        self.account_syncs.with_label_values(&[source]).inc();
    }

    /// Account syncs answered from `source` so far.
    pub fn account_syncs(&self, source: &str) -> u64 {
        self.account_syncs.with_label_values(&[source]).get()
    }

    /// An update of one of bulwark's open orders from the stream: `recorded`, `already_recorded`,
    /// `waiting_for_placement` or `left_to_rest`.
    pub fn stream_order_update(&self, result: &str) {
        self.stream_order_updates.with_label_values(&[result]).inc();
    }

    /// Stream order updates with `result` so far.
    pub fn stream_order_updates(&self, result: &str) -> u64 {
        self.stream_order_updates.with_label_values(&[result]).get()
    }

    /// A guard blocked an entry signal.
    pub fn guard_block(&self, guard: &str) {
        self.guard_blocks.with_label_values(&[guard]).inc();
    }

    /// The counted metrics and `snapshot`, in the Prometheus text format.
    pub fn encode(&self, snapshot: &Snapshot) -> String {
        let scraped = snapshot.registry();
        let mut families = self.registry.gather();
        families.extend(scraped.gather());
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut text = Vec::new();
        TextEncoder::new().encode(&families, &mut text).expect("Invariant: text encoding of valid metrics");
        String::from_utf8(text).expect("Invariant: the text format is UTF-8")
    }
}

/// States read at scrape time.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Per user: (decisions, skipped iterations) since start.
    pub decisions: Vec<(String, u64, u64)>,
    /// Per supervised actor: (actor, user or "", state, restarts).
    pub actors: Vec<(String, String, String, u32)>,
    /// Per breaker: (name, 0 closed / 1 half-open / 2 open).
    pub breakers: Vec<(String, i64)>,
    /// Per failure point: (id, category, 0 ok / 1 warn / 2 critical / 3 unknown).
    pub failure_points: Vec<(String, String, i64)>,
    pub outbox_depth: usize,
    pub outbox_capacity: usize,
    pub weight_used: Option<u32>,
    pub weight_limit: Option<u32>,
}

impl Snapshot {
    fn registry(&self) -> Registry {
        let registry = Registry::new();
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let gauge = IntGaugeVec::new(Opts::new(name, help), labels).expect("Invariant: valid metric");
            registry.register(Box::new(gauge.clone())).expect("Invariant: registered once");
            gauge
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let counter = IntCounterVec::new(Opts::new(name, help), labels).expect("Invariant: valid metric");
            registry.register(Box::new(counter.clone())).expect("Invariant: registered once");
            counter
        };
        let gauge = |name: &str, help: &str, value: i64| {
            let gauge = IntGauge::new(name, help).expect("Invariant: valid metric");
            gauge.set(value);
            registry.register(Box::new(gauge)).expect("Invariant: registered once");
        };

        let decisions = counter_vec(
            "bulwark_decisions_total",
            "Decisions made (the strategy ran and was acted on), per user.",
            &["user"],
        );
        let skipped = counter_vec(
            "bulwark_skipped_iterations_total",
            "Iterations that decided nothing, with a reason, per user.",
            &["user"],
        );
        for (user, made, skips) in &self.decisions {
            decisions.with_label_values(&[user]).inc_by(*made);
            skipped.with_label_values(&[user]).inc_by(*skips);
        }
        let restarts = counter_vec(
            "bulwark_actor_restarts_total",
            "Restarts of each supervised actor since the process started.",
            &["actor", "user"],
        );
        let users = gauge_vec("bulwark_users", "Users by the state of their trader.", &["state"]);
        let mut quarantined = 0;
        for state in ["starting", "running", "restarting", "quarantined", "halted", "paused", "stopped"] {
            users.with_label_values(&[state]).set(0);
        }
        for (actor, user, state, count) in &self.actors {
            restarts.with_label_values(&[actor, user]).inc_by(u64::from(*count));
            if actor == "trader" {
                users.with_label_values(&[state]).inc();
                quarantined += i64::from(state == "quarantined");
            }
        }
        gauge("bulwark_quarantined_users", "Users quarantined now.", quarantined);
        let breakers =
            gauge_vec("bulwark_breaker_state", "Circuit breakers: 0 closed, 1 half-open, 2 open.", &["breaker"]);
        for (name, state) in &self.breakers {
            breakers.with_label_values(&[name]).set(*state);
        }
        let points = gauge_vec(
            "bulwark_failure_point_status",
            "The Monitor's newest verdict per failure point: 0 ok, 1 warn, 2 critical, 3 unknown.",
            &["id", "category"],
        );
        for (id, category, status) in &self.failure_points {
            points.with_label_values(&[id, category]).set(*status);
        }
        gauge("bulwark_outbox_depth", "Records waiting in the durable outbox.", self.outbox_depth as i64);
        gauge("bulwark_outbox_capacity", "Records the durable outbox holds at most.", self.outbox_capacity as i64);
        if let (Some(used), Some(limit)) = (self.weight_used, self.weight_limit) {
            gauge("bulwark_rate_limit_weight_used", "Exchange request weight used this minute.", i64::from(used));
            gauge("bulwark_rate_limit_weight_limit", "Exchange request weight allowed per minute.", i64::from(limit));
        }
        registry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_and_scraped_metrics_encode_together() {
        let metrics = Metrics::new();
        metrics.exchange_request("klines", "ok", Duration::from_millis(12));
        metrics.order("filled");
        metrics.guard_block("SIG-ALPHA-FLOOR");
        let snapshot = Snapshot {
            decisions: vec![("u1".into(), 7, 2)],
            actors: vec![("trader".into(), "u1".into(), "running".into(), 1)],
            breakers: vec![("host:klines".into(), 2)],
            failure_points: vec![("SYS-DATABASE".into(), "SYS".into(), 0)],
            outbox_depth: 3,
            outbox_capacity: 10,
            weight_used: Some(5),
            weight_limit: Some(2400),
        };
        let text = metrics.encode(&snapshot);
        for line in [
            "bulwark_exchange_requests_total{endpoint=\"klines\",outcome=\"ok\"} 1",
            "bulwark_exchange_request_seconds_bucket{endpoint=\"klines\",le=\"0.025\"} 1",
            "bulwark_orders_total{result=\"filled\"} 1",
            "bulwark_guard_blocks_total{guard=\"SIG-ALPHA-FLOOR\"} 1",
            "bulwark_decisions_total{user=\"u1\"} 7",
            "bulwark_users{state=\"running\"} 1",
            "bulwark_breaker_state{breaker=\"host:klines\"} 2",
            "bulwark_failure_point_status{category=\"SYS\",id=\"SYS-DATABASE\"} 0",
            "bulwark_outbox_depth 3",
            "bulwark_rate_limit_weight_used 5",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
        assert!(text.contains("# TYPE bulwark_orders_total counter"));
    }
}
