//! Risk locks hold whatever the configuration says. A kill switch or a symbol probation ends only at
//! its expiry or by the audited admin clear: turning the guards off (`[guards] enabled = false`),
//! on a fresh start or by a live reload, stops new locks from being set but never lifts one that
//! holds. Each test trades the whole tree on the paper exchange with a manual clock, then checks the
//! database against the venue's ledger with `bulwark verify`'s own checks.

mod common;

use bulwark::clock::ManualClock;
use bulwark::config::Config;
use bulwark::domain::{IntentPurpose, Symbol, UserId};
use bulwark::failure_points::locks::GuardLock;
use bulwark::persistence::Store;
use bulwark::verify;
use common::{START_MS, Tree, config_in};

/// Three users on fast crossovers: k1 under a kill switch, k2 under a probation on its symbol, k3
/// free (it shows that entries happen at all, so the blocks of the others mean something).
const USERS: &str = r#"
[[users]]
id = "k1"
[[users.strategies]]
symbol = "XRPUSDT"
timeframe = "5m"
strategy = "ema_crossover"
params = { fast = 2, slow = 3 }
position_size_usdt = 200

[[users]]
id = "k2"
[[users.strategies]]
symbol = "BTCUSDT"
timeframe = "5m"
strategy = "ema_crossover"
params = { fast = 2, slow = 3 }
position_size_usdt = 500

[[users]]
id = "k3"
[[users.strategies]]
symbol = "ETHUSDT"
timeframe = "5m"
strategy = "ema_crossover"
params = { fast = 2, slow = 3 }
position_size_usdt = 300
"#;

const GUARDS_OFF: &str = "[guards]\nenabled = false\n";

/// Guards on, but none that would block these users' entries by itself in a few candles.
const GUARDS_ON: &str = "[guards]\nenabled = true\nmin_signal_score = 0\nregime_volatility_max_pct = 100\nfee_multiple = 0\npower_rank_top_k = 10\n";

const USERS_TRADING: [&str; 3] = ["k1", "k2", "k3"];

/// Candles stepped with the locks in force.
const STEPS: usize = 40;

fn user(id: &str) -> UserId {
    UserId::new(id).unwrap()
}

/// Stores a kill switch for k1 and a probation on BTCUSDT for k2, both holding for a day, in the
/// database the tree will open.
fn set_locks(config: &Config) {
    std::fs::create_dir_all(&config.server.data_dir).unwrap();
    let mut store = Store::open(&config.database_path()).unwrap();
    store.ensure_users(&USERS_TRADING.map(user), START_MS).unwrap();
    let lock = |who: &str, failure_point: &str, symbol: Option<&str>| GuardLock {
        id: 0,
        user: user(who),
        failure_point: failure_point.into(),
        symbol: symbol.map(|s| Symbol::new(s).unwrap()),
        reason: "set by the test before the run".into(),
        values: serde_json::json!({}),
        set_at_ms: START_MS - 60_000,
        until_ms: START_MS + 24 * 3_600_000,
        set_at_venue_ms: START_MS - 60_000,
        until_venue_ms: START_MS + 24 * 3_600_000,
    };
    store.insert_guard_lock(&lock("k1", "SIG-KILL-SWITCH", None)).unwrap();
    store.insert_guard_lock(&lock("k2", "SIG-SYMBOL-PROBATION", Some("BTCUSDT"))).unwrap();
}

/// Steps the market and counts, per user, the entries decided and the entries blocked by a lock.
async fn trade(tree: &mut Tree, steps: usize) -> [(usize, usize); 3] {
    let mut counts = [(0, 0); 3];
    for _ in 0..steps {
        let outcome = tree.step_and_settle(&USERS_TRADING).await;
        assert!(outcome.crashes.is_empty(), "{:?}", outcome.crashes);
        for iteration in outcome.iterations {
            let index = USERS_TRADING.iter().position(|u| *u == iteration.user).unwrap();
            let decision = &iteration.decision;
            if decision.outcome == "enter" {
                counts[index].0 += 1;
            }
            if decision.outcome == "blocked"
                && (decision.reason.starts_with("SIG-KILL-SWITCH: kill switch holds")
                    || decision.reason.starts_with("SIG-SYMBOL-PROBATION: BTCUSDT is on probation"))
            {
                counts[index].1 += 1;
            }
        }
    }
    counts
}

/// No entry intent of k1 or k2 in the database, and `bulwark verify`'s checks all pass against the
/// venue's ledger (its `no-entry-under-lock` among them).
async fn assert_no_entry_under_a_lock(tree: &Tree) {
    let mut store = tree.store();
    for locked in ["k1", "k2"] {
        let entries: Vec<String> = store
            .orders_of(&user(locked))
            .unwrap()
            .into_iter()
            .filter(|order| order.intent.purpose == IntentPurpose::Entry)
            .map(|order| order.intent.client_order_id.to_string())
            .collect();
        assert!(entries.is_empty(), "{locked} entered under its lock: {entries:?}");
    }
    let ledger = tree.paper.full_ledger().await.unwrap();
    let report = verify::check(&mut store, &ledger).unwrap();
    assert!(report.passed(), "{}", report.render());
    let locks = report.verdict(verify::NO_ENTRY_UNDER_LOCK).unwrap();
    assert!(locks.checked > 0, "k3's entries were checked against the locks: {}", report.render());
}

#[actix_rt::test]
async fn a_trader_crashed_at_four_percent_down_trips_the_kill_switch_at_five_on_the_original_peak() {
    use std::sync::Arc;

    use bulwark::supervision::journal::EventKind;
    use bulwark::supervision::root::UserSupervisorOf;
    use bulwark::supervision::user::OperatorRequest;
    use rust_decimal::Decimal;

    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "[chaos]\nenabled = true\npanic_users = []\n[guards]\nenabled = true\nmax_drawdown_pct = 5\n{}",
        common::ONE_USER
    );
    let config = config_in(dir.path(), &body);
    let clock = ManualClock::new(START_MS);
    let paper = common::start_paper(&config, clock.clone());
    // Equity is set through the REST balance here: the account stream (which would tell the paper
    // venue's own wallet) is off.
    let exchange = Arc::new(common::ScriptedExchange::new(paper.clone(), Vec::new()).without_account_streams());
    let mut tree = Tree::start_with_exchange(config, clock, paper, exchange.clone());
    tree.wait_ready(&["u1"]).await;
    let equity = |usdt: i64| *exchange.equity_usdt.lock().unwrap() = Some(Decimal::from(usdt));
    let kill_switches = |tree: &Tree| {
        tree.store()
            .uncleared_guard_locks(None)
            .unwrap()
            .into_iter()
            .filter(|l| l.failure_point == "SIG-KILL-SWITCH")
            .count()
    };

    // The peak, then 4 % below it: no kill switch.
    equity(10_000);
    tree.step_and_settle(&["u1"]).await;
    equity(9_600);
    tree.step_and_settle(&["u1"]).await;
    let memory = tree.store().risk_memory(&user("u1")).unwrap().expect("the risk memory is stored");
    assert_eq!(memory.equity_peaks[0].1, 10_000.0, "{memory:?}");
    assert_eq!(kill_switches(&tree), 0);

    // The trader crashes and is restarted by its supervisor.
    let supervisor = tree.server.root.send(UserSupervisorOf(user("u1"))).await.unwrap().expect("u1's supervisor");
    let crashed = supervisor.send(OperatorRequest::Crash { reason: "test: crash at 4 % down".into() }).await;
    assert!(matches!(crashed, Ok(Ok(_))), "{crashed:?}");
    tree.wait_supervision("u1 restarted", |e| e.event == EventKind::Restarted).await;
    tree.wait_ready(&["u1"]).await;

    // 5 % below the peak of before the crash: the switch trips, measured from that peak.
    equity(9_500);
    tree.step_and_settle(&["u1"]).await;
    // The lock's row is written in the background (the lock holds in the trader at once).
    let started = std::time::Instant::now();
    let lock = loop {
        let locks = tree.store().uncleared_guard_locks(None).unwrap();
        if let Some(lock) = locks.into_iter().find(|l| l.failure_point == "SIG-KILL-SWITCH") {
            break lock;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "the kill switch did not trip");
        tokio::task::yield_now().await;
    };
    assert_eq!(lock.values["peak_usdt"], 10_000.0, "{lock:?}");
    // The wallet set above plus u1's open position valued at the newest close (cents here).
    let equity = lock.values["equity_usdt"].as_f64().unwrap();
    assert!((equity - 9_500.0).abs() < 1.0, "{lock:?}");
    tree.shutdown().await;
}

#[actix_rt::test]
async fn with_the_guards_off_from_the_start_a_stored_lock_still_blocks_every_entry() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path(), &format!("{GUARDS_OFF}{USERS}"));
    assert!(config.guards.is_none());
    set_locks(&config);
    let mut tree = Tree::start(config, ManualClock::new(START_MS));
    tree.wait_ready(&USERS_TRADING).await;

    let [k1, k2, k3] = trade(&mut tree, STEPS).await;
    assert!(k3.0 > 0, "k3, with no lock, entered (the guards are off): {k3:?}");
    assert_eq!(k1.0, 0, "k1 entered under its kill switch");
    assert_eq!(k2.0, 0, "k2 entered BTCUSDT under its probation");
    assert!(k1.1 > 0 && k2.1 > 0, "their entry signals were blocked by the locks: {k1:?} {k2:?}");
    assert_no_entry_under_a_lock(&tree).await;
    tree.shutdown().await;
}

#[actix_rt::test]
async fn turning_the_guards_off_by_a_reload_lifts_no_lock() {
    let dir = tempfile::tempdir().unwrap();
    let guarded = config_in(dir.path(), &format!("{GUARDS_ON}{USERS}"));
    assert!(guarded.guards.is_some());
    set_locks(&guarded);
    let mut tree = Tree::start(guarded.clone(), ManualClock::new(START_MS));
    tree.wait_ready(&USERS_TRADING).await;
    let [k1, k2, _] = trade(&mut tree, 10).await;
    assert_eq!((k1.0, k2.0), (0, 0), "the guards on: the locks hold");

    // The operator turns the guards off and reloads: every user restarts on the new config.
    let unguarded = config_in(dir.path(), &format!("{GUARDS_OFF}{USERS}"));
    let (running, reconfigured) = bulwark::server::apply_config(&tree.server.root, &guarded, &unguarded).await;
    assert!(running.guards.is_none());
    assert_eq!(reconfigured, USERS_TRADING.map(user), "the guards changed for every user");
    tree.wait_ready(&USERS_TRADING).await;

    let [k1, k2, k3] = trade(&mut tree, STEPS).await;
    assert!(k3.0 > 0, "k3 entered with the guards off: {k3:?}");
    assert_eq!(k1.0, 0, "k1 entered under its kill switch after the reload");
    assert_eq!(k2.0, 0, "k2 entered BTCUSDT under its probation after the reload");
    assert!(k1.1 > 0 && k2.1 > 0, "their entry signals were blocked by the locks: {k1:?} {k2:?}");
    // The locks are still the stored ones, uncleared.
    let uncleared = tree.store().uncleared_guard_locks(None).unwrap();
    assert_eq!(uncleared.len(), 2, "{uncleared:?}");
    assert_no_entry_under_a_lock(&tree).await;
    tree.shutdown().await;
}
