//! The endpoints: what each reads and answers. See the module above for auth and errors.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

use super::{AppState, authorize, error, guarded, parse_since};
use crate::actors::persistence;
use crate::clock::rfc3339_ms;
use crate::domain::UserId;
use crate::failure_points::catalog::FailurePointId;
use crate::failure_points::monitor::{CheckStatus, RunRecord};
use crate::limits::{excerpt, excerpt_lines};
use crate::supervision::root::{GetTreeStatus, UserSupervisorOf};
use crate::supervision::user::OperatorRequest;

/// A database request with the API's own time limit: a slow or restarting persistence answers
/// 503 instead of holding the request (and the dashboard's next poll) open.
async fn bounded<R>(request: impl Future<Output = Result<R, crate::persistence::StoreError>>) -> Result<R, String> {
    match tokio::time::timeout(DATABASE_TIMEOUT, request).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {} s", DATABASE_TIMEOUT.as_secs())),
    }
}

/// Longest wait for a database read (or the `why` read on its blocking thread).
const DATABASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest wait for the root supervisor or a user supervisor to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// Most monitor runs one history request returns (a day at the default interval).
const HISTORY_RUNS_MAX: u32 = 1_440;
/// Most events one events request returns.
const EVENTS_MAX: u32 = 1_000;

pub(super) fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/", web::get().to(dashboard))
        .route("/health", web::get().to(health))
        .route("/api/status", web::get().to(status))
        .route("/api/users/{id}/why", web::get().to(why))
        .route("/api/failure-points/history", web::get().to(history))
        .route("/api/events", web::get().to(events))
        .route("/metrics", web::get().to(metrics))
        .route("/api/admin/users/{id}/pause", web::post().to(pause))
        .route("/api/admin/users/{id}/resume", web::post().to(resume))
        .route("/api/admin/users/{id}/crash", web::post().to(crash))
        .route("/api/admin/locks/{id}/clear", web::post().to(clear_lock))
        .route("/api/admin/chaos/handler-panic", web::post().to(handler_panic));
}

/// The query string as a map, or a 400 naming what is wrong with it.
fn query(request: &HttpRequest) -> Result<HashMap<String, String>, HttpResponse> {
    web::Query::<HashMap<String, String>>::from_query(request.query_string())
        .map(web::Query::into_inner)
        .map_err(|e| error(400, format!("bad query string: {}", excerpt_lines(&e.to_string()))))
}

/// The dashboard: one self-contained page (no CDN, no build step) that polls the API.
const DASHBOARD_HTML: &str = include_str!("dashboard.html");

/// `GET /`: the dashboard (its data requests carry the token when reads are protected).
async fn dashboard() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-cache"))
        .body(DASHBOARD_HTML)
}

/// A read request's query and its `since` (default `default_since`), or the refusal to answer:
/// the auth check, a bad query string, a time that does not parse.
fn read_since(
    request: &HttpRequest,
    state: &AppState,
    default_since: &str,
) -> Result<(HashMap<String, String>, i64), HttpResponse> {
    authorize(request, &state.settings.access, false)?;
    let query = query(request)?;
    let since = query.get("since").map_or(default_since, String::as_str);
    let since_ms = parse_since(since, state.clock.now_ms()).map_err(|message| error(400, message))?;
    Ok((query, since_ms))
}

/// `GET /health`: 200 when the root supervisor answers, every shared actor runs and the Monitor
/// has run within three intervals; 503 with the reasons otherwise.
/// The database's write health for `/health`: `ok`, or `degraded` with why (it refuses writes,
/// records wait in the outbox, records could be kept nowhere).
fn database_health(outbox: &crate::actors::OutboxStatus) -> Value {
    let mut reasons = Vec::new();
    if let Some(refusal) = &outbox.refusal {
        reasons.push(format!(
            "the database refuses writes since {} ({}): {}",
            rfc3339_ms(refusal.since_ms),
            refusal.kind.as_str(),
            refusal.detail
        ));
    }
    if outbox.depth > 0 {
        reasons.push(format!("{} of {} record(s) wait in the durable outbox", outbox.depth, outbox.capacity));
    }
    if let Some(why) = &outbox.records_unkept {
        reasons.push(format!(
            "records are being lost ({} since start): {why}; no order is placed",
            outbox.records_lost_total
        ));
    }
    json!({
        "state": if outbox.is_degraded() { "degraded" } else { "ok" },
        "reasons": reasons,
        "refusal": outbox.refusal,
        "outbox_depth": outbox.depth,
        "records_lost_total": outbox.records_lost_total,
    })
}

async fn health(state: web::Data<AppState>) -> HttpResponse {
    guarded("health", async move {
        let now_ms = state.clock.now_ms();
        let mut reasons = Vec::new();
        let mut shared = 0;
        match state.root.send(GetTreeStatus).timeout(ANSWER_TIMEOUT).await {
            Ok(tree) => {
                for actor in tree.actors.iter().filter(|a| a.actor != "trader") {
                    shared += 1;
                    if actor.state != "running" {
                        let why = actor.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
                        reasons.push(format!("{} is {}{why}", actor.actor, actor.state));
                    }
                }
            }
            Err(error) => reasons.push(format!("the root supervisor did not answer within 2 s: {error}")),
        }
        let interval_ms = state.settings.config.monitor.interval.as_millis() as i64;
        let allowed_ms = 3 * interval_ms + 10_000;
        let monitor = state.directory.latest_monitor_run().map(|run| run.ts_ms);
        match monitor {
            Some(ts_ms) if now_ms - ts_ms <= allowed_ms => {}
            Some(ts_ms) => reasons.push(format!(
                "the monitor last ran {} s ago (interval {} s)",
                (now_ms - ts_ms) / 1_000,
                interval_ms / 1_000
            )),
            None if now_ms - state.settings.started_at_ms > allowed_ms => {
                reasons.push("the monitor has not run since the server started".to_owned())
            }
            None => {}
        }
        let monitor_last_run = monitor.map(rfc3339_ms);
        let database = database_health(&state.directory.outbox());
        if !reasons.is_empty() {
            return HttpResponse::ServiceUnavailable().json(json!({
                "status": "unhealthy",
                "instance": state.settings.instance,
                "reasons": reasons,
                "database": database,
                "monitor_last_run": monitor_last_run,
            }));
        }
        // The process serves, but the database is behind: still 200 (restarting would not help),
        // with the status and the reasons saying so.
        let degraded = database["state"] == "degraded";
        let database_reasons: Vec<String> = database["reasons"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r.as_str().map(str::to_owned))
            .collect();
        HttpResponse::Ok().json(json!({
            "status": if degraded { "degraded" } else { "ok" },
            "instance": state.settings.instance,
            "reasons": database_reasons,
            "shared_actors": shared,
            "users": state.settings.config.users.len(),
            "database": database,
            "monitor_last_run": monitor_last_run,
        }))
    })
    .await
}

/// `GET /api/status`: the tree, every user, the failure points, breakers, locks and the outbox.
async fn status(request: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    guarded("status", async move {
        if let Err(refused) = authorize(&request, &state.settings.access, false) {
            return refused;
        }
        let now_ms = state.clock.now_ms();
        let tree = match state.root.send(GetTreeStatus).timeout(ANSWER_TIMEOUT).await {
            Ok(tree) => tree.actors,
            Err(e) => return error(503, format!("the root supervisor did not answer: {e}")),
        };
        let stored = bounded(persistence::run(&state.directory, |store| {
            Ok((store.user_statuses()?, store.uncleared_guard_locks(None)?))
        }))
        .await;
        let (users, locks) = match stored {
            Ok(stored) => stored,
            Err(e) => return error(503, format!("the database could not be read: {e}")),
        };
        let holds = state.directory.position_holds();
        let users: Vec<Value> = users
            .into_iter()
            .map(|user| {
                let live = tree
                    .iter()
                    .find(|a| a.actor == "trader" && a.user.as_ref().map(UserId::as_str) == Some(&user.user));
                let user_locks: Vec<&crate::failure_points::locks::GuardLock> =
                    locks.iter().filter(|l| l.user.as_str() == user.user && l.holds_at(now_ms)).collect();
                let hold = UserId::new(&user.user).ok().and_then(|id| holds.get(&id).cloned());
                json!({
                    "user": user.user,
                    "state": live.map_or(user.state.as_str(), |a| a.state),
                    "reason": live.map_or(user.reason.clone(), |a| a.reason.clone()),
                    "incarnation": live.map_or(user.incarnation, |a| a.incarnation),
                    "restarts": live.map_or(user.restart_count, |a| a.restarts),
                    "decisions": user.decision_count,
                    "last_decision": user.last_decision,
                    "last_decision_at": user.last_decision_at_ms.map(rfc3339_ms),
                    "positions": user.positions,
                    "orders": user.orders_total,
                    "fills": user.fills_total,
                    "locks": user_locks,
                    "position_hold": hold,
                })
            })
            .collect();
        let monitor = state.directory.latest_monitor_run();
        HttpResponse::Ok().json(json!({
            "ts": rfc3339_ms(now_ms),
            "tree": tree,
            "users": users,
            "failure_points": monitor.as_ref().map(|run| &run.checks),
            "overall": monitor.as_ref().map(|run| run.overall),
            "monitor_checked_at": monitor.as_ref().map(|run| rfc3339_ms(run.ts_ms)),
            "breakers": state.settings.exchange.breaker_statuses(),
            "locks": locks,
            "outbox": state.directory.outbox(),
        }))
    })
    .await
}

/// A user named in the path: 400 if it is not a user id, 404 if the config has no such user.
fn configured_user(state: &AppState, id: &str) -> Result<UserId, HttpResponse> {
    // The error names the id (cut to its first characters and its length).
    let user = UserId::new(id).map_err(|e| error(400, e.to_string()))?;
    if state.settings.config.users.iter().any(|u| u.id == user) {
        Ok(user)
    } else {
        Err(error(404, format!("no user {user} in the config")))
    }
}

/// `GET /api/users/{id}/why`: the same answer as `bulwark why <id> --json`.
async fn why(request: HttpRequest, state: web::Data<AppState>, path: web::Path<String>) -> HttpResponse {
    guarded("why", async move {
        if let Err(refused) = authorize(&request, &state.settings.access, false) {
            return refused;
        }
        let user = match configured_user(&state, &path) {
            Ok(user) => user,
            Err(refused) => return refused,
        };
        let config = state.settings.config.clone();
        match tokio::time::timeout(DATABASE_TIMEOUT, web::block(move || crate::status::why(&config, user.as_str())))
            .await
        {
            Ok(Ok(Ok(answer))) => HttpResponse::Ok().json(answer),
            Ok(Ok(Err(e))) => error(503, format!("{e:#}")),
            Ok(Err(e)) => error(500, format!("why could not run: {e}")),
            Err(_) => error(503, format!("why took longer than {} s", DATABASE_TIMEOUT.as_secs())),
        }
    })
    .await
}

/// `GET /api/failure-points/history?since=24h&id=SYS-DATABASE`: the Monitor's runs from the
/// database, oldest first; each with every point's status, or (with `id`) that point's status and
/// detail.
async fn history(request: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    guarded("history", async move {
        let (query, since_ms) = match read_since(&request, &state, "24h") {
            Ok(read) => read,
            Err(refused) => return refused,
        };
        let id = match query.get("id") {
            None => None,
            Some(text) => match FailurePointId::parse(text) {
                Some(id) => Some(id),
                None => {
                    return error(
                        400,
                        format!("id={:?} is not a failure point (see bulwark report --catalog)", excerpt(text)),
                    );
                }
            },
        };
        let runs = match bounded(persistence::run(&state.directory, move |store| {
            store.monitor_snapshots_since(since_ms, HISTORY_RUNS_MAX)
        }))
        .await
        {
            Ok(runs) => runs,
            Err(e) => return error(503, format!("the database could not be read: {e}")),
        };
        let runs: Vec<Value> = runs
            .into_iter()
            .filter_map(|(ts_ms, _, body)| {
                // A row that no longer reads (written by another version) is left out, not guessed at.
                let run = RunRecord::parse(&body).ok()?;
                Some(match id {
                    Some(id) => {
                        let check = run.check(id)?;
                        json!({ "ts": rfc3339_ms(ts_ms), "status": check.status, "detail": check.detail })
                    }
                    None => {
                        let statuses: BTreeMap<&str, CheckStatus> =
                            run.checks.iter().map(|c| (c.id.as_str(), c.status)).collect();
                        json!({ "ts": rfc3339_ms(ts_ms), "overall": run.overall, "statuses": statuses })
                    }
                })
            })
            .collect();
        HttpResponse::Ok().json(json!({ "since": rfc3339_ms(since_ms), "id": id, "runs": runs }))
    })
    .await
}

/// `GET /api/events?since=1h`: supervision events (database) and healing actions (the Healer's
/// log), oldest first.
async fn events(request: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    guarded("events", async move {
        let since_ms = match read_since(&request, &state, "1h") {
            Ok((_, since_ms)) => since_ms,
            Err(refused) => return refused,
        };
        let supervision = match bounded(persistence::run(&state.directory, move |store| {
            store.supervisor_events_since(since_ms, EVENTS_MAX)
        }))
        .await
        {
            Ok(events) => events,
            Err(e) => return error(503, format!("the database could not be read: {e}")),
        };
        let mut events: Vec<(i64, Value)> = supervision
            .into_iter()
            .map(|e| {
                (
                    e.ts_ms,
                    json!({
                        "ts": rfc3339_ms(e.ts_ms),
                        "kind": "supervision",
                        "event": e.event,
                        "actor": e.actor,
                        "user": e.user,
                        "incarnation": e.incarnation,
                        "reason": e.reason,
                        "backoff_ms": e.backoff_ms,
                    }),
                )
            })
            .collect();
        let healing_log = state.settings.config.server.log_dir.join("failure_point_healing.jsonl");
        let healing = web::block(move || crate::status::lines_since(&healing_log, since_ms)).await.unwrap_or_default();
        for (ts_ms, mut line) in healing {
            line["kind"] = json!("healing");
            events.push((ts_ms, line));
        }
        events.sort_by_key(|(ts_ms, _)| *ts_ms);
        let skip = events.len().saturating_sub(EVENTS_MAX as usize);
        let events: Vec<Value> = events.into_iter().skip(skip).map(|(_, event)| event).collect();
        HttpResponse::Ok().json(json!({ "since": rfc3339_ms(since_ms), "events": events }))
    })
    .await
}

/// `GET /metrics`: Prometheus text format (see `crate::metrics`).
async fn metrics(request: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    guarded("metrics", async move {
        if let Err(refused) = authorize(&request, &state.settings.access, false) {
            return refused;
        }
        let tree = match state.root.send(GetTreeStatus).timeout(ANSWER_TIMEOUT).await {
            Ok(tree) => tree.actors,
            Err(e) => return error(503, format!("the root supervisor did not answer: {e}")),
        };
        let load = |counter: &std::sync::atomic::AtomicU64| counter.load(std::sync::atomic::Ordering::Relaxed);
        let status_level = |status: CheckStatus| match status {
            CheckStatus::Ok => 0,
            CheckStatus::Warn => 1,
            CheckStatus::Critical => 2,
            CheckStatus::Unknown => 3,
        };
        let failure_points = state
            .directory
            .latest_monitor_run()
            .map(|run| {
                run.checks
                    .iter()
                    .map(|c| (c.id.as_str().to_owned(), c.category.as_str().to_owned(), status_level(c.status)))
                    .collect()
            })
            .unwrap_or_default();
        let outbox = state.directory.outbox();
        let budget = state.settings.exchange.request_budget();
        let snapshot = crate::metrics::Snapshot {
            decisions: state
                .settings
                .counters
                .iter()
                .map(|(user, counters)| (user.to_string(), load(&counters.decisions), load(&counters.skipped)))
                .collect(),
            actors: tree
                .iter()
                .map(|a| {
                    let user = a.user.as_ref().map(UserId::to_string).unwrap_or_default();
                    (a.actor.to_owned(), user, a.state.to_owned(), a.restarts)
                })
                .collect(),
            breakers: state
                .settings
                .exchange
                .breaker_statuses()
                .unwrap_or_default()
                .into_iter()
                .map(|b| {
                    let level = match b.state {
                        crate::exchange::breaker::BreakerState::Closed => 0,
                        crate::exchange::breaker::BreakerState::HalfOpen => 1,
                        crate::exchange::breaker::BreakerState::Open => 2,
                    };
                    (b.name, level)
                })
                .collect(),
            failure_points,
            outbox_depth: outbox.depth,
            outbox_capacity: outbox.capacity,
            weight_used: budget.as_ref().map(|b| b.weight_used),
            weight_limit: budget.as_ref().map(|b| b.weight_limit),
        };
        HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4; charset=utf-8")
            .body(state.directory.metrics.encode(&snapshot))
    })
    .await
}

/// Sends an operator request to a user's supervisor.
async fn operate(state: &AppState, id: &str, request: OperatorRequest) -> HttpResponse {
    let user = match configured_user(state, id) {
        Ok(user) => user,
        Err(refused) => return refused,
    };
    let supervisor = match state.root.send(UserSupervisorOf(user.clone())).timeout(ANSWER_TIMEOUT).await {
        Ok(Some(supervisor)) => supervisor,
        Ok(None) => return error(404, format!("{user} has no supervisor")),
        Err(e) => return error(503, format!("the root supervisor did not answer: {e}")),
    };
    match supervisor.send(request).timeout(ANSWER_TIMEOUT).await {
        Ok(Ok(detail)) => {
            tracing::warn!(%user, "admin: {detail}");
            HttpResponse::Ok().json(json!({ "ok": true, "detail": detail }))
        }
        Ok(Err(why_not)) => error(409, why_not),
        Err(e) => error(503, format!("{user}'s supervisor did not answer: {e}")),
    }
}

/// `POST /api/admin/users/{id}/pause`
async fn pause(request: HttpRequest, state: web::Data<AppState>, path: web::Path<String>) -> HttpResponse {
    guarded("pause", async move {
        if let Err(refused) = authorize(&request, &state.settings.access, true) {
            return refused;
        }
        operate(&state, &path, OperatorRequest::Pause { reason: "paused over the admin API".to_owned() }).await
    })
    .await
}

/// `POST /api/admin/users/{id}/resume`
async fn resume(request: HttpRequest, state: web::Data<AppState>, path: web::Path<String>) -> HttpResponse {
    guarded("resume", async move {
        if let Err(refused) = authorize(&request, &state.settings.access, true) {
            return refused;
        }
        operate(&state, &path, OperatorRequest::Resume { reason: "resumed over the admin API".to_owned() }).await
    })
    .await
}

/// `POST /api/admin/users/{id}/crash` (`[chaos] enabled` only).
async fn crash(request: HttpRequest, state: web::Data<AppState>, path: web::Path<String>) -> HttpResponse {
    guarded("crash", async move {
        if let Err(refused) = authorize(&request, &state.settings.access, true) {
            return refused;
        }
        if !state.settings.config.chaos.enabled {
            return error(403, "crash is only available with [chaos] enabled = true");
        }
        operate(&state, &path, OperatorRequest::Crash { reason: "crash requested over the admin API".to_owned() }).await
    })
    .await
}

/// `POST /api/admin/chaos/handler-panic` (`[chaos] enabled` only): a handler that panics, to see
/// the API answer 500 and keep serving.
async fn handler_panic(request: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    guarded("handler_panic", async move {
        if let Err(refused) = authorize(&request, &state.settings.access, true) {
            return refused;
        }
        if !state.settings.config.chaos.enabled {
            return error(403, "only available with [chaos] enabled = true");
        }
        panic!("chaos: a handler panic requested over the admin API");
    })
    .await
}

/// `POST /api/admin/locks/{id}/clear`: clears a kill switch or probation before its time; the
/// user's trader restarts in order to drop it.
async fn clear_lock(request: HttpRequest, state: web::Data<AppState>, path: web::Path<String>) -> HttpResponse {
    guarded("clear_lock", async move {
        if let Err(refused) = authorize(&request, &state.settings.access, true) {
            return refused;
        }
        let Ok(id) = path.parse::<i64>() else {
            return error(400, format!("lock id {:?} is not a number", excerpt(&path)));
        };
        let now_ms = state.clock.now_ms();
        let cleared = bounded(persistence::run(&state.directory, move |store| {
            let lock = store.uncleared_guard_locks(None)?.into_iter().find(|l| l.id == id);
            match lock {
                Some(lock) => store.clear_guard_lock(id, now_ms, "admin api").map(|_| Some(lock)),
                None => Ok(None),
            }
        }))
        .await;
        let lock = match cleared {
            Ok(Some(lock)) => lock,
            Ok(None) => return error(404, format!("no uncleared lock {id}")),
            Err(e) => return error(503, format!("the database could not be written: {e}")),
        };
        let reason = format!("{} lock {id} cleared over the admin API; restarting to drop it", lock.failure_point);
        tracing::warn!(user = %lock.user, lock = id, failure_point = %lock.failure_point, "admin: lock cleared");
        // The lock is cleared in the database whatever happens next; a trader that does not
        // restart now drops it at its next start.
        let restarted = operate(&state, lock.user.as_str(), OperatorRequest::Restart { reason }).await;
        let then = if restarted.status().is_success() {
            "its trader restarts to drop it".to_owned()
        } else {
            format!("its trader drops it at its next start (a restart now was refused: HTTP {})", restarted.status())
        };
        HttpResponse::Ok().json(json!({
            "ok": true,
            "detail": format!("lock {id} ({}) of {} cleared; {then}", lock.failure_point, lock.user),
        }))
    })
    .await
}
