//! The account book: when it is verified, and how events and snapshots combine (duplicates,
//! reordering, late events, snapshots older or newer than what the stream said).

use std::str::FromStr;

use super::*;
use crate::domain::{
    BalanceUpdate, ClientOrderId, EventTimes, ExchangeOrderStatus, OrderType, PositionUpdate, Quantity, Side, UserId,
};

const SILENCE_MS: i64 = 90_000;

fn dec(text: &str) -> Decimal {
    Decimal::from_str(text).unwrap()
}

fn btc() -> Symbol {
    Symbol::new("BTCUSDT").unwrap()
}

fn book() -> AccountBook {
    AccountBook::new(BookSettings {
        silence_ms_max: SILENCE_MS,
        trades_remembered: 3,
        final_orders_remembered: 3,
        ..BookSettings::default()
    })
}

fn snapshot(quantity: &str, wallet: &str, as_of_ms: i64) -> RestSnapshot {
    let position = Position {
        symbol: btc(),
        quantity: dec(quantity),
        entry_price: dec("100"),
        mark_price: dec("100"),
        unrealized_pnl: Decimal::ZERO,
    };
    RestSnapshot { positions: vec![position], wallet_usdt: dec(wallet), open_orders: Vec::new(), as_of_ms }
}

fn times(transaction_ms: i64) -> EventTimes {
    EventTimes { transaction_ms, event_ms: transaction_ms + 1 }
}

fn order(id: &str, status: ExchangeOrderStatus, filled: &str) -> ExchangeOrder {
    ExchangeOrder {
        exchange_order_id: id.to_owned(),
        client_order_id: ClientOrderId::for_intent(&UserId::new("u1").unwrap(), 1),
        symbol: btc(),
        side: Side::Buy,
        order_type: OrderType::Market,
        quantity: Quantity::new(dec("2")).unwrap(),
        filled_quantity: dec(filled),
        average_price: None,
        status,
        reduce_only: false,
        updated_at_ms: 0,
        created_at_ms: 0,
    }
}

fn fill(trade_id: &str, quantity: &str) -> Fill {
    Fill {
        trade_id: trade_id.to_owned(),
        exchange_order_id: "9".to_owned(),
        symbol: btc(),
        side: Side::Buy,
        price: dec("100"),
        quantity: dec(quantity),
        fee: dec("0.04"),
        fee_asset: "USDT".to_owned(),
        realized_pnl: Decimal::ZERO,
        time_ms: 0,
    }
}

fn order_event(status: ExchangeOrderStatus, filled: &str, trade: Option<(&str, &str)>, at_ms: i64) -> AccountEvent {
    AccountEvent::Order {
        order: order("9", status, filled),
        fill: trade.map(|(id, quantity)| fill(id, quantity)),
        times: times(at_ms),
    }
}

fn position_event(quantity: &str, at_ms: i64) -> AccountEvent {
    AccountEvent::Account {
        positions: vec![PositionUpdate {
            symbol: btc(),
            quantity: dec(quantity),
            entry_price: dec("100"),
            unrealized_pnl: dec(quantity) * dec("2"),
        }],
        balances: vec![BalanceUpdate { asset: "USDT".to_owned(), wallet_balance: dec("990") }],
        times: times(at_ms),
    }
}

#[test]
fn verified_only_with_a_snapshot_read_on_the_connection_still_up_and_heard_from() {
    let mut book = book();
    assert_eq!(book.verification(0), Err(Unverified::NeverConnected));
    // A read while the stream is down sets the book but cannot verify it.
    book.apply_snapshot(snapshot("1", "1000", 5), book.connection());
    assert_eq!(book.position(&btc()).quantity, dec("1"));
    assert_eq!(book.verification(0), Err(Unverified::NeverConnected));

    let first = book.stream_connected(1_000);
    assert_eq!(book.verification(1_000), Err(Unverified::NoSnapshotOnThisConnection { connected_since_ms: 1_000 }));
    book.apply_snapshot(snapshot("1", "1000", 6), Some(first));
    assert_eq!(book.verification(1_000), Ok(()));

    // Silent for longer than allowed: treated as down until heard from again.
    assert_eq!(book.verification(1_000 + SILENCE_MS), Ok(()));
    let silent = Unverified::Silent { last_heard_ms: 1_000, silence_ms_max: SILENCE_MS };
    assert_eq!(book.verification(1_001 + SILENCE_MS), Err(silent));
    book.heard(50_000);
    assert_eq!(book.verification(1_001 + SILENCE_MS), Ok(()));

    // Dropped: unverified; reconnected: unverified until a read on the new connection.
    book.stream_disconnected(60_000);
    assert_eq!(book.verification(60_000), Err(Unverified::Disconnected { since_ms: 60_000 }));
    assert!(book.verification(60_000).unwrap_err().to_string().contains("down since"));
    let second = book.stream_connected(61_000);
    assert!(matches!(book.verification(61_000), Err(Unverified::NoSnapshotOnThisConnection { .. })));
    // A read requested on the first connection, answered now, does not verify the second.
    book.apply_snapshot(snapshot("1", "1000", 7), Some(first));
    assert!(book.verification(61_000).is_err());
    book.apply_snapshot(snapshot("1", "1000", 8), Some(second));
    assert_eq!(book.verification(61_000), Ok(()));
}

#[test]
fn a_fill_counts_once_and_a_late_or_duplicated_order_event_changes_nothing() {
    let mut book = book();
    book.stream_connected(0);
    let new = book.apply(order_event(ExchangeOrderStatus::New, "0", None, 10), 1);
    assert_eq!((new.order.is_some(), new.new_fill.is_none(), new.stale), (true, true, false));
    assert_eq!(book.open_orders(&btc()).len(), 1);

    let partial = order_event(ExchangeOrderStatus::PartiallyFilled, "1", Some(("t1", "1")), 20);
    let applied = book.apply(partial.clone(), 2);
    assert_eq!(applied.new_fill.map(|f| f.trade_id), Some("t1".to_owned()));
    // The same event again (a duplicated delivery): no new fill, nothing to record.
    let again = book.apply(partial, 3);
    assert_eq!((again.new_fill, again.order.is_some()), (None, true), "same state, applied idempotently");

    // Reordered: the final fill arrives before an earlier partial one; the earlier one's fill is
    // still new, its state is not.
    let filled = book.apply(order_event(ExchangeOrderStatus::Filled, "2", Some(("t3", "0.5")), 40), 4);
    assert_eq!(filled.order.map(|o| o.status), Some(ExchangeOrderStatus::Filled));
    assert!(book.open_orders(&btc()).is_empty());
    let late = book.apply(order_event(ExchangeOrderStatus::PartiallyFilled, "1.5", Some(("t2", "0.5")), 30), 5);
    assert_eq!(late.new_fill.map(|f| f.trade_id), Some("t2".to_owned()));
    assert!(late.stale && late.order.is_none());
    // A late NEW never reopens a final order.
    let reopened = book.apply(order_event(ExchangeOrderStatus::New, "0", None, 10), 6);
    assert!(reopened.stale);
    assert!(book.open_orders(&btc()).is_empty());
}

#[test]
fn remembered_trade_ids_are_bounded_and_the_oldest_is_forgotten_first() {
    let mut book = book();
    for (index, trade) in ["a", "b", "c", "d"].into_iter().enumerate() {
        let event = order_event(ExchangeOrderStatus::PartiallyFilled, "1", Some((trade, "0.1")), index as i64);
        assert!(book.apply(event, 0).new_fill.is_some());
    }
    // Three remembered: "a" was forgotten (reconciliation, keyed by trade id in the database, is
    // what keeps a fill from being recorded twice), "d" is still known.
    assert!(
        book.apply(order_event(ExchangeOrderStatus::PartiallyFilled, "1", Some(("d", "0.1")), 9), 0).new_fill.is_none()
    );
    assert!(
        book.apply(order_event(ExchangeOrderStatus::PartiallyFilled, "1", Some(("a", "0.1")), 9), 0).new_fill.is_some()
    );
}

#[test]
fn positions_follow_the_newest_of_events_and_reads_by_venue_time() {
    let mut book = book();
    let connection = book.stream_connected(0);
    book.apply_snapshot(snapshot("1", "1000", 100), Some(connection));
    // An event older than the read is already in it.
    let old = book.apply(position_event("3", 90), 1);
    assert!(old.stale && old.positions.is_empty());
    assert_eq!(book.position(&btc()).quantity, dec("1"));
    // A newer one sets the amount, the entry and the mark it implies (entry + PnL per unit).
    let newer = book.apply(position_event("2", 110), 2);
    assert_eq!(newer.positions, vec![btc()]);
    let position = book.position(&btc());
    assert_eq!((position.quantity, position.mark_price), (dec("2"), dec("102")));
    // A read older than that event keeps the event's amount; a newer read replaces it, and a
    // symbol it does not list is flat.
    book.apply_snapshot(snapshot("5", "1000", 105), Some(connection));
    assert_eq!(book.position(&btc()).quantity, dec("2"));
    book.apply_snapshot(RestSnapshot { positions: Vec::new(), ..snapshot("0", "1000", 120) }, Some(connection));
    assert_eq!(book.position(&btc()).quantity, Decimal::ZERO);
}

#[test]
fn equity_is_the_wallet_plus_every_position_at_the_newest_close() {
    let mut book = book();
    assert_eq!(book.equity_usdt(&BTreeMap::new()), None, "no wallet known yet");
    book.apply(position_event("2", 10), 0);
    // Without a close: the PnL the event reported (2 × 2).
    assert_eq!(book.equity_usdt(&BTreeMap::new()), Some(dec("994")));
    // At a close of 95: 2 × (95 - 100).
    let marks = BTreeMap::from([(btc(), dec("95"))]);
    assert_eq!(book.equity_usdt(&marks), Some(dec("980")));
}

#[test]
fn a_read_drops_orders_it_no_longer_lists_unless_an_event_since_says_otherwise() {
    let mut book = book();
    let connection = book.stream_connected(0);
    book.apply(order_event(ExchangeOrderStatus::New, "0", None, 10), 0);
    book.apply_snapshot(RestSnapshot { open_orders: Vec::new(), ..snapshot("0", "1000", 5) }, Some(connection));
    assert_eq!(book.open_orders(&btc()).len(), 1, "the event is newer than the read");
    book.apply_snapshot(RestSnapshot { open_orders: Vec::new(), ..snapshot("0", "1000", 20) }, Some(connection));
    assert!(book.open_orders(&btc()).is_empty());
    // It ended: a late event about it does not reopen it.
    assert!(book.apply(order_event(ExchangeOrderStatus::New, "0", None, 10), 0).stale);
    assert!(book.open_orders(&btc()).is_empty());
}

#[test]
fn a_position_is_behind_until_the_account_update_after_its_newest_fill_arrives() {
    let mut book = book();
    let connection = book.stream_connected(0);
    book.apply_snapshot(snapshot("0", "1000", 100), Some(connection));
    assert!(book.position_caught_up(&btc()), "no fill seen: the read is the position");
    // Binance may send the order update (with its fill) before the account update.
    book.apply(order_event(ExchangeOrderStatus::Filled, "1", Some(("t1", "1")), 110), 1);
    assert!(!book.position_caught_up(&btc()), "the fill at 110 is not in the position known as of 100");
    book.apply(position_event("1", 110), 2);
    assert!(book.position_caught_up(&btc()));
    // A read taken after the fill catches it up too.
    book.apply(order_event(ExchangeOrderStatus::Filled, "1", Some(("t2", "1")), 130), 3);
    assert!(!book.position_caught_up(&btc()));
    book.apply_snapshot(snapshot("2", "1000", 131), Some(connection));
    assert!(book.position_caught_up(&btc()));
}

#[test]
fn a_fill_read_by_rest_whose_events_the_stream_dropped_leaves_the_position_behind() {
    let mut book = book();
    let connection = book.stream_connected(0);
    book.apply_snapshot(snapshot("0", "1000", 100), Some(connection));
    let heard_before = book.last_heard_ms();
    // The order's answer (read by REST) lists a fill at 120; the stream dropped both its events.
    let filled = Fill { time_ms: 120, ..fill("t1", "1") };
    book.apply_read_fills(&order("9", ExchangeOrderStatus::Filled, "1"), &[filled]);
    assert!(!book.position_caught_up(&btc()), "the book's flat position is older than the fill");
    assert!(book.order_is_final("9"));
    assert_eq!(book.last_heard_ms(), heard_before, "a REST read is not the stream speaking");
    // The stream's copy of the trade later is a duplicate; its account update catches it up.
    let duplicate = book.apply(order_event(ExchangeOrderStatus::Filled, "1", Some(("t1", "1")), 120), 5);
    assert!(duplicate.new_fill.is_none());
    book.apply(position_event("1", 120), 6);
    assert!(book.position_caught_up(&btc()));
}

#[test]
fn a_connection_under_way_is_not_up_until_it_says_something_and_one_that_fails_is_down() {
    let mut book = book();
    book.stream_connecting(10);
    assert!(book.is_connecting());
    assert_eq!(book.connection(), None, "a snapshot read now would not verify the book");
    assert_eq!(book.verification(11), Err(Unverified::Connecting { since_ms: 10 }));
    book.stream_failed(20);
    assert_eq!(book.verification(21), Err(Unverified::Disconnected { since_ms: 20 }));
    book.stream_connecting(30);
    let connection = book.stream_connected(40);
    assert_eq!(book.verification(41), Err(Unverified::NoSnapshotOnThisConnection { connected_since_ms: 40 }));
    book.apply_snapshot(snapshot("0", "1000", 100), Some(connection));
    assert_eq!(book.verification(42), Ok(()));
    // A failure reported for a connection attempt that is no longer under way changes nothing.
    book.stream_failed(50);
    assert_eq!(book.verification(51), Ok(()));
}

#[test]
fn reconnects_back_off_with_jitter_and_a_stable_connection_resets_the_backoff() {
    // initial 1 s, max 60 s, stable after 60 s (the defaults).
    let mut book = book().with_jitter_seed(7);
    assert_eq!(book.reconnect_due(0), Ok(()), "the first connection does not wait");
    let mut at_ms = 0;
    let mut waits_ms = Vec::new();
    for _ in 0..9 {
        book.stream_connecting(at_ms);
        book.stream_failed(at_ms + 5);
        let not_before_ms = book.reconnect_due(at_ms + 5).expect_err("a failed connection waits");
        waits_ms.push(not_before_ms - (at_ms + 5));
        assert_eq!(book.reconnect_due(not_before_ms - 1), Err(not_before_ms));
        assert_eq!(book.reconnect_due(not_before_ms), Ok(()));
        at_ms = not_before_ms;
    }
    assert_eq!(book.failures_in_a_row(), 9);
    // Each wait lies in [backoff / 2, backoff], the backoff doubling from 1 s up to 60 s.
    let backoffs_ms = [1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000, 60_000];
    for (wait_ms, backoff_ms) in waits_ms.iter().zip(backoffs_ms) {
        assert!((backoff_ms / 2..=backoff_ms).contains(wait_ms), "waits {waits_ms:?}");
    }
    // Jitter: the capped waits are not all equal, and another account's seed waits differently.
    assert!(waits_ms[6..].windows(2).any(|pair| pair[0] != pair[1]), "waits {waits_ms:?}");
    assert_ne!(book_failed_once(8).reconnect_due(5), book_failed_once(7).reconnect_due(5));
    assert_eq!(
        book_failed_once(7).reconnect_due(5),
        book_failed_once(7).reconnect_due(5),
        "the same seed waits the same"
    );

    // A connection that drops soon after it came up counts as a failure in a row; one that stayed
    // up a minute starts again from the initial wait.
    book.stream_connecting(at_ms);
    book.stream_connected(at_ms + 10);
    book.stream_disconnected(at_ms + 1_000);
    assert_eq!(book.failures_in_a_row(), 10);
    let after_flap_ms = book.reconnect_due(at_ms + 1_000).unwrap_err();
    book.stream_connecting(after_flap_ms);
    let connection = book.stream_connected(after_flap_ms + 10);
    book.stream_ended(connection, after_flap_ms + 10 + 60_000);
    assert_eq!(book.failures_in_a_row(), 1);
    let wait_ms = book.reconnect_due(after_flap_ms + 10 + 60_000).unwrap_err() - (after_flap_ms + 10 + 60_000);
    assert!((500..=1_000).contains(&wait_ms), "{wait_ms}");
}

fn book_failed_once(seed: u64) -> AccountBook {
    let mut book = book().with_jitter_seed(seed);
    book.stream_connecting(0);
    book.stream_failed(5);
    book
}
