//! The paper exchange's account stream (issue 14): what its matching engine does to an account is
//! pushed as Binance's user data stream pushes it, and an account book kept from a REST read plus
//! those events holds what the exchange's REST answers hold, with no request after the read.

mod common;

use std::collections::BTreeMap;
use std::str::FromStr;

use bulwark::clock::ManualClock;
use bulwark::domain::{
    AccountEvent, ClientOrderId, ExchangeOrderStatus, OrderRequest, OrderType, Price, Quantity, Side, Symbol, UserId,
};
use bulwark::exchange::{AccountStream, Exchange};
use bulwark::trader::account_book::{AccountBook, BookSettings, RestSnapshot};
use rust_decimal::Decimal;

use common::{ONE_USER, START_MS, config_in, start_paper};

fn u1() -> UserId {
    UserId::new("u1").unwrap()
}

fn xrp() -> Symbol {
    Symbol::new("XRPUSDT").unwrap()
}

fn request(seq: u64, side: Side, order_type: OrderType, quantity: &str, at_ms: i64) -> OrderRequest {
    OrderRequest {
        client_order_id: ClientOrderId::for_intent(&u1(), seq),
        symbol: xrp(),
        side,
        order_type,
        quantity: Quantity::new(Decimal::from_str(quantity).unwrap()).unwrap(),
        reduce_only: false,
        timestamp_ms: at_ms,
    }
}

/// Every event already pushed (the venue pushes before it answers the request that caused them).
fn drain(stream: &mut AccountStream) -> Vec<AccountEvent> {
    let mut events = Vec::new();
    while let Ok(event) = stream.try_recv() {
        events.push(event);
    }
    events
}

#[actix_rt::test]
async fn a_book_kept_from_the_stream_holds_what_the_exchange_answers() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let config = config_in(dir.path(), ONE_USER);
    let paper = start_paper(&config, clock.clone());
    let candle_ms = paper.market_clock().await.unwrap().candle_interval_ms;

    // Listen first, then read: the read verifies the book on this connection.
    let mut stream = paper.account_stream(&u1()).expect("the paper exchange streams accounts");
    let mut book = AccountBook::new(BookSettings::default());
    let connection = book.stream_connected(clock_now(&clock));
    let snapshot = RestSnapshot {
        positions: vec![paper.position(&u1(), &xrp()).await.unwrap()],
        wallet_usdt: paper.balance(&u1()).await.unwrap().wallet_balance,
        open_orders: paper.open_orders(&u1(), Some(&xrp())).await.unwrap(),
        as_of_ms: paper.server_time_ms().await.unwrap(),
    };
    book.apply_snapshot(snapshot, Some(connection));
    assert_eq!(book.verification(clock_now(&clock)), Ok(()));
    drain(&mut stream);

    // A market buy executes at once: NEW, then FILLED with its trade, and the account's change,
    // all pushed before the answer.
    let placed =
        paper.create_order(&u1(), &request(1, Side::Buy, OrderType::Market, "100", clock_now(&clock))).await.unwrap();
    assert_eq!(placed.status, ExchangeOrderStatus::Filled);
    let mut fills = Vec::new();
    let events = drain(&mut stream);
    let of_placed = |e: &AccountEvent, status, with_fill: bool| matches!(e, AccountEvent::Order { order, fill, .. } if order.status == status && order.exchange_order_id == placed.exchange_order_id && fill.is_some() == with_fill);
    assert!(events.iter().any(|e| of_placed(e, ExchangeOrderStatus::New, false)), "{events:?}");
    assert!(events.iter().any(|e| of_placed(e, ExchangeOrderStatus::Filled, true)), "{events:?}");
    assert!(events.iter().any(|e| matches!(e, AccountEvent::Account { .. })), "{events:?}");
    apply(&mut book, &mut fills, events, clock_now(&clock));
    assert_eq!(book.open_orders(&xrp()).len(), 0);

    clock.advance_ms(candle_ms);
    // A limit sell far above the market rests: NEW, and nothing else.
    let limit = OrderType::Limit { price: Price::new(Decimal::from(100)).unwrap() };
    paper.create_order(&u1(), &request(2, Side::Sell, limit, "50", clock_now(&clock))).await.unwrap();
    let events = drain(&mut stream);
    assert!(events.iter().all(|e| matches!(e, AccountEvent::Order { fill: None, .. })), "{events:?}");
    apply(&mut book, &mut fills, events, clock_now(&clock));

    // The book holds what REST answers: position, wallet, open orders, the fill.
    let position = paper.position(&u1(), &xrp()).await.unwrap();
    let held = book.position(&xrp());
    assert_eq!((held.quantity, held.entry_price), (position.quantity, position.entry_price));
    assert_eq!(held.quantity, Decimal::from(100));
    let balance = paper.balance(&u1()).await.unwrap();
    let marks = BTreeMap::from([(xrp(), position.mark_price)]);
    assert_eq!(book.equity_usdt(&marks), Some(balance.wallet_balance + position.unrealized_pnl));
    let open: Vec<String> = book.open_orders(&xrp()).iter().map(|o| o.exchange_order_id.clone()).collect();
    let rest_open: Vec<String> =
        paper.open_orders(&u1(), Some(&xrp())).await.unwrap().into_iter().map(|o| o.exchange_order_id).collect();
    assert_eq!(open, rest_open);
    let rest_fills = paper.fills(&u1(), &xrp(), i64::MIN).await.unwrap();
    assert_eq!(fills, rest_fills, "every fill pushed once, as REST lists it");

    // A resting order checked against another candle: nothing a client would hear.
    clock.advance_ms(candle_ms);
    paper.position(&u1(), &xrp()).await.unwrap();
    assert_eq!(drain(&mut stream), Vec::new());

    // Cancelled: pushed, and the book drops it.
    paper.cancel_order(&u1(), &xrp(), &ClientOrderId::for_intent(&u1(), 2)).await.unwrap();
    apply(&mut book, &mut fills, drain(&mut stream), clock_now(&clock));
    assert!(book.open_orders(&xrp()).is_empty());

    // A second listener replaces the first, whose stream ends.
    let _second = paper.account_stream(&u1()).unwrap();
    assert!(stream.recv().await.is_none(), "the replaced stream ends");
}

/// Applies `events` to the book; collects the fills it had not seen.
fn apply(book: &mut AccountBook, fills: &mut Vec<bulwark::domain::Fill>, events: Vec<AccountEvent>, now_ms: i64) {
    for event in events {
        if let Some(fill) = book.apply(event, now_ms).new_fill {
            fills.push(fill);
        }
    }
}

fn clock_now(clock: &ManualClock) -> i64 {
    bulwark::clock::Clock::now_ms(clock)
}
