//! `bulwark verify`: checks bulwark's promises against the exchange's ground truth. The brief's
//! invariants (never a duplicate order, never a lost fill, never an orphaned order, never an entry
//! past a risk block, never a position the bot is wrong about without saying so) are only worth
//! what proves them; the crash test and the simulations end here.
//!
//! The ground truth is a [`Ledger`]: every order `bulwark sim` accepted, with its fills, and every
//! account's position (`GET /sim/ledger`). The checks are pure: [`check`] reads the database
//! through [`Store`] and compares; [`fetch_ledger`] is the only I/O besides that.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use rust_decimal::Decimal;
use serde::Serialize;

use crate::domain::{ClientOrderId, IntentPurpose, Symbol, UserId};
use crate::exchange::paper::venue::Ledger;
use crate::failure_points::catalog::{SIG_KILL_SWITCH, SIG_SYMBOL_PROBATION, STATE_POSITION_SYNC};
use crate::failure_points::monitor::{CheckStatus, RunRecord};
use crate::persistence::{Store, StoreError};

/// Violations listed per invariant (the count is always exact).
const VIOLATIONS_SHOWN_MAX: usize = 20;

/// One invariant's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InvariantVerdict {
    /// Short, stable name (what tests and scripts match on).
    pub name: &'static str,
    /// The promise, in words.
    pub promise: &'static str,
    /// How many things were checked (orders, fills, positions, ...).
    pub checked: u64,
    /// What the count above counts.
    pub unit: &'static str,
    /// Every violation, one line each.
    pub violations: Vec<String>,
}

/// Every invariant's verdict, in a fixed order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub invariants: Vec<InvariantVerdict>,
}

pub const ONE_ORDER_PER_INTENT: &str = "one-exchange-order-per-intent";
pub const EVERY_FILL_RECORDED: &str = "every-fill-recorded";
pub const NO_UNKNOWN_OPEN_ORDER: &str = "no-unknown-open-order";
pub const NO_ENTRY_UNDER_LOCK: &str = "no-entry-under-lock";
pub const POSITIONS_AGREE: &str = "positions-agree";
pub const NO_ENTRY_ON_A_HELD_POSITION: &str = "no-entry-on-a-held-position";

impl VerifyReport {
    pub fn passed(&self) -> bool {
        self.invariants.iter().all(|invariant| invariant.violations.is_empty())
    }

    pub fn verdict(&self, name: &str) -> Option<&InvariantVerdict> {
        self.invariants.iter().find(|invariant| invariant.name == name)
    }

    /// One line per invariant (`ok` or `VIOLATED`, with counts), then the violations.
    pub fn render(&self) -> String {
        let mut text = String::new();
        for invariant in &self.invariants {
            let verdict = if invariant.violations.is_empty() { "ok" } else { "VIOLATED" };
            let _ = writeln!(
                text,
                "{verdict:<9} {:<30} {} {} checked, {} violation(s): {}",
                invariant.name,
                invariant.checked,
                invariant.unit,
                invariant.violations.len(),
                invariant.promise
            );
            for violation in invariant.violations.iter().take(VIOLATIONS_SHOWN_MAX) {
                let _ = writeln!(text, "          - {violation}");
            }
            if invariant.violations.len() > VIOLATIONS_SHOWN_MAX {
                let _ =
                    writeln!(text, "          - ... and {} more", invariant.violations.len() - VIOLATIONS_SHOWN_MAX);
            }
        }
        let _ = writeln!(text, "{}", if self.passed() { "verify: every invariant holds" } else { "verify: FAILED" });
        text
    }
}

/// Reads the ledger from a running `bulwark sim` (`GET {sim_url}/sim/ledger`).
pub async fn fetch_ledger(sim_url: &str) -> anyhow::Result<Ledger> {
    use anyhow::Context as _;
    match reqwest::Url::parse(sim_url) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.has_host() => {}
        _ => anyhow::bail!(
            "--sim-url {:?} is not an http(s) URL (like http://127.0.0.1:8378)",
            crate::limits::excerpt(sim_url)
        ),
    }
    let url = format!("{}/sim/ledger", sim_url.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .context("building the HTTP client")?;
    let response = client.get(&url).send().await.with_context(|| format!("GET {url}"))?;
    let status = response.status();
    let body = response.text().await.with_context(|| format!("reading the answer of GET {url}"))?;
    if !status.is_success() {
        anyhow::bail!("GET {url} answered {status}: {}", body.chars().take(300).collect::<String>());
    }
    serde_json::from_str(&body).with_context(|| format!("GET {url}: the answer is not a ledger"))
}

/// `bulwark verify`: the ledger of the simulator at `sim_url` against the database of `config`
/// (opened read-only). Refused while the outbox still holds records (the database is behind
/// until the next start replays them) or while a server runs (its writes are not all in yet).
pub async fn run(config: &crate::config::Config, sim_url: &str) -> anyhow::Result<VerifyReport> {
    use anyhow::Context as _;
    let database = config.database_path();
    if !database.exists() {
        anyhow::bail!("no database at {}: the server has not run with this config yet", database.display());
    }
    if crate::instance_lock::InstanceLock::is_held(&database) {
        anyhow::bail!("a server is running on {}: stop it first (its last writes are not in yet)", database.display());
    }
    let outbox = config.outbox_path();
    let waiting = crate::persistence::outbox::count_entries(&outbox)
        .with_context(|| format!("reading {} (records the database may not have yet)", outbox.display()))?;
    if waiting > 0 {
        anyhow::bail!(
            "{} holds {waiting} record(s) the database has not applied yet: start the server once (it replays them first), then verify",
            outbox.display()
        );
    }
    let ledger = fetch_ledger(sim_url).await?;
    let mut store = Store::open_read_only(&database).with_context(|| format!("opening {}", database.display()))?;
    check(&mut store, &ledger).with_context(|| format!("reading {}", database.display()))
}

/// Every order's key on the exchange: (account, client order id).
type OrderKey = (UserId, ClientOrderId);

/// Checks every invariant of the database against the ledger.
pub fn check(store: &mut Store, ledger: &Ledger) -> Result<VerifyReport, StoreError> {
    let mut users: BTreeSet<UserId> = store.user_ids()?.into_iter().collect();
    users.extend(ledger.orders.iter().map(|entry| entry.account.clone()));
    users.extend(ledger.positions.iter().map(|position| position.account.clone()));

    let mut intents = BTreeMap::new();
    let mut recorded_fills: BTreeMap<(UserId, Symbol, String), Decimal> = BTreeMap::new();
    let mut stored_positions: BTreeMap<(UserId, Symbol), Decimal> = BTreeMap::new();
    let mut locks = Vec::new();
    for user in &users {
        for order in store.orders_of(user)? {
            intents.insert((user.clone(), order.intent.client_order_id.clone()), order);
        }
        for (symbol, trade_id, quantity) in store.fill_keys(user)? {
            recorded_fills.insert((user.clone(), symbol, trade_id), quantity);
        }
        for position in store.load_positions(user)? {
            stored_positions.insert((user.clone(), position.symbol), position.quantity);
        }
    }
    for (lock, cleared_at_ms) in store.guard_lock_history(None)? {
        if lock.failure_point == SIG_KILL_SWITCH.as_str() || lock.failure_point == SIG_SYMBOL_PROBATION.as_str() {
            locks.push((lock, cleared_at_ms));
        }
    }
    let halted_for_position_sync: BTreeSet<String> = store
        .latest_monitor_snapshot()?
        .and_then(|(_, _, body)| RunRecord::parse(&body).ok())
        .map(|run| run.checks)
        .unwrap_or_default()
        .into_iter()
        .filter(|check| check.id == STATE_POSITION_SYNC && check.status == CheckStatus::Critical)
        .flat_map(|check| check.users.into_iter().map(|user| user.to_string()))
        .collect();

    // What reached the exchange, per intent.
    let mut on_exchange: BTreeMap<OrderKey, Vec<&str>> = BTreeMap::new();
    for entry in &ledger.orders {
        if entry.order.client_order_id.is_bulwark() {
            on_exchange
                .entry((entry.account.clone(), entry.order.client_order_id.clone()))
                .or_default()
                .push(&entry.order.exchange_order_id);
        }
    }

    let mut one_order = verdict(
        ONE_ORDER_PER_INTENT,
        "no two exchange orders for one intent (client order id)",
        "intent(s) on the exchange",
    );
    one_order.checked = on_exchange.len() as u64;
    for ((account, id), exchange_ids) in &on_exchange {
        if exchange_ids.len() > 1 {
            one_order.violations.push(format!(
                "{account} {id}: {} exchange orders ({})",
                exchange_ids.len(),
                exchange_ids.join(", ")
            ));
        }
    }

    let mut every_fill = verdict(
        EVERY_FILL_RECORDED,
        "every fill on the exchange is in the database, with its quantity",
        "fill(s) on the exchange",
    );
    for entry in &ledger.orders {
        for fill in &entry.fills {
            every_fill.checked += 1;
            let key = (entry.account.clone(), fill.symbol.clone(), fill.trade_id.clone());
            match recorded_fills.get(&key) {
                None => every_fill.violations.push(format!(
                    "{} {} trade {} of {} ({} {} @ {}): not in the database",
                    entry.account,
                    fill.symbol,
                    fill.trade_id,
                    entry.order.client_order_id,
                    fill.side.as_str(),
                    fill.quantity,
                    fill.price
                )),
                Some(quantity) if *quantity != fill.quantity => every_fill.violations.push(format!(
                    "{} {} trade {} of {}: the database has quantity {quantity}, the exchange {}",
                    entry.account, fill.symbol, fill.trade_id, entry.order.client_order_id, fill.quantity
                )),
                Some(_) => {}
            }
        }
    }

    let mut unknown_open = verdict(
        NO_UNKNOWN_OPEN_ORDER,
        "no open exchange order with bulwark's prefix is unknown to the database",
        "open bulwark order(s) on the exchange",
    );
    for entry in &ledger.orders {
        let order = &entry.order;
        if !order.client_order_id.is_bulwark() || !order.status.is_open() {
            continue;
        }
        unknown_open.checked += 1;
        if !intents.contains_key(&(entry.account.clone(), order.client_order_id.clone())) {
            unknown_open.violations.push(format!(
                "{} {} {} ({}, exchange id {}): open on the exchange, unknown to the database",
                entry.account,
                order.symbol,
                order.client_order_id,
                order.status.as_str(),
                order.exchange_order_id
            ));
        }
    }

    let mut no_entry_under_lock = verdict(
        NO_ENTRY_UNDER_LOCK,
        "no entry was committed while a kill switch or symbol probation covered it",
        "entry intent(s)",
    );
    for ((user, id), order) in &intents {
        let intent = &order.intent;
        if intent.purpose != IntentPurpose::Entry || intent.reduce_only {
            continue;
        }
        no_entry_under_lock.checked += 1;
        let at_ms = intent.created_at_ms;
        let candle_close_ms = intent.decision_candle_close_ms;
        for (lock, cleared_at_ms) in &locks {
            // What the trader enforces: once a lock is set (wall clock), it blocks every decision on
            // a candle closing before its venue expiry, until an operator clears it.
            let set_before = lock.set_at_ms <= at_ms;
            let held_by_venue = lock.holds_at_venue(candle_close_ms);
            let not_cleared = cleared_at_ms.is_none_or(|cleared| at_ms < cleared);
            if lock.user == *user && lock.covers(&intent.symbol) && set_before && held_by_venue && not_cleared {
                no_entry_under_lock.violations.push(format!(
                    "{user} {id} ({} {}, {}) committed at {} on the candle closing at {} under {} lock #{} (set {}, until {} venue time{}): {}",
                    intent.symbol,
                    intent.side.as_str(),
                    order.state,
                    crate::clock::rfc3339_ms(at_ms),
                    crate::clock::rfc3339_ms(candle_close_ms),
                    lock.failure_point,
                    lock.id,
                    crate::clock::rfc3339_ms(lock.set_at_ms),
                    crate::clock::rfc3339_ms(lock.until_venue_ms),
                    cleared_at_ms.map(|cleared| format!(", cleared {}", crate::clock::rfc3339_ms(cleared))).unwrap_or_default(),
                    lock.reason
                ));
            }
        }
    }

    let mut positions = verdict(
        POSITIONS_AGREE,
        "the database's positions equal the exchange's, or the user is halted with STATE-POSITION-SYNC",
        "position(s)",
    );
    let mut exchange_positions: BTreeMap<(UserId, Symbol), Decimal> = BTreeMap::new();
    for position in &ledger.positions {
        *exchange_positions.entry((position.account.clone(), position.symbol.clone())).or_default() +=
            position.quantity;
    }
    let keys: BTreeSet<(UserId, Symbol)> = exchange_positions
        .keys()
        .cloned()
        .chain(stored_positions.iter().filter(|(_, quantity)| !quantity.is_zero()).map(|(key, _)| key.clone()))
        .collect();
    for key in keys {
        positions.checked += 1;
        let exchange = exchange_positions.get(&key).copied().unwrap_or_default();
        let database = stored_positions.get(&key).copied().unwrap_or_default();
        if exchange != database && !halted_for_position_sync.contains(key.0.as_str()) {
            positions.violations.push(format!(
                "{} {}: the exchange holds {exchange}, the database {database}, and the user is not halted with {}",
                key.0, key.1, STATE_POSITION_SYNC
            ));
        }
    }

    let entry_on_held = entries_on_held_positions(ledger, &intents);
    Ok(VerifyReport {
        invariants: vec![one_order, every_fill, unknown_open, no_entry_under_lock, positions, entry_on_held],
    })
}

/// An entry decided on an account state nobody had confirmed (a fill the bot did not know of, a
/// stream that dropped or delayed its event) shows on the exchange as an entry order that executes
/// while the account already holds a position on its symbol: bulwark enters only when flat. The
/// position before each fill is found by replaying the ledger's fills backwards from the positions
/// it holds now, newest trade first, so a history the venue has pruned at its old end does not
/// matter.
fn entries_on_held_positions(
    ledger: &Ledger,
    intents: &BTreeMap<OrderKey, crate::records::StoredOrder>,
) -> InvariantVerdict {
    let mut verdict = verdict(
        NO_ENTRY_ON_A_HELD_POSITION,
        "no entry order executed while the account already held a position on its symbol",
        "entry order(s) with a fill",
    );
    let is_entry = |key: &OrderKey| {
        intents.get(key).is_some_and(|order| order.intent.purpose == IntentPurpose::Entry && !order.intent.reduce_only)
    };
    let trade_order = |trade_id: &str| trade_id.parse::<u64>().ok();
    let mut fills: Vec<(&UserId, &ClientOrderId, &crate::domain::Fill, bool)> = Vec::new();
    for entry in &ledger.orders {
        let key = (entry.account.clone(), entry.order.client_order_id.clone());
        let first_trade = entry.fills.iter().filter_map(|fill| trade_order(&fill.trade_id)).min();
        for fill in &entry.fills {
            let first_of_entry = is_entry(&key) && trade_order(&fill.trade_id) == first_trade;
            fills.push((&entry.account, &entry.order.client_order_id, fill, first_of_entry));
        }
    }
    fills.sort_by_key(|(_, _, fill, _)| (trade_order(&fill.trade_id), fill.time_ms));
    let mut held: BTreeMap<(UserId, Symbol), Decimal> = BTreeMap::new();
    for position in &ledger.positions {
        *held.entry((position.account.clone(), position.symbol.clone())).or_default() += position.quantity;
    }
    for (account, id, fill, first_of_entry) in fills.into_iter().rev() {
        let position = held.entry((account.clone(), fill.symbol.clone())).or_default();
        *position -= fill.side.sign() * fill.quantity;
        if first_of_entry {
            verdict.checked += 1;
            if !position.is_zero() {
                verdict.violations.push(format!(
                    "{account} {id} ({} {} {}) executed while the account held {position} {}",
                    fill.symbol,
                    fill.side.as_str(),
                    fill.quantity,
                    fill.symbol
                ));
            }
        }
    }
    verdict
}

fn verdict(name: &'static str, promise: &'static str, unit: &'static str) -> InvariantVerdict {
    InvariantVerdict { name, promise, checked: 0, unit, violations: Vec::new() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{OrderIntent, OrderType, Quantity, Side};
    use crate::failure_points::locks::GuardLock;

    fn user() -> UserId {
        UserId::new("u1").unwrap()
    }

    fn xrp() -> Symbol {
        Symbol::new("XRPUSDT").unwrap()
    }

    /// A store with one entry intent on XRPUSDT committed at 10_000.
    fn store_with_entry() -> Store {
        let mut store = Store::open_in_memory().unwrap();
        store.ensure_users(&[user()], 0).unwrap();
        store
            .commit_intent(&OrderIntent {
                user: user(),
                intent_seq: 1,
                client_order_id: ClientOrderId::for_intent(&user(), 1),
                symbol: xrp(),
                side: Side::Buy,
                order_type: OrderType::Market,
                quantity: Quantity::new(Decimal::from(100)).unwrap(),
                reduce_only: false,
                purpose: IntentPurpose::Entry,
                strategy: "ema_crossover".into(),
                decision_candle_close_ms: 9_000,
                created_at_ms: 10_000,
            })
            .unwrap();
        store
    }

    fn lock(failure_point: &str, symbol: Option<Symbol>, set_at_ms: i64, until_ms: i64) -> GuardLock {
        GuardLock {
            id: 0,
            user: user(),
            failure_point: failure_point.into(),
            symbol,
            reason: "test".into(),
            values: serde_json::json!({}),
            set_at_ms,
            until_ms,
            set_at_venue_ms: set_at_ms,
            until_venue_ms: until_ms,
        }
    }

    fn entry_violations(store: &mut Store) -> Vec<String> {
        let report = check(store, &Ledger::default()).unwrap();
        report.verdict(NO_ENTRY_UNDER_LOCK).unwrap().violations.clone()
    }

    #[test]
    fn a_lock_covers_an_entry_from_when_it_is_set_until_it_ends_or_is_cleared() {
        // The entry was committed at 10_000 (wall) on the candle closing at 9_000 (venue).
        let mut store = store_with_entry();
        assert!(entry_violations(&mut store).is_empty());
        // Ended by the venue's clock at that candle's close; set just after it; another symbol's
        // probation; another guard's lock: none covers it.
        store.insert_guard_lock(&lock("SIG-KILL-SWITCH", None, 5_000, 9_000)).unwrap();
        store.insert_guard_lock(&lock("SIG-KILL-SWITCH", None, 10_001, 20_000)).unwrap();
        store
            .insert_guard_lock(&lock("SIG-SYMBOL-PROBATION", Some(Symbol::new("BTCUSDT").unwrap()), 0, 99_000))
            .unwrap();
        store.insert_guard_lock(&lock("SIG-GOLDEN-HOUR", None, 0, 99_000)).unwrap();
        assert!(entry_violations(&mut store).is_empty());
        // A probation on its symbol, cleared by an operator before the entry: none either.
        let cleared = store.insert_guard_lock(&lock("SIG-SYMBOL-PROBATION", Some(xrp()), 1_000, 60_000)).unwrap();
        store.clear_guard_lock(cleared, 9_999, "operator").unwrap();
        assert!(entry_violations(&mut store).is_empty());
        // The same, cleared only after the entry: a violation, named.
        let late = store.insert_guard_lock(&lock("SIG-SYMBOL-PROBATION", Some(xrp()), 1_000, 60_000)).unwrap();
        store.clear_guard_lock(late, 10_001, "operator").unwrap();
        let violations = entry_violations(&mut store);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(violations[0].contains("bw-u1-1") && violations[0].contains("SIG-SYMBOL-PROBATION"), "{violations:?}");
    }

    #[test]
    fn a_lock_covers_an_entry_by_the_venues_clock_not_the_wall_clocks() {
        // An accelerated venue: the kill switch's wall expiry (9_500) passed before the entry was
        // committed (10_000), but the candle decided on (closing at 9_000) is before its venue expiry.
        let mut store = store_with_entry();
        let kill_switch = GuardLock {
            until_ms: 9_500,
            set_at_venue_ms: 1_000,
            until_venue_ms: 9_001,
            ..lock("SIG-KILL-SWITCH", None, 2_000, 0)
        };
        store.insert_guard_lock(&kill_switch).unwrap();
        let violations = entry_violations(&mut store);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(violations[0].contains("venue time"), "{violations:?}");
    }

    #[test]
    fn an_empty_database_and_ledger_pass_and_the_text_names_every_invariant() {
        let mut store = Store::open_in_memory().unwrap();
        let report = check(&mut store, &Ledger::default()).unwrap();
        assert!(report.passed());
        let text = report.render();
        for name in [
            ONE_ORDER_PER_INTENT,
            EVERY_FILL_RECORDED,
            NO_UNKNOWN_OPEN_ORDER,
            NO_ENTRY_UNDER_LOCK,
            POSITIONS_AGREE,
            NO_ENTRY_ON_A_HELD_POSITION,
        ] {
            assert!(text.contains(name), "{text}");
        }
    }

    /// A filled market order on the ledger: `client_order_id`, one fill numbered `trade`.
    fn filled(
        client_order_id: &str,
        trade: u64,
        side: Side,
        quantity: i64,
    ) -> crate::exchange::paper::venue::LedgerOrder {
        use crate::domain::{ExchangeOrder, ExchangeOrderStatus, Fill};
        let quantity = Decimal::from(quantity);
        let order = ExchangeOrder {
            exchange_order_id: trade.to_string(),
            client_order_id: ClientOrderId::parse(client_order_id).unwrap(),
            symbol: xrp(),
            side,
            order_type: OrderType::Market,
            quantity: Quantity::new(quantity).unwrap(),
            filled_quantity: quantity,
            average_price: Some(Decimal::ONE),
            status: ExchangeOrderStatus::Filled,
            reduce_only: false,
            updated_at_ms: trade as i64,
            created_at_ms: trade as i64,
        };
        let fill = Fill {
            trade_id: trade.to_string(),
            exchange_order_id: trade.to_string(),
            symbol: xrp(),
            side,
            price: Decimal::ONE,
            quantity,
            fee: Decimal::ZERO,
            fee_asset: "USDT".into(),
            realized_pnl: Decimal::ZERO,
            time_ms: trade as i64,
        };
        crate::exchange::paper::venue::LedgerOrder { account: user(), order, fills: vec![fill] }
    }

    fn held_entry_violations(
        store: &mut Store,
        orders: Vec<crate::exchange::paper::venue::LedgerOrder>,
        now_held: i64,
    ) -> (u64, Vec<String>) {
        let positions = vec![crate::exchange::paper::venue::LedgerPosition {
            account: user(),
            symbol: xrp(),
            quantity: Decimal::from(now_held),
        }];
        let report = check(store, &Ledger { orders, positions }).unwrap();
        let verdict = report.verdict(NO_ENTRY_ON_A_HELD_POSITION).unwrap();
        (verdict.checked, verdict.violations.clone())
    }

    #[test]
    fn an_entry_that_executes_on_a_held_position_is_a_violation_whatever_history_was_pruned() {
        // bulwark's entry bw-u1-1 (buy 100) executed on a flat account: fine, with or without the
        // account's older trades (an exit and an entry before it) still listed.
        let mut store = store_with_entry();
        let entry = || filled("bw-u1-1", 7, Side::Buy, 100);
        let history = || vec![filled("manual-1", 3, Side::Buy, 40), filled("manual-2", 5, Side::Sell, 40)];
        assert_eq!(held_entry_violations(&mut store, vec![entry()], 100), (1, Vec::new()));
        let all: Vec<_> = history().into_iter().chain([entry()]).collect();
        assert_eq!(held_entry_violations(&mut store, all, 100), (1, Vec::new()));
        // A trade behind its back left 40 held when the entry executed: a violation, named.
        let held_before = vec![filled("manual-1", 3, Side::Buy, 40), entry()];
        let (checked, violations) = held_entry_violations(&mut store, held_before, 140);
        assert_eq!(checked, 1);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(violations[0].contains("bw-u1-1") && violations[0].contains("held 40"), "{violations:?}");
    }
}
