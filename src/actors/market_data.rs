//! MarketData: one shared candle feed per (symbol, timeframe), whoever trades it.
//!
//! It polls the exchange's clock; when a candle of a subscribed feed has closed it makes one
//! klines request for that feed and fans the window out to every subscribed trader. So N users on
//! one symbol cost one request per candle close, not N. Fan-out uses `try_send`: a trader whose
//! mailbox is full misses that candle (counted and logged), and a closed mailbox (a crashed
//! trader) drops the subscription until the restarted trader subscribes again.
//!
//! A failed or stale fetch is delivered once per candle as an error, so every affected trader
//! records why it did not decide (seed §1), and the fetch is retried on the next poll.
//!
//! Where the venue streams candles (`Exchange::candle_stream`: Binance's kline streams), the feeds
//! in use are carried by market connections (up to 1,024 feeds each) and a closed candle is
//! delivered the moment it arrives, with no request. REST klines then only backfill: a feed whose
//! connection was not up when its candle closed, a candle that did not come within a grace after
//! the close (`stream_grace_ms`, and at least [`STREAM_GRACE_WALL_MS_MIN`] of wall time), or a candle that does not follow the window (a gap). A connection
//! that ends or goes silent is reconnected with backoff and jitter ([`StreamLink`]); meanwhile its
//! feeds are fetched by REST after each close, as on a venue without streams.
//!
//! Owns failure points DATA-MISSING (stale or missing candles), SYS-MARKET-STREAM (market
//! connections down or silent) and, with the order router, SYS-EXCHANGE-API.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures::StreamExt as _;
use futures::future::join_all;
use parking_lot::Mutex;

use crate::clock::Clock;
use crate::domain::{Candle, MarketEvent, Symbol, Timeframe, UserId};
use crate::exchange::Exchange;
use crate::failure_points::monitor::{FeedObservation, MarketStreamObservation, MarketStreams};
use crate::limits::{CANDLE_WINDOW_LEN, MARKET_STREAMS_PER_CONNECTION_MAX};
use crate::trader::stream_link::{LinkSettings, LinkState, StreamLink};

/// Polls after a due candle before a still-missing candle is reported as stale.
const STALE_POLLS_MAX: u32 = 3;

/// How long after a candle's end (in exchange time) it is fetched when the exchange clock is an
/// estimate: 1 % of the timeframe, at least a second (3 s for 5m candles), or twice the estimate's
/// error bound if that is more (an accelerated simulator's clock is only known to within seconds of
/// its time), but never more than a quarter of the timeframe. A fetch that came too early would
/// cost a second request for the same close.
fn close_margin_ms(timeframe: Timeframe, clock_is_exact: bool, clock_error_ms: i64) -> i64 {
    if clock_is_exact {
        return 0;
    }
    let floor_ms = (timeframe.duration_ms() / 100).max(1_000);
    floor_ms.max(clock_error_ms.saturating_mul(2)).min(timeframe.duration_ms() / 4)
}

/// How long after a candle's close (exchange ms) a feed carried by a live connection waits for
/// the streamed candle before fetching it by REST: the close margin, or a thirtieth of the
/// timeframe if more (10 s for 5m candles; Binance's closed kline comes about 2 s after the
/// close), but never more than a quarter of it.
fn stream_grace_ms(timeframe: Timeframe, close_margin_ms: i64) -> i64 {
    close_margin_ms.max(timeframe.duration_ms() / 30).min(timeframe.duration_ms() / 4)
}

/// The grace also lasts at least this much wall time from the poll that first found the candle
/// due: the streamed candle's delay is wall time (the network, the venue's push), which an
/// accelerated venue's clock cannot measure (its 10 s of grace can be 17 ms of wall time). Against
/// Binance the venue grace is the longer of the two.
pub const STREAM_GRACE_WALL_MS_MIN: i64 = 250;

/// A REST kline carries no large-trade flow: the candles of `fetched` that the previous window
/// had (streamed with their trades followed) keep theirs, so a backfill does not blank the window
/// the whale-CVD guard reads.
fn keep_large_trades(previous: Option<&[Candle]>, fetched: &mut [Candle]) {
    let Some(previous) = previous else { return };
    for candle in fetched.iter_mut().filter(|candle| candle.large_trades.is_none()) {
        let known = previous.binary_search_by_key(&candle.open_time_ms, |known| known.open_time_ms);
        if let Ok(index) = known {
            candle.large_trades = previous[index].large_trades;
        }
    }
}

/// The newest closed candles of a feed (or why they could not be had), sent to each subscriber.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct CandleClosed {
    pub symbol: Symbol,
    pub timeframe: Timeframe,
    /// Oldest first; at most [`CANDLE_WINDOW_LEN`].
    pub candles: Result<Arc<[Candle]>, String>,
}

/// Replaces a user's subscriptions.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Subscribe {
    pub user: UserId,
    pub feeds: Vec<(Symbol, Timeframe)>,
    pub recipient: Recipient<CandleClosed>,
}

#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Unsubscribe {
    pub user: UserId,
}

/// Checks every feed now (the timer sends this; tests send it to step the market).
#[derive(Debug, Message)]
#[rtype(result = "PollReport")]
pub struct Poll;

/// Stops delivering candles (the first step of an orderly shutdown: no new decisions).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct StopFeeds;

#[derive(Debug, Message)]
#[rtype(result = "MarketDataStats")]
pub struct GetStats;

/// The newest window delivered on a feed (`None`: no such feed, or nothing delivered yet).
#[derive(Debug, Message)]
#[rtype(result = "Option<Arc<[Candle]>>")]
pub struct LatestWindow {
    pub symbol: Symbol,
    pub timeframe: Timeframe,
}

/// Every feed with subscribers: how long its newest closed candle has been due without arriving,
/// as of the last poll's exchange time. `None` before the first poll that reached the exchange.
#[derive(Debug, Message)]
#[rtype(result = "Option<Vec<FeedObservation>>")]
pub struct FeedStatuses;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollReport {
    /// Market time the poll saw, if the exchange answered.
    pub server_time_ms: Option<i64>,
    /// Feeds fetched by this poll.
    pub fetched: u32,
    /// Candle windows handed to traders.
    pub delivered: u32,
    /// Deliveries refused because a trader's mailbox was full.
    pub dropped_full: u32,
    /// Another poll was still running, so this one did nothing.
    pub skipped_busy: bool,
}

/// The market connections as they stand (SYS-MARKET-STREAM).
#[derive(Debug, Message)]
#[rtype(result = "MarketStreams")]
pub struct MarketStreamStatuses;

/// Reconnects every market connection that is down now, without waiting for its backoff (the
/// Healer's action for SYS-MARKET-STREAM). Answers how many were asked for.
#[derive(Debug, Message)]
#[rtype(result = "u32")]
pub struct ReconnectMarketStreams;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MarketDataStats {
    pub feeds: usize,
    pub subscribers: usize,
    /// Closed candles that came by stream, and those of them already delivered (a rotation's
    /// overlap, or a REST backfill that came first).
    pub streamed_candles: u64,
    pub streamed_duplicates: u64,
    pub klines_requests: u64,
    pub klines_failures: u64,
    pub deliveries: u64,
    pub dropped_full: u64,
    /// The newest failed candle fetch, with the feed (kept until the next failure).
    pub last_klines_error: Option<String>,
}

/// Every user's current subscription, kept outside the actor so that a restarted market data
/// incarnation serves the same traders at once (they subscribed to the previous one). Written only
/// by the running market data incarnation; created by the root supervisor.
pub type SubscriptionBook = Arc<Mutex<BTreeMap<UserId, (Vec<(Symbol, Timeframe)>, Recipient<CandleClosed>)>>>;

#[derive(Debug, Default)]
struct Feed {
    subscribers: BTreeMap<UserId, Recipient<CandleClosed>>,
    /// Open time of the newest closed candle delivered.
    delivered_open_ms: Option<i64>,
    /// Open time of the candle whose failure was last reported (one report per candle).
    reported_failure_open_ms: Option<i64>,
    /// Polls since the newest due candle should have been available.
    stale_polls: u32,
    /// The newest window delivered (the Intelligence actor derives its series from it on paper
    /// and without CoinGlass, so that intelligence costs no exchange request).
    latest_window: Option<Arc<[Candle]>>,
    /// The market connection carrying this feed (`None`: none yet, or the venue streams nothing).
    connection: Option<u64>,
    /// (close ms, local wall ms) of the candle a poll first found due while a live connection
    /// should bring it: the start of its wall-time grace. Written and read by `due_feeds`.
    stream_grace_started: Option<(i64, i64)>,
    /// Close (exchange ms) of the newest candle a connection brought: a close it has already
    /// passed gets no grace (it came after a gap). Written by `apply_streamed_candle`.
    newest_streamed_close_ms: Option<i64>,
}

/// A feed: one symbol's candles of one timeframe.
type FeedKey = (Symbol, Timeframe);

/// One market connection: the feeds it carries and how it stands. Written by the stream
/// maintenance on each poll and by the stream handler; read by [`MarketStreamStatuses`].
#[derive(Debug)]
struct MarketConnection {
    feeds: Vec<(Symbol, Timeframe)>,
    link: StreamLink,
    /// The venue's time when the connection came up: a candle that closed before may not come on it.
    up_since_venue_ms: Option<i64>,
    /// The current attempt (events of an earlier one are ignored).
    attempt: u64,
    /// The attached event stream, cancelled when the connection is given up.
    handle: Option<SpawnHandle>,
    /// The connection this one takes over once it is up (it carries that one's feeds and new
    /// ones): feeds added later join an existing connection's set without a gap.
    replaces: Option<u64>,
    /// The connection taking this one over (set on the replaced one), so it is not picked twice.
    replaced_by: Option<u64>,
}

/// One event of one market connection's attempt; `event: None` when the connection ended.
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct StreamEnvelope {
    connection: u64,
    attempt: u64,
    event: Option<MarketEvent>,
}

pub struct MarketData {
    exchange: Arc<dyn Exchange>,
    /// Local time, for the market connections' liveness and backoff.
    clock: Arc<dyn Clock>,
    book: SubscriptionBook,
    /// `None`: poll only when sent [`Poll`].
    poll_interval: Option<Duration>,
    /// Written by Subscribe/Unsubscribe and the fan-out (closed mailboxes are dropped).
    feeds: BTreeMap<(Symbol, Timeframe), Feed>,
    /// A poll's requests are in flight; the next tick waits for it.
    polling: bool,
    /// Set by [`StopFeeds`]; never cleared in this incarnation.
    stopped: bool,
    stats: MarketDataStats,
    /// The exchange time the newest poll saw (written by polls, read by [`FeedStatuses`]).
    last_server_time_ms: Option<i64>,
    /// Market connections by id (written by the stream maintenance and the stream handler).
    connections: BTreeMap<u64, MarketConnection>,
    /// The id the next connection gets.
    next_connection_id: u64,
    /// The venue answered that it streams no candles: every feed is fetched by REST.
    streams_unsupported: bool,
}

impl std::fmt::Debug for MarketData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MarketData").field("feeds", &self.feeds.len()).field("stats", &self.stats).finish()
    }
}

impl MarketData {
    pub fn new(
        exchange: Arc<dyn Exchange>,
        clock: Arc<dyn Clock>,
        book: SubscriptionBook,
        poll_interval: Option<Duration>,
    ) -> Self {
        Self {
            exchange,
            clock,
            book,
            poll_interval,
            feeds: BTreeMap::new(),
            polling: false,
            stopped: false,
            stats: MarketDataStats::default(),
            last_server_time_ms: None,
            connections: BTreeMap::new(),
            next_connection_id: 0,
            streams_unsupported: false,
        }
    }

    fn add_subscriber(&mut self, user: &UserId, feeds: &[(Symbol, Timeframe)], recipient: &Recipient<CandleClosed>) {
        for feed in feeds {
            self.feeds.entry(feed.clone()).or_default().subscribers.insert(user.clone(), recipient.clone());
        }
    }

    fn poll(&mut self) -> ResponseActFuture<Self, PollReport> {
        if self.polling || self.stopped {
            return Box::pin(fut::ready(PollReport { skipped_busy: self.polling, ..PollReport::default() }));
        }
        self.polling = true;
        let exchange = self.exchange.clone();
        let work = async move { exchange.server_time_ms().await }
            .into_actor(self)
            .then(|server_time, actor, _| {
                let requests = match server_time {
                    Ok(now_ms) => {
                        actor.last_server_time_ms = Some(now_ms);
                        actor.due_feeds(now_ms)
                    }
                    Err(ref error) => {
                        tracing::warn!(%error, "market data: exchange time unavailable");
                        Vec::new()
                    }
                };
                let server_time_ms = server_time.ok();
                actor.stats.klines_requests += requests.len() as u64;
                let exchange = actor.exchange.clone();
                let fetches = requests.into_iter().map(move |(symbol, timeframe, expected_open_ms)| {
                    let exchange = exchange.clone();
                    async move {
                        let limit = (CANDLE_WINDOW_LEN + 1) as u16;
                        let result = exchange.klines(&symbol, timeframe, limit).await;
                        (symbol, timeframe, expected_open_ms, result)
                    }
                });
                join_all(fetches).into_actor(actor).map(move |results, actor, _| {
                    let mut report =
                        PollReport { server_time_ms, fetched: results.len() as u32, ..PollReport::default() };
                    if let Some(now_ms) = server_time_ms {
                        for (symbol, timeframe, expected_open_ms, result) in results {
                            actor.deliver(&symbol, timeframe, expected_open_ms, now_ms, result, &mut report);
                        }
                    }
                    report
                })
            })
            .map(|report, actor, _| {
                actor.polling = false;
                report
            });
        Box::pin(work)
    }

    /// Feeds with a closed candle not yet delivered (or reported), with that candle's open time.
    fn due_feeds(&mut self, now_ms: i64) -> Vec<(Symbol, Timeframe, i64)> {
        self.forget_idle_feeds(now_ms);
        let local_now_ms = self.clock.now_ms();
        let (clock_is_exact, clock_error_ms) = (self.exchange.clock_is_exact(), self.exchange.clock_error_ms());
        let streamed_closes: BTreeMap<FeedKey, i64> = self
            .feeds
            .iter()
            .filter_map(|(key, feed)| {
                let margin_ms = close_margin_ms(key.1, clock_is_exact, clock_error_ms);
                let close_ms = key.1.last_closed_open_ms(now_ms - margin_ms) + key.1.duration_ms();
                self.stream_brings(feed, close_ms, local_now_ms).then(|| (key.clone(), close_ms))
            })
            .collect();
        let mut due_feeds = Vec::new();
        for ((symbol, timeframe), feed) in self.feeds.iter_mut().filter(|(_, feed)| !feed.subscribers.is_empty()) {
            // A candle counts as closed a moment after its end, so that a clock estimate that
            // runs slightly early does not fetch before the exchange has closed it.
            let margin_ms = close_margin_ms(*timeframe, clock_is_exact, clock_error_ms);
            let expected_open_ms = timeframe.last_closed_open_ms(now_ms - margin_ms);
            if feed.delivered_open_ms.is_some_and(|delivered| delivered >= expected_open_ms) {
                continue;
            }
            // A candle a live connection should bring is given its grace before a request.
            let close_ms = expected_open_ms + timeframe.duration_ms();
            let stream_passed_it = feed.newest_streamed_close_ms.is_some_and(|streamed_ms| streamed_ms >= close_ms);
            let streamed = !stream_passed_it && streamed_closes.get(&(symbol.clone(), *timeframe)) == Some(&close_ms);
            if streamed && feed.stream_grace_started.is_none_or(|(started_close_ms, _)| started_close_ms != close_ms) {
                feed.stream_grace_started = Some((close_ms, local_now_ms));
            }
            let venue_grace = now_ms - margin_ms < close_ms + stream_grace_ms(*timeframe, margin_ms);
            let wall_grace = feed
                .stream_grace_started
                .is_some_and(|(_, started_ms)| local_now_ms - started_ms < STREAM_GRACE_WALL_MS_MIN);
            if !(streamed && (venue_grace || wall_grace)) {
                due_feeds.push((symbol.clone(), *timeframe, expected_open_ms));
            }
        }
        due_feeds
    }

    fn deliver(
        &mut self,
        symbol: &Symbol,
        timeframe: Timeframe,
        expected_open_ms: i64,
        now_ms: i64,
        result: Result<Vec<Candle>, crate::exchange::ExchangeError>,
        report: &mut PollReport,
    ) {
        if self.stopped {
            // A poll that was running when the feeds stopped delivers nothing.
            return;
        }
        if let Err(error) = &result {
            self.stats.klines_failures += 1;
            self.stats.last_klines_error = Some(format!("{symbol} {timeframe}: {error}"));
        }
        let Some(feed) = self.feeds.get_mut(&(symbol.clone(), timeframe)) else { return };
        let candles = match result {
            Ok(mut candles) => {
                candles.retain(|c| c.close_time_ms < now_ms);
                let excess = candles.len().saturating_sub(CANDLE_WINDOW_LEN);
                candles.drain(..excess);
                let newest_open_ms = candles.last().map(|c| c.open_time_ms);
                if feed.delivered_open_ms.is_some_and(|delivered| newest_open_ms.is_some_and(|n| n <= delivered)) {
                    // The stream brought it while the request was under way: delivered already.
                    return;
                }
                if newest_open_ms.is_some_and(|open| open >= expected_open_ms) {
                    feed.delivered_open_ms = newest_open_ms;
                    feed.stale_polls = 0;
                    keep_large_trades(feed.latest_window.as_deref(), &mut candles);
                    let window = Arc::<[Candle]>::from(candles);
                    feed.latest_window = Some(window.clone());
                    Ok(window)
                } else {
                    feed.stale_polls += 1;
                    if feed.stale_polls < STALE_POLLS_MAX || feed.reported_failure_open_ms == Some(expected_open_ms) {
                        return;
                    }
                    Err(format!(
                        "stale candles: newest closed {symbol} {timeframe} candle opened at {}, expected {expected_open_ms}",
                        newest_open_ms.map_or("none".to_owned(), |o| o.to_string())
                    ))
                }
            }
            Err(error) => {
                if feed.reported_failure_open_ms == Some(expected_open_ms) {
                    return;
                }
                Err(format!("klines {symbol} {timeframe}: {error}"))
            }
        };
        if candles.is_err() {
            feed.reported_failure_open_ms = Some(expected_open_ms);
            tracing::warn!(%symbol, %timeframe, error = candles.as_ref().err().map(String::as_str), "market data: candles unavailable");
        }
        let (delivered, dropped_full) = self.fan_out(symbol, timeframe, candles);
        report.delivered += delivered;
        report.dropped_full += dropped_full;
    }

    /// Hands a feed's window (or why there is none) to every subscriber; answers how many took it
    /// and how many mailboxes were full. A closed mailbox (a crashed trader) drops its
    /// subscription.
    fn fan_out(&mut self, symbol: &Symbol, timeframe: Timeframe, candles: Result<Arc<[Candle]>, String>) -> (u32, u32) {
        let Some(feed) = self.feeds.get_mut(&(symbol.clone(), timeframe)) else { return (0, 0) };
        let message = CandleClosed { symbol: symbol.clone(), timeframe, candles };
        let (mut delivered, mut dropped_full) = (0_u32, 0_u32);
        let mut closed = Vec::new();
        for (user, recipient) in &feed.subscribers {
            match recipient.try_send(message.clone()) {
                Ok(()) => delivered += 1,
                Err(SendError::Full(_)) => {
                    dropped_full += 1;
                    tracing::warn!(user = %user, %symbol, %timeframe, "market data: trader mailbox full, candle dropped for this trader");
                }
                Err(SendError::Closed(_)) => closed.push(user.clone()),
            }
        }
        if !closed.is_empty() {
            let mut book = self.book.lock();
            for user in closed {
                feed.subscribers.remove(&user);
                // Only if the book still holds the dead mailbox (a restarted trader replaced it).
                if book.get(&user).is_some_and(|(_, recipient)| !recipient.connected()) {
                    book.remove(&user);
                }
            }
        }
        self.stats.deliveries += u64::from(delivered);
        self.stats.dropped_full += u64::from(dropped_full);
        (delivered, dropped_full)
    }

    /// Whether `feed`'s connection is live and was up before `close_ms` (venue time): the candle
    /// closing then comes on it. Strictly before: a connection made at the very moment of a close
    /// is not sent that candle (it had closed when the subscription began).
    fn stream_brings(&self, feed: &Feed, close_ms: i64, local_now_ms: i64) -> bool {
        feed.connection.and_then(|id| self.connections.get(&id)).is_some_and(|connection| {
            connection.link.is_live(local_now_ms) && connection.up_since_venue_ms.is_some_and(|up_ms| up_ms < close_ms)
        })
    }

    /// Keeps every feed in use on a market connection (run before each poll): gives up connections
    /// found silent or no longer needed, opens connections for feeds without one, and reconnects
    /// those down whose backoff has passed.
    fn maintain_streams(&mut self, ctx: &mut Context<Self>) {
        if self.streams_unsupported || self.stopped {
            return;
        }
        let now_ms = self.clock.now_ms();
        self.give_up_silent_and_unused(ctx, now_ms);
        let uncovered: Vec<(Symbol, Timeframe)> = self
            .feeds
            .iter()
            .filter(|(_, feed)| feed.connection.is_none() && !feed.subscribers.is_empty())
            .map(|(key, _)| key.clone())
            .collect();
        if !uncovered.is_empty() && !self.open_for(uncovered, ctx) {
            return;
        }
        let due: Vec<u64> = self
            .connections
            .iter()
            .filter(|(_, c)| matches!(c.link.state(), LinkState::Down { .. }) && c.link.reconnect_due(now_ms).is_ok())
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.connect(id, ctx);
        }
    }

    /// Opens connections for feeds no connection carries: with the feeds of the smallest
    /// connection that has room (the new one takes it over once up, so starting users' feeds join
    /// one connection instead of each wave opening its own), else in new ones of at most
    /// `MARKET_STREAMS_PER_CONNECTION_MAX`. `false` when the venue streams no candles.
    fn open_for(&mut self, uncovered: Vec<(Symbol, Timeframe)>, ctx: &mut Context<Self>) -> bool {
        let joinable = self
            .connections
            .iter()
            .filter(|(_, c)| c.replaces.is_none() && c.replaced_by.is_none())
            .filter(|(_, c)| c.feeds.len() + uncovered.len() <= MARKET_STREAMS_PER_CONNECTION_MAX)
            .min_by_key(|(_, c)| c.feeds.len())
            .map(|(id, c)| (*id, c.feeds.clone()));
        let batches: Vec<(Vec<FeedKey>, Option<u64>)> = match joinable {
            Some((old_id, mut feeds)) => {
                feeds.extend(uncovered.iter().cloned());
                vec![(feeds, Some(old_id))]
            }
            None => uncovered.chunks(MARKET_STREAMS_PER_CONNECTION_MAX).map(|chunk| (chunk.to_vec(), None)).collect(),
        };
        for (feeds, replaces) in batches {
            let id = self.next_connection_id;
            self.next_connection_id += 1;
            if let Some(old) = replaces.and_then(|old_id| self.connections.get_mut(&old_id)) {
                old.replaced_by = Some(id);
            }
            for key in &uncovered {
                if let Some(feed) = self.feeds.get_mut(key).filter(|_| feeds.contains(key)) {
                    feed.connection = Some(id);
                }
            }
            let link = StreamLink::new(LinkSettings::default()).with_jitter_seed(id);
            let connection = MarketConnection {
                feeds,
                link,
                up_since_venue_ms: None,
                attempt: 0,
                handle: None,
                replaces,
                replaced_by: None,
            };
            self.connections.insert(id, connection);
            if !self.connect(id, ctx) {
                return false;
            }
        }
        true
    }

    /// Connection `id` is up and takes over the one it replaces: every feed it carries is its
    /// own from now on, and the old one is closed.
    fn take_over(&mut self, id: u64, ctx: &mut Context<Self>) {
        let Some(old_id) = self.connections.get_mut(&id).and_then(|c| c.replaces.take()) else { return };
        if let Some(mut old) = self.connections.remove(&old_id)
            && let Some(handle) = old.handle.take()
        {
            ctx.cancel_future(handle);
        }
        let feeds = self.connections.get(&id).map(|c| c.feeds.clone()).unwrap_or_default();
        for key in feeds {
            if let Some(feed) = self.feeds.get_mut(&key) {
                feed.connection = Some(id);
            }
        }
        tracing::info!(connection = id, replaced = old_id, "market data: market connection took over another's feeds");
    }

    /// A connection heard from too long ago is down (the venue's own watchdog should have said
    /// so); one whose feeds nobody uses any more is closed.
    fn give_up_silent_and_unused(&mut self, ctx: &mut Context<Self>, now_ms: i64) {
        let feeds = &self.feeds;
        let mut unused = Vec::new();
        for (id, connection) in &mut self.connections {
            let (own, predecessor) = (Some(*id), connection.replaces);
            connection.feeds.retain(|key| {
                feeds
                    .get(key)
                    .is_some_and(|f| f.connection == own || (predecessor.is_some() && f.connection == predecessor))
            });
            let in_use = connection.feeds.iter().any(|key| feeds.get(key).is_some_and(|f| !f.subscribers.is_empty()));
            if !in_use {
                unused.push(*id);
                continue;
            }
            if matches!(connection.link.state(), LinkState::Up { .. }) && !connection.link.is_live(now_ms) {
                tracing::warn!(
                    connection = id,
                    feeds = connection.feeds.len(),
                    "market data: market stream silent; reconnecting, its feeds are fetched by REST meanwhile"
                );
                connection.link.disconnected(now_ms);
                connection.up_since_venue_ms = None;
                if let Some(handle) = connection.handle.take() {
                    ctx.cancel_future(handle);
                }
            }
        }
        for id in unused {
            if let Some(mut connection) = self.connections.remove(&id) {
                if let Some(handle) = connection.handle.take() {
                    ctx.cancel_future(handle);
                }
                for key in &connection.feeds {
                    if let Some(feed) = self.feeds.get_mut(key) {
                        feed.connection = None;
                    }
                }
            }
        }
    }

    /// Asks the venue for connection `id`'s stream; `false` when the venue streams no candles
    /// (every feed is then fetched by REST, and no connection is asked for again).
    fn connect(&mut self, id: u64, ctx: &mut Context<Self>) -> bool {
        let now_ms = self.clock.now_ms();
        let Some(connection) = self.connections.get_mut(&id) else { return true };
        if let Some(handle) = connection.handle.take() {
            ctx.cancel_future(handle);
        }
        let Some(mut receiver) = self.exchange.candle_stream(&connection.feeds) else {
            tracing::info!(
                venue = self.exchange.venue(),
                "market data: the venue streams no candles; each feed is fetched after its close"
            );
            self.streams_unsupported = true;
            self.connections.clear();
            for feed in self.feeds.values_mut() {
                feed.connection = None;
            }
            return false;
        };
        connection.attempt += 1;
        connection.link.connecting(now_ms);
        connection.up_since_venue_ms = None;
        let attempt = connection.attempt;
        let events = futures::stream::poll_fn(move |cx| receiver.poll_recv(cx))
            .map(move |event| StreamEnvelope { connection: id, attempt, event: Some(event) })
            .chain(futures::stream::once(async move { StreamEnvelope { connection: id, attempt, event: None } }));
        connection.handle = Some(ctx.add_stream(events));
        true
    }

    /// One market connection's event.
    fn on_stream_event(&mut self, envelope: StreamEnvelope, ctx: &mut Context<Self>) {
        let now_ms = self.clock.now_ms();
        let venue_now_ms = self.exchange.estimated_now_ms();
        let Some(connection) = self.connections.get_mut(&envelope.connection) else { return };
        if envelope.attempt != connection.attempt {
            return;
        }
        let Some(event) = envelope.event else {
            let feeds = connection.feeds.len();
            if connection.link.is_connecting() {
                connection.link.failed(now_ms);
            } else {
                connection.link.disconnected(now_ms);
            }
            connection.up_since_venue_ms = None;
            connection.handle = None;
            let retry_at = connection.link.reconnect_due(now_ms).err().map(crate::clock::rfc3339_ms);
            tracing::warn!(
                connection = envelope.connection,
                feeds,
                retry_at,
                "market data: market stream down; its feeds are fetched by REST until it is back"
            );
            return;
        };
        if connection.link.is_connecting() {
            connection.link.connected(now_ms);
            connection.up_since_venue_ms = venue_now_ms;
            tracing::info!(
                connection = envelope.connection,
                feeds = connection.feeds.len(),
                "market data: market stream up"
            );
            self.take_over(envelope.connection, ctx);
        } else {
            connection.link.heard(now_ms);
        }
        if let MarketEvent::CandleClosed { symbol, timeframe, candle, .. } = event {
            self.apply_streamed_candle(&symbol, timeframe, candle, ctx);
        }
    }

    /// Delivers a streamed closed candle: appended to the feed's window when it follows it; a
    /// candle already delivered is dropped; one after a gap (or with no window yet) makes the feed
    /// fetch its window by REST now.
    fn apply_streamed_candle(
        &mut self,
        symbol: &Symbol,
        timeframe: Timeframe,
        candle: Candle,
        ctx: &mut Context<Self>,
    ) {
        if self.stopped {
            return;
        }
        let Some(feed) = self.feeds.get_mut(&(symbol.clone(), timeframe)) else { return };
        self.stats.streamed_candles += 1;
        let close_ms = candle.open_time_ms + timeframe.duration_ms();
        feed.newest_streamed_close_ms = feed.newest_streamed_close_ms.max(Some(close_ms));
        if feed.delivered_open_ms.is_some_and(|delivered| delivered >= candle.open_time_ms) {
            self.stats.streamed_duplicates += 1;
            return;
        }
        let follows = |window: &Arc<[Candle]>| {
            window.last().is_some_and(|last| last.open_time_ms + timeframe.duration_ms() == candle.open_time_ms)
        };
        let Some(window) = feed.latest_window.as_ref().filter(|window| follows(window)) else {
            tracing::debug!(%symbol, %timeframe, open_ms = candle.open_time_ms, "market data: streamed candle after a gap; the window is fetched by REST");
            let poll = self.poll().map(|_, _, _| ());
            ctx.spawn(poll);
            return;
        };
        let mut candles: Vec<Candle> = window.iter().cloned().collect();
        candles.push(candle);
        let excess = candles.len().saturating_sub(CANDLE_WINDOW_LEN);
        candles.drain(..excess);
        feed.delivered_open_ms = candles.last().map(|c| c.open_time_ms);
        feed.stale_polls = 0;
        let window = Arc::<[Candle]>::from(candles);
        feed.latest_window = Some(window.clone());
        self.fan_out(symbol, timeframe, Ok(window));
    }

    /// Removes `user` from every feed. A feed left without subscribers keeps its newest candle for
    /// a while: a trader restarting moments later (after a crash) re-subscribes to a feed that
    /// needs no new request until its next close, instead of one fetched afresh.
    fn unsubscribe(&mut self, user: &UserId) {
        for feed in self.feeds.values_mut() {
            feed.subscribers.remove(user);
        }
    }

    /// Forgets feeds without subscribers whose newest candle is older than two of their candles
    /// (a re-subscriber would need a fetch anyway): the feeds kept are the ones in use or just
    /// left, so their number stays bounded by the configured feeds.
    fn forget_idle_feeds(&mut self, now_ms: i64) {
        self.feeds.retain(|(_, timeframe), feed| {
            !feed.subscribers.is_empty()
                || feed.delivered_open_ms.is_some_and(|open_ms| now_ms - open_ms < 3 * timeframe.duration_ms())
        });
    }
}

impl Actor for MarketData {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let book: Vec<_> = self
            .book
            .lock()
            .iter()
            .map(|(user, (feeds, recipient))| (user.clone(), feeds.clone(), recipient.clone()))
            .collect();
        for (user, feeds, recipient) in book {
            self.add_subscriber(&user, &feeds, &recipient);
        }
        if let Some(interval) = self.poll_interval {
            ctx.run_interval(interval, |actor, ctx| {
                actor.maintain_streams(ctx);
                let poll = actor.poll().map(|_, _, _| ());
                ctx.spawn(poll);
            });
        }
    }
}

impl Handler<Subscribe> for MarketData {
    type Result = ();

    fn handle(&mut self, message: Subscribe, _: &mut Context<Self>) {
        self.unsubscribe(&message.user);
        self.add_subscriber(&message.user, &message.feeds, &message.recipient);
        self.book.lock().insert(message.user, (message.feeds, message.recipient));
    }
}

impl Handler<Unsubscribe> for MarketData {
    type Result = ();

    fn handle(&mut self, message: Unsubscribe, _: &mut Context<Self>) {
        self.unsubscribe(&message.user);
        self.book.lock().remove(&message.user);
    }
}

impl Handler<Poll> for MarketData {
    type Result = ResponseActFuture<Self, PollReport>;

    fn handle(&mut self, _: Poll, ctx: &mut Context<Self>) -> Self::Result {
        self.maintain_streams(ctx);
        self.poll()
    }
}

impl StreamHandler<StreamEnvelope> for MarketData {
    fn handle(&mut self, envelope: StreamEnvelope, ctx: &mut Context<Self>) {
        self.on_stream_event(envelope, ctx);
    }

    /// One connection's end is an event of its own (`event: None`); the actor goes on.
    fn finished(&mut self, _: &mut Context<Self>) {}
}

impl Handler<ReconnectMarketStreams> for MarketData {
    type Result = u32;

    fn handle(&mut self, _: ReconnectMarketStreams, ctx: &mut Context<Self>) -> u32 {
        let down: Vec<u64> = self
            .connections
            .iter()
            .filter(|(_, c)| matches!(c.link.state(), LinkState::Down { .. } | LinkState::Never))
            .map(|(id, _)| *id)
            .collect();
        for id in &down {
            self.connect(*id, ctx);
        }
        down.len() as u32
    }
}

impl Handler<MarketStreamStatuses> for MarketData {
    type Result = MessageResult<MarketStreamStatuses>;

    fn handle(&mut self, _: MarketStreamStatuses, _: &mut Context<Self>) -> Self::Result {
        let now_ms = self.clock.now_ms();
        let connections = self
            .connections
            .iter()
            .map(|(id, connection)| {
                let mut users: Vec<UserId> = connection
                    .feeds
                    .iter()
                    .filter_map(|key| self.feeds.get(key))
                    .flat_map(|feed| feed.subscribers.keys().cloned())
                    .collect();
                users.sort();
                users.dedup();
                MarketStreamObservation {
                    connection: *id,
                    feeds: connection.feeds.iter().map(|(symbol, timeframe)| format!("{symbol} {timeframe}")).collect(),
                    users,
                    state: connection.link.state(),
                    live: connection.link.is_live(now_ms),
                    silence_ms_max: connection.link.settings().silence_ms_max,
                    connections: connection.link.connections(),
                    failures_in_a_row: connection.link.failures_in_a_row(),
                    reconnect_not_before_ms: connection.link.reconnect_due(now_ms).err(),
                }
            })
            .collect();
        MessageResult(MarketStreams { streamed: !self.streams_unsupported, connections })
    }
}

impl Handler<StopFeeds> for MarketData {
    type Result = ();

    fn handle(&mut self, _: StopFeeds, _: &mut Context<Self>) {
        self.stopped = true;
    }
}

impl Handler<FeedStatuses> for MarketData {
    type Result = MessageResult<FeedStatuses>;

    fn handle(&mut self, _: FeedStatuses, _: &mut Context<Self>) -> Self::Result {
        // Lateness on a clock that keeps running while the exchange cannot be reached (the last
        // time it answered would freeze every feed "on time").
        let Some(now_ms) = self.exchange.estimated_now_ms().or(self.last_server_time_ms) else {
            return MessageResult(None);
        };
        let margin_of = |timeframe: Timeframe| {
            close_margin_ms(timeframe, self.exchange.clock_is_exact(), self.exchange.clock_error_ms())
        };
        let statuses = self
            .feeds
            .iter()
            .filter(|(_, feed)| !feed.subscribers.is_empty())
            .map(|((symbol, timeframe), feed)| {
                let margin_ms = margin_of(*timeframe);
                let expected_open_ms = timeframe.last_closed_open_ms(now_ms - margin_ms);
                let behind = feed.delivered_open_ms.is_none_or(|delivered| delivered < expected_open_ms);
                // Due since the first candle after the newest delivered one closed (plus the
                // margin): ten candles missing are ten candles overdue, not one.
                let first_missing_open_ms =
                    feed.delivered_open_ms.map_or(expected_open_ms, |delivered| delivered + timeframe.duration_ms());
                let due_since_ms = first_missing_open_ms + timeframe.duration_ms() + margin_ms;
                FeedObservation {
                    feed: format!("{symbol} {timeframe}"),
                    overdue_ms: if behind { (now_ms - due_since_ms).max(0) } else { 0 },
                    timeframe_ms: timeframe.duration_ms(),
                    users: feed.subscribers.keys().cloned().collect(),
                }
            })
            .collect();
        MessageResult(Some(statuses))
    }
}

impl Handler<LatestWindow> for MarketData {
    type Result = MessageResult<LatestWindow>;

    fn handle(&mut self, message: LatestWindow, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.feeds.get(&(message.symbol, message.timeframe)).and_then(|f| f.latest_window.clone()))
    }
}

impl Handler<GetStats> for MarketData {
    type Result = MessageResult<GetStats>;

    fn handle(&mut self, _: GetStats, _: &mut Context<Self>) -> Self::Result {
        let mut stats = self.stats.clone();
        // Feeds in use (a feed just left keeps its candle for a moment, unused).
        stats.feeds = self.feeds.values().filter(|f| !f.subscribers.is_empty()).count();
        stats.subscribers = self.feeds.values().map(|f| f.subscribers.len()).sum();
        MessageResult(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_close_margin_follows_the_clock_error_within_bounds() {
        let m5 = Timeframe::M5;
        assert_eq!(close_margin_ms(m5, true, 50_000), 0, "an exact clock needs no margin");
        assert_eq!(close_margin_ms(m5, false, 40), 3_000, "1 % of 5 minutes for a real exchange");
        assert_eq!(close_margin_ms(Timeframe::M1, false, 0), 1_000, "at least a second");
        assert_eq!(close_margin_ms(m5, false, 9_000), 18_000, "twice an accelerated clock's error");
        assert_eq!(close_margin_ms(m5, false, 1_000_000), 75_000, "at most a quarter of the timeframe");
    }
}
