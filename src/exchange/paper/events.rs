//! The paper venue's user data stream: what its matching engine changed, told to each account the
//! way Binance's user data stream tells it (`domain::AccountEvent`): orders accepted or ended
//! without a trade, then the positions and wallet that changed (`ACCOUNT_UPDATE`), then each
//! order's update that carries a trade (`ORDER_TRADE_UPDATE`). Built from the same changes the venue journals, so a stream can never
//! say something the books do not hold.

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use crate::domain::{AccountEvent, BalanceUpdate, EventTimes, ExchangeOrderStatus, Fill, PositionUpdate, UserId};
use crate::exchange::paper::venue::VenueChange;

/// The events of one venue operation, per account in the order they happened; every event carries
/// `transaction_ms` (the market time of the operation).
pub fn account_events(changes: &[VenueChange], transaction_ms: i64) -> Vec<(UserId, AccountEvent)> {
    let times = EventTimes { transaction_ms, event_ms: transaction_ms };
    let fills: BTreeMap<(&UserId, &str), &Fill> = changes
        .iter()
        .filter_map(|change| match change {
            VenueChange::Fill { user, fill } => Some(((user, fill.exchange_order_id.as_str()), fill)),
            _ => None,
        })
        .collect();
    let mut accounts: BTreeMap<&UserId, (Vec<PositionUpdate>, Vec<BalanceUpdate>)> = BTreeMap::new();
    for change in changes {
        match change {
            VenueChange::Position { user, symbol, position } => {
                // Unrealized PnL at the price it last traded at in this operation (what the venue
                // knows of the mark at that moment).
                let traded_at = fills.values().find(|fill| &fill.symbol == symbol).map(|fill| fill.price);
                let unrealized_pnl = traded_at
                    .map(|price| (position.quantity * (price - position.entry_price)).round_dp(8))
                    .unwrap_or(Decimal::ZERO);
                let positions = &mut accounts.entry(user).or_default().0;
                positions.retain(|known| &known.symbol != symbol);
                positions.push(PositionUpdate {
                    symbol: symbol.clone(),
                    quantity: position.quantity,
                    entry_price: position.entry_price,
                    unrealized_pnl,
                });
            }
            VenueChange::Account { user, wallet_balance } => {
                let balances = &mut accounts.entry(user).or_default().1;
                balances.clear();
                balances.push(BalanceUpdate { asset: "USDT".to_owned(), wallet_balance: *wallet_balance });
            }
            _ => {}
        }
    }
    // In Binance's order: an order's acceptance (NEW) before the account changes its fill made,
    // and those before the update that carries the trade.
    let account_events: Vec<(UserId, AccountEvent)> = accounts
        .into_iter()
        .map(|(user, (positions, balances))| (user.clone(), AccountEvent::Account { positions, balances, times }))
        .collect();
    let (with_trade, without_trade): (Vec<_>, Vec<_>) = order_events(changes, &fills, times)
        .into_iter()
        .partition(|(_, event)| matches!(event, AccountEvent::Order { fill: Some(_), .. }));
    without_trade.into_iter().chain(account_events).chain(with_trade).collect()
}

/// The order updates of `changes` a client hears, each with the trade it carries.
fn order_events(
    changes: &[VenueChange],
    fills: &BTreeMap<(&UserId, &str), &Fill>,
    times: EventTimes,
) -> Vec<(UserId, AccountEvent)> {
    let mut events = Vec::new();
    for change in changes {
        if let VenueChange::Order { user, order } = change {
            // A resting limit order checked against newer candles changed nothing a client hears.
            let rechecked = order.order.status == ExchangeOrderStatus::New && order.checked_index != order.placed_index;
            if rechecked {
                continue;
            }
            // The trade goes with the update it produced (the order's executed quantity includes
            // it), not with the NEW update of an order that executed in the same operation.
            let fill = fills
                .get(&(user, order.order.exchange_order_id.as_str()))
                .filter(|_| !order.order.filled_quantity.is_zero())
                .map(|fill| (*fill).clone());
            events.push((user.clone(), AccountEvent::Order { order: order.order.clone(), fill, times }));
        }
    }
    events
}
