//! The built-in paper exchange: an in-process venue that behaves like a remote one.
//!
//! The matching engine ([`venue::PaperVenue`]) and its journal live on one dedicated OS thread,
//! the *venue thread*; [`PaperExchange`] is a cheap handle that sends it requests over a bounded
//! channel and awaits the answers, exactly as a network client would. So the paper exchange is
//! asynchronous, serialised like a real matching engine, durable across restarts (its state is in
//! its own SQLite file), and never blocks an actor's thread.
//!
//! Each account can also listen to the venue (`Exchange::account_stream`): what the matching engine
//! changed for it is pushed the moment it happens, as Binance's user data stream pushes it
//! ([`events`]); market connections (`Exchange::candle_stream`) are pushed each closed candle as
//! Binance's kline streams push it. While anyone listens, a ticker thread settles working orders
//! and streams the candles as they close, so fills and candles are pushed without anyone asking.
//!
//! It replays real recorded candles (see `data/replay/PROVENANCE.md`) and, for any other
//! configured symbol, a seeded random walk ([`market`]). Given the same seed and the same requests
//! at the same times, every answer is the same.

pub mod events;
pub mod market;
pub mod venue;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use crate::clock::Clock;
use crate::domain::{AccountEvent, MarketEvent};
use crate::domain::{
    Balance, Candle, ClientOrderId, ExchangeOrder, Fill, OrderRequest, Position, Symbol, SymbolRules, Timeframe, UserId,
};
use crate::exchange::AccountStream;
use crate::exchange::paper::market::{MarketClock, PaperMarket, SeriesSource};
use crate::exchange::paper::venue::{PaperVenue, VenueChange, VenueSettings};
use crate::exchange::{Exchange, ExchangeError};
use crate::limits::{
    ACCOUNT_STREAM_QUEUE_MAX, MARKET_STREAM_QUEUE_MAX, PAPER_STREAM_HEARTBEAT_MS, PAPER_VENUE_QUEUE_MAX,
};
use crate::persistence::StoreError;
use crate::persistence::paper_journal::PaperJournal;

/// Recorded candle files compiled into the binary, by name (see `data/replay/PROVENANCE.md`).
pub const EMBEDDED_DATASETS: &[(&str, &[u8])] =
    &[("XRP_USDT_USDT-5m-futures", include_bytes!("../../../data/replay/XRP_USDT_USDT-5m-futures.json"))];

pub fn embedded_dataset(name: &str) -> Option<&'static [u8]> {
    EMBEDDED_DATASETS.iter().find(|(known, _)| *known == name).map(|(_, bytes)| *bytes)
}

/// One tradable paper symbol.
#[derive(Debug, Clone)]
pub struct PaperSymbol {
    pub symbol: Symbol,
    pub rules: SymbolRules,
    pub source: SeriesSource,
}

/// Everything the paper exchange needs, already validated (built by `config`).
#[derive(Debug, Clone)]
pub struct PaperSettings {
    /// Wall-clock time per replayed 5-minute candle.
    pub candle_interval_ms: i64,
    pub seed: u64,
    pub venue: VenueSettings,
    pub symbols: Vec<PaperSymbol>,
}

/// Each listening account's end of its stream. Written by `account_stream` (a new listener
/// replaces the old one, whose stream ends) and by the venue thread (a listener that is gone or
/// has fallen `ACCOUNT_STREAM_QUEUE_MAX` events behind is dropped: its stream ends, as Binance
/// closes a connection that does not keep up); read by the venue thread.
type Listeners = Arc<parking_lot::Mutex<BTreeMap<UserId, mpsc::Sender<AccountEvent>>>>;

/// The market connections (`Exchange::candle_stream`). Written by `candle_stream` (adds one) and by
/// the venue thread (advances what each feed was told; drops a connection that is gone or has
/// fallen `MARKET_STREAM_QUEUE_MAX` events behind, as Binance closes a slow connection); read by the
/// venue thread.
type MarketListeners = Arc<parking_lot::Mutex<Vec<MarketListener>>>;

/// One market connection to the paper venue.
struct MarketListener {
    feeds: Vec<StreamedFeed>,
    sender: mpsc::Sender<MarketEvent>,
}

/// One feed of a market connection.
struct StreamedFeed {
    symbol: Symbol,
    timeframe: Timeframe,
    /// Open time (market ms) of the newest closed candle the connection was told, or that had
    /// closed already when it connected (Binance streams no candle closed before a subscription).
    told_open_ms: i64,
}

/// Closed candles of one feed pushed at once when the clock jumped past several: the newest ones
/// (a consumer that misses older ones sees a gap and fetches its window by REST).
const STREAMED_CANDLES_PER_FEED_MAX: i64 = 3;

/// What the venue thread owns.
struct VenueHost {
    venue: PaperVenue,
    journal: PaperJournal,
    clock: Arc<dyn Clock>,
    listeners: Listeners,
    market_listeners: MarketListeners,
    /// When the ticker last told every listener the stream is alive (wall ms; venue thread only).
    heartbeat_sent_ms: i64,
    /// The base candle forming when the market connections were last told their closes (venue
    /// thread only): while it is the same, no candle of any feed has closed since.
    market_told_forming_index: u64,
}

impl VenueHost {
    /// Runs one operation at the current wall time and journals what it changed.
    fn run<R>(
        &mut self,
        operation: impl FnOnce(&mut PaperVenue, i64, &mut Vec<VenueChange>) -> Result<R, ExchangeError>,
    ) -> Result<R, ExchangeError> {
        let wall_ms = self.clock.now_ms();
        let mut changes = Vec::new();
        let result = operation(&mut self.venue, wall_ms, &mut changes);
        // Pushed before the journal write (a disk write, milliseconds for a close's fills): the
        // streams are not held up by the venue's own bookkeeping, and the request is answered
        // after both.
        self.tell_listeners(&changes, wall_ms);
        self.tell_market_listeners(wall_ms);
        self.heartbeat();
        if let Err(error) = self.journal.apply(&changes) {
            // The venue's books live on in memory; a later upsert of the same rows heals the file.
            tracing::error!(%error, changes = changes.len(), "paper exchange: journal write failed");
        }
        result
    }

    /// Pushes every candle that closed since the market connections were last told (before the
    /// request is answered: a request after a close finds its candle streamed already). Part of
    /// every operation, the ticker's included.
    fn tell_market_listeners(&mut self, wall_ms: i64) {
        let forming_index = self.venue.market_clock().forming_index(wall_ms);
        if forming_index == self.market_told_forming_index {
            return;
        }
        self.market_told_forming_index = forming_index;
        let market_now_ms = self.venue.market_clock().market_now_ms(wall_ms);
        let venue = &mut self.venue;
        self.market_listeners.lock().retain_mut(|listener| {
            for feed in &mut listener.feeds {
                let duration_ms = feed.timeframe.duration_ms();
                let newest_open_ms = feed.timeframe.last_closed_open_ms(market_now_ms);
                let closed = ((newest_open_ms - feed.told_open_ms) / duration_ms).min(STREAMED_CANDLES_PER_FEED_MAX);
                if closed <= 0 {
                    continue;
                }
                feed.told_open_ms = newest_open_ms;
                // A feed the venue cannot serve (an unknown symbol) streams nothing, as Binance's
                // stream of an unknown symbol; its REST fetch names the problem.
                let Ok(candles) = venue.klines(&feed.symbol, feed.timeframe, closed as u16, wall_ms) else { continue };
                for candle in candles {
                    let event = MarketEvent::CandleClosed {
                        symbol: feed.symbol.clone(),
                        timeframe: feed.timeframe,
                        candle,
                        event_ms: market_now_ms,
                    };
                    if let Err(error) = listener.sender.try_send(event) {
                        if matches!(error, mpsc::error::TrySendError::Full(_)) {
                            tracing::warn!("paper exchange: a market stream's listener fell behind; the stream ends");
                        }
                        return false;
                    }
                }
            }
            true
        });
    }

    /// Tells every listener the stream is alive, at most every `PAPER_STREAM_HEARTBEAT_MS` (as
    /// Binance's server pings each connection): a quiet account's book stays verified. Part of every
    /// operation (the ticker's included), so a request after the clock moved finds the heartbeat
    /// already sent. A listener whose queue is full gets none (it has events to read).
    fn heartbeat(&mut self) {
        let wall_ms = self.clock.now_ms();
        if wall_ms.saturating_sub(self.heartbeat_sent_ms) < PAPER_STREAM_HEARTBEAT_MS {
            return;
        }
        self.heartbeat_sent_ms = wall_ms;
        let venue_ms = self.venue.server_time_ms(wall_ms);
        let times = crate::domain::EventTimes { transaction_ms: venue_ms, event_ms: venue_ms };
        self.listeners.lock().retain(|_, listener| {
            !matches!(listener.try_send(AccountEvent::Heartbeat { times }), Err(mpsc::error::TrySendError::Closed(_)))
        });
        self.market_listeners.lock().retain(|listener| {
            !matches!(listener.sender.try_send(MarketEvent::Heartbeat), Err(mpsc::error::TrySendError::Closed(_)))
        });
    }

    /// Pushes what `changes` did to the accounts listening (before the request is answered, as an
    /// exchange's stream usually runs ahead of its REST answer).
    fn tell_listeners(&mut self, changes: &[VenueChange], wall_ms: i64) {
        let mut listeners = self.listeners.lock();
        if listeners.is_empty() || changes.is_empty() {
            return;
        }
        for (user, event) in events::account_events(changes, self.venue.server_time_ms(wall_ms)) {
            let Some(listener) = listeners.get(&user) else { continue };
            if let Err(error) = listener.try_send(event) {
                let why = if matches!(error, mpsc::error::TrySendError::Full(_)) { "fell behind" } else { "is gone" };
                tracing::warn!(user = %user, "paper exchange: the account stream's listener {why}; the stream ends");
                listeners.remove(&user);
            }
        }
    }
}

type VenueJob = Box<dyn FnOnce(&mut VenueHost) + Send>;

/// A handle to the paper exchange (cheap to clone; the venue thread stops when the last handle
/// is dropped).
#[derive(Clone)]
pub struct PaperExchange {
    /// Bounded: when the venue is busy, callers wait here.
    jobs: mpsc::Sender<VenueJob>,
    /// How wall time maps to the market's time (fixed at start), and the wall clock: the venue's
    /// time without a round trip to its thread (`Exchange::estimated_now_ms`).
    market_clock: MarketClock,
    wall: Arc<dyn Clock>,
    listeners: Listeners,
    market_listeners: MarketListeners,
    /// Set once the ticker thread runs (started by the first listener).
    ticking: Arc<std::sync::atomic::AtomicBool>,
    /// The venue's symbol rules, fixed at start (the venue thread holds the same): answered
    /// without a trip to the venue thread, as a client answers from its cached exchangeInfo.
    rules: Arc<BTreeMap<Symbol, SymbolRules>>,
}

impl fmt::Debug for PaperExchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PaperExchange").field("queue_free", &self.jobs.capacity()).finish()
    }
}

impl PaperExchange {
    /// Binance's klines rows (`startTime`, `endTime`, `limit`; the forming candle last): what the
    /// simulator's REST klines serve, for any interval Binance has.
    pub async fn klines_window(
        &self,
        symbol: &Symbol,
        interval: market::KlineInterval,
        window: market::KlineWindow,
    ) -> Result<Vec<Candle>, ExchangeError> {
        let symbol = symbol.clone();
        self.call(move |venue, wall_ms, _| venue.klines_window(&symbol, interval, window, wall_ms)).await
    }

    /// Places an order with its time in force ([`venue::TimeInForce`]): what the simulator's
    /// `POST /fapi/v1/order` does for any client (bulwark's own orders are GTC).
    pub async fn create_order_in_force(
        &self,
        account: &UserId,
        request: &OrderRequest,
        time_in_force: venue::TimeInForce,
    ) -> Result<ExchangeOrder, ExchangeError> {
        let (account, request) = (account.clone(), request.clone());
        self.call(move |venue, wall_ms, changes| {
            venue.create_order_in_force(&account, &request, time_in_force, wall_ms, changes)
        })
        .await
    }

    /// The price `symbol` trades at now: where its forming candle is.
    pub async fn current_price(&self, symbol: &Symbol) -> Result<rust_decimal::Decimal, ExchangeError> {
        let symbol = symbol.clone();
        self.call(move |venue, wall_ms, _| venue.current_price(&symbol, wall_ms)).await
    }

    /// Restores the venue from its journal (or starts a fresh market) and starts the venue thread.
    pub fn start(
        settings: PaperSettings,
        clock: Arc<dyn Clock>,
        mut journal: PaperJournal,
    ) -> Result<Self, StoreError> {
        let snapshot = journal.load()?;
        let wall_ms = clock.now_ms();
        let market_clock = match snapshot.clock {
            Some(stored) => stored.resumed(wall_ms, settings.candle_interval_ms).map_err(|ahead_ms| {
                StoreError::Conflict(format!(
                    "the stored market is {} minutes ahead of the wall clock (it ran accelerated); a real-time \
                     market cannot go back in time: use a fresh data directory, or an accelerated speed",
                    ahead_ms / 60_000
                ))
            })?,
            None => MarketClock::fresh(wall_ms, settings.candle_interval_ms),
        };
        journal.apply(&[VenueChange::Clock(market_clock)])?;
        let series: Vec<(Symbol, SeriesSource, f64)> = settings
            .symbols
            .iter()
            .map(|s| (s.symbol.clone(), s.source.clone(), crate::domain::decimal_to_f64(s.rules.tick_size)))
            .collect();
        let market = PaperMarket::new(market_clock, settings.seed, &series);
        let rules: BTreeMap<Symbol, SymbolRules> =
            settings.symbols.iter().map(|s| (s.symbol.clone(), s.rules)).collect();
        let shared_rules = Arc::new(rules.clone());
        let venue = PaperVenue::restore(settings.venue, rules, market, snapshot);
        let wall = clock.clone();
        let listeners = Listeners::default();
        let market_listeners = MarketListeners::default();
        let mut host = VenueHost {
            venue,
            journal,
            clock,
            listeners: listeners.clone(),
            market_listeners: market_listeners.clone(),
            heartbeat_sent_ms: i64::MIN,
            market_told_forming_index: market_clock.forming_index(wall_ms),
        };
        let (jobs, mut receiver) = mpsc::channel::<VenueJob>(PAPER_VENUE_QUEUE_MAX);
        std::thread::Builder::new()
            .name("paper-venue".to_owned())
            .spawn(move || {
                while let Some(job) = receiver.blocking_recv() {
                    job(&mut host);
                }
                tracing::debug!("paper exchange: venue thread stopped");
            })
            .map_err(|error| StoreError::Io(format!("cannot start the paper venue thread: {error}")))?;
        Ok(Self { jobs, market_clock, wall, listeners, market_listeners, ticking: Arc::default(), rules: shared_rules })
    }

    /// While anyone listens, settles working orders and streams closed candles as candles close,
    /// so that fills and candles are pushed without a request: a thread that wakes at each base
    /// candle's close (and at least a quarter of a candle apart, for the heartbeats), or the moment
    /// a manual clock is moved, and stops with the venue.
    fn start_ticker(&self) {
        if self.ticking.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let jobs = self.jobs.downgrade();
        let (wall, market_clock) = (self.wall.clone(), self.market_clock);
        let spacing_ms = (market_clock.candle_interval_ms / 4).clamp(10, 1_000);
        let started = std::thread::Builder::new().name("paper-ticker".to_owned()).spawn(move || {
            loop {
                let now_ms = wall.now_ms();
                let next_close_ms =
                    market_clock.wall_at_ms(market_clock.open_time_ms(market_clock.forming_index(now_ms) + 1));
                let wait_ms = (next_close_ms - now_ms + 1).clamp(1, spacing_ms);
                wall.sleep_until_moved(now_ms, std::time::Duration::from_millis(wait_ms as u64));
                let Some(jobs) = jobs.upgrade() else { return };
                let job: VenueJob = Box::new(|host: &mut VenueHost| {
                    if !host.listeners.lock().is_empty() || !host.market_listeners.lock().is_empty() {
                        let _ = host.run(|venue, wall_ms, changes| venue.settle_pending(wall_ms, changes));
                    }
                });
                if jobs.blocking_send(job).is_err() {
                    return;
                }
            }
        });
        if let Err(error) = started {
            self.ticking.store(false, std::sync::atomic::Ordering::SeqCst);
            tracing::error!(%error, "paper exchange: cannot start the ticker; fills are pushed when a request settles them");
        }
    }

    /// Ends `account`'s stream as a dropped connection does (a stream fault): its listener is
    /// removed, and its receiver sees the end once it has read what was sent. `false`: nobody was
    /// listening.
    pub fn end_account_stream(&self, account: &UserId) -> bool {
        self.listeners.lock().remove(account).is_some()
    }

    /// The market clock (how wall time maps to the venue's accelerated market time).
    pub async fn market_clock(&self) -> Result<MarketClock, ExchangeError> {
        self.call(|venue, _, _| Ok(venue.market_clock())).await
    }

    /// Every order the venue keeps, with its fills (see [`venue::LedgerOrder`]).
    pub async fn ledger(&self) -> Result<Vec<venue::LedgerOrder>, ExchangeError> {
        self.call(|venue, wall_ms, changes| venue.ledger(wall_ms, changes)).await
    }

    /// The orders (as [`Self::ledger`]) and every account's non-zero positions, read at one moment.
    pub async fn full_ledger(&self) -> Result<venue::Ledger, ExchangeError> {
        self.call(|venue, wall_ms, changes| {
            let orders = venue.ledger(wall_ms, changes)?;
            let positions = venue.ledger_positions(wall_ms, changes)?;
            Ok(venue::Ledger { orders, positions })
        })
        .await
    }

    /// Runs `operation` on the venue thread with the wall time and a change list to journal (the
    /// simulator's endpoints reach the venue through it).
    pub(crate) async fn call<R: Send + 'static>(
        &self,
        operation: impl FnOnce(&mut PaperVenue, i64, &mut Vec<VenueChange>) -> Result<R, ExchangeError> + Send + 'static,
    ) -> Result<R, ExchangeError> {
        let (reply, answer) = oneshot::channel();
        let job: VenueJob = Box::new(move |host: &mut VenueHost| {
            // A caller that stopped waiting before the venue got to its request has cancelled it.
            if reply.is_closed() {
                return;
            }
            let _ = reply.send(host.run(operation));
        });
        self.jobs
            .send(job)
            .await
            .map_err(|_| ExchangeError::Retryable { detail: "paper exchange is stopped".to_owned() })?;
        answer.await.map_err(|_| ExchangeError::UnknownOutcome {
            detail: "paper exchange stopped while handling the request".to_owned(),
        })?
    }
}

#[async_trait]
impl Exchange for PaperExchange {
    fn venue(&self) -> &'static str {
        "paper"
    }

    fn clock_is_exact(&self) -> bool {
        true
    }

    /// One 5-minute base candle per `candle_interval_ms` of wall time.
    fn venue_pace(&self) -> crate::clock::VenuePace {
        crate::clock::VenuePace::new(market::BASE_TIMEFRAME.duration_ms(), self.market_clock.candle_interval_ms)
    }

    async fn server_time_ms(&self) -> Result<i64, ExchangeError> {
        self.call(|venue, wall_ms, _| Ok(venue.server_time_ms(wall_ms))).await
    }

    /// The venue's clock and this handle's estimate of it, read at one instant on the venue thread.
    /// Read apart (the default: the answer, then the estimate), the "offset" would only measure
    /// how long the answer took, times the market's acceleration: 4 ms of queueing is 1.2 s of
    /// market time at one candle per second, past the Monitor's tolerance.
    async fn probe_time_ms(&self) -> Result<crate::exchange::TimeProbe, ExchangeError> {
        let estimate = self.market_clock;
        self.call(move |venue, wall_ms, _| {
            let server_ms = venue.server_time_ms(wall_ms);
            Ok(crate::exchange::TimeProbe {
                server_ms,
                estimate_off_ms: Some(server_ms - estimate.market_now_ms(wall_ms)),
                estimate_error_ms: 0,
            })
        })
        .await
    }

    fn estimated_now_ms(&self) -> Option<i64> {
        Some(self.market_clock.market_now_ms(self.wall.now_ms()))
    }

    /// Each candle of `feeds` that closes from now on is pushed the moment the venue passes its
    /// close (by the ticker, or by the first request after it), as Binance's kline streams push
    /// `k.x = true`; a heartbeat first (the connection is up) and every `PAPER_STREAM_HEARTBEAT_MS`.
    fn candle_stream(&self, feeds: &[(Symbol, Timeframe)]) -> Option<crate::exchange::CandleStream> {
        let (sender, receiver) = mpsc::channel(MARKET_STREAM_QUEUE_MAX);
        let _ = sender.try_send(MarketEvent::Heartbeat);
        let market_now_ms = self.market_clock.market_now_ms(self.wall.now_ms());
        let feeds = feeds
            .iter()
            .map(|(symbol, timeframe)| StreamedFeed {
                symbol: symbol.clone(),
                timeframe: *timeframe,
                told_open_ms: timeframe.last_closed_open_ms(market_now_ms),
            })
            .collect();
        self.market_listeners.lock().push(MarketListener { feeds, sender });
        self.start_ticker();
        Some(receiver)
    }

    fn account_stream(&self, account: &UserId) -> Option<AccountStream> {
        let (sender, receiver) = mpsc::channel(ACCOUNT_STREAM_QUEUE_MAX);
        // Up at once (in process): it says so, as every venue's stream does once connected.
        let venue_ms = self.market_clock.market_now_ms(self.wall.now_ms());
        let times = crate::domain::EventTimes { transaction_ms: venue_ms, event_ms: venue_ms };
        let _ = sender.try_send(AccountEvent::Heartbeat { times });
        self.listeners.lock().insert(account.clone(), sender);
        self.start_ticker();
        Some(receiver)
    }

    async fn symbol_rules(&self, symbol: &Symbol) -> Result<SymbolRules, ExchangeError> {
        if self.jobs.is_closed() {
            return Err(ExchangeError::Retryable { detail: "paper exchange is stopped".to_owned() });
        }
        self.rules.get(symbol).copied().ok_or_else(|| venue::rejected(-1121, "Invalid symbol."))
    }

    async fn klines(&self, symbol: &Symbol, timeframe: Timeframe, limit: u16) -> Result<Vec<Candle>, ExchangeError> {
        let symbol = symbol.clone();
        self.call(move |venue, wall_ms, _| venue.klines(&symbol, timeframe, limit, wall_ms)).await
    }

    async fn position(&self, account: &UserId, symbol: &Symbol) -> Result<Position, ExchangeError> {
        let (account, symbol) = (account.clone(), symbol.clone());
        self.call(move |venue, wall_ms, changes| venue.position(&account, &symbol, wall_ms, changes)).await
    }

    async fn positions(&self, account: &UserId) -> Result<Vec<Position>, ExchangeError> {
        let account = account.clone();
        self.call(move |venue, wall_ms, changes| venue.positions(&account, wall_ms, changes)).await
    }

    async fn positions_and_open_orders(
        &self,
        account: &UserId,
    ) -> Result<(Vec<Position>, Vec<ExchangeOrder>), ExchangeError> {
        Ok((self.positions(account).await?, self.open_orders(account, None).await?))
    }

    async fn balance(&self, account: &UserId) -> Result<Balance, ExchangeError> {
        let account = account.clone();
        self.call(move |venue, wall_ms, changes| venue.balance(&account, wall_ms, changes)).await
    }

    async fn create_order(&self, account: &UserId, request: &OrderRequest) -> Result<ExchangeOrder, ExchangeError> {
        let (account, request) = (account.clone(), request.clone());
        self.call(move |venue, wall_ms, changes| venue.create_order(&account, &request, wall_ms, changes)).await
    }

    async fn order_by_client_id(
        &self,
        account: &UserId,
        _symbol: &Symbol,
        client_order_id: &ClientOrderId,
    ) -> Result<Option<ExchangeOrder>, ExchangeError> {
        let (account, client_order_id) = (account.clone(), client_order_id.clone());
        self.call(move |venue, wall_ms, changes| venue.order_by_client_id(&account, &client_order_id, wall_ms, changes))
            .await
    }

    async fn cancel_order(
        &self,
        account: &UserId,
        _symbol: &Symbol,
        client_order_id: &ClientOrderId,
    ) -> Result<ExchangeOrder, ExchangeError> {
        let (account, client_order_id) = (account.clone(), client_order_id.clone());
        self.call(move |venue, wall_ms, changes| venue.cancel_order(&account, &client_order_id, wall_ms, changes)).await
    }

    async fn open_orders(
        &self,
        account: &UserId,
        symbol: Option<&Symbol>,
    ) -> Result<Vec<ExchangeOrder>, ExchangeError> {
        let (account, symbol) = (account.clone(), symbol.cloned());
        self.call(move |venue, wall_ms, changes| venue.open_orders(&account, symbol.as_ref(), wall_ms, changes)).await
    }

    async fn fills(&self, account: &UserId, symbol: &Symbol, since_ms: i64) -> Result<Vec<Fill>, ExchangeError> {
        let (account, symbol) = (account.clone(), symbol.clone());
        self.call(move |venue, wall_ms, changes| venue.fills(&account, &symbol, since_ms, wall_ms, changes)).await
    }

    async fn order_fills(
        &self,
        account: &UserId,
        symbol: &Symbol,
        exchange_order_id: &str,
    ) -> Result<Vec<Fill>, ExchangeError> {
        let (account, symbol, exchange_order_id) = (account.clone(), symbol.clone(), exchange_order_id.to_owned());
        self.call(move |venue, wall_ms, changes| {
            let fills = venue.fills(&account, &symbol, i64::MIN, wall_ms, changes)?;
            Ok(fills.into_iter().filter(|fill| fill.exchange_order_id == exchange_order_id).collect())
        })
        .await
    }
}
