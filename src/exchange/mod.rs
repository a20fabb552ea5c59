//! The boundary to an exchange. [`Exchange`] is the one trait the built-in paper exchange and the
//! real Binance USDⓈ-M client implement, so everything above it (market data, the order router,
//! reconciliation) is the same code in paper and live trading.
//!
//! Every failure is an [`ExchangeError`], classified by what the caller may safely do next: the
//! distinction that matters most is between "nothing was executed" (safe to retry) and "the
//! request may have been executed" (resolve by querying the client order id, never resend blindly).

pub mod binance;
pub mod breaker;
pub mod guarded;
pub mod paper;
pub mod retry;
pub mod start_pacer;

use std::fmt;

use async_trait::async_trait;

use crate::domain::{
    Balance, Candle, ClientOrderId, ExchangeOrder, Fill, OrderRequest, Position, Symbol, SymbolRules, Timeframe, UserId,
};

/// One account's user data stream (see [`Exchange::account_stream`]).
pub type AccountStream = tokio::sync::mpsc::Receiver<crate::domain::AccountEvent>;

/// One market connection's events (see [`Exchange::candle_stream`]).
pub type CandleStream = tokio::sync::mpsc::Receiver<crate::domain::MarketEvent>;

/// What a caller may do after an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Transient; retrying (with backoff) is safe for reads, and for writes only when nothing was
    /// executed.
    Retryable,
    /// Retrying the same request will fail the same way.
    NotRetryable,
    /// The account cannot be used until an operator acts (bad key, revoked permissions).
    Fatal,
}

/// The exchange's time as a probe got it, and how far our estimate of its clock was from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeProbe {
    pub server_ms: i64,
    /// Its answer minus what we estimated its clock to say (`None`: no estimate yet).
    pub estimate_off_ms: Option<i64>,
    /// How far off the estimate was allowed to be, by its own error bound at that moment.
    pub estimate_error_ms: i64,
}

/// The request-weight budget of an exchange host, as the client sees it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestBudget {
    pub weight_used: u32,
    pub weight_limit: u32,
    /// Set while the host bans every request (418).
    pub banned_until_ms: Option<i64>,
}

/// Why no connection to the exchange was made, or no answer came before anything was sent: what
/// SYS-NETWORK tells apart from an HTTP error of a live exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// Connection refused: nothing listens there.
    Refused,
    /// The host name did not resolve.
    Dns,
    /// The TLS handshake failed.
    Tls,
    /// No answer in time.
    Timeout,
    /// Another connection failure (reset, no route to host, ...).
    Other,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Refused => "connection refused",
            Transport::Dns => "name not resolved",
            Transport::Tls => "TLS failed",
            Transport::Timeout => "timed out",
            Transport::Other => "connection failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExchangeError {
    /// The request was not executed: the exchange said so ("Service Unavailable", -1001, -1008,
    /// -1021) or it could not be sent.
    #[error("exchange unavailable, nothing was executed: {detail}")]
    Retryable { detail: String },
    /// No connection (or, for a read, no answer in time): the network path or the exchange is
    /// down. For a read nothing is known to have happened; a write whose answer timed out is
    /// [`ExchangeError::UnknownOutcome`] instead.
    #[error("the exchange cannot be reached ({}), nothing was executed: {detail}", transport.as_str())]
    Unreachable { transport: Transport, detail: String },
    /// A circuit breaker is open: nothing was sent. Evidence of the breaker, not of the exchange.
    #[error("circuit breaker ({breaker}) open, nothing sent: {detail}")]
    BreakerOpen { breaker: String, until_ms: i64, detail: String },
    /// The request may or may not have been executed (timeout after sending, -1006, -1007, 503
    /// "Unknown error"). For an order: query its client order id, never resend blindly.
    #[error("outcome unknown, the request may have been executed: {detail}")]
    UnknownOutcome { detail: String },
    /// 429: slow down.
    #[error("rate limited, retry after {retry_after_ms} ms")]
    RateLimited { retry_after_ms: u64 },
    /// 418: every request to this host is refused until the ban ends.
    #[error("banned by the exchange until {until_ms}")]
    Banned { until_ms: i64 },
    /// Bad or revoked credentials (-2014, -2015, 401): fatal for the account.
    #[error("authentication refused: {detail}")]
    Auth { detail: String },
    /// The exchange refused the request (-2010, -2019, -4164, ...). Unknown codes land here too,
    /// with the raw code and message kept.
    #[error("rejected by the exchange (code {code}): {msg}")]
    Rejected { code: i64, msg: String },
    /// -4116: an open order already has this client order id. The order exists: query it.
    #[error("client order id already in use (code {code}): {msg}")]
    Duplicate { code: i64, msg: String },
    /// The response could not be understood. For a read this is retryable; for an order it means
    /// the outcome is unknown.
    #[error("malformed response from the exchange: {detail}")]
    Malformed { detail: String },
}

impl ExchangeError {
    pub fn class(&self) -> ErrorClass {
        match self {
            ExchangeError::Retryable { .. }
            | ExchangeError::Unreachable { .. }
            | ExchangeError::BreakerOpen { .. }
            | ExchangeError::UnknownOutcome { .. }
            | ExchangeError::RateLimited { .. }
            | ExchangeError::Banned { .. }
            | ExchangeError::Malformed { .. } => ErrorClass::Retryable,
            ExchangeError::Rejected { .. } | ExchangeError::Duplicate { .. } => ErrorClass::NotRetryable,
            ExchangeError::Auth { .. } => ErrorClass::Fatal,
        }
    }

    /// Nothing was executed, and trying again later may succeed (the exchange declined, could
    /// not be reached, or a breaker kept the request back).
    pub fn nothing_executed(&self) -> bool {
        matches!(
            self,
            ExchangeError::Retryable { .. } | ExchangeError::Unreachable { .. } | ExchangeError::BreakerOpen { .. }
        )
    }

    /// Whether an order request that failed this way may have created an order.
    pub fn order_may_exist(&self) -> bool {
        matches!(
            self,
            ExchangeError::UnknownOutcome { .. } | ExchangeError::Duplicate { .. } | ExchangeError::Malformed { .. }
        )
    }
}

/// One exchange, seen by one process, serving many accounts. `account` selects the user's
/// account (and, for a real exchange, the user's credentials).
#[async_trait]
pub trait Exchange: Send + Sync + fmt::Debug {
    /// A short name for logs: `paper`, `binance`.
    fn venue(&self) -> &'static str;

    /// How fast the exchange's clock runs against the wall clock (its candles' time base): what
    /// turns a lock's venue duration into the wall time it ends at. Every venue says; there is no
    /// default, so a new one cannot silently run its locks on the wrong clock.
    fn venue_pace(&self) -> crate::clock::VenuePace;

    /// The account's user data stream: every change of its orders, positions and balance, pushed
    /// as it happens (bounded; the stream ends when the venue drops the listener). `None`: this
    /// venue has no stream for it (the Binance client does not open user data streams yet), and
    /// its account is read by REST only. A new call replaces the previous stream of the account.
    fn account_stream(&self, account: &UserId) -> Option<AccountStream>;

    /// One new connection pushing the closed candles of `feeds` (at most
    /// [`crate::limits::MARKET_STREAMS_PER_CONNECTION_MAX`]), each the moment the venue closes it;
    /// its first message says it is up, and it ends when the connection does (the caller reconnects
    /// and fetches by REST what it missed). `None`: this venue has no market stream, and candles
    /// are fetched by REST after each close. No default: a wrapper that forgot to forward it would
    /// silently poll a venue that streams.
    fn candle_stream(&self, feeds: &[(Symbol, Timeframe)]) -> Option<CandleStream>;

    /// The exchange's current time in the time base of its candles.
    async fn server_time_ms(&self) -> Result<i64, ExchangeError>;

    /// Whether `server_time_ms` is the exchange's own clock rather than an estimate of it (an
    /// estimate may run slightly early, so candles are fetched a moment after they close).
    fn clock_is_exact(&self) -> bool {
        false
    }

    /// The exchange's time, asked for now (the Monitor's probe): a request where the exchange is
    /// remote, even when a clock estimate would do for [`Exchange::server_time_ms`].
    async fn probe_time_ms(&self) -> Result<TimeProbe, ExchangeError> {
        let server_ms = self.server_time_ms().await?;
        Ok(TimeProbe {
            server_ms,
            estimate_off_ms: self.estimated_now_ms().map(|estimate| server_ms - estimate),
            estimate_error_ms: self.clock_error_ms(),
        })
    }

    /// The exchange's time now without asking it: the last known offset applied to the local
    /// clock (Binance), or the market clock (paper). It keeps running while the exchange cannot be
    /// reached, so that lateness is measured on it, not on the last time the exchange answered.
    /// `None` before the exchange's time was ever known.
    fn estimated_now_ms(&self) -> Option<i64> {
        None
    }

    /// How far `server_time_ms` may be from the exchange's own clock now (exchange ms), when it is
    /// an estimate; 0 when unknown or exact.
    fn clock_error_ms(&self) -> i64 {
        0
    }

    /// This host's request-weight budget, if the exchange has one (the paper exchange does not).
    fn request_budget(&self) -> Option<RequestBudget> {
        None
    }

    /// The circuit breakers in front of this exchange, if it has any (`guarded::BreakerExchange`).
    fn breaker_statuses(&self) -> Option<Vec<guarded::BreakerStatus>> {
        None
    }

    async fn symbol_rules(&self, symbol: &Symbol) -> Result<SymbolRules, ExchangeError>;

    /// The most recent candles, oldest first. The last one may still be forming: callers keep
    /// only candles whose close time has passed.
    async fn klines(&self, symbol: &Symbol, timeframe: Timeframe, limit: u16) -> Result<Vec<Candle>, ExchangeError>;

    async fn position(&self, account: &UserId, symbol: &Symbol) -> Result<Position, ExchangeError>;

    /// Every position the account holds, on any symbol (a symbol not listed is flat): one read for
    /// an account snapshot (Binance: `positionRisk` without a symbol, weight 5).
    async fn positions(&self, account: &UserId) -> Result<Vec<Position>, ExchangeError>;

    async fn balance(&self, account: &UserId) -> Result<Balance, ExchangeError>;

    async fn create_order(&self, account: &UserId, request: &OrderRequest) -> Result<ExchangeOrder, ExchangeError>;

    /// `Ok(None)` when the exchange does not know the id.
    async fn order_by_client_id(
        &self,
        account: &UserId,
        symbol: &Symbol,
        client_order_id: &ClientOrderId,
    ) -> Result<Option<ExchangeOrder>, ExchangeError>;

    async fn cancel_order(
        &self,
        account: &UserId,
        symbol: &Symbol,
        client_order_id: &ClientOrderId,
    ) -> Result<ExchangeOrder, ExchangeError>;

    /// Open orders of the account, for one symbol or all.
    async fn open_orders(&self, account: &UserId, symbol: Option<&Symbol>)
    -> Result<Vec<ExchangeOrder>, ExchangeError>;

    /// Every position and every open order of the account, read the cheapest way the venue offers
    /// (an account snapshot; a start-up's sweep for orphans). Binance: its position list names
    /// every symbol with a position or an open order, so only those are listed (weight 5 + 1 a
    /// symbol instead of 5 + 40). No default: a wrapper that forgot to forward it would silently
    /// pay the dearest listing on every start-up.
    async fn positions_and_open_orders(
        &self,
        account: &UserId,
    ) -> Result<(Vec<Position>, Vec<ExchangeOrder>), ExchangeError>;

    /// The account's fills on a symbol at or after `since_ms` (exchange time), oldest first.
    async fn fills(&self, account: &UserId, symbol: &Symbol, since_ms: i64) -> Result<Vec<Fill>, ExchangeError>;

    /// Every fill of one order (Binance: `userTrades` with `orderId`), oldest first. Independent of
    /// any clock, so it is what order resolution uses.
    async fn order_fills(
        &self,
        account: &UserId,
        symbol: &Symbol,
        exchange_order_id: &str,
    ) -> Result<Vec<Fill>, ExchangeError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ambiguous_failures_may_have_created_an_order() {
        assert!(ExchangeError::UnknownOutcome { detail: "timeout".into() }.order_may_exist());
        assert!(ExchangeError::Duplicate { code: -4116, msg: "dup".into() }.order_may_exist());
        assert!(!ExchangeError::Retryable { detail: "refused".into() }.order_may_exist());
        assert!(!ExchangeError::Rejected { code: -2019, msg: "margin".into() }.order_may_exist());
    }

    #[test]
    fn auth_is_fatal_and_rejections_are_final() {
        assert_eq!(ExchangeError::Auth { detail: "-2015".into() }.class(), ErrorClass::Fatal);
        assert_eq!(ExchangeError::Rejected { code: -2010, msg: "x".into() }.class(), ErrorClass::NotRetryable);
        assert_eq!(ExchangeError::RateLimited { retry_after_ms: 100 }.class(), ErrorClass::Retryable);
    }
}
