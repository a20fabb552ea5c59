//! The Healer's judgement, pure (no actors, no I/O; time is passed in): which healing action each
//! failing failure point gets ([`action_for`], [`Action::not_ready`]), the retry budget with its
//! backoff ([`HealingBudget`]), what a pass runs and what it only logs ([`HealingPlanner`]), and
//! the verdict of an action that ran, from the monitor runs after it ([`PendingVerdicts`]): one of
//! the five [`HealingResult`]s. The Healer actor (`actors::healer`) carries the actions out.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::clock::rfc3339_ms;
use crate::domain::UserId;
use crate::failure_points::catalog::{self, FailurePointId, Healing};
use crate::failure_points::monitor::{CheckResult, CheckStatus};

/// The wait before a second attempt of one (failure point, action); it doubles with each further
/// attempt in the budget window.
pub const ATTEMPT_BACKOFF_MS_INITIAL: i64 = 10_000;

/// What became of a healing action (the `result` of its line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealingResult {
    /// The action ran, and a re-check of its failure point afterwards found it ok.
    Healed,
    /// The action ran; the failure point is still failing (or could not be judged) afterwards.
    NoEffect,
    /// The action itself errored.
    Failed,
    /// Nothing automatic: the report says what an operator should do.
    Reported,
    /// Nothing to do now (nothing to clear, a cool-down running, budget spent, ...).
    Skipped,
}

impl HealingResult {
    pub fn as_str(self) -> &'static str {
        match self {
            HealingResult::Healed => "healed",
            HealingResult::NoEffect => "no_effect",
            HealingResult::Failed => "failed",
            HealingResult::Reported => "reported",
            HealingResult::Skipped => "skipped",
        }
    }
}

/// What an action did, before its failure point is checked again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionOutcome {
    /// It did what it does; a re-check says whether that healed.
    Ran(String),
    Failed(String),
    /// It had nothing to do.
    Skipped(String),
}

/// An action that ran, waiting for the monitor runs after it to say whether it healed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingVerdict {
    pub failure_point: FailurePointId,
    pub action: &'static str,
    pub detail: String,
    /// When it ran: only runs from then on count.
    pub acted_at_ms: i64,
    /// A run from then on that still finds the point failing ends it as `no_effect`.
    pub decide_by_ms: i64,
}

/// Actions waiting for their verdict (pure: the runs are passed in). An action is `healed` when a
/// monitor run after it finds its failure point ok within its window (until the next attempt of
/// it would be allowed, and at least two monitor runs); `no_effect` when a run at the window's end
/// still finds it failing, or cannot tell (nothing shows it ok).
#[derive(Debug, Default)]
pub struct PendingVerdicts {
    pending: Vec<PendingVerdict>,
}

impl PendingVerdicts {
    pub fn add(&mut self, verdict: PendingVerdict) {
        self.pending.push(verdict);
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The lines this monitor run decides.
    pub fn judge(&mut self, run_ts_ms: i64, results: &[CheckResult]) -> Vec<HealingRecord> {
        let mut decided = Vec::new();
        self.pending.retain(|pending| {
            if run_ts_ms < pending.acted_at_ms {
                return true;
            }
            let check = results.iter().find(|r| r.id == pending.failure_point);
            let (result, seen) = match check {
                Some(check) if check.status == CheckStatus::Ok => (HealingResult::Healed, check),
                Some(check) if run_ts_ms >= pending.decide_by_ms => (HealingResult::NoEffect, check),
                _ => return true,
            };
            decided.push(HealingRecord {
                ts: rfc3339_ms(run_ts_ms),
                failure_point: pending.failure_point.as_str().to_owned(),
                action: pending.action.to_owned(),
                result,
                detail: format!(
                    "{}; re-checked by the monitor run of {}: {} ({})",
                    pending.detail,
                    rfc3339_ms(run_ts_ms),
                    seen.status.as_str(),
                    seen.detail
                ),
            });
            false
        });
        decided
    }
}

/// From `[healer]`, `[server]` and the config's source.
#[derive(Debug, Clone)]
pub struct HealerSettings {
    pub interval: Duration,
    pub readmit_cooldown: Duration,
    pub attempts_max: u32,
    pub budget_window: Duration,
    pub log_dir: PathBuf,
    /// `[monitor] interval_secs`: an action's verdict waits at least two runs.
    pub monitor_interval: Duration,
    /// The config file the server runs on; `None` when it runs on the embedded default.
    pub config_file: Option<PathBuf>,
    /// Whether that file, as the server loaded it, was exactly a shipped file: only then is it
    /// restored from the shipped copy (restoring the defaults over an operator's own settings
    /// would change what the next start runs).
    pub config_file_is_shipped: bool,
    /// Each user's configured symbols (reconciliation re-syncs their positions).
    pub user_symbols: BTreeMap<UserId, Vec<crate::domain::Symbol>>,
}

impl HealerSettings {
    pub fn healing_log_path(&self) -> PathBuf {
        self.log_dir.join("failure_point_healing.jsonl")
    }
}

/// Retry budgets: at most `attempts_max` attempts per (failure point, action) within `window_ms`,
/// the second at least [`ATTEMPT_BACKOFF_MS_INITIAL`] after the first, each further one twice as
/// long after the one before. Pure: time is passed in.
#[derive(Debug, Clone)]
pub struct HealingBudget {
    attempts_max: u32,
    window_ms: i64,
    attempts: BTreeMap<(String, String), VecDeque<i64>>,
}

impl HealingBudget {
    pub fn new(attempts_max: u32, window_ms: i64) -> Self {
        Self { attempts_max, window_ms, attempts: BTreeMap::new() }
    }

    /// When the next attempt of this pair may be taken (just after one was taken).
    pub fn next_attempt_ms(&self, failure_point: &str, action: &str, now_ms: i64) -> i64 {
        let key = (failure_point.to_owned(), action.to_owned());
        let Some(attempts) = self.attempts.get(&key) else { return now_ms };
        if attempts.len() as u32 >= self.attempts_max {
            return attempts.front().copied().unwrap_or(now_ms) + self.window_ms;
        }
        let backoff_ms = ATTEMPT_BACKOFF_MS_INITIAL.saturating_mul(1 << attempts.len().saturating_sub(1).min(20));
        attempts.back().copied().unwrap_or(now_ms) + backoff_ms
    }

    /// Takes one attempt if the budget allows; `Err` says when the next one is allowed.
    pub fn try_take(&mut self, failure_point: &str, action: &str, now_ms: i64) -> Result<(), i64> {
        let attempts = self.attempts.entry((failure_point.to_owned(), action.to_owned())).or_default();
        while attempts.front().is_some_and(|at| now_ms - at >= self.window_ms) {
            attempts.pop_front();
        }
        if attempts.len() as u32 >= self.attempts_max {
            return Err(attempts.front().copied().unwrap_or(now_ms) + self.window_ms);
        }
        if let Some(previous_ms) = attempts.back() {
            let backoff_ms = ATTEMPT_BACKOFF_MS_INITIAL.saturating_mul(1 << (attempts.len() - 1).min(20));
            if now_ms - previous_ms < backoff_ms {
                return Err(previous_ms + backoff_ms);
            }
        }
        attempts.push_back(now_ms);
        Ok(())
    }
}

/// One line of the healing log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealingRecord {
    pub ts: String,
    pub failure_point: String,
    pub action: String,
    pub result: HealingResult,
    pub detail: String,
}

/// Which actions a pass runs (pure: time is passed in): budgets, readiness, and what was already
/// logged once in a failing episode.
#[derive(Debug)]
pub struct HealingPlanner {
    settings: Arc<HealerSettings>,
    pub budget: HealingBudget,
    /// Failure points whose "nothing to do" (manual healing, or not ready yet) was already logged
    /// in their current failing episode.
    logged_once: BTreeSet<FailurePointId>,
}

impl HealingPlanner {
    pub fn new(settings: Arc<HealerSettings>) -> Self {
        let budget = HealingBudget::new(settings.attempts_max, settings.budget_window.as_millis() as i64);
        Self { settings, budget, logged_once: BTreeSet::new() }
    }

    /// The actions to run for this pass (budget taken), and the lines for what is skipped.
    /// `only`: the entries a `HealNow` names (else every failing one).
    pub fn plan(
        &mut self,
        results: &[CheckResult],
        only: Option<&[FailurePointId]>,
        now_ms: i64,
    ) -> (Vec<Planned>, Vec<HealingRecord>) {
        let ts = rfc3339_ms(now_ms);
        let failing: Vec<&CheckResult> = results
            .iter()
            .filter(|r| matches!(r.status, CheckStatus::Warn | CheckStatus::Critical))
            .filter(|r| only.is_none_or(|ids| ids.contains(&r.id)))
            .collect();
        if only.is_none() {
            let failing_ids: BTreeSet<FailurePointId> = failing.iter().map(|r| r.id).collect();
            self.logged_once.retain(|id| failing_ids.contains(id));
        }
        let mut planned = Vec::new();
        let mut skipped = Vec::new();
        let mut actions_taken: BTreeSet<&'static str> = BTreeSet::new();
        for result in failing {
            let Some(action) = action_for(result) else {
                if let Healing::Manual(what) = catalog::entry(result.id).healing
                    && self.logged_once.insert(result.id)
                {
                    skipped.push(HealingRecord {
                        ts: ts.clone(),
                        failure_point: result.id.as_str().to_owned(),
                        action: "manual".to_owned(),
                        result: HealingResult::Reported,
                        detail: format!("no automatic healing: {what} ({})", result.detail),
                    });
                }
                continue;
            };
            // Nothing to do yet (a lock that clears itself, a cool-down running): no attempt is
            // spent, and it is logged once per failing episode.
            if let Some(wait) = action.not_ready(result, now_ms, &self.settings) {
                if self.logged_once.insert(result.id) {
                    skipped.push(HealingRecord {
                        ts: ts.clone(),
                        failure_point: result.id.as_str().to_owned(),
                        action: action.name().to_owned(),
                        result: HealingResult::Skipped,
                        detail: wait,
                    });
                }
                continue;
            }
            // One action serves every failure point that asks for it in a pass.
            if actions_taken.contains(action.name()) {
                continue;
            }
            match self.budget.try_take(result.id.as_str(), action.name(), now_ms) {
                Ok(()) => {
                    actions_taken.insert(action.name());
                    planned.push(Planned { failure_point: result.id, action, check: result.clone() })
                }
                Err(next_ms) => skipped.push(HealingRecord {
                    ts: ts.clone(),
                    failure_point: result.id.as_str().to_owned(),
                    action: action.name().to_owned(),
                    result: HealingResult::Skipped,
                    detail: format!(
                        "retry budget ({} attempts per {} s, backing off between them); next attempt allowed at {}",
                        self.settings.attempts_max,
                        self.settings.budget_window.as_secs(),
                        rfc3339_ms(next_ms)
                    ),
                }),
            }
        }
        (planned, skipped)
    }
}

/// An action the planner granted.
#[derive(Debug)]
pub struct Planned {
    pub failure_point: FailurePointId,
    pub action: Action,
    pub check: CheckResult,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    ClearOverdueLocks,
    RefreshMarketData,
    RestoreConfig,
    ReadmitQuarantined,
    ReconcileUsers,
    ReconnectAccountStreams,
    ReconnectMarketStreams,
    VerifyDatabase,
    RefreshIntelligence,
    /// Nothing to do but wait: an open breaker probes by itself after its cool-down.
    AwaitBreakerProbe,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::ClearOverdueLocks => "clear_overdue_locks",
            Action::RefreshMarketData => "refresh_market_data",
            Action::RestoreConfig => "restore_config",
            Action::ReadmitQuarantined => "readmit_quarantined",
            Action::ReconcileUsers => "reconcile_orders_and_positions",
            Action::ReconnectAccountStreams => "reconnect_account_streams",
            Action::ReconnectMarketStreams => "reconnect_market_streams",
            Action::VerifyDatabase => "verify_database",
            Action::RefreshIntelligence => "refresh_intelligence",
            Action::AwaitBreakerProbe => "await_breaker_probe",
        }
    }
}

impl Action {
    /// Why the action has nothing to do for this result now (`None`: it is ready to run).
    pub fn not_ready(self, check: &CheckResult, now_ms: i64, settings: &HealerSettings) -> Option<String> {
        use catalog::*;
        match self {
            // A lock that still holds ends by itself; only the STATE-* entries (locks past their
            // expiry) have something to clear.
            Action::ClearOverdueLocks if matches!(check.id, SIG_KILL_SWITCH | SIG_SYMBOL_PROBATION) => Some(format!(
                "nothing to heal: the lock clears itself{}",
                check.until_ms.map(|until| format!(" at {}", rfc3339_ms(until))).unwrap_or_default()
            )),
            Action::ReadmitQuarantined if check.users.is_empty() => {
                Some(format!("no quarantined user (the supervisors restart the rest): {}", check.detail))
            }
            Action::ReadmitQuarantined => {
                let cooldown_ms = settings.readmit_cooldown.as_millis() as i64;
                let since_ms = check.since_ms.unwrap_or(now_ms);
                (now_ms - since_ms < cooldown_ms).then(|| {
                    format!(
                        "{} quarantined; re-admitted once the cool-down ends at {}",
                        names(&check.users),
                        rfc3339_ms(since_ms + cooldown_ms)
                    )
                })
            }
            Action::ReconcileUsers | Action::ReconnectAccountStreams if check.users.is_empty() => {
                Some(format!("no user named: {}", check.detail))
            }
            Action::AwaitBreakerProbe => Some(format!(
                "the breaker lets one probe through by itself{}: {}",
                check.until_ms.map(|until| format!(" at {}", rfc3339_ms(until))).unwrap_or_default(),
                check.detail
            )),
            _ => None,
        }
    }
}

/// The automatic healing of a failing entry, if it has one.
pub fn action_for(result: &CheckResult) -> Option<Action> {
    use catalog::*;
    Some(match result.id {
        SIG_KILL_SWITCH | STATE_KILL_SWITCH | SIG_SYMBOL_PROBATION | STATE_PROBATION => Action::ClearOverdueLocks,
        SYS_EXCHANGE_API | DATA_MISSING | DATA_CORRUPT => Action::RefreshMarketData,
        CFG_MISSING => Action::RestoreConfig,
        SYS_PROCESS => Action::ReadmitQuarantined,
        STATE_ORPHAN_ORDERS | STATE_POSITION_SYNC | STATE_UNRESOLVED_ORDERS => Action::ReconcileUsers,
        SYS_DATABASE => Action::VerifyDatabase,
        SYS_INTEL_API => Action::RefreshIntelligence,
        SYS_USER_STREAM => Action::ReconnectAccountStreams,
        SYS_MARKET_STREAM => Action::ReconnectMarketStreams,
        SYS_CIRCUIT_BREAKER => Action::AwaitBreakerProbe,
        _ => return None,
    })
}

pub fn names(users: &[UserId]) -> String {
    users.iter().map(UserId::as_str).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_allows_attempts_max_per_window_backing_off_then_says_when_the_next_is_allowed() {
        let window_ms = 1_000_000;
        let mut budget = HealingBudget::new(3, window_ms);
        assert_eq!(budget.try_take("CFG-MISSING", "restore_config", 0), Ok(()));
        // The second waits the initial backoff, the third twice that after the second.
        assert_eq!(budget.try_take("CFG-MISSING", "restore_config", 100), Err(ATTEMPT_BACKOFF_MS_INITIAL));
        assert_eq!(budget.try_take("CFG-MISSING", "restore_config", ATTEMPT_BACKOFF_MS_INITIAL), Ok(()));
        let third_ms = 3 * ATTEMPT_BACKOFF_MS_INITIAL;
        assert_eq!(budget.try_take("CFG-MISSING", "restore_config", third_ms - 1), Err(third_ms));
        assert_eq!(budget.try_take("CFG-MISSING", "restore_config", third_ms), Ok(()));
        // Spent: the next is allowed once the first leaves the window.
        assert_eq!(budget.try_take("CFG-MISSING", "restore_config", third_ms + 1), Err(window_ms));
        // Another pair has its own budget.
        assert_eq!(budget.try_take("DATA-MISSING", "refresh_market_data", 200), Ok(()));
    }

    #[test]
    fn an_action_is_healed_only_by_an_ok_run_after_it_and_no_effect_when_its_window_ends_failing() {
        let mut verdicts = PendingVerdicts::default();
        let pending = |id, acted_at_ms, decide_by_ms| PendingVerdict {
            failure_point: id,
            action: "verify_database",
            detail: "integrity check ok".into(),
            acted_at_ms,
            decide_by_ms,
        };
        verdicts.add(pending(catalog::SYS_DATABASE, 1_000, 10_000));
        verdicts.add(pending(catalog::CFG_MISSING, 1_000, 3_000));
        let run = |database: CheckStatus, config: CheckStatus| {
            vec![
                failing(catalog::SYS_DATABASE, database, &[], None, None),
                failing(catalog::CFG_MISSING, config, &[], None, None),
            ]
        };
        // A run from before the action decides nothing, even if ok.
        assert!(verdicts.judge(500, &run(CheckStatus::Ok, CheckStatus::Ok)).is_empty());
        // Still failing inside the window: wait.
        assert!(verdicts.judge(2_000, &run(CheckStatus::Critical, CheckStatus::Critical)).is_empty());
        // The window of the second ends failing: no_effect; the first keeps waiting.
        let decided = verdicts.judge(3_000, &run(CheckStatus::Critical, CheckStatus::Unknown));
        assert_eq!(decided.len(), 1);
        assert_eq!((decided[0].failure_point.as_str(), decided[0].result), ("CFG-MISSING", HealingResult::NoEffect));
        // The outage ends within the first's window: healed, by that run.
        let decided = verdicts.judge(7_000, &run(CheckStatus::Ok, CheckStatus::Ok));
        assert_eq!((decided[0].failure_point.as_str(), decided[0].result), ("SYS-DATABASE", HealingResult::Healed));
        assert!(decided[0].detail.contains("re-checked by the monitor run of"), "{}", decided[0].detail);
        assert!(verdicts.is_empty());
        assert_eq!(serde_json::to_value(HealingResult::NoEffect).unwrap(), "no_effect");
    }

    fn failing(
        id: FailurePointId,
        status: CheckStatus,
        users: &[&str],
        since_ms: Option<i64>,
        until_ms: Option<i64>,
    ) -> CheckResult {
        let point = catalog::entry(id);
        CheckResult {
            id,
            category: point.category,
            priority: point.priority,
            status,
            detail: "detail".into(),
            value: None,
            since_ms,
            until_ms,
            users: users.iter().map(|u| UserId::new(u).unwrap()).collect(),
        }
    }

    fn settings() -> Arc<HealerSettings> {
        Arc::new(HealerSettings {
            interval: Duration::from_secs(5),
            readmit_cooldown: Duration::from_secs(60),
            attempts_max: 2,
            budget_window: Duration::from_secs(3_600),
            log_dir: PathBuf::from("logs"),
            monitor_interval: Duration::from_secs(60),
            config_file: None,
            config_file_is_shipped: false,
            user_symbols: BTreeMap::new(),
        })
    }

    fn actions(planned: &[Planned]) -> Vec<(&'static str, &'static str)> {
        planned.iter().map(|p| (p.failure_point.as_str(), p.action.name())).collect()
    }

    #[test]
    fn nothing_ready_spends_no_attempt_and_is_logged_once_per_episode() {
        use catalog::{SIG_KILL_SWITCH, STATE_PROBATION, SYS_PROCESS};
        let mut planner = HealingPlanner::new(settings());
        let results = vec![
            // A kill switch in force clears itself: no action, and it must not use up the
            // budget that the overdue probation below needs.
            failing(SIG_KILL_SWITCH, CheckStatus::Critical, &["u1"], Some(0), Some(99_000_000)),
            failing(SYS_PROCESS, CheckStatus::Critical, &["u2"], Some(0), None),
            failing(STATE_PROBATION, CheckStatus::Warn, &[], None, None),
        ];
        for pass in 0..5 {
            let (planned, skipped) = planner.plan(&results, None, 10_000 + pass * ATTEMPT_BACKOFF_MS_INITIAL);
            if pass < 2 {
                assert_eq!(actions(&planned), [("STATE-PROBATION", "clear_overdue_locks")], "pass {pass}");
            } else {
                assert!(planned.is_empty(), "budget spent by pass {pass}");
            }
            let waiting: Vec<&str> = skipped
                .iter()
                .filter(|r| r.action != "clear_overdue_locks" || r.failure_point == "SIG-KILL-SWITCH")
                .map(|r| r.failure_point.as_str())
                .collect();
            if pass == 0 {
                assert_eq!(waiting, ["SIG-KILL-SWITCH", "SYS-PROCESS"], "{skipped:?}");
                assert!(skipped[1].detail.contains("cool-down ends"), "{}", skipped[1].detail);
            } else {
                assert!(waiting.is_empty(), "logged once per episode: {skipped:?}");
            }
        }
        // The cool-down ends: the re-admission runs, its own budget untouched by the waiting.
        let (planned, _) = planner.plan(&results, None, 60_000);
        assert_eq!(actions(&planned), [("SYS-PROCESS", "readmit_quarantined")]);
    }
}
