//! bulwark against `bulwark sim`, each in its own process, over loopback: a signed round trip, the
//! exactly-once invariants under lost responses, hangs and every other fault type (checked by
//! comparing the simulator's ledger with bulwark's database), klines coalescing across users, and
//! a 418 ban that stops every request.
//!
//! These tests run real processes on wall time with an accelerated market (one 5-minute candle per
//! 200 ms); what they assert does not depend on timing. They run one at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use bulwark::clock::SystemClock;
use bulwark::domain::{
    Candle, ClientOrderId, IntentPurpose, OrderRequest, OrderState, OrderType, Price, Quantity, Side, Symbol,
    Timeframe, UserId,
};
use bulwark::exchange::{Exchange, ExchangeError};
use bulwark::intelligence::tape;
use bulwark::persistence::Store;
use bulwark::secret::Secret;
use rust_decimal::Decimal;
use serde_json::{Value, json};

/// One test at a time: each runs a simulator and a server on two cores. (A tokio mutex: the guard
/// is held across awaits, and a failed test releases it.)
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

mod sim_process;

use sim_process::*;

/// Compares the simulator's ledger with bulwark's database: the invariants of exactly-once orders.
async fn check_ledger_against_database(sim: &Sim, database: &Path, users: usize, seed: u64) -> (usize, usize) {
    let ledger = sim.get("/sim/ledger").await;
    let mut store = Store::open_read_only(database).unwrap();
    let mut ledger_ids: BTreeMap<(String, String), &Value> = BTreeMap::new();
    for entry in ledger["orders"].as_array().unwrap() {
        let account = entry["account"].as_str().unwrap().to_owned();
        let id = entry["order"]["client_order_id"].as_str().unwrap().to_owned();
        let previous = ledger_ids.insert((account.clone(), id.clone()), entry);
        assert!(previous.is_none(), "SEED={seed}: two exchange orders for {account} {id}");
    }
    let (mut intents_total, mut fills_total) = (0, 0);
    let mut entries = BTreeSet::new();
    for i in 1..=users {
        let user = format!("u{i}");
        let orders = store.orders_of(&UserId::new(&user).unwrap()).unwrap();
        let mut database_ids = BTreeSet::new();
        for order in &orders {
            intents_total += 1;
            let id = order.intent.client_order_id.to_string();
            database_ids.insert(id.clone());
            if order.intent.purpose == IntentPurpose::Entry {
                entries.insert((user.clone(), id.clone()));
            }
            assert!(order.state.is_final(), "SEED={seed}: {user} {id} unresolved: {order:?}");
            match ledger_ids.get(&(user.clone(), id.clone())) {
                Some(entry) => {
                    let status = entry["order"]["status"].as_str().unwrap();
                    let expected = match order.state {
                        OrderState::Filled => "FILLED",
                        OrderState::Cancelled => "CANCELED",
                        OrderState::Expired => "EXPIRED",
                        other => panic!("SEED={seed}: {user} {id} is {other} in the database but on the exchange"),
                    };
                    assert_eq!(status, expected, "SEED={seed}: {user} {id}");
                    assert_eq!(
                        entry["order"]["exchange_order_id"].as_str(),
                        order.exchange_order_id.as_deref(),
                        "SEED={seed}: {user} {id}"
                    );
                    let ledger_fills: BTreeSet<String> = entry["fills"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|f| f["trade_id"].as_str().unwrap().to_owned())
                        .collect();
                    fills_total += ledger_fills.len();
                    assert_eq!(
                        ledger_fills.len() as u64 > 0,
                        order.state == OrderState::Filled,
                        "SEED={seed}: {user} {id}"
                    );
                }
                // Refused before it executed (a rejection, or 429/418 which execute nothing).
                None => assert!(
                    matches!(order.state, OrderState::Rejected | OrderState::NotPlaced),
                    "SEED={seed}: {user} {id} is not on the exchange but {}: {order:?}",
                    order.state
                ),
            }
        }
        for (account, id) in ledger_ids.keys() {
            if *account == user {
                assert!(
                    database_ids.contains(id),
                    "SEED={seed}: exchange order {user} {id} has no intent in the database"
                );
            }
        }
        let fills = store.fill_count(&UserId::new(&user).unwrap()).unwrap();
        let ledger_fills: usize =
            ledger_ids.iter().filter(|((a, _), _)| *a == user).map(|(_, e)| e["fills"].as_array().unwrap().len()).sum();
        assert_eq!(
            fills as usize, ledger_fills,
            "SEED={seed}: {user}: every fill on the exchange is in the database, once"
        );
    }
    // And the same through `bulwark verify`'s checks (positions and guard locks included).
    let executed_entries = ledger_ids
        .iter()
        .filter(|(key, entry)| entries.contains(*key) && !entry["fills"].as_array().unwrap().is_empty())
        .count();
    let ledger: bulwark::exchange::paper::venue::Ledger = serde_json::from_value(ledger).unwrap();
    let report = bulwark::verify::check(&mut store, &ledger).unwrap();
    assert!(report.passed(), "SEED={seed}: {}", report.render());
    // Among them: no entry executed on a held position (what an entry decided on an account nobody
    // had confirmed does: a fill event dropped, delayed or duplicated, a stream silent or
    // reconnecting), checked for every entry that executed.
    let held = report.verdict(bulwark::verify::NO_ENTRY_ON_A_HELD_POSITION).unwrap();
    assert_eq!(held.checked as usize, executed_entries, "SEED={seed}: every executed entry checked");
    (intents_total, fills_total)
}

#[tokio::test]
async fn a_signed_round_trip_works_and_a_wrong_secret_is_refused() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(&sim_config(dir.path(), 1, 1_000, ""), 1);
    let client = |secret_text: &str| sim.client("u1", secret_text);
    let good = client(&secret("u1"));
    let (user, xrp) = (UserId::new("u1").unwrap(), Symbol::new("XRPUSDT").unwrap());
    let candles = good.klines(&xrp, Timeframe::M5, 50).await.unwrap();
    assert_eq!(candles.len(), 50);
    let rules = good.symbol_rules(&xrp).await.unwrap();
    assert_eq!(rules.step_size.to_string(), "0.1");
    let id = ClientOrderId::parse("bw-u1-1").unwrap();
    let request = OrderRequest {
        client_order_id: id.clone(),
        symbol: xrp.clone(),
        side: Side::Buy,
        order_type: OrderType::Limit { price: Price::new(Decimal::new(5, 1)).unwrap() },
        quantity: Quantity::new(Decimal::from(20)).unwrap(),
        reduce_only: false,
        timestamp_ms: bulwark::clock::Clock::now_ms(&SystemClock),
    };
    let placed = good.create_order(&user, &request).await.unwrap();
    assert_eq!(placed.client_order_id, id);
    let found = good.order_by_client_id(&user, &xrp, &id).await.unwrap().expect("the order is found by its id");
    assert_eq!(found.exchange_order_id, placed.exchange_order_id);
    assert_eq!(good.open_orders(&user, Some(&xrp)).await.unwrap().len(), 1);
    let cancelled = good.cancel_order(&user, &xrp, &id).await.unwrap();
    assert_eq!(cancelled.status.as_str(), "CANCELED");
    // A client order id is unique among open orders only: a cancelled order's id may be used again.
    let again = good.create_order(&user, &request).await.unwrap();
    assert_ne!(again.exchange_order_id, placed.exchange_order_id);
    assert!(matches!(good.create_order(&user, &request).await, Err(ExchangeError::Duplicate { code: -4116, .. })));
    good.cancel_order(&user, &xrp, &id).await.unwrap();
    let balance = good.balance(&user).await.unwrap();
    assert_eq!(balance.wallet_balance, Decimal::from(10_000));

    let wrong = client("not-the-secret");
    let refused = wrong.balance(&user).await;
    assert!(matches!(&refused, Err(ExchangeError::Auth { detail }) if detail.starts_with("-1022")), "{refused:?}");
    let text = format!("{refused:?}");
    assert!(!text.contains("not-the-secret") && !text.contains(&key("u1")), "{text}");

    // The CoinGlass-shaped endpoints answer with the key, in the v4 envelope.
    let data = sim
        .http
        .get(format!(
            "{}/api/futures/v2/taker-buy-sell-volume/history?exchange=Binance&symbol=XRPUSDT&interval=5m&limit=10",
            sim.url
        ))
        .header("CG-API-KEY", "cg-key")
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(data["code"], "0");
    assert_eq!(data["data"].as_array().unwrap().len(), 10);
    // Without the key: refused in the envelope, over HTTP 200, as CoinGlass refuses.
    let refused = sim
        .http
        .get(format!("{}/api/futures/funding-rate/history?exchange=Binance&symbol=XRPUSDT&interval=5m", sim.url))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 200);
    assert_eq!(refused.json::<Value>().await.unwrap(), json!({"code": "401", "msg": "API key missing."}));
}

/// An order request's parameters the simulator refuses as Binance does, and a cancel by `orderId`.
#[tokio::test]
async fn order_parameters_are_refused_with_binances_codes_and_an_order_is_cancelled_by_its_order_id() {
    use reqwest::Method;
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(&sim_config(dir.path(), 1, 1_000, ""), 1);
    let order = "/fapi/v1/order";
    let refused = [
        ("symbol=XRPUSDT&side=BUY&type=LIMIT&quantity=20&price=0.5", -1102, "'timeInForce'"),
        ("symbol=XRPUSDT&side=BUY&type=LIMIT&quantity=20&price=0.5&timeInForce=SOON", -1115, "Invalid timeInForce"),
        ("symbol=XRPUSDT&side=BUY&type=MARKET&quantity=20&positionSide=LONG", -4061, "position side"),
        ("symbol=XRPUSDT&side=BUY&type=MARKET&quantity=1000000000", -4005, "greater than max quantity"),
        ("symbol=XRPUSDT&side=BUY&type=MARKET&quantity=20&price=0.5", -1106, "'price' sent when not required"),
        ("symbol=NOPEUSDT&side=BUY&type=MARKET&quantity=20", -1121, "Invalid symbol"),
    ];
    for (query, code, words) in refused {
        let (status, answer) = sim.signed(Method::POST, order, "u1", query).await;
        assert_eq!((status, answer["code"].as_i64()), (400, Some(code)), "{query}: {answer}");
        assert!(answer["msg"].as_str().unwrap().contains(words), "{query}: {answer}");
    }
    let placed = "symbol=XRPUSDT&side=BUY&type=LIMIT&quantity=20&price=0.5&timeInForce=GTC&positionSide=BOTH";
    let (status, placed) = sim.signed(Method::POST, order, "u1", placed).await;
    assert_eq!(status, 200, "{placed}");
    let order_id = placed["orderId"].as_i64().unwrap();
    let (_, neither) = sim.signed(Method::DELETE, order, "u1", "symbol=XRPUSDT").await;
    assert_eq!(neither["code"], -1102, "{neither}");
    let (_, unknown) =
        sim.signed(Method::DELETE, order, "u1", &format!("symbol=XRPUSDT&orderId={}", order_id + 1)).await;
    assert_eq!(unknown["code"], -2011, "{unknown}");
    let (status, cancelled) =
        sim.signed(Method::DELETE, order, "u1", &format!("symbol=XRPUSDT&orderId={order_id}")).await;
    assert_eq!((status, cancelled["status"].as_str()), (200, Some("CANCELED")), "{cancelled}");
    assert_eq!(cancelled["orderId"], order_id);
    let (_, open) = sim.signed(Method::GET, "/fapi/v1/openOrders", "u1", "symbol=XRPUSDT").await;
    assert_eq!(open, json!([]));
}

#[tokio::test]
async fn lost_responses_and_hangs_never_duplicate_an_order_and_every_intent_resolves() {
    let _serial = SERIAL.lock().await;
    let seed = 20_261_122;
    eprintln!("SEED={seed}");
    let dir = tempfile::tempdir().unwrap();
    let faults =
        "[sim.faults.endpoints.\"POST /fapi/v1/order\"]\nlost_response_rate = 0.2\nhang_rate = 0.2\nhang_ms = 2500\n";
    let sim = Sim::start(&sim_config(dir.path(), 4, 200, faults), seed);
    let config = client_config(dir.path(), &sim.url, 4, 1_000, 1_000);
    finish(run_bulwark(&config, 4, 14)).await;
    // Faults off; a restarted server resumes, then whatever is left in flight is resolved.
    sim.faults(json!({})).await;
    finish(run_bulwark(&config, 4, 3)).await;
    reconcile(&config, 4).await;
    let (intents, fills) = check_ledger_against_database(&sim, &dir.path().join("data/bulwark.db"), 4, seed).await;
    eprintln!("SEED={seed}: {intents} intents, {fills} fills, all resolved, none twice");
    assert!(intents >= 10, "SEED={seed}: enough orders to mean something ({intents})");
    // A hung order request arrives after its receive window and is refused unexecuted; the client
    // gave up on it, found nothing by its id once the window closed, and sent it again with the
    // same id. Which requests hang depends on timing (and one that hangs as the run stops is
    // declared never placed by `reconcile` instead), so the resend is asserted once several did.
    let order_posts = sim.requests("POST /fapi/v1/order").await;
    let hung = sim.get("/sim/stats").await["hung"]["POST /fapi/v1/order"].as_u64().unwrap_or(0);
    eprintln!("SEED={seed}: {order_posts} order requests, {hung} of them hung");
    if hung >= 3 {
        assert!(
            order_posts > intents as u64,
            "SEED={seed}: {hung} requests hung, so some were resent with the same id ({order_posts} for {intents} intents)"
        );
    }
}

#[tokio::test]
async fn every_fault_type_in_turn_leaves_the_invariants_intact() {
    let _serial = SERIAL.lock().await;
    let seed = 77;
    eprintln!("SEED={seed}");
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(&sim_config(dir.path(), 4, 200, ""), seed);
    let config = client_config(dir.path(), &sim.url, 4, 1_000, 1_000);
    let bulwark = run_bulwark(&config, 4, 24);
    let order = |spec: Value| json!({ "endpoints": { "POST /fapi/v1/order": spec } });
    // Each fault is on for 2 s of wall time (10 candles of the accelerated market) while bulwark
    // trades; the sleeps set how long each plan is exposed, the assertions come from the ledger.
    let plans = [
        ("latency", json!({ "global": { "latency_ms": 150 } })),
        ("5xx", json!({ "global": { "error_5xx_rate": 0.3 } })),
        ("503 unknown", order(json!({ "unknown_503_rate": 0.4 }))),
        ("hang", order(json!({ "hang_rate": 0.4, "hang_ms": 2500 }))),
        ("lost response", order(json!({ "lost_response_rate": 0.4 }))),
        ("429 burst", json!({ "global": { "burst_429": 5 } })),
        ("418 ban", json!({ "global": { "ban_418_secs": 1 } })),
        ("clock skew", json!({ "global": { "clock_skew_ms": 3_000_000 } })),
        ("malformed", order(json!({ "malformed_rate": 0.4 }))),
    ];
    sim.wait_requests("POST /fapi/v1/order", 1).await;
    for (name, plan) in plans {
        eprintln!("fault: {name}");
        sim.faults(plan).await;
        tokio::time::sleep(Duration::from_millis(2_000)).await;
    }
    sim.faults(json!({})).await;
    finish(bulwark).await;
    reconcile(&config, 4).await;
    let (intents, _) = check_ledger_against_database(&sim, &dir.path().join("data/bulwark.db"), 4, seed).await;
    assert!(
        intents >= 10,
        "SEED={seed}: {intents} intents; {}",
        decision_summary(&dir.path().join("data/bulwark.db"), 4)
    );
}

/// What the users decided, counted by outcome with one reason each (for a failure message).
fn decision_summary(database: &Path, users: usize) -> String {
    let mut store = Store::open_read_only(database).unwrap();
    let mut out = String::new();
    for i in 1..=users {
        let user = UserId::new(&format!("u{i}")).unwrap();
        let mut by_outcome: BTreeMap<String, (usize, String)> = BTreeMap::new();
        for decision in store.recent_decisions(&user, 2_000).unwrap() {
            let entry = by_outcome.entry(decision.outcome.clone()).or_insert((0, decision.reason.clone()));
            entry.0 += 1;
        }
        out += &format!("\n  {user}: {by_outcome:?}");
    }
    out
}

/// Decisions each of `users` recorded (any outcome), from the database.
fn decisions_per_user(database: &Path, users: usize) -> Vec<usize> {
    let mut store = Store::open_read_only(database).unwrap();
    (1..=users).map(|i| store.recent_decisions(&UserId::new(&format!("u{i}")).unwrap(), 2_000).unwrap().len()).collect()
}

#[tokio::test]
async fn fifty_users_on_five_symbols_get_every_close_by_stream_and_fetch_only_the_first_windows() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(&sim_config(dir.path(), 50, 500, ""), 3);
    let config = client_config(dir.path(), &sim.url, 50, 5_000, 5_000);
    // Every user starts at once (the start-up pace is measured elsewhere).
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[exchange]\n", "[exchange]\nstart_up_weight_per_minute = 1000000\n");
    std::fs::write(&config, text).unwrap();
    let candle_ms = 300_000;
    let market_before = sim.get("/sim/stats").await["market_time_ms"].as_i64().unwrap();
    finish(run_bulwark(&config, 50, 8)).await;
    let stats = sim.get("/sim/stats").await;
    let market_after = stats["market_time_ms"].as_i64().unwrap();
    let closes = (market_after / candle_ms - market_before / candle_ms) as usize;
    let klines = stats["requests"]["GET /fapi/v1/klines"].as_u64().unwrap();
    let decisions = decisions_per_user(&dir.path().join("data/bulwark.db"), 50);
    eprintln!(
        "klines requests: {klines} for {closes} candle closes (5 feeds, 50 users); market connections: {}; decisions per user: {decisions:?}",
        stats["market_stream_connections"]
    );
    // One connection carries the five feeds (a second when users' feeds came in two waves: it
    // takes the first one over); REST fetched each feed's first window (and at most one backfill
    // each), whatever the number of users and closes.
    assert!(
        (1..=2).contains(&stats["market_stream_connections"].as_u64().unwrap()),
        "{}",
        stats["market_stream_connections"]
    );
    // At 600× the 10 s grace is 17 ms of wall time; the grace's wall-time floor keeps a loaded
    // machine from backfilling a close the stream brings a little late, but a candle every 500 ms
    // on a loaded two-core machine still meets it now and then (12 once in CI). Room for two
    // backfills of every feed (a connection taken over, a late close), against five per close
    // without streams (80 for 16 closes; the next test).
    assert!((5..=15).contains(&klines), "{klines} klines requests for {closes} closes");
    // And every user decided on (nearly) every close: the candles came by stream.
    let fewest = *decisions.iter().min().unwrap();
    assert!(fewest + 4 >= closes, "the fewest decisions of a user: {fewest} for {closes} closes");
}

#[tokio::test]
async fn without_market_streams_each_feed_costs_one_klines_request_per_close() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(&sim_config(dir.path(), 50, 500, ""), 3);
    let config = client_config(dir.path(), &sim.url, 50, 5_000, 5_000);
    let text = std::fs::read_to_string(&config).unwrap().replace("[exchange]\n", "[exchange]\nmarket_stream = false\n");
    std::fs::write(&config, text).unwrap();
    let candle_ms = 300_000;
    let market_before = sim.get("/sim/stats").await["market_time_ms"].as_i64().unwrap();
    finish(run_bulwark(&config, 50, 8)).await;
    let stats = sim.get("/sim/stats").await;
    let market_after = stats["market_time_ms"].as_i64().unwrap();
    let closes = (market_after / candle_ms - market_before / candle_ms) as u64;
    let klines = stats["requests"]["GET /fapi/v1/klines"].as_u64().unwrap();
    eprintln!("klines requests: {klines} for {closes} candle closes (5 feeds, 50 users)");
    assert_eq!(stats["market_stream_connections"], 0);
    // One request per feed per close (plus each feed's first fetch), whatever the number of users.
    assert!(klines <= 5 * (closes + 1), "{klines} requests for {closes} closes");
    assert!(
        klines >= 5 * closes.saturating_sub(4),
        "every feed was fetched at (nearly) every close: {klines} for {closes}"
    );
}

#[tokio::test]
async fn a_418_ban_stops_every_request_until_it_ends() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(&sim_config(dir.path(), 4, 200, ""), 5);
    let config = client_config(dir.path(), &sim.url, 4, 5_000, 5_000);
    // Candles by REST after each close: the klines requests show when requests resume.
    let text = std::fs::read_to_string(&config).unwrap().replace("[exchange]\n", "[exchange]\nmarket_stream = false\n");
    std::fs::write(&config, text).unwrap();
    let bulwark = run_bulwark(&config, 4, 10);
    sim.wait_requests("GET /fapi/v1/klines", 1).await;
    sim.faults(json!({ "global": { "ban_418_secs": 3 } })).await;
    let klines_at_ban = sim.requests("GET /fapi/v1/klines").await;
    // bulwark runs for 10 s; the ban ends 3 s after it was set, well before.
    finish(bulwark).await;
    let after = sim.get("/sim/stats").await;
    let during = after["requests_while_banned"].as_u64().unwrap();
    // The first answers of the ban tell the client; from then on it sends nothing to this host.
    // What reaches the simulator during the ban is what was already on the wire when the first
    // 418 was heard: at most what the client can have in flight at once (per user a sync or
    // placement and its account stream's snapshot, one fetch per feed, the monitor's time probe).
    let (users, feeds) = (4, 5);
    let in_flight_max = 2 * users + feeds + 1;
    assert!(during <= in_flight_max, "requests sent into the ban: {during} (at most {in_flight_max} in flight)");
    let klines_after = after["requests"]["GET /fapi/v1/klines"].as_u64().unwrap();
    assert!(
        klines_after > klines_at_ban + during,
        "requests resumed after the ban: {klines_after} klines requests, {klines_at_ban} when it began, {during} while banned"
    );
}

/// Every file under `dir`, as bytes, with its path.
fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    files
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle.as_bytes())
}

#[tokio::test]
async fn keys_never_leak_and_a_refused_secret_halts_only_that_user() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(&sim_config(dir.path(), 2, 200, ""), 11);
    let config = client_config(dir.path(), &sim.url, 2, 5_000, 5_000);
    let wrong_secret = "wrong-secret-of-u2-a1b2c3";
    let mut command = bulwark_command(&["run", "--duration", "4"], &config, 2);
    command.env("SIM_SECRET_2", wrong_secret);
    let run = tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap();
    assert!(run.status.success(), "bulwark run: {}", String::from_utf8_lossy(&run.stderr));
    let status = tokio::task::spawn_blocking({
        let config = config.clone();
        move || bulwark_command(&["status"], &config, 2).output().unwrap()
    })
    .await
    .unwrap();
    let status_text = String::from_utf8_lossy(&status.stdout).into_owned();
    let u2_lines: Vec<&str> = status_text.lines().skip_while(|l| !l.starts_with("u2 ")).take(3).collect();
    assert!(u2_lines[0].contains("halted"), "{status_text}");
    assert!(u2_lines.iter().any(|l| l.contains("no usable API credentials") && l.contains("-1022")), "{status_text}");
    let u1_line = status_text.lines().find(|l| l.starts_with("u1 ")).unwrap();
    assert!(!u1_line.contains("halted"), "u1 was not halted: {status_text}");
    assert!(
        Store::open_read_only(&dir.path().join("data/bulwark.db"))
            .unwrap()
            .fill_count(&UserId::new("u1").unwrap())
            .unwrap()
            > 0,
        "u1 traded"
    );

    // No key and no secret, right or wrong, anywhere bulwark wrote: its output, status, logs, database.
    let secrets = [key("u1"), secret("u1"), key("u2"), secret("u2"), wrong_secret.to_owned()];
    let mut written = vec![
        (PathBuf::from("<bulwark run stdout>"), run.stdout),
        (PathBuf::from("<bulwark run stderr>"), run.stderr),
        (PathBuf::from("<bulwark status>"), status.stdout),
    ];
    written.extend(files_under(&dir.path().join("logs")));
    written.extend(files_under(&dir.path().join("data")));
    for expected in ["logs/bulwark.log", "logs/supervisor.jsonl", "data/bulwark.db"] {
        assert!(
            written.iter().any(|(path, bytes)| path.ends_with(expected) && !bytes.is_empty()),
            "{expected} was written"
        );
    }
    for (path, bytes) in &written {
        for secret_text in &secrets {
            assert!(!contains(bytes, secret_text), "{} contains {secret_text:?}", path.display());
        }
    }
}

/// The monitor lines written so far (a line being written is skipped).
fn monitor_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

fn check<'a>(line: &'a Value, id: &str) -> &'a Value {
    line["checks"].as_array().unwrap().iter().find(|c| c["id"] == id).unwrap_or_else(|| panic!("{id} missing: {line}"))
}

fn line_ms(line: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(line["ts"].as_str().unwrap()).unwrap().timestamp_millis()
}

/// Waits for a monitor line written after `after_ms` that satisfies `wanted`.
async fn wait_for_monitor_line(path: &Path, after_ms: i64, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
    let waiting = async {
        loop {
            if let Some(line) = monitor_lines(path).into_iter().find(|l| line_ms(l) > after_ms && wanted(l)) {
                return line;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(WAIT_GUARD, waiting).await.unwrap_or_else(|_| panic!("no monitor line with {what}"))
}

/// `bulwark why USER --json`, until `wanted` holds for its answer (the Monitor's newest run reaches
/// the database a moment after its line).
async fn wait_for_why(config: &Path, user: &str, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
    let waiting = async {
        loop {
            let mut command = bulwark_command(&["why", user, "--json"], config, 0);
            let output = tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap();
            assert!(output.status.success(), "why {user}: {}", String::from_utf8_lossy(&output.stderr));
            let answer: Value = serde_json::from_slice(&output.stdout).unwrap();
            if wanted(&answer) {
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(WAIT_GUARD, waiting).await.unwrap_or_else(|_| panic!("why {user} never said {what}"))
}

fn names(answer: &Value, id: &str) -> bool {
    answer["blocks"].as_array().unwrap().iter().any(|b| b["failure_point"] == id)
}

#[tokio::test]
async fn failing_klines_make_the_exchange_check_critical_why_names_it_and_it_recovers() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(&sim_config(dir.path(), 2, 200, ""), 11);
    let config = client_config(dir.path(), &sim.url, 2, 5_000, 2_000);
    // Candles by REST after each close, so that failing klines requests stop the decisions.
    let mut text =
        std::fs::read_to_string(&config).unwrap().replace("[exchange]\n", "[exchange]\nmarket_stream = false\n");
    text += "[monitor]\ninterval_secs = 1\nsummary_interval_secs = 1\n[healer]\ninterval_secs = 2\n";
    text += "[breaker]\nfailures_max = 5\nwithin_secs = 60\nopen_secs = 3\n";
    text += &format!("[intelligence]\nbase_url = \"{}\"\napi_key_env = \"SIM_CG_KEY\"\n", sim.url);
    // Operators hear of the breaker through a (loopback) Telegram receiver.
    let telegram = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(wiremock::ResponseTemplate::new(200).set_body_json(json!({ "ok": true })))
        .mount(&telegram)
        .await;
    text += &format!(
        "[notify]\ntelegram_bot_token_env = \"TEST_TG_TOKEN\"\ntelegram_chat_id_env = \"TEST_TG_CHAT\"\ntelegram_base_url = \"{}\"\nrate_window_secs = 120\n",
        telegram.uri()
    );
    std::fs::write(&config, text).unwrap();
    let mut command = bulwark_command(&["run", "--duration", "40"], &config, 2);
    command.env("TEST_TG_TOKEN", "123:sim-token").env("TEST_TG_CHAT", "42");
    let bulwark = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("bulwark runs");
    let started = std::time::Instant::now();
    let stage = |name: &str| eprintln!("{:>6} ms  {name}", started.elapsed().as_millis());
    let log = dir.path().join("logs/failure_point_monitor.jsonl");
    let api = "SYS-EXCHANGE-API";

    let healthy = wait_for_monitor_line(&log, 0, "candle fetches succeeding", |line| {
        check(line, api)["status"] == "ok" && check(line, api)["value"]["klines_requests"].as_u64() > Some(0)
    })
    .await;
    stage("healthy");
    let fault_ms = line_ms(&healthy);
    // Intelligence comes from the simulator's CoinGlass endpoints (asked for on every sync).
    let intel = wait_for_monitor_line(&log, 0, "SYS-INTEL-API ok from coinglass", |line| {
        check(line, "SYS-INTEL-API")["status"] == "ok" && check(line, "SYS-INTEL-API")["value"]["source"] == "coinglass"
    })
    .await;
    assert!(check(&intel, "SYS-INTEL-API")["value"]["series"].as_u64() >= Some(1), "{intel}");
    stage("intelligence from coinglass");
    sim.faults(json!({ "endpoints": { "GET /fapi/v1/klines": { "error_5xx_rate": 1.0 } } })).await;
    let critical =
        wait_for_monitor_line(&log, fault_ms, "SYS-EXCHANGE-API critical", |l| check(l, api)["status"] == "critical")
            .await;
    stage("critical");
    // Within one interval: at most the run that straddled the fault came before it.
    let runs_before =
        monitor_lines(&log).iter().filter(|l| line_ms(l) > fault_ms && line_ms(l) < line_ms(&critical)).count();
    assert!(runs_before <= 1, "{runs_before} monitor runs after the fault before it was critical");
    let users: Vec<&str> =
        check(&critical, api)["users"].as_array().unwrap().iter().map(|u| u.as_str().unwrap()).collect();
    assert_eq!(users, ["u1", "u2"], "{critical}");
    assert_eq!(critical["overall"], "critical");
    for user in ["u1", "u2"] {
        let answer = wait_for_why(&config, user, "SYS-EXCHANGE-API", |a| names(a, api)).await;
        assert_ne!(answer["verdict"], "trading", "{answer}");
    }

    stage("why names it");
    // Five failures open the host's circuit breaker: no request storm while it is open.
    let breaker = "SYS-CIRCUIT-BREAKER";
    let opened =
        wait_for_monitor_line(&log, fault_ms, "the breaker open", |l| check(l, breaker)["status"] == "critical").await;
    assert!(check(&opened, breaker)["detail"].as_str().unwrap().contains("host:klines open"), "{opened}");
    let klines_at_open = sim.requests("GET /fapi/v1/klines").await;
    let next = wait_for_monitor_line(&log, line_ms(&opened), "a run while it is open", |_| true).await;
    if check(&next, breaker)["status"] == "critical" {
        let klines_later = sim.requests("GET /fapi/v1/klines").await;
        assert!(klines_later <= klines_at_open + 1, "{klines_at_open} → {klines_later} klines requests while open");
    }

    stage("breaker open");
    sim.faults(json!({})).await;
    let recovered_after = line_ms(monitor_lines(&log).last().unwrap());
    // The breaker's probe (after open_secs) succeeds and closes it; candles flow again.
    wait_for_monitor_line(&log, recovered_after, "SYS-EXCHANGE-API ok again", |l| {
        check(l, api)["status"] == "ok"
            && check(l, api)["value"]["klines_requests"].as_u64() > Some(0)
            && check(l, "SYS-CIRCUIT-BREAKER")["status"] == "ok"
    })
    .await;
    stage("recovered");
    wait_for_why(&config, "u1", "no SYS-EXCHANGE-API block", |a| !names(a, api)).await;
    stage("why clear");
    // An orderly stop (SIGTERM) rather than waiting out the duration.
    assert!(Command::new("kill").args(["-TERM", &bulwark.id().to_string()]).status().unwrap().success());
    finish(bulwark).await;

    // Each transition is logged once (not once per refused request), and operators got one
    // message for the opening and one for the closing: a breaker that reopens after a failed probe
    // within the rate window does not send again.
    let log = std::fs::read_to_string(dir.path().join("logs/bulwark.log")).unwrap();
    let opened_lines =
        log.lines().filter(|l| l.contains("circuit breaker opened") && l.contains("host:klines")).count();
    let probes = log.lines().filter(|l| l.contains("host:klines") && l.contains("half_open")).count();
    assert!(opened_lines >= 1 && opened_lines <= probes + 1, "{opened_lines} opening lines, {probes} probes");
    let texts: Vec<String> = telegram
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter_map(|r| serde_json::from_slice::<Value>(&r.body).ok())
        .filter_map(|body| body["text"].as_str().map(str::to_owned))
        .collect();
    let about =
        |what: &str| texts.iter().filter(|t| t.contains("circuit breaker host:klines") && t.contains(what)).count();
    assert_eq!((about("opened"), about("closed")), (1, 1), "{texts:#?}");
}

#[tokio::test]
async fn a_stalled_market_stream_turns_its_check_critical_names_its_users_and_recovers() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(&sim_config(dir.path(), 2, 200, ""), 17);
    let config = client_config(dir.path(), &sim.url, 2, 5_000, 2_000);
    // A silent connection is given up after 2 s here (60 s by default).
    let mut text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("poll_interval_ms = 40\n", "poll_interval_ms = 40\nstream_silence_secs = 2\n");
    text += "[monitor]\ninterval_secs = 1\nsummary_interval_secs = 1\n[healer]\ninterval_secs = 2\n";
    std::fs::write(&config, text).unwrap();
    let bulwark = run_bulwark(&config, 2, 30);
    let log = dir.path().join("logs/failure_point_monitor.jsonl");
    let id = "SYS-MARKET-STREAM";
    let healthy = wait_for_monitor_line(&log, 0, "a market connection up", |line| {
        check(line, id)["status"] == "ok" && check(line, id)["value"]["connections"].as_u64() >= Some(1)
    })
    .await;
    // Every connection falls silent at its next closed candle (open, sending nothing).
    sim.faults(json!({ "market_stream": { "stall_rate": 1.0 } })).await;
    let critical = wait_for_monitor_line(&log, line_ms(&healthy), "SYS-MARKET-STREAM critical", |l| {
        check(l, id)["status"] == "critical"
    })
    .await;
    let detail = check(&critical, id)["detail"].as_str().unwrap();
    assert!(detail.contains("fetched by REST after each close meanwhile"), "{critical}");
    let users: Vec<&str> =
        check(&critical, id)["users"].as_array().unwrap().iter().map(|u| u.as_str().unwrap()).collect();
    assert_eq!(users, ["u1", "u2"], "{critical}");
    // The traders go on deciding meanwhile: their candles come by REST.
    let klines_at_critical = sim.requests("GET /fapi/v1/klines").await;
    sim.wait_requests("GET /fapi/v1/klines", klines_at_critical + 2).await;
    // Cleared: the connection comes back (at once when the Healer reconnects it) and the check
    // is ok again, on a run that saw it.
    sim.faults(json!({})).await;
    let cleared_ms = bulwark::clock::Clock::now_ms(&SystemClock);
    let recovered =
        wait_for_monitor_line(&log, cleared_ms, "SYS-MARKET-STREAM ok again", |l| check(l, id)["status"] == "ok").await;
    assert!(check(&recovered, id)["value"]["reconnects"].as_u64() >= Some(1), "{recovered}");
    finish(bulwark).await;
}

/// The log lines of `path` that contain every one of `parts`, with their time.
fn log_lines_with(path: &Path, parts: &[&str]) -> Vec<(i64, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|line| parts.iter().all(|part| line.contains(part)))
        .filter_map(|line| {
            let stamp = line.split_whitespace().next()?;
            Some((chrono::DateTime::parse_from_rfc3339(stamp).ok()?.timestamp_millis(), line.to_owned()))
        })
        .collect()
}

#[tokio::test]
async fn a_restarted_user_with_a_recent_position_exits_while_its_reconciliation_waits_its_turn() {
    let _serial = SERIAL.lock().await;
    let seed = 21;
    eprintln!("SEED={seed}");
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(&sim_config(dir.path(), 1, 200, ""), seed);
    let config = client_config(dir.path(), &sim.url, 1, 5_000, 2_000);
    let database = dir.path().join("data/bulwark.db");
    let user = UserId::new("u1").unwrap();
    // First run: until the user holds a position, then an orderly stop (no order left in flight).
    let holding = |database: &Path| {
        let mut store = Store::open_read_only(database).ok()?;
        let state = store.load_trader_state(&user).ok()?;
        (state.positions.iter().any(|p| !p.quantity.is_zero()) && state.unresolved_orders.is_empty()).then_some(())
    };
    let mut held = false;
    for _ in 0..5 {
        let first = run_bulwark(&config, 1, 60);
        let waiting = async {
            while holding(&database).is_none() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(WAIT_GUARD, waiting).await.expect("SEED={seed}: the user took a position");
        assert!(Command::new("kill").args(["-TERM", &first.id().to_string()]).status().unwrap().success());
        finish(first).await;
        // Stopped while still holding it (a close can flatten it in the moment of the stop).
        if holding(&database).is_some() {
            held = true;
            break;
        }
    }
    assert!(held, "SEED={seed}: stopped while holding a position");
    let restarted_ms = bulwark::clock::Clock::now_ms(&SystemClock);
    // Second run: a start-up budget so small that its reconciliation waits about 20 s for its turn
    // (27 weight at 20 a minute, from a bucket of 20).
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("poll_interval_ms = 40\n", "poll_interval_ms = 40\nstart_up_weight_per_minute = 20\n");
    std::fs::write(&config, text).unwrap();
    let second = run_bulwark(&config, 1, 40);
    let log = dir.path().join("logs/bulwark.log");
    let ready = async {
        loop {
            if let Some(line) =
                log_lines_with(&log, &["trader ready", "user=u1"]).into_iter().find(|(ms, _)| *ms >= restarted_ms)
            {
                return line;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (ready_ms, _) = tokio::time::timeout(Duration::from_secs(60), ready).await.expect("u1 ready after its turn");
    let early = log_lines_with(&log, &["deciding exits on the state stored moments ago", "user=u1"]);
    let (early_ms, _) = early.iter().find(|(ms, _)| *ms >= restarted_ms).cloned().expect("u1 started with exits");
    assert!(ready_ms - early_ms >= 10_000, "its turn came {} ms after it started deciding", ready_ms - early_ms);
    // Meanwhile it decided on every candle (each after reading its account) and entered nothing.
    let decisions = Store::open_read_only(&database).unwrap().recent_decisions(&user, 2_000).unwrap();
    let before_ready: Vec<&bulwark::records::DecisionRecord> =
        decisions.iter().filter(|d| d.decided_at_ms > early_ms && d.decided_at_ms < ready_ms).collect();
    let outcomes: BTreeMap<&str, usize> = before_ready.iter().fold(BTreeMap::new(), |mut counts, d| {
        *counts.entry(d.outcome.as_str()).or_default() += 1;
        counts
    });
    eprintln!("while its reconciliation waited {} ms: {outcomes:?}", ready_ms - early_ms);
    assert!(before_ready.len() >= 10, "{} decisions while its reconciliation waited", before_ready.len());
    assert!(before_ready.iter().all(|d| d.outcome != "enter"), "no entry before the reconciliation");
    let exits_or_holds = before_ready.iter().filter(|d| matches!(d.outcome.as_str(), "exit" | "hold")).count();
    assert!(exits_or_holds >= 1, "{before_ready:?}");
    finish(second).await;
    reconcile(&config, 1).await;
    check_ledger_against_database(&sim, &database, 1, seed).await;
}

#[tokio::test]
async fn the_coinglass_client_reads_the_simulators_series_and_a_wrong_key_is_refused() {
    use bulwark::intelligence::coinglass::{CoinGlassClient, IntelError};
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(&sim_config(dir.path(), 1, 1_000, ""), 2);
    let client = |key: &str| {
        CoinGlassClient::new(sim.url.parse().unwrap(), Secret::new(key.to_owned()), Duration::from_secs(5)).unwrap()
    };
    let btc = Symbol::new("BTCUSDT").unwrap();
    let snapshot = client("cg-key").snapshot(&btc, Timeframe::M5, 30, 1).await.unwrap();
    assert_eq!((snapshot.source, snapshot.intervals.len()), ("coinglass", 30));
    assert!(snapshot.intervals.windows(2).all(|w| w[0].time_ms < w[1].time_ms));
    let first = &snapshot.intervals[0];
    assert!(first.taker_buy_usd >= 0.0 && first.taker_sell_usd >= 0.0 && first.open_interest_usd.is_some());
    assert!(first.funding_rate_pct.is_some() && first.long_short_ratio.is_some());
    assert!(snapshot.taker_ratio(6).is_some() && snapshot.whale_flow(12, 2.0).is_some());
    let refused = client("wrong-key").snapshot(&btc, Timeframe::M5, 30, 1).await.unwrap_err();
    assert!(matches!(refused, IntelError::Auth { .. }), "{refused}");
    assert!(!refused.to_string().contains("wrong-key"), "the key never appears in an error");

    // The endpoints as a script sees them (exchange-apis.md §5, src/sim/coinglass.rs).
    async fn get(sim: &Sim, path_and_query: &str) -> (u16, Value) {
        let response =
            sim.http.get(format!("{}{path_and_query}", sim.url)).header("CG-API-KEY", "cg-key").send().await.unwrap();
        (response.status().as_u16(), response.json::<Value>().await.unwrap_or(Value::Null))
    }
    let rows = |answer: &Value| answer["data"].as_array().cloned().unwrap_or_default();
    let number = |row: &Value, field: &str| row[field].as_str().and_then(|t| t.parse::<f64>().ok()).unwrap();
    let history =
        |series: &str, query: &str| format!("/api/futures/{series}/history?exchange=Binance&symbol=XRPUSDT&{query}");
    let server_ms = |answer: Value| answer["serverTime"].as_i64().unwrap();
    let server_now_ms =
        server_ms(sim.http.get(format!("{}/fapi/v1/time", sim.url)).send().await.unwrap().json().await.unwrap());
    // Four hours that closed well before now: every interval sees the same market up to their end.
    let hour_ms = 3_600_000;
    let end_ms = (server_now_ms - 8 * hour_ms).div_euclid(4 * hour_ms) * 4 * hour_ms - 1;
    let (status, four_hours) =
        get(&sim, &history("open-interest", &format!("interval=4h&limit=1&end_time={end_ms}"))).await;
    let (_, hours) = get(&sim, &history("open-interest", &format!("interval=1h&limit=2&end_time={end_ms}"))).await;
    let (_, minutes) = get(&sim, &history("open-interest", &format!("interval=5m&limit=48&end_time={end_ms}"))).await;
    let (four_hours, hours, minutes) = (rows(&four_hours), rows(&hours), rows(&minutes));
    assert_eq!((status, four_hours.len(), hours.len(), minutes.len()), (200, 1, 2, 48));
    assert_eq!(hours[1]["time"], json!(end_ms + 1 - hour_ms), "rows are stamped with their open time");
    // Open interest is a level: a row closes where its last five minutes close, whatever its
    // interval (not 4 or 48 times higher).
    assert_eq!(four_hours[0]["close"], hours[1]["close"]);
    assert_eq!(hours[1]["close"], minutes[47]["close"]);
    assert_eq!(four_hours[0]["open"], minutes[0]["open"]);
    // Taker volume is a flow: an hour is the sum of its five-minute rows.
    let (_, hour_flow) =
        get(&sim, &history("v2/taker-buy-sell-volume", &format!("interval=1h&limit=1&end_time={end_ms}"))).await;
    let (_, minute_flow) =
        get(&sim, &history("taker-buy-sell-volume", &format!("interval=5m&limit=12&end_time={end_ms}"))).await;
    let summed: f64 = rows(&minute_flow).iter().map(|row| number(row, "taker_buy_volume_usd")).sum();
    let hourly = number(&rows(&hour_flow)[0], "taker_buy_volume_usd");
    assert!((hourly - summed).abs() <= 1e-6 * hourly.max(1.0), "{hourly} vs {summed}");
    // start_time: rows from the first interval opening at or after it.
    let (_, from) =
        get(&sim, &history("liquidation", &format!("interval=4h&limit=2&start_time={}", end_ms - 8 * hour_ms))).await;
    let from = rows(&from);
    assert_eq!(from.len(), 2);
    assert!(
        from[0]["time"].as_i64().unwrap() >= end_ms - 8 * hour_ms
            && from[0]["time"].as_i64().unwrap() % (4 * hour_ms) == 0
    );
    // No limit: the documented 1000 rows, each closed (none still forming).
    let (_, latest) = get(&sim, &history("global-long-short-account-ratio", "interval=5m")).await;
    let latest = rows(&latest);
    let after_ms =
        server_ms(sim.http.get(format!("{}/fapi/v1/time", sim.url)).send().await.unwrap().json().await.unwrap());
    assert_eq!(latest.len(), 1_000);
    assert!(latest[999]["time"].as_i64().unwrap() + 300_000 <= after_ms);
    let (_, weeks) = get(&sim, &history("funding-rate", "interval=1w&limit=2")).await;
    assert_eq!(weeks["code"], "0", "{weeks}");
    // Refusals: in the envelope with a string code, over HTTP 200.
    for (query, code) in [
        (history("funding-rate", "interval=1m"), "422"),
        (history("funding-rate", "interval=3m"), "422"),
        (history("funding-rate", "interval=2h"), "400"),
        ("/api/futures/funding-rate/history?exchange=OKX&symbol=XRPUSDT&interval=1h".to_owned(), "400"),
        ("/api/futures/funding-rate/history?symbol=XRPUSDT&interval=1h".to_owned(), "400"),
        ("/api/futures/funding-rate/history?exchange=Binance&symbol=DOGEUSDT&interval=1h".to_owned(), "400"),
    ] {
        let (status, answer) = get(&sim, &query).await;
        assert_eq!((status, answer["code"].as_str()), (200, Some(code)), "{query}: {answer}");
        assert!(answer["msg"].as_str().is_some_and(|msg| !msg.is_empty()), "{answer}");
    }
    let posted =
        sim.http.post(format!("{}{}", sim.url, history("funding-rate", "interval=1h"))).header("CG-API-KEY", "cg-key");
    assert_eq!(posted.send().await.unwrap().json::<Value>().await.unwrap()["code"], "405");
    let (status, _) = get(&sim, "/api/futures/open-interest/no-such-history?exchange=Binance").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn an_orphan_and_an_unknown_position_at_start_up_are_cancelled_resynced_and_recorded() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(&sim_config(dir.path(), 1, 200, ""), 21);
    let config = client_config(dir.path(), &sim.url, 1, 5_000, 5_000);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text += "[monitor]\ninterval_secs = 1\n[reconcile]\ninterval_secs = 1\n";
    std::fs::write(&config, text).unwrap();
    // Made on the exchange directly, behind bulwark's back: a `bw-` order it never sent, and a
    // position from an order that is not its own.
    let client = sim.client("u1", &secret("u1"));
    let (user, xrp) = (UserId::new("u1").unwrap(), Symbol::new("XRPUSDT").unwrap());
    let order = |id: &str, order_type: OrderType, quantity: i64| OrderRequest {
        client_order_id: ClientOrderId::parse(id).unwrap(),
        symbol: xrp.clone(),
        side: Side::Buy,
        order_type,
        quantity: Quantity::new(Decimal::from(quantity)).unwrap(),
        reduce_only: false,
        timestamp_ms: bulwark::clock::Clock::now_ms(&SystemClock),
    };
    let orphan = order("bw-u1-999", OrderType::Limit { price: Price::new(Decimal::new(5, 1)).unwrap() }, 20);
    client.create_order(&user, &orphan).await.unwrap();
    client.create_order(&user, &order("manual-1", OrderType::Market, 30)).await.unwrap();
    sim.wait_candles(2).await;
    let held = client.position(&user, &xrp).await.unwrap().quantity;
    assert_eq!(held, Decimal::from(30), "the manual order filled");

    let bulwark = run_bulwark(&config, 1, 30);
    let log = dir.path().join("logs/failure_point_monitor.jsonl");
    let flagged = wait_for_monitor_line(&log, 0, "STATE-POSITION-SYNC critical", |l| {
        check(l, "STATE-POSITION-SYNC")["status"] == "critical"
    })
    .await;
    assert!(check(&flagged, "STATE-POSITION-SYNC")["users"].as_array().unwrap().contains(&json!("u1")), "{flagged}");
    // An orphan that appears while the server runs is cancelled by the periodic reconciliation.
    let late = order("bw-u1-998", OrderType::Limit { price: Price::new(Decimal::new(5, 1)).unwrap() }, 20);
    client.create_order(&user, &late).await.unwrap();
    let cancelled = async {
        loop {
            let ledger = sim.get("/sim/ledger").await;
            let status = ledger["orders"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["order"]["client_order_id"] == "bw-u1-998")
                .map(|e| e["order"]["status"].clone());
            if status == Some(json!("CANCELED")) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(WAIT_GUARD, cancelled).await.expect("the late orphan is cancelled by periodic reconciliation");
    assert!(Command::new("kill").args(["-TERM", &bulwark.id().to_string()]).status().unwrap().success());
    finish(bulwark).await;

    let ledger = sim.get("/sim/ledger").await;
    let orphan_entry =
        ledger["orders"].as_array().unwrap().iter().find(|e| e["order"]["client_order_id"] == "bw-u1-999").unwrap();
    assert_eq!(orphan_entry["order"]["status"], "CANCELED");
    let mut store = Store::open_read_only(&dir.path().join("data/bulwark.db")).unwrap();
    let actions = store.reconcile_actions(&user).unwrap();
    assert!(
        actions.iter().any(|(action, id, _)| action == "orphan_cancelled" && id.as_deref() == Some("bw-u1-999")),
        "{actions:?}"
    );
    let resynced = actions.iter().find(|(action, _, _)| action == "position_resynced").expect("recorded");
    assert!(resynced.2.contains("the exchange holds 30"), "{resynced:?}");
    // The manual order's fill was imported (recorded as a trade bulwark did not place), so the
    // fills explain the position and u1's entries were never halted.
    let imported = actions.iter().find(|(action, _, _)| action == "fills_imported").expect("fills imported");
    assert!(imported.2.contains("1 of them from orders bulwark did not place"), "{imported:?}");
    assert!(!actions.iter().any(|(action, _, _)| action == "entries_halted"), "{actions:?}");
    assert!(store.position_fill_mismatches().unwrap().is_empty());
}

/// The outbox's lines, parsed (a line being written is skipped).
fn outbox_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// Waits until `condition` holds, polling; panics with `what` after the guard.
async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let waiting = async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(WAIT_GUARD, waiting).await.unwrap_or_else(|_| panic!("never: {what}"));
}

#[tokio::test]
async fn fills_that_arrive_while_the_database_refuses_writes_wait_in_the_outbox_and_are_replayed_once() {
    let _serial = SERIAL.lock().await;
    let seed = 31;
    eprintln!("SEED={seed}");
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(&sim_config(dir.path(), 2, 200, ""), seed);
    let config = client_config(dir.path(), &sim.url, 2, 1_000, 1_000);
    let fault = dir.path().join("database-fault");
    // Fills read by REST (the subject here is the outbox): the account stream, which would carry
    // them without a trade list, is off.
    let mut text =
        std::fs::read_to_string(&config).unwrap().replace("[exchange]\n", "[exchange]\nuser_data_stream = false\n");
    text += &format!(
        "[monitor]\ninterval_secs = 1\n[breaker]\nopen_secs = 1\n[chaos]\nenabled = true\ndatabase_fault_file = {:?}\n",
        fault.display().to_string()
    );
    std::fs::write(&config, text).unwrap();
    let (database, outbox) = (dir.path().join("data/bulwark.db"), dir.path().join("data/bulwark.outbox"));
    let log = dir.path().join("logs/failure_point_monitor.jsonl");
    let bulwark = run_bulwark(&config, 2, 120);
    let log_tail = || {
        let log = std::fs::read_to_string(dir.path().join("logs/bulwark.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };
    let trading = async {
        while sim.requests("POST /fapi/v1/order").await < 2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    if tokio::time::timeout(WAIT_GUARD, trading).await.is_err() {
        panic!("SEED={seed}: fewer than 2 orders within {WAIT_GUARD:?}; bulwark's log ends:\n{}", log_tail());
    }

    // 1. The exchange stops listing fills: an order that fills now stays `open` in the database,
    //    its fills not read yet (an order is never marked done with a fill missing).
    sim.faults(json!({ "endpoints": { "GET /fapi/v1/userTrades": { "error_5xx_rate": 1.0 } } })).await;
    let filled_but_open = async {
        loop {
            let ledger = sim.get("/sim/ledger").await;
            if let Ok(mut store) = Store::open_read_only(&database) {
                for entry in ledger["orders"].as_array().unwrap() {
                    let id = entry["order"]["client_order_id"].as_str().unwrap();
                    if entry["order"]["status"] != "FILLED" || !id.starts_with("bw-") {
                        continue;
                    }
                    let stored = store.order(&ClientOrderId::parse(id).unwrap()).unwrap();
                    if stored.is_some_and(|o| o.state == OrderState::Open) {
                        return id.to_owned();
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let waiting_id = match tokio::time::timeout(WAIT_GUARD, filled_but_open).await {
        Ok(id) => id,
        Err(_) => panic!("SEED={seed}: no order filled with its fills unread; bulwark's log ends:\n{}", log_tail()),
    };
    eprintln!("{waiting_id} filled on the exchange, open in the database");

    // 2. The database refuses every write from now on.
    std::fs::write(&fault, b"").unwrap();
    let outage_started_ms = bulwark::clock::Clock::now_ms(&SystemClock);
    // 3. The exchange lists fills again: the order's fills are read, and go to the outbox.
    sim.faults(json!({})).await;
    wait_until("the order's fills are kept in the outbox", || {
        outbox_lines(&outbox).iter().any(|line| {
            line["write"]["kind"] == "order_transition"
                && line["write"]["client_order_id"] == waiting_id.as_str()
                && line["write"]["fills"].as_array().is_some_and(|fills| !fills.is_empty())
        })
    })
    .await;
    let critical = wait_for_monitor_line(&log, outage_started_ms, "SYS-DATABASE critical with the outbox depth", |l| {
        let database = check(l, "SYS-DATABASE");
        database["status"] == "critical" && database["value"]["outbox_depth"].as_u64().is_some_and(|d| d > 0)
    })
    .await;
    let database_check = check(&critical, "SYS-DATABASE");
    assert_eq!(database_check["users"], json!(["u1", "u2"]), "every user's entries halt: {database_check}");
    let answer = wait_for_why(&config, "u1", "SYS-DATABASE", |a| names(a, "SYS-DATABASE")).await;
    eprintln!("why u1: {answer}");
    {
        let mut store = Store::open_read_only(&database).unwrap();
        let stored = store.order(&ClientOrderId::parse(&waiting_id).unwrap()).unwrap().unwrap();
        assert_eq!(stored.state, OrderState::Open, "the database cannot have it yet");
    }

    // 4. The database takes writes again: the outbox is replayed and emptied.
    std::fs::remove_file(&fault).unwrap();
    let recovered_ms = bulwark::clock::Clock::now_ms(&SystemClock);
    wait_until("the outbox is replayed", || outbox_lines(&outbox).is_empty()).await;
    wait_for_monitor_line(&log, recovered_ms, "SYS-DATABASE ok", |l| {
        let database = check(l, "SYS-DATABASE");
        database["status"] == "ok" && database["value"]["outbox_replayed_total"].as_u64().is_some_and(|n| n > 0)
    })
    .await;
    {
        let mut store = Store::open_read_only(&database).unwrap();
        let stored = store.order(&ClientOrderId::parse(&waiting_id).unwrap()).unwrap().unwrap();
        assert_eq!(stored.state, OrderState::Filled, "replayed: {stored:?}");
    }
    assert!(Command::new("kill").args(["-TERM", &bulwark.id().to_string()]).status().unwrap().success());
    finish(bulwark).await;
    reconcile(&config, 2).await;
    // Every fill on the exchange is in the database, none twice.
    let (intents, fills) = check_ledger_against_database(&sim, &database, 2, seed).await;
    eprintln!("SEED={seed}: {intents} intents, {fills} fills; the outbox lost nothing and doubled nothing");
    assert!(!std::path::Path::new(&format!("{}.rejected", outbox.display())).exists(), "nothing was refused for good");
}

/// A market order buying 20 XRPUSDT with this client order id, stamped now.
fn market_buy_20_xrp(client_order_id: &str) -> OrderRequest {
    OrderRequest {
        client_order_id: ClientOrderId::parse(client_order_id).unwrap(),
        symbol: Symbol::new("XRPUSDT").unwrap(),
        side: Side::Buy,
        order_type: OrderType::Market,
        quantity: Quantity::new(Decimal::from(20)).unwrap(),
        reduce_only: false,
        timestamp_ms: bulwark::clock::Clock::now_ms(&SystemClock),
    }
}

/// The next JSON event on a user data connection (answering nothing else; pings are the
/// library's to answer), within the wait guard.
async fn next_event<S>(socket: &mut S) -> Value
where
    S: futures::Stream<Item = Result<tokio_tungstenite::tungstenite::Message, tokio_tungstenite::tungstenite::Error>>
        + Unpin,
{
    use futures::StreamExt;
    let reading = async {
        loop {
            match socket.next().await.expect("the connection stays open").expect("a frame") {
                tokio_tungstenite::tungstenite::Message::Text(text) => return serde_json::from_str(&text).unwrap(),
                _ => continue,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), reading).await.expect("an event within 20 s")
}

#[tokio::test]
async fn the_user_data_stream_pushes_orders_fills_and_positions_as_binance_does() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(&sim_config(dir.path(), 1, 200, ""), 11);
    let listen_key_call = |method: reqwest::Method, api_key: Option<String>| {
        let mut request = sim.http.request(method, format!("{}/fapi/v1/listenKey", sim.url));
        if let Some(api_key) = api_key {
            request = request.header("X-MBX-APIKEY", api_key);
        }
        async move {
            let answer = request.send().await.unwrap();
            (answer.status().as_u16(), answer.json::<Value>().await.unwrap())
        }
    };
    // API key only (no signature); the same key while it lives.
    let (status, created) = listen_key_call(reqwest::Method::POST, Some(key("u1"))).await;
    assert_eq!(status, 200, "{created}");
    let listen_key = created["listenKey"].as_str().unwrap().to_owned();
    assert_eq!(listen_key.len(), 64);
    assert_eq!(listen_key_call(reqwest::Method::POST, Some(key("u1"))).await.1["listenKey"], listen_key.as_str());
    assert_eq!(listen_key_call(reqwest::Method::POST, None).await.1["code"], -2014);
    // An unknown key is refused before the upgrade.
    let ws = sim.url.replace("http://", "ws://");
    assert!(tokio_tungstenite::connect_async(format!("{ws}/private/ws/{}", "0".repeat(64))).await.is_err());
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("{ws}/private/ws/{listen_key}")).await.unwrap();
    // A second connection on the same key (the pre-2026 path): each connection gets every event.
    let (mut second, _) = tokio_tungstenite::connect_async(format!("{ws}/ws/{listen_key}")).await.unwrap();
    let opened = async {
        while sim.get("/sim/stats").await["user_stream_connections"].as_u64() != Some(2) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), opened).await.expect("both connections opened within 20 s");

    // A market order: NEW when accepted, then its fill (TRADE / FILLED) and the position it opened.
    let client = sim.client("u1", &secret("u1"));
    let (user, xrp) = (UserId::new("u1").unwrap(), Symbol::new("XRPUSDT").unwrap());
    client.create_order(&user, &market_buy_20_xrp("bw-u1-1")).await.unwrap();
    // (The account's first request opened it with its starting wallet: an ACCOUNT_UPDATE may come
    // first, as a deposit would.)
    let mut accepted = next_event(&mut socket).await;
    while accepted["e"] == "ACCOUNT_UPDATE" {
        assert_eq!(accepted["a"]["P"], json!([]), "{accepted}");
        accepted = next_event(&mut socket).await;
    }
    assert_eq!(accepted["e"], "ORDER_TRADE_UPDATE", "{accepted}");
    assert_eq!(
        (&accepted["o"]["c"], &accepted["o"]["x"], &accepted["o"]["X"]),
        (&json!("bw-u1-1"), &json!("NEW"), &json!("NEW"))
    );
    let mut events = Vec::new();
    while !events.iter().any(|e: &Value| e["e"] == "ORDER_TRADE_UPDATE") {
        events.push(next_event(&mut socket).await);
    }
    let account = events.iter().find(|e| e["e"] == "ACCOUNT_UPDATE").expect("the position's change first");
    assert_eq!(account["a"]["P"][0]["s"], "XRPUSDT", "{account}");
    assert_eq!(account["a"]["P"][0]["pa"], "20", "{account}");
    assert_eq!(account["a"]["B"][0]["a"], "USDT", "{account}");
    let filled = events.last().unwrap();
    assert_eq!((&filled["o"]["x"], &filled["o"]["X"]), (&json!("TRADE"), &json!("FILLED")), "{filled}");
    let mut on_second = Vec::new();
    while on_second.last() != Some(filled) {
        on_second.push(next_event(&mut second).await);
    }
    assert!(on_second.contains(&accepted), "the second connection got the NEW too: {on_second:?}");
    assert_eq!((&filled["o"]["l"], &filled["o"]["z"]), (&json!("20"), &json!("20")), "{filled}");
    assert!(filled["o"]["t"].as_i64().unwrap() > 0 && filled["T"].as_i64().unwrap() >= accepted["T"].as_i64().unwrap());
    // The fill the stream told is the one the REST trade list holds.
    let listed = client.fills(&user, &xrp, 0).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].trade_id, filled["o"]["t"].as_i64().unwrap().to_string());

    // The key lapses: the connection is told, and a keepalive answers -1125 until a new POST.
    let expired = sim.http.post(format!("{}/sim/listen-keys/expire", sim.url)).json(&json!({ "user": "u1" }));
    assert!(expired.send().await.unwrap().status().is_success());
    let told = next_event(&mut socket).await;
    assert_eq!((&told["e"], &told["listenKey"]), (&json!("listenKeyExpired"), &json!(listen_key)), "{told}");
    assert_eq!(listen_key_call(reqwest::Method::PUT, Some(key("u1"))).await.1["code"], -1125);
    let renewed = listen_key_call(reqwest::Method::POST, Some(key("u1"))).await.1;
    assert_ne!(renewed["listenKey"], listen_key.as_str(), "a new key after expiry");
    assert_eq!(sim.get("/sim/stats").await["user_stream_connections"], 2);
}

#[tokio::test]
async fn the_binance_client_follows_an_accounts_user_data_stream() {
    use bulwark::domain::AccountEvent;
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(&sim_config(dir.path(), 1, 200, ""), 12);
    let client = sim.client("u1", &secret("u1"));
    let (user, xrp) = (UserId::new("u1").unwrap(), Symbol::new("XRPUSDT").unwrap());
    let mut stream = client.account_stream(&user).expect("the client streams accounts");
    sim.wait_requests("POST /fapi/v1/listenKey", 1).await;
    // The connection is up once the simulator counted it (the order's events must not be missed).
    let connected = async {
        while sim.get("/sim/stats").await["user_stream_connections"].as_u64() != Some(1) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), connected).await.expect("connected within 20 s");
    client.create_order(&user, &market_buy_20_xrp("bw-u1-1")).await.unwrap();
    let mut fill = None;
    let mut position = None;
    while fill.is_none() || position.is_none() {
        let event = tokio::time::timeout(Duration::from_secs(20), stream.recv()).await.expect("events").expect("open");
        match event {
            AccountEvent::Order { order, fill: Some(f), .. } => {
                assert_eq!(order.client_order_id.as_str(), "bw-u1-1");
                assert_eq!(order.status.as_str(), "FILLED");
                fill = Some(f);
            }
            AccountEvent::Account { positions, .. } if !positions.is_empty() => position = Some(positions[0].clone()),
            _ => {}
        }
    }
    let (fill, position) = (fill.unwrap(), position.unwrap());
    assert_eq!((position.symbol.as_str(), position.quantity), ("XRPUSDT", Decimal::from(20)));
    // Exactly the fill the REST trade list holds.
    assert_eq!(client.fills(&user, &xrp, 0).await.unwrap(), vec![fill]);
    // The key lapses: the stream ends (the book's owner reconnects with a new key).
    let expire = sim.http.post(format!("{}/sim/listen-keys/expire", sim.url)).json(&json!({ "user": "u1" }));
    assert!(expire.send().await.unwrap().status().is_success());
    let ended = async { while stream.recv().await.is_some() {} };
    tokio::time::timeout(Duration::from_secs(20), ended).await.expect("the stream ends after listenKeyExpired");
}

#[tokio::test]
async fn the_binance_client_follows_kline_streams_on_the_market_path() {
    use bulwark::domain::{MarketEvent, Timeframe};
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(&sim_config(dir.path(), 1, 200, ""), 13);
    let client = sim.client("u1", &secret("u1"));
    let xrp = Symbol::new("XRPUSDT").unwrap();
    let mut stream = client.candle_stream(&[(xrp.clone(), Timeframe::M5)]).expect("the client streams candles");
    let next = async |stream: &mut bulwark::exchange::CandleStream| {
        tokio::time::timeout(Duration::from_secs(20), stream.recv()).await.expect("an event within 20 s").expect("open")
    };
    assert_eq!(next(&mut stream).await, MarketEvent::Heartbeat, "the first message says the connection is up");
    let mut closed = Vec::new();
    while closed.len() < 4 {
        if let MarketEvent::CandleClosed { symbol, timeframe, candle, event_ms } = next(&mut stream).await {
            assert_eq!((&symbol, timeframe), (&xrp, Timeframe::M5));
            assert!(event_ms > candle.close_time_ms, "sent after it closed");
            closed.push(candle);
        }
    }
    for pair in closed.windows(2) {
        assert_eq!(pair[1].open_time_ms, pair[0].open_time_ms + 300_000, "one candle after another, none missed");
    }
    // Exactly the candles the REST klines hold (with the tape's taker-buy volume), and no klines
    // request was needed to get them.
    assert_eq!(sim.requests("GET /fapi/v1/klines").await, 0);
    let rest = client.klines(&xrp, Timeframe::M5, 100).await.unwrap();
    for candle in &closed {
        assert!(candle.taker_buy_volume.is_some_and(|bought| bought > 0.0 && bought < candle.volume), "{candle:?}");
        assert!(rest.contains(&Candle { large_trades: None, ..*candle }), "{candle:?} is in the REST klines");
    }
    // The aggTrade stream came with them: the first candle's trades were not followed from its
    // start; every later one carries its large trades, measured as the tape measures them.
    assert_eq!(closed[0].large_trades, None, "followed from the middle of its trades");
    for pair in closed.windows(2) {
        let trades = |candle: &Candle| tape::candle_trades(&Candle { large_trades: None, ..*candle });
        let expected = tape::large_trades(&trades(&pair[0]), &trades(&pair[1]), 300_000);
        assert!(expected.is_some());
        assert_eq!(pair[1].large_trades, expected, "{:?}", pair[1]);
    }
    assert_eq!(sim.get("/sim/stats").await["market_stream_connections"], 1);
}

#[tokio::test]
async fn market_streams_flow_only_on_the_market_path_and_answer_control_requests() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(&sim_config(dir.path(), 1, 100, ""), 14);
    let ws = sim.url.replace("http://", "ws://");
    let (mut raw, _) =
        tokio_tungstenite::connect_async(format!("{ws}/market/ws/xrpusdt@kline_5m/xrpusdt@aggTrade")).await.unwrap();
    let (mut legacy, _) =
        tokio_tungstenite::connect_async(format!("{ws}/stream?streams=xrpusdt@kline_5m")).await.unwrap();
    let (mut combined, _) = tokio_tungstenite::connect_async(format!("{ws}/market/stream")).await.unwrap();
    let subscribe = json!({ "method": "SUBSCRIBE", "params": ["xrpusdt@kline_5m"], "id": 7 }).to_string();
    for socket in [&mut legacy, &mut combined] {
        socket.send(Message::Text(subscribe.clone())).await.unwrap();
        assert_eq!(next_event(socket).await, json!({ "result": null, "id": 7 }), "acknowledged on every path");
    }
    // Raw mode: bare kline payloads; combined: wrapped with the stream's name.
    let closed_kline = async |socket: &mut _| loop {
        let event: Value = next_event(socket).await;
        let kline = if event.get("stream").is_some() { event["data"].clone() } else { event.clone() };
        if kline["k"]["x"] == true {
            return event;
        }
    };
    let bare = closed_kline(&mut raw).await;
    assert_eq!(
        (bare["e"].as_str(), bare["s"].as_str(), bare["k"]["i"].as_str()),
        (Some("kline"), Some("XRPUSDT"), Some("5m"))
    );
    // The candle's trades come before its closed kline, inside it, and add up to its volume.
    let (open_ms, close_ms) = (bare["k"]["t"].as_i64().unwrap(), bare["k"]["T"].as_i64().unwrap());
    let mut traded = 0.0;
    let mut bought = 0.0;
    for _ in 0..tape::TRADES_PER_CANDLE {
        let trade = loop {
            let event = next_event(&mut raw).await;
            if event["e"] == "aggTrade" {
                break event;
            }
        };
        assert_eq!(trade["s"], "XRPUSDT");
        assert!(trade["T"].as_i64().unwrap() > close_ms, "the next candle's trades: {trade}");
        let quantity: f64 = trade["q"].as_str().unwrap().parse().unwrap();
        traded += quantity;
        if trade["m"] == false {
            bought += quantity;
        }
    }
    let next = closed_kline(&mut raw).await;
    assert_eq!(next["k"]["t"].as_i64().unwrap(), open_ms + 300_000);
    let volume: f64 = next["k"]["v"].as_str().unwrap().parse().unwrap();
    let taker_bought: f64 = next["k"]["V"].as_str().unwrap().parse().unwrap();
    assert!((traded - volume).abs() <= 1e-9 * volume.max(1.0), "{traded} traded, {volume} in the kline");
    assert!((bought - taker_bought).abs() <= 1e-9 * volume.max(1.0), "{bought} bought, V {taker_bought}");
    assert_eq!(next["k"]["n"], tape::TRADES_PER_CANDLE);
    let wrapped = closed_kline(&mut combined).await;
    assert_eq!(wrapped["stream"], "xrpusdt@kline_5m");
    assert_eq!(wrapped["data"]["k"]["T"].as_i64().unwrap() - wrapped["data"]["k"]["t"].as_i64().unwrap(), 299_999);
    // The retired path: acknowledged above, and silent for as long as the others delivered.
    let listed = json!({ "method": "LIST_SUBSCRIPTIONS", "id": 8 }).to_string();
    legacy.send(Message::Text(listed)).await.unwrap();
    assert_eq!(
        next_event(&mut legacy).await,
        json!({ "result": ["xrpusdt@kline_5m"], "id": 8 }),
        "no kline came before it"
    );
    let unknown = json!({ "method": "PUBLISH", "id": 9 }).to_string();
    raw.send(Message::Text(unknown)).await.unwrap();
    loop {
        let answer = next_event(&mut raw).await;
        if answer.get("e").is_none() {
            assert_eq!(answer["code"], 2, "{answer}");
            break;
        }
    }
    // A WebSocket upgrade on a REST path is refused at once (it used to hang).
    for path in ["/fapi/v1/time", "/", "/fapi/v1/ticker/price"] {
        let refused = tokio::time::timeout(WAIT_GUARD, tokio_tungstenite::connect_async(format!("{ws}{path}")))
            .await
            .expect("answered, not hung");
        match refused {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 404, "{path}"),
            other => panic!("{path}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn the_binance_client_rotates_its_user_data_connection_without_a_gap() {
    use bulwark::domain::AccountEvent;
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(&sim_config(dir.path(), 1, 200, ""), 12);
    let settings = bulwark::exchange::binance::BinanceSettings {
        stream_rotation: Duration::from_secs(1),
        ..sim.client_settings("u1", &secret("u1"))
    };
    let client = bulwark::exchange::binance::BinanceClient::new(settings, std::sync::Arc::new(SystemClock)).unwrap();
    let user = UserId::new("u1").unwrap();
    let mut stream = client.account_stream(&user).expect("the client streams accounts");
    let opened = |at_least: u64| {
        let sim = &sim;
        async move {
            let waited = async {
                while sim.get("/sim/stats").await["user_stream_connections"].as_u64().unwrap_or(0) < at_least {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            };
            tokio::time::timeout(Duration::from_secs(30), waited).await.expect("connections opened within 30 s");
        }
    };
    // Every second a new connection; the listener's stream goes on through each.
    for (round, client_order_id) in [(2, "bw-u1-1"), (4, "bw-u1-2")] {
        opened(round).await;
        client.create_order(&user, &market_buy_20_xrp(client_order_id)).await.unwrap();
        loop {
            let event = tokio::time::timeout(Duration::from_secs(20), stream.recv())
                .await
                .expect("events within 20 s")
                .expect("the stream does not end at a rotation");
            if let AccountEvent::Order { order, fill: Some(_), .. } = event
                && order.client_order_id.as_str() == client_order_id
            {
                break;
            }
        }
    }
    // One listenKey served every connection.
    assert_eq!(sim.requests("POST /fapi/v1/listenKey").await, 1);
}

/// Sets each plan in turn, each until the simulator met its named stream fault twice (the
/// traders trading through it), then clears the plan. Faults in a row grow a connection's
/// reconnect backoff up to its 60 s cap, so a plan may wait that long for a connection to draw
/// its fault on: the guard allows it.
async fn meet_each_stream_fault(sim: &Sim, plans: impl IntoIterator<Item = (&str, Value)>, seed: u64) {
    const MEET_GUARD: Duration = Duration::from_secs(90);
    for (fault, plan) in plans {
        let met_before = sim.get("/sim/stats").await["stream_faults"][fault].as_u64().unwrap_or(0);
        eprintln!("stream fault: {fault} ({plan})");
        sim.faults(plan).await;
        let met = async {
            while sim.get("/sim/stats").await["stream_faults"][fault].as_u64().unwrap_or(0) < met_before + 2 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(MEET_GUARD, met).await.unwrap_or_else(|_| panic!("SEED={seed}: no {fault} met"));
    }
    sim.faults(json!({})).await;
}

/// Four users trade through `bulwark sim` while `plans` are met in turn (stalled connections given
/// up after 2 s of silence here, 60 s by default); then, once the simulator has had
/// `STREAM_FAULT_RUN_ORDERS_MIN` order requests, an orderly stop (SIGTERM), `bulwark reconcile` and
/// the ledger checked against the database. Answers the simulator's stats as the faults ended.
/// The run's `--duration` is only a guard: plans that take long to meet (reconnect backoffs grow
/// to a minute) must not outlast the traders, as a fixed 40 s run once did under CI load.
async fn trade_through_stream_faults(seed: u64, plans: Vec<(&str, Value)>) -> Value {
    const RUN_GUARD_SECS: u64 = 600;
    const STREAM_FAULT_RUN_ORDERS_MIN: u64 = 24;
    eprintln!("SEED={seed}");
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(&sim_config(dir.path(), 4, 200, ""), seed);
    let config = client_config(dir.path(), &sim.url, 4, 1_000, 1_000);
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "poll_interval_ms = 40\n",
        "poll_interval_ms = 40\nuser_data_stream = true\nstream_silence_secs = 2\n",
    );
    std::fs::write(&config, text).unwrap();
    let bulwark = run_bulwark(&config, 4, RUN_GUARD_SECS);
    sim.wait_requests("POST /fapi/v1/order", 1).await;
    meet_each_stream_fault(&sim, plans, seed).await;
    let stats = sim.get("/sim/stats").await;
    eprintln!(
        "stream faults met: {}; connections opened: {} account, {} market; klines requests: {}",
        stats["stream_faults"],
        stats["user_stream_connections"],
        stats["market_stream_connections"],
        stats["requests"]["GET /fapi/v1/klines"]
    );
    sim.wait_requests("POST /fapi/v1/order", STREAM_FAULT_RUN_ORDERS_MIN).await;
    assert!(Command::new("kill").args(["-TERM", &bulwark.id().to_string()]).status().unwrap().success());
    finish(bulwark).await;
    reconcile(&config, 4).await;
    let database = dir.path().join("data/bulwark.db");
    let (intents, _) = check_ledger_against_database(&sim, &database, 4, seed).await;
    assert!(intents >= 10, "SEED={seed}: {intents} intents; {}", decision_summary(&database, 4));
    stats
}

#[tokio::test]
async fn every_market_stream_fault_in_turn_leaves_the_invariants_intact() {
    let _serial = SERIAL.lock().await;
    let seed = 79;
    let market = |spec: Value| json!({ "market_stream": spec });
    // Each plan stays on until the simulator met its fault twice; the last one mixes market
    // stream faults with account stream faults and lost order responses.
    let plans = vec![
        ("market_disconnect", market(json!({ "disconnect_rate": 0.3 }))),
        ("market_stall", market(json!({ "stall_rate": 0.3 }))),
        ("market_duplicate", market(json!({ "duplicate_rate": 0.5 }))),
        ("market_delay", market(json!({ "delay_rate": 0.5, "delay_ms": 300 }))),
        ("market_drop", market(json!({ "drop_rate": 0.5 }))),
        (
            "market_drop",
            json!({
                "market_stream": { "drop_rate": 0.3, "duplicate_rate": 0.2, "disconnect_rate": 0.1 },
                "user_stream": { "drop_rate": 0.2, "disconnect_rate": 0.1 },
                "endpoints": { "POST /fapi/v1/order": { "lost_response_rate": 0.3 } },
            }),
        ),
    ];
    let stats = trade_through_stream_faults(seed, plans).await;
    assert!(
        stats["market_stream_connections"].as_u64().unwrap() > 1,
        "SEED={seed}: the faults made market data reconnect"
    );
}

#[tokio::test]
async fn every_user_stream_fault_in_turn_leaves_the_invariants_intact() {
    let _serial = SERIAL.lock().await;
    let seed = 78;
    let stream = |spec: Value| json!({ "user_stream": spec });
    // Each plan stays on until the simulator met its fault twice (the traders trading through
    // it); the last one mixes stream faults with lost order responses.
    let plans = vec![
        ("disconnect", stream(json!({ "disconnect_rate": 0.3 }))),
        ("stall", stream(json!({ "stall_rate": 0.3 }))),
        ("expire", stream(json!({ "expire_rate": 0.3 }))),
        ("duplicate", stream(json!({ "duplicate_rate": 0.5 }))),
        ("delay", stream(json!({ "delay_rate": 0.5, "delay_ms": 700 }))),
        ("drop", stream(json!({ "drop_rate": 0.5 }))),
        (
            "drop",
            json!({
                "user_stream": { "drop_rate": 0.3, "duplicate_rate": 0.2, "disconnect_rate": 0.1 },
                "endpoints": { "POST /fapi/v1/order": { "lost_response_rate": 0.3 } },
            }),
        ),
    ];
    let stats = trade_through_stream_faults(seed, plans).await;
    assert!(
        stats["user_stream_connections"].as_u64().unwrap() > 4,
        "SEED={seed}: the faults made the accounts reconnect"
    );
}
