//! The failure-point catalog: every named way trading can be blocked, with its category, its
//! priority, how it is checked and how (or whether) it is healed. It is data, not behaviour: the
//! Monitor runs one check per entry, the Healer one action per healable entry, guards and blocks
//! name the entry they enforce, and `bulwark report --catalog` prints it. The rows follow the
//! table in the product brief (from the failure-point assessment seed).

use std::fmt;

use serde::Serialize;

/// A failure point's id, e.g. `SYS-EXCHANGE-API`. The prefix names the category.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct FailurePointId(&'static str);

impl FailurePointId {
    pub const fn as_str(self) -> &'static str {
        self.0
    }

    /// The catalog id spelled `text`, if there is one.
    pub fn parse(text: &str) -> Option<Self> {
        CATALOG.iter().map(|point| point.id).find(|id| id.0 == text)
    }
}

impl fmt::Display for FailurePointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Signal,
    System,
    Resource,
    Config,
    Data,
    State,
}

impl Category {
    pub const ALL: [Category; 6] =
        [Category::Signal, Category::System, Category::Resource, Category::Config, Category::Data, Category::State];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::Signal => "signal",
            Category::System => "system",
            Category::Resource => "resource",
            Category::Config => "config",
            Category::Data => "data",
            Category::State => "state",
        }
    }

    /// The id prefix of this category's failure points.
    pub fn id_prefix(self) -> &'static str {
        match self {
            Category::Signal => "SIG-",
            Category::System => "SYS-",
            Category::Resource => "RES-",
            Category::Config => "CFG-",
            Category::Data => "DATA-",
            Category::State => "STATE-",
        }
    }
}

/// How much trading a failure point blocks: `Critical` all of it, `High` many trades, `Medium`
/// some trades.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Critical,
    High,
    Medium,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::High => "high",
            Priority::Medium => "medium",
        }
    }
}

/// What happens when the failure point fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub enum Healing {
    /// The Healer's action.
    Action(&'static str),
    /// Nothing automatic: an operator acts on the report (what the block does meanwhile).
    Manual(&'static str),
}

impl Healing {
    pub fn describe(self) -> String {
        match self {
            Healing::Action(action) => action.to_owned(),
            Healing::Manual(detail) => format!("manual: {detail}"),
        }
    }
}

/// One row of the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FailurePoint {
    pub id: FailurePointId,
    pub category: Category,
    pub priority: Priority,
    /// What blocks trading.
    pub description: &'static str,
    /// How it is detected.
    pub check: &'static str,
    pub healing: Healing,
}

pub const SIG_KILL_SWITCH: FailurePointId = FailurePointId("SIG-KILL-SWITCH");
pub const SIG_STRATEGY_OVERLAP: FailurePointId = FailurePointId("SIG-STRATEGY-OVERLAP");
pub const SIG_WHALE_CVD: FailurePointId = FailurePointId("SIG-WHALE-CVD");
pub const SIG_TAKER_AGGRESSION: FailurePointId = FailurePointId("SIG-TAKER-AGGRESSION");
pub const SIG_LIQUIDATION_WALL: FailurePointId = FailurePointId("SIG-LIQUIDATION-WALL");
pub const SIG_TRAP: FailurePointId = FailurePointId("SIG-TRAP");
pub const SIG_SYMBOL_PROBATION: FailurePointId = FailurePointId("SIG-SYMBOL-PROBATION");
pub const SIG_ALPHA_FLOOR: FailurePointId = FailurePointId("SIG-ALPHA-FLOOR");
pub const SIG_POWER_RANKING: FailurePointId = FailurePointId("SIG-POWER-RANKING");
pub const SIG_GOLDEN_HOUR: FailurePointId = FailurePointId("SIG-GOLDEN-HOUR");
pub const SIG_FEE_AWARE: FailurePointId = FailurePointId("SIG-FEE-AWARE");
pub const SIG_REGIME: FailurePointId = FailurePointId("SIG-REGIME");
pub const SYS_EXCHANGE_API: FailurePointId = FailurePointId("SYS-EXCHANGE-API");
pub const SYS_INTEL_API: FailurePointId = FailurePointId("SYS-INTEL-API");
pub const SYS_NETWORK: FailurePointId = FailurePointId("SYS-NETWORK");
pub const SYS_FILESYSTEM: FailurePointId = FailurePointId("SYS-FILESYSTEM");
pub const SYS_PROCESS: FailurePointId = FailurePointId("SYS-PROCESS");
pub const SYS_DATABASE: FailurePointId = FailurePointId("SYS-DATABASE");
pub const SYS_CIRCUIT_BREAKER: FailurePointId = FailurePointId("SYS-CIRCUIT-BREAKER");
pub const SYS_CREDENTIALS: FailurePointId = FailurePointId("SYS-CREDENTIALS");
pub const RES_POSITION_LIMIT: FailurePointId = FailurePointId("RES-POSITION-LIMIT");
pub const RES_RATE_LIMIT: FailurePointId = FailurePointId("RES-RATE-LIMIT");
pub const RES_CAPITAL: FailurePointId = FailurePointId("RES-CAPITAL");
pub const CFG_MISSING: FailurePointId = FailurePointId("CFG-MISSING");
pub const CFG_INVALID: FailurePointId = FailurePointId("CFG-INVALID");
pub const DATA_CORRUPT: FailurePointId = FailurePointId("DATA-CORRUPT");
pub const DATA_MISSING: FailurePointId = FailurePointId("DATA-MISSING");
pub const STATE_KILL_SWITCH: FailurePointId = FailurePointId("STATE-KILL-SWITCH");
pub const STATE_PROBATION: FailurePointId = FailurePointId("STATE-PROBATION");
pub const STATE_POSITION_SYNC: FailurePointId = FailurePointId("STATE-POSITION-SYNC");
pub const STATE_ORPHAN_ORDERS: FailurePointId = FailurePointId("STATE-ORPHAN-ORDERS");
pub const STATE_UNRESOLVED_ORDERS: FailurePointId = FailurePointId("STATE-UNRESOLVED-ORDERS");
pub const STATE_STRATEGY_ERROR: FailurePointId = FailurePointId("STATE-STRATEGY-ERROR");

const fn point(
    id: FailurePointId,
    category: Category,
    priority: Priority,
    description: &'static str,
    check: &'static str,
    healing: Healing,
) -> FailurePoint {
    FailurePoint { id, category, priority, description, check, healing }
}

/// Every failure point, in the order reports list them (by category, then priority).
pub const CATALOG: &[FailurePoint] = rows::CATALOG;

mod rows {
    use super::Category::{Config, Data, Resource, Signal, State, System};
    use super::Healing::{Action, Manual};
    use super::Priority::{Critical, High, Medium};
    use super::*;

    pub const CATALOG: &[FailurePoint] = &[
        point(
            SIG_KILL_SWITCH,
            Signal,
            Critical,
            "equity drawdown reached the limit: every new entry of the user is blocked",
            "equity (wallet + unrealized PnL) against its peak over the look-back; drawdown >= max_drawdown_pct (default 5 %) blocks entries for block_hours (default 12); equity that cannot be computed blocks (fails closed)",
            Action(
                "the lock clears itself at blocked_until; the Healer clears any lock found past it and reports how late it was",
            ),
        ),
        point(
            SIG_STRATEGY_OVERLAP,
            Signal,
            High,
            "two strategies of one user want the same symbol in the same direction",
            "the signal's symbol and side against the user's open positions and in-flight intents from other strategies",
            Manual("the later signal is blocked; change the strategies' symbols"),
        ),
        point(
            SIG_GOLDEN_HOUR,
            Signal,
            High,
            "outside the configured trading hours",
            "the signal's time (UTC) against the user's trading-hours windows",
            Manual("entries wait for the next window"),
        ),
        point(
            SIG_WHALE_CVD,
            Signal,
            Medium,
            "large-trade cumulative volume delta runs against the signal",
            "cumulative taker volume delta of large trades over the look-back, against the signal's side",
            Manual("the signal is blocked; the next candle is judged afresh"),
        ),
        point(
            SIG_TAKER_AGGRESSION,
            Signal,
            Medium,
            "taker buy/sell ratio runs against the signal",
            "taker buy volume / taker sell volume over the look-back, against the signal's side",
            Manual("the signal is blocked; the next candle is judged afresh"),
        ),
        point(
            SIG_LIQUIDATION_WALL,
            Signal,
            Medium,
            "a liquidation cluster sits close to price in the trade's path",
            "liquidation volume by price level near the entry, on the side the trade moves towards",
            Manual("the signal is blocked; the next candle is judged afresh"),
        ),
        point(
            SIG_TRAP,
            Signal,
            Medium,
            "a breakout on thin volume followed by a reversal wick (bull or bear trap)",
            "the breakout candle's volume against the average, and the wick against the body",
            Manual("the signal is blocked; the next candle is judged afresh"),
        ),
        point(
            SIG_SYMBOL_PROBATION,
            Signal,
            Medium,
            "a symbol lost too often for the user: it is on probation",
            "consecutive losing trades (or total loss) per user and symbol; N in a row puts the symbol on probation for T",
            Action("expires at its until time; the Healer clears any probation found past it"),
        ),
        point(
            SIG_ALPHA_FLOOR,
            Signal,
            Medium,
            "the signal's score (expected edge) is below the floor",
            "the strategy's signal score against the configured floor",
            Manual("the signal is blocked"),
        ),
        point(
            SIG_POWER_RANKING,
            Signal,
            Medium,
            "the symbol is outside the top K of the user's universe",
            "a momentum/volume score ranked across the user's symbols",
            Manual("the signal is blocked until the symbol ranks again"),
        ),
        point(
            SIG_FEE_AWARE,
            Signal,
            Medium,
            "the expected move is smaller than round-trip fees times k",
            "the expected move (from recent volatility) against 2 x taker fee x k",
            Manual("the signal is blocked"),
        ),
        point(
            SIG_REGIME,
            Signal,
            Medium,
            "the volatility/trend regime does not suit the strategy",
            "realized volatility and trend strength against the strategy's allowed regimes",
            Manual("the signal is blocked until the regime changes"),
        ),
        point(
            SYS_EXCHANGE_API,
            System,
            Critical,
            "the exchange cannot be used: unreachable, slow, failing, or its clock far from ours",
            "reachability, latency, error rate of recent calls, clock skew, and candle fetches per feed",
            Action("reconnect with backoff; re-sync the exchange clock"),
        ),
        point(
            SYS_CREDENTIALS,
            System,
            Critical,
            "the exchange refuses a user's API key (or it is not configured): that user is halted",
            "users halted for refused or missing credentials (-2014, -2015, -1022, 401)",
            Manual("fix the key and restart; the user stays halted, with the reason, until then"),
        ),
        point(
            SYS_NETWORK,
            System,
            Critical,
            "the network path to an endpoint is down",
            "connection failures (refused, reset, timed out before sending) per host",
            Manual("requests back off and are retried by themselves; restore the network path"),
        ),
        point(
            SYS_FILESYSTEM,
            System,
            Critical,
            "the data or log directory cannot be written, or the disk is nearly full",
            "free space and write permission of the data and log directories; journal write failures",
            Manual("free disk space or fix permissions; failed journal writes are counted"),
        ),
        point(
            SYS_PROCESS,
            System,
            Critical,
            "an actor is down, restarting, or a user is quarantined",
            "the supervision tree: every actor's state, restart counts, quarantined users, heartbeats",
            Action("re-admit a quarantined user after a cool-down"),
        ),
        point(
            SYS_DATABASE,
            System,
            Critical,
            "the database cannot be written or fails its integrity check",
            "write failures and refused writes, pending writes, SQLite quick_check",
            Action("restart persistence; replay pending writes"),
        ),
        point(
            SYS_INTEL_API,
            System,
            High,
            "market intelligence (CoinGlass) is unreachable or stale",
            "reachability and the age of every intelligence series",
            Action("refresh intelligence"),
        ),
        point(
            SYS_CIRCUIT_BREAKER,
            System,
            High,
            "a circuit breaker is open (per exchange account or endpoint)",
            "every breaker's state",
            Action("half-open probe after the breaker's cool-down"),
        ),
        point(
            RES_POSITION_LIMIT,
            Resource,
            High,
            "the user holds as many positions (or as much notional) as allowed",
            "open positions against max_open_positions, notional against max_position_notional_usdt",
            Manual(
                "entries wait until a position closes; raise [risk] max_open_positions or max_position_notional_usdt to allow more",
            ),
        ),
        point(
            RES_RATE_LIMIT,
            Resource,
            High,
            "the exchange request-weight budget is spent, or the exchange banned us",
            "used weight against the budget; 429 pauses and 418 bans",
            Manual("the weight budget throttles every user of the host by itself, and a ban is waited out"),
        ),
        point(
            RES_CAPITAL,
            Resource,
            High,
            "available margin is below the minimum order",
            "available balance against the smallest order the user's strategies would place",
            Manual("add margin or reduce position sizes"),
        ),
        point(
            CFG_MISSING,
            Config,
            Critical,
            "a shipped config file is missing",
            "every shipped config file exists",
            Action("restore it from the shipped defaults (never a secret, never over an existing file)"),
        ),
        point(
            CFG_INVALID,
            Config,
            Critical,
            "a config file no longer validates",
            "the config file in use parses and validates",
            Manual(
                "the server keeps running on the config it loaded; fix the file (bulwark check-config) and reload or restart",
            ),
        ),
        point(
            DATA_CORRUPT,
            Data,
            High,
            "market data is malformed: NaN or negative prices, high below low, out-of-order candles",
            "every candle window is validated before a strategy sees it",
            Action("drop the window and re-fetch"),
        ),
        point(
            DATA_MISSING,
            Data,
            High,
            "market data is missing or stale: candle gaps, a feed behind, stale intelligence",
            "each feed's newest closed candle against the exchange clock; gaps in windows; intelligence age",
            Action("re-fetch"),
        ),
        point(
            STATE_KILL_SWITCH,
            State,
            Critical,
            "kill switches in force, and any past its blocked_until",
            "kill-switch locks in the database against the clock",
            Action("clear overdue locks"),
        ),
        point(
            STATE_POSITION_SYNC,
            State,
            Critical,
            "the exchange's position differs from the bot's",
            "each position in the database against the exchange's",
            Action("re-sync from the exchange; halt the user if it stays wrong"),
        ),
        point(
            STATE_ORPHAN_ORDERS,
            State,
            High,
            "open exchange orders with bulwark's prefix that the database does not know",
            "open orders on the exchange against the database (at every trader start, and periodically)",
            Action("cancel them"),
        ),
        point(
            STATE_UNRESOLVED_ORDERS,
            State,
            High,
            "orders whose outcome is not known yet: their symbol takes no new decision",
            "orders in pending, sending or unknown, and for how long",
            Action("look them up by client order id (the order router does, on every sync)"),
        ),
        point(
            STATE_PROBATION,
            State,
            Medium,
            "symbols on probation, and any past its until time",
            "probation locks in the database against the clock",
            Action("clear overdue probations"),
        ),
        point(
            STATE_STRATEGY_ERROR,
            State,
            Medium,
            "a strategy fails to produce a signal",
            "skipped iterations with a strategy error, per user",
            Manual("the trader skips that iteration; repeated panics restart and then quarantine it"),
        ),
    ];
}

/// The catalog entry for `id`.
pub fn entry(id: FailurePointId) -> &'static FailurePoint {
    CATALOG.iter().find(|point| point.id == id).expect("Invariant: every FailurePointId constant is in the catalog")
}

/// The catalog as text: one row per failure point, then how to read it.
pub fn render_text() -> String {
    let mut out = format!("{:<24} {:<9} {:<9} {}\n", "ID", "CATEGORY", "PRIORITY", "WHAT BLOCKS TRADING");
    for point in CATALOG {
        out.push_str(&format!(
            "{:<24} {:<9} {:<9} {}\n",
            point.id.as_str(),
            point.category.as_str(),
            point.priority.as_str(),
            point.description
        ));
        out.push_str(&format!("{:<44}check: {}\n", "", point.check));
        out.push_str(&format!("{:<44}healing: {}\n", "", point.healing.describe()));
    }
    let count = |category: Category| CATALOG.iter().filter(|p| p.category == category).count();
    let counts: Vec<String> = Category::ALL.iter().map(|c| format!("{} {}", count(*c), c.as_str())).collect();
    out.push_str(&format!("{} failure points: {}\n", CATALOG.len(), counts.join(", ")));
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn ids_are_unique_and_carry_their_category_prefix() {
        let mut seen = HashSet::new();
        for point in CATALOG {
            assert!(seen.insert(point.id), "{} twice", point.id);
            assert!(point.id.as_str().starts_with(point.category.id_prefix()), "{} is {:?}", point.id, point.category);
            assert!(!point.description.is_empty() && !point.check.is_empty());
        }
    }

    #[test]
    fn the_catalog_covers_every_category_with_at_least_thirty_points() {
        assert!(CATALOG.len() >= 30, "{}", CATALOG.len());
        for category in Category::ALL {
            assert!(CATALOG.iter().any(|p| p.category == category), "{category:?}");
        }
        for priority in [Priority::Critical, Priority::High, Priority::Medium] {
            assert!(CATALOG.iter().any(|p| p.priority == priority), "{priority:?}");
        }
    }

    #[test]
    fn every_named_constant_is_in_the_catalog_and_parses_back() {
        for id in [SIG_KILL_SWITCH, SYS_CREDENTIALS, RES_POSITION_LIMIT, STATE_UNRESOLVED_ORDERS, STATE_STRATEGY_ERROR]
        {
            assert_eq!(entry(id).id, id);
            assert_eq!(FailurePointId::parse(id.as_str()), Some(id));
        }
        assert_eq!(FailurePointId::parse("SYS-NOPE"), None);
    }

    #[test]
    fn the_text_report_lists_every_point() {
        let text = render_text();
        for point in CATALOG {
            assert!(text.contains(point.id.as_str()));
        }
        assert!(text.contains(&format!("{} failure points", CATALOG.len())));
    }
}
