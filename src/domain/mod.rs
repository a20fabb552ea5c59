//! Plain domain types shared by every layer: identifiers, prices and quantities, candles, orders
//! and positions. Nothing here does I/O or knows about actix, SQL or HTTP; constructors check
//! their preconditions so that a value of these types is valid by construction.

mod events;
mod ids;
mod market;
mod money;
mod order;
mod position;

pub use events::{AccountEvent, BalanceUpdate, EventTimes, MarketEvent, PositionUpdate};
pub use ids::{ClientOrderId, IdError, Symbol, UserId};
pub use market::{Candle, DataProblem, LargeTrades, Timeframe, validate_candles};
pub(crate) use money::decimal_to_f64;
pub use money::{MoneyError, Price, Quantity, SymbolRules, decimal_from_f64};
pub use order::{
    ExchangeOrder, ExchangeOrderStatus, Fill, IntentPurpose, OrderIntent, OrderRequest, OrderState, OrderType, Side,
};
pub use position::{Balance, Position, PositionSide, net_position_after_fill};
