//! The order router's account streams (issue 14): one [`AccountBook`] per user, kept current by the
//! exchange's account stream, so that an account sync reads the book instead of asking the
//! exchange. A book is used only while it is verified (`AccountBook::verification`: a snapshot read
//! on the connection that is still up, heard from lately); otherwise the sync reads the exchange by
//! REST as before.
//!
//! What the stream tells about bulwark's own open orders (a fill, the final state) is recorded
//! through the same durable writes as a REST read's, and only when it adds up with what the
//! database holds: an event after a dropped one (its fill quantity does not follow on) is left to
//! the REST resolution, which lists every fill of the order. Fills of orders bulwark did not place
//! are left to reconciliation, which reports them. An update about an order whose placement is
//! not recorded yet (the stream runs ahead of the exchange's answer: a market order's fill usually
//! arrives first) waits in [`WaitingUpdates`] and is recorded once the placement records the order
//! open; without that, every order would cost its next decision a REST read.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;
use rust_decimal::Decimal;

use super::{RouterContext, account_error, call, load_order, record_transition};
use crate::domain::{ClientOrderId, ExchangeOrder, Fill, OrderState, Symbol, UserId};
use crate::exchange::AccountStream;
use crate::persistence::{OrderTransition, StoredOrder};
use crate::trader::account_book::{AccountBook, Applied, BookSettings, RestSnapshot, Unverified};
use crate::trader::core::AccountError;

/// One user's book, shared by its stream task and the syncs.
pub(super) type SharedBook = Arc<Mutex<AccountBook>>;

/// Stream updates kept this long at most while their order's placement is recorded.
const WAITING_UPDATE_KEEP_MS: i64 = 10 * 60_000;
/// Orders with updates waiting, at most (beyond it an update is left to the REST resolution).
const WAITING_ORDERS_MAX: usize = 4_096;
/// Updates kept for one order, at most (beyond it the order is left to the REST resolution).
const WAITING_UPDATES_PER_ORDER_MAX: usize = 64;

/// One order update from the stream, with the fill it carried.
type StreamUpdate = (ExchangeOrder, Option<Fill>);

/// Order updates (with the fill each carried) that arrived before their order's placement was
/// recorded, by client order id, in arrival order, with when the first arrived (local ms).
#[derive(Debug, Default)]
pub struct WaitingUpdates {
    orders: BTreeMap<ClientOrderId, (i64, Vec<StreamUpdate>)>,
}

impl WaitingUpdates {
    /// Keeps `update` for its order; `false` when it cannot be kept (too many orders waiting, or
    /// too many updates of this one).
    fn keep(&mut self, order: ExchangeOrder, fill: Option<Fill>, now_ms: i64) -> bool {
        self.orders.retain(|_, (since_ms, _)| now_ms - *since_ms < WAITING_UPDATE_KEEP_MS);
        let id = order.client_order_id.clone();
        if !self.orders.contains_key(&id) && self.orders.len() >= WAITING_ORDERS_MAX {
            return false;
        }
        let updates = &mut self.orders.entry(id).or_insert_with(|| (now_ms, Vec::new())).1;
        if updates.len() >= WAITING_UPDATES_PER_ORDER_MAX {
            return false;
        }
        updates.push((order, fill));
        true
    }

    fn take(&mut self, client_order_id: &ClientOrderId) -> Vec<StreamUpdate> {
        self.orders.remove(client_order_id).map(|(_, updates)| updates).unwrap_or_default()
    }
}

/// A verified read of one account from its book.
pub(super) struct BookRead {
    pub wallet_usdt: Decimal,
    pub positions: Vec<crate::domain::Position>,
}

/// `user`'s book with its stream up: subscribes when the venue streams accounts and no connection
/// is up (a new connection needs a snapshot before the book is verified again). `None`: the venue
/// has no account stream; every sync reads by REST.
pub(super) fn ensure_stream(context: &RouterContext, user: &UserId) -> Option<SharedBook> {
    let known = context.directory.account_books.read().get(user).cloned();
    let Some(book) = known else {
        // A book exists only for an account the venue streams.
        let stream = context.exchange.account_stream(user)?;
        let book = new_book(user);
        connect(context, user, &book, stream);
        context.directory.account_books.write().insert(user.clone(), book.clone());
        return Some(book);
    };
    // Down: connect again once the backoff since the last failure has passed (until then the
    // syncs read by REST).
    let reconnect = {
        let book = book.lock();
        book.connection().is_none() && !book.is_connecting() && book.reconnect_due(context.clock.now_ms()).is_ok()
    };
    if reconnect {
        let stream = context.exchange.account_stream(user)?;
        connect(context, user, &book, stream);
    }
    Some(book)
}

/// A book for `user`, its reconnect jitter seeded by the user's id (accounts spread apart).
fn new_book(user: &UserId) -> SharedBook {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    user.hash(&mut hasher);
    Arc::new(Mutex::new(AccountBook::new(BookSettings::default()).with_jitter_seed(hasher.finish())))
}

/// Reconnects `user`'s stream whatever its state and backoff (the Healer's action for
/// SYS-USER-STREAM: a silent connection may still look up) and waits until a snapshot read on the new connection
/// verified the book. `Ok(false)`: the venue streams no account.
pub(super) async fn reconnect(context: &RouterContext, user: &UserId) -> Result<bool, AccountError> {
    let Some(stream) = context.exchange.account_stream(user) else { return Ok(false) };
    let book = context.directory.account_books.write().entry(user.clone()).or_insert_with(|| new_book(user)).clone();
    connect(context, user, &book, stream);
    // The stream's task reads the snapshot once the new connection is up (it says hello).
    let verified = async {
        while book.lock().verification(context.clock.now_ms()).is_err() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    if tokio::time::timeout(context.settings.exchange_timeout, verified).await.is_err() {
        let why = book.lock().verification(context.clock.now_ms()).err();
        return Err(AccountError::other(format!(
            "the account stream is not verified after reconnecting: {}",
            why.map(|w| w.to_string()).unwrap_or_default()
        )));
    }
    Ok(true)
}

/// Starts applying `stream` to the book. It counts as connected once it says something (every
/// venue's stream says hello when it is up): a snapshot read before that could miss what happens
/// while the handshake runs.
fn connect(context: &RouterContext, user: &UserId, book: &SharedBook, stream: AccountStream) {
    book.lock().stream_connecting(context.clock.now_ms());
    actix::spawn(follow(context.clone(), user.clone(), stream, book.clone()));
}

/// How long a sync waits for the stream to tell that its symbol's placed orders are done, before
/// it reads by REST instead. A market order has long filled by the next close (on Binance and on
/// the paper venue it executes at once); a limit order may fill at the close itself, its update
/// arriving with the candle.
const PLACED_ORDERS_WAIT: std::time::Duration = std::time::Duration::from_millis(1_000);

/// Tells `user`'s account book (if it has one) the fills of `order` that were read by REST, so that
/// a position they changed is not read from the book until the stream's account update for it
/// came ([`crate::trader::account_book::AccountBook::apply_read_fills`]).
pub(super) fn note_read_fills(context: &RouterContext, user: &UserId, order: &ExchangeOrder, fills: &[Fill]) {
    if fills.is_empty() {
        return;
    }
    if let Some(book) = context.directory.account_books.read().get(user) {
        book.lock().apply_read_fills(order, fills);
    }
}

/// Whether every one of `orders` (each placed: `open` with its exchange id) is done and recorded:
/// the book tells its end, and the stream task recorded it so the user's `symbol` has nothing
/// unresolved in the database. Waits for it at most [`PLACED_ORDERS_WAIT`]. `true`: the book is
/// the account and the fills are in the database; `false` (an order still working, an update left
/// to the REST resolution, a write queued): read by REST, which resolves them. `rows_read_at`: the
/// user's order-row stamp before `orders` were read (a row the stream wrote since, even before
/// this call, is read again).
pub(super) async fn placed_orders_done(
    context: &RouterContext,
    user: &UserId,
    symbol: &Symbol,
    book: &SharedBook,
    orders: &[StoredOrder],
    rows_read_at: u64,
) -> bool {
    let placed: Vec<&str> = orders
        .iter()
        .filter(|order| order.state == OrderState::Open)
        .filter_map(|order| order.exchange_order_id.as_deref())
        .collect();
    if placed.len() != orders.len() {
        return false;
    }
    let stamps = context.directory.outbox.order_rows();
    // The database is read again only once the book tells every end and the user's rows changed.
    let mut stamp_of_last_read = rows_read_at;
    let done = async {
        loop {
            // Registered before the look, so an event recorded in between still wakes it.
            let recorded = context.directory.account_events_applied.notified();
            // Their ends, and the position after their fills (the account update may come after).
            let all_final = {
                let book = book.lock();
                placed.iter().all(|id| book.order_is_final(id)) && book.position_caught_up(symbol)
            };
            if all_final && stamps.stamp(user) != stamp_of_last_read {
                stamp_of_last_read = stamps.stamp(user);
                match super::unresolved_orders_of(context, user, symbol).await {
                    Ok((unresolved, _)) if unresolved.is_empty() => return true,
                    Ok(_) => {}
                    Err(_) => return false,
                }
            }
            recorded.await;
        }
    };
    tokio::time::timeout(PLACED_ORDERS_WAIT, done).await.unwrap_or(false)
}

/// The account as the book holds it, if the book is verified now (after reading a snapshot on
/// this connection when it has none yet) and every position it holds, `symbol`'s included, has
/// caught up with the newest fill seen on it. `None`: read the exchange instead; why is logged.
pub(super) async fn verified_read(
    context: &RouterContext,
    user: &UserId,
    symbol: &Symbol,
    book: &SharedBook,
) -> Result<Option<BookRead>, AccountError> {
    let verification = book.lock().verification(context.clock.now_ms());
    if let Err(Unverified::NoSnapshotOnThisConnection { .. }) = verification {
        take_snapshot(context, user, book).await?;
    }
    let behind = behind_its_fills(&book.lock(), symbol);
    if let Some(behind) = behind {
        // A fill known (read by REST, or heard) without the account update that goes with it: the
        // update may have been dropped. A snapshot on this connection catches the book up, so the
        // syncs after this one read it again instead of REST each time.
        tracing::debug!(%user, symbol = %behind, "order router: the book's position is behind its newest fill; reading a snapshot");
        take_snapshot(context, user, book).await?;
    }
    let book = book.lock();
    if let Err(why) = book.verification(context.clock.now_ms()) {
        tracing::debug!(%user, %why, "order router: account book unverified; reading the account by REST");
        return Ok(None);
    }
    let Some(wallet_usdt) = book.wallet_usdt() else { return Ok(None) };
    if let Some(behind) = behind_its_fills(&book, symbol) {
        tracing::debug!(%user, symbol = %behind, "order router: the book's position is still behind its newest fill; reading by REST");
        return Ok(None);
    }
    let positions = book.held_symbols().iter().map(|symbol| book.position(symbol)).collect();
    Ok(Some(BookRead { wallet_usdt, positions }))
}

/// A symbol (among those held, and `symbol`) whose position the book holds older than its newest
/// fill, if any.
fn behind_its_fills(book: &AccountBook, symbol: &Symbol) -> Option<Symbol> {
    book.held_symbols().into_iter().chain([symbol.clone()]).find(|symbol| !book.position_caught_up(symbol))
}

/// Reads every position, the wallet and the open orders by REST on the stream's current
/// connection, and sets the book from them (verified if that connection is still up after).
async fn take_snapshot(context: &RouterContext, user: &UserId, book: &SharedBook) -> Result<(), AccountError> {
    let requested_on = book.lock().connection();
    // Venue time before the reads: an event stamped later is newer than the snapshot and wins.
    let as_of_ms = context.exchange.estimated_now_ms().unwrap_or_else(|| context.clock.now_ms());
    let (positions, open_orders) =
        call(context, "positions and open orders", context.exchange.positions_and_open_orders(user))
            .await
            .map_err(account_error)?;
    let balance = call(context, "balance", context.exchange.balance(user)).await.map_err(account_error)?;
    let snapshot = RestSnapshot { positions, wallet_usdt: balance.wallet_balance, open_orders, as_of_ms };
    book.lock().apply_snapshot(snapshot, requested_on);
    tracing::debug!(%user, ?requested_on, "order router: account snapshot read on the stream's connection");
    Ok(())
}

/// Applies `user`'s stream to its book until the stream ends, recording what it tells of bulwark's
/// open orders.
async fn follow(context: RouterContext, user: UserId, mut stream: AccountStream, book: SharedBook) {
    let Some(first) = stream.recv().await else {
        book.lock().stream_failed(context.clock.now_ms());
        tracing::info!(%user, "order router: the account stream could not connect; syncs read the account by REST");
        return;
    };
    let connection = book.lock().stream_connected(context.clock.now_ms());
    tracing::info!(%user, connection, "order router: account stream connected; reading a snapshot on it");
    // Up: the snapshot that verifies the book, read now (events meanwhile wait in the stream and
    // are applied after it, by venue time). If it fails, the next sync reads it.
    if let Err(error) = take_snapshot(&context, &user, &book).await {
        tracing::warn!(%user, %error, "order router: the account snapshot could not be read; the next sync tries again");
    }
    let mut next = Some(first);
    while let Some(event) = next {
        let applied = book.lock().apply(event, context.clock.now_ms());
        record_order_update(&context, applied).await;
        context.directory.account_events_applied.notify_waiters();
        next = stream.recv().await;
    }
    book.lock().stream_ended(connection, context.clock.now_ms());
    tracing::info!(%user, connection, "order router: the account stream ended; syncs read the account by REST until it is back");
}

/// Records an order update of one of bulwark's open orders with the fill it carries, when the fill
/// follows on from what the database holds.
async fn record_order_update(context: &RouterContext, applied: Applied) {
    let Some(order) = applied.order.filter(|order| order.client_order_id.is_bulwark()) else { return };
    // An update without a fill that leaves the order open (NEW) records nothing: no database read.
    let changes_something = applied.new_fill.is_some() || !order.status.is_open();
    if !changes_something {
        return;
    }
    record_update(context, order, applied.new_fill).await;
}

/// Records the updates that waited for `client_order_id`'s placement (call once it is recorded;
/// `record: false` only lets them go).
pub(super) async fn record_waiting_updates(context: &RouterContext, client_order_id: &ClientOrderId, record: bool) {
    let waiting = context.directory.stream_updates_waiting.lock().take(client_order_id);
    if !record {
        return;
    }
    for (order, fill) in waiting {
        record_update(context, order, fill).await;
    }
}

async fn record_update(context: &RouterContext, order: ExchangeOrder, new_fill: Option<Fill>) {
    let stored = match load_order(context, &order.client_order_id).await {
        Ok(Some(stored)) => stored,
        Ok(None) => return,
        Err(error) => {
            tracing::warn!(client_order_id = %order.client_order_id, %error, "order router: stream update not recorded (database); the next sync resolves the order");
            return;
        }
    };
    // Only an order whose placement is recorded (`open`, with this exchange id): one still being
    // placed waits for its placement; one already final was recorded by whoever finished it.
    if matches!(stored.state, OrderState::Pending | OrderState::Sending) {
        let kept = context.directory.stream_updates_waiting.lock().keep(order, new_fill, context.clock.now_ms());
        context.directory.metrics.stream_order_update(if kept { "waiting_for_placement" } else { "left_to_rest" });
        return;
    }
    if stored.state != OrderState::Open || stored.exchange_order_id.as_deref() != Some(order.exchange_order_id.as_str())
    {
        return;
    }
    let Some(change) = transition_from_update(&stored.filled_quantity, order, new_fill, context.clock.now_ms()) else {
        context.directory.metrics.stream_order_update("left_to_rest");
        return;
    };
    let client_order_id = change.client_order_id.clone();
    match record_transition(context, change).await {
        Ok(super::Recorded::Overtaken) => context.directory.metrics.stream_order_update("already_recorded"),
        Ok(_) => context.directory.metrics.stream_order_update("recorded"),
        Err(error) => {
            context.directory.metrics.stream_order_update("left_to_rest");
            tracing::warn!(%client_order_id, %error, "order router: stream update not recorded; the next sync resolves the order");
        }
    }
}

/// The transition an order update makes of an `open` order whose fills so far add up to
/// `recorded_filled`, or `None` when it changes nothing or does not follow on (a fill is missing:
/// the REST resolution lists them all).
fn transition_from_update(
    recorded_filled: &Decimal,
    order: ExchangeOrder,
    new_fill: Option<Fill>,
    now_ms: i64,
) -> Option<OrderTransition> {
    let new_quantity = new_fill.as_ref().map_or(Decimal::ZERO, |fill| fill.quantity);
    if *recorded_filled + new_quantity != order.filled_quantity {
        tracing::debug!(client_order_id = %order.client_order_id, %recorded_filled, %new_quantity, filled = %order.filled_quantity, "order router: stream update does not follow on; left to the REST resolution");
        return None;
    }
    let to = order.status.order_state();
    if to == OrderState::Open && new_fill.is_none() {
        return None;
    }
    let mut change = OrderTransition::new(order.client_order_id.clone(), OrderState::Open, to, now_ms);
    change.exchange_order_id = Some(order.exchange_order_id);
    change.filled_quantity = Some(order.filled_quantity);
    change.average_price = order.average_price;
    change.fills = new_fill.into_iter().collect();
    Some(change)
}

/// Equity (wallet plus every position at `marks`), as a number for the kill switch.
pub(super) fn equity_f64(
    wallet_usdt: Decimal,
    positions: &[crate::domain::Position],
    marks: &BTreeMap<Symbol, Decimal>,
) -> Result<f64, String> {
    use rust_decimal::prelude::ToPrimitive;
    crate::trader::account_book::equity_at_marks(wallet_usdt, positions, marks)
        .to_f64()
        .ok_or_else(|| "equity is not a number".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ClientOrderId, ExchangeOrderStatus, OrderType, Quantity, Side};

    fn order(status: ExchangeOrderStatus, filled: &str) -> ExchangeOrder {
        ExchangeOrder {
            exchange_order_id: "7".into(),
            client_order_id: ClientOrderId::parse("bw-u1-1").unwrap(),
            symbol: Symbol::new("XRPUSDT").unwrap(),
            side: Side::Buy,
            order_type: OrderType::Market,
            quantity: Quantity::new(Decimal::from(10)).unwrap(),
            filled_quantity: filled.parse().unwrap(),
            average_price: Some(Decimal::from(2)),
            status,
            reduce_only: false,
            updated_at_ms: 0,
            created_at_ms: 0,
        }
    }

    fn fill(quantity: &str, trade_id: &str) -> Fill {
        Fill {
            trade_id: trade_id.into(),
            exchange_order_id: "7".into(),
            symbol: Symbol::new("XRPUSDT").unwrap(),
            side: Side::Buy,
            price: Decimal::from(2),
            quantity: quantity.parse().unwrap(),
            fee: Decimal::ZERO,
            fee_asset: "USDT".into(),
            realized_pnl: Decimal::ZERO,
            time_ms: 0,
        }
    }

    #[test]
    fn a_fill_that_completes_the_order_marks_it_filled_with_that_fill() {
        let change =
            transition_from_update(&Decimal::ZERO, order(ExchangeOrderStatus::Filled, "10"), Some(fill("10", "1")), 5)
                .expect("a transition");
        assert_eq!((change.from, change.to), (OrderState::Open, OrderState::Filled));
        assert_eq!(change.fills.len(), 1);
        assert_eq!(change.filled_quantity, Some(Decimal::from(10)));
    }

    #[test]
    fn an_update_after_a_dropped_fill_is_left_to_the_rest_resolution() {
        // 4 recorded, this fill 3, the order says 10 filled: a fill of 3 was dropped.
        let missing = transition_from_update(
            &Decimal::from(4),
            order(ExchangeOrderStatus::Filled, "10"),
            Some(fill("3", "2")),
            5,
        );
        assert!(missing.is_none());
        // The same update when the earlier fills are recorded: it completes the order.
        let complete = transition_from_update(
            &Decimal::from(7),
            order(ExchangeOrderStatus::Filled, "10"),
            Some(fill("3", "2")),
            5,
        );
        assert_eq!(complete.map(|c| c.to), Some(OrderState::Filled));
    }

    #[test]
    fn a_cancel_without_fills_is_recorded_and_an_open_update_without_a_fill_is_not() {
        let cancelled = transition_from_update(&Decimal::ZERO, order(ExchangeOrderStatus::Canceled, "0"), None, 5);
        assert_eq!(cancelled.map(|c| c.to), Some(OrderState::Cancelled));
        assert!(transition_from_update(&Decimal::ZERO, order(ExchangeOrderStatus::New, "0"), None, 5).is_none());
        let partial = transition_from_update(
            &Decimal::ZERO,
            order(ExchangeOrderStatus::PartiallyFilled, "4"),
            Some(fill("4", "3")),
            5,
        );
        assert_eq!(partial.map(|c| (c.to, c.fills.len())), Some((OrderState::Open, 1)));
    }

    fn order_with_id(client_order_id: &str) -> ExchangeOrder {
        ExchangeOrder {
            client_order_id: ClientOrderId::parse(client_order_id).unwrap(),
            ..order(ExchangeOrderStatus::Filled, "10")
        }
    }

    #[test]
    fn waiting_updates_come_back_in_arrival_order_once() {
        let mut waiting = WaitingUpdates::default();
        let id = ClientOrderId::parse("bw-u1-1").unwrap();
        assert!(waiting.keep(order(ExchangeOrderStatus::PartiallyFilled, "4"), Some(fill("4", "1")), 0));
        assert!(waiting.keep(order(ExchangeOrderStatus::Filled, "10"), Some(fill("6", "2")), 10));
        let updates = waiting.take(&id);
        let trade_ids: Vec<_> = updates.iter().map(|(_, fill)| fill.as_ref().unwrap().trade_id.clone()).collect();
        assert_eq!(trade_ids, ["1", "2"]);
        assert!(waiting.take(&id).is_empty(), "taken once");
    }

    #[test]
    fn waiting_updates_are_bounded_in_orders_and_in_time() {
        let mut waiting = WaitingUpdates::default();
        for n in 0..WAITING_ORDERS_MAX {
            assert!(waiting.keep(order_with_id(&format!("bw-u1-{n}")), None, 0));
        }
        // Full: a new order's update is refused, another update of a waiting order is kept.
        assert!(!waiting.keep(order_with_id("bw-u1-new"), None, 1));
        assert!(waiting.keep(order_with_id("bw-u1-0"), None, 1));
        // Past the keep time the old ones are let go, so a new order fits again.
        assert!(waiting.keep(order_with_id("bw-u1-new"), None, WAITING_UPDATE_KEEP_MS));
        assert_eq!(waiting.orders.len(), 1);
        // One order's updates are bounded too.
        let mut one = WaitingUpdates::default();
        for _ in 0..WAITING_UPDATES_PER_ORDER_MAX {
            assert!(one.keep(order_with_id("bw-u1-7"), None, 0));
        }
        assert!(!one.keep(order_with_id("bw-u1-7"), None, 0));
        assert!(waiting.take(&ClientOrderId::parse("bw-u1-0").unwrap()).is_empty());
    }
}
