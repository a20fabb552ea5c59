//! [`BreakerExchange`]: any [`Exchange`] behind circuit breakers — one per public endpoint of the
//! host (`host:time`, `host:rules`, `host:klines`: one failing endpoint must not be hidden by
//! another that answers) and one per account (position, balance, orders, fills).
//! A call while its breaker is open is not sent: it fails at once as `Retryable` ("nothing was
//! executed") naming the breaker and when it may close, which the trader records as its reason to
//! skip and `bulwark why` shows. A request that got no usable answer (connection, timeout, 5xx,
//! unknown outcome, malformed body) counts as a failure; any answer, even a refusal, is a success;
//! a 418 ban opens the host's breaker until the ban ends. Every open and close is logged once and
//! handed to `on_transition` (the server notifies operators with it).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use serde::Serialize;

use crate::clock::{Clock, rfc3339_ms};
use crate::domain::{
    Balance, Candle, ClientOrderId, ExchangeOrder, Fill, OrderRequest, Position, Symbol, SymbolRules, Timeframe, UserId,
};
use crate::exchange::breaker::{BreakerPolicy, BreakerState, CircuitBreaker, Transition};
use crate::exchange::{Exchange, ExchangeError, RequestBudget};

/// The public endpoints with a breaker each.
const HOST_ENDPOINTS: [&str; 3] = ["time", "rules", "klines"];

/// One breaker as status surfaces show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BreakerStatus {
    /// `host:<endpoint>` or `account:<user>`.
    pub name: String,
    pub user: Option<UserId>,
    pub state: BreakerState,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub last_failure: Option<String>,
}

/// Called once per state change, with the breaker's name.
pub type TransitionHook = Arc<dyn Fn(&str, Option<&UserId>, &Transition) + Send + Sync>;

pub struct BreakerExchange {
    inner: Arc<dyn Exchange>,
    clock: Arc<dyn Clock>,
    policy: BreakerPolicy,
    /// One per public endpoint.
    host: Mutex<BTreeMap<&'static str, CircuitBreaker>>,
    /// One per account, created on first use (bounded by the configured users).
    accounts: Mutex<BTreeMap<UserId, CircuitBreaker>>,
    on_transition: TransitionHook,
    /// Every call's outcome and latency, by endpoint (`/metrics`).
    metrics: crate::metrics::Metrics,
}

impl fmt::Debug for BreakerExchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerExchange").field("inner", &self.inner).field("policy", &self.policy).finish()
    }
}

/// Which breaker a call goes through.
enum Scope<'a> {
    Host(&'static str),
    Account(&'a UserId),
}

impl Scope<'_> {
    fn name(&self) -> String {
        match self {
            Scope::Host(endpoint) => format!("host:{endpoint}"),
            Scope::Account(user) => format!("account:{user}"),
        }
    }
}

impl BreakerExchange {
    pub fn new(
        inner: Arc<dyn Exchange>,
        clock: Arc<dyn Clock>,
        policy: BreakerPolicy,
        on_transition: TransitionHook,
        metrics: crate::metrics::Metrics,
    ) -> Self {
        Self {
            inner,
            clock,
            policy,
            host: Mutex::new(BTreeMap::new()),
            accounts: Mutex::new(BTreeMap::new()),
            on_transition,
            metrics,
        }
    }

    fn with_breaker<R>(&self, scope: &Scope<'_>, act: impl FnOnce(&mut CircuitBreaker) -> R) -> R {
        match scope {
            Scope::Host(endpoint) => {
                act(self.host.lock().entry(endpoint).or_insert_with(|| CircuitBreaker::new(self.policy)))
            }
            Scope::Account(user) => {
                let mut accounts = self.accounts.lock();
                act(accounts.entry((*user).clone()).or_insert_with(|| CircuitBreaker::new(self.policy)))
            }
        }
    }

    fn report(&self, scope: &Scope<'_>, transition: Option<Transition>) {
        let Some(transition) = transition else { return };
        let (name, user) = match scope {
            Scope::Host(_) => (scope.name(), None),
            Scope::Account(user) => (scope.name(), Some(*user)),
        };
        let until = transition.until_ms.map(|u| format!(" until {}", rfc3339_ms(u))).unwrap_or_default();
        match transition.to {
            BreakerState::Open => tracing::warn!(
                target: "breaker",
                breaker = %name,
                "{} circuit breaker opened{until}: {}",
                self.inner.venue(),
                transition.reason
            ),
            _ => {
                tracing::info!(target: "breaker", breaker = %name, state = transition.to.as_str(), "{}", transition.reason)
            }
        }
        (self.on_transition)(&name, user, &transition);
    }

    /// Runs one call through its breaker.
    async fn guarded<T>(
        &self,
        scope: Scope<'_>,
        endpoint: &'static str,
        call: impl Future<Output = Result<T, ExchangeError>>,
    ) -> Result<T, ExchangeError> {
        let now_ms = self.clock.now_ms();
        match self.with_breaker(&scope, |breaker| breaker.admit(now_ms)) {
            Ok(transition) => self.report(&scope, transition),
            Err(refused) => {
                let name = scope.name();
                self.metrics.exchange_refused(endpoint);
                return Err(ExchangeError::BreakerOpen {
                    breaker: name.to_string(),
                    until_ms: refused.until_ms,
                    detail: format!(
                        "open until {}{}",
                        rfc3339_ms(refused.until_ms),
                        refused.last_failure.map(|f| format!("; last failure: {f}")).unwrap_or_default()
                    ),
                });
            }
        }
        let started = std::time::Instant::now();
        let result = call.await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(ExchangeError::Retryable { .. }) => "retryable",
            Err(ExchangeError::Unreachable { .. }) => "unreachable",
            Err(ExchangeError::BreakerOpen { .. }) => "breaker_open",
            Err(ExchangeError::UnknownOutcome { .. }) => "unknown_outcome",
            Err(ExchangeError::Malformed { .. }) => "malformed",
            Err(ExchangeError::RateLimited { .. }) => "rate_limited",
            Err(ExchangeError::Banned { .. }) => "banned",
            Err(ExchangeError::Auth { .. }) => "auth",
            Err(ExchangeError::Rejected { .. }) => "rejected",
            Err(ExchangeError::Duplicate { .. }) => "duplicate",
        };
        self.metrics.exchange_request(endpoint, outcome, started.elapsed());
        let now_ms = self.clock.now_ms();
        let transition = match &result {
            Err(ExchangeError::Banned { until_ms }) => {
                let reason = format!("banned by the exchange (418) until {}", rfc3339_ms(*until_ms));
                // A ban is for the whole host: every endpoint's breaker opens until it ends.
                let transitions: Vec<(&'static str, Transition)> = {
                    let mut host = self.host.lock();
                    for endpoint in HOST_ENDPOINTS {
                        host.entry(endpoint).or_insert_with(|| CircuitBreaker::new(self.policy));
                    }
                    host.iter_mut()
                        .filter_map(|(endpoint, breaker)| {
                            breaker.force_open(now_ms, *until_ms, &reason).map(|t| (*endpoint, t))
                        })
                        .collect()
                };
                for (endpoint, transition) in transitions {
                    self.report(&Scope::Host(endpoint), Some(transition));
                }
                if let Scope::Account(_) = scope {
                    self.with_breaker(&scope, CircuitBreaker::release_probe);
                }
                None
            }
            Err(
                error @ (ExchangeError::Retryable { .. }
                | ExchangeError::Unreachable { .. }
                | ExchangeError::UnknownOutcome { .. }
                | ExchangeError::Malformed { .. }),
            ) => {
                let detail = error.to_string();
                self.with_breaker(&scope, |breaker| breaker.on_failure(now_ms, &detail))
            }
            // The weight budget paces 429s; they say nothing about the host being down (but a
            // probe that ran into one must not keep its breaker half-open).
            Err(ExchangeError::RateLimited { .. }) => {
                self.with_breaker(&scope, CircuitBreaker::release_probe);
                None
            }
            _ => self.with_breaker(&scope, CircuitBreaker::on_success),
        };
        self.report(&scope, transition);
        result
    }
}

#[async_trait]
impl Exchange for BreakerExchange {
    fn venue(&self) -> &'static str {
        self.inner.venue()
    }

    async fn server_time_ms(&self) -> Result<i64, ExchangeError> {
        self.guarded(Scope::Host("time"), "time", self.inner.server_time_ms()).await
    }

    fn estimated_now_ms(&self) -> Option<i64> {
        self.inner.estimated_now_ms()
    }

    fn venue_pace(&self) -> crate::clock::VenuePace {
        self.inner.venue_pace()
    }

    fn account_stream(&self, account: &UserId) -> Option<crate::exchange::AccountStream> {
        self.inner.account_stream(account)
    }

    fn candle_stream(&self, feeds: &[(Symbol, Timeframe)]) -> Option<crate::exchange::CandleStream> {
        self.inner.candle_stream(feeds)
    }

    async fn probe_time_ms(&self) -> Result<crate::exchange::TimeProbe, ExchangeError> {
        self.guarded(Scope::Host("time"), "time", self.inner.probe_time_ms()).await
    }

    fn clock_is_exact(&self) -> bool {
        self.inner.clock_is_exact()
    }

    fn clock_error_ms(&self) -> i64 {
        self.inner.clock_error_ms()
    }

    fn request_budget(&self) -> Option<RequestBudget> {
        self.inner.request_budget()
    }

    fn breaker_statuses(&self) -> Option<Vec<BreakerStatus>> {
        let status = |name: String, user: Option<UserId>, breaker: &CircuitBreaker| BreakerStatus {
            name,
            user,
            state: breaker.state(),
            since_ms: breaker.opened_at_ms(),
            until_ms: breaker.open_until_ms(),
            last_failure: breaker.last_failure().map(str::to_owned),
        };
        let mut statuses: Vec<BreakerStatus> = self
            .host
            .lock()
            .iter()
            .map(|(endpoint, breaker)| status(format!("host:{endpoint}"), None, breaker))
            .collect();
        statuses.extend(
            self.accounts
                .lock()
                .iter()
                .map(|(user, breaker)| status(format!("account:{user}"), Some(user.clone()), breaker)),
        );
        Some(statuses)
    }

    async fn symbol_rules(&self, symbol: &Symbol) -> Result<SymbolRules, ExchangeError> {
        self.guarded(Scope::Host("rules"), "symbol_rules", self.inner.symbol_rules(symbol)).await
    }

    async fn klines(&self, symbol: &Symbol, timeframe: Timeframe, limit: u16) -> Result<Vec<Candle>, ExchangeError> {
        self.guarded(Scope::Host("klines"), "klines", self.inner.klines(symbol, timeframe, limit)).await
    }

    async fn position(&self, account: &UserId, symbol: &Symbol) -> Result<Position, ExchangeError> {
        self.guarded(Scope::Account(account), "position", self.inner.position(account, symbol)).await
    }

    async fn positions(&self, account: &UserId) -> Result<Vec<Position>, ExchangeError> {
        self.guarded(Scope::Account(account), "positions", self.inner.positions(account)).await
    }

    async fn positions_and_open_orders(
        &self,
        account: &UserId,
    ) -> Result<(Vec<Position>, Vec<ExchangeOrder>), ExchangeError> {
        let read = self.inner.positions_and_open_orders(account);
        self.guarded(Scope::Account(account), "positions_and_open_orders", read).await
    }

    async fn balance(&self, account: &UserId) -> Result<Balance, ExchangeError> {
        self.guarded(Scope::Account(account), "balance", self.inner.balance(account)).await
    }

    async fn create_order(&self, account: &UserId, request: &OrderRequest) -> Result<ExchangeOrder, ExchangeError> {
        self.guarded(Scope::Account(account), "create_order", self.inner.create_order(account, request)).await
    }

    async fn order_by_client_id(
        &self,
        account: &UserId,
        symbol: &Symbol,
        client_order_id: &ClientOrderId,
    ) -> Result<Option<ExchangeOrder>, ExchangeError> {
        self.guarded(
            Scope::Account(account),
            "query_order",
            self.inner.order_by_client_id(account, symbol, client_order_id),
        )
        .await
    }

    async fn cancel_order(
        &self,
        account: &UserId,
        symbol: &Symbol,
        client_order_id: &ClientOrderId,
    ) -> Result<ExchangeOrder, ExchangeError> {
        self.guarded(Scope::Account(account), "cancel_order", self.inner.cancel_order(account, symbol, client_order_id))
            .await
    }

    async fn open_orders(
        &self,
        account: &UserId,
        symbol: Option<&Symbol>,
    ) -> Result<Vec<ExchangeOrder>, ExchangeError> {
        self.guarded(Scope::Account(account), "open_orders", self.inner.open_orders(account, symbol)).await
    }

    async fn fills(&self, account: &UserId, symbol: &Symbol, since_ms: i64) -> Result<Vec<Fill>, ExchangeError> {
        self.guarded(Scope::Account(account), "account_fills", self.inner.fills(account, symbol, since_ms)).await
    }

    async fn order_fills(
        &self,
        account: &UserId,
        symbol: &Symbol,
        exchange_order_id: &str,
    ) -> Result<Vec<Fill>, ExchangeError> {
        self.guarded(Scope::Account(account), "order_fills", self.inner.order_fills(account, symbol, exchange_order_id))
            .await
    }
}
