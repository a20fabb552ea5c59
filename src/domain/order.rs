//! Orders from intent to fill. An [`OrderIntent`] is what a trader decided; it is committed to the
//! database with its deterministic [`ClientOrderId`] before anything is sent. [`OrderState`] is
//! the explicit state machine of that intent's exchange order, and every transition is checked
//! against [`OrderState::may_become`].

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::domain::{ClientOrderId, Price, Quantity, Symbol, UserId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Side {
    Buy,
    Sell,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Buy => "BUY",
            Side::Sell => "SELL",
        }
    }

    pub fn opposite(self) -> Side {
        match self {
            Side::Buy => Side::Sell,
            Side::Sell => Side::Buy,
        }
    }

    /// +1 for a buy, -1 for a sell: the sign of the position change.
    pub fn sign(self) -> Decimal {
        match self {
            Side::Buy => Decimal::ONE,
            Side::Sell => Decimal::NEGATIVE_ONE,
        }
    }
}

impl FromStr for Side {
    type Err = String;
    fn from_str(value: &str) -> Result<Self, String> {
        match value {
            "BUY" => Ok(Side::Buy),
            "SELL" => Ok(Side::Sell),
            other => Err(format!("unknown side {other:?}")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderType {
    Market,
    Limit { price: Price },
}

impl OrderType {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderType::Market => "MARKET",
            OrderType::Limit { .. } => "LIMIT",
        }
    }

    pub fn limit_price(self) -> Option<Price> {
        match self {
            OrderType::Market => None,
            OrderType::Limit { price } => Some(price),
        }
    }
}

/// Why an intent exists. Exits (and cancels) always pass risk blocks; entries may be refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntentPurpose {
    Entry,
    Exit,
}

impl IntentPurpose {
    pub fn as_str(self) -> &'static str {
        match self {
            IntentPurpose::Entry => "entry",
            IntentPurpose::Exit => "exit",
        }
    }
}

impl FromStr for IntentPurpose {
    type Err = String;
    fn from_str(value: &str) -> Result<Self, String> {
        match value {
            "entry" => Ok(IntentPurpose::Entry),
            "exit" => Ok(IntentPurpose::Exit),
            other => Err(format!("unknown intent purpose {other:?}")),
        }
    }
}

/// A trading decision that will become at most one exchange order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderIntent {
    pub user: UserId,
    /// Per-user sequence, strictly increasing; with the user it derives the client order id.
    pub intent_seq: u64,
    pub client_order_id: ClientOrderId,
    pub symbol: Symbol,
    pub side: Side,
    pub order_type: OrderType,
    pub quantity: Quantity,
    pub reduce_only: bool,
    pub purpose: IntentPurpose,
    pub strategy: String,
    /// Close time of the candle the decision was made on.
    pub decision_candle_close_ms: i64,
    pub created_at_ms: i64,
}

impl OrderIntent {
    /// The exchange request for this intent, signed at `timestamp_ms`.
    pub fn request(&self, timestamp_ms: i64) -> OrderRequest {
        OrderRequest {
            client_order_id: self.client_order_id.clone(),
            symbol: self.symbol.clone(),
            side: self.side,
            order_type: self.order_type,
            quantity: self.quantity,
            reduce_only: self.reduce_only,
            timestamp_ms,
        }
    }
}

/// What is sent to the exchange for one order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRequest {
    pub client_order_id: ClientOrderId,
    pub symbol: Symbol,
    pub side: Side,
    pub order_type: OrderType,
    pub quantity: Quantity,
    pub reduce_only: bool,
    /// The request's timestamp; the exchange refuses it once `recvWindow` has passed, which is
    /// what makes "not found after the window" a safe conclusion for a lost response.
    pub timestamp_ms: i64,
}

/// An order's status as the exchange reports it (Binance's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ExchangeOrderStatus {
    New,
    PartiallyFilled,
    Filled,
    Canceled,
    Rejected,
    Expired,
    /// Expired by self-trade prevention (Binance's STP): final, like `Expired`.
    ExpiredInMatch,
}

impl ExchangeOrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeOrderStatus::New => "NEW",
            ExchangeOrderStatus::PartiallyFilled => "PARTIALLY_FILLED",
            ExchangeOrderStatus::Filled => "FILLED",
            ExchangeOrderStatus::Canceled => "CANCELED",
            ExchangeOrderStatus::Rejected => "REJECTED",
            ExchangeOrderStatus::Expired => "EXPIRED",
            ExchangeOrderStatus::ExpiredInMatch => "EXPIRED_IN_MATCH",
        }
    }

    pub fn is_open(self) -> bool {
        matches!(self, ExchangeOrderStatus::New | ExchangeOrderStatus::PartiallyFilled)
    }

    /// The bulwark order state this exchange status corresponds to.
    pub fn order_state(self) -> OrderState {
        match self {
            ExchangeOrderStatus::New | ExchangeOrderStatus::PartiallyFilled => OrderState::Open,
            ExchangeOrderStatus::Filled => OrderState::Filled,
            ExchangeOrderStatus::Canceled => OrderState::Cancelled,
            ExchangeOrderStatus::Rejected => OrderState::Rejected,
            ExchangeOrderStatus::Expired | ExchangeOrderStatus::ExpiredInMatch => OrderState::Expired,
        }
    }
}

impl FromStr for ExchangeOrderStatus {
    type Err = String;
    fn from_str(value: &str) -> Result<Self, String> {
        [
            ExchangeOrderStatus::New,
            ExchangeOrderStatus::PartiallyFilled,
            ExchangeOrderStatus::Filled,
            ExchangeOrderStatus::Canceled,
            ExchangeOrderStatus::Rejected,
            ExchangeOrderStatus::Expired,
            ExchangeOrderStatus::ExpiredInMatch,
        ]
        .into_iter()
        .find(|status| status.as_str() == value)
        .ok_or_else(|| format!("unknown order status {value:?}"))
    }
}

/// An order as the exchange knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExchangeOrder {
    pub exchange_order_id: String,
    pub client_order_id: ClientOrderId,
    pub symbol: Symbol,
    pub side: Side,
    pub order_type: OrderType,
    pub quantity: Quantity,
    pub filled_quantity: Decimal,
    pub average_price: Option<Decimal>,
    pub status: ExchangeOrderStatus,
    pub reduce_only: bool,
    pub updated_at_ms: i64,
    /// When the exchange accepted it (Binance's `time`); 0 where an answer does not carry it (an
    /// ACK, a stream event, an older journal).
    #[serde(default)]
    pub created_at_ms: i64,
}

/// One execution of an order, as the exchange reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fill {
    /// Unique per account on the exchange; the database key that makes recording idempotent.
    pub trade_id: String,
    pub exchange_order_id: String,
    pub symbol: Symbol,
    pub side: Side,
    pub price: Decimal,
    pub quantity: Decimal,
    pub fee: Decimal,
    pub fee_asset: String,
    pub realized_pnl: Decimal,
    pub time_ms: i64,
}

/// The state machine of an intent's exchange order, as bulwark records it.
///
/// ```text
/// pending ──► sending ──► open ──► filled | cancelled | expired
///    │           ├──────► sending (retry of an attempt that executed nothing)
///    │           ├──────► filled | rejected | cancelled | expired
///    │           └──────► unknown ──► open | filled | cancelled | expired | rejected | not_placed
///    │                           └──► sending (resubmitted, same id, once the receive window has closed)
///    ├──► not_placed   (reconciliation: committed but provably never sent)
///    └──► rejected     (refused locally before sending)
/// ```
///
/// `pending` means committed and possibly about to be sent; `sending` means a request carrying the
/// client order id may have reached the exchange; `unknown` means it was sent and the outcome was
/// lost. Only a query by client order id resolves `sending` and `unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderState {
    Pending,
    Sending,
    Unknown,
    Open,
    Filled,
    Cancelled,
    Rejected,
    Expired,
    NotPlaced,
}

impl OrderState {
    pub const ALL: [OrderState; 9] = [
        OrderState::Pending,
        OrderState::Sending,
        OrderState::Unknown,
        OrderState::Open,
        OrderState::Filled,
        OrderState::Cancelled,
        OrderState::Rejected,
        OrderState::Expired,
        OrderState::NotPlaced,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderState::Pending => "pending",
            OrderState::Sending => "sending",
            OrderState::Unknown => "unknown",
            OrderState::Open => "open",
            OrderState::Filled => "filled",
            OrderState::Cancelled => "cancelled",
            OrderState::Rejected => "rejected",
            OrderState::Expired => "expired",
            OrderState::NotPlaced => "not_placed",
        }
    }

    /// A final state never changes again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            OrderState::Filled
                | OrderState::Cancelled
                | OrderState::Rejected
                | OrderState::Expired
                | OrderState::NotPlaced
        )
    }

    /// Whether the exchange may hold (or be about to hold) an order for this intent.
    pub fn may_exist_on_exchange(self) -> bool {
        matches!(self, OrderState::Sending | OrderState::Unknown | OrderState::Open)
    }

    /// The allowed transitions (see the diagram on the type). `open → open` records partial
    /// fills and `sending → sending` a new attempt after one that provably executed nothing;
    /// every other self-transition is refused.
    pub fn may_become(self, next: OrderState) -> bool {
        use OrderState::*;
        match self {
            Pending => matches!(next, Sending | NotPlaced | Rejected),
            Sending => matches!(next, Sending | Open | Filled | Rejected | Cancelled | Expired | Unknown | NotPlaced),
            Unknown => matches!(next, Sending | Open | Filled | Cancelled | Expired | Rejected | NotPlaced),
            Open => matches!(next, Open | Filled | Cancelled | Expired),
            Filled | Cancelled | Rejected | Expired | NotPlaced => false,
        }
    }
}

impl fmt::Display for OrderState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OrderState {
    type Err = String;
    fn from_str(value: &str) -> Result<Self, String> {
        OrderState::ALL
            .into_iter()
            .find(|state| state.as_str() == value)
            .ok_or_else(|| format!("unknown order state {value:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_states_never_change() {
        for state in OrderState::ALL.into_iter().filter(|s| s.is_final()) {
            for next in OrderState::ALL {
                assert!(!state.may_become(next), "{state} -> {next}");
            }
        }
    }

    #[test]
    fn every_non_final_state_can_end() {
        for state in OrderState::ALL.into_iter().filter(|s| !s.is_final()) {
            assert!(OrderState::ALL.into_iter().any(|next| next.is_final() && state.may_become(next)), "{state}");
        }
    }

    #[test]
    fn a_pending_order_cannot_jump_to_open_without_being_sent() {
        assert!(!OrderState::Pending.may_become(OrderState::Open));
        assert!(!OrderState::Pending.may_become(OrderState::Filled));
        assert!(OrderState::Pending.may_become(OrderState::Sending));
    }

    #[test]
    fn states_round_trip_through_strings() {
        for state in OrderState::ALL {
            assert_eq!(state.as_str().parse::<OrderState>().unwrap(), state);
        }
    }

    #[test]
    fn exchange_status_maps_to_order_state() {
        assert_eq!(ExchangeOrderStatus::PartiallyFilled.order_state(), OrderState::Open);
        assert_eq!(ExchangeOrderStatus::Filled.order_state(), OrderState::Filled);
        assert_eq!("CANCELED".parse::<ExchangeOrderStatus>().unwrap(), ExchangeOrderStatus::Canceled);
    }
}
