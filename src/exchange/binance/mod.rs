//! The Binance USDⓈ-M Futures REST client: [`Exchange`] over reqwest (rustls, bundled roots).
//!
//! - Requests run on the client's own small tokio runtime, so the connection pool never belongs to
//!   an actor's arbiter (a stopped arbiter would leave dead pooled connections behind).
//! - Signed requests carry `timestamp` (the synced exchange clock, [`clock`]), `recvWindow`, and
//!   `signature` last ([`sign`]); the API key goes in `X-MBX-APIKEY`. Keys and secrets are
//!   [`Secret`]s: never printed, never in an error.
//! - Every request passes the host's shared weight budget first ([`budget`]): throttled before a
//!   429, refused outright during a 418 ban.
//! - Every answer is classified ([`error`]). Reads are retried a few times when nothing was
//!   executed; order placement is never retried here (the order router decides, by client id).
//! - Prices and quantities go out as decimal strings and come back as decimals ([`models`]).

pub mod budget;
pub mod clock;
pub mod error;
pub mod market_stream;
pub mod models;
pub mod sign;
pub mod user_stream;
mod ws;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use reqwest::Method;
use serde_json::Value;
use url::Url;

use crate::clock::Clock;
use crate::domain::{
    Balance, Candle, ClientOrderId, ExchangeOrder, Fill, OrderRequest, OrderType, Position, Symbol, SymbolRules,
    Timeframe, UserId,
};
use crate::exchange::binance::budget::{Admission, WeightBudget};
use crate::exchange::binance::clock::ExchangeClock;
use crate::exchange::binance::error::Effect;
use crate::exchange::retry::RetryPolicy;
use crate::exchange::{Exchange, ExchangeError};
use crate::secret::Secret;

/// Attempts for a read whose failure executed nothing.
/// How long symbol rules (exchangeInfo) are trusted before they are fetched again.
const RULES_TTL_MS: i64 = 3_600_000;
/// Longest a request waits for weight budget before it gives up as rate limited.
const BUDGET_WAIT_MS_MAX: u64 = 65_000;
/// How often the request counters go to the log.
const STATS_LOG_INTERVAL_MS: i64 = 60_000;
/// Binance's weight for `GET /fapi/v1/openOrders` without a symbol (with one: 1).
const OPEN_ORDERS_EVERY_SYMBOL_WEIGHT: u32 = 40;

/// One account's credentials.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub api_key: Secret,
    pub api_secret: Secret,
}

#[derive(Debug, Clone)]
pub struct BinanceSettings {
    /// `https://fapi.binance.com`, `https://demo-fapi.binance.com`, or a local `bulwark sim`.
    pub base_url: Url,
    pub recv_window_ms: i64,
    /// Per request.
    pub timeout: Duration,
    /// Until exchangeInfo says otherwise.
    pub weight_limit_per_minute: u32,
    pub credentials: BTreeMap<UserId, Credentials>,
    /// Users whose credentials could not be read, with why (an environment variable not set):
    /// their signed requests fail as `Auth` with this reason, which halts only them.
    pub credentials_missing: BTreeMap<UserId, String>,
    /// Retries of reads and cancels (`[retry]`).
    pub retry: RetryPolicy,
    /// Follow each account's user data stream ([`user_stream`]); off, `account_stream` answers
    /// `None` and every account sync reads by REST.
    pub user_data_stream: bool,
    /// Follow the kline streams of the feeds in use ([`market_stream`]); off, `candle_stream`
    /// answers `None` and candles are fetched by REST after each close.
    pub market_stream: bool,
    /// With `market_stream`, also follow each feed symbol's aggregate trades: a streamed closed
    /// candle then carries its large-trade flow ([`market_stream`]).
    pub trade_stream: bool,
    /// The WebSocket base (`wss://fstream.binance.com`, or a simulator's `ws://host:port`).
    pub stream_url: Url,
    pub listen_key_keepalive: Duration,
    /// New stream connections (first ones, reconnects and rotations) are spread at most this many a
    /// second over the whole client (one IP): a 10,000-account start does not storm the exchange.
    pub stream_connects_per_second: u32,
    /// A connection is replaced after this long, the new one up before the old one is closed
    /// (Binance cuts a connection at 24 h).
    pub stream_rotation: Duration,
    /// A connection that delivered nothing (no event, ping or pong) for this long is treated as down.
    pub stream_silence_max: Duration,
}

/// Requests sent and weight used, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestStats {
    pub by_endpoint: BTreeMap<&'static str, u64>,
    pub weight_used: u32,
    pub weight_limit: u32,
    pub banned_until_ms: Option<i64>,
}

/// Owns the client's runtime; shuts it down without blocking (it may be dropped on an arbiter).
struct IoRuntime(Option<tokio::runtime::Runtime>);

impl Drop for IoRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

struct Inner {
    settings: BinanceSettings,
    http: reqwest::Client,
    local: Arc<dyn Clock>,
    clock: Mutex<ExchangeClock>,
    budget: Mutex<WeightBudget>,
    rules: Mutex<Option<(i64, HashMap<Symbol, SymbolRules>)>>,
    stats: Mutex<(BTreeMap<&'static str, u64>, i64)>,
    /// The next free slot (local ms) for a stream connection (`stream_connects_per_second`):
    /// taken by each connecting stream task.
    stream_connect_slot_ms: Mutex<i64>,
    /// Requests that waited for weight budget since the last log line about it, and when that
    /// line was written (local ms): a fleet waiting together logs one line every
    /// `BUDGET_WAIT_LOG_INTERVAL_MS`, not one per request. Written by `admit`.
    budget_waits: Mutex<(u64, i64)>,
}

/// At most one "waiting for weight budget" line this often.
const BUDGET_WAIT_LOG_INTERVAL_MS: i64 = 10_000;

/// The client. Cheap to clone; one serves every account on one host.
#[derive(Clone)]
pub struct BinanceClient {
    inner: Arc<Inner>,
    io: Arc<IoRuntime>,
}

impl fmt::Debug for BinanceClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BinanceClient")
            .field("base_url", &self.inner.settings.base_url.as_str())
            .field("accounts", &self.inner.settings.credentials.len())
            .finish()
    }
}

/// Aborts the spawned request when the waiting caller goes away.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    async fn wait(mut self) -> Result<T, tokio::task::JoinError> {
        (&mut self.0).await
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One request, before signing.
struct Call {
    method: Method,
    path: &'static str,
    /// `"GET /fapi/v1/klines"`: the counter name.
    endpoint: &'static str,
    params: Vec<(&'static str, String)>,
    /// Signed with this account's credentials, if any.
    account: Option<UserId>,
    /// Security type `USER_STREAM`: the account's API key in its header, no signature.
    api_key_only: bool,
    /// For an order: the local time the caller committed it as sent. It is signed with the
    /// exchange's time at that moment (not at signing, which may come later after a wait for
    /// budget), so the exchange refuses it once `recvWindow` has passed since then: the caller's
    /// "not found after the window means never placed" holds whatever happened in between.
    issued_at_local_ms: Option<i64>,
    weight: u32,
    effect: Effect,
}

impl Call {
    fn new(method: Method, path: &'static str, endpoint: &'static str, weight: u32) -> Self {
        let effect = if method == Method::GET { Effect::Read } else { Effect::Write };
        Self {
            method,
            path,
            endpoint,
            params: Vec::new(),
            account: None,
            api_key_only: false,
            issued_at_local_ms: None,
            weight,
            effect,
        }
    }

    fn param(mut self, key: &'static str, value: impl ToString) -> Self {
        self.params.push((key, value.to_string()));
        self
    }

    fn issued_at(mut self, local_ms: i64) -> Self {
        self.issued_at_local_ms = Some(local_ms);
        self
    }

    fn signed(mut self, account: &UserId) -> Self {
        self.account = Some(account.clone());
        self
    }

    /// With the account's API key only (listenKey calls).
    fn with_api_key(mut self, account: &UserId) -> Self {
        self.account = Some(account.clone());
        self.api_key_only = true;
        self
    }
}

impl BinanceClient {
    pub fn new(settings: BinanceSettings, local: Arc<dyn Clock>) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("bulwark/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("binance-io")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the HTTP runtime: {e}"))?;
        let budget = WeightBudget::new(settings.weight_limit_per_minute);
        Ok(Self {
            inner: Arc::new(Inner {
                settings,
                http,
                local,
                clock: Mutex::new(ExchangeClock::default()),
                budget: Mutex::new(budget),
                rules: Mutex::new(None),
                stats: Mutex::new((BTreeMap::new(), 0)),
                stream_connect_slot_ms: Mutex::new(i64::MIN),
                budget_waits: Mutex::new((0, i64::MIN)),
            }),
            io: Arc::new(IoRuntime(Some(runtime))),
        })
    }

    pub fn stats(&self) -> RequestStats {
        let now_ms = self.inner.local.now_ms();
        let budget = self.inner.budget.lock();
        RequestStats {
            by_endpoint: self.inner.stats.lock().0.clone(),
            weight_used: budget.used(),
            weight_limit: budget.limit(),
            banned_until_ms: budget.banned_until_ms(now_ms),
        }
    }

    /// Runs `work` on the client's runtime.
    async fn on_io<T: Send + 'static>(
        &self,
        effect: Effect,
        work: impl FnOnce(Arc<Inner>) -> futures::future::BoxFuture<'static, Result<T, ExchangeError>>,
    ) -> Result<T, ExchangeError> {
        let runtime = self.io.0.as_ref().expect("Invariant: the runtime lives as long as the client");
        // If the caller stops waiting (a timeout above us, an actor stopping), the request must
        // stop too: a detached request could be signed and sent long after the caller decided the
        // order was never placed.
        let task = AbortOnDrop(runtime.spawn(work(self.inner.clone())));
        match task.wait().await {
            Ok(result) => result,
            Err(error) => {
                let detail = format!("request task failed: {error}");
                Err(match effect {
                    Effect::Write => ExchangeError::UnknownOutcome { detail },
                    Effect::Read => ExchangeError::Retryable { detail },
                })
            }
        }
    }

    /// Every row of the account's v3 position list (no symbol: weight 5).
    async fn position_rows(&self, account: &UserId) -> Result<Vec<models::PositionRow>, ExchangeError> {
        let account = account.clone();
        let body = self
            .read(move || {
                Call::new(Method::GET, "/fapi/v3/positionRisk", "GET /fapi/v3/positionRisk", 5).signed(&account)
            })
            .await?;
        models::parse("GET /fapi/v3/positionRisk", &body)
    }

    async fn read(&self, call: impl Fn() -> Call + Send + Sync + 'static) -> Result<String, ExchangeError> {
        self.on_io(Effect::Read, |inner| Box::pin(async move { inner.send_with_retries(&call).await })).await
    }

    async fn write(&self, call: Call) -> Result<String, ExchangeError> {
        self.on_io(Effect::Write, |inner| Box::pin(async move { inner.send(call).await })).await
    }
}

impl Inner {
    /// Sends an idempotent call (a read, a cancel), again after a backoff while `[retry]` allows.
    async fn send_with_retries(&self, call: &(impl Fn() -> Call + Send + Sync)) -> Result<String, ExchangeError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let error = match self.send(call()).await {
                Ok(body) => return Ok(body),
                Err(error) => error,
            };
            let now_ms = self.local.now_ms();
            let Some(delay_ms) = self.settings.retry.delay_ms(attempt, &error, now_ms, rand::random::<f64>()) else {
                return Err(error);
            };
            tracing::debug!(attempt, delay_ms, %error, "exchange call failed; retrying");
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        }
    }

    /// The exchange's time now, syncing the clock first when it is due.
    async fn exchange_now_ms(&self) -> Result<i64, ExchangeError> {
        let local_ms = self.local.now_ms();
        if !self.clock.lock().needs_sync(local_ms) {
            return Ok(self.clock.lock().now_ms(local_ms).expect("Invariant: a synced clock has an anchor"));
        }
        let sent_ms = self.local.now_ms();
        let body = self.send(Call::new(Method::GET, "/fapi/v1/time", "GET /fapi/v1/time", 1)).await?;
        let received_ms = self.local.now_ms();
        let time: models::ServerTime = models::parse("GET /fapi/v1/time", &body)?;
        let mut clock = self.clock.lock();
        clock.add_sample(sent_ms, received_ms, time.server_time);
        Ok(clock.now_ms(self.local.now_ms()).expect("Invariant: just synced"))
    }

    /// One time request now (no retry), taken as a clock sample, with how far the estimate before
    /// it was from the answer.
    async fn probe_time(&self) -> Result<crate::exchange::TimeProbe, ExchangeError> {
        let sent_ms = self.local.now_ms();
        let body = self.send(Call::new(Method::GET, "/fapi/v1/time", "GET /fapi/v1/time", 1)).await?;
        let received_ms = self.local.now_ms();
        let time: models::ServerTime = models::parse("GET /fapi/v1/time", &body)?;
        let mut clock = self.clock.lock();
        let midpoint_ms = sent_ms + (received_ms - sent_ms) / 2;
        let estimate = clock.now_ms(midpoint_ms);
        let estimate_error_ms = clock.error_ms(midpoint_ms).unwrap_or(0) + (received_ms - sent_ms);
        clock.add_sample(sent_ms, received_ms, time.server_time);
        Ok(crate::exchange::TimeProbe {
            server_ms: time.server_time,
            estimate_off_ms: estimate.map(|estimate| time.server_time - estimate),
            estimate_error_ms,
        })
    }

    async fn admit(&self, weight: u32) -> Result<(), ExchangeError> {
        let mut waited_ms = 0;
        loop {
            let admission = self.budget.lock().admit(weight, self.local.now_ms());
            match admission {
                Admission::Go => return Ok(()),
                Admission::Refuse(error) => return Err(error),
                Admission::Wait { ms } if waited_ms + ms <= BUDGET_WAIT_MS_MAX => {
                    self.note_budget_wait(ms, weight);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    waited_ms += ms;
                }
                Admission::Wait { ms } => return Err(ExchangeError::RateLimited { retry_after_ms: ms }),
            }
        }
    }

    /// Logs that requests wait for weight budget, at most once per `BUDGET_WAIT_LOG_INTERVAL_MS`
    /// with how many waited since the last line.
    fn note_budget_wait(&self, wait_ms: u64, weight: u32) {
        let now_ms = self.local.now_ms();
        let mut waits = self.budget_waits.lock();
        waits.0 += 1;
        if now_ms.saturating_sub(waits.1) >= BUDGET_WAIT_LOG_INTERVAL_MS {
            let requests_waiting = waits.0;
            *waits = (0, now_ms);
            drop(waits);
            tracing::warn!(wait_ms, weight, requests_waiting, "binance: request weight budget nearly spent; waiting");
        }
    }

    /// Sends one request (no retry) and returns the body of a 2xx answer.
    async fn send(&self, call: Call) -> Result<String, ExchangeError> {
        let credentials = match &call.account {
            Some(account) => Some(self.settings.credentials.get(account).ok_or_else(|| ExchangeError::Auth {
                detail: match self.settings.credentials_missing.get(account) {
                    Some(why) => format!("no API credentials for user {account}: {why}"),
                    None => format!("no API credentials configured for user {account}"),
                },
            })?),
            None => None,
        };
        self.admit(call.weight).await?;
        let mut request_headers = Vec::new();
        let signing = match credentials {
            Some(credentials) if call.api_key_only => {
                request_headers.push(("X-MBX-APIKEY", credentials.api_key.clone()));
                None
            }
            Some(credentials) => {
                // Syncs the clock first when a sample is due.
                let now_exchange_ms = Box::pin(self.exchange_now_ms()).await?;
                let timestamp_ms = match call.issued_at_local_ms {
                    None => now_exchange_ms,
                    Some(issued_at_local_ms) => {
                        let held_ms = self.local.now_ms() - issued_at_local_ms;
                        let window_ms = self.settings.recv_window_ms;
                        if held_ms > window_ms - window_ms / 4 {
                            return Err(ExchangeError::Retryable {
                                detail: format!(
                                    "not sent: it waited {held_ms} ms for rate-limit budget and would reach the exchange after its {window_ms} ms receive window"
                                ),
                            });
                        }
                        self.clock.lock().now_ms(issued_at_local_ms).unwrap_or(now_exchange_ms)
                    }
                };
                Some((credentials.clone(), timestamp_ms))
            }
            None => None,
        };
        let query = {
            // The serializer is not `Send`; it must be gone before the next await.
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            for (key, value) in &call.params {
                query.append_pair(key, value);
            }
            match signing {
                Some((credentials, timestamp_ms)) => {
                    query.append_pair("timestamp", &timestamp_ms.to_string());
                    query.append_pair("recvWindow", &self.settings.recv_window_ms.to_string());
                    request_headers.push(("X-MBX-APIKEY", credentials.api_key));
                    sign::signed_query(&credentials.api_secret, &query.finish())
                }
                None => query.finish(),
            }
        };
        let mut url = self
            .settings
            .base_url
            .join(call.path)
            .map_err(|e| ExchangeError::Rejected { code: 0, msg: format!("bad URL: {e}") })?;
        url.set_query((!query.is_empty()).then_some(query.as_str()));
        let mut request = self.http.request(call.method.clone(), url);
        for (name, value) in &request_headers {
            let mut value = reqwest::header::HeaderValue::from_str(value.expose()).map_err(|_| {
                ExchangeError::Auth { detail: format!("the API key for {name} is not a valid header value") }
            })?;
            value.set_sensitive(true);
            request = request.header(*name, value);
        }
        self.count(call.endpoint);
        let response = request.send().await.map_err(|e| error::from_transport(&e, call.effect))?;
        let now_ms = self.local.now_ms();
        let headers = response.headers();
        if let Some(used) =
            headers.get("x-mbx-used-weight-1m").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
        {
            self.budget.lock().observe_used(used, now_ms);
        }
        let retry_after_secs = headers.get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        let status = response.status();
        let body = response.text().await.map_err(|e| error::from_transport(&e, call.effect))?;
        if status.is_success() {
            return Ok(body);
        }
        let error = error::from_response(status.as_u16(), &body, retry_after_secs, call.effect, now_ms);
        match &error {
            ExchangeError::Banned { until_ms } => {
                tracing::error!(
                    until_ms,
                    endpoint = call.endpoint,
                    "binance: banned (418); every request to this host stops until the ban ends"
                );
                self.budget.lock().ban(*until_ms);
            }
            ExchangeError::RateLimited { retry_after_ms } => {
                tracing::warn!(
                    retry_after_ms,
                    endpoint = call.endpoint,
                    "binance: rate limited (429); pausing every request"
                );
                self.budget.lock().pause(now_ms + *retry_after_ms as i64);
            }
            ExchangeError::Retryable { detail } if detail.starts_with("-1021") => self.clock.lock().invalidate(),
            _ => {}
        }
        Err(error)
    }

    fn count(&self, endpoint: &'static str) {
        let now_ms = self.local.now_ms();
        let mut stats = self.stats.lock();
        *stats.0.entry(endpoint).or_default() += 1;
        if now_ms - stats.1 >= STATS_LOG_INTERVAL_MS {
            stats.1 = now_ms;
            let budget = self.budget.lock();
            tracing::info!(requests = ?stats.0, weight_used = budget.used(), weight_limit = budget.limit(), "binance: requests so far");
        }
    }

    async fn rules(&self) -> Result<HashMap<Symbol, SymbolRules>, ExchangeError> {
        let now_ms = self.local.now_ms();
        if let Some((fetched_at_ms, rules)) = self.rules.lock().as_ref()
            && now_ms - fetched_at_ms < RULES_TTL_MS
        {
            return Ok(rules.clone());
        }
        let body = self
            .send_with_retries(&|| Call::new(Method::GET, "/fapi/v1/exchangeInfo", "GET /fapi/v1/exchangeInfo", 1))
            .await?;
        let info: models::ExchangeInfo = models::parse("GET /fapi/v1/exchangeInfo", &body)?;
        if let Some(limit) = info.weight_limit_per_minute() {
            self.budget.lock().set_limit(limit);
        }
        let rules = info.rules();
        *self.rules.lock() = Some((now_ms, rules.clone()));
        Ok(rules)
    }
}

/// Klines request weight by `limit` (exchange-apis.md §1.3).
fn klines_weight(limit: u16) -> u32 {
    match limit {
        0..100 => 1,
        100..500 => 2,
        500..=1000 => 5,
        _ => 10,
    }
}

#[async_trait]
impl Exchange for BinanceClient {
    fn venue(&self) -> &'static str {
        "binance"
    }

    /// Binance's clock is a wall clock (an accelerated simulator's is not, but a client cannot
    /// know that: its locks then end by candle time first and by the wall estimate later).
    fn venue_pace(&self) -> crate::clock::VenuePace {
        crate::clock::VenuePace::WALL
    }

    /// The account's user data stream ([`user_stream`]), when it is on and the account has
    /// credentials; otherwise `None` and the account is read by REST.
    fn account_stream(&self, account: &UserId) -> Option<crate::exchange::AccountStream> {
        if !self.inner.settings.user_data_stream || !self.inner.settings.credentials.contains_key(account) {
            return None;
        }
        let runtime = self.io.0.as_ref()?;
        let (sender, receiver) = tokio::sync::mpsc::channel(crate::limits::ACCOUNT_STREAM_QUEUE_MAX);
        runtime.spawn(user_stream::run(self.inner.clone(), account.clone(), sender));
        Some(receiver)
    }

    /// One market connection ([`market_stream`]) for `feeds`, when market streams are on.
    fn candle_stream(&self, feeds: &[(Symbol, Timeframe)]) -> Option<crate::exchange::CandleStream> {
        if !self.inner.settings.market_stream || feeds.is_empty() {
            return None;
        }
        let runtime = self.io.0.as_ref()?;
        let (sender, receiver) = tokio::sync::mpsc::channel(crate::limits::MARKET_STREAM_QUEUE_MAX);
        runtime.spawn(market_stream::run(self.inner.clone(), feeds.to_vec(), sender));
        Some(receiver)
    }

    fn clock_error_ms(&self) -> i64 {
        let local_ms = self.inner.local.now_ms();
        self.inner.clock.lock().error_ms(local_ms).unwrap_or(0)
    }

    fn estimated_now_ms(&self) -> Option<i64> {
        let local_ms = self.inner.local.now_ms();
        self.inner.clock.lock().now_ms(local_ms)
    }

    async fn probe_time_ms(&self) -> Result<crate::exchange::TimeProbe, ExchangeError> {
        self.on_io(Effect::Read, |inner| Box::pin(async move { inner.probe_time().await })).await
    }

    fn request_budget(&self) -> Option<crate::exchange::RequestBudget> {
        let stats = self.stats();
        Some(crate::exchange::RequestBudget {
            weight_used: stats.weight_used,
            weight_limit: stats.weight_limit,
            banned_until_ms: stats.banned_until_ms,
        })
    }

    async fn server_time_ms(&self) -> Result<i64, ExchangeError> {
        self.on_io(Effect::Read, |inner| Box::pin(async move { inner.exchange_now_ms().await })).await
    }

    async fn symbol_rules(&self, symbol: &Symbol) -> Result<SymbolRules, ExchangeError> {
        let symbol = symbol.clone();
        self.on_io(Effect::Read, move |inner| {
            Box::pin(async move {
                inner
                    .rules()
                    .await?
                    .get(&symbol)
                    .copied()
                    .ok_or_else(|| ExchangeError::Rejected { code: -1121, msg: format!("Invalid symbol {symbol}.") })
            })
        })
        .await
    }

    async fn klines(&self, symbol: &Symbol, timeframe: Timeframe, limit: u16) -> Result<Vec<Candle>, ExchangeError> {
        let symbol = symbol.clone();
        let body = self
            .read(move || {
                Call::new(Method::GET, "/fapi/v1/klines", "GET /fapi/v1/klines", klines_weight(limit))
                    .param("symbol", &symbol)
                    .param("interval", timeframe)
                    .param("limit", limit)
            })
            .await?;
        let rows: Vec<Vec<Value>> = models::parse("GET /fapi/v1/klines", &body)?;
        rows.iter().map(|row| models::candle(row)).collect()
    }

    async fn position(&self, account: &UserId, symbol: &Symbol) -> Result<Position, ExchangeError> {
        let (account, query_symbol) = (account.clone(), symbol.clone());
        let body = self
            .read(move || {
                Call::new(Method::GET, "/fapi/v3/positionRisk", "GET /fapi/v3/positionRisk", 5)
                    .param("symbol", &query_symbol)
                    .signed(&account)
            })
            .await?;
        let rows: Vec<models::PositionRow> = models::parse("GET /fapi/v3/positionRisk", &body)?;
        Ok(models::position(symbol, &rows))
    }

    async fn positions(&self, account: &UserId) -> Result<Vec<Position>, ExchangeError> {
        models::positions(&self.position_rows(account).await?)
    }

    async fn balance(&self, account: &UserId) -> Result<Balance, ExchangeError> {
        let account = account.clone();
        let body = self
            .read(move || Call::new(Method::GET, "/fapi/v3/balance", "GET /fapi/v3/balance", 5).signed(&account))
            .await?;
        let rows: Vec<models::BalanceRow> = models::parse("GET /fapi/v3/balance", &body)?;
        Ok(models::balance(&rows))
    }

    async fn create_order(&self, account: &UserId, request: &OrderRequest) -> Result<ExchangeOrder, ExchangeError> {
        let mut call = Call::new(Method::POST, "/fapi/v1/order", "POST /fapi/v1/order", 0)
            .param("symbol", &request.symbol)
            .param("side", request.side.as_str())
            .param("type", request.order_type.as_str())
            .param("quantity", request.quantity);
        if let OrderType::Limit { price } = request.order_type {
            call = call.param("price", price).param("timeInForce", "GTC");
        }
        if request.reduce_only {
            call = call.param("reduceOnly", "true");
        }
        let call = call
            .param("newClientOrderId", &request.client_order_id)
            .param("newOrderRespType", "RESULT")
            .signed(account)
            .issued_at(request.timestamp_ms);
        let body = self.write(call).await?;
        // The order may exist even if its answer cannot be read: Malformed counts as unknown.
        models::parse::<models::OrderBody>("POST /fapi/v1/order", &body)?.into_order()
    }

    async fn order_by_client_id(
        &self,
        account: &UserId,
        symbol: &Symbol,
        client_order_id: &ClientOrderId,
    ) -> Result<Option<ExchangeOrder>, ExchangeError> {
        let (account, symbol, id) = (account.clone(), symbol.clone(), client_order_id.clone());
        let result = self
            .read(move || {
                Call::new(Method::GET, "/fapi/v1/order", "GET /fapi/v1/order", 1)
                    .param("symbol", &symbol)
                    .param("origClientOrderId", &id)
                    .signed(&account)
            })
            .await;
        match result {
            Ok(body) => models::parse::<models::OrderBody>("GET /fapi/v1/order", &body)?.into_order().map(Some),
            Err(ExchangeError::Rejected { code: -2013, .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    async fn cancel_order(
        &self,
        account: &UserId,
        symbol: &Symbol,
        client_order_id: &ClientOrderId,
    ) -> Result<ExchangeOrder, ExchangeError> {
        // A cancel is idempotent (cancelling twice is refused, not doubled): retried like a read.
        let (account, symbol, client_order_id) = (account.clone(), symbol.clone(), client_order_id.clone());
        let call = move || {
            Call::new(Method::DELETE, "/fapi/v1/order", "DELETE /fapi/v1/order", 1)
                .param("symbol", &symbol)
                .param("origClientOrderId", &client_order_id)
                .signed(&account)
        };
        let body =
            self.on_io(Effect::Write, |inner| Box::pin(async move { inner.send_with_retries(&call).await })).await?;
        models::parse::<models::OrderBody>("DELETE /fapi/v1/order", &body)?.into_order()
    }

    async fn open_orders(
        &self,
        account: &UserId,
        symbol: Option<&Symbol>,
    ) -> Result<Vec<ExchangeOrder>, ExchangeError> {
        let (account, symbol) = (account.clone(), symbol.cloned());
        let body = self
            .read(move || {
                let weight = if symbol.is_some() { 1 } else { OPEN_ORDERS_EVERY_SYMBOL_WEIGHT };
                let call = Call::new(Method::GET, "/fapi/v1/openOrders", "GET /fapi/v1/openOrders", weight);
                let call = match &symbol {
                    Some(symbol) => call.param("symbol", symbol),
                    None => call,
                };
                call.signed(&account)
            })
            .await?;
        let rows: Vec<models::OrderBody> = models::parse("GET /fapi/v1/openOrders", &body)?;
        rows.into_iter().map(models::OrderBody::into_order).collect()
    }

    async fn positions_and_open_orders(
        &self,
        account: &UserId,
    ) -> Result<(Vec<Position>, Vec<ExchangeOrder>), ExchangeError> {
        let rows = self.position_rows(account).await?;
        let positions = models::positions(&rows)?;
        // v3 lists every symbol with a position or an open order: a symbol not listed has none.
        let listed = models::listed_symbols(&rows)?;
        if listed.len() >= OPEN_ORDERS_EVERY_SYMBOL_WEIGHT as usize {
            return Ok((positions, self.open_orders(account, None).await?));
        }
        let mut open_orders = Vec::new();
        for symbol in &listed {
            open_orders.extend(self.open_orders(account, Some(symbol)).await?);
        }
        Ok((positions, open_orders))
    }

    async fn fills(&self, account: &UserId, symbol: &Symbol, since_ms: i64) -> Result<Vec<Fill>, ExchangeError> {
        let (account, symbol) = (account.clone(), symbol.clone());
        let body = self
            .read(move || {
                Call::new(Method::GET, "/fapi/v1/userTrades", "GET /fapi/v1/userTrades", 5)
                    .param("symbol", &symbol)
                    .param("startTime", since_ms)
                    .signed(&account)
            })
            .await?;
        let rows: Vec<models::TradeRow> = models::parse("GET /fapi/v1/userTrades", &body)?;
        rows.into_iter().map(models::TradeRow::into_fill).collect()
    }

    async fn order_fills(
        &self,
        account: &UserId,
        symbol: &Symbol,
        exchange_order_id: &str,
    ) -> Result<Vec<Fill>, ExchangeError> {
        let (account, symbol, order_id) = (account.clone(), symbol.clone(), exchange_order_id.to_owned());
        let body = self
            .read(move || {
                Call::new(Method::GET, "/fapi/v1/userTrades", "GET /fapi/v1/userTrades", 5)
                    .param("symbol", &symbol)
                    .param("orderId", &order_id)
                    .signed(&account)
            })
            .await?;
        let rows: Vec<models::TradeRow> = models::parse("GET /fapi/v1/userTrades", &body)?;
        rows.into_iter().map(models::TradeRow::into_fill).collect()
    }
}
