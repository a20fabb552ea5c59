//! The Monitor's judgement, without actors or I/O: from one set of [`Observations`] (gathered by
//! the Monitor actor from the supervision journal, market data, the exchange client, the database,
//! the filesystem and the config files) to one status per catalog entry. Every catalog id gets a
//! result in every run; a check whose input could not be gathered, or whose guard does not exist
//! yet, is `unknown` with the reason, never `ok`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::domain::UserId;
use crate::failure_points::catalog::{self, CATALOG, Category, FailurePointId, Priority};
use crate::failure_points::locks::GuardLock;
use crate::records::PositionMismatch;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    Ok,
    Warn,
    Critical,
    Unknown,
}

impl CheckStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Ok => "ok",
            CheckStatus::Warn => "warn",
            CheckStatus::Critical => "critical",
            CheckStatus::Unknown => "unknown",
        }
    }
}

/// One catalog entry's state in one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    pub id: FailurePointId,
    pub category: Category,
    pub priority: Priority,
    pub status: CheckStatus,
    pub detail: String,
    /// The check's own measurements (shown to the operator; nothing reads them back to decide).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// Since when the condition holds (ms; written as RFC 3339 `since`), when known.
    #[serde(rename = "since", default, skip_serializing_if = "Option::is_none", with = "rfc3339_optional")]
    pub since_ms: Option<i64>,
    /// When it ends by itself (ms; written as RFC 3339 `until`), when known.
    #[serde(rename = "until", default, skip_serializing_if = "Option::is_none", with = "rfc3339_optional")]
    pub until_ms: Option<i64>,
    /// The users it blocks; empty when it is not about particular users.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<UserId>,
}

/// One Monitor run: the single codec of the JSONL line (`failure_point_monitor.jsonl`), the
/// database row (`monitor_snapshots.body`) and the HTTP answers that quote it. Written by the
/// Monitor actor; read back by `status`, `why`, `verify`, trends and the HTTP API through
/// [`RunRecord::parse`], never by picking fields out of its JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    #[serde(rename = "ts", with = "rfc3339_required")]
    pub ts_ms: i64,
    pub overall: CheckStatus,
    pub checks: Vec<CheckResult>,
}

impl RunRecord {
    pub fn new(ts_ms: i64, checks: Vec<CheckResult>) -> Self {
        Self { ts_ms, overall: overall(&checks), checks }
    }

    /// The JSON text of the record (one line: no newline inside).
    pub fn to_json(&self) -> String {
        // Every field serializes (strings, numbers, enums, and values that came from JSON).
        serde_json::to_string(self).unwrap_or_else(|error| format!("{{\"error\":\"run record: {error}\"}}"))
    }

    /// A stored or logged record; an error names what does not fit (an unknown id, a bad time).
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    pub fn check(&self, id: FailurePointId) -> Option<&CheckResult> {
        self.checks.iter().find(|check| check.id == id)
    }
}

fn parse_rfc3339_ms<E: serde::de::Error>(text: &str) -> Result<i64, E> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|time| time.timestamp_millis())
        .map_err(|error| E::custom(format!("{text:?} is not an RFC 3339 time: {error}")))
}

mod rfc3339_required {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(timestamp_ms: &i64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&crate::clock::rfc3339_ms(*timestamp_ms))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
        super::parse_rfc3339_ms(&String::deserialize(deserializer)?)
    }
}

mod rfc3339_optional {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(timestamp_ms: &Option<i64>, serializer: S) -> Result<S::Ok, S::Error> {
        match timestamp_ms {
            Some(ms) => serializer.serialize_str(&crate::clock::rfc3339_ms(*ms)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
        Option::<String>::deserialize(deserializer)?.map(|text| super::parse_rfc3339_ms(&text)).transpose()
    }
}

/// A supervised actor as the journal has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActorObservation {
    /// `trader`, `market_data`, `order_router`, `persistence`.
    pub actor: &'static str,
    pub user: Option<UserId>,
    /// `starting`, `running`, `restarting`, `quarantined`, `halted`, `escalated`, `stopped`.
    pub state: &'static str,
    pub restarts: u32,
    /// Its newest incarnation (0 before the first).
    pub incarnation: u32,
    pub since_ms: i64,
    pub reason: Option<String>,
}

/// The exchange as market data and the client see it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExchangeObservation {
    /// Klines requests and failures since the previous run.
    pub klines_requests: u64,
    pub klines_failures: u64,
    /// The newest candle-fetch error, if the last fetch of some feed failed.
    pub last_error: Option<String>,
    /// Request weight used and allowed this minute (Binance), if known.
    pub weight_used: Option<u32>,
    pub weight_limit: Option<u32>,
    pub banned_until_ms: Option<i64>,
    /// How far our estimate of the exchange's clock may be off (ms; 0 when exact or unknown).
    pub clock_error_ms: i64,
}

/// The exchange probe of one monitor run: the exchange's time, asked for through the same circuit
/// breakers and request budget as every other request. Evidence with the time it was observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeProbe {
    /// When it was asked (local time, ms).
    pub observed_at_ms: i64,
    /// How long the answer took.
    pub latency_ms: i64,
    pub outcome: ProbeOutcome,
}

/// What the exchange probe met.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// The exchange answered; how far our estimate of its clock was from its answer (requests are
    /// signed with the estimate; `None`: no estimate yet).
    Answered { estimate_off_ms: Option<i64>, estimate_error_ms: i64 },
    /// No connection, or no answer in time: the network path or the exchange is down.
    Unreachable { transport: crate::exchange::Transport, detail: String },
    /// A circuit breaker kept the probe back: evidence of the breaker, not of the exchange.
    BreakerOpen { breaker: String, until_ms: i64, detail: String },
    /// The exchange answered with an error.
    Failed { detail: String },
}

impl ExchangeProbe {
    /// Whether the probe reached a verdict about the exchange itself (not kept back by a breaker).
    pub fn reached_a_verdict(&self) -> bool {
        !matches!(self.outcome, ProbeOutcome::BreakerOpen { .. })
    }
}

/// A clock offset beyond this is reported (`warn`): requests are signed with the exchange's time,
/// and a loose estimate shows up as -1021 refusals.
pub const CLOCK_OFFSET_MS_WARN: i64 = 1_000;
/// A probe slower than this is reported (`warn`).
pub const PROBE_LATENCY_MS_WARN: i64 = 2_000;

/// One candle feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedObservation {
    pub feed: String,
    /// How long the newest closed candle has been due without arriving (ms); 0 when up to date.
    /// Half a candle late is `warn`, a whole candle `critical`.
    pub overdue_ms: i64,
    /// The feed's candle length (ms).
    pub timeframe_ms: i64,
    pub users: Vec<UserId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DatabaseObservation {
    /// Writes refused for back-pressure and journal writes that failed, since start.
    pub writes_refused: u64,
    pub journal_write_failures: u64,
    /// `PRAGMA quick_check` answered "ok" (`None`: it could not be run now).
    pub integrity_ok: Option<bool>,
    /// The durable outbox: records waiting for the database to take writes again.
    pub outbox: crate::failure_points::database::OutboxStatus,
    /// Every configured user (all of them halt entries while the outbox holds records).
    pub users: Vec<UserId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryObservation {
    pub path: String,
    pub writable: bool,
    /// Free bytes on its filesystem, if known.
    pub free_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigFileObservation {
    pub path: String,
    pub exists: bool,
    /// Every validation problem (empty: valid, or missing).
    pub problems: Vec<String>,
}

/// Orders whose outcome is not known yet, per user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnresolvedOrdersObservation {
    pub user: UserId,
    pub count: u32,
    pub oldest_age_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PositionsObservation {
    pub user: UserId,
    pub open_positions: u32,
    pub max_open_positions: u32,
}

/// One streamed account as its book stands (SYS-USER-STREAM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserStreamObservation {
    pub user: UserId,
    /// `Ok`: verified; else why its decisions read by REST now.
    pub verification: Result<(), crate::trader::account_book::Unverified>,
    /// Connections made so far (the first one included).
    pub connections: u64,
    /// When the connection up now was last heard from.
    pub last_heard_ms: Option<i64>,
    /// Connections that failed or ended early in a row.
    pub failures_in_a_row: u32,
    /// While down: no reconnect is asked for before this (the backoff), unless the Healer asks.
    pub reconnect_not_before_ms: Option<i64>,
}

/// One market connection as market data sees it (SYS-MARKET-STREAM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarketStreamObservation {
    pub connection: u64,
    /// The feeds it carries (`BTCUSDT 5m`).
    pub feeds: Vec<String>,
    /// The users of those feeds.
    pub users: Vec<UserId>,
    pub state: crate::trader::stream_link::LinkState,
    /// Up and heard from within `silence_ms_max`.
    pub live: bool,
    pub silence_ms_max: i64,
    /// Connections made so far (the first one included).
    pub connections: u64,
    pub failures_in_a_row: u32,
    /// While down: no reconnect is asked for before this (the backoff), unless the Healer asks.
    pub reconnect_not_before_ms: Option<i64>,
}

/// Market data's connections; `streamed: false` when the venue streams no candles (every feed is
/// fetched by REST after its close).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MarketStreams {
    pub streamed: bool,
    pub connections: Vec<MarketStreamObservation>,
}

/// Everything one run looks at. `None`: that input could not be gathered this time (its checks
/// are `unknown`).
#[derive(Debug, Clone, Default)]
pub struct Observations {
    pub now_ms: i64,
    pub actors: Option<Vec<ActorObservation>>,
    pub exchange: Option<ExchangeObservation>,
    /// This run's exchange probe.
    pub exchange_probe: Option<ExchangeProbe>,
    /// The newest probe that reached a verdict about the exchange (this run's, or an earlier one
    /// while a breaker keeps probes back): a held outage stays an outage until evidence says not.
    pub last_verdict_probe: Option<ExchangeProbe>,
    pub feeds: Option<Vec<FeedObservation>>,
    pub database: Option<DatabaseObservation>,
    pub directories: Option<Vec<DirectoryObservation>>,
    pub config_files: Option<Vec<ConfigFileObservation>>,
    pub unresolved_orders: Option<Vec<UnresolvedOrdersObservation>>,
    pub positions: Option<Vec<PositionsObservation>>,
    /// Skipped iterations whose reason was a strategy error, per user, since the previous run.
    pub strategy_errors: Option<BTreeMap<UserId, u64>>,
    /// Kill switches and probations not cleared yet (holding or overdue).
    pub locks: Option<Vec<GuardLock>>,
    /// Signals each guard blocked since the previous run: (failure point, user, count).
    pub guard_blocks: Option<Vec<(String, UserId, u64)>>,
    /// `[guards] enabled = false`: the signal checks cannot say anything.
    pub guards_disabled: bool,
    /// Writes to the failure-point logs (monitor lines, summary) that failed since the previous run.
    pub log_write_failures: u64,
    /// Positions the recorded fills do not add up to.
    pub position_mismatches: Option<Vec<PositionMismatch>>,
    /// Users whose entries reconciliation halted because their fills still do not explain their
    /// position, with why.
    pub position_holds: BTreeMap<UserId, String>,
    /// Recent reconciliation actions on positions: `(ts_ms, user, action, detail)` for
    /// `position_resynced` (the exchange held what the database did not know) and `fills_imported`.
    pub position_events: Vec<(i64, UserId, String, String)>,
    /// The rotating open-orders check (one user per run).
    pub orphans: Option<OrphanObservation>,
    /// The exchange's circuit breakers (`None`: it has none).
    pub breakers: Option<Vec<crate::exchange::guarded::BreakerStatus>>,
    /// Every streamed account (empty: the venue streams no account, or no user synced yet).
    pub user_streams: Option<Vec<UserStreamObservation>>,
    /// Market data's connections (`None`: market data could not be asked).
    pub market_streams: Option<MarketStreams>,
    /// Iterations skipped for bad candles, per user, since the previous run.
    pub bad_candles: Option<BTreeMap<UserId, u64>>,
    /// Orders refused for insufficient margin, per user, since the previous run.
    pub margin_rejections: Option<BTreeMap<UserId, u64>>,
    /// Every intelligence series (source, series); `None` when the actor could not be asked.
    pub intelligence: Option<IntelObservation>,
}

/// What the rotating orphan check has seen: per user, when it was last checked and the
/// `bw-` orders open on the exchange that the database does not know (or has as final).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OrphanObservation {
    pub users_total: usize,
    pub checked: BTreeMap<UserId, (i64, Vec<String>)>,
    /// The newest check that could not run, with the user.
    pub last_error: Option<String>,
    /// How long one pass over every user takes at the weight budget ([`orphan_coverage_ms`]).
    pub coverage_ms: i64,
    /// `[monitor] orphan_check_weight_per_minute`.
    pub weight_per_minute: u32,
}

/// The request weight one monitor run may spend on the orphan check: its interval's share of the
/// per-minute budget.
pub fn orphan_weight_per_run(weight_per_minute: u32, interval_ms: i64) -> u64 {
    (u64::from(weight_per_minute) * interval_ms.max(1) as u64 / 60_000).max(1)
}

/// The users a run checks for orphans: from `cursor` on, in turn (wrapping), as many as `budget`
/// pays for (`costs`: each user's weight, one per symbol), at least one and each at most once.
/// Returns their indexes and the cursor for the next run.
pub fn orphan_batch(costs: &[(UserId, usize)], cursor: usize, budget: u64) -> (Vec<usize>, usize) {
    if costs.is_empty() {
        return (Vec::new(), 0);
    }
    let mut chosen = Vec::new();
    let mut spent = 0_u64;
    for step in 0..costs.len() {
        let index = (cursor + step) % costs.len();
        let cost = costs[index].1 as u64;
        if !chosen.is_empty() && spent + cost > budget {
            break;
        }
        spent += cost;
        chosen.push(index);
    }
    let next = (cursor + chosen.len()) % costs.len();
    (chosen, next)
}

/// How long a pass over every user takes (the bound an operator can count on): the runs needed at
/// `budget` weight each, times the interval.
pub fn orphan_coverage_ms(costs: &[(UserId, usize)], budget: u64, interval_ms: i64) -> i64 {
    let mut runs = 0_i64;
    let mut cursor = 0;
    let mut covered = 0;
    while covered < costs.len() {
        let (chosen, next) = orphan_batch(costs, cursor, budget);
        covered += chosen.len();
        cursor = next;
        runs += 1;
    }
    runs * interval_ms
}

/// The intelligence series as the Intelligence actor has them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntelObservation {
    /// `coinglass` or `derived`.
    pub source: String,
    pub series: Vec<IntelSeriesObservation>,
    /// This run's probe: the series refreshed (`Ok(None)`: none in use yet), or why it could not
    /// be (`Err`: the API refused or failed, or its breaker kept the probe back).
    pub probe: Result<Option<String>, String>,
}

/// Intelligence this many candles behind the market is stale.
pub const INTEL_CANDLES_BEHIND_STALE: i64 = 2;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntelSeriesObservation {
    pub series: String,
    pub age_ms: Option<i64>,
    pub last_error: Option<String>,
    /// How many candles of its timeframe the series' newest data is behind the market, on the
    /// exchange's clock (`None`: no data yet, or the exchange's time unknown).
    pub candles_behind: Option<i64>,
}

/// Below this much free space the filesystem check warns; below a tenth of it, critical.
pub const FREE_BYTES_WARN: u64 = 1 << 30;
/// An unresolved order older than this is reported (the router resolves them within a few syncs).
pub const UNRESOLVED_ORDER_AGE_MS_WARN: i64 = 5 * 60_000;
/// An exchange clock estimate less certain than this is mentioned in SYS-EXCHANGE-API's detail.
pub const CLOCK_ERROR_MS_NOTE: i64 = 1_000;
/// A share of failed candle fetches at or above this is critical.
pub const KLINES_FAILURE_SHARE_CRITICAL: f64 = 0.5;

/// One run: a result for every catalog entry, in catalog order.
pub fn evaluate(observations: &Observations) -> Vec<CheckResult> {
    CATALOG.iter().map(|point| check(point.id, observations)).collect()
}

/// The worst status among the results (`unknown` counts only when nothing is worse than `ok`).
pub fn overall(results: &[CheckResult]) -> CheckStatus {
    let has = |status| results.iter().any(|r| r.status == status);
    if has(CheckStatus::Critical) {
        CheckStatus::Critical
    } else if has(CheckStatus::Warn) {
        CheckStatus::Warn
    } else if has(CheckStatus::Unknown) {
        CheckStatus::Unknown
    } else {
        CheckStatus::Ok
    }
}

struct Outcome {
    status: CheckStatus,
    detail: String,
    value: Option<Value>,
    since_ms: Option<i64>,
    until_ms: Option<i64>,
    users: Vec<UserId>,
}

impl Outcome {
    fn new(status: CheckStatus, detail: impl Into<String>) -> Self {
        Self { status, detail: detail.into(), value: None, since_ms: None, until_ms: None, users: Vec::new() }
    }

    fn ok(detail: impl Into<String>) -> Self {
        Self::new(CheckStatus::Ok, detail)
    }

    fn unknown(detail: impl Into<String>) -> Self {
        Self::new(CheckStatus::Unknown, detail)
    }

    fn value(mut self, value: Value) -> Self {
        self.value = Some(value);
        self
    }

    fn users(mut self, users: Vec<UserId>) -> Self {
        self.users = users;
        self
    }
}

/// An overdue lock (past its expiry, not cleared) older than this is critical: the Healer should
/// have cleared it within one of its intervals.
pub const LOCK_OVERDUE_MS_CRITICAL: i64 = 15 * 60_000;

fn check(id: FailurePointId, observations: &Observations) -> CheckResult {
    use catalog::*;
    let outcome = match id {
        SYS_PROCESS => process(observations),
        SYS_CREDENTIALS => credentials(observations),
        SYS_EXCHANGE_API => exchange_api(observations),
        SYS_NETWORK => network(observations),
        SYS_FILESYSTEM => filesystem(observations),
        SYS_DATABASE => database(observations),
        RES_RATE_LIMIT => rate_limit(observations),
        RES_POSITION_LIMIT => position_limit(observations),
        CFG_MISSING => config_missing(observations),
        CFG_INVALID => config_invalid(observations),
        DATA_MISSING => data_missing(observations),
        STATE_UNRESOLVED_ORDERS => unresolved_orders(observations),
        STATE_STRATEGY_ERROR => strategy_errors(observations),
        SYS_INTEL_API => intelligence(observations),
        SYS_CIRCUIT_BREAKER => breakers(observations),
        SYS_USER_STREAM => user_streams(observations),
        SYS_MARKET_STREAM => market_streams(observations),
        RES_CAPITAL => capital(observations),
        DATA_CORRUPT => bad_candles(observations),
        STATE_POSITION_SYNC => position_sync(observations),
        STATE_ORPHAN_ORDERS => orphans(observations),
        SIG_KILL_SWITCH => kill_switch(observations),
        SIG_SYMBOL_PROBATION => holding_locks(observations, SIG_SYMBOL_PROBATION, CheckStatus::Warn),
        STATE_KILL_SWITCH => overdue_locks(observations, SIG_KILL_SWITCH),
        STATE_PROBATION => overdue_locks(observations, SIG_SYMBOL_PROBATION),
        signal => guard_blocks(observations, signal),
    };
    let point = entry(id);
    CheckResult {
        id,
        category: point.category,
        priority: point.priority,
        status: outcome.status,
        detail: outcome.detail,
        value: outcome.value,
        since_ms: outcome.since_ms,
        until_ms: outcome.until_ms,
        users: outcome.users,
    }
}

fn traders<'a>(observations: &'a Observations, state: &str) -> Vec<&'a ActorObservation> {
    observations.actors.iter().flatten().filter(|actor| actor.actor == "trader" && actor.state == state).collect()
}

fn process(observations: &Observations) -> Outcome {
    let Some(actors) = &observations.actors else { return Outcome::unknown("the supervision tree could not be read") };
    let shared_down: Vec<&ActorObservation> = actors
        .iter()
        .filter(|a| a.actor != "trader" && matches!(a.state, "restarting" | "escalated" | "quarantined"))
        .collect();
    let quarantined = traders(observations, "quarantined");
    let restarting = traders(observations, "restarting");
    let describe = |list: &[&ActorObservation]| -> String {
        list.iter()
            .map(|a| {
                let who = a.user.as_ref().map_or(a.actor.to_owned(), |u| format!("{} {u}", a.actor));
                format!("{who} {}{}", a.state, a.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default())
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    let value = json!({
        "actors": actors.len(),
        "restarts": actors.iter().map(|a| a.restarts).sum::<u32>(),
        "quarantined": quarantined.len(),
    });
    let mut outcome = if !shared_down.is_empty() {
        // Quarantined users are named too (the Healer re-admits the users a check names), whatever
        // else is down.
        let mut down = shared_down.clone();
        down.extend(quarantined.iter().copied());
        Outcome::new(CheckStatus::Critical, describe(&down))
            .users(quarantined.iter().filter_map(|a| a.user.clone()).collect())
    } else if !quarantined.is_empty() {
        let mut outcome = Outcome::new(CheckStatus::Critical, describe(&quarantined));
        outcome.since_ms = quarantined.iter().map(|a| a.since_ms).min();
        outcome.users = quarantined.iter().filter_map(|a| a.user.clone()).collect();
        outcome
    } else if !restarting.is_empty() {
        Outcome::new(CheckStatus::Warn, describe(&restarting))
            .users(restarting.iter().filter_map(|a| a.user.clone()).collect())
    } else {
        Outcome::ok(format!("{} actors up", actors.len()))
    };
    outcome.value = Some(value);
    outcome
}

fn credentials(observations: &Observations) -> Outcome {
    if observations.actors.is_none() {
        return Outcome::unknown("the supervision tree could not be read");
    }
    let halted = traders(observations, "halted");
    if halted.is_empty() {
        return Outcome::ok("no user halted for its credentials");
    }
    let detail = halted
        .iter()
        .map(|a| {
            format!("{}: {}", a.user.as_ref().map(UserId::as_str).unwrap_or("?"), a.reason.as_deref().unwrap_or(""))
        })
        .collect::<Vec<_>>()
        .join("; ");
    let mut outcome =
        Outcome::new(CheckStatus::Critical, detail).users(halted.iter().filter_map(|a| a.user.clone()).collect());
    outcome.since_ms = halted.iter().map(|a| a.since_ms).min();
    outcome
}

/// SYS-USER-STREAM: every streamed account's book. Down, silent or never connected is critical
/// (the user's decisions read by REST, and a stream that stays down is not coming back by itself);
/// reconnected without a snapshot yet is warn (the next sync reads one).
fn user_streams(observations: &Observations) -> Outcome {
    use crate::trader::account_book::Unverified;
    let Some(streams) = &observations.user_streams else {
        return Outcome::unknown("the account books could not be read");
    };
    if streams.is_empty() {
        return Outcome::ok(
            "no account is streamed (a venue without account streams, or no user synced yet): every account sync reads by REST",
        );
    }
    let reconnects: u64 = streams.iter().map(|s| s.connections.saturating_sub(1)).sum();
    let value = json!({ "streams": streams.len(), "reconnects": reconnects });
    let failing: Vec<(&UserStreamObservation, Unverified)> =
        streams.iter().filter_map(|s| s.verification.err().map(|why| (s, why))).collect();
    if failing.is_empty() {
        let quietest_ms =
            streams.iter().filter_map(|s| s.last_heard_ms).map(|heard| observations.now_ms - heard).max().unwrap_or(0);
        return Outcome::ok(format!(
            "{} account stream(s) verified; the quietest heard from {} s ago; {reconnects} reconnect(s) since start",
            streams.len(),
            quietest_ms / 1_000
        ))
        .value(value);
    }
    // A connection under way, or up and not re-read yet, is on its way back (warn); anything else
    // is down (critical).
    let critical = failing
        .iter()
        .any(|(_, why)| !matches!(why, Unverified::NoSnapshotOnThisConnection { .. } | Unverified::Connecting { .. }));
    let detail = failing
        .iter()
        .map(|(stream, why)| {
            let backoff = match stream.reconnect_not_before_ms {
                Some(not_before_ms) if stream.failures_in_a_row > 0 => format!(
                    "; {} connection(s) failed or dropped early in a row, the next attempt at {}",
                    stream.failures_in_a_row,
                    crate::clock::rfc3339_ms(not_before_ms)
                ),
                _ => String::new(),
            };
            format!("{}: {why} (its decisions read the account by REST){backoff}", stream.user)
        })
        .collect::<Vec<_>>()
        .join("; ");
    let since_ms = failing
        .iter()
        .filter_map(|(_, why)| match why {
            Unverified::Disconnected { since_ms } => Some(*since_ms),
            Unverified::NoSnapshotOnThisConnection { connected_since_ms } => Some(*connected_since_ms),
            Unverified::Connecting { since_ms } => Some(*since_ms),
            Unverified::Silent { last_heard_ms, .. } => Some(*last_heard_ms),
            Unverified::NeverConnected => None,
        })
        .min();
    let status = if critical { CheckStatus::Critical } else { CheckStatus::Warn };
    let mut outcome =
        Outcome::new(status, detail).users(failing.iter().map(|(s, _)| s.user.clone()).collect()).value(value);
    outcome.since_ms = since_ms;
    outcome
}

/// SYS-MARKET-STREAM: every market connection. Down or silent is critical (its feeds' candles are
/// fetched by REST after each close meanwhile, spending request weight, and come a moment later);
/// a first connection under way is warn.
fn market_streams(observations: &Observations) -> Outcome {
    use crate::trader::stream_link::LinkState;
    let Some(streams) = &observations.market_streams else {
        return Outcome::unknown("market data could not be asked");
    };
    if !streams.streamed {
        return Outcome::ok("the venue streams no candles: each feed is fetched by REST after its close");
    }
    if streams.connections.is_empty() {
        return Outcome::ok("no feed in use, so no market connection");
    }
    let feeds: usize = streams.connections.iter().map(|c| c.feeds.len()).sum();
    let reconnects: u64 = streams.connections.iter().map(|c| c.connections.saturating_sub(1)).sum();
    let value = json!({ "connections": streams.connections.len(), "feeds": feeds, "reconnects": reconnects });
    let failing: Vec<&MarketStreamObservation> = streams.connections.iter().filter(|c| !c.live).collect();
    if failing.is_empty() {
        let quietest_ms = streams
            .connections
            .iter()
            .filter_map(|c| match c.state {
                LinkState::Up { last_heard_ms, .. } => Some(observations.now_ms - last_heard_ms),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        return Outcome::ok(format!(
            "{} market connection(s) carry {feeds} feed(s); the quietest heard from {} s ago; {reconnects} reconnect(s) since start",
            streams.connections.len(),
            quietest_ms / 1_000
        ))
        .value(value);
    }
    let at = crate::clock::rfc3339_ms;
    let mut critical = false;
    let mut since_ms: Option<i64> = None;
    let mut details = Vec::new();
    for connection in &failing {
        let (why, since) = match connection.state {
            LinkState::Never => ("never connected".to_owned(), None),
            LinkState::Connecting { since_ms } if connection.connections == 0 => {
                (format!("connecting since {} (nothing heard yet)", at(since_ms)), Some(since_ms))
            }
            LinkState::Connecting { since_ms } => {
                critical = true;
                (format!("reconnecting since {}", at(since_ms)), Some(since_ms))
            }
            LinkState::Down { since_ms } => {
                critical = true;
                (format!("down since {}", at(since_ms)), Some(since_ms))
            }
            LinkState::Up { last_heard_ms, .. } => {
                critical = true;
                (
                    format!(
                        "last heard from at {} (silent for longer than {} ms: treated as down)",
                        at(last_heard_ms),
                        connection.silence_ms_max
                    ),
                    Some(last_heard_ms),
                )
            }
        };
        since_ms = match (since_ms, since) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let backoff = match connection.reconnect_not_before_ms {
            Some(not_before_ms) if connection.failures_in_a_row > 0 => format!(
                "; {} connection(s) failed or dropped early in a row, the next attempt at {}",
                connection.failures_in_a_row,
                at(not_before_ms)
            ),
            _ => String::new(),
        };
        details.push(format!(
            "market connection {} ({} feed(s): {}) {why}: its candles are fetched by REST after each close meanwhile{backoff}",
            connection.connection,
            connection.feeds.len(),
            excerpt_list(&connection.feeds)
        ));
    }
    let mut users: Vec<UserId> = failing.iter().flat_map(|c| c.users.iter().cloned()).collect();
    users.sort();
    users.dedup();
    let status = if critical { CheckStatus::Critical } else { CheckStatus::Warn };
    let mut outcome = Outcome::new(status, details.join("; ")).users(users).value(value);
    outcome.since_ms = since_ms;
    outcome
}

/// The first few names of a list, and how many more there are.
fn excerpt_list(names: &[String]) -> String {
    const SHOWN: usize = 5;
    let shown = names.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    match names.len().saturating_sub(SHOWN) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

fn feed_users(observations: &Observations) -> Vec<UserId> {
    let mut users: Vec<UserId> = observations.feeds.iter().flatten().flat_map(|f| f.users.iter().cloned()).collect();
    users.sort();
    users.dedup();
    users
}

/// SYS-EXCHANGE-API: the run's probe first (no answer, an error, or a breaker keeping every call
/// back is critical whatever else is known), then the candle fetches since the last run.
fn exchange_api(observations: &Observations) -> Outcome {
    let Some(probe) = &observations.exchange_probe else {
        return Outcome::unknown("the exchange was not probed this run");
    };
    let probe_value = json!({ "probe_latency_ms": probe.latency_ms, "probed_at_ms": probe.observed_at_ms });
    match &probe.outcome {
        ProbeOutcome::BreakerOpen { breaker, until_ms, detail } => {
            let mut outcome = Outcome::new(
                CheckStatus::Critical,
                format!(
                    "exchange calls are refused by the open circuit breaker {breaker} until {}: no candle, sync or order reaches the exchange ({detail})",
                    crate::clock::rfc3339_ms(*until_ms)
                ),
            )
            .value(probe_value)
            .users(feed_users(observations));
            outcome.until_ms = Some(*until_ms);
            return outcome;
        }
        ProbeOutcome::Unreachable { transport, detail } => {
            return Outcome::new(
                CheckStatus::Critical,
                format!("the exchange cannot be reached ({}): {detail}", transport.as_str()),
            )
            .value(probe_value)
            .users(feed_users(observations));
        }
        ProbeOutcome::Failed { detail } => {
            return Outcome::new(
                CheckStatus::Critical,
                format!("the exchange answers the probe with an error: {detail}"),
            )
            .value(probe_value)
            .users(feed_users(observations));
        }
        ProbeOutcome::Answered { .. } => {}
    }
    let Some(exchange) = &observations.exchange else {
        return Outcome::unknown("the exchange answered the probe, but market data's fetches could not be read");
    };
    let value = json!({
        "klines_requests": exchange.klines_requests,
        "klines_failures": exchange.klines_failures,
        "clock_error_ms": exchange.clock_error_ms,
        "probe_latency_ms": probe.latency_ms,
        "estimate_off_ms": match probe.outcome { ProbeOutcome::Answered { estimate_off_ms, .. } => estimate_off_ms, _ => None },
    });
    let mut notes = vec![format!("the exchange answered the probe in {} ms", probe.latency_ms)];
    let mut status = CheckStatus::Ok;
    // Off by more than the estimate's own error bound (and a second): signatures may be refused.
    if let ProbeOutcome::Answered { estimate_off_ms: Some(off), estimate_error_ms } = probe.outcome
        && off.abs() > CLOCK_OFFSET_MS_WARN.max(2 * estimate_error_ms)
    {
        let tolerated_ms = CLOCK_OFFSET_MS_WARN.max(2 * estimate_error_ms);
        notes.push(format!(
            "our estimate of its clock was {off} ms off (requests are signed with it; tolerated {tolerated_ms} ms)"
        ));
        status = CheckStatus::Warn;
    }
    if probe.latency_ms >= PROBE_LATENCY_MS_WARN {
        status = CheckStatus::Warn;
    }
    if exchange.clock_error_ms >= CLOCK_ERROR_MS_NOTE {
        notes.push(format!("the exchange clock is known to ±{} ms", exchange.clock_error_ms));
    }
    if exchange.klines_requests > 0 {
        let share = exchange.klines_failures as f64 / exchange.klines_requests as f64;
        notes.push(format!(
            "{} of {} candle fetches failed since the last check{}",
            exchange.klines_failures,
            exchange.klines_requests,
            exchange.last_error.as_deref().map(|e| format!("; last: {e}")).unwrap_or_default()
        ));
        if share >= KLINES_FAILURE_SHARE_CRITICAL {
            return Outcome::new(CheckStatus::Critical, notes.join("; ")).value(value).users(feed_users(observations));
        }
        if exchange.klines_failures > 0 {
            status = CheckStatus::Warn;
        }
    } else {
        notes.push("no candle fetch due since the last check".to_owned());
    }
    Outcome::new(status, notes.join("; ")).value(value)
}

/// SYS-NETWORK: whether the exchange can be reached at all, told apart from an HTTP error of a
/// live exchange (which is SYS-EXCHANGE-API's). Judged on the newest probe that reached a verdict:
/// while a breaker keeps probes back, the outage it last saw still holds.
fn network(observations: &Observations) -> Outcome {
    let Some(probe) = observations.last_verdict_probe.as_ref() else {
        return Outcome::unknown(match &observations.exchange_probe {
            Some(_) => "no probe has reached the exchange yet (a circuit breaker keeps them back)",
            None => "the exchange was not probed this run",
        });
    };
    let held = observations
        .exchange_probe
        .as_ref()
        .filter(|current| !current.reached_a_verdict())
        .map(|_| format!(" (the newest probe that got through, at {})", crate::clock::rfc3339_ms(probe.observed_at_ms)))
        .unwrap_or_default();
    match &probe.outcome {
        ProbeOutcome::Unreachable { transport, detail } => Outcome::new(
            CheckStatus::Critical,
            format!("the exchange cannot be reached: {}{held}: {detail}", transport.as_str()),
        )
        .users(feed_users(observations))
        .value(json!({ "transport": transport, "observed_at_ms": probe.observed_at_ms })),
        ProbeOutcome::Answered { .. } => Outcome::ok(format!("the exchange answers ({} ms){held}", probe.latency_ms)),
        ProbeOutcome::Failed { detail } => {
            Outcome::ok(format!("the network path works: the exchange answers, with an error{held}: {detail}"))
        }
        ProbeOutcome::BreakerOpen { .. } => Outcome::unknown("no probe has reached the exchange"),
    }
}

fn filesystem(observations: &Observations) -> Outcome {
    let Some(directories) = &observations.directories else {
        return Outcome::unknown("directories could not be inspected");
    };
    let mut problems = Vec::new();
    let mut status = CheckStatus::Ok;
    for directory in directories {
        if !directory.writable {
            problems.push(format!("{} is not writable", directory.path));
            status = CheckStatus::Critical;
        }
        match directory.free_bytes {
            Some(free) if free < FREE_BYTES_WARN / 10 => {
                problems.push(format!("{}: {} MiB free", directory.path, free >> 20));
                status = CheckStatus::Critical;
            }
            Some(free) if free < FREE_BYTES_WARN => {
                problems.push(format!("{}: {} MiB free", directory.path, free >> 20));
                status = status.max(CheckStatus::Warn);
            }
            _ => {}
        }
    }
    let free: Vec<Value> = directories
        .iter()
        .map(|d| json!({ "path": d.path, "writable": d.writable, "free_bytes": d.free_bytes }))
        .collect();
    if observations.log_write_failures > 0 {
        problems.push(format!(
            "{} write(s) to the failure-point logs failed since the last check",
            observations.log_write_failures
        ));
        status = CheckStatus::Critical;
    }
    let detail = if problems.is_empty() { "data and log directories writable".to_owned() } else { problems.join("; ") };
    Outcome::new(status, detail).value(Value::Array(free))
}

fn database(observations: &Observations) -> Outcome {
    let Some(database) = &observations.database else { return Outcome::unknown("the database could not be queried") };
    let outbox = &database.outbox;
    let value = json!({
        "writes_refused": database.writes_refused,
        "journal_write_failures": database.journal_write_failures,
        "integrity_ok": database.integrity_ok,
        "outbox_depth": outbox.depth,
        "outbox_capacity": outbox.capacity,
        "outbox_replayed_total": outbox.replayed_total,
        "outbox_rejected_total": outbox.rejected_total,
        "refusal": outbox.refusal.as_ref().map(|r| r.kind.as_str()),
        "records_lost_total": outbox.records_lost_total,
    });
    let waiting = || {
        let full = if outbox.is_full() { " (full: new records are refused)" } else { "" };
        format!("{} of {} record(s) wait in the durable outbox{full}", outbox.depth, outbox.capacity)
    };
    if let Some(why) = &outbox.records_unkept {
        let detail = format!(
            "records are being lost ({} since start): {why}; no order is placed until records can be kept again",
            outbox.records_lost_total
        );
        return Outcome::new(CheckStatus::Critical, detail).value(value).users(database.users.clone());
    }
    if let Some(refusal) = &outbox.refusal {
        let detail = format!(
            "the database refuses writes since {} ({}: {}); {}; every user's entries are halted until they are replayed",
            crate::clock::rfc3339_ms(refusal.since_ms),
            refusal.kind.as_str(),
            refusal.detail,
            waiting()
        );
        let mut outcome = Outcome::new(CheckStatus::Critical, detail).value(value).users(database.users.clone());
        outcome.since_ms = Some(refusal.since_ms);
        return outcome;
    }
    if database.integrity_ok == Some(false) {
        Outcome::new(CheckStatus::Critical, "the integrity check failed").value(value)
    } else if outbox.depth > 0 {
        let why = outbox.last_error.as_deref().map(|e| format!(": {e}")).unwrap_or_default();
        Outcome::new(
            CheckStatus::Critical,
            format!(
                "the database refuses writes{why}; {}; every user's entries are halted until they are replayed",
                waiting()
            ),
        )
        .value(value)
        .users(database.users.clone())
    } else if database.integrity_ok.is_none() {
        Outcome::unknown("the database could not be queried (its integrity was not checked)").value(value)
    } else if outbox.rejected_total > 0 {
        Outcome::new(
            CheckStatus::Warn,
            format!(
                "{} outbox record(s) the database refused for good are kept in the outbox's .rejected file for the operator",
                outbox.rejected_total
            ),
        )
        .value(value)
    } else if database.writes_refused > 0 || database.journal_write_failures > 0 {
        Outcome::new(
            CheckStatus::Warn,
            format!(
                "{} write(s) refused under back-pressure, {} journal write failure(s) since start",
                database.writes_refused, database.journal_write_failures
            ),
        )
        .value(value)
    } else {
        Outcome::ok("writes succeed; integrity check ok").value(value)
    }
}

fn rate_limit(observations: &Observations) -> Outcome {
    let Some(exchange) = &observations.exchange else {
        return Outcome::unknown("exchange statistics could not be read");
    };
    let value = json!({ "weight_used": exchange.weight_used, "weight_limit": exchange.weight_limit });
    if let Some(until_ms) = exchange.banned_until_ms.filter(|until| *until > observations.now_ms) {
        let mut outcome =
            Outcome::new(CheckStatus::Critical, "banned by the exchange (418): no request is sent until the ban ends")
                .value(value)
                .users(feed_users(observations));
        outcome.until_ms = Some(until_ms);
        return outcome;
    }
    match (exchange.weight_used, exchange.weight_limit) {
        (Some(used), Some(limit)) if u64::from(used) * 10 >= u64::from(limit) * 9 => {
            Outcome::new(CheckStatus::Warn, format!("{used} of {limit} request weight used this minute")).value(value)
        }
        (Some(used), Some(limit)) => {
            Outcome::ok(format!("{used} of {limit} request weight used this minute")).value(value)
        }
        _ => Outcome::ok("the exchange has no request-weight limit (paper)").value(value),
    }
}

fn position_limit(observations: &Observations) -> Outcome {
    let Some(positions) = &observations.positions else { return Outcome::unknown("positions could not be read") };
    let full: Vec<&PositionsObservation> =
        positions.iter().filter(|p| p.open_positions >= p.max_open_positions).collect();
    if full.is_empty() {
        return Outcome::ok("every user can open another position");
    }
    let detail = full
        .iter()
        .map(|p| {
            format!(
                "{} holds {} of {} positions: new entries on other symbols are blocked",
                p.user, p.open_positions, p.max_open_positions
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    Outcome::new(CheckStatus::Warn, detail).users(full.iter().map(|p| p.user.clone()).collect())
}

fn config_missing(observations: &Observations) -> Outcome {
    let Some(files) = &observations.config_files else {
        return Outcome::unknown("config files could not be inspected");
    };
    let missing: Vec<&str> = files.iter().filter(|f| !f.exists).map(|f| f.path.as_str()).collect();
    if missing.is_empty() {
        Outcome::ok(format!("{} config file(s) present", files.len()))
    } else {
        Outcome::new(CheckStatus::Critical, format!("missing: {}", missing.join(", ")))
    }
}

fn config_invalid(observations: &Observations) -> Outcome {
    let Some(files) = &observations.config_files else {
        return Outcome::unknown("config files could not be inspected");
    };
    let invalid: Vec<String> = files
        .iter()
        .filter(|f| f.exists && !f.problems.is_empty())
        .map(|f| format!("{}: {}", f.path, f.problems.join("; ")))
        .collect();
    if invalid.is_empty() {
        Outcome::ok("every config file validates")
    } else {
        Outcome::new(CheckStatus::Critical, format!("running on the last good config; {}", invalid.join(" | ")))
    }
}

fn data_missing(observations: &Observations) -> Outcome {
    let Some(feeds) = &observations.feeds else { return Outcome::unknown("market data could not be asked") };
    // A candle is fetched on the first poll after it is due; only half a candle late counts.
    let late: Vec<&FeedObservation> = feeds.iter().filter(|f| f.overdue_ms * 2 >= f.timeframe_ms).collect();
    if late.is_empty() {
        return Outcome::ok(format!(
            "{} feed(s) up to date on the exchange's clock (which runs on while the exchange cannot be reached)",
            feeds.len()
        ));
    }
    let detail = late
        .iter()
        .map(|f| {
            let candles = f.overdue_ms as f64 / f.timeframe_ms.max(1) as f64;
            format!("{} {candles:.1} candle(s) overdue ({} s)", f.feed, f.overdue_ms / 1_000)
        })
        .collect::<Vec<_>>()
        .join("; ");
    let status =
        if late.iter().any(|f| f.overdue_ms >= f.timeframe_ms) { CheckStatus::Critical } else { CheckStatus::Warn };
    let mut users: Vec<UserId> = late.iter().flat_map(|f| f.users.iter().cloned()).collect();
    users.sort();
    users.dedup();
    Outcome::new(status, detail).users(users)
}

fn unresolved_orders(observations: &Observations) -> Outcome {
    let Some(orders) = &observations.unresolved_orders else { return Outcome::unknown("orders could not be read") };
    let count: u32 = orders.iter().map(|o| o.count).sum();
    if count == 0 {
        return Outcome::ok("every order's outcome is known");
    }
    let old: Vec<&UnresolvedOrdersObservation> =
        orders.iter().filter(|o| o.oldest_age_ms >= UNRESOLVED_ORDER_AGE_MS_WARN).collect();
    let detail = orders
        .iter()
        .map(|o| format!("{}: {} unresolved, oldest {} s", o.user, o.count, o.oldest_age_ms / 1_000))
        .collect::<Vec<_>>()
        .join("; ");
    let status = if old.is_empty() { CheckStatus::Ok } else { CheckStatus::Warn };
    Outcome::new(status, detail)
        .value(json!({ "unresolved": count }))
        .users(old.iter().map(|o| o.user.clone()).collect())
}

fn strategy_errors(observations: &Observations) -> Outcome {
    let Some(errors) = &observations.strategy_errors else { return Outcome::unknown("decisions could not be read") };
    let failing: Vec<(&UserId, &u64)> = errors.iter().filter(|(_, n)| **n > 0).collect();
    if failing.is_empty() {
        return Outcome::ok("no strategy error since the last check");
    }
    let detail = failing
        .iter()
        .map(|(user, n)| format!("{user}: {n} iteration(s) skipped for a strategy error"))
        .collect::<Vec<_>>();
    Outcome::new(CheckStatus::Warn, detail.join("; ")).users(failing.iter().map(|(u, _)| (*u).clone()).collect())
}

fn breakers(observations: &Observations) -> Outcome {
    use crate::exchange::breaker::BreakerState;
    let Some(breakers) = &observations.breakers else {
        return Outcome::unknown("this exchange has no circuit breakers (in-process tests only)");
    };
    let not_closed: Vec<&crate::exchange::guarded::BreakerStatus> =
        breakers.iter().filter(|b| b.state != BreakerState::Closed).collect();
    let value = json!({ "breakers": breakers.len(), "open": not_closed.len() });
    if not_closed.is_empty() {
        return Outcome::ok(format!("{} breaker(s) closed", breakers.len())).value(value);
    }
    let detail = not_closed
        .iter()
        .map(|b| {
            format!(
                "{} {}{}{}",
                b.name,
                b.state.as_str(),
                b.until_ms.map(|u| format!(" until {}", crate::clock::rfc3339_ms(u))).unwrap_or_default(),
                b.last_failure.as_deref().map(|f| format!(" ({f})")).unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let host_open = not_closed.iter().any(|b| b.user.is_none());
    // The host's breaker stops every user: the users on the feeds are the ones blocked.
    let mut users: Vec<UserId> = not_closed.iter().filter_map(|b| b.user.clone()).collect();
    if host_open {
        users.extend(feed_users(observations));
    }
    users.sort();
    users.dedup();
    let mut outcome = Outcome::new(CheckStatus::Critical, detail).value(value).users(users);
    outcome.since_ms = not_closed.iter().filter_map(|b| b.since_ms).min();
    outcome.until_ms = not_closed.iter().filter_map(|b| b.until_ms).max();
    outcome
}

fn position_sync(observations: &Observations) -> Outcome {
    let Some(mismatches) = &observations.position_mismatches else {
        return Outcome::unknown("positions and fills could not be read");
    };
    let holds = &observations.position_holds;
    let events = &observations.position_events;
    if mismatches.is_empty() && holds.is_empty() {
        if events.is_empty() {
            return Outcome::ok("every settled position equals the net of its recorded fills");
        }
        // Explained now, but reconciliation had to act: say what, for a while.
        let resynced = events.iter().any(|(_, _, action, _)| action == "position_resynced");
        let detail = events
            .iter()
            .map(|(ts_ms, user, action, detail)| {
                format!("{user} {action} at {}: {detail}", crate::clock::rfc3339_ms(*ts_ms))
            })
            .collect::<Vec<_>>()
            .join("; ");
        let mut users: Vec<UserId> = events.iter().map(|(_, user, _, _)| user.clone()).collect();
        users.sort();
        users.dedup();
        let (status, lead) = if resynced {
            (CheckStatus::Critical, "the exchange held positions the database did not know (re-synced from it)")
        } else {
            (CheckStatus::Warn, "fills the database lacked were imported")
        };
        return Outcome::new(status, format!("{lead}: {detail}"))
            .users(users)
            .value(json!({ "mismatches": 0, "reconcile_actions": events.len() }));
    }
    let mut parts: Vec<String> = mismatches
        .iter()
        .map(|m| format!("{} {}: exchange {} vs fills {}", m.user, m.symbol, m.recorded, m.from_fills))
        .collect();
    if !holds.is_empty() {
        let held = holds.iter().map(|(user, why)| format!("{user} ({why})")).collect::<Vec<_>>().join("; ");
        parts.push(format!("entries halted for: {held}"));
    }
    let detail = parts.join("; ");
    let mut users: Vec<UserId> = mismatches.iter().map(|m| m.user.clone()).chain(holds.keys().cloned()).collect();
    users.sort();
    users.dedup();
    Outcome::new(CheckStatus::Critical, format!("the exchange's position differs from the bot's: {detail}"))
        .users(users)
        .value(json!({ "mismatches": mismatches.len() }))
}

fn orphans(observations: &Observations) -> Outcome {
    let Some(orphans) = &observations.orphans else { return Outcome::unknown("open orders could not be checked") };
    let found: Vec<(&UserId, &Vec<String>)> =
        orphans.checked.iter().filter(|(_, (_, ids))| !ids.is_empty()).map(|(user, (_, ids))| (user, ids)).collect();
    if !found.is_empty() {
        let detail = found.iter().map(|(user, ids)| format!("{user}: {}", ids.join(", "))).collect::<Vec<_>>();
        return Outcome::new(
            CheckStatus::Critical,
            format!("bw- orders open on the exchange that the database does not know: {}", detail.join("; ")),
        )
        .users(found.iter().map(|(user, _)| (*user).clone()).collect());
    }
    let error =
        orphans.last_error.as_deref().map(|e| format!("; last check that could not run: {e}")).unwrap_or_default();
    let coverage = format!(
        "every user is checked within {} s at {} weight/min",
        orphans.coverage_ms / 1_000,
        orphans.weight_per_minute
    );
    if orphans.checked.len() < orphans.users_total {
        return Outcome::unknown(format!(
            "{} of {} users checked so far ({coverage}){error}",
            orphans.checked.len(),
            orphans.users_total
        ));
    }
    let oldest = orphans.checked.values().map(|(at, _)| *at).min().unwrap_or(observations.now_ms);
    // A check older than two passes: the rotation has fallen behind (checks that cannot run).
    let behind_ms = observations.now_ms - oldest - 2 * orphans.coverage_ms.max(1);
    let value = json!({ "users": orphans.users_total, "coverage_ms": orphans.coverage_ms, "oldest_check_ms": oldest });
    if behind_ms > 0 {
        return Outcome::unknown(format!(
            "the oldest orphan check ({}) is older than two passes ({coverage}){error}",
            crate::clock::rfc3339_ms(oldest)
        ))
        .value(value);
    }
    Outcome::ok(format!(
        "no orphan on any of {} users' symbols ({coverage}; the oldest check at {}){error}",
        orphans.users_total,
        crate::clock::rfc3339_ms(oldest)
    ))
    .value(value)
}

/// SYS-INTEL-API: this run's probe, which refreshed the series furthest behind through the API's
/// breaker. A refused or failing API is critical, whatever the cache holds; so is an API that
/// answers with data two or more candles behind the market on the exchange's clock (a vendor that
/// stopped updating). Series nobody asked for lately are not evidence of the API: they are
/// refreshed when a trader needs them. A series whose newest request failed is a warning.
fn intelligence(observations: &Observations) -> Outcome {
    let Some(intel) = &observations.intelligence else {
        return Outcome::unknown("the intelligence actor could not be asked (restarting?)");
    };
    let value = json!({ "source": intel.source, "series": intel.series.len() });
    let probed = match &intel.probe {
        Err(why) => {
            return Outcome::new(
                CheckStatus::Critical,
                format!("{}: the probe found intelligence failing: {why}", intel.source),
            )
            .value(value);
        }
        Ok(None) => {
            return Outcome::ok(format!(
                "{}: no series in use yet (asked for at the first entry signal)",
                intel.source
            ));
        }
        Ok(Some(probed)) => probed,
    };
    let fresh = intel.series.iter().find(|s| &s.series == probed).and_then(|s| s.candles_behind);
    match fresh {
        Some(behind) if behind >= INTEL_CANDLES_BEHIND_STALE => {
            return Outcome::new(
                CheckStatus::Critical,
                format!(
                    "{}: {probed} refreshed now is still {behind} candle(s) behind the market on the exchange's clock (the source is not updating)",
                    intel.source
                ),
            )
            .value(value);
        }
        None => {
            return Outcome::unknown(format!(
                "{}: {probed} refreshed now, but how current it is cannot be told (no data, or the exchange's time unknown)",
                intel.source
            ))
            .value(value);
        }
        Some(_) => {}
    }
    let failing: Vec<String> = intel
        .series
        .iter()
        .filter_map(|s| s.last_error.as_ref().map(|error| format!("{}: {error}", s.series)))
        .collect();
    if !failing.is_empty() {
        return Outcome::new(
            CheckStatus::Warn,
            format!("{}: {probed} is current; the newest request failed for {}", intel.source, failing.join("; ")),
        )
        .value(value);
    }
    Outcome::ok(format!(
        "{}: {probed} refreshed now is within a candle of the market on the exchange's clock ({} series in use)",
        intel.source,
        intel.series.len()
    ))
    .value(value)
}

fn capital(observations: &Observations) -> Outcome {
    let Some(counts) = &observations.margin_rejections else {
        return Outcome::unknown("decisions could not be read");
    };
    let short: Vec<(&UserId, &u64)> = counts.iter().filter(|(_, n)| **n > 0).collect();
    if short.is_empty() {
        return Outcome::ok("no order refused for insufficient margin since the last check");
    }
    let detail = short.iter().map(|(user, n)| format!("{user}: {n} order(s) refused (-2019)")).collect::<Vec<_>>();
    Outcome::new(CheckStatus::Critical, format!("available margin is below the order size: {}", detail.join("; ")))
        .users(short.iter().map(|(u, _)| (*u).clone()).collect())
}

fn bad_candles(observations: &Observations) -> Outcome {
    let Some(counts) = &observations.bad_candles else { return Outcome::unknown("decisions could not be read") };
    let hit: Vec<(&UserId, &u64)> = counts.iter().filter(|(_, n)| **n > 0).collect();
    if hit.is_empty() {
        return Outcome::ok("every candle window validated since the last check");
    }
    let detail = hit.iter().map(|(user, n)| format!("{user}: {n} window(s) refused")).collect::<Vec<_>>();
    Outcome::new(CheckStatus::Warn, format!("malformed candles dropped: {}", detail.join("; ")))
        .users(hit.iter().map(|(u, _)| (*u).clone()).collect())
}

fn holding_locks(observations: &Observations, guard: FailurePointId, status: CheckStatus) -> Outcome {
    let Some(locks) = &observations.locks else { return Outcome::unknown("guard locks could not be read") };
    let holding: Vec<&GuardLock> = locks
        .iter()
        .filter(|lock| lock.failure_point == guard.as_str() && lock.holds_at(observations.now_ms))
        .collect();
    if holding.is_empty() {
        return Outcome::ok("none holds");
    }
    let detail = holding
        .iter()
        .map(|lock| {
            let scope = lock.symbol.as_ref().map_or("all entries".to_owned(), |s| format!("entries on {s}"));
            format!("{}: {scope} until {} ({})", lock.user, crate::clock::rfc3339_ms(lock.until_ms), lock.reason)
        })
        .collect::<Vec<_>>()
        .join("; ");
    let mut users: Vec<UserId> = holding.iter().map(|lock| lock.user.clone()).collect();
    users.sort();
    users.dedup();
    let mut outcome = Outcome::new(status, detail).users(users).value(json!({ "locks": holding.len() }));
    outcome.since_ms = holding.iter().map(|lock| lock.set_at_ms).min();
    outcome.until_ms = holding.iter().map(|lock| lock.until_ms).max();
    outcome
}

fn kill_switch(observations: &Observations) -> Outcome {
    use catalog::SIG_KILL_SWITCH;
    let mut outcome = holding_locks(observations, SIG_KILL_SWITCH, CheckStatus::Critical);
    if observations.guards_disabled {
        // Locks set earlier still hold (turning the guards off never lifts one); no new one is set.
        if outcome.status == CheckStatus::Ok {
            return Outcome::unknown(
                "the guards are off ([guards] enabled = false): no kill switch holds, and none will be set",
            );
        }
        outcome.detail = format!("{}; the guards are off, so no new kill switch will be set", outcome.detail);
        return outcome;
    }
    // Blocks with no lock behind them: the switch failed closed (equity could not be computed).
    let (Some(locks), Some(blocks)) = (&observations.locks, &observations.guard_blocks) else { return outcome };
    let locked = |user: &UserId| {
        locks
            .iter()
            .any(|l| l.failure_point == SIG_KILL_SWITCH.as_str() && &l.user == user && l.holds_at(observations.now_ms))
    };
    let closed: Vec<&UserId> = blocks
        .iter()
        .filter(|(id, user, n)| id == SIG_KILL_SWITCH.as_str() && *n > 0 && !locked(user))
        .map(|(_, user, _)| user)
        .collect();
    if !closed.is_empty() {
        let names: Vec<&str> = closed.iter().map(|u| u.as_str()).collect();
        let note = format!(
            "entries of {} blocked: equity could not be computed, the kill switch fails closed",
            names.join(", ")
        );
        outcome.detail = if outcome.status == CheckStatus::Ok { note } else { format!("{}; {note}", outcome.detail) };
        outcome.status = CheckStatus::Critical;
        outcome.users.extend(closed.into_iter().cloned());
        outcome.users.sort();
        outcome.users.dedup();
    }
    outcome
}

fn overdue_locks(observations: &Observations, guard: FailurePointId) -> Outcome {
    let Some(locks) = &observations.locks else { return Outcome::unknown("guard locks could not be read") };
    let overdue: Vec<&GuardLock> = locks
        .iter()
        .filter(|lock| lock.failure_point == guard.as_str() && !lock.holds_at(observations.now_ms))
        .collect();
    if overdue.is_empty() {
        return Outcome::ok(format!("no {guard} lock past its expiry"));
    }
    let late_ms = overdue.iter().map(|lock| lock.overdue_ms(observations.now_ms)).max().unwrap_or(0);
    let detail = format!(
        "{} {guard} lock(s) past their expiry and not cleared (up to {} s late); they no longer block, the Healer clears them",
        overdue.len(),
        late_ms / 1_000
    );
    let status = if late_ms >= LOCK_OVERDUE_MS_CRITICAL { CheckStatus::Critical } else { CheckStatus::Warn };
    Outcome::new(status, detail).value(json!({ "overdue": overdue.len(), "late_ms_max": late_ms }))
}

fn guard_blocks(observations: &Observations, guard: FailurePointId) -> Outcome {
    if observations.guards_disabled {
        return Outcome::unknown("the guards are off ([guards] enabled = false)");
    }
    let Some(blocks) = &observations.guard_blocks else {
        return Outcome::unknown("guard decisions could not be read");
    };
    let mine: Vec<&(String, UserId, u64)> = blocks.iter().filter(|(id, _, _)| id == guard.as_str()).collect();
    let total: u64 = mine.iter().map(|(_, _, n)| n).sum();
    if total == 0 {
        return Outcome::ok("no signal blocked since the last check");
    }
    let detail = mine.iter().map(|(_, user, n)| format!("{user}: {n} blocked")).collect::<Vec<_>>().join("; ");
    // A guard refusing a signal is the guard working: visible (warn), not a failure.
    Outcome::new(CheckStatus::Warn, format!("signals blocked since the last check: {detail}"))
        .users(mine.iter().map(|(_, user, _)| user.clone()).collect())
        .value(json!({ "blocked": total }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failure_points::catalog::{
        CFG_MISSING, DATA_MISSING, RES_RATE_LIMIT, SYS_CREDENTIALS, SYS_EXCHANGE_API, SYS_PROCESS,
    };

    fn user(name: &str) -> UserId {
        UserId::new(name).unwrap()
    }

    fn result(results: &[CheckResult], id: FailurePointId) -> &CheckResult {
        results.iter().find(|r| r.id == id).unwrap()
    }

    fn trader(name: &str, state: &'static str, reason: Option<&str>) -> ActorObservation {
        ActorObservation {
            actor: "trader",
            user: Some(user(name)),
            state,
            restarts: 0,
            incarnation: 1,
            since_ms: 1_000,
            reason: reason.map(str::to_owned),
        }
    }

    #[test]
    fn a_market_connection_down_or_silent_is_critical_naming_its_feeds_and_users() {
        use crate::trader::stream_link::LinkState;
        let connection = |state: LinkState, live: bool, connections: u64| MarketStreamObservation {
            connection: 0,
            feeds: vec!["XRPUSDT 5m".into(), "BTCUSDT 5m".into()],
            users: vec![user("u1"), user("u2")],
            state,
            live,
            silence_ms_max: 90_000,
            connections,
            failures_in_a_row: 0,
            reconnect_not_before_ms: None,
        };
        let run = |connections: Vec<MarketStreamObservation>, streamed: bool| {
            let observations = Observations {
                now_ms: 100_000,
                market_streams: Some(MarketStreams { streamed, connections }),
                ..Observations::default()
            };
            result(&evaluate(&observations), catalog::SYS_MARKET_STREAM).clone()
        };
        let up = LinkState::Up { connection: 1, since_ms: 10_000, last_heard_ms: 95_000 };
        let ok = run(vec![connection(up, true, 1)], true);
        assert_eq!(ok.status, CheckStatus::Ok, "{}", ok.detail);
        assert!(ok.detail.starts_with("1 market connection(s) carry 2 feed(s)"), "{}", ok.detail);
        let first = run(vec![connection(LinkState::Connecting { since_ms: 99_000 }, false, 0)], true);
        assert_eq!(first.status, CheckStatus::Warn, "a first connection under way");
        let down = run(vec![connection(LinkState::Down { since_ms: 40_000 }, false, 1)], true);
        assert_eq!(down.status, CheckStatus::Critical);
        assert_eq!((down.users.clone(), down.since_ms), (vec![user("u1"), user("u2")], Some(40_000)));
        assert!(down.detail.contains("(2 feed(s): XRPUSDT 5m, BTCUSDT 5m) down since"), "{}", down.detail);
        assert!(down.detail.contains("fetched by REST after each close meanwhile"), "{}", down.detail);
        let silent = run(vec![connection(up, false, 1)], true);
        assert_eq!(silent.status, CheckStatus::Critical, "up but silent is down");
        let paper = run(Vec::new(), false);
        assert_eq!(paper.status, CheckStatus::Ok);
        assert!(paper.detail.contains("streams no candles"), "{}", paper.detail);
        assert_eq!(
            result(&evaluate(&Observations::default()), catalog::SYS_MARKET_STREAM).status,
            CheckStatus::Unknown
        );
    }

    #[test]
    fn a_stream_down_or_silent_is_critical_a_reconnect_not_reread_warns_and_verified_is_ok() {
        use crate::failure_points::catalog::SYS_USER_STREAM;
        use crate::trader::account_book::Unverified;
        let stream = |name: &str, verification: Result<(), Unverified>| UserStreamObservation {
            user: user(name),
            verification,
            connections: 2,
            last_heard_ms: Some(50_000),
            failures_in_a_row: 0,
            reconnect_not_before_ms: None,
        };
        let run = |streams: Vec<UserStreamObservation>| {
            let observations = Observations { now_ms: 60_000, user_streams: Some(streams), ..Observations::default() };
            result(&evaluate(&observations), SYS_USER_STREAM).clone()
        };
        let ok = run(vec![stream("u1", Ok(())), stream("u2", Ok(()))]);
        assert_eq!(ok.status, CheckStatus::Ok, "{}", ok.detail);
        assert!(ok.detail.contains("2 account stream(s) verified; the quietest heard from 10 s ago; 2 reconnect(s)"));
        let reconnected = run(vec![
            stream("u1", Ok(())),
            stream("u2", Err(Unverified::NoSnapshotOnThisConnection { connected_since_ms: 55_000 })),
        ]);
        assert_eq!((reconnected.status, reconnected.users.clone()), (CheckStatus::Warn, vec![user("u2")]));
        let down = run(vec![
            stream("u1", Err(Unverified::Disconnected { since_ms: 40_000 })),
            stream("u2", Err(Unverified::NoSnapshotOnThisConnection { connected_since_ms: 55_000 })),
        ]);
        assert_eq!(down.status, CheckStatus::Critical);
        assert_eq!(down.users, vec![user("u1"), user("u2")]);
        assert_eq!(down.since_ms, Some(40_000));
        assert!(down.detail.starts_with("u1: the account stream is down since"), "{}", down.detail);
        // Backing off: how many attempts failed and when the next one is, in the detail.
        let mut backing_off = stream("u1", Err(Unverified::Disconnected { since_ms: 40_000 }));
        (backing_off.failures_in_a_row, backing_off.reconnect_not_before_ms) = (3, Some(64_000));
        let backing_off = run(vec![backing_off]);
        assert_eq!(backing_off.status, CheckStatus::Critical);
        assert!(
            backing_off.detail.ends_with(
                "; 3 connection(s) failed or dropped early in a row, the next attempt at 1970-01-01T00:01:04.000Z"
            ),
            "{}",
            backing_off.detail
        );
        // Nothing streamed: every sync reads by REST, and that is what it says.
        assert_eq!(run(Vec::new()).status, CheckStatus::Ok);
        assert_eq!(result(&evaluate(&Observations::default()), SYS_USER_STREAM).status, CheckStatus::Unknown);
    }

    #[test]
    fn nothing_observed_is_unknown_for_every_point_never_ok() {
        let results = evaluate(&Observations::default());
        assert_eq!(results.len(), CATALOG.len());
        assert!(results.iter().all(|r| r.status == CheckStatus::Unknown), "{results:?}");
        assert_eq!(overall(&results), CheckStatus::Unknown);
    }

    fn probe(outcome: ProbeOutcome, at_ms: i64) -> ExchangeProbe {
        ExchangeProbe { observed_at_ms: at_ms, latency_ms: 12, outcome }
    }

    fn answered() -> ProbeOutcome {
        ProbeOutcome::Answered { estimate_off_ms: Some(40), estimate_error_ms: 10 }
    }

    #[test]
    fn a_held_outage_stays_critical_while_a_breaker_keeps_the_probes_back_and_clears_on_an_answer() {
        use crate::exchange::Transport;
        let feeds = Some(vec![FeedObservation {
            feed: "XRPUSDT 5m".into(),
            overdue_ms: 0,
            timeframe_ms: 300_000,
            users: vec![user("u1")],
        }]);
        let refused =
            probe(ProbeOutcome::Unreachable { transport: Transport::Refused, detail: "cannot connect".into() }, 1_000);
        let down = Observations {
            exchange: Some(ExchangeObservation::default()),
            exchange_probe: Some(refused.clone()),
            last_verdict_probe: Some(refused.clone()),
            feeds: feeds.clone(),
            ..Observations::default()
        };
        let results = evaluate(&down);
        // No fetch was due (market data stopped asking): that is no evidence of health.
        let api = result(&results, SYS_EXCHANGE_API);
        assert_eq!((api.status, api.users.clone()), (CheckStatus::Critical, vec![user("u1")]), "{api:?}");
        let network = result(&results, catalog::SYS_NETWORK);
        assert_eq!(network.status, CheckStatus::Critical, "{network:?}");
        assert!(network.detail.contains("connection refused"), "{}", network.detail);

        // The breaker opens: the next probes are kept back, and the outage still holds.
        let kept_back = probe(
            ProbeOutcome::BreakerOpen { breaker: "host:time".into(), until_ms: 90_000, detail: "open".into() },
            61_000,
        );
        let held = Observations { exchange_probe: Some(kept_back), ..down.clone() };
        let results = evaluate(&held);
        assert_eq!(result(&results, SYS_EXCHANGE_API).status, CheckStatus::Critical);
        let network = result(&results, catalog::SYS_NETWORK);
        assert_eq!(network.status, CheckStatus::Critical, "{network:?}");
        assert!(network.detail.contains("the newest probe that got through"), "{}", network.detail);

        // An HTTP error from a live exchange is not a network failure.
        let erroring = probe(ProbeOutcome::Failed { detail: "503 Service Unavailable".into() }, 121_000);
        let live =
            Observations { exchange_probe: Some(erroring.clone()), last_verdict_probe: Some(erroring), ..down.clone() };
        let results = evaluate(&live);
        assert_eq!(result(&results, SYS_EXCHANGE_API).status, CheckStatus::Critical);
        assert_eq!(result(&results, catalog::SYS_NETWORK).status, CheckStatus::Ok);

        // It answers again: both ok.
        let back = probe(answered(), 181_000);
        let recovered = Observations { exchange_probe: Some(back.clone()), last_verdict_probe: Some(back), ..down };
        let results = evaluate(&recovered);
        assert_eq!(result(&results, SYS_EXCHANGE_API).status, CheckStatus::Ok);
        assert_eq!(result(&results, catalog::SYS_NETWORK).status, CheckStatus::Ok);
    }

    #[test]
    fn intelligence_is_judged_on_its_probe_and_on_how_current_the_probed_data_is() {
        let series = |name: &str, behind: Option<i64>, error: Option<&str>| IntelSeriesObservation {
            series: name.into(),
            age_ms: Some(1_000),
            last_error: error.map(str::to_owned),
            candles_behind: behind,
        };
        let observed = |probe: Result<Option<String>, String>, series: Vec<IntelSeriesObservation>| Observations {
            intelligence: Some(IntelObservation { source: "coinglass".into(), series, probe }),
            ..Observations::default()
        };
        let judge = |observations: &Observations| {
            let results = evaluate(observations);
            let check = result(&results, catalog::SYS_INTEL_API);
            (check.status, check.detail.clone())
        };
        let probed = |name: &str| Ok(Some(name.to_owned()));
        // Refreshed now, but the source serves old data: critical, whatever the cache's age.
        let (status, detail) = judge(&observed(
            probed("XRPUSDT 5m"),
            vec![series("XRPUSDT 5m", Some(7), None), series("BTCUSDT 5m", Some(0), None)],
        ));
        assert_eq!(status, CheckStatus::Critical, "{detail}");
        assert!(detail.contains("7 candle(s) behind"), "{detail}");
        // The API refusing (or its breaker keeping the probe back) is critical at once.
        let (status, _) = judge(&observed(
            Err("circuit breaker intel:coinglass open until ...".into()),
            vec![series("XRPUSDT 5m", Some(0), None)],
        ));
        assert_eq!(status, CheckStatus::Critical);
        // Current; a series nobody asked for lately is no evidence.
        let (status, _) = judge(&observed(
            probed("XRPUSDT 5m"),
            vec![series("XRPUSDT 5m", Some(0), None), series("ETHUSDT 5m", Some(9), None)],
        ));
        assert_eq!(status, CheckStatus::Ok);
        // A series whose newest request failed: a warning naming it.
        let (status, detail) = judge(&observed(
            probed("XRPUSDT 5m"),
            vec![series("XRPUSDT 5m", Some(1), None), series("BTCUSDT 5m", None, Some("timeout"))],
        ));
        assert_eq!(status, CheckStatus::Warn, "{detail}");
        assert!(detail.contains("BTCUSDT 5m: timeout"), "{detail}");
        // None in use: nothing to check, and it says so.
        assert_eq!(judge(&observed(Ok(None), Vec::new())).0, CheckStatus::Ok);
    }

    #[test]
    fn failing_candle_fetches_make_the_exchange_critical_for_its_users() {
        let observations = Observations {
            exchange_probe: Some(probe(answered(), 0)),
            exchange: Some(ExchangeObservation {
                klines_requests: 4,
                klines_failures: 3,
                last_error: Some("rejected by the exchange (code -1003)".into()),
                ..ExchangeObservation::default()
            }),
            feeds: Some(vec![FeedObservation {
                feed: "XRPUSDT 5m".into(),
                overdue_ms: 0,
                timeframe_ms: 300_000,
                users: vec![user("u2"), user("u1")],
            }]),
            ..Observations::default()
        };
        let results = evaluate(&observations);
        let exchange = result(&results, SYS_EXCHANGE_API);
        assert_eq!(exchange.status, CheckStatus::Critical, "{exchange:?}");
        assert_eq!(exchange.users, [user("u1"), user("u2")]);
        assert!(exchange.detail.contains("3 of 4"));
        assert_eq!(overall(&results), CheckStatus::Critical);
        let recovered = Observations {
            exchange: Some(ExchangeObservation { klines_requests: 5, ..ExchangeObservation::default() }),
            ..observations
        };
        assert_eq!(result(&evaluate(&recovered), SYS_EXCHANGE_API).status, CheckStatus::Ok);
    }

    #[test]
    fn quarantined_and_halted_users_are_named() {
        let observations = Observations {
            actors: Some(vec![
                trader("u1", "running", None),
                trader("u2", "quarantined", Some("4 failures within 60 s")),
                trader("u3", "halted", Some("no usable API credentials (-2015)")),
            ]),
            ..Observations::default()
        };
        let results = evaluate(&observations);
        let process = result(&results, SYS_PROCESS);
        assert_eq!((process.status, process.users.clone()), (CheckStatus::Critical, vec![user("u2")]));
        let credentials = result(&results, SYS_CREDENTIALS);
        assert_eq!((credentials.status, credentials.users.clone()), (CheckStatus::Critical, vec![user("u3")]));
        assert!(credentials.detail.contains("-2015"));
    }

    #[test]
    fn a_shared_actor_down_still_names_the_quarantined_users_for_the_healer() {
        let http = ActorObservation { actor: "http", user: None, ..trader("x", "quarantined", Some("3 failures")) };
        let observations = Observations {
            actors: Some(vec![http, trader("u2", "quarantined", Some("4 failures within 60 s"))]),
            ..Observations::default()
        };
        let process = result(&evaluate(&observations), SYS_PROCESS).clone();
        assert_eq!((process.status, process.users), (CheckStatus::Critical, vec![user("u2")]));
        assert!(
            process.detail.contains("http quarantined") && process.detail.contains("trader u2"),
            "{}",
            process.detail
        );
    }

    #[test]
    fn a_ban_is_critical_until_it_ends_and_overdue_feeds_are_reported() {
        let observations = Observations {
            now_ms: 10_000,
            exchange: Some(ExchangeObservation { banned_until_ms: Some(70_000), ..ExchangeObservation::default() }),
            feeds: Some(vec![FeedObservation {
                feed: "BTCUSDT 5m".into(),
                overdue_ms: 400_000,
                timeframe_ms: 300_000,
                users: vec![user("u1")],
            }]),
            config_files: Some(vec![ConfigFileObservation {
                path: "config/bulwark.toml".into(),
                exists: false,
                problems: vec![],
            }]),
            ..Observations::default()
        };
        let results = evaluate(&observations);
        let ban = result(&results, RES_RATE_LIMIT);
        assert_eq!((ban.status, ban.until_ms), (CheckStatus::Critical, Some(70_000)));
        let data = result(&results, DATA_MISSING);
        assert_eq!((data.status, data.users.clone()), (CheckStatus::Critical, vec![user("u1")]));
        assert_eq!(result(&results, CFG_MISSING).status, CheckStatus::Critical);
        let record = RunRecord::new(1_763_769_600_000, results);
        let line: Value = serde_json::from_str(&record.to_json()).unwrap();
        assert_eq!(line["ts"], "2025-11-22T00:00:00.000Z");
        assert_eq!(line["overall"], "critical");
        assert_eq!(line["checks"].as_array().unwrap().len(), CATALOG.len());
        assert_eq!(line["checks"][0]["id"], "SIG-KILL-SWITCH");
        assert_eq!(
            line["checks"].as_array().unwrap().iter().find(|c| c["id"] == "RES-RATE-LIMIT").unwrap()["until"],
            "1970-01-01T00:01:10.000Z"
        );
        // The one codec: what is written reads back as it was.
        assert_eq!(RunRecord::parse(&record.to_json()).unwrap(), record);
    }

    #[test]
    fn a_stored_run_naming_an_unknown_id_or_a_bad_time_is_refused_with_the_reason() {
        let good = r#"{"ts":"2025-11-22T00:00:00.000Z","overall":"ok","checks":[{"id":"SYS-DATABASE","category":"system","priority":"critical","status":"ok","detail":"fine"}]}"#;
        let record = RunRecord::parse(good).unwrap();
        assert_eq!(record.check(catalog::SYS_DATABASE).unwrap().detail, "fine");
        let unknown = good.replace("SYS-DATABASE", "SYS-NOPE");
        assert!(RunRecord::parse(&unknown).unwrap_err().to_string().contains("SYS-NOPE"));
        let bad_time = good.replace("2025-11-22T00:00:00.000Z", "yesterday");
        assert!(RunRecord::parse(&bad_time).unwrap_err().to_string().contains("yesterday"));
    }

    fn lock(user_name: &str, failure_point: FailurePointId, symbol: Option<&str>, until_ms: i64) -> GuardLock {
        GuardLock {
            id: 1,
            user: user(user_name),
            failure_point: failure_point.as_str().into(),
            symbol: symbol.map(|s| crate::domain::Symbol::new(s).unwrap()),
            reason: "drawdown".into(),
            values: json!({}),
            set_at_ms: 0,
            until_ms,
            set_at_venue_ms: 0,
            until_venue_ms: until_ms,
        }
    }

    #[test]
    fn locks_in_force_and_overdue_ones_and_a_kill_switch_that_failed_closed() {
        use crate::failure_points::catalog::{
            SIG_KILL_SWITCH, SIG_SYMBOL_PROBATION, STATE_KILL_SWITCH, STATE_PROBATION,
        };
        let observations = Observations {
            now_ms: 10_000,
            locks: Some(vec![
                lock("u1", SIG_KILL_SWITCH, None, 20_000),
                lock("u2", SIG_SYMBOL_PROBATION, Some("BTCUSDT"), 5_000),
            ]),
            guard_blocks: Some(vec![
                ("SIG-KILL-SWITCH".into(), user("u1"), 2),
                ("SIG-KILL-SWITCH".into(), user("u3"), 1),
                ("SIG-TRAP".into(), user("u2"), 4),
            ]),
            ..Observations::default()
        };
        let results = evaluate(&observations);
        let kill = result(&results, SIG_KILL_SWITCH);
        assert_eq!((kill.status, kill.until_ms), (CheckStatus::Critical, Some(20_000)));
        assert_eq!(kill.users, [user("u1"), user("u3")], "u3 has blocks but no lock: it failed closed");
        assert!(kill.detail.contains("fails closed"), "{}", kill.detail);
        assert_eq!(result(&results, SIG_SYMBOL_PROBATION).status, CheckStatus::Ok, "expired: no longer in force");
        assert_eq!(result(&results, STATE_PROBATION).status, CheckStatus::Warn, "past its expiry, not cleared");
        assert_eq!(result(&results, STATE_KILL_SWITCH).status, CheckStatus::Ok);
        let trap = result(&results, catalog::SIG_TRAP);
        assert_eq!((trap.status, trap.users.clone()), (CheckStatus::Warn, vec![user("u2")]));
        assert_eq!(result(&results, catalog::SIG_REGIME).status, CheckStatus::Ok);

        let disabled = Observations { guards_disabled: true, ..observations };
        let results = evaluate(&disabled);
        assert_eq!(result(&results, catalog::SIG_REGIME).status, CheckStatus::Unknown);
        // A kill switch set before the guards were turned off still holds, and says so.
        let kill = result(&results, SIG_KILL_SWITCH);
        assert_eq!(kill.status, CheckStatus::Critical, "{}", kill.detail);
        assert!(kill.detail.contains("guards are off"), "{}", kill.detail);
        let none_holding = Observations { locks: Some(Vec::new()), ..disabled };
        assert_eq!(result(&evaluate(&none_holding), SIG_KILL_SWITCH).status, CheckStatus::Unknown);
    }

    #[test]
    fn the_orphan_check_covers_every_user_within_a_bound_the_budget_sets() {
        let costs: Vec<(UserId, usize)> = (0..10).map(|i| (user(&format!("u{i}")), 1 + i % 3)).collect();
        let total: usize = costs.iter().map(|(_, c)| c).sum();
        assert_eq!(total, 19);
        // 6 weight per run: users in turn until the next would not fit, wrapping around.
        let (first, next) = orphan_batch(&costs, 0, 6);
        assert_eq!((first, next), (vec![0, 1, 2], 3), "1 + 2 + 3 = 6");
        let (second, next) = orphan_batch(&costs, next, 6);
        assert_eq!((second, next), (vec![3, 4, 5], 6), "1 + 2 + 3 = 6 again");
        // Every user at least once per pass; a user dearer than the budget still goes alone.
        let (alone, _) = orphan_batch(&costs, 2, 1);
        assert_eq!(alone, vec![2]);
        // The bound: runs needed for one pass, times the interval.
        let coverage = orphan_coverage_ms(&costs, 6, 60_000);
        assert!((4 * 60_000..=5 * 60_000).contains(&coverage), "{coverage}");
        // 10,000 users on one symbol each, at 120 weight/min with a 60 s interval: 84 runs.
        let fleet: Vec<(UserId, usize)> = (0..10_000).map(|i| (user(&format!("f{i}")), 1)).collect();
        let per_run = orphan_weight_per_run(120, 60_000);
        assert_eq!(per_run, 120);
        assert_eq!(orphan_coverage_ms(&fleet, per_run, 60_000), 84 * 60_000);
    }

    #[test]
    fn margin_rejections_bad_candles_and_failed_log_writes_are_reported() {
        let observations = Observations {
            margin_rejections: Some(BTreeMap::from([(user("u1"), 2), (user("u2"), 0)])),
            bad_candles: Some(BTreeMap::from([(user("u3"), 1)])),
            directories: Some(vec![DirectoryObservation { path: "logs".into(), writable: true, free_bytes: None }]),
            log_write_failures: 1,
            ..Observations::default()
        };
        let results = evaluate(&observations);
        let capital = result(&results, catalog::RES_CAPITAL);
        assert_eq!((capital.status, capital.users.clone()), (CheckStatus::Critical, vec![user("u1")]));
        let corrupt = result(&results, catalog::DATA_CORRUPT);
        assert_eq!((corrupt.status, corrupt.users.clone()), (CheckStatus::Warn, vec![user("u3")]));
        let filesystem = result(&results, catalog::SYS_FILESYSTEM);
        assert_eq!(filesystem.status, CheckStatus::Critical);
        assert!(filesystem.detail.contains("failure-point logs"), "{}", filesystem.detail);
    }

    #[test]
    fn records_waiting_in_the_outbox_make_the_database_critical_for_every_user_and_held_positions_show() {
        let outbox = crate::failure_points::database::OutboxStatus {
            depth: 4,
            capacity: 10,
            replayed_total: 0,
            rejected_total: 0,
            last_error: Some("attempt to write a readonly database".into()),
            ..crate::failure_points::database::OutboxStatus::default()
        };
        let observations = Observations {
            database: Some(DatabaseObservation {
                writes_refused: 0,
                journal_write_failures: 0,
                integrity_ok: Some(true),
                outbox: outbox.clone(),
                users: vec![user("u1"), user("u2")],
            }),
            position_mismatches: Some(Vec::new()),
            position_holds: BTreeMap::from([(user("u3"), "XRPUSDT: the exchange holds 30, the fills net 0".into())]),
            ..Observations::default()
        };
        let results = evaluate(&observations);
        let database = result(&results, catalog::SYS_DATABASE);
        assert_eq!((database.status, database.users.clone()), (CheckStatus::Critical, vec![user("u1"), user("u2")]));
        assert!(database.detail.contains("4 of 10 record(s) wait in the durable outbox"), "{}", database.detail);
        assert!(database.detail.contains("readonly"), "{}", database.detail);
        assert_eq!(database.value.as_ref().unwrap()["outbox_depth"], 4);
        let sync = result(&results, catalog::STATE_POSITION_SYNC);
        assert_eq!((sync.status, sync.users.clone()), (CheckStatus::Critical, vec![user("u3")]));
        assert!(sync.detail.contains("differs from the bot's: entries halted for: u3 (XRPUSDT"), "{}", sync.detail);

        // The database unreachable (its integrity not checked) but refusing writes, with a lock
        // held by another connection: critical, with the kind and since when, never unknown.
        let refusal = crate::failure_points::database::DatabaseRefusal {
            kind: crate::failure_points::database::DatabaseRefusalKind::ForeignLock,
            since_ms: 1_000,
            detail: "database is locked".into(),
        };
        let locked = Observations {
            database: Some(DatabaseObservation {
                writes_refused: 0,
                journal_write_failures: 0,
                integrity_ok: None,
                outbox: crate::failure_points::database::OutboxStatus { refusal: Some(refusal), ..outbox.clone() },
                users: vec![user("u1")],
            }),
            ..Observations::default()
        };
        let results = evaluate(&locked);
        let database = result(&results, catalog::SYS_DATABASE);
        assert_eq!((database.status, database.since_ms), (CheckStatus::Critical, Some(1_000)));
        assert!(database.detail.contains("foreign_lock: database is locked"), "{}", database.detail);

        // Records kept nowhere: critical, and it says no order is placed.
        let lost = Observations {
            database: Some(DatabaseObservation {
                writes_refused: 0,
                journal_write_failures: 0,
                integrity_ok: None,
                outbox: crate::failure_points::database::OutboxStatus {
                    records_unkept: Some("a decision record could be kept neither ...".into()),
                    records_lost_total: 3,
                    ..outbox
                },
                users: vec![user("u1")],
            }),
            ..Observations::default()
        };
        let results = evaluate(&lost);
        let database = result(&results, catalog::SYS_DATABASE);
        assert_eq!(database.status, CheckStatus::Critical);
        assert!(database.detail.contains("records are being lost (3 since start)"), "{}", database.detail);
        assert!(database.detail.contains("no order is placed"), "{}", database.detail);
    }

    #[test]
    fn a_position_the_fills_do_not_add_up_to_and_an_orphan_are_critical_for_their_users() {
        let mismatch = PositionMismatch {
            user: user("u2"),
            symbol: crate::domain::Symbol::new("ETHUSDT").unwrap(),
            recorded: 0.5,
            from_fills: 0.0,
            verified_at_ms: 1,
        };
        let mut orphans = OrphanObservation { users_total: 3, ..OrphanObservation::default() };
        orphans.checked.insert(user("u1"), (5, vec![]));
        let observations = Observations {
            now_ms: 10,
            position_mismatches: Some(vec![mismatch]),
            orphans: Some(orphans.clone()),
            ..Observations::default()
        };
        let results = evaluate(&observations);
        let sync = result(&results, catalog::STATE_POSITION_SYNC);
        assert_eq!((sync.status, sync.users.clone()), (CheckStatus::Critical, vec![user("u2")]));
        assert!(sync.detail.contains("exchange 0.5 vs fills 0"), "{}", sync.detail);
        let orphan = result(&results, catalog::STATE_ORPHAN_ORDERS);
        assert_eq!(orphan.status, CheckStatus::Unknown, "1 of 3 users checked: {}", orphan.detail);

        orphans.checked.insert(user("u2"), (6, vec![]));
        orphans.checked.insert(user("u3"), (7, vec!["bw-u3-12".into()]));
        let results = evaluate(&Observations { orphans: Some(orphans.clone()), ..Observations::default() });
        let orphan = result(&results, catalog::STATE_ORPHAN_ORDERS);
        assert_eq!((orphan.status, orphan.users.clone()), (CheckStatus::Critical, vec![user("u3")]));
        orphans.checked.insert(user("u3"), (8, vec![]));
        let results = evaluate(&Observations { orphans: Some(orphans), ..Observations::default() });
        assert_eq!(result(&results, catalog::STATE_ORPHAN_ORDERS).status, CheckStatus::Ok);
    }
}
