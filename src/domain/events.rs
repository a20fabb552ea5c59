//! What an exchange pushes about an account, in the venue's own time: an order's new state with the
//! fill it carries (Binance's `ORDER_TRADE_UPDATE`), and the positions and balances that changed
//! (`ACCOUNT_UPDATE`). The paper venue emits the same from its matching engine, so an account book
//! (`trader::account_book`) is kept the same way on every venue.
//!
//! Every value an event carries is absolute (an order's accumulated filled quantity, a position's
//! amount, a wallet balance), never a delta: applying an event twice changes nothing, and an event
//! older than what is known is recognised by its transaction time.

use rust_decimal::Decimal;

use crate::domain::{Candle, ExchangeOrder, Fill, Symbol, Timeframe};

/// What a venue's market stream pushes (`Exchange::candle_stream`): a candle the moment it
/// closed (Binance: a kline event with `k.x = true`), or a sign of life (a ping, an update of a
/// candle still forming) that keeps a quiet connection from being taken for a silent one. The
/// first message of every connection is a `Heartbeat`: the connection is up.
#[derive(Debug, Clone, PartialEq)]
pub enum MarketEvent {
    Heartbeat,
    CandleClosed { symbol: Symbol, timeframe: Timeframe, candle: Candle, event_ms: i64 },
}

/// One event of one account's stream. (Most events are order updates, the larger variant: boxing
/// it would cost an allocation per event to save space on the rarer one.)
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountEvent {
    /// An order's state as the matching engine left it; `fill` is the trade this update reports
    /// (execution type `TRADE`), if any.
    Order { order: ExchangeOrder, fill: Option<Fill>, times: EventTimes },
    /// Positions and balances that changed (only those).
    Account { positions: Vec<PositionUpdate>, balances: Vec<BalanceUpdate>, times: EventTimes },
    /// The connection is alive and nothing changed (Binance: a ping answered, a keepalive
    /// acknowledged): what keeps a quiet account's book verified.
    Heartbeat { times: EventTimes },
}

impl AccountEvent {
    pub fn times(&self) -> EventTimes {
        match self {
            AccountEvent::Order { times, .. }
            | AccountEvent::Account { times, .. }
            | AccountEvent::Heartbeat { times } => *times,
        }
    }
}

/// When the venue did it (`T`: transaction time, what ordering and staleness are judged by) and when
/// it sent the event (`E`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventTimes {
    pub transaction_ms: i64,
    pub event_ms: i64,
}

/// A position after the change (`ACCOUNT_UPDATE.a.P[]`): signed amount, entry price, unrealized PnL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PositionUpdate {
    pub symbol: Symbol,
    pub quantity: Decimal,
    pub entry_price: Decimal,
    pub unrealized_pnl: Decimal,
}

/// A balance after the change (`ACCOUNT_UPDATE.a.B[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BalanceUpdate {
    pub asset: String,
    pub wallet_balance: Decimal,
}
