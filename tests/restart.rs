//! A restarted trader reloads its state from the database and reconciles with the exchange before
//! it trades again: orphan orders (bulwark's prefix, unknown to the database) are cancelled, the
//! position's start time survives, the intent sequence continues. A whole tree restarted on the
//! same database resumes the same way.

mod common;

use std::str::FromStr;
use std::sync::Arc;

use bulwark::clock::{Clock, ManualClock};
use bulwark::domain::{ClientOrderId, OrderRequest, OrderState, OrderType, Price, Quantity, Side, Symbol, UserId};
use bulwark::exchange::Exchange;
use bulwark::exchange::paper::PaperExchange;
use bulwark::supervision::journal::EventKind;
use common::{ONE_USER, ScriptedExchange, Tree, config_in};
use rust_decimal::Decimal;

/// Fast restarts, so that the tests do not wait on backoff.
const FAST_RESTARTS: &str = "[supervisor]\nbackoff_ms_initial = 2\nbackoff_ms_max = 50\n";

fn u1() -> UserId {
    UserId::new("u1").unwrap()
}

fn xrp() -> Symbol {
    Symbol::new("XRPUSDT").unwrap()
}

/// An order placed straight on the exchange with bulwark's prefix, far from the market so that it
/// stays open: the database has never heard of it.
async fn place_orphan_on(paper: &PaperExchange, client_order_id: &ClientOrderId, now_ms: i64) {
    let request = OrderRequest {
        client_order_id: client_order_id.clone(),
        symbol: xrp(),
        side: Side::Buy,
        order_type: OrderType::Limit { price: Price::new(Decimal::from_str("0.5").unwrap()).unwrap() },
        quantity: Quantity::new(Decimal::from(20)).unwrap(),
        reduce_only: false,
        timestamp_ms: now_ms,
    };
    paper.create_order(&u1(), &request).await.expect("the exchange accepts the orphan");
}

/// Waits for the Monitor's first run (5 s after start; with `[monitor] interval_secs = 3600` the
/// next is an hour away): it lists the users' open orders for orphans, and the Healer would cancel
/// an orphan the test wants the restart to find.
async fn wait_first_monitor_run(tree: &Tree) {
    let waited = std::time::Instant::now();
    while tree.server.directory.latest_monitor_run().is_none() {
        assert!(waited.elapsed() < std::time::Duration::from_secs(60), "no monitor run within a minute");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

const MONITOR_HOURLY: &str = "[monitor]\ninterval_secs = 3600\n";

#[actix_rt::test]
async fn a_crashed_trader_reloads_its_state_and_cancels_orphans_before_trading_again() {
    let dir = tempfile::tempdir().unwrap();
    let chaos = "[chaos]\nenabled = true\npanic_users = [\"u1\"]\npanic_every_decisions = 4\n";
    let config = config_in(dir.path(), &format!("{FAST_RESTARTS}\n{MONITOR_HOURLY}\n{chaos}\n{ONE_USER}"));
    let mut tree = Tree::start(config, ManualClock::new(common::START_MS));
    tree.wait_ready(&["u1"]).await;
    wait_first_monitor_run(&tree).await;

    // Three decisions: an entry (executed at once), then holds.
    for _ in 0..3 {
        let outcome = tree.step_and_settle(&["u1"]).await;
        assert!(outcome.crashes.is_empty());
    }
    let before = tree.store().load_trader_state(&u1()).unwrap();
    let position = before.positions[0].clone();
    assert!(!position.quantity.is_zero(), "u1 holds a position: {position:?}");
    let started_at = position.position_start_time_ms.expect("the position has a start time");
    assert!(before.last_intent_seq >= 1);

    // An orphan appears on the exchange; then the fourth decision panics.
    let orphan = ClientOrderId::parse("bw-u1-9999").unwrap();
    place_orphan_on(&tree.paper, &orphan, tree.now_ms()).await;
    let outcome = tree.step_and_settle(&["u1"]).await;
    assert_eq!(outcome.crashes.len(), 1, "the chaos plan panics on decision 4");
    tree.wait_supervision("restarted", |e| e.event == EventKind::Restarted).await;
    let ready = tree.wait_ready(&["u1"]).await;
    let detail = &ready[0].1;
    assert!(detail.contains("reloaded 1 position(s)"), "{detail}");
    assert!(detail.contains(&format!("intent sequence {}", before.last_intent_seq)), "{detail}");
    assert!(detail.contains("1 orphan(s) cancelled"), "{detail}");

    // The orphan is gone from the exchange and the cancellation is on record.
    assert!(tree.paper.open_orders(&u1(), None).await.unwrap().is_empty());
    let actions = tree.store().reconcile_actions(&u1()).unwrap();
    assert_eq!(actions.len(), 1);
    assert_eq!(actions[0].0, "orphan_cancelled");
    assert_eq!(actions[0].1.as_deref(), Some(orphan.as_str()));

    // The restarted trader trades on: its position start time is the one from before the crash,
    // and its next order continues the sequence.
    let mut next_seq = None;
    let mut synced_without_an_order = false;
    for _ in 0..12 {
        let outcome = tree.step_and_settle(&["u1"]).await;
        let ordered = outcome.iterations.iter().find_map(|i| i.decision.client_order_id.clone());
        if outcome.crashes.is_empty() && ordered.is_none() && !synced_without_an_order {
            // A candle the restarted trader synced and decided no order on: the row it saved is
            // the position opened before the crash, with the same start time.
            let after = tree.store().load_trader_state(&u1()).unwrap();
            assert_eq!(after.positions[0].quantity, position.quantity);
            assert_eq!(
                after.positions[0].position_start_time_ms,
                Some(started_at),
                "position_start_time survives the restart"
            );
            synced_without_an_order = true;
        }
        if outcome.crashes.is_empty()
            && let Some(id) = ordered
        {
            next_seq = Some(id);
            break;
        }
        if !outcome.crashes.is_empty() {
            tree.wait_ready(&["u1"]).await;
        }
    }
    assert!(synced_without_an_order, "the restarted trader held the position at least one candle");
    let next = next_seq.expect("the restarted trader places its next order within 12 candles");
    assert_eq!(next, ClientOrderId::for_intent(&u1(), before.last_intent_seq + 1), "no sequence number is reused");
    tree.shutdown().await;
}

#[actix_rt::test]
async fn a_crash_storm_spends_request_weight_only_on_what_must_be_read_again() {
    // u1 panics on every decision: each incarnation starts, syncs, decides once and crashes.
    let chaos = "[chaos]\nenabled = true\npanic_users = [\"u1\"]\npanic_every_decisions = 1\n";
    let storm =
        format!("[supervisor]\nbackoff_ms_initial = 2\nbackoff_ms_max = 20\nmax_restarts = 100\n{MONITOR_HOURLY}");
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(common::START_MS);
    let config = config_in(dir.path(), &format!("{storm}\n{chaos}\n{ONE_USER}"));
    let paper = common::start_paper(&config, clock.clone());
    let exchange = Arc::new(ScriptedExchange::new(paper.clone(), Vec::new()));
    let mut tree = Tree::start_with_exchange(config, clock, paper, exchange.clone());
    let first = tree.wait_ready(&["u1"]).await;
    assert!(!first[0].1.contains("not read again"), "the first start reads everything: {first:?}");
    // What the storm reads is counted alone, after the Monitor's own listing.
    wait_first_monitor_run(&tree).await;
    let swept = exchange.read_count("open orders (all)");
    let listed = exchange.read_count("open orders (one symbol)");
    let restarts = 10;
    let mut details = Vec::new();
    for _ in 0..restarts {
        let outcome = tree.step_and_settle(&["u1"]).await;
        assert_eq!(outcome.crashes.len(), 1, "the chaos plan panics on every decision");
        details.extend(tree.wait_ready(&["u1"]).await);
    }
    // The first start swept every open order of the account with every position (on Binance the
    // position list and each symbol it names: 5 + 1 a symbol); the restarts, moments later, list open orders on u1's symbol only (1 each) and
    // leave the position to the syncs. The first sync reads by REST (its account stream is still
    // connecting) and the stream, once up, reads the account once (every position, the wallet,
    // every open order); every later sync, in whichever incarnation, reads the account's book: no
    // request.
    assert_eq!((swept, exchange.read_count("open orders (all)")), (1, 2));
    assert_eq!(exchange.read_count("open orders (one symbol)") - listed, restarts);
    assert_eq!(exchange.read_count("position"), 0, "the sweep's position list serves the start-up");
    assert_eq!(exchange.read_count("positions"), 3, "the first start's sweep, the first sync's, one account snapshot");
    assert!(details.iter().all(|(_, detail)| detail.contains("not read again")), "{details:?}");
    tree.shutdown().await;
}

#[actix_rt::test]
async fn a_restarted_server_resumes_from_the_database_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(common::START_MS);
    let config = config_in(dir.path(), &format!("{FAST_RESTARTS}\n{ONE_USER}"));
    // Every order request that reaches the exchange, over both runs.
    let mut sent: Vec<ClientOrderId> = Vec::new();

    // First run: trade a few candles.
    let paper = common::start_paper(&config, clock.clone());
    let exchange = Arc::new(ScriptedExchange::new(paper.clone(), Vec::new()));
    let mut tree = Tree::start_with_exchange(config.clone(), clock.clone(), paper, exchange.clone());
    tree.wait_ready(&["u1"]).await;
    for _ in 0..6 {
        tree.step_and_settle(&["u1"]).await;
    }
    let first = tree.store().load_trader_state(&u1()).unwrap();
    let first_orders = tree.store().orders_of(&u1()).unwrap();
    assert!(!first_orders.is_empty());
    tree.shutdown().await;
    sent.extend(exchange.attempts.lock().unwrap().drain(..));

    // Second run on the same database and exchange books.
    let paper = common::start_paper(&config, clock.clone());
    let exchange = Arc::new(ScriptedExchange::new(paper.clone(), Vec::new()));
    let mut tree = Tree::start_with_exchange(config, clock, paper, exchange.clone());
    let ready = tree.wait_ready(&["u1"]).await;
    assert!(ready[0].1.contains(&format!("intent sequence {}", first.last_intent_seq)), "{ready:?}");
    for _ in 0..6 {
        tree.step_and_settle(&["u1"]).await;
    }
    let orders = tree.store().orders_of(&u1()).unwrap();
    assert!(orders.len() > first_orders.len(), "the second run traded");
    assert!(tree.paper.open_orders(&u1(), None).await.unwrap().is_empty(), "market orders all filled");
    // The first run's orders are untouched; the second run's continue the sequence.
    assert_eq!(&orders[..first_orders.len()], first_orders.as_slice());
    for (index, order) in orders.iter().enumerate() {
        assert_eq!(order.intent.intent_seq, index as u64 + 1, "dense, unique sequence");
        assert_eq!(order.state, OrderState::Filled, "{order:?}");
    }
    // Each intent was sent exactly once, over both runs.
    sent.extend(exchange.attempts.lock().unwrap().drain(..));
    let intents: Vec<ClientOrderId> = orders.iter().map(|o| o.intent.client_order_id.clone()).collect();
    assert_eq!(sent, intents, "one request per intent, in order, none repeated");
    let fills = tree.store().fill_count(&u1()).unwrap();
    assert_eq!(fills, orders.len() as u64, "one fill per filled market order, none twice");
    tree.shutdown().await;
}

#[actix_rt::test]
async fn a_trader_never_trades_next_to_an_orphan_it_cannot_cancel() {
    let strict = format!("[supervisor]\nmax_restarts = 1\nbackoff_ms_initial = 2\nbackoff_ms_max = 50\n{ONE_USER}");
    let clock = ManualClock::new(common::START_MS);
    let orphan = ClientOrderId::parse("bw-u1-777").unwrap();

    // An orphan is on the exchange before the server starts, and the exchange refuses to cancel
    // it twice: the first start-up retries and succeeds.
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path(), &strict);
    let paper = common::start_paper(&config, clock.clone());
    place_orphan_on(&paper, &orphan, clock.now_ms()).await;
    let exchange = Arc::new(ScriptedExchange::new(paper.clone(), Vec::new()));
    *exchange.failing_cancels.lock().unwrap() = 2;
    let mut tree = Tree::start_with_exchange(config, clock.clone(), paper, exchange);
    let ready = tree.wait_ready(&["u1"]).await;
    assert!(ready[0].1.contains("1 orphan(s) cancelled"), "{ready:?}");
    assert!(tree.paper.open_orders(&u1(), None).await.unwrap().is_empty());
    tree.shutdown().await;

    // When the cancel always fails, start-up fails each time, the user is quarantined, and no
    // order is ever placed next to the orphan.
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path(), &strict);
    let paper = common::start_paper(&config, clock.clone());
    place_orphan_on(&paper, &orphan, clock.now_ms()).await;
    let exchange = Arc::new(ScriptedExchange::new(paper.clone(), Vec::new()));
    *exchange.failing_cancels.lock().unwrap() = u32::MAX;
    let mut tree = Tree::start_with_exchange(config, clock, paper, exchange.clone());
    let crashed = tree.wait_supervision("start-up failure", |e| e.event == EventKind::Crashed).await;
    let reason = crashed.reason.unwrap();
    assert!(reason.contains("orphan order bw-u1-777 could not be cancelled"), "{reason}");
    assert!(reason.contains("after 5 attempts"), "{reason}");
    let quarantined = tree.wait_supervision("quarantine", |e| e.event == EventKind::Quarantined).await;
    assert!(quarantined.reason.unwrap().contains("could not be cancelled"));
    tree.step().await;
    assert!(exchange.attempts.lock().unwrap().is_empty(), "no order was placed");
    assert!(tree.store().orders_of(&u1()).unwrap().is_empty());
    assert_eq!(tree.paper.open_orders(&u1(), None).await.unwrap().len(), 1, "the orphan is left as it is");
    tree.shutdown().await;
}
