//! The Monitor: every `[monitor] interval_secs` it gathers what every failure point is judged on
//! (the supervision tree, market data, the exchange client's budget, the database, the data and
//! log directories, the config file, the guard locks and decisions), has
//! [`failure_points::monitor::evaluate`](crate::failure_points::monitor::evaluate) judge each
//! catalog entry, and
//! - appends one line with every catalog id to `<log_dir>/failure_point_monitor.jsonl`;
//! - stores the run in the database (`monitor_snapshots`, bounded) for history and `bulwark why`;
//! - every `summary_interval_secs` atomically rewrites `<log_dir>/failure_point_monitor_summary.json`
//!   (latest status per id, counts by status and category, active blocks, users not trading);
//! - tells the Healer at once when an entry turns critical.
//!
//! An input it cannot gather makes the checks that need it `unknown`, never `ok`. It is a shared
//! actor, restarted by the root supervisor like the others; it keeps no state that matters across
//! incarnations (a restart forgets only since-when times and counters, which restart from zero).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde_json::{Value, json};

use crate::actors::Directory;
use crate::actors::healer::{HealNow, MonitorRan};
use crate::actors::intelligence::{IntelStatus, Intelligence, ProbeIntel};
use crate::actors::market_data::{FeedStatuses, GetStats, MarketDataStats, MarketStreamStatuses};
use crate::actors::notifier::notify;
use crate::actors::persistence;
use crate::clock::{Clock, rfc3339_ms};
use crate::domain::{ClientOrderId, UserId};
use crate::exchange::Exchange;
use crate::failure_points::catalog::{CATALOG, Category, FailurePointId};
use crate::failure_points::locks::GuardLock;
use crate::failure_points::monitor::{CheckResult, CheckStatus};
use crate::failure_points::monitor::{
    ConfigFileObservation, DatabaseObservation, DirectoryObservation, ExchangeObservation, ExchangeProbe,
    IntelObservation, IntelSeriesObservation, Observations, OrphanObservation, PositionsObservation, ProbeOutcome,
    RunRecord, UnresolvedOrdersObservation, UserStreamObservation, evaluate,
};
use crate::failure_points::why::{self, WhyInputs};
use crate::limits::FAILURE_POINT_LOG_BYTES_MAX;
use crate::notify::Severity;
use crate::persistence::PositionMismatch;
use crate::supervision::root::{GetTreeStatus, TreeStatus};

/// The first run after start comes this soon (or after one interval, if that is shorter).
const FIRST_RUN_AFTER: Duration = Duration::from_secs(5);

/// `PRAGMA quick_check` reads the whole database on the persistence thread: at most this often.
const INTEGRITY_CHECK_INTERVAL_MS: i64 = 10 * 60_000;

/// Re-synced positions and imported fills keep STATE-POSITION-SYNC raised this long.
const POSITION_EVENTS_WINDOW_MS: i64 = 10 * 60_000;

/// Longest wait for any one input of a run.
const GATHER_TIMEOUT: Duration = Duration::from_secs(10);

/// A user as the Monitor knows it from the config.
#[derive(Debug, Clone)]
pub struct MonitoredUser {
    pub id: UserId,
    pub max_open_positions: u32,
    /// The user's configured symbols: the orphan check lists open orders on each (weight 1 each).
    pub symbols: Vec<crate::domain::Symbol>,
}

/// From `[monitor]`, `[server]` and the config's source.
#[derive(Debug, Clone)]
pub struct MonitorSettings {
    pub interval: Duration,
    pub summary_interval: Duration,
    pub log_dir: PathBuf,
    pub data_dir: PathBuf,
    /// The config file the server runs on; `None` when it runs on the embedded default.
    pub config_file: Option<PathBuf>,
    pub users: Vec<MonitoredUser>,
    /// `[guards] enabled = false`.
    pub guards_disabled: bool,
    /// `[monitor] orphan_check_weight_per_minute`.
    pub orphan_check_weight_per_minute: u32,
}

impl MonitorSettings {
    pub fn monitor_log_path(&self) -> PathBuf {
        self.log_dir.join("failure_point_monitor.jsonl")
    }

    pub fn summary_path(&self) -> PathBuf {
        self.log_dir.join("failure_point_monitor_summary.json")
    }
}

/// Run every check now (the timer sends it; tests and the Healer may too). Answers `Err` when a
/// run is already under way.
#[derive(Debug, Message)]
#[rtype(result = "Result<RunRecord, String>")]
pub struct RunChecks;

/// The newest run, if any.
#[derive(Debug, Message)]
#[rtype(result = "Option<RunRecord>")]
pub struct LatestChecks;

pub struct Monitor {
    settings: Arc<MonitorSettings>,
    tree: Recipient<GetTreeStatus>,
    directory: Arc<Directory>,
    exchange: Arc<dyn Exchange>,
    clock: Arc<dyn Clock>,
    /// Set while a run gathers its inputs (one run at a time).
    running: bool,
    /// Market data counters at the previous run (to report what happened since).
    previous_stats: Option<MarketDataStats>,
    previous_run_ms: Option<i64>,
    last_summary_ms: Option<i64>,
    latest: Option<RunRecord>,
    /// Since when each entry has had its current status (this incarnation's view).
    status_since: BTreeMap<FailurePointId, (CheckStatus, i64)>,
    /// Monitor-file writes that failed, and how many of them the previous run reported (the
    /// difference goes to SYS-FILESYSTEM in the next run).
    write_failures: u64,
    write_failures_reported: u64,
    /// When the database's integrity was last checked, and the answer.
    integrity: Option<(i64, bool)>,
    /// The rotating orphan check: the next user, and every user's newest check.
    orphan_cursor: usize,
    orphans: OrphanObservation,
    /// Users the newest run found halted (their accounts are not read); written by `conclude`.
    halted_users: BTreeSet<UserId>,
    /// The newest exchange probe that reached a verdict (not kept back by a breaker); written by
    /// `conclude`, read by SYS-NETWORK while a breaker holds.
    last_verdict_probe: Option<ExchangeProbe>,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor").field("running", &self.running).finish()
    }
}

impl Monitor {
    pub fn new(
        settings: Arc<MonitorSettings>,
        tree: Recipient<GetTreeStatus>,
        directory: Arc<Directory>,
        exchange: Arc<dyn Exchange>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            settings,
            tree,
            directory,
            exchange,
            clock,
            running: false,
            previous_stats: None,
            previous_run_ms: None,
            last_summary_ms: None,
            latest: None,
            status_since: BTreeMap::new(),
            write_failures: 0,
            write_failures_reported: 0,
            integrity: None,
            orphan_cursor: 0,
            orphans: OrphanObservation::default(),
            halted_users: BTreeSet::new(),
            last_verdict_probe: None,
        }
    }

    /// The users this run checks for orphans: from the cursor on, in turn, as many as the run's
    /// share of `[monitor] orphan_check_weight_per_minute` pays for (one weight per symbol; at
    /// least one user). Halted users are passed over (their accounts cannot be read).
    fn next_orphan_batch(&mut self) -> Vec<(UserId, Vec<crate::domain::Symbol>)> {
        let costs = self.orphan_costs();
        let budget = crate::failure_points::monitor::orphan_weight_per_run(
            self.settings.orphan_check_weight_per_minute,
            self.settings.interval.as_millis() as i64,
        );
        let (chosen, next) = crate::failure_points::monitor::orphan_batch(&costs, self.orphan_cursor, budget);
        self.orphan_cursor = next;
        chosen
            .into_iter()
            .filter_map(|index| {
                let user = &costs[index].0;
                self.settings.users.iter().find(|u| &u.id == user).map(|u| (u.id.clone(), u.symbols.clone()))
            })
            .collect()
    }

    /// What listing each user's open orders costs (one weight per symbol), halted users left out.
    fn orphan_costs(&self) -> Vec<(UserId, usize)> {
        self.settings
            .users
            .iter()
            .filter(|u| !self.halted_users.contains(&u.id))
            .map(|u| (u.id.clone(), u.symbols.len().max(1)))
            .collect()
    }

    /// Judges the observations, records the run everywhere, and returns it.
    fn conclude(&mut self, gathered: Gathered) -> RunRecord {
        let Gathered { mut observations, integrity_checked, orphan_checks, stats, locks } = gathered;
        if let Some(probe) = observations.exchange_probe.as_ref().filter(|probe| probe.reached_a_verdict()) {
            self.last_verdict_probe = Some(probe.clone());
        }
        observations.last_verdict_probe = self.last_verdict_probe.clone();
        for orphan_check in orphan_checks {
            match orphan_check {
                (user, Ok(orphans)) => {
                    self.orphans.checked.insert(user, (observations.now_ms, orphans));
                }
                (user, Err(error)) => self.orphans.last_error = Some(format!("{user}: {error}")),
            }
        }
        // A halted user's account cannot be read (no usable credentials): it is not waited for.
        let halted: BTreeSet<&UserId> = observations
            .actors
            .iter()
            .flatten()
            .filter(|a| a.state == "halted")
            .filter_map(|a| a.user.as_ref())
            .collect();
        let checkable: BTreeSet<&UserId> =
            self.settings.users.iter().map(|u| &u.id).filter(|user| !halted.contains(user)).collect();
        self.orphans.users_total = checkable.len();
        self.orphans.checked.retain(|user, _| checkable.contains(user));
        self.halted_users = halted.iter().map(|user| (*user).clone()).collect();
        let interval_ms = self.settings.interval.as_millis() as i64;
        let budget = crate::failure_points::monitor::orphan_weight_per_run(
            self.settings.orphan_check_weight_per_minute,
            interval_ms,
        );
        self.orphans.coverage_ms =
            crate::failure_points::monitor::orphan_coverage_ms(&self.orphan_costs(), budget, interval_ms);
        self.orphans.weight_per_minute = self.settings.orphan_check_weight_per_minute;
        observations.orphans = Some(self.orphans.clone());
        if let Some(ok) = integrity_checked {
            self.integrity = Some((observations.now_ms, ok));
        }
        if let Some(stats) = stats {
            self.previous_stats = Some(stats);
        }
        let now_ms = observations.now_ms;
        self.previous_run_ms = Some(now_ms);
        let mut results = evaluate(&observations);
        let mut newly_critical = Vec::new();
        for result in &mut results {
            let since = match self.status_since.get(&result.id) {
                Some((status, since)) if *status == result.status => *since,
                previous => {
                    if result.status == CheckStatus::Critical
                        && previous.is_none_or(|(s, _)| *s != CheckStatus::Critical)
                    {
                        newly_critical.push(result.id);
                        notify(
                            &self.directory,
                            format!("critical:{}", result.id),
                            Severity::Critical,
                            format!("{} is critical: {}", result.id, result.detail),
                        );
                    }
                    if result.status == CheckStatus::Ok && previous.is_some_and(|(s, _)| *s == CheckStatus::Critical) {
                        notify(
                            &self.directory,
                            format!("recovered:{}", result.id),
                            Severity::Info,
                            format!("{} is ok again: {}", result.id, result.detail),
                        );
                    }
                    self.status_since.insert(result.id, (result.status, now_ms));
                    now_ms
                }
            };
            if result.status != CheckStatus::Ok && result.since_ms.is_none() {
                result.since_ms = Some(since);
            }
        }
        let run = RunRecord::new(now_ms, results);
        let text = run.to_json();
        if let Err(error) = append_line(&self.settings.monitor_log_path(), &text) {
            self.write_failures += 1;
            tracing::error!(%error, path = %self.settings.monitor_log_path().display(), "monitor: cannot append");
        }
        self.directory.set_latest_monitor_run(run.clone());
        let overall_text = run.overall.as_str().to_owned();
        persistence::submit(&self.directory, "monitor snapshot", move |store| {
            store.record_monitor_snapshot(now_ms, &overall_text, &text)
        });
        for result in run.checks.iter().filter(|r| r.status == CheckStatus::Critical) {
            tracing::warn!(target: "monitor", failure_point = result.id.as_str(), "critical: {}", result.detail);
        }
        let summary_due =
            self.last_summary_ms.is_none_or(|last| now_ms - last >= self.settings.summary_interval.as_millis() as i64);
        if summary_due {
            let summary = summary(&run, &self.settings.users, &observations, &locks);
            match write_atomically(&self.settings.summary_path(), &summary) {
                Ok(()) => self.last_summary_ms = Some(now_ms),
                Err(error) => {
                    self.write_failures += 1;
                    tracing::error!(%error, path = %self.settings.summary_path().display(), "monitor: cannot write the summary");
                }
            }
        }
        if let Ok(healer) = self.directory.healer() {
            // Every run goes to the Healer: it judges its actions on the runs after them. A full
            // mailbox drops this one; the next run decides instead.
            let _ = healer.try_send(MonitorRan { ts_ms: run.ts_ms, results: run.checks.clone() });
            if !newly_critical.is_empty() {
                // A full healer mailbox means it is healing already; its own timer runs it again.
                let _ = healer.try_send(HealNow { failure_points: newly_critical });
            }
        }
        self.latest = Some(run.clone());
        run
    }
}

/// What one run gathered.
struct Gathered {
    observations: Observations,
    /// The integrity check's answer, when it ran this time.
    integrity_checked: Option<bool>,
    /// This run's orphan checks: each user, and the orphans found or why it could not run.
    orphan_checks: Vec<(UserId, Result<Vec<String>, String>)>,
    stats: Option<MarketDataStats>,
    locks: Vec<GuardLock>,
}

/// What one run reads from the database, in one request.
struct FromDatabase {
    unresolved: Vec<(UserId, u32, i64)>,
    open_positions: Vec<(UserId, u32)>,
    strategy_errors: BTreeMap<UserId, u64>,
    /// `None`: not checked this run (it runs every [`INTEGRITY_CHECK_INTERVAL_MS`]).
    integrity_ok: Option<bool>,
    locks: Vec<GuardLock>,
    guard_blocks: Vec<(String, UserId, u64)>,
    bad_candles: BTreeMap<UserId, u64>,
    margin_rejections: BTreeMap<UserId, u64>,
    position_mismatches: Vec<PositionMismatch>,
    position_events: Vec<(i64, UserId, String, String)>,
}

/// Everything a run reads, cloned out of the actor so the gathering runs without it.
struct GatherInputs {
    settings: Arc<MonitorSettings>,
    tree: Recipient<GetTreeStatus>,
    directory: Arc<Directory>,
    exchange: Arc<dyn Exchange>,
    now_ms: i64,
    previous_stats: Option<MarketDataStats>,
    previous_run_ms: Option<i64>,
    log_write_failures: u64,
    integrity_due: bool,
    /// The newest integrity check's result (reused between checks).
    integrity_cached: Option<bool>,
    /// The users whose open orders this run checks for orphans, with their symbols.
    orphan_users: Vec<(UserId, Vec<crate::domain::Symbol>)>,
}

async fn gather(inputs: GatherInputs) -> Gathered {
    let GatherInputs {
        settings,
        tree,
        directory,
        exchange,
        now_ms,
        previous_stats,
        previous_run_ms,
        log_write_failures,
        integrity_due,
        integrity_cached,
        orphan_users,
    } = inputs;
    let tree_status: Option<TreeStatus> = tree.send(GetTreeStatus).timeout(GATHER_TIMEOUT).await.ok();
    let exchange_probe = probe_exchange(exchange.as_ref(), now_ms).await;

    // Market data: counters since the previous run (a restarted market data starts from zero).
    let (stats, feeds, market_streams) = match directory.market_data() {
        Ok(market_data) => {
            let stats = market_data.send(GetStats).timeout(GATHER_TIMEOUT).await.ok();
            let feeds = market_data.send(FeedStatuses).timeout(GATHER_TIMEOUT).await.ok().flatten();
            let streams = market_data.send(MarketStreamStatuses).timeout(GATHER_TIMEOUT).await.ok();
            (stats, feeds, streams)
        }
        Err(_) => (None, None, None),
    };
    let exchange_observation = stats.as_ref().map(|now| {
        let base = previous_stats
            .as_ref()
            .filter(|before| {
                before.klines_requests <= now.klines_requests && before.klines_failures <= now.klines_failures
            })
            .cloned()
            .unwrap_or_default();
        let klines_failures = now.klines_failures - base.klines_failures;
        let budget = exchange.request_budget();
        ExchangeObservation {
            klines_requests: now.klines_requests - base.klines_requests,
            klines_failures,
            last_error: if klines_failures > 0 { now.last_klines_error.clone() } else { None },
            weight_used: budget.as_ref().map(|b| b.weight_used),
            weight_limit: budget.as_ref().map(|b| b.weight_limit),
            banned_until_ms: budget.and_then(|b| b.banned_until_ms),
            clock_error_ms: exchange.clock_error_ms(),
        }
    });

    // The database: one request for everything it answers.
    let since_ms = previous_run_ms.unwrap_or(now_ms - settings.interval.as_millis() as i64);
    let from_database = tokio::time::timeout(
        GATHER_TIMEOUT,
        persistence::run(&directory, move |store| {
            Ok(FromDatabase {
                unresolved: store.unresolved_order_counts()?,
                open_positions: store.open_position_counts()?,
                strategy_errors: store.strategy_error_counts(since_ms)?,
                integrity_ok: if integrity_due { Some(store.quick_check()?) } else { None },
                locks: store.uncleared_guard_locks(None)?,
                guard_blocks: store.guard_block_counts(since_ms)?,
                bad_candles: store.bad_candle_counts(since_ms)?,
                margin_rejections: store.margin_rejection_counts(since_ms)?,
                position_mismatches: store.position_fill_mismatches()?,
                position_events: store.recent_reconcile_actions(
                    now_ms - POSITION_EVENTS_WINDOW_MS,
                    &["position_resynced", "fills_imported"],
                )?,
            })
        }),
    )
    .await
    .ok()
    .and_then(Result::ok);

    let max_positions: BTreeMap<&UserId, u32> = settings.users.iter().map(|u| (&u.id, u.max_open_positions)).collect();
    let unresolved_orders = from_database.as_ref().map(|db| {
        db.unresolved
            .iter()
            .map(|(user, count, oldest_ms)| UnresolvedOrdersObservation {
                user: user.clone(),
                count: *count,
                oldest_age_ms: now_ms - oldest_ms,
            })
            .collect()
    });
    let positions = from_database.as_ref().map(|db| {
        db.open_positions
            .iter()
            .filter_map(|(user, open_positions)| {
                let max_open_positions = *max_positions.get(user)?;
                Some(PositionsObservation { user: user.clone(), open_positions: *open_positions, max_open_positions })
            })
            .collect()
    });
    let integrity_checked = from_database.as_ref().and_then(|db| db.integrity_ok);
    let integrity_ok = from_database.as_ref().and_then(|db| db.integrity_ok.or(integrity_cached));
    // The outbox and the refusal are known without the database: SYS-DATABASE says what they
    // show even when the database cannot be queried.
    let database = Some(DatabaseObservation {
        writes_refused: directory.persistence_writes_refused(),
        journal_write_failures: tree_status.as_ref().map_or(0, |t| t.journal_write_failures),
        integrity_ok,
        outbox: directory.outbox(),
        users: settings.users.iter().map(|u| u.id.clone()).collect(),
    });

    let mut orphan_checks = Vec::new();
    for (user, symbols) in orphan_users {
        let checked = check_orphans(&directory, exchange.as_ref(), &user, &symbols).await;
        orphan_checks.push((user, checked));
    }
    let intelligence = match directory.intelligence() {
        Ok(actor) => gather_intelligence(&actor, exchange.as_ref()).await,
        Err(_) => None,
    };
    let directories = Some(
        [&settings.data_dir, &settings.log_dir]
            .into_iter()
            .map(|dir| DirectoryObservation {
                path: dir.display().to_string(),
                writable: probe_writable(dir),
                free_bytes: fs4::available_space(dir).ok(),
            })
            .collect(),
    );
    let config_files = Some(
        settings
            .config_file
            .iter()
            .map(|path| {
                let (exists, problems) = match std::fs::read_to_string(path) {
                    Ok(text) => match crate::config::parse(&text, &path.display().to_string()) {
                        Ok(_) => (true, Vec::new()),
                        Err(errors) => (true, errors.problems.iter().map(ToString::to_string).collect()),
                    },
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => (false, Vec::new()),
                    Err(error) => (true, vec![format!("cannot be read: {error}")]),
                };
                ConfigFileObservation { path: path.display().to_string(), exists, problems }
            })
            .collect(),
    );
    let observations = Observations {
        now_ms,
        actors: tree_status.map(|t| t.actors),
        exchange: exchange_observation,
        exchange_probe: Some(exchange_probe),
        // Set by `conclude` (it keeps the newest verdict across runs).
        last_verdict_probe: None,
        feeds,
        database,
        directories,
        config_files,
        unresolved_orders,
        positions,
        strategy_errors: from_database.as_ref().map(|db| db.strategy_errors.clone()),
        locks: from_database.as_ref().map(|db| db.locks.clone()),
        guard_blocks: from_database.as_ref().map(|db| db.guard_blocks.clone()),
        bad_candles: from_database.as_ref().map(|db| db.bad_candles.clone()),
        margin_rejections: from_database.as_ref().map(|db| db.margin_rejections.clone()),
        guards_disabled: settings.guards_disabled,
        log_write_failures,
        position_mismatches: from_database.as_ref().map(|db| db.position_mismatches.clone()),
        position_holds: directory.position_holds(),
        position_events: from_database.as_ref().map(|db| db.position_events.clone()).unwrap_or_default(),
        // Filled in by `conclude` from every user's newest check.
        orphans: None,
        breakers: exchange.breaker_statuses(),
        user_streams: Some(user_streams(&directory, now_ms)),
        market_streams,
        intelligence,
    };
    Gathered {
        observations,
        integrity_checked,
        orphan_checks,
        stats,
        locks: from_database.map(|db| db.locks).unwrap_or_default(),
    }
}

/// Every streamed account's book as it stands at `now_ms` (SYS-USER-STREAM).
fn user_streams(directory: &Directory, now_ms: i64) -> Vec<UserStreamObservation> {
    directory
        .account_books
        .read()
        .iter()
        .map(|(user, book)| {
            let book = book.lock();
            UserStreamObservation {
                user: user.clone(),
                verification: book.verification(now_ms),
                connections: book.connections(),
                last_heard_ms: book.last_heard_ms(),
                failures_in_a_row: book.failures_in_a_row(),
                reconnect_not_before_ms: book.reconnect_due(now_ms).err(),
            }
        })
        .collect()
}

/// One user's open orders on the exchange against the database: the `bw-` ones it does not know,
/// or has as final (what `ReconcileUser` would cancel).
/// The intelligence probe (the series furthest behind, refreshed now through the API's breaker),
/// then every series' state, with how far its data is behind the market on the exchange's clock.
async fn gather_intelligence(actor: &Addr<Intelligence>, exchange: &dyn Exchange) -> Option<IntelObservation> {
    let probe = match actor.send(ProbeIntel).timeout(GATHER_TIMEOUT).await {
        Ok(result) => result,
        Err(error) => Err(format!("the probe got no answer: {error}")),
    };
    let (source, series) = actor.send(IntelStatus).timeout(GATHER_TIMEOUT).await.ok()?;
    let venue_now_ms = exchange.estimated_now_ms();
    let series = series
        .into_iter()
        .map(|s| {
            let candles_behind = s.newest_open_ms.zip(venue_now_ms).map(|(newest_open_ms, now_ms)| {
                let expected_open_ms = now_ms.div_euclid(s.timeframe_ms) * s.timeframe_ms - s.timeframe_ms;
                ((expected_open_ms - newest_open_ms) / s.timeframe_ms.max(1)).max(0)
            });
            IntelSeriesObservation { series: s.series, age_ms: s.age_ms, last_error: s.last_error, candles_behind }
        })
        .collect();
    Some(IntelObservation { source, series, probe })
}

/// Asks the exchange its time, through the same breakers and budget as every request, and says
/// what that met (typed: a refused connection is not an HTTP error, and a breaker keeping the probe
/// back is evidence of the breaker only).
async fn probe_exchange(exchange: &dyn Exchange, observed_at_ms: i64) -> ExchangeProbe {
    use crate::exchange::{ExchangeError, Transport};
    let started = std::time::Instant::now();
    let answer = tokio::time::timeout(GATHER_TIMEOUT, exchange.probe_time_ms()).await;
    let latency_ms = started.elapsed().as_millis() as i64;
    let outcome = match answer {
        Ok(Ok(probe)) => ProbeOutcome::Answered {
            estimate_off_ms: probe.estimate_off_ms,
            estimate_error_ms: probe.estimate_error_ms,
        },
        Ok(Err(ExchangeError::Unreachable { transport, detail })) => ProbeOutcome::Unreachable { transport, detail },
        Ok(Err(ExchangeError::BreakerOpen { breaker, until_ms, detail })) => {
            ProbeOutcome::BreakerOpen { breaker, until_ms, detail }
        }
        Ok(Err(error)) => ProbeOutcome::Failed { detail: error.to_string() },
        Err(_) => ProbeOutcome::Unreachable {
            transport: Transport::Timeout,
            detail: format!("no answer within {} s", GATHER_TIMEOUT.as_secs()),
        },
    };
    ExchangeProbe { observed_at_ms, latency_ms, outcome }
}

/// A user's open `bw-` orders on its symbols (one listing per symbol: weight 1 each on Binance)
/// that the database does not know or has as final.
async fn check_orphans(
    directory: &Directory,
    exchange: &dyn Exchange,
    user: &UserId,
    symbols: &[crate::domain::Symbol],
) -> Result<Vec<String>, String> {
    let mut open = Vec::new();
    for symbol in symbols {
        let listing = tokio::time::timeout(GATHER_TIMEOUT, exchange.open_orders(user, Some(symbol)))
            .await
            .map_err(|_| format!("the exchange did not answer in time ({symbol})"))?
            .map_err(|e| format!("{symbol}: {e}"))?;
        open.extend(listing);
    }
    let ids: Vec<ClientOrderId> =
        open.into_iter().map(|order| order.client_order_id).filter(ClientOrderId::is_bulwark).collect();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let known = tokio::time::timeout(
        GATHER_TIMEOUT,
        persistence::run(directory, move |store| {
            ids.into_iter()
                .map(|id| Ok((store.order(&id)?.map(|order| order.state), id)))
                .collect::<Result<Vec<_>, _>>()
        }),
    )
    .await
    .map_err(|_| "the database did not answer in time".to_owned())?
    .map_err(|e| e.to_string())?;
    Ok(known
        .into_iter()
        .filter(|(state, _)| state.is_none_or(|state| state.is_final()))
        .map(|(_, id)| id.to_string())
        .collect())
}

/// Creates and removes a probe file: the directory takes writes now.
fn probe_writable(dir: &Path) -> bool {
    let probe = dir.join(".bulwark-write-probe");
    let written = std::fs::write(&probe, b"probe").is_ok();
    let _ = std::fs::remove_file(&probe);
    written
}

fn append_line(path: &Path, line: &str) -> std::io::Result<()> {
    crate::logging::append_rotating(path, &format!("{line}\n"), FAILURE_POINT_LOG_BYTES_MAX)
}

/// Writes to a temporary file beside `path`, syncs it, and renames it over `path`: a reader sees
/// the old file or the new one, never half of one.
pub fn write_atomically(path: &Path, value: &Value) -> std::io::Result<()> {
    let temporary = path.with_extension("json.tmp");
    {
        let mut file = std::fs::File::create(&temporary)?;
        serde_json::to_writer_pretty(&mut file, value)?;
        file.write_all(b"\n")?;
        file.sync_all()?;
    }
    std::fs::rename(&temporary, path)
}

/// The summary file's content.
fn summary(run: &RunRecord, users: &[MonitoredUser], observations: &Observations, locks: &[GuardLock]) -> Value {
    let mut by_status: BTreeMap<&str, u32> =
        ["ok", "warn", "critical", "unknown"].into_iter().map(|s| (s, 0)).collect();
    let mut by_category: BTreeMap<&str, BTreeMap<&str, u32>> = BTreeMap::new();
    let mut latest = serde_json::Map::new();
    for result in &run.checks {
        *by_status.entry(result.status.as_str()).or_default() += 1;
        *by_category.entry(result.category.as_str()).or_default().entry(result.status.as_str()).or_default() += 1;
        latest.insert(result.id.as_str().to_owned(), serde_json::to_value(result).unwrap_or(Value::Null));
    }
    for category in Category::ALL {
        by_category.entry(category.as_str()).or_default();
    }
    let now_ms = run.ts_ms;
    let mut active_blocks: Vec<Value> = locks
        .iter()
        .filter(|lock| lock.holds_at(now_ms))
        .map(|lock| {
            json!({
                "failure_point": lock.failure_point,
                "user": lock.user,
                "symbol": lock.symbol,
                "reason": lock.reason,
                "since": rfc3339_ms(lock.set_at_ms),
                "until": rfc3339_ms(lock.until_ms),
            })
        })
        .collect();
    for actor in observations.actors.iter().flatten() {
        if matches!(actor.state, "quarantined" | "halted" | "restarting" | "escalated") {
            active_blocks.push(json!({
                "failure_point": if actor.state == "halted" { "SYS-CREDENTIALS" } else { "SYS-PROCESS" },
                "user": actor.user,
                "actor": actor.actor,
                "state": actor.state,
                "reason": actor.reason,
                "since": rfc3339_ms(actor.since_ms),
            }));
        }
    }
    let users_not_trading: Value = if observations.actors.is_none() {
        // Without the tree every user would look "never started": say it is not known instead.
        json!("unknown: the supervision tree could not be read")
    } else {
        Value::Array(users_not_trading(users, observations, locks, &run.checks, now_ms))
    };
    let failing: BTreeSet<&str> =
        run.checks.iter().filter(|r| r.status == CheckStatus::Critical).map(|r| r.id.as_str()).collect();
    json!({
        "ts": rfc3339_ms(now_ms),
        "overall": run.overall.as_str(),
        "catalog_size": CATALOG.len(),
        "counts_by_status": by_status,
        "counts_by_category": by_category,
        "critical": failing,
        "active_blocks": active_blocks,
        "users_not_trading": users_not_trading,
        "latest": latest,
    })
}

/// Every user that is not trading, with its reasons (the same answer as `bulwark why`).
fn users_not_trading(
    users: &[MonitoredUser],
    observations: &Observations,
    locks: &[GuardLock],
    checks: &[CheckResult],
    now_ms: i64,
) -> Vec<Value> {
    users
        .iter()
        .filter_map(|user| {
            let trader = observations
                .actors
                .iter()
                .flatten()
                .find(|a| a.actor == "trader" && a.user.as_ref() == Some(&user.id))
                .map(|a| (a.state.to_owned(), a.reason.clone(), a.since_ms));
            let answer = why::explain(&WhyInputs {
                user: user.id.to_string(),
                now_ms,
                server_running: Some(true),
                trader_state: trader,
                checks: Some((now_ms, checks.to_vec())),
                locks: locks.iter().filter(|l| l.user == user.id).cloned().collect(),
                ..WhyInputs::default()
            });
            (answer.verdict != "trading").then(|| {
                json!({ "user": user.id, "verdict": answer.verdict, "summary": answer.summary, "reasons": answer.blocks })
            })
        })
        .collect()
}

impl Actor for Monitor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Err(error) = std::fs::create_dir_all(&self.settings.log_dir) {
            tracing::error!(%error, "monitor: cannot create the log directory");
        }
        // A first run soon after start (once the tree is up), so that a fresh server is judged in
        // seconds rather than after a whole interval; then every interval.
        ctx.run_later(self.settings.interval.min(FIRST_RUN_AFTER), |_, ctx| ctx.notify(RunChecks));
        ctx.run_interval(self.settings.interval, |_, ctx| {
            ctx.notify(RunChecks);
        });
    }
}

impl Handler<RunChecks> for Monitor {
    type Result = ResponseActFuture<Self, Result<RunRecord, String>>;

    fn handle(&mut self, _: RunChecks, _: &mut Context<Self>) -> Self::Result {
        if self.running {
            return Box::pin(fut::ready(Err("a monitor run is already under way".to_owned())));
        }
        self.running = true;
        let inputs = GatherInputs {
            settings: self.settings.clone(),
            tree: self.tree.clone(),
            directory: self.directory.clone(),
            exchange: self.exchange.clone(),
            now_ms: self.clock.now_ms(),
            previous_stats: self.previous_stats.clone(),
            previous_run_ms: self.previous_run_ms,
            log_write_failures: self.write_failures - self.write_failures_reported,
            integrity_due: self.integrity.is_none_or(|(at, _)| self.clock.now_ms() - at >= INTEGRITY_CHECK_INTERVAL_MS),
            integrity_cached: self.integrity.map(|(_, ok)| ok),
            orphan_users: self.next_orphan_batch(),
        };
        self.write_failures_reported = self.write_failures;
        Box::pin(gather(inputs).into_actor(self).map(|gathered, monitor, _| {
            monitor.running = false;
            Ok(monitor.conclude(gathered))
        }))
    }
}

impl Handler<LatestChecks> for Monitor {
    type Result = MessageResult<LatestChecks>;

    fn handle(&mut self, _: LatestChecks, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.latest.clone())
    }
}
