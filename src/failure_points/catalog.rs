//! The failure-point catalog: every named way trading can be blocked, with its category, its
//! priority, how it is checked and how (or whether) it is healed. It is data, not behaviour: the
//! Monitor runs one check per entry, the Healer one action per healable entry, guards and blocks
//! name the entry they enforce, and `bulwark report --catalog` prints it. The rows follow the
//! table in the product brief (from the failure-point assessment seed).

use std::fmt;

use serde::{Deserialize, Serialize};

/// A failure point's id, e.g. `SYS-EXCHANGE-API`. The prefix names the category.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct FailurePointId(&'static str);

/// Read back only as a catalog id: a stored run naming an id the catalog lacks is refused.
impl<'de> Deserialize<'de> for FailurePointId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        FailurePointId::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not a failure point in the catalog")))
    }
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
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
pub const SYS_USER_STREAM: FailurePointId = FailurePointId("SYS-USER-STREAM");
pub const SYS_MARKET_STREAM: FailurePointId = FailurePointId("SYS-MARKET-STREAM");
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
            "equity (wallet + unrealized PnL) against its peak over the look-back; drawdown >= max_drawdown_pct (default 5 %) blocks entries for block_hours (default 12) of venue time (the decided candle's clock: market time on the accelerated paper exchange); equity that cannot be computed blocks (fails closed)",
            Action(
                "the lock clears itself at blocked_until; the Healer clears any lock found past it and reports how late it was",
            ),
        ),
        point(
            SIG_STRATEGY_OVERLAP,
            Signal,
            High,
            "two strategies of one user want the same symbol in the same direction",
            "another strategy of the user holds a position on the signal's symbol, or is placing an order on it",
            Manual("the later signal is blocked; change the strategies' symbols"),
        ),
        point(
            SIG_GOLDEN_HOUR,
            Signal,
            High,
            "outside the configured trading hours",
            "the venue's time of day (UTC; the close of the candle decided on) against the user's trading-hours windows",
            Manual("entries wait for the next window"),
        ),
        point(
            SIG_WHALE_CVD,
            Signal,
            Medium,
            "the net taker flow of large intervals runs against the signal",
            "over intel_window (12) intervals of intelligence, the net flow (buy - sell) of the large trades (each at least 5 x the mean trade of the interval before; from Binance's aggTrade stream, or the recorded trade tape on paper and in bulwark sim) against the signal's side, as a share of their volume (whale_cvd_share_max 0.3); where some interval's trades were not followed (CoinGlass, a candle fetched by REST) the net taker flow of the intervals whose notional is at least whale_volume_multiple (2) x the median instead; the verdict says which (measured_on); missing intelligence, or intelligence whose newest interval closed more than intel_age_ms_max (15 min) of venue time before the decided candle, allows and says so",
            Manual("the signal is blocked; the next candle is judged afresh"),
        ),
        point(
            SIG_TAKER_AGGRESSION,
            Signal,
            Medium,
            "taker buy/sell ratio runs against the signal",
            "taker buy volume / taker sell volume over taker_window (6) intervals of intelligence (the klines' own taker-buy volume: Binance's kline field 9 and stream V, the recorded trade tape on paper and in bulwark sim; CoinGlass's taker series when configured): below taker_ratio_long_min (0.8) blocks a long, above taker_ratio_short_max (1.25) a short; missing intelligence, or intelligence whose newest interval closed more than intel_age_ms_max (15 min) of venue time before the decided candle, allows and says so",
            Manual("the signal is blocked; the next candle is judged afresh"),
        ),
        point(
            SIG_LIQUIDATION_WALL,
            Signal,
            Medium,
            "an estimated liquidation cluster sits close to price against the trade",
            "an estimate from the candle window (no liquidation data): positions opened on its high-volume candles at liquidation_leverage (50x) would be liquidated at a price; a cluster of at least liquidation_wall_share (0.25) of the window's volume within liquidation_wall_distance_pct (0.5) % against the trade blocks it",
            Manual("the signal is blocked; the next candle is judged afresh"),
        ),
        point(
            SIG_TRAP,
            Signal,
            Medium,
            "a breakout on thin volume followed by a reversal wick (bull or bear trap)",
            "the last candle broke the trap_lookback (20)-candle high (long) or low (short) on volume below trap_volume_ratio_max (0.8) x the mean, and closed with a wick of at least trap_wick_share_min (0.5) of its range back against the breakout",
            Manual("the signal is blocked; the next candle is judged afresh"),
        ),
        point(
            SIG_SYMBOL_PROBATION,
            Signal,
            Medium,
            "a symbol lost too often for the user: it is on probation",
            "closed trades per user and symbol: probation_losses (3) losing trades in a row, or one trade losing probation_loss_pct (3) %, puts the symbol on probation for probation_hours (6) of venue time",
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
            "|return| x volume ratio over power_rank_candles (12), ranked across the user's symbols on the same timeframe; outside the top power_rank_top_k (5) blocks",
            Manual("the signal is blocked until the symbol ranks again"),
        ),
        point(
            SIG_FEE_AWARE,
            Signal,
            Medium,
            "the expected move is smaller than round-trip fees times k",
            "the average true range of fee_atr_candles (14), as % of price, against round-trip taker fees (2 x taker_fee_bps) x fee_multiple (2)",
            Manual("the signal is blocked"),
        ),
        point(
            SIG_REGIME,
            Signal,
            Medium,
            "the volatility regime does not suit trading",
            "the standard deviation of the last regime_candles (20) log returns below regime_volatility_min_pct (0) or above regime_volatility_max_pct (5) %",
            Manual("the signal is blocked until the regime changes"),
        ),
        point(
            SYS_EXCHANGE_API,
            System,
            Critical,
            "the exchange cannot be used: unreachable, answering with errors, its calls kept back by a breaker, or its candles failing",
            "a time probe every monitor run, through the same breakers and budget as every request: unreachable, an error answer or a breaker keeping it back is critical; its latency and how far our estimate of the exchange's clock was off (warn); the share of candle fetches that failed since the last run (half or more: critical)",
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
            SYS_USER_STREAM,
            System,
            High,
            "a user's account stream is down, silent or not re-read since it reconnected: that user's decisions read the account by REST, spending request weight",
            "each streamed account's book: verified (a snapshot read on the connection still up, heard from within 90 s) is ok; reconnected and not re-read yet is warn; down, silent or never connected is critical, naming the user and since when; venues without account streams read every account by REST (ok, said so)",
            Action("reconnect the user's stream and read a snapshot on the new connection"),
        ),
        point(
            SYS_MARKET_STREAM,
            System,
            High,
            "a market connection (the kline streams of up to 1,024 feeds) is down or silent: its feeds' candles are fetched by REST after each close, spending request weight, and reach the traders a moment later",
            "each market connection: up and heard from within 90 s is ok; a first connection under way is warn; down, reconnecting or silent is critical, naming its feeds, their users and since when; venues without market streams fetch every feed by REST (ok, said so)",
            Action(
                "reconnect the connections that are down without waiting for their backoff; a candle they missed is fetched by REST",
            ),
        ),
        point(
            SYS_NETWORK,
            System,
            Critical,
            "the network path to the exchange is down",
            "the newest probe that reached a verdict (while a breaker keeps probes back, the last one that got through): no connection (refused, name not resolved, TLS failed, timed out) is critical; an HTTP error from a live exchange is not a network failure",
            Manual("requests back off and are retried by themselves; restore the network path"),
        ),
        point(
            SYS_FILESYSTEM,
            System,
            Critical,
            "the data or log directory cannot be written, or the disk is nearly full",
            "a write probe and the free space of the data and log directories; failed writes of the monitor's files",
            Manual("free disk space or fix permissions; failed journal writes are counted"),
        ),
        point(
            SYS_PROCESS,
            System,
            Critical,
            "an actor is down, restarting, or a user is quarantined",
            "the supervision tree: shared actors restarting or escalated and quarantined users (critical), traders restarting (warn)",
            Action("re-admit a quarantined user after a cool-down"),
        ),
        point(
            SYS_DATABASE,
            System,
            Critical,
            "the database cannot be written or fails its integrity check",
            "records kept nowhere, the database refusing writes (another connection's lock, read-only or failing, its shared-memory file unwritable), records waiting in the durable outbox, entries refused for good, SQLite quick_check every 10 min",
            Action("check its integrity and replay the outbox now (it also replays by itself)"),
        ),
        point(
            SYS_INTEL_API,
            System,
            High,
            "market intelligence (CoinGlass) is unreachable or not updating",
            "a probe every monitor run refreshes the series furthest behind: a refusal, a failure or the API's breaker keeping it back is critical; the probed data 2 or more candles behind the market on the exchange's clock is critical; a series whose newest request failed is a warning",
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
            "open positions per user against max_open_positions (the notional limit is enforced on every entry by the risk gate)",
            Manual(
                "entries wait until a position closes; raise [risk] max_open_positions or max_position_notional_usdt to allow more",
            ),
        ),
        point(
            RES_RATE_LIMIT,
            Resource,
            High,
            "the exchange request-weight budget is spent, or the exchange banned us",
            "a 418 ban (critical, until it ends); the request weight used this minute at 90 % or more of the limit (warn)",
            Manual("the weight budget throttles every user of the host by itself, and a ban is waited out"),
        ),
        point(
            RES_CAPITAL,
            Resource,
            High,
            "the exchange refuses orders for insufficient margin",
            "orders the exchange refused for insufficient margin (-2019) since the last run, per user",
            Manual("add margin or reduce position sizes"),
        ),
        point(
            CFG_MISSING,
            Config,
            Critical,
            "the config file the server runs on is missing",
            "the config file the server runs on exists",
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
            "candle windows the traders refused since the last run (every window is validated before a strategy sees it), per user",
            Action("drop the window and re-fetch"),
        ),
        point(
            DATA_MISSING,
            Data,
            High,
            "market data is missing or late: a feed behind the exchange's clock",
            "each feed's newest delivered candle against the exchange's clock estimate (which keeps running while the exchange cannot be reached): half a candle overdue warns, a whole one is critical",
            Action("re-fetch"),
        ),
        point(
            STATE_KILL_SWITCH,
            State,
            Critical,
            "kill switches in force, and any past its blocked_until",
            "kill-switch locks in the database past their until time and not cleared, and how late (an hour late: critical)",
            Action("clear overdue locks"),
        ),
        point(
            STATE_POSITION_SYNC,
            State,
            Critical,
            "the exchange's position differs from the bot's",
            "settled positions whose quantity is not the net of the recorded fills, users whose entries are halted for it, and positions re-synced (critical) or fills imported (warn) in the last 10 minutes",
            Action("re-sync from the exchange; halt the user if it stays wrong"),
        ),
        point(
            STATE_ORPHAN_ORDERS,
            State,
            High,
            "open exchange orders with bulwark's prefix that the database does not know",
            "the next users' open orders on their symbols, in turn within [monitor] orphan_check_weight_per_minute (the detail states the bound for a full pass), against the database; every open order of the account at every trader start",
            Action("cancel them"),
        ),
        point(
            STATE_UNRESOLVED_ORDERS,
            State,
            High,
            "orders whose outcome is not known yet: their symbol takes no new decision",
            "orders in pending, sending or unknown, per user, and how long the oldest has been (5 minutes: warn)",
            Action("look them up by client order id (the order router does, on every sync)"),
        ),
        point(
            STATE_PROBATION,
            State,
            Medium,
            "symbols on probation, and any past its until time",
            "probation locks in the database past their until time and not cleared, and how late",
            Action("clear overdue probations"),
        ),
        point(
            STATE_STRATEGY_ERROR,
            State,
            Medium,
            "a strategy fails to produce a signal",
            "iterations skipped for a strategy error since the last run, per user (counted by their typed cause)",
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

    /// The check texts quote the `[guards]` defaults ("intel_window (12)"); a changed default
    /// must change the text an operator reads.
    #[test]
    fn the_defaults_quoted_in_check_texts_are_the_guard_defaults() {
        let defaults = crate::guards::GuardSettings::default();
        let quoted: [(&str, f64); 22] = [
            ("probation_losses", f64::from(defaults.probation_losses)),
            ("probation_loss_pct", defaults.probation_loss_pct),
            ("probation_hours", defaults.probation_hours),
            ("regime_candles", defaults.regime_candles as f64),
            ("regime_volatility_min_pct", defaults.regime_volatility_min_pct),
            ("regime_volatility_max_pct", defaults.regime_volatility_max_pct),
            ("fee_atr_candles", defaults.fee_atr_candles as f64),
            ("fee_multiple", defaults.fee_multiple),
            ("power_rank_top_k", defaults.power_rank_top_k as f64),
            ("power_rank_candles", defaults.power_rank_candles as f64),
            ("intel_window", defaults.intel_window as f64),
            ("whale_volume_multiple", defaults.whale_volume_multiple),
            ("whale_cvd_share_max", defaults.whale_cvd_share_max),
            ("taker_window", defaults.taker_window as f64),
            ("taker_ratio_long_min", defaults.taker_ratio_long_min),
            ("taker_ratio_short_max", defaults.taker_ratio_short_max),
            ("liquidation_leverage", defaults.liquidation_leverage),
            ("liquidation_wall_distance_pct", defaults.liquidation_wall_distance_pct),
            ("liquidation_wall_share", defaults.liquidation_wall_share),
            ("trap_lookback", defaults.trap_lookback as f64),
            ("trap_volume_ratio_max", defaults.trap_volume_ratio_max),
            ("trap_wick_share_min", defaults.trap_wick_share_min),
        ];
        let texts: String = CATALOG.iter().map(|point| format!("{}\n", point.check)).collect();
        for (name, value) in quoted {
            let mut found = false;
            for separator in [" (", " "] {
                for (at, _) in texts.match_indices(&format!("{name}{separator}")) {
                    let rest = &texts[at + name.len() + separator.len()..];
                    let number: String = rest.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
                    if let Ok(parsed) = number.parse::<f64>() {
                        assert_eq!(parsed, value, "the catalog quotes {name} as {number}, the default is {value}");
                        found = true;
                    }
                }
            }
            assert!(found, "no check text quotes {name}'s default");
        }
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
