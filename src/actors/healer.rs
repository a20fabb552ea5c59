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

use std::fs::OpenOptions;
use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::actors::Directory;
use crate::actors::intelligence::RefreshAll;
use crate::actors::market_data::{Poll, ReconnectMarketStreams};
use crate::actors::monitor::LatestChecks;
use crate::actors::order_router::{OrderRouter, ReconcileUser, ReconnectAccountStream};
use crate::actors::persistence;
use crate::clock::{Clock, rfc3339_ms};
use crate::domain::UserId;
use crate::failure_points::catalog::FailurePointId;
pub use crate::failure_points::healing::{
    Action, ActionOutcome, HealerSettings, HealingBudget, HealingPlanner, HealingRecord, HealingResult, PendingVerdict,
    PendingVerdicts, Planned, action_for, names,
};
use crate::failure_points::monitor::{CheckResult, CheckStatus};
use crate::supervision::root::ReadmitUser;

/// Longest wait for one healing action's answer.
const ACTION_TIMEOUT: Duration = Duration::from_secs(30);

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
                Some(run) => healer.planner.plan(&run.checks, only.as_deref(), healer.clock.now_ms()),
                None => (Vec::new(), Vec::new()),
            };
            healer.log(&skipped);
            let already_logged = skipped.len();
            let nothing_failing_note = latest.as_ref().filter(|_| only.is_none()).map(|run| {
                let count = |status| run.checks.iter().filter(|r| r.status == status).count();
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
            Action::ReconnectAccountStreams => reconnect_account_streams(check, context).await,
            Action::ReconnectMarketStreams => reconnect_market_streams(context).await,
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

/// Reconnects the market connections that are down now; whether they came back is the next
/// check's to say.
async fn reconnect_market_streams(context: &ActionContext) -> ActionOutcome {
    let market_data = match context.directory.market_data() {
        Ok(market_data) => market_data,
        Err(error) => return ActionOutcome::Skipped(format!("{error}; its supervisor restarts it")),
    };
    match market_data.send(ReconnectMarketStreams).timeout(ACTION_TIMEOUT).await {
        Ok(0) => {
            ActionOutcome::Skipped("no market connection is down now (one under way reports by itself)".to_owned())
        }
        Ok(asked) => ActionOutcome::Ran(format!("{asked} market connection(s) asked to reconnect now")),
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
    each_named_user(check, context, |router, user| async move {
        // The user's trader is running: it owns its positions (no re-sync here), and one pass that
        // cannot explain a position is not enough to halt it.
        let request = ReconcileUser { user: user.clone(), symbols: Vec::new(), settled: false };
        match router.send(request).timeout(ACTION_TIMEOUT).await {
            Ok(Ok(report)) => Ok(format!("{user}: {report:?}")),
            Ok(Err(error)) => Err(format!("{user}: {error}")),
            Err(error) => Err(format!("{user}: the order router did not answer ({error})")),
        }
    })
    .await
}

async fn reconnect_account_streams(check: &CheckResult, context: &ActionContext) -> ActionOutcome {
    each_named_user(check, context, |router, user| async move {
        match router.send(ReconnectAccountStream { user: user.clone() }).timeout(ACTION_TIMEOUT).await {
            Ok(Ok(true)) => Ok(format!("{user}: reconnected, snapshot read on the new connection")),
            Ok(Ok(false)) => Err(format!("{user}: the venue streams no account")),
            Ok(Err(error)) => Err(format!("{user}: {error}")),
            Err(error) => Err(format!("{user}: the order router did not answer ({error})")),
        }
    })
    .await
}

/// Runs `act` with the order router for each user `check` names, one after another; the action
/// failed if any of them did.
async fn each_named_user<Act, Done>(check: &CheckResult, context: &ActionContext, act: Act) -> ActionOutcome
where
    Act: Fn(Addr<OrderRouter>, UserId) -> Done,
    Done: Future<Output = Result<String, String>>,
{
    if check.users.is_empty() {
        return ActionOutcome::Skipped(format!("no user named: {}", check.detail));
    }
    let Ok(router) = context.directory.order_router() else {
        return ActionOutcome::Skipped("the order router is restarting".to_owned());
    };
    let mut done = Vec::new();
    let mut failed = Vec::new();
    for user in &check.users {
        match act(router.clone(), user.clone()).await {
            Ok(report) => done.push(report),
            Err(error) => failed.push(error),
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
    use std::collections::BTreeMap;

    use super::*;

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
}
