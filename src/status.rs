//! `bulwark status` and `bulwark why`: each user's state read from the database (opened
//! read-only, so it works while the server runs), the newest tree snapshot from
//! `supervisor.jsonl`, and the inputs of [`why::explain`] (the Monitor's newest stored run, the
//! user's guard locks and decisions).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use anyhow::Context as _;
use serde::Serialize;
use serde_json::Value;

use crate::clock::rfc3339_ms;
use crate::config::Config;
use crate::failure_points::monitor::RunRecord;
use crate::failure_points::why::{self, DecisionView, WhyAnswer, WhyInputs};
use crate::instance_lock::InstanceLock;
use crate::persistence::{Store, UserStatus};

/// How much of the end of `supervisor.jsonl` is searched for the newest tree snapshot.
const JOURNAL_TAIL_BYTES: u64 = 4 * 1024 * 1024;

#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub database: String,
    pub server_running: bool,
    pub users: Vec<UserStatusView>,
    /// The newest `tree` line of `supervisor.jsonl`, if any.
    pub tree: Option<Value>,
}

#[derive(Debug, Serialize)]
pub struct UserStatusView {
    /// What is true now: a user recorded as running while no server runs is `stopped`.
    pub state: String,
    #[serde(flatten)]
    pub recorded: UserStatus,
}

/// The config's database, opened read-only, and whether a server holds it now.
fn open_database(config: &Config) -> anyhow::Result<(Store, std::path::PathBuf, bool)> {
    let database = config.database_path();
    if !database.exists() {
        anyhow::bail!(
            "no database at {}: the server has not run with this config yet (start it with `bulwark run`)",
            database.display()
        );
    }
    let server_running = InstanceLock::is_held(&database);
    let store = Store::open_read_only(&database).with_context(|| format!("opening {}", database.display()))?;
    Ok((store, database, server_running))
}

pub fn collect(config: &Config) -> anyhow::Result<StatusReport> {
    let (mut store, database, server_running) = open_database(config)?;
    let users = store
        .user_statuses()
        .with_context(|| format!("reading {}", database.display()))?
        .into_iter()
        .map(|recorded| {
            let live = matches!(recorded.state.as_str(), "starting" | "running" | "restarting");
            let state = if !server_running && live { "stopped".to_owned() } else { recorded.state.clone() };
            UserStatusView { state, recorded }
        })
        .collect();
    let tree = newest_tree_snapshot(&config.server.log_dir.join("supervisor.jsonl"));
    Ok(StatusReport { database: database.display().to_string(), server_running, users, tree })
}

/// Decisions and guard blocks shown by `why`.
const WHY_DECISIONS_MAX: u32 = 5;

/// `bulwark why USER`.
pub fn why(config: &Config, user: &str) -> anyhow::Result<WhyAnswer> {
    // The error names the id (cut to its first characters and its length).
    let user_id = crate::domain::UserId::new(user).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (mut store, database, server_running) = open_database(config)?;
    let reading = || format!("reading {}", database.display());
    let trader_state = store
        .user_statuses()
        .with_context(reading)?
        .into_iter()
        .find(|status| status.user == user)
        .map(|status| (status.state, status.reason, status.since_ms));
    // The Monitor's newest run: from the database, or from its log when that is newer (while the
    // database refuses writes, its snapshots are not written, but its log lines are).
    let from_database =
        store.latest_monitor_snapshot().with_context(reading)?.and_then(|(_, _, body)| RunRecord::parse(&body).ok());
    let from_log = newest_run(&config.server.log_dir.join("failure_point_monitor.jsonl"));
    let checks =
        [from_database, from_log].into_iter().flatten().max_by_key(|run| run.ts_ms).map(|run| (run.ts_ms, run.checks));
    let locks = store.uncleared_guard_locks(Some(&user_id)).with_context(reading)?;
    let decisions = store
        .recent_decisions(&user_id, WHY_DECISIONS_MAX)
        .with_context(reading)?
        .into_iter()
        .map(|d| DecisionView {
            decided_at_ms: d.decided_at_ms,
            symbol: d.symbol.to_string(),
            outcome: d.outcome,
            reason: d.reason,
        })
        .collect();
    let guard_blocks = store
        .recent_guard_decisions(&user_id, WHY_DECISIONS_MAX * 4)
        .with_context(reading)?
        .into_iter()
        .filter(|d| d.verdict == "block")
        .take(WHY_DECISIONS_MAX as usize)
        .map(|d| DecisionView {
            decided_at_ms: d.decided_at_ms,
            symbol: d.symbol.to_string(),
            outcome: d.failure_point.unwrap_or_else(|| "block".to_owned()),
            reason: d.reason,
        })
        .collect();
    Ok(why::explain(&WhyInputs {
        user: user.to_owned(),
        now_ms: chrono::Utc::now().timestamp_millis(),
        server_running: Some(server_running),
        trader_state,
        checks,
        locks,
        decisions,
        guard_blocks,
    }))
}

/// The newest `{"event": "tree"}` line in the journal's tail.
pub fn newest_tree_snapshot(path: &Path) -> Option<Value> {
    newest_line(path, |line| line["event"] == "tree")
}

/// The newest line of a JSON-lines log that `wanted` accepts, read from the file's tail (a line
/// being written, or cut by the tail's start, does not parse and is passed over).
/// The newest Monitor run in its log that reads as a run record.
fn newest_run(path: &Path) -> Option<RunRecord> {
    let tail = read_tail(path)?;
    tail.lines().rev().find_map(|line| RunRecord::parse(line).ok())
}

fn newest_line(path: &Path, wanted: impl Fn(&Value) -> bool) -> Option<Value> {
    let tail = read_tail(path)?;
    tail.lines().rev().filter_map(|line| serde_json::from_str::<Value>(line).ok()).find(|line| wanted(line))
}

/// The lines of a JSON-lines log (read from its tail) whose `ts` is at or after `since_ms`, with
/// that time, oldest first.
pub fn lines_since(path: &Path, since_ms: i64) -> Vec<(i64, Value)> {
    let Some(tail) = read_tail(path) else { return Vec::new() };
    tail.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter_map(|line| {
            let ts_ms = chrono::DateTime::parse_from_rfc3339(line["ts"].as_str()?).ok()?.timestamp_millis();
            (ts_ms >= since_ms).then_some((ts_ms, line))
        })
        .collect()
}

/// The end of a file (at most [`JOURNAL_TAIL_BYTES`]), as text.
fn read_tail(path: &Path) -> Option<String> {
    let mut file = File::open(path).ok()?;
    let length = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(length.saturating_sub(JOURNAL_TAIL_BYTES))).ok()?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).ok()?;
    Some(String::from_utf8_lossy(&tail).into_owned())
}

/// `bulwark report --since`: failure-point trends, from the running server when `remote` answers,
/// else from the database. Returns the report and where it came from.
pub fn trends(
    config: &Config,
    remote: Option<&crate::remote::Remote>,
    remote_required: bool,
    since: &str,
) -> anyhow::Result<(crate::failure_points::trends::TrendReport, String)> {
    use crate::failure_points::trends::{self, Event, Run};
    let now_ms = chrono::Utc::now().timestamp_millis();
    let since_ms = crate::http::parse_since(since, now_ms).map_err(|message| anyhow::anyhow!(message))?;
    let run_of = |ts_ms: i64, statuses: &Value| Run {
        ts_ms,
        statuses: statuses
            .as_object()
            .map(|map| map.iter().filter_map(|(id, s)| Some((id.clone(), s.as_str()?.to_owned()))).collect())
            .unwrap_or_default(),
    };
    if let Some(remote) = remote {
        let fetched = remote
            .get(&format!("/api/failure-points/history?since={since_ms}"))
            .and_then(|history| Ok((history, remote.get(&format!("/api/events?since={since_ms}"))?)));
        match fetched {
            Ok((history, events)) => {
                let runs: Vec<Run> = history["runs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|r| {
                        let ts_ms = chrono::DateTime::parse_from_rfc3339(r["ts"].as_str()?).ok()?.timestamp_millis();
                        Some(run_of(ts_ms, &r["statuses"]))
                    })
                    .collect();
                let events: Vec<Event> = events["events"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|e| e["kind"] == "supervision")
                    .filter_map(|e| {
                        Some(Event {
                            event: e["event"].as_str()?.to_owned(),
                            actor: e["actor"].as_str()?.to_owned(),
                            user: e["user"].as_str().map(str::to_owned),
                        })
                    })
                    .collect();
                return Ok((trends::report(&runs, &events, since_ms, now_ms), format!("the server at {}", remote.url)));
            }
            Err(crate::remote::RemoteError::Unreachable { .. }) if !remote_required => {}
            Err(error @ crate::remote::RemoteError::Foreign { .. }) if !remote_required => {
                eprintln!("bulwark: {error}; reading the database instead");
            }
            Err(error) => return Err(error.into()),
        }
    }
    let (mut store, database, _) = open_database(config)?;
    let reading = || format!("reading {}", database.display());
    let runs: Vec<Run> = store
        .monitor_snapshots_since(since_ms, 1_000_000)
        .with_context(reading)?
        .into_iter()
        .filter_map(|(ts_ms, _, body)| {
            let run = RunRecord::parse(&body).ok()?;
            let statuses =
                run.checks.iter().map(|c| (c.id.as_str().to_owned(), c.status.as_str().to_owned())).collect();
            Some(Run { ts_ms, statuses })
        })
        .collect();
    let events: Vec<Event> = store
        .supervisor_events_since(since_ms, 1_000_000)
        .with_context(reading)?
        .into_iter()
        .map(|e| Event { event: e.event, actor: e.actor, user: e.user.map(|u| u.to_string()) })
        .collect();
    Ok((trends::report(&runs, &events, since_ms, now_ms), database.display().to_string()))
}

/// `bulwark status` from a running server's `/api/status`.
pub fn render_live_text(url: &str, status: &Value) -> String {
    let text = |value: &Value| value.as_str().unwrap_or("-").to_owned();
    let mut out = format!(
        "bulwark status: {url} (server running; overall {}; monitor at {})\n",
        text(&status["overall"]),
        text(&status["monitor_checked_at"])
    );
    out.push_str(&format!(
        "{:<12} {:<12} {:>6} {:>8} {:>9} {:>7} {:>6}  {:<24} {}\n",
        "USER", "STATE", "INCARN", "RESTARTS", "DECISIONS", "ORDERS", "FILLS", "LAST DECISION AT", "LAST DECISION"
    ));
    for user in status["users"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:<12} {:<12} {:>6} {:>8} {:>9} {:>7} {:>6}  {:<24} {}\n",
            text(&user["user"]),
            text(&user["state"]),
            user["incarnation"].to_string(),
            user["restarts"].to_string(),
            user["decisions"].to_string(),
            user["orders"].to_string(),
            user["fills"].to_string(),
            text(&user["last_decision_at"]),
            text(&user["last_decision"])
        ));
        let positions: Vec<String> = user["positions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                let quantity = p["quantity"].as_str().and_then(|q| q.parse().ok()).unwrap_or_default();
                describe_position(&text(&p["symbol"]), quantity, text(&p["entry_price"]))
            })
            .collect();
        if !positions.is_empty() {
            out.push_str(&format!("{:<12} position: {}\n", "", positions.join(", ")));
        }
        if !matches!(user["state"].as_str(), Some("running"))
            && let Some(reason) = user["reason"].as_str()
        {
            out.push_str(&format!("{:<12} {}: {reason}\n", "", text(&user["state"])));
        }
        if let Some(hold) = user["position_hold"].as_str() {
            out.push_str(&format!("{:<12} entries halted: {hold}\n", ""));
        }
    }
    let shared: Vec<String> = status["tree"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["actor"] != "trader")
        .map(|a| {
            format!("{} {} #{} ({} restarts)", text(&a["actor"]), text(&a["state"]), a["incarnation"], a["restarts"])
        })
        .collect();
    out.push_str(&format!("shared actors: {}\n", shared.join(", ")));
    let troubled: Vec<String> = status["failure_points"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["status"] != "ok")
        .map(|c| format!("  {} {}: {}", text(&c["id"]), text(&c["status"]), text(&c["detail"])))
        .collect();
    if troubled.is_empty() {
        out.push_str("failure points: every one ok\n");
    } else {
        out.push_str(&format!("failure points not ok:\n{}\n", troubled.join("\n")));
    }
    if status["outbox"]["depth"].as_u64().unwrap_or(0) > 0 {
        out.push_str(&format!("outbox: {} record(s) wait for the database\n", status["outbox"]["depth"]));
    }
    out
}

/// `SYMBOL flat`, or `SYMBOL long|short QUANTITY @ ENTRY`.
fn describe_position(symbol: &str, quantity: rust_decimal::Decimal, entry: impl std::fmt::Display) -> String {
    if quantity.is_zero() {
        format!("{symbol} flat")
    } else {
        let side = if quantity.is_sign_positive() { "long" } else { "short" };
        format!("{symbol} {side} {} @ {entry}", quantity.abs())
    }
}

pub fn render_text(report: &StatusReport) -> String {
    let mut out = format!(
        "bulwark status: {} (server {})\n",
        report.database,
        if report.server_running { "running" } else { "not running" }
    );
    out.push_str(&format!(
        "{:<12} {:<12} {:>6} {:>8} {:>9} {:>7} {:>6}  {:<24} {}\n",
        "USER", "STATE", "INCARN", "RESTARTS", "DECISIONS", "ORDERS", "FILLS", "LAST DECISION AT", "LAST DECISION"
    ));
    for user in &report.users {
        let recorded = &user.recorded;
        let at = recorded.last_decision_at_ms.map(rfc3339_ms).unwrap_or_else(|| "-".to_owned());
        out.push_str(&format!(
            "{:<12} {:<12} {:>6} {:>8} {:>9} {:>7} {:>6}  {:<24} {}\n",
            recorded.user,
            user.state,
            recorded.incarnation,
            recorded.restart_count,
            recorded.decision_count,
            recorded.orders_total,
            recorded.fills_total,
            at,
            recorded.last_decision.as_deref().unwrap_or("-")
        ));
        let positions: Vec<String> = recorded
            .positions
            .iter()
            .map(|p| describe_position(p.symbol.as_str(), p.quantity, p.entry_price.round_dp(6)))
            .collect();
        if !positions.is_empty() {
            out.push_str(&format!("{:<12} position: {}\n", "", positions.join(", ")));
        }
        let unusual = !matches!(user.state.as_str(), "running" | "stopped")
            || matches!(recorded.state.as_str(), "quarantined" | "halted");
        if unusual && let Some(reason) = &recorded.reason {
            out.push_str(&format!("{:<12} {} since {}: {reason}\n", "", recorded.state, rfc3339_ms(recorded.since_ms)));
        }
    }
    if let Some(tree) = &report.tree {
        out.push_str(&format!("tree snapshot at {}: {}\n", tree["ts"].as_str().unwrap_or("?"), tree["counts"]));
    }
    out
}
