//! Exactly-once placement through the real tree when the exchange misbehaves on order creation:
//! a lost response, refusals that executed nothing, a request that never arrived, a rejection.
//! Whatever happens, one intent is at most one exchange order, and every intent is resolved.

mod common;

use std::sync::Arc;

use bulwark::clock::ManualClock;
use bulwark::domain::{ClientOrderId, OrderState, Symbol, UserId};
use bulwark::exchange::Exchange;
use common::{Fault, ONE_USER, ScriptedExchange, Tree, config_in, start_paper};

fn u1() -> UserId {
    UserId::new("u1").unwrap()
}

fn xrp() -> Symbol {
    Symbol::new("XRPUSDT").unwrap()
}

async fn tree_with(faults: Vec<Fault>) -> (tempfile::TempDir, Tree, Arc<ScriptedExchange>) {
    tree_with_config(faults, "").await
}

async fn tree_with_config(faults: Vec<Fault>, extra: &str) -> (tempfile::TempDir, Tree, Arc<ScriptedExchange>) {
    tree_on(faults, extra, true).await
}

/// A tree whose exchange streams accounts or not (then every account sync reads by REST).
async fn tree_on(faults: Vec<Fault>, extra: &str, streams: bool) -> (tempfile::TempDir, Tree, Arc<ScriptedExchange>) {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path(), &format!("{extra}\n{ONE_USER}"));
    let clock = ManualClock::new(common::START_MS);
    let paper = start_paper(&config, clock.clone());
    let scripted = ScriptedExchange::new(paper.clone(), faults);
    let faulty = Arc::new(if streams { scripted } else { scripted.without_account_streams() });
    let mut tree = Tree::start_with_exchange(config, clock, paper, faulty.clone());
    tree.wait_ready(&["u1"]).await;
    (dir, tree, faulty)
}

/// The state the database records for u1's first intent.
async fn first_order_state(tree: &mut Tree) -> OrderState {
    let id = ClientOrderId::for_intent(&u1(), 1);
    tree.store().order(&id).unwrap().expect("the first intent is committed").state
}

#[actix_rt::test]
async fn a_lost_response_is_resolved_by_client_id_and_never_resent() {
    let (_dir, mut tree, faulty) = tree_with(vec![Fault::LoseResponse]).await;
    let first = tree.step_and_settle(&["u1"]).await;
    let entered = &first.iterations[0];
    assert_eq!(entered.decision.outcome, "enter");
    assert_eq!(entered.follow_ups[0].outcome, "order_unknown", "{:?}", entered.follow_ups);
    assert_eq!(first_order_state(&mut tree).await, OrderState::Unknown);

    // The next sync finds the order by its id (filled on this candle) and adopts it.
    let second = tree.step_and_settle(&["u1"]).await;
    assert_eq!(second.iterations[0].decision.outcome, "hold", "{:?}", second.iterations[0].decision);
    let order = tree.store().order(&ClientOrderId::for_intent(&u1(), 1)).unwrap().unwrap();
    assert_eq!(order.state, OrderState::Filled);
    assert_eq!(tree.store().fill_count(&u1()).unwrap(), 1);
    assert_eq!(faulty.attempts.lock().unwrap().len(), 1, "the order was sent once");
    assert!(tree.paper.position(&u1(), &xrp()).await.unwrap().quantity > rust_decimal::Decimal::ZERO);
    tree.shutdown().await;
}

#[actix_rt::test]
async fn refusals_that_executed_nothing_are_retried_with_the_same_id() {
    let (_dir, mut tree, faulty) = tree_with(vec![Fault::RefuseBeforeSend, Fault::RefuseBeforeSend]).await;
    let first = tree.step_and_settle(&["u1"]).await;
    assert_eq!(first.iterations[0].follow_ups[0].outcome, "order_placed", "{:?}", first.iterations[0].follow_ups);
    let attempts = faulty.attempts.lock().unwrap().clone();
    assert_eq!(attempts, vec![ClientOrderId::for_intent(&u1(), 1); 3], "three attempts, one id");
    // The market order executed on the third attempt, and its fill is recorded.
    assert_eq!(first_order_state(&mut tree).await, OrderState::Filled);
    assert_eq!(tree.store().fill_count(&u1()).unwrap(), 1);
    tree.shutdown().await;
}

/// Steps until the first intent leaves `unknown`; returns how many steps that took and checks that
/// every step meanwhile skipped with the order named.
async fn steps_while_unknown(tree: &mut Tree) -> usize {
    let mut steps = 0;
    loop {
        let outcome = tree.step_and_settle(&["u1"]).await;
        steps += 1;
        if first_order_state(tree).await != OrderState::Unknown {
            return steps;
        }
        let decision = &outcome.iterations[0].decision;
        assert_eq!(decision.outcome, "skipped", "{decision:?}");
        assert_eq!(decision.reason, "order bw-u1-1 is unknown; no new order until it resolves");
        assert!(steps < 40, "resolved eventually");
    }
}

#[actix_rt::test]
async fn an_order_that_never_arrived_is_sent_again_with_the_same_id_after_the_receive_window() {
    let (_dir, mut tree, faulty) = tree_with(vec![Fault::NeverArrives]).await;
    tree.step_and_settle(&["u1"]).await;
    assert_eq!(first_order_state(&mut tree).await, OrderState::Unknown);
    // It was sent at step 1; the exchange would accept it until 5 s (recv_window) after that, plus
    // a 1 s clock-skew margin, and each step is one second of (manual) time. Until the window has
    // passed the order may still exist, so nothing is decided on this symbol and nothing is resent.
    let steps = steps_while_unknown(&mut tree).await;
    assert_eq!(steps, 7, "resent on the first sync after sent_at + 5 s + 1 s");
    let order = tree.store().order(&ClientOrderId::for_intent(&u1(), 1)).unwrap().unwrap();
    assert_eq!((order.state, order.send_attempts), (OrderState::Filled, 2), "executed on its second send");
    let attempts = faulty.attempts.lock().unwrap().clone();
    assert_eq!(attempts, vec![ClientOrderId::for_intent(&u1(), 1); 2], "the same id, twice; never a second id");
    tree.shutdown().await;
}

#[actix_rt::test]
async fn an_order_that_keeps_not_arriving_ends_not_placed_after_its_resubmissions() {
    let (_dir, mut tree, faulty) = tree_with(vec![Fault::NeverArrives; 5]).await;
    tree.step_and_settle(&["u1"]).await;
    // Sent at steps 1, 8, 15, 22 and 29 (each time after the previous request's window closed),
    // lost each time; at step 36 the fifth window has closed too and no send is left.
    let steps = steps_while_unknown(&mut tree).await;
    assert_eq!(steps, 35);
    let order = tree.store().order(&ClientOrderId::for_intent(&u1(), 1)).unwrap().unwrap();
    assert_eq!((order.state, order.send_attempts), (OrderState::NotPlaced, 5));
    assert!(order.last_error.unwrap().contains("not resubmitted (5 request(s) sent"));
    // Trading resumes with a new decision (a new intent, a new id).
    tree.step_and_settle(&["u1"]).await;
    let attempts = faulty.attempts.lock().unwrap().clone();
    assert_eq!(attempts[..5].to_vec(), vec![ClientOrderId::for_intent(&u1(), 1); 5]);
    assert!(attempts[5..].iter().all(|id| *id == ClientOrderId::for_intent(&u1(), 2)), "{attempts:?}");
    assert!(
        tree.paper.order_by_client_id(&u1(), &xrp(), &ClientOrderId::for_intent(&u1(), 1)).await.unwrap().is_none()
    );
    tree.shutdown().await;
}

#[actix_rt::test]
async fn a_rejection_is_final_and_the_next_decision_is_a_new_intent() {
    let (_dir, mut tree, faulty) = tree_with(vec![Fault::Reject]).await;
    let first = tree.step_and_settle(&["u1"]).await;
    let follow_up = &first.iterations[0].follow_ups[0];
    assert_eq!(follow_up.outcome, "order_rejected");
    assert!(follow_up.reason.contains("Margin is insufficient"), "{follow_up:?}");
    let order = tree.store().order(&ClientOrderId::for_intent(&u1(), 1)).unwrap().unwrap();
    assert_eq!(order.state, OrderState::Rejected);
    assert!(order.last_error.unwrap().contains("-2019"));
    let second = tree.step_and_settle(&["u1"]).await;
    assert_eq!(second.iterations[0].decision.client_order_id, Some(ClientOrderId::for_intent(&u1(), 2)));
    assert_eq!(faulty.attempts.lock().unwrap().len(), 2);
    tree.shutdown().await;
}

#[actix_rt::test]
async fn a_filled_order_is_not_marked_done_until_the_exchange_lists_its_fills() {
    // Without the stream (which carries each fill), the order is resolved by REST reads.
    let (_dir, mut tree, faulty) = tree_on(Vec::new(), "", false).await;
    // The market order executes at once, but the exchange's trade list lags behind its answer.
    *faulty.lagging_fill_reads.lock().unwrap() = 1;
    let entered = tree.step_and_settle(&["u1"]).await;
    assert_eq!(entered.iterations[0].decision.outcome, "enter", "{:?}", entered.iterations[0].decision);
    let order = tree.store().order(&ClientOrderId::for_intent(&u1(), 1)).unwrap().unwrap();
    assert_eq!(order.state, OrderState::Open, "filled on the exchange, but no fill recorded yet: {order:?}");
    assert!(order.last_error.as_deref().unwrap().starts_with("fills listed for 0 of"), "{order:?}");
    assert_eq!(tree.store().fill_count(&u1()).unwrap(), 0);
    // The next sync reads the fills, now listed: the order is done and its fill is recorded before
    // anything is decided on the symbol.
    let next = tree.step_and_settle(&["u1"]).await;
    assert_ne!(next.iterations[0].decision.outcome, "skipped", "{:?}", next.iterations[0].decision);
    assert_eq!(first_order_state(&mut tree).await, OrderState::Filled);
    assert_eq!(tree.store().fill_count(&u1()).unwrap(), 1);
    tree.shutdown().await;
}

#[actix_rt::test]
async fn fills_are_found_whatever_the_market_speed() {
    // Slower than real time: one 5-minute candle per 20 minutes of wall time, so market time (the
    // exchange's) falls behind the bot's wall clock.
    let (_dir, mut tree, _) = tree_with_config(Vec::new(), "[exchange.paper]\ncandle_interval_ms = 1200000").await;
    tree.step_and_settle(&["u1"]).await;
    assert_eq!(first_order_state(&mut tree).await, OrderState::Filled);
    assert_eq!(tree.store().fill_count(&u1()).unwrap(), 1);
    let held = tree.paper.position(&u1(), &xrp()).await.unwrap().quantity;
    assert!(held > rust_decimal::Decimal::ZERO, "the fill is the exchange's position: {held}");
    tree.shutdown().await;
}

#[actix_rt::test]
async fn a_position_its_fills_cannot_explain_halts_entries_until_reconciliation_explains_it() {
    use bulwark::actors::order_router::{ReconcileUser, SyncAccount};
    use bulwark::domain::{OrderRequest, OrderType, Quantity, Side};
    use bulwark::failure_points::catalog::STATE_POSITION_SYNC;

    let (_dir, mut tree, faulty) = tree_with(Vec::new()).await;
    // A trade behind bulwark's back, on a symbol u1's strategy does not trade (so no order of its
    // own is in flight there), executed at once.
    let btc = Symbol::new("BTCUSDT").unwrap();
    let manual = OrderRequest {
        client_order_id: ClientOrderId::parse("manual-1").unwrap(),
        symbol: btc.clone(),
        side: Side::Buy,
        order_type: OrderType::Market,
        quantity: Quantity::new(rust_decimal::Decimal::new(1, 2)).unwrap(),
        reduce_only: false,
        timestamp_ms: tree.now_ms(),
    };
    tree.paper.create_order(&u1(), &manual).await.unwrap();
    tree.step_and_settle(&["u1"]).await;
    assert!(tree.paper.position(&u1(), &btc).await.unwrap().quantity > rust_decimal::Decimal::ZERO);

    // The exchange's trade list no longer reaches back to that fill.
    *faulty.empty_trade_lists.lock().unwrap() = true;
    let router = tree.server.directory.order_router().unwrap();
    let reconcile = ReconcileUser { user: u1(), symbols: vec![btc.clone()], settled: true };
    let report = router.send(reconcile).await.unwrap().unwrap();
    assert_eq!(report.positions_resynced.len(), 1, "{report:?}");
    assert!(report.fills_imported.is_empty(), "{report:?}");
    let reason = report.entries_halted.expect("entries halted");
    assert!(reason.contains("BTCUSDT: the exchange holds 0.01, the recorded fills net 0"), "{reason}");
    assert_eq!(tree.server.directory.position_hold(&u1()), Some(reason.clone()));
    // Every account sync of u1 carries the halt (on any symbol): the core refuses entries with it.
    let snapshot =
        router.send(SyncAccount { user: u1(), symbol: xrp(), marks: Default::default() }).await.unwrap().unwrap();
    let halt = snapshot.entries_halted.expect("halted");
    assert_eq!((halt.failure_point, halt.reason), (STATE_POSITION_SYNC, reason));

    // The trade list reaches the fill again: imported, explained, entries resume.
    *faulty.empty_trade_lists.lock().unwrap() = false;
    let report =
        router.send(ReconcileUser { user: u1(), symbols: vec![btc.clone()], settled: true }).await.unwrap().unwrap();
    assert_eq!(report.fills_imported, vec![(btc.clone(), 1)], "{report:?}");
    assert_eq!(report.entries_halted, None);
    assert_eq!(tree.server.directory.position_hold(&u1()), None);
    let snapshot =
        router.send(SyncAccount { user: u1(), symbol: xrp(), marks: Default::default() }).await.unwrap().unwrap();
    assert_eq!(snapshot.entries_halted, None);
    let actions: Vec<String> = tree.store().reconcile_actions(&u1()).unwrap().into_iter().map(|a| a.0).collect();
    assert_eq!(actions, ["position_resynced", "entries_halted", "fills_imported", "entries_resumed"]);

    // While the trader runs, a periodic pass (no symbols named) may fall between a fill and the
    // position read after it: a mismatch halts only when the next pass sees it too. Here the
    // manual fill is forgotten again and the trade list stays empty.
    tree.store_writable().execute_batch("DELETE FROM fills WHERE client_order_id IS NULL").unwrap();
    *faulty.empty_trade_lists.lock().unwrap() = true;
    let first = router.send(ReconcileUser { user: u1(), symbols: vec![], settled: false }).await.unwrap().unwrap();
    assert_eq!(first.entries_halted, None, "one pass is not enough while trading");
    assert_eq!(tree.server.directory.position_hold(&u1()), None);
    let second = router.send(ReconcileUser { user: u1(), symbols: vec![], settled: false }).await.unwrap().unwrap();
    assert!(second.entries_halted.is_some(), "{second:?}");
    assert!(tree.server.directory.position_hold(&u1()).is_some());
    tree.shutdown().await;
}

#[actix_rt::test]
async fn with_the_account_stream_syncs_read_the_book_and_fills_are_recorded_from_it() {
    let (_dir, mut tree, faulty) = tree_with(Vec::new()).await;
    let mut placed = 0;
    for _ in 0..16 {
        let outcome = tree.step_and_settle(&["u1"]).await;
        placed += outcome.iterations.iter().filter(|i| i.decision.client_order_id.is_some()).count();
    }
    let metrics = &tree.server.directory.metrics;
    let (from_book, from_rest) = (metrics.account_syncs("book"), metrics.account_syncs("rest"));
    let recorded = metrics.stream_order_updates("recorded") + metrics.stream_order_updates("already_recorded");
    eprintln!(
        "{placed} orders placed; syncs: {from_book} from the book, {from_rest} by REST; {recorded} order updates from the stream"
    );
    assert!(placed >= 2, "the strategy trades in 16 candles ({placed})");
    assert_eq!(from_book + from_rest, 16, "one sync per decision");
    // A sync reads by REST before the first snapshot, and after a placement only if the fill's
    // event is not recorded within its short wait (a market order executes at once, so its fill is
    // recorded long before the next close): the rest read the book.
    assert!(from_book >= 16 - placed as u64 - 1, "{from_book} syncs from the book for {placed} orders");
    // Every position is read by the start-up's sweep (with the open orders), by the snapshot and
    // by each REST sync.
    assert_eq!(faulty.read_count("positions"), 2 + from_rest);
    // Whichever way each order was resolved, every fill on the exchange is in the database once.
    let fills_on_exchange = tree.paper.fills(&u1(), &xrp(), 0).await.unwrap().len();
    assert_eq!(tree.store().fill_count(&u1()).unwrap() as usize, fills_on_exchange);
    tree.shutdown().await;
}

#[actix_rt::test]
async fn a_dropped_account_stream_turns_sys_user_stream_critical_until_the_healer_reconnects_it() {
    use bulwark::actors::healer::RunHealing;
    use bulwark::actors::monitor::RunChecks;
    use bulwark::failure_points::catalog::SYS_USER_STREAM;
    use bulwark::failure_points::monitor::CheckStatus;
    let (dir, mut tree, _faulty) = tree_with(Vec::new()).await;
    tree.step_and_settle(&["u1"]).await;
    let (monitor, healer) = (tree.server.directory.monitor().unwrap(), tree.server.directory.healer().unwrap());
    let stream_check = || async {
        let run = monitor.send(RunChecks).await.unwrap().unwrap();
        run.check(SYS_USER_STREAM).unwrap().clone()
    };
    let verified = stream_check().await;
    assert_eq!(verified.status, CheckStatus::Ok, "{}", verified.detail);
    assert!(verified.detail.starts_with("1 account stream(s) verified"), "{}", verified.detail);

    // The connection drops: within one monitor run the user is named, critical.
    assert!(tree.paper.end_account_stream(&u1()));
    let down = wait_for(|| async {
        let check = stream_check().await;
        (check.status == CheckStatus::Critical).then_some(check)
    })
    .await;
    assert_eq!(down.users, vec![u1()]);
    assert!(down.detail.contains("u1: the account stream is down since"), "{}", down.detail);
    // A critical run wakes the Healer, which reconnects the stream and reads a snapshot on it
    // (a pass of its own, or this one if it has not started yet).
    let _ = healer.send(RunHealing).await.unwrap();
    wait_for(|| async { (stream_check().await.status == CheckStatus::Ok).then_some(()) }).await;
    // Healed is for the re-check after the action to say, and it did.
    let healing_log = dir.path().join("logs/failure_point_healing.jsonl");
    let healed = wait_for(|| async {
        let text = std::fs::read_to_string(&healing_log).unwrap_or_default();
        text.lines()
            .find(|line| line.contains("SYS-USER-STREAM") && line.contains("\"result\":\"healed\""))
            .map(str::to_owned)
    })
    .await;
    assert!(healed.contains("reconnect_account_streams") && healed.contains("u1: reconnected"), "{healed}");
    // The book answers u1's syncs again (those with no order of its own in flight).
    let from_book_before = tree.server.directory.metrics.account_syncs("book");
    for _ in 0..3 {
        tree.step_and_settle(&["u1"]).await;
    }
    assert!(tree.server.directory.metrics.account_syncs("book") > from_book_before, "the book answers again");
    tree.shutdown().await;
}

/// Polls `probe` until it answers, for at most 10 s (the condition comes from other actors).
async fn wait_for<T, Probe, Answer>(probe: Probe) -> T
where
    Probe: Fn() -> Answer,
    Answer: std::future::Future<Output = Option<T>>,
{
    let polling = async {
        loop {
            if let Some(answer) = probe().await {
                return answer;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), polling).await.expect("the condition within 10 s")
}
