//! "Why is this user not trading?": every active block on one user, from what the supervision
//! tree, the Monitor, the guard locks and the decisions record. Pure: the inputs are gathered by
//! `bulwark why` (from the database, with the server running or not), by the Monitor (for the
//! summary's "users not trading") and later by the HTTP API, so all three give the same answer.

use serde::{Deserialize, Serialize};

use crate::clock::rfc3339_ms;
use crate::failure_points::catalog::{self, CATALOG};
use crate::failure_points::locks::GuardLock;
use crate::failure_points::monitor::{CheckResult, CheckStatus};

/// A decision as `why` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionView {
    pub decided_at_ms: i64,
    pub symbol: String,
    pub outcome: String,
    pub reason: String,
}

/// What is known about one user.
#[derive(Debug, Clone, Default)]
pub struct WhyInputs {
    pub user: String,
    pub now_ms: i64,
    /// Whether a server runs on this database now (`None`: the caller cannot tell).
    pub server_running: Option<bool>,
    /// The supervisor's state for the user's trader, its reason and since when.
    pub trader_state: Option<(String, Option<String>, i64)>,
    /// The Monitor's newest run (its time and checks), if any.
    pub checks: Option<(i64, Vec<CheckResult>)>,
    /// Uncleared guard locks of this user.
    pub locks: Vec<GuardLock>,
    /// The newest decisions, newest first.
    pub decisions: Vec<DecisionView>,
    /// The newest guard blocks, newest first (failure point, symbol, reason, at).
    pub guard_blocks: Vec<DecisionView>,
}

/// One reason the user is not trading (or not trading everything).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Block {
    pub failure_point: String,
    /// `supervisor`, `lock`, `monitor` or `decision`.
    pub source: String,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// What ends it.
    pub unblocks: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WhyAnswer {
    pub user: String,
    /// `trading`, `blocked` (some or all entries refused) or `not_trading`.
    pub verdict: String,
    pub summary: String,
    pub blocks: Vec<Block>,
    pub last_decision: Option<DecisionView>,
    /// The newest guard blocks (for context; a lock above is what holds now).
    pub recent_guard_blocks: Vec<DecisionView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monitor_checked_at: Option<String>,
}

fn healing_of(failure_point: &str) -> String {
    CATALOG
        .iter()
        .find(|point| point.id.as_str() == failure_point)
        .map(|point| point.healing.describe())
        .unwrap_or_else(|| "see the failure-point catalog".to_owned())
}

/// Every block on the user, each with since, until (when known) and what un-blocks it.
pub fn explain(inputs: &WhyInputs) -> WhyAnswer {
    let mut blocks = Vec::new();
    let mut stopped_entirely = false;
    match &inputs.trader_state {
        Some((state, reason, since_ms)) => {
            let (failure_point, unblocks) = match state.as_str() {
                "quarantined" => (
                    catalog::SYS_PROCESS,
                    "the Healer re-admits the user after its cool-down ([healer] readmit_cooldown_secs); or fix the crash and restart the server".to_owned(),
                ),
                "halted" => (
                    catalog::SYS_CREDENTIALS,
                    "set working API credentials in the user's environment variables and restart the server".to_owned(),
                ),
                "restarting" | "crashed" => {
                    (catalog::SYS_PROCESS, "the supervisor restarts it after the backoff".to_owned())
                }
                "escalated" => (catalog::SYS_PROCESS, "the service manager restarts the process".to_owned()),
                "paused" => (
                    catalog::SYS_PROCESS,
                    "an operator paused it: POST /api/admin/users/<id>/resume (a server restart also resumes it)"
                        .to_owned(),
                ),
                _ => (catalog::SYS_PROCESS, String::new()),
            };
            let server_down = inputs.server_running == Some(false);
            if !unblocks.is_empty() {
                stopped_entirely = true;
                blocks.push(Block {
                    failure_point: failure_point.as_str().to_owned(),
                    source: "supervisor".to_owned(),
                    detail: format!(
                        "trader {state}{}",
                        reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default()
                    ),
                    since: Some(rfc3339_ms(*since_ms)),
                    until: None,
                    unblocks,
                });
            } else if server_down {
                stopped_entirely = true;
                blocks.push(Block {
                    failure_point: catalog::SYS_PROCESS.as_str().to_owned(),
                    source: "supervisor".to_owned(),
                    detail: "no server is running on this database".to_owned(),
                    since: None,
                    until: None,
                    unblocks: "start it: bulwark run".to_owned(),
                });
            }
        }
        None => {
            stopped_entirely = true;
            blocks.push(Block {
                failure_point: catalog::SYS_PROCESS.as_str().to_owned(),
                source: "supervisor".to_owned(),
                detail: "the user is not known to this database (never started)".to_owned(),
                since: None,
                until: None,
                unblocks: "add the user to the config and run the server".to_owned(),
            });
        }
    }
    for lock in inputs.locks.iter().filter(|lock| lock.holds_at(inputs.now_ms)) {
        let scope = lock.symbol.as_ref().map_or("every new entry".to_owned(), |s| format!("new entries on {s}"));
        if lock.symbol.is_none() {
            stopped_entirely = true;
        }
        // On an accelerated venue (paper) the lock runs on market time: both clocks are shown.
        let (since, until) = if lock.venue_differs() {
            (
                format!("{} (venue time {})", rfc3339_ms(lock.set_at_ms), rfc3339_ms(lock.set_at_venue_ms)),
                format!("{} (venue time {})", rfc3339_ms(lock.until_ms), rfc3339_ms(lock.until_venue_ms)),
            )
        } else {
            (rfc3339_ms(lock.set_at_ms), rfc3339_ms(lock.until_ms))
        };
        blocks.push(Block {
            failure_point: lock.failure_point.clone(),
            source: "lock".to_owned(),
            detail: format!("{scope} blocked: {}", lock.reason),
            since: Some(since),
            unblocks: format!("clears itself at {until}"),
            until: Some(until),
        });
    }
    if let Some((_, checks)) = &inputs.checks {
        for check in checks {
            if !matches!(check.status, CheckStatus::Warn | CheckStatus::Critical) {
                continue;
            }
            let names_user = check.users.iter().any(|user| user.as_str() == inputs.user);
            let everyone = check.users.is_empty() && check.status == CheckStatus::Critical;
            let already = blocks.iter().any(|b| b.failure_point == check.id.as_str());
            if (names_user || everyone) && !already {
                blocks.push(Block {
                    failure_point: check.id.as_str().to_owned(),
                    source: "monitor".to_owned(),
                    detail: format!(
                        "{} {}: {}",
                        check.status.as_str(),
                        if everyone { "(every user)" } else { "" },
                        check.detail
                    )
                    .replace("  ", " "),
                    since: check.since_ms.map(rfc3339_ms),
                    until: check.until_ms.map(rfc3339_ms),
                    unblocks: healing_of(check.id.as_str()),
                });
            }
        }
    }
    let last_decision = inputs.decisions.first().cloned();
    if let Some(last) = &last_decision
        && matches!(last.outcome.as_str(), "skipped" | "blocked")
        && !stopped_entirely
    {
        let failure_point = last.reason.split(':').next().filter(|id| catalog_has(id)).unwrap_or("decision");
        blocks.push(Block {
            failure_point: failure_point.to_owned(),
            source: "decision".to_owned(),
            detail: format!("last iteration on {} was {}: {}", last.symbol, last.outcome, last.reason),
            since: Some(rfc3339_ms(last.decided_at_ms)),
            until: None,
            unblocks: if failure_point == "decision" {
                "the next candle is tried again".to_owned()
            } else {
                healing_of(failure_point)
            },
        });
    }
    let verdict = if stopped_entirely {
        "not_trading"
    } else if blocks.is_empty() {
        "trading"
    } else {
        "blocked"
    };
    let summary = match verdict {
        "trading" => match &last_decision {
            Some(last) => format!(
                "trading; last decision {} on {} at {}: {}",
                last.outcome,
                last.symbol,
                rfc3339_ms(last.decided_at_ms),
                last.reason
            ),
            None => "trading; no decision yet".to_owned(),
        },
        _ => {
            let ids: Vec<&str> = blocks.iter().map(|b| b.failure_point.as_str()).collect();
            format!(
                "{}: {}",
                if verdict == "not_trading" { "not trading" } else { "trading with blocks" },
                ids.join(", ")
            )
        }
    };
    WhyAnswer {
        user: inputs.user.clone(),
        verdict: verdict.to_owned(),
        summary,
        blocks,
        last_decision,
        recent_guard_blocks: inputs.guard_blocks.clone(),
        monitor_checked_at: inputs.checks.as_ref().map(|(ts, _)| rfc3339_ms(*ts)),
    }
}

fn catalog_has(id: &str) -> bool {
    CATALOG.iter().any(|point| point.id.as_str() == id)
}

pub fn render_text(answer: &WhyAnswer) -> String {
    let mut out = format!("{}: {}\n", answer.user, answer.summary);
    for block in &answer.blocks {
        out.push_str(&format!("  [{}] {} ({})\n", block.failure_point, block.detail, block.source));
        if let Some(since) = &block.since {
            out.push_str(&format!("      since {since}"));
            if let Some(until) = &block.until {
                out.push_str(&format!(", until {until}"));
            }
            out.push('\n');
        }
        out.push_str(&format!("      unblocks: {}\n", block.unblocks));
    }
    if !answer.recent_guard_blocks.is_empty() {
        out.push_str("  recent guard blocks:\n");
        for block in answer.recent_guard_blocks.iter().take(5) {
            out.push_str(&format!(
                "    {} {} {}: {}\n",
                rfc3339_ms(block.decided_at_ms),
                block.symbol,
                block.outcome,
                block.reason
            ));
        }
    }
    if let Some(at) = &answer.monitor_checked_at {
        out.push_str(&format!("  (failure points as checked by the Monitor at {at})\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Symbol, UserId};

    fn check(id: &str, status: CheckStatus, users: &[&str]) -> CheckResult {
        let point = catalog::entry(catalog::FailurePointId::parse(id).unwrap());
        CheckResult {
            id: point.id,
            category: point.category,
            priority: point.priority,
            status,
            detail: "3 of 4 candle fetches failed".into(),
            value: None,
            since_ms: Some(1_000),
            until_ms: None,
            users: users.iter().map(|u| UserId::new(u).unwrap()).collect(),
        }
    }

    fn running() -> Option<(String, Option<String>, i64)> {
        Some(("running".into(), None, 0))
    }

    fn decision(outcome: &str, reason: &str) -> DecisionView {
        DecisionView { decided_at_ms: 5_000, symbol: "BTCUSDT".into(), outcome: outcome.into(), reason: reason.into() }
    }

    #[test]
    fn a_trading_user_gets_trading_and_its_last_decision() {
        let answer = explain(&WhyInputs {
            user: "u1".into(),
            trader_state: running(),
            checks: Some((9_000, vec![check("SYS-EXCHANGE-API", CheckStatus::Ok, &[])])),
            decisions: vec![decision("hold", "flat; no crossover")],
            ..WhyInputs::default()
        });
        assert_eq!(answer.verdict, "trading");
        assert!(answer.summary.contains("hold on BTCUSDT"), "{}", answer.summary);
        assert!(answer.blocks.is_empty());
    }

    #[test]
    fn a_failing_exchange_check_naming_the_user_is_a_block_with_its_healing() {
        let answer = explain(&WhyInputs {
            user: "u1".into(),
            trader_state: running(),
            checks: Some((9_000, vec![check("SYS-EXCHANGE-API", CheckStatus::Critical, &["u1", "u2"])])),
            decisions: vec![decision("skipped", "candles unavailable: exchange unavailable")],
            ..WhyInputs::default()
        });
        assert_eq!(answer.verdict, "blocked");
        let ids: Vec<&str> = answer.blocks.iter().map(|b| b.failure_point.as_str()).collect();
        assert_eq!(ids, ["SYS-EXCHANGE-API", "decision"]);
        assert!(answer.summary.contains("SYS-EXCHANGE-API"));
        let other = explain(&WhyInputs {
            user: "u3".into(),
            trader_state: running(),
            checks: Some((9_000, vec![check("SYS-EXCHANGE-API", CheckStatus::Critical, &["u1"])])),
            ..WhyInputs::default()
        });
        assert_eq!(other.verdict, "trading");
    }

    #[test]
    fn quarantine_and_a_holding_kill_switch_stop_the_user_an_expired_lock_does_not() {
        let lock = GuardLock {
            id: 1,
            user: UserId::new("u2").unwrap(),
            failure_point: "SIG-KILL-SWITCH".into(),
            symbol: None,
            reason: "drawdown 6.1 % >= 5 %".into(),
            values: serde_json::json!({}),
            set_at_ms: 1_000,
            until_ms: 10_000,
            set_at_venue_ms: 1_000,
            until_venue_ms: 10_000,
        };
        let answer = explain(&WhyInputs {
            user: "u2".into(),
            now_ms: 5_000,
            trader_state: Some(("quarantined".into(), Some("4 failures within 60 s".into()), 2_000)),
            locks: vec![lock.clone()],
            ..WhyInputs::default()
        });
        assert_eq!(answer.verdict, "not_trading");
        assert_eq!(answer.blocks.len(), 2);
        assert_eq!(answer.blocks[1].until.as_deref(), Some("1970-01-01T00:00:10.000Z"));
        let later = explain(&WhyInputs {
            user: "u2".into(),
            now_ms: 10_000,
            trader_state: running(),
            locks: vec![GuardLock { symbol: Some(Symbol::new("BTCUSDT").unwrap()), ..lock.clone() }],
            ..WhyInputs::default()
        });
        assert_eq!(later.verdict, "trading");
        // On an accelerated venue both clocks are named.
        let paper = GuardLock { set_at_venue_ms: 86_400_000, until_venue_ms: 86_400_000 + 6 * 3_600_000, ..lock };
        let answer = explain(&WhyInputs {
            user: "u2".into(),
            now_ms: 5_000,
            trader_state: running(),
            locks: vec![paper],
            ..WhyInputs::default()
        });
        assert_eq!(
            answer.blocks[0].until.as_deref(),
            Some("1970-01-01T00:00:10.000Z (venue time 1970-01-02T06:00:00.000Z)")
        );
        assert!(answer.blocks[0].unblocks.contains("venue time"), "{:?}", answer.blocks[0]);
    }
}
