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
use crate::failure_points::why::{self, CheckView, DecisionView, WhyAnswer, WhyInputs};
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
    let user_id = crate::domain::UserId::new(user).map_err(|e| anyhow::anyhow!("user {user:?}: {e}"))?;
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
    let from_database = store
        .latest_monitor_snapshot()
        .with_context(reading)?
        .and_then(|(ts_ms, _, body)| serde_json::from_str::<Value>(&body).ok().map(|line| (ts_ms, line)));
    let from_log =
        newest_line(&config.server.log_dir.join("failure_point_monitor.jsonl"), |line| line["checks"].is_array())
            .and_then(|line| {
                let ts_ms = chrono::DateTime::parse_from_rfc3339(line["ts"].as_str()?).ok()?.timestamp_millis();
                Some((ts_ms, line))
            });
    let checks = [from_database, from_log]
        .into_iter()
        .flatten()
        .max_by_key(|(ts_ms, _)| *ts_ms)
        .map(|(ts_ms, line)| (ts_ms, CheckView::from_line(&line)));
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
            .map(|p| {
                if p.quantity.is_zero() {
                    format!("{} flat", p.symbol)
                } else {
                    let side = if p.quantity.is_sign_positive() { "long" } else { "short" };
                    format!("{} {side} {} @ {}", p.symbol, p.quantity.abs(), p.entry_price.round_dp(6))
                }
            })
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
