//! The Healer: every `[healer] interval_secs`, and at once when the Monitor finds an entry newly
//! critical, it takes the Monitor's newest run and carries out the healing action of each failing
//! failure point, appending one line per action to `<log_dir>/failure_point_healing.jsonl`:
//! `{"ts", "failure_point", "action", "result", "detail"}`, the result one of [`HealingResult`]:
//! `healed` only when a re-check of the failure point after the action (a fresh monitor run) finds
//! it ok; `no_effect` when the action ran and the point is still failing; `failed` when the action
//! itself errored; `reported` for a failure point whose healing is manual (logged once per failing
//! episode, with what an operator should do); `skipped` when there was nothing to do, or the
//! budget did not allow it.
//!
//! Every (failure point, action) pair has a retry budget ([`HealingBudget`]: `attempts_max` within
//! `budget_window`, each attempt waiting twice as long after the previous one as that one did), so
//! healing never loops; only actions that can change something spend it.
//!
//! Actions: clear kill switches and probations found past their expiry (reporting how late);
//! refresh market data (a poll now); restore a missing shipped config file from the copy compiled
//! into the binary (never over an existing file; shipped files hold no secret); re-admit a
//! quarantined user after its cool-down; reconcile a user's orders (unresolved orders looked up,
//! orphans cancelled, positions re-read); refresh intelligence; check the database.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde::Serialize;

use crate::actors::Directory;
use crate::actors::intelligence::RefreshAll;
use crate::actors::market_data::Poll;
use crate::actors::monitor::LatestChecks;
use crate::actors::order_router::ReconcileUser;
use crate::actors::persistence;
use crate::clock::{Clock, rfc3339_ms};
use crate::domain::UserId;
use crate::failure_points::catalog::{self, FailurePointId, Healing};
use crate::failure_points::monitor::{CheckResult, CheckStatus};
use crate::supervision::root::ReadmitUser;

/// Longest wait for one healing action's answer.
const ACTION_TIMEOUT: Duration = Duration::from_secs(30);

/// The wait before a second attempt of one (failure point, action); it doubles with each further
/// attempt in the budget window.
const ATTEMPT_BACKOFF_MS_INITIAL: i64 = 10_000;

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

/// Heal now: the Monitor found these entries newly critical.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct HealNow {
    pub failure_points: Vec<FailurePointId>,
}

/// A monitor run happened (the Monitor sends each one): actions waiting for their verdict are
/// judged on it.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct MonitorRan {
    pub ts_ms: i64,
    pub results: Vec<CheckResult>,
}

/// One healing pass over every failing entry of the Monitor's newest run (the timer sends it;
/// tests too). Answers with the lines it logged; `Err` when a pass is under way already.
#[derive(Debug, Message)]
#[rtype(result = "Result<Vec<HealingRecord>, String>")]
pub struct RunHealing;

pub struct Healer {
    settings: Arc<HealerSettings>,
    directory: Arc<Directory>,
    clock: Arc<dyn Clock>,
    readmit: Recipient<ReadmitUser>,
    planner: HealingPlanner,
    running: bool,
    /// Actions that ran, waiting for the monitor runs after them (written by passes, judged on
    /// every `MonitorRan`).
    verdicts: PendingVerdicts,
}

/// Which actions a pass runs (pure: time is passed in): budgets, readiness, and what was already
/// logged once in a failing episode.
#[derive(Debug)]
pub struct HealingPlanner {
    settings: Arc<HealerSettings>,
    budget: HealingBudget,
    /// Failure points whose "nothing to do" (manual healing, or not ready yet) was already logged
    /// in their current failing episode.
    logged_once: BTreeSet<FailurePointId>,
}

impl std::fmt::Debug for Healer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Healer").field("running", &self.running).finish()
    }
}

impl Healer {
    pub fn new(
        settings: Arc<HealerSettings>,
        directory: Arc<Directory>,
        clock: Arc<dyn Clock>,
        readmit: Recipient<ReadmitUser>,
    ) -> Self {
        let planner = HealingPlanner::new(settings.clone());
        Self { settings, directory, clock, readmit, planner, running: false, verdicts: PendingVerdicts::default() }
    }

    fn log(&self, records: &[HealingRecord]) {
        if records.is_empty() {
            return;
        }
        for failed in records.iter().filter(|r| r.result == HealingResult::Failed) {
            crate::actors::notifier::notify(
                &self.directory,
                format!("healing_failed:{}:{}", failed.failure_point, failed.action),
                crate::notify::Severity::Warning,
                format!("healing {} for {} failed: {}", failed.action, failed.failure_point, failed.detail),
            );
        }
        let mut text = String::new();
        for record in records {
            text.push_str(&serde_json::to_string(record).unwrap_or_default());
            text.push('\n');
            let (failure_point, action, result) = (&record.failure_point, &record.action, record.result.as_str());
            match record.result {
                HealingResult::Failed | HealingResult::NoEffect => {
                    tracing::warn!(target: "healer", failure_point, action, "{result}: {}", record.detail)
                }
                _ => tracing::info!(target: "healer", failure_point, action, "{result}: {}", record.detail),
            }
        }
        let path = self.settings.healing_log_path();
        let written = crate::logging::append_rotating(&path, &text, crate::limits::FAILURE_POINT_LOG_BYTES_MAX);
        if let Err(error) = written {
            tracing::error!(%error, path = %path.display(), "healer: cannot append to the healing log");
        }
    }

    fn pass(
        &mut self,
        only: Option<Vec<FailurePointId>>,
    ) -> ResponseActFuture<Self, Result<Vec<HealingRecord>, String>> {
        if self.running {
            return Box::pin(fut::ready(Err("a healing pass is already under way".to_owned())));
        }
        self.running = true;
        let monitor = self.directory.monitor().ok();
        let latest = async move {
            match monitor {
                Some(monitor) => monitor.send(LatestChecks).timeout(ACTION_TIMEOUT).await.ok().flatten(),
                None => None,
            }
        };
        Box::pin(latest.into_actor(self).then(move |latest, healer, _| {
            // No run yet (the Monitor is starting): nothing to heal.
            let (planned, skipped) = match &latest {
                Some(run) => healer.planner.plan(&run.results, only.as_deref(), healer.clock.now_ms()),
                None => (Vec::new(), Vec::new()),
            };
            healer.log(&skipped);
            let already_logged = skipped.len();
            let nothing_failing_note = latest.as_ref().filter(|_| only.is_none()).map(|run| {
                let count = |status| run.results.iter().filter(|r| r.status == status).count();
                HealingRecord {
                    ts: rfc3339_ms(healer.clock.now_ms()),
                    failure_point: "*".to_owned(),
                    action: "healing_pass".to_owned(),
                    result: HealingResult::Skipped,
                    detail: format!(
                        "nothing to heal in the monitor run of {}: {} ok, {} unknown (a check that cannot run has nothing to heal), {} already handled",
                        rfc3339_ms(run.ts_ms),
                        count(CheckStatus::Ok),
                        count(CheckStatus::Unknown),
                        count(CheckStatus::Warn) + count(CheckStatus::Critical),
                    ),
                }
            });
            let context = ActionContext {
                settings: healer.settings.clone(),
                directory: healer.directory.clone(),
                clock: healer.clock.clone(),
                readmit: healer.readmit.clone(),
            };
            let work = async move {
                let mut outcomes = Vec::new();
                for planned in planned {
                    let acted_at_ms = context.clock.now_ms();
                    let outcome = planned.action.run(&planned.check, &context).await;
                    outcomes.push((planned, acted_at_ms, outcome));
                }
                outcomes
            };
            let nothing_failing = nothing_failing_note;
            work.into_actor(healer).map(move |outcomes, healer, _| {
                healer.running = false;
                let mut all = skipped;
                for (planned, acted_at_ms, outcome) in outcomes {
                    let line = |result, detail| HealingRecord {
                        ts: rfc3339_ms(healer.clock.now_ms()),
                        failure_point: planned.failure_point.as_str().to_owned(),
                        action: planned.action.name().to_owned(),
                        result,
                        detail,
                    };
                    match outcome {
                        ActionOutcome::Failed(detail) => all.push(line(HealingResult::Failed, detail)),
                        ActionOutcome::Skipped(detail) => all.push(line(HealingResult::Skipped, detail)),
                        // Healed or not is for the monitor runs after it to say.
                        ActionOutcome::Ran(detail) => {
                            let (id, action) = (planned.failure_point.as_str(), planned.action.name());
                            let window_ms = (2 * healer.settings.monitor_interval.as_millis() as i64)
                                .max(healer.planner.budget.next_attempt_ms(id, action, acted_at_ms) - acted_at_ms);
                            healer.verdicts.add(PendingVerdict {
                                failure_point: planned.failure_point,
                                action,
                                detail,
                                acted_at_ms,
                                decide_by_ms: acted_at_ms + window_ms,
                            });
                        }
                    }
                }
                // A pass with nothing to do still leaves a line: the log shows the Healer is alive.
                if all.is_empty()
                    && let Some(note) = nothing_failing
                {
                    all.push(note);
                }
                healer.log(&all[already_logged..]);
                Ok(all)
            })
        }))
    }
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
    check: CheckResult,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    ClearOverdueLocks,
    RefreshMarketData,
    RestoreConfig,
    ReadmitQuarantined,
    ReconcileUsers,
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
            Action::VerifyDatabase => "verify_database",
            Action::RefreshIntelligence => "refresh_intelligence",
            Action::AwaitBreakerProbe => "await_breaker_probe",
        }
    }
}

impl Action {
    /// Why the action has nothing to do for this result now (`None`: it is ready to run).
    fn not_ready(self, check: &CheckResult, now_ms: i64, settings: &HealerSettings) -> Option<String> {
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
            Action::ReconcileUsers if check.users.is_empty() => Some(format!("no user named: {}", check.detail)),
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
fn action_for(result: &CheckResult) -> Option<Action> {
    use catalog::*;
    Some(match result.id {
        SIG_KILL_SWITCH | STATE_KILL_SWITCH | SIG_SYMBOL_PROBATION | STATE_PROBATION => Action::ClearOverdueLocks,
        SYS_EXCHANGE_API | DATA_MISSING | DATA_CORRUPT => Action::RefreshMarketData,
        CFG_MISSING => Action::RestoreConfig,
        SYS_PROCESS => Action::ReadmitQuarantined,
        STATE_ORPHAN_ORDERS | STATE_POSITION_SYNC | STATE_UNRESOLVED_ORDERS => Action::ReconcileUsers,
        SYS_DATABASE => Action::VerifyDatabase,
        SYS_INTEL_API => Action::RefreshIntelligence,
        SYS_CIRCUIT_BREAKER => Action::AwaitBreakerProbe,
        _ => return None,
    })
}

struct ActionContext {
    settings: Arc<HealerSettings>,
    directory: Arc<Directory>,
    clock: Arc<dyn Clock>,
    readmit: Recipient<ReadmitUser>,
}

impl Action {
    async fn run(self, check: &CheckResult, context: &ActionContext) -> ActionOutcome {
        match self {
            Action::ClearOverdueLocks => clear_overdue_locks(context).await,
            Action::RefreshMarketData => refresh_market_data(context).await,
            Action::RestoreConfig => restore_config(&context.settings),
            Action::ReadmitQuarantined => readmit(check, context).await,
            Action::ReconcileUsers => reconcile(check, context).await,
            // `not_ready` always holds for it: the breaker heals itself.
            Action::AwaitBreakerProbe => {
                ActionOutcome::Skipped(format!("the breaker probes by itself: {}", check.detail))
            }
            Action::RefreshIntelligence => refresh_intelligence(context).await,
            Action::VerifyDatabase => verify_database(context).await,
        }
    }
}

/// A market data poll now. It ran only if it asked the exchange for candles: a poll that found the
/// exchange unanswered, or every fetch refused (an open breaker), changed nothing.
async fn refresh_market_data(context: &ActionContext) -> ActionOutcome {
    let market_data = match context.directory.market_data() {
        Ok(market_data) => market_data,
        Err(error) => return ActionOutcome::Skipped(format!("{error}; its supervisor restarts it")),
    };
    match market_data.send(Poll).timeout(ACTION_TIMEOUT).await {
        Ok(report) if report.skipped_busy => {
            ActionOutcome::Skipped("a market data poll was already running".to_owned())
        }
        Ok(report) if report.server_time_ms.is_none() => {
            ActionOutcome::Failed("polled now: the exchange did not answer".to_owned())
        }
        Ok(report) => ActionOutcome::Ran(format!(
            "polled now: {} feed(s) fetched, {} candle window(s) delivered",
            report.fetched, report.delivered
        )),
        Err(error) => ActionOutcome::Failed(format!("market data did not answer: {error}")),
    }
}

async fn refresh_intelligence(context: &ActionContext) -> ActionOutcome {
    let intelligence = match context.directory.intelligence() {
        Ok(intelligence) => intelligence,
        Err(error) => return ActionOutcome::Skipped(format!("{error}; its supervisor restarts it")),
    };
    match intelligence.send(RefreshAll).timeout(ACTION_TIMEOUT).await {
        Ok((0, failures)) if failures.is_empty() => {
            ActionOutcome::Skipped("no series due for a refresh (fetched moments ago)".to_owned())
        }
        Ok((refreshed, failures)) if failures.is_empty() => ActionOutcome::Ran(format!("refreshed {refreshed} series")),
        Ok((refreshed, failures)) => {
            ActionOutcome::Failed(format!("refreshed {refreshed} series; failed: {}", failures.join("; ")))
        }
        Err(error) => ActionOutcome::Failed(format!("the intelligence actor did not answer: {error}")),
    }
}

/// The database's integrity, then a replay of the outbox now (without waiting for its backoff):
/// the monitor runs after it (SYS-DATABASE: refusals, the outbox) say whether writes go through.
async fn verify_database(context: &ActionContext) -> ActionOutcome {
    let checked =
        tokio::time::timeout(ACTION_TIMEOUT, persistence::run(&context.directory, |store| store.quick_check()))
            .await
            .unwrap_or_else(|_| Err(crate::persistence::StoreError::Unavailable("no answer in time".to_owned())));
    match checked {
        Ok(true) => {
            let replayed = match context.directory.persistence() {
                Ok(persistence) => persistence.send(persistence::ReplayNow).timeout(ACTION_TIMEOUT).await.ok(),
                Err(_) => None,
            };
            let waiting = match replayed {
                Some(depth) => format!("replayed the outbox now: {depth} record(s) still wait"),
                None => "the outbox could not be replayed now (persistence did not answer)".to_owned(),
            };
            ActionOutcome::Ran(format!("integrity check ok; {waiting}"))
        }
        Ok(false) => ActionOutcome::Failed(
            "the integrity check fails: stop the server and restore the database from a backup".to_owned(),
        ),
        Err(error) => ActionOutcome::Failed(format!("the database cannot be reached: {error}")),
    }
}

async fn clear_overdue_locks(context: &ActionContext) -> ActionOutcome {
    let now_ms = context.clock.now_ms();
    let clearing = persistence::run(&context.directory, move |store| {
        let mut cleared = Vec::new();
        for lock in store.uncleared_guard_locks(None)? {
            if !lock.holds_at(now_ms) && store.clear_guard_lock(lock.id, now_ms, "healer")? {
                cleared.push(lock);
            }
        }
        Ok(cleared)
    });
    let cleared = tokio::time::timeout(ACTION_TIMEOUT, clearing)
        .await
        .unwrap_or_else(|_| Err(crate::persistence::StoreError::Unavailable("no answer in time".to_owned())));
    match cleared {
        Ok(cleared) if cleared.is_empty() => ActionOutcome::Skipped(
            "no lock is past its expiry; the ones in force clear themselves at their until".to_owned(),
        ),
        Ok(cleared) => {
            let each: Vec<String> = cleared
                .iter()
                .map(|lock| {
                    format!(
                        "{} {} of {}{} (until {}, cleared {} s late)",
                        lock.failure_point,
                        lock.id,
                        lock.user,
                        lock.symbol.as_ref().map(|s| format!(" on {s}")).unwrap_or_default(),
                        rfc3339_ms(lock.until_ms),
                        lock.overdue_ms(now_ms) / 1_000
                    )
                })
                .collect();
            ActionOutcome::Ran(format!("cleared {}: {}", cleared.len(), each.join("; ")))
        }
        Err(error) => ActionOutcome::Failed(format!("locks could not be read or cleared: {error}")),
    }
}

/// Writes the shipped copy of a missing config file. Never over an existing file (`create_new`).
fn restore_config(settings: &HealerSettings) -> ActionOutcome {
    let Some(path) = &settings.config_file else {
        return ActionOutcome::Skipped("the server runs on its embedded default: no config file to restore".to_owned());
    };
    if path.exists() {
        return ActionOutcome::Skipped(format!("{} exists again; nothing restored", path.display()));
    }
    let shipped = match crate::config::shipped_config(path) {
        Some(shipped) if settings.config_file_is_shipped => shipped,
        _ => {
            return ActionOutcome::Skipped(format!(
                "{} is not a file bulwark ships, or was changed from it: restore it from your own copy (the server runs on what it loaded)",
                path.display()
            ));
        }
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && let Err(error) = std::fs::create_dir_all(parent)
    {
        return ActionOutcome::Failed(format!("cannot create {}: {error}", parent.display()));
    }
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .and_then(|mut file| file.write_all(shipped.as_bytes()).and_then(|()| file.sync_all()));
    match written {
        Ok(()) => ActionOutcome::Ran(format!(
            "restored {} from the shipped default ({} bytes)",
            path.display(),
            shipped.len()
        )),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            ActionOutcome::Skipped(format!("{} appeared meanwhile; not overwritten", path.display()))
        }
        Err(error) => ActionOutcome::Failed(format!("cannot write {}: {error}", path.display())),
    }
}

async fn readmit(check: &CheckResult, context: &ActionContext) -> ActionOutcome {
    // `Action::not_ready` made sure users are named and their cool-down is over.
    let cooldown_ms = context.settings.readmit_cooldown.as_millis() as i64;
    let mut readmitted = Vec::new();
    let mut refused = Vec::new();
    for user in &check.users {
        let reason = format!("re-admitted by the healer after a cool-down of {} s", cooldown_ms / 1_000);
        match context.readmit.send(ReadmitUser { user: user.clone(), reason }).timeout(ACTION_TIMEOUT).await {
            Ok(true) => readmitted.push(user.clone()),
            _ => refused.push(user.clone()),
        }
    }
    match (readmitted.is_empty(), refused.is_empty()) {
        (false, true) => ActionOutcome::Ran(format!("re-admitted {}", names(&readmitted))),
        (false, false) => {
            ActionOutcome::Ran(format!("re-admitted {}; not re-admitted: {}", names(&readmitted), names(&refused)))
        }
        _ => ActionOutcome::Failed(format!(
            "not re-admitted (no longer quarantined, or shutting down): {}",
            names(&refused)
        )),
    }
}

async fn reconcile(check: &CheckResult, context: &ActionContext) -> ActionOutcome {
    if check.users.is_empty() {
        return ActionOutcome::Skipped(format!("no user named: {}", check.detail));
    }
    let Ok(router) = context.directory.order_router() else {
        return ActionOutcome::Skipped("the order router is restarting".to_owned());
    };
    let mut done = Vec::new();
    let mut failed = Vec::new();
    for user in &check.users {
        // The user's trader is running: it owns its positions (no re-sync here), and one pass that
        // cannot explain a position is not enough to halt it.
        let request = ReconcileUser { user: user.clone(), symbols: Vec::new(), settled: false };
        match router.send(request).timeout(ACTION_TIMEOUT).await {
            Ok(Ok(report)) => done.push(format!("{user}: {report:?}")),
            Ok(Err(error)) => failed.push(format!("{user}: {error}")),
            Err(error) => failed.push(format!("{user}: the order router did not answer ({error})")),
        }
    }
    if failed.is_empty() {
        ActionOutcome::Ran(done.join("; "))
    } else {
        ActionOutcome::Failed(format!(
            "{}{}",
            failed.join("; "),
            if done.is_empty() { String::new() } else { format!("; done: {}", done.join("; ")) }
        ))
    }
}

fn names(users: &[UserId]) -> String {
    users.iter().map(UserId::as_str).collect::<Vec<_>>().join(", ")
}

impl Actor for Healer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(self.settings.interval, |_, ctx| ctx.notify(RunHealing));
    }
}

impl Handler<RunHealing> for Healer {
    type Result = ResponseActFuture<Self, Result<Vec<HealingRecord>, String>>;

    fn handle(&mut self, _: RunHealing, _: &mut Context<Self>) -> Self::Result {
        self.pass(None)
    }
}

impl Handler<MonitorRan> for Healer {
    type Result = ();

    fn handle(&mut self, run: MonitorRan, _: &mut Context<Self>) {
        let decided = self.verdicts.judge(run.ts_ms, &run.results);
        self.log(&decided);
    }
}

impl Handler<HealNow> for Healer {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, message: HealNow, _: &mut Context<Self>) -> Self::Result {
        tracing::info!(
            target: "healer",
            failure_points = ?message.failure_points.iter().map(|id| id.as_str()).collect::<Vec<_>>(),
            "newly critical: healing now"
        );
        Box::pin(self.pass(Some(message.failure_points)).map(|_, _, _| ()))
    }
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

    #[test]
    fn a_missing_shipped_config_is_restored_once_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config").join("fast-monitor.toml");
        let settings = HealerSettings {
            interval: Duration::from_secs(5),
            readmit_cooldown: Duration::from_secs(60),
            attempts_max: 3,
            budget_window: Duration::from_secs(3_600),
            log_dir: dir.path().to_owned(),
            monitor_interval: Duration::from_secs(60),
            config_file: Some(path.clone()),
            config_file_is_shipped: true,
            user_symbols: BTreeMap::new(),
        };
        let outcome = restore_config(&settings);
        assert!(matches!(outcome, ActionOutcome::Ran(_)), "{outcome:?}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), crate::config::shipped_config(&path).unwrap());
        std::fs::write(&path, "# mine").unwrap();
        assert!(matches!(restore_config(&settings), ActionOutcome::Skipped(_)));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "# mine");
        let unknown = HealerSettings { config_file: Some(dir.path().join("custom.toml")), ..settings.clone() };
        let ActionOutcome::Skipped(detail) = restore_config(&unknown) else { panic!("skipped") };
        assert!(detail.contains("not a file bulwark ships"), "{detail}");
        assert!(!dir.path().join("custom.toml").exists());
        // A shipped name whose content the operator changed is not replaced by the defaults.
        std::fs::remove_file(&path).unwrap();
        let edited = HealerSettings { config_file_is_shipped: false, ..settings };
        assert!(matches!(restore_config(&edited), ActionOutcome::Skipped(_)));
        assert!(!path.exists());
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
