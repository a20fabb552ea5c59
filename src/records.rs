//! The records bulwark keeps: what a trader decides and knows (decisions, guard decisions,
//! positions, its reloaded state), orders as stored and their compare-and-set moves, supervision
//! events, status rows. Plain data, shared by the pure core (the trader, the failure-point
//! judgement) and the persistence module that stores them ([`crate::persistence`] holds all the
//! SQL and re-exports these), so that the core never depends on the database.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::domain::{ClientOrderId, Fill, OrderIntent, OrderState, Symbol, UserId};

/// A position the exchange reports that the recorded fills do not add up to.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PositionMismatch {
    pub user: UserId,
    pub symbol: Symbol,
    /// The exchange's quantity at the newest sync (signed).
    pub recorded: f64,
    /// Buys minus sells of the recorded fills.
    pub from_fills: f64,
    pub verified_at_ms: i64,
}

/// One pass of a signal through the guards (`allow`, or `block` by the first guard that refused).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuardDecisionRecord {
    pub user: UserId,
    pub symbol: Symbol,
    pub strategy: String,
    pub decided_at_ms: i64,
    /// `allow` or `block`.
    pub verdict: String,
    /// The guard that blocked (its failure point id); `None` when allowed.
    pub failure_point: Option<String>,
    pub reason: String,
    /// The values that decided it (JSON).
    pub values: serde_json::Value,
    pub until_ms: Option<i64>,
}

/// An order intent together with its order's current state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredOrder {
    pub intent: OrderIntent,
    pub state: OrderState,
    pub exchange_order_id: Option<String>,
    pub filled_quantity: Decimal,
    pub average_price: Option<Decimal>,
    pub sent_at_ms: Option<i64>,
    pub updated_at_ms: i64,
    pub last_error: Option<String>,
    /// Requests sent with this client order id (each move to `sending` counts one).
    pub send_attempts: u32,
}

impl StoredOrder {
    /// A committed intent's order, before anything was sent.
    pub fn committed(intent: OrderIntent) -> Self {
        Self {
            updated_at_ms: intent.created_at_ms,
            intent,
            state: OrderState::Pending,
            exchange_order_id: None,
            filled_quantity: Decimal::ZERO,
            average_price: None,
            sent_at_ms: None,
            last_error: None,
            send_attempts: 0,
        }
    }

    /// Applies a compare-and-set move as `Store::transition_order` does in SQL: only from `from`
    /// (and the expected send count, if given). Returns whether it applied.
    pub fn apply(&mut self, transition: &OrderTransition) -> bool {
        if self.state != transition.from
            || !transition.from.may_become(transition.to)
            || transition.expected_send_attempts.is_some_and(|sends| sends != self.send_attempts)
        {
            return false;
        }
        self.state = transition.to;
        if let Some(id) = &transition.exchange_order_id {
            self.exchange_order_id = Some(id.clone());
        }
        if let Some(quantity) = transition.filled_quantity {
            self.filled_quantity = quantity;
        }
        if let Some(price) = transition.average_price {
            self.average_price = Some(price);
        }
        if let Some(sent_at_ms) = transition.sent_at_ms {
            self.sent_at_ms = Some(sent_at_ms);
        }
        if let Some(error) = &transition.last_error {
            self.last_error = Some(error.clone());
        }
        self.updated_at_ms = transition.at_ms;
        if transition.to == OrderState::Sending {
            self.send_attempts += 1;
        }
        true
    }
}

/// A compare-and-set move of one order from the state the caller saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderTransition {
    pub client_order_id: ClientOrderId,
    pub from: OrderState,
    pub to: OrderState,
    pub exchange_order_id: Option<String>,
    pub filled_quantity: Option<Decimal>,
    pub average_price: Option<Decimal>,
    pub sent_at_ms: Option<i64>,
    pub last_error: Option<String>,
    pub at_ms: i64,
    /// Recorded in the same transaction (idempotently).
    pub fills: Vec<Fill>,
    /// When set, the change applies only if the order has been sent exactly this many times: the
    /// version that keeps two writers (a retry and a takeover after the receive window) from both
    /// acting on one `sending` order.
    pub expected_send_attempts: Option<u32>,
}

impl OrderTransition {
    pub fn new(client_order_id: ClientOrderId, from: OrderState, to: OrderState, at_ms: i64) -> Self {
        Self {
            client_order_id,
            from,
            to,
            exchange_order_id: None,
            filled_quantity: None,
            average_price: None,
            sent_at_ms: None,
            last_error: None,
            at_ms,
            fills: Vec::new(),
            expected_send_attempts: None,
        }
    }
}

/// What a trader knows about one symbol, saved after every account sync and reloaded on restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PositionRecord {
    pub user: UserId,
    pub symbol: Symbol,
    pub quantity: Decimal,
    pub entry_price: Decimal,
    pub position_start_time_ms: Option<i64>,
    pub active_order_id: Option<ClientOrderId>,
    pub verified_at_ms: i64,
}

/// Why an iteration did not decide, or why its order was refused: the values the Monitor counts
/// (STATE-STRATEGY-ERROR, DATA-CORRUPT, RES-CAPITAL), stored as a column, never found by matching
/// message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionCause {
    /// The strategy failed to produce a signal.
    StrategyError,
    /// The candle window failed validation (NaN, high below low, out of order, ...).
    BadCandles,
    /// The exchange refused the order for insufficient margin (-2019).
    MarginRefused,
}

impl DecisionCause {
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionCause::StrategyError => "strategy_error",
            DecisionCause::BadCandles => "bad_candles",
            DecisionCause::MarginRefused => "margin_refused",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [DecisionCause::StrategyError, DecisionCause::BadCandles, DecisionCause::MarginRefused]
            .into_iter()
            .find(|cause| cause.as_str() == text)
    }
}

/// One iteration's outcome for one strategy of one user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    pub user: UserId,
    pub symbol: Symbol,
    pub timeframe: String,
    pub strategy: String,
    pub candle_close_ms: Option<i64>,
    pub decided_at_ms: i64,
    /// `hold`, `enter`, `exit`, `blocked`, `skipped`, `order_failed`, ...
    pub outcome: String,
    pub reason: String,
    pub signal: Option<String>,
    pub score: Option<f64>,
    pub client_order_id: Option<ClientOrderId>,
    /// Whether it counts as a decision (the strategy ran and its result was acted on), as opposed
    /// to a skipped iteration.
    pub counts_as_decision: bool,
    /// What the Monitor counts it as, if anything.
    #[serde(default)]
    pub cause: Option<DecisionCause>,
}

/// A supervision event as stored (mirrors a line of `supervisor.jsonl`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupervisorEventRecord {
    pub ts_ms: i64,
    pub event: String,
    pub actor: String,
    pub user: Option<UserId>,
    pub incarnation: Option<u32>,
    pub reason: Option<String>,
    pub backoff_ms: Option<u64>,
}

/// A user's supervision state as the supervisors last recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSupervisionRecord {
    pub user: UserId,
    pub state: String,
    pub reason: Option<String>,
    pub since_ms: i64,
    pub incarnation: u32,
    pub restart_count: u32,
}

/// Everything a restarted trader reloads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TraderState {
    /// The risk locks' inputs the previous incarnation stored (`None`: none yet).
    pub risk_memory: Option<crate::trader::memory::RiskMemory>,
    pub positions: Vec<PositionRecord>,
    pub last_intent_seq: u64,
    /// Orders that are not final, oldest first.
    pub unresolved_orders: Vec<StoredOrder>,
    pub decision_count: u64,
}

/// One row of `bulwark status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserStatus {
    pub user: String,
    pub state: String,
    pub reason: Option<String>,
    pub since_ms: i64,
    pub incarnation: u32,
    pub restart_count: u32,
    pub decision_count: u64,
    pub last_decision: Option<String>,
    pub last_decision_at_ms: Option<i64>,
    pub positions: Vec<PositionRecord>,
    pub orders_total: u64,
    pub fills_total: u64,
}
