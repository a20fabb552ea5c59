//! The Intelligence actor: the newest [`IntelSnapshot`] per (symbol, timeframe), from CoinGlass
//! when `[intelligence]` is configured and otherwise derived ([`crate::intelligence::derive`])
//! from the candle windows market data already fetched (on paper, the replayed market), so that
//! it costs no exchange request. It tracks the age and the
//! last error of every series (SYS-INTEL-API) and refreshes on request: a trader asking for a
//! symbol whose newest interval is older than its newest candle gets a fresh fetch, one at a time
//! per series: a caller asking while one is in flight waits for it (so what a guard sees depends on
//! the candle, never on how long a request took). After a failed fetch a series is not asked
//! again for [`INTEL_RETRY_SPACING_MS`]; the Healer can refresh every series at once. A shared
//! actor, restarted by the root supervisor; its cache is rebuilt on demand.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::actors::Directory;
use crate::actors::market_data::LatestWindow;
use crate::clock::Clock;
use crate::domain::{Symbol, Timeframe};
use crate::exchange::breaker::{BreakerPolicy, BreakerState, CircuitBreaker, Transition, log_transition};
use crate::intelligence::coinglass::CoinGlassClient;
use crate::intelligence::{IntelSnapshot, derive};
use crate::notify::Severity;

/// Intervals fetched per series.
pub const INTEL_WINDOW: u16 = 60;
/// After a failed fetch, a series is asked again at most this often (wall time), whatever asks.
pub const INTEL_RETRY_SPACING_MS: i64 = 10_000;
/// Callers waiting on one series' fetch in flight, at most (more get the cached snapshot).
const INTEL_WAITERS_MAX: usize = 1_024;
/// Longest wait for one fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(20);

/// Where the series come from.
#[derive(Clone)]
pub enum IntelSource {
    CoinGlass(CoinGlassClient),
    /// Derived from the candle windows market data already fetched (no request of its own).
    Derived(Arc<Directory>),
}

impl std::fmt::Debug for IntelSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IntelSource::CoinGlass(_) => "coinglass",
            IntelSource::Derived(_) => "derived",
        })
    }
}

impl IntelSource {
    async fn fetch(&self, symbol: Symbol, timeframe: Timeframe, now_ms: i64) -> Result<IntelSnapshot, String> {
        match self {
            IntelSource::CoinGlass(client) => {
                client.snapshot(&symbol, timeframe, INTEL_WINDOW, now_ms).await.map_err(|e| e.to_string())
            }
            IntelSource::Derived(directory) => {
                let market_data = directory.market_data().map_err(|e| e.to_string())?;
                let request = LatestWindow { symbol: symbol.clone(), timeframe };
                let window = market_data
                    .send(request)
                    .await
                    .map_err(|e| format!("market data did not answer: {e}"))?
                    .ok_or_else(|| format!("market data has no {symbol} {timeframe} window yet"))?;
                let start = window.len().saturating_sub(usize::from(INTEL_WINDOW));
                Ok(derive::from_candles(symbol, timeframe, &window[start..], now_ms))
            }
        }
    }
}

#[derive(Debug, Default)]
struct Series {
    snapshot: Option<Arc<IntelSnapshot>>,
    refreshing: bool,
    last_attempt_ms: Option<i64>,
    /// The newest failure, kept until a fetch succeeds.
    last_error: Option<(i64, String)>,
    /// Callers waiting for the fetch in flight (answered when it ends; bounded).
    waiters: Vec<tokio::sync::oneshot::Sender<Option<Arc<IntelSnapshot>>>>,
}

/// The newest snapshot of a series, fetched first if it is older than `newest_candle_open_ms`.
#[derive(Debug, Message)]
#[rtype(result = "Option<Arc<IntelSnapshot>>")]
pub struct GetIntel {
    pub symbol: Symbol,
    pub timeframe: Timeframe,
    /// Open time of the newest candle the caller has: a snapshot without it is refreshed.
    pub newest_candle_open_ms: i64,
}

/// Fetch every known series now (the Healer). Answers (refreshed, failures).
#[derive(Debug, Message)]
#[rtype(result = "(usize, Vec<String>)")]
pub struct RefreshAll;

/// One series as the Monitor sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntelSeriesStatus {
    pub series: String,
    /// Wall time since the newest successful fetch.
    pub age_ms: Option<i64>,
    pub last_error: Option<String>,
    /// Open time of the newest interval the series has (the venue's time), and its timeframe: how
    /// far behind the market it is, in candles, is measured on the exchange's clock.
    pub newest_open_ms: Option<i64>,
    pub timeframe_ms: i64,
}

/// The intelligence probe of a monitor run: refresh the series furthest behind now, through the
/// API's breaker. `Ok(None)`: no series in use yet; `Ok(Some(series))`: refreshed; `Err`: why not.
#[derive(Debug, Message)]
#[rtype(result = "Result<Option<String>, String>")]
pub struct ProbeIntel;

#[derive(Debug, Message)]
#[rtype(result = "(String, Vec<IntelSeriesStatus>)")]
pub struct IntelStatus;

pub struct Intelligence {
    source: IntelSource,
    clock: Arc<dyn Clock>,
    series: BTreeMap<(Symbol, Timeframe), Series>,
    /// The CoinGlass API's circuit breaker (`None` for derived intelligence, which asks nobody):
    /// while it is open no series is fetched and each says why. Written and read by this actor.
    breaker: Option<CircuitBreaker>,
    /// Where breaker transitions are notified.
    directory: Arc<Directory>,
}

/// The name of the intelligence API's breaker in logs and notifications.
const INTEL_BREAKER: &str = "intel:coinglass";

impl std::fmt::Debug for Intelligence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intelligence").field("source", &self.source).field("series", &self.series.len()).finish()
    }
}

impl Intelligence {
    pub fn new(source: IntelSource, clock: Arc<dyn Clock>, breaker: BreakerPolicy, directory: Arc<Directory>) -> Self {
        let breaker = matches!(source, IntelSource::CoinGlass(_)).then(|| CircuitBreaker::new(breaker));
        Self { source, clock, series: BTreeMap::new(), breaker, directory }
    }

    fn report(&self, transition: Option<Transition>) {
        let Some(transition) = transition else { return };
        log_transition(INTEL_BREAKER, &transition);
        let (severity, text) = match transition.to {
            BreakerState::Open => {
                (Severity::Warning, format!("circuit breaker {INTEL_BREAKER} opened: {}", transition.reason))
            }
            BreakerState::Closed => {
                (Severity::Info, format!("circuit breaker {INTEL_BREAKER} closed: {}", transition.reason))
            }
            BreakerState::HalfOpen => return,
        };
        crate::actors::notifier::notify(
            &self.directory,
            format!("breaker:{INTEL_BREAKER}:{}", transition.to.as_str()),
            severity,
            text,
        );
    }

    /// Starts a fetch of one series unless one runs or ran moments ago; resolves when it ends.
    fn refresh(
        &mut self,
        key: (Symbol, Timeframe),
    ) -> Option<impl ActorFuture<Self, Output = Result<Arc<IntelSnapshot>, String>> + use<>> {
        let now_ms = self.clock.now_ms();
        let series = self.series.entry(key.clone()).or_default();
        // Spaced only after a failure: a snapshot that lacks a newer candle is fetched at once.
        let failed_lately = series.last_error.is_some()
            && series.last_attempt_ms.is_some_and(|at| now_ms - at < INTEL_RETRY_SPACING_MS);
        if series.refreshing || failed_lately {
            return None;
        }
        if let Some(admitted) = self.breaker.as_mut().map(|breaker| breaker.admit(now_ms)) {
            match admitted {
                Ok(transition) => self.report(transition),
                Err(refused) => {
                    let series = self.series.entry(key.clone()).or_default();
                    series.last_attempt_ms = Some(now_ms);
                    series.last_error = Some((
                        now_ms,
                        format!(
                            "circuit breaker {INTEL_BREAKER} open until {}: not asked (last failure: {})",
                            crate::clock::rfc3339_ms(refused.until_ms),
                            refused.last_failure.as_deref().unwrap_or("-")
                        ),
                    ));
                    return None;
                }
            }
        }
        let series = self.series.entry(key.clone()).or_default();
        series.refreshing = true;
        series.last_attempt_ms = Some(now_ms);
        let (source, (symbol, timeframe)) = (self.source.clone(), key.clone());
        let fetch = async move {
            match tokio::time::timeout(FETCH_TIMEOUT, source.fetch(symbol, timeframe, now_ms)).await {
                Ok(result) => result,
                Err(_) => Err(format!("no answer within {} s", FETCH_TIMEOUT.as_secs())),
            }
        };
        Some(fetch.into_actor(self).map(move |result, actor, _| {
            let now_ms = actor.clock.now_ms();
            let transition = actor.breaker.as_mut().and_then(|breaker| match &result {
                Ok(_) => breaker.on_success(),
                Err(error) => breaker.on_failure(now_ms, error),
            });
            actor.report(transition);
            let series = actor.series.entry(key.clone()).or_default();
            series.refreshing = false;
            let result = match result {
                Ok(snapshot) => {
                    let snapshot = Arc::new(snapshot);
                    series.snapshot = Some(snapshot.clone());
                    series.last_error = None;
                    Ok(snapshot)
                }
                Err(error) => {
                    tracing::warn!(target: "intelligence", symbol = %key.0, timeframe = %key.1, %error, "intelligence: fetch failed");
                    series.last_error = Some((now_ms, error.clone()));
                    Err(error)
                }
            };
            // Whoever waited for this fetch gets what it brought (or the cache, if it failed).
            let answer = series.snapshot.clone();
            for waiter in series.waiters.drain(..) {
                let _ = waiter.send(answer.clone());
            }
            result
        }))
    }
}

impl Actor for Intelligence {
    type Context = Context<Self>;
}

impl Handler<GetIntel> for Intelligence {
    type Result = ResponseActFuture<Self, Option<Arc<IntelSnapshot>>>;

    fn handle(&mut self, message: GetIntel, _: &mut Context<Self>) -> Self::Result {
        let key = (message.symbol, message.timeframe);
        let cached = self.series.get(&key).and_then(|s| s.snapshot.clone());
        let current = cached
            .as_ref()
            .and_then(|s| s.intervals.last())
            .is_some_and(|newest| newest.time_ms >= message.newest_candle_open_ms);
        if current {
            return Box::pin(fut::ready(cached));
        }
        // A fetch of this series is in flight: wait for it rather than take the older snapshot.
        if let Some(series) = self.series.get_mut(&key)
            && series.refreshing
            && series.waiters.len() < INTEL_WAITERS_MAX
        {
            let (answer, answered) = tokio::sync::oneshot::channel();
            series.waiters.push(answer);
            return Box::pin(async move { answered.await.ok().flatten().or(cached) }.into_actor(self));
        }
        match self.refresh(key) {
            Some(refresh) => Box::pin(refresh.map(move |result, _, _| result.ok().or(cached))),
            None => Box::pin(fut::ready(cached)),
        }
    }
}

type Boxed<T> = std::pin::Pin<Box<dyn ActorFuture<Intelligence, Output = T>>>;

impl Handler<RefreshAll> for Intelligence {
    type Result = ResponseActFuture<Self, (usize, Vec<String>)>;

    fn handle(&mut self, _: RefreshAll, _: &mut Context<Self>) -> Self::Result {
        let keys: Vec<(Symbol, Timeframe)> = self.series.keys().cloned().collect();
        let mut work: Vec<Boxed<(String, Result<(), String>)>> = Vec::new();
        for key in keys {
            let name = format!("{} {}", key.0, key.1);
            if let Some(refresh) = self.refresh(key) {
                work.push(Box::pin(refresh.map(move |result, _, _| (name, result.map(|_| ())))));
            }
        }
        let mut chain: Boxed<(usize, Vec<String>)> = Box::pin(fut::ready((0, Vec::new())));
        for step in work {
            chain = Box::pin(chain.then(move |(ok, mut failed), _, _| {
                step.map(move |(name, result), _, _| match result {
                    Ok(()) => (ok + 1, failed),
                    Err(error) => {
                        failed.push(format!("{name}: {error}"));
                        (ok, failed)
                    }
                })
            }));
        }
        chain
    }
}

impl Handler<ProbeIntel> for Intelligence {
    type Result = ResponseActFuture<Self, Result<Option<String>, String>>;

    fn handle(&mut self, _: ProbeIntel, _: &mut Context<Self>) -> Self::Result {
        // The series furthest behind (one never fetched first).
        let Some(key) = self
            .series
            .iter()
            .filter(|(_, series)| !series.refreshing)
            .min_by_key(|(_, series)| {
                series.snapshot.as_ref().and_then(|s| s.intervals.last()).map_or(i64::MIN, |i| i.time_ms)
            })
            .map(|(key, _)| key.clone())
        else {
            return Box::pin(fut::ready(Ok(None)));
        };
        let name = format!("{} {}", key.0, key.1);
        // The probe is once per monitor run: it does not wait out the refresh spacing.
        if let Some(series) = self.series.get_mut(&key) {
            series.last_attempt_ms = None;
        }
        match self.refresh(key.clone()) {
            Some(refresh) => Box::pin(refresh.map(move |result, _, _| result.map(|_| Some(name)))),
            None => {
                // Kept back (the API's breaker is open): its reason is the series' error.
                let why = self
                    .series
                    .get(&key)
                    .and_then(|series| series.last_error.as_ref().map(|(_, error)| error.clone()))
                    .unwrap_or_else(|| format!("{name}: not asked"));
                Box::pin(fut::ready(Err(why)))
            }
        }
    }
}

impl Handler<IntelStatus> for Intelligence {
    type Result = MessageResult<IntelStatus>;

    fn handle(&mut self, _: IntelStatus, _: &mut Context<Self>) -> Self::Result {
        let now_ms = self.clock.now_ms();
        let statuses = self
            .series
            .iter()
            .map(|((symbol, timeframe), series)| IntelSeriesStatus {
                series: format!("{symbol} {timeframe}"),
                age_ms: series.snapshot.as_ref().map(|s| now_ms - s.fetched_at_ms),
                last_error: series.last_error.as_ref().map(|(_, error)| error.clone()),
                newest_open_ms: series.snapshot.as_ref().and_then(|s| s.intervals.last()).map(|i| i.time_ms),
                timeframe_ms: timeframe.duration_ms(),
            })
            .collect();
        MessageResult((format!("{:?}", self.source), statuses))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::secret::Secret;

    #[actix_rt::test]
    async fn a_failing_coinglass_api_opens_its_breaker_and_is_not_asked_while_open() {
        let coinglass = wiremock::MockServer::start().await;
        wiremock::Mock::given(wiremock::matchers::method("GET"))
            .respond_with(wiremock::ResponseTemplate::new(500))
            .mount(&coinglass)
            .await;
        let client = CoinGlassClient::new(
            coinglass.uri().parse().unwrap(),
            Secret::new("cg".to_owned()),
            Duration::from_secs(5),
        )
        .unwrap();
        let policy = BreakerPolicy { failures_max: 5, window_ms: 60_000, open_ms: 300_000 };
        let directory = Arc::new(Directory::default());
        let intelligence =
            Intelligence::new(IntelSource::CoinGlass(client), Arc::new(SystemClock), policy, directory).start();
        let symbols = ["AAAUSDT", "BBBUSDT", "CCCUSDT", "DDDUSDT", "EEEUSDT", "FFFUSDT", "GGGUSDT"];
        for symbol in symbols {
            let asked =
                GetIntel { symbol: Symbol::new(symbol).unwrap(), timeframe: Timeframe::M5, newest_candle_open_ms: 1 };
            assert!(intelligence.send(asked).await.unwrap().is_none());
        }
        // Five failed fetches opened it: the last two series were never asked for.
        let requests = coinglass.received_requests().await.unwrap();
        let asked_for = |symbol: &str| requests.iter().filter(|r| r.url.as_str().contains(symbol)).count();
        assert!(asked_for("EEE") > 0);
        assert_eq!((asked_for("FFF"), asked_for("GGG")), (0, 0), "nothing asked while open");
        let (_, series) = intelligence.send(IntelStatus).await.unwrap();
        let refused = series.iter().find(|s| s.series.contains("GGGUSDT")).unwrap();
        assert!(
            refused.last_error.as_deref().is_some_and(|e| e.contains("circuit breaker intel:coinglass open until")),
            "{refused:?}"
        );
    }
}
