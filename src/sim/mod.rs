//! `bulwark sim`: a Binance USDⓈ-M-compatible exchange simulator, run as its own process so that it
//! outlives a crashed bulwark, with seeded fault injection.
//!
//! It speaks the same endpoints, parameters, JSON shapes and error codes as Binance for what a
//! Binance client calls: orders, klines and listen keys ([`binance_api`]), the account endpoints
//! ([`binance_account`]) and market data ([`binance_market_data`]), backed by the paper matching engine and its
//! replayed real candles, and serves CoinGlass-v4-shaped data derived from its own market
//! ([`coinglass`]). Every request passes, in order: the ban check (418), the per-minute weight
//! limit (429, then a ban after `ban_after_violations`), signature and receive-window checks, and
//! the [`faults`] drawn for its endpoint. Control endpoints (`/sim/...`) pass none of these.
//!
//! - `GET /sim/ledger`: every order the simulator accepted, with its fills, and every account's
//!   non-zero positions (ground truth; [`crate::exchange::paper::venue::Ledger`]).
//! - `GET /sim/stats`: requests per endpoint, weight used, requests seen while banning.
//! - `GET|POST /sim/faults`: the fault plan (JSON, the shape of `[sim.faults]`).
//!
//! The simulator's clock is its market clock: real time by default (`[sim] speed = 1`, server time
//! is the wall clock), or `speed` times faster for tests. Signed timestamps are in that clock;
//! their receive window is measured in wall time (it stands for network delay).

mod binance_account;
mod binance_api;
mod binance_market_data;
mod coinglass;
pub mod faults;
mod market_stream;
mod user_stream;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use anyhow::Context as _;
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{Value, json};

use crate::clock::Clock;
use crate::config::SimConfig;
use crate::domain::{Symbol, SymbolRules, UserId};
use crate::exchange::paper::PaperExchange;
use crate::exchange::paper::market::MarketClock;
use crate::instance_lock::InstanceLock;
use crate::persistence::paper_journal::PaperJournal;
use crate::secret::Secret;
use crate::sim::faults::{Aftermath, FaultPlan, Faults};

/// Largest request body the simulator reads.
const BODY_BYTES_MAX: usize = 64 * 1024;
const MINUTE_MS: i64 = 60_000;

/// The per-minute request-weight limit, and the ban that follows repeated violations.
#[derive(Debug)]
struct RateLimiter {
    limit: u32,
    ban_after: u32,
    ban_ms: i64,
    minute: i64,
    used: u32,
    violations: u32,
    banned_until_ms: Option<i64>,
}

enum Charge {
    Admitted,
    Throttled { retry_after_secs: u64 },
    Banned { until_ms: i64 },
}

impl RateLimiter {
    fn roll(&mut self, now_ms: i64) {
        let minute = now_ms.div_euclid(MINUTE_MS);
        if minute != self.minute {
            (self.minute, self.used, self.violations) = (minute, 0, 0);
        }
    }

    fn banned_until(&self, now_ms: i64) -> Option<i64> {
        self.banned_until_ms.filter(|until| *until > now_ms)
    }

    fn ban(&mut self, now_ms: i64, duration_ms: i64) {
        self.banned_until_ms = Some(now_ms + duration_ms);
    }

    fn charge(&mut self, weight: u32, now_ms: i64) -> Charge {
        self.roll(now_ms);
        self.used += weight;
        if self.used <= self.limit {
            return Charge::Admitted;
        }
        self.violations += 1;
        if self.violations >= self.ban_after {
            self.ban(now_ms, self.ban_ms);
            return Charge::Banned { until_ms: now_ms + self.ban_ms };
        }
        let retry_after_secs = (((self.minute + 1) * MINUTE_MS - now_ms) / 1_000).max(1) as u64;
        Charge::Throttled { retry_after_secs }
    }
}

#[derive(Debug, Default, Serialize)]
struct SimStats {
    requests: BTreeMap<String, u64>,
    requests_while_banned: u64,
    /// Requests held past the client's patience (`hang_ms`), per endpoint.
    hung: BTreeMap<String, u64>,
    /// User data stream connections opened (WebSocket upgrades with a live listenKey).
    user_stream_connections: u64,
    /// Market stream connections opened (on any path).
    market_stream_connections: u64,
    /// Stream faults met, by kind (`disconnect`, `stall`, `expire`, `duplicate`, `delay`, `drop`).
    stream_faults: BTreeMap<String, u64>,
    /// Request weight charged since start (every request the ban let through), for comparing
    /// designs over a whole run.
    weight_charged_total: u64,
}

/// Everything a request handler needs.
pub struct SimState {
    exchange: PaperExchange,
    market_clock: MarketClock,
    clock: Arc<dyn Clock>,
    /// Accounts by API key. The keys are the simulator's own test credentials; never logged.
    accounts: HashMap<String, (UserId, Secret)>,
    coinglass_api_key: Option<Secret>,
    symbols: Vec<(Symbol, SymbolRules)>,
    faults: Mutex<Faults>,
    limiter: Mutex<RateLimiter>,
    stats: Mutex<SimStats>,
    /// The live listenKeys (written by the listenKey endpoints, read by user data connections).
    listen_keys: Mutex<user_stream::ListenKeys>,
    /// The seed the listenKeys are derived from.
    seed: u64,
    /// Each account's open user data connections.
    connections: user_stream::Connections,
}

impl std::fmt::Debug for SimState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimState")
            .field("accounts", &self.accounts.len())
            .field("symbols", &self.symbols.len())
            .finish()
    }
}

impl SimState {
    fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The exchange's clock (market time), with any configured skew.
    fn exchange_now_ms(&self, skew_ms: i64) -> i64 {
        self.market_clock.market_now_ms(self.now_ms()) + skew_ms
    }
}

/// A running simulator.
#[derive(Debug)]
pub struct RunningSim {
    pub local_addr: SocketAddr,
    pub state: Arc<SimState>,
    /// Held while the simulator runs: one simulator per data directory.
    _lock: InstanceLock,
}

/// Opens the books, binds the listener and returns the server to run (inside an actix system).
pub async fn start(config: SimConfig, clock: Arc<dyn Clock>) -> anyhow::Result<(RunningSim, actix_web::dev::Server)> {
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("creating {}", config.data_dir.display()))?;
    let journal_path = config.data_dir.join("paper_exchange.db");
    let lock = InstanceLock::acquire(&journal_path)?;
    let journal = PaperJournal::open(&journal_path).with_context(|| format!("opening {}", journal_path.display()))?;
    let symbols = config.paper.symbols.iter().map(|s| (s.symbol.clone(), s.rules)).collect();
    let exchange =
        PaperExchange::start(config.paper.clone(), clock.clone(), journal).context("starting the matching engine")?;
    let market_clock = exchange.market_clock().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let seed = config.paper.seed;
    let mut faults = Faults::new(FaultPlan::default(), seed);
    let mut limiter = RateLimiter {
        limit: config.weight_limit_per_minute,
        ban_after: config.ban_after_violations,
        ban_ms: config.ban_secs as i64 * 1_000,
        minute: 0,
        used: 0,
        violations: 0,
        banned_until_ms: None,
    };
    apply_plan(&mut faults, &mut limiter, config.faults.clone(), clock.now_ms());
    let state = Arc::new(SimState {
        exchange,
        market_clock,
        clock,
        accounts: config
            .accounts
            .iter()
            .map(|a| (a.api_key.expose().to_owned(), (a.user.clone(), a.api_secret.clone())))
            .collect(),
        coinglass_api_key: config.coinglass_api_key.clone(),
        symbols,
        faults: Mutex::new(faults),
        limiter: Mutex::new(limiter),
        stats: Mutex::new(SimStats::default()),
        listen_keys: Mutex::new(user_stream::ListenKeys::default()),
        connections: user_stream::Connections::default(),
        seed,
    });
    let data = web::Data::from(state.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(web::PayloadConfig::new(BODY_BYTES_MAX))
            // The user data stream, on Binance's paths (the 2026 `/private` form and the older one).
            .route("/private/ws/{key}", web::get().to(user_stream::connect))
            .route("/private/ws", web::get().to(user_stream::connect))
            // Market streams on the 2026 `/market` path; on the other paths they are accepted and
            // deliver nothing, as Binance's do.
            .route("/market/ws/{streams:.*}", web::get().to(market_stream::connect))
            .route("/market/ws", web::get().to(market_stream::connect))
            .route("/market/stream", web::get().to(market_stream::connect))
            .route("/public/ws/{streams:.*}", web::get().to(market_stream::connect))
            .route("/public/ws", web::get().to(market_stream::connect))
            .route("/public/stream", web::get().to(market_stream::connect))
            .route("/stream", web::get().to(market_stream::connect))
            .route("/ws/{key}", web::get().to(legacy_ws))
            .route("/ws", web::get().to(market_stream::connect))
            // Anywhere else a WebSocket upgrade is refused at once, before any body is read.
            .route("/{path:.*}", web::route().guard(actix_web::guard::fn_guard(asks_for_websocket)).to(refuse_upgrade))
            .default_service(web::route().to(dispatch))
    })
    .workers(2)
    .shutdown_timeout(2)
    .bind(config.listen)
    .with_context(|| format!("binding {}", config.listen))?;
    let local_addr = *server.addrs().first().context("the listener has no address")?;
    Ok((RunningSim { local_addr, state, _lock: lock }, server.run()))
}

/// Whether a request asks to become a WebSocket (`Upgrade: websocket`, in any case).
fn asks_for_websocket(context: &actix_web::guard::GuardContext<'_>) -> bool {
    context
        .head()
        .headers()
        .get("upgrade")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// A WebSocket upgrade on a REST path: 404 with a Binance-shaped body naming the stream paths,
/// where the REST handler would wait for a body that never comes.
async fn refuse_upgrade(request: HttpRequest) -> HttpResponse {
    let msg = format!(
        "{} is not a stream: WebSocket streams are served on /market/ws, /market/stream and /private/ws",
        request.path()
    );
    binance_error(StatusCode::NOT_FOUND, -1000, &msg)
}

/// The retired `/ws/<name>` path: a listenKey opens its user data stream (as before 2026); a
/// stream name (`<symbol>@<stream>`) is a market stream on the wrong path (accepted, silent).
async fn legacy_ws(request: HttpRequest, body: web::Payload, state: web::Data<SimState>) -> HttpResponse {
    if request.match_info().get("key").is_some_and(|name| name.contains('@')) {
        market_stream::connect(request, body, state).await
    } else {
        user_stream::connect(request, body, state).await
    }
}

fn apply_plan(faults: &mut Faults, limiter: &mut RateLimiter, plan: FaultPlan, now_ms: i64) {
    let ban_secs = plan.ban_secs();
    if ban_secs > 0 {
        limiter.ban(now_ms, ban_secs as i64 * 1_000);
    }
    faults.apply(plan);
}

/// A Binance-style error answer.
fn binance_error(status: StatusCode, code: i64, msg: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "code": code, "msg": msg }))
}

/// What an endpoint answers: a JSON value, or a Binance error.
type Answer = Result<Value, (StatusCode, i64, String)>;

async fn dispatch(request: HttpRequest, body: web::Bytes, state: web::Data<SimState>) -> HttpResponse {
    let path = request.path().to_owned();
    let endpoint = format!("{} {}", request.method(), path);
    if path.starts_with("/sim/") {
        return control(&endpoint, &body, &state).await;
    }
    let now_ms = state.now_ms();
    let banned = {
        let mut stats = state.stats.lock();
        *stats.requests.entry(endpoint.clone()).or_default() += 1;
        let banned = state.limiter.lock().banned_until(now_ms);
        if banned.is_some() {
            stats.requests_while_banned += 1;
        }
        banned
    };
    if let Some(until_ms) = banned {
        return ban_answer(until_ms, now_ms);
    }
    let query = request.query_string().to_owned();
    let body = String::from_utf8_lossy(&body).into_owned();
    let params = binance_api::Params::parse(&query, &body);
    let weight = binance_api::weight(&endpoint, &params);
    let charge = state.limiter.lock().charge(weight, now_ms);
    state.stats.lock().weight_charged_total += u64::from(weight);
    let used = state.limiter.lock().used;
    match charge {
        Charge::Admitted => {}
        Charge::Throttled { retry_after_secs } => {
            let msg = format!(
                "Too many requests; current limit of IP(127.0.0.1) is {} requests per minute.",
                state.limiter.lock().limit
            );
            let mut answer = binance_error(StatusCode::TOO_MANY_REQUESTS, -1003, &msg);
            insert_header(&mut answer, "retry-after", &retry_after_secs.to_string());
            return answer;
        }
        Charge::Banned { until_ms } => return ban_answer(until_ms, now_ms),
    }
    let draw = state.faults.lock().draw(&endpoint);
    if draw.refuse_429 {
        let mut answer = binance_error(StatusCode::TOO_MANY_REQUESTS, -1003, "Too many requests; please slow down.");
        insert_header(&mut answer, "retry-after", "1");
        return answer;
    }
    if draw.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(draw.latency_ms)).await;
    }
    if draw.refuse_5xx {
        return HttpResponse::ServiceUnavailable().body("Service Unavailable.");
    }
    if let Some(hang_ms) = draw.hang_ms {
        // The request arrives late: the client has given up; the receive window decides.
        *state.stats.lock().hung.entry(endpoint.clone()).or_default() += 1;
        tokio::time::sleep(Duration::from_millis(hang_ms)).await;
    }
    let answer = if path.starts_with("/api/futures/") {
        coinglass::answer(&state, &request, &endpoint, &params).await
    } else {
        binance_api::answer(&state, &request, &endpoint, &query, &body, &params, draw.clock_skew_ms).await
    };
    let mut response = match (answer, draw.aftermath) {
        (Ok(_), Aftermath::Unknown503) | (Err(_), Aftermath::Unknown503) => binance_error(
            StatusCode::SERVICE_UNAVAILABLE,
            -1000,
            "Unknown error, please check your request or try again later.",
        ),
        (_, Aftermath::LoseResponse) => lost_response(),
        (_, Aftermath::Malformed) => {
            HttpResponse::Ok().content_type("application/json").body("{\"orderId\": 1, \"status\": ")
        }
        (Ok(value), Aftermath::Answer) => HttpResponse::Ok().json(value),
        (Err((status, code, msg)), Aftermath::Answer) => binance_error(status, code, &msg),
    };
    insert_header(&mut response, "x-mbx-used-weight-1m", &used.to_string());
    response
}

fn insert_header(response: &mut HttpResponse, name: &'static str, value: &str) {
    if let Ok(value) = actix_web::http::header::HeaderValue::from_str(value) {
        response.headers_mut().insert(actix_web::http::header::HeaderName::from_static(name), value);
    }
}

fn ban_answer(until_ms: i64, now_ms: i64) -> HttpResponse {
    let msg = format!(
        "Way too many requests; IP(127.0.0.1) banned until {until_ms}. Please use the websocket for live updates to avoid bans."
    );
    let mut answer = binance_error(StatusCode::IM_A_TEAPOT, -1003, &msg);
    insert_header(&mut answer, "retry-after", &(((until_ms - now_ms) / 1_000).max(1)).to_string());
    answer
}

/// Headers promise a body that never comes whole: the client sees a broken connection.
fn lost_response() -> HttpResponse {
    let chunks: Vec<Result<web::Bytes, std::io::Error>> = vec![
        Ok(web::Bytes::from_static(b"{\"orderId\":")),
        Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection dropped")),
    ];
    HttpResponse::Ok().content_type("application/json").streaming(futures::stream::iter(chunks))
}

async fn control(endpoint: &str, body: &[u8], state: &SimState) -> HttpResponse {
    match endpoint {
        "GET /sim/faults" => HttpResponse::Ok().json(state.faults.lock().plan()),
        "POST /sim/listen-keys/expire" => {
            // {"user": "u1"}: the account's listenKey lapses now (its connections get
            // `listenKeyExpired` and nothing more; `PUT` answers -1125 until a new `POST`).
            let user = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v["user"].as_str().map(str::to_owned))
                .and_then(|name| UserId::new(&name).ok());
            let Some(user) = user else {
                return HttpResponse::BadRequest().json(json!({ "error": "expected {\"user\": \"<account>\"}" }));
            };
            state.listen_keys.lock().expire(&user, state.now_ms());
            tracing::warn!(account = %user, "sim: listenKey expired on request");
            HttpResponse::Ok().json(json!({}))
        }
        "POST /sim/faults" => {
            let plan: FaultPlan = match serde_json::from_slice(body) {
                Ok(plan) => plan,
                Err(error) => {
                    return HttpResponse::BadRequest().json(json!({ "error": format!("fault plan: {error}") }));
                }
            };
            let problems = plan.problems("faults");
            if !problems.is_empty() {
                return HttpResponse::BadRequest().json(json!({ "error": problems.join("; ") }));
            }
            tracing::warn!(plan = %serde_json::to_string(&plan).unwrap_or_default(), "sim: fault plan replaced");
            let now_ms = state.now_ms();
            apply_plan(&mut state.faults.lock(), &mut state.limiter.lock(), plan.clone(), now_ms);
            HttpResponse::Ok().json(plan)
        }
        "GET /sim/stats" => {
            let now_ms = state.now_ms();
            // One lock at a time: requests take `stats` then `limiter`, so holding `limiter` while
            // waiting for `stats` here could deadlock the simulator with a request.
            let stats = {
                let stats = state.stats.lock();
                json!({
                    "requests": stats.requests,
                    "requests_while_banned": stats.requests_while_banned,
                    "hung": stats.hung,
                    "user_stream_connections": stats.user_stream_connections,
                    "market_stream_connections": stats.market_stream_connections,
                    "stream_faults": stats.stream_faults,
                    "weight_charged_total": stats.weight_charged_total,
                })
            };
            let (weight_used, weight_limit, banned_until_ms) = {
                let limiter = state.limiter.lock();
                (limiter.used, limiter.limit, limiter.banned_until(now_ms))
            };
            let mut answer = stats;
            answer.as_object_mut().expect("an object").extend([
                ("weight_used".to_owned(), json!(weight_used)),
                ("weight_limit".to_owned(), json!(weight_limit)),
                ("banned_until_ms".to_owned(), json!(banned_until_ms)),
                ("market_time_ms".to_owned(), json!(state.exchange_now_ms(0))),
            ]);
            HttpResponse::Ok().json(answer)
        }
        "GET /sim/ledger" => match state.exchange.full_ledger().await {
            Ok(ledger) => HttpResponse::Ok().json(ledger),
            Err(error) => HttpResponse::ServiceUnavailable().json(json!({ "error": error.to_string() })),
        },
        _ => HttpResponse::NotFound().json(json!({ "error": format!("no such control endpoint: {endpoint}") })),
    }
}
