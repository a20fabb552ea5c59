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
//! Owns failure points DATA-MISSING (stale or missing candles) and, with the order router,
//! SYS-EXCHANGE-API.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures::future::join_all;
use parking_lot::Mutex;

use crate::domain::{Candle, Symbol, Timeframe, UserId};
use crate::exchange::Exchange;
use crate::failure_points::monitor::FeedObservation;
use crate::limits::CANDLE_WINDOW_LEN;

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

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MarketDataStats {
    pub feeds: usize,
    pub subscribers: usize,
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
}

pub struct MarketData {
    exchange: Arc<dyn Exchange>,
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
}

impl std::fmt::Debug for MarketData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MarketData").field("feeds", &self.feeds.len()).field("stats", &self.stats).finish()
    }
}

impl MarketData {
    pub fn new(exchange: Arc<dyn Exchange>, book: SubscriptionBook, poll_interval: Option<Duration>) -> Self {
        Self {
            exchange,
            book,
            poll_interval,
            feeds: BTreeMap::new(),
            polling: false,
            stopped: false,
            stats: MarketDataStats::default(),
            last_server_time_ms: None,
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
        self.feeds
            .iter()
            .filter(|(_, feed)| !feed.subscribers.is_empty())
            .filter_map(|((symbol, timeframe), feed)| {
                // A candle counts as closed a moment after its end, so that a clock estimate that
                // runs slightly early does not fetch before the exchange has closed it.
                let margin_ms =
                    close_margin_ms(*timeframe, self.exchange.clock_is_exact(), self.exchange.clock_error_ms());
                let expected_open_ms = timeframe.last_closed_open_ms(now_ms - margin_ms);
                let due = feed.delivered_open_ms.is_none_or(|delivered| delivered < expected_open_ms);
                due.then(|| (symbol.clone(), *timeframe, expected_open_ms))
            })
            .collect()
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
                if newest_open_ms.is_some_and(|open| open >= expected_open_ms) {
                    feed.delivered_open_ms = newest_open_ms;
                    feed.stale_polls = 0;
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
        report.delivered += delivered;
        report.dropped_full += dropped_full;
        self.stats.deliveries += u64::from(delivered);
        self.stats.dropped_full += u64::from(dropped_full);
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

    fn handle(&mut self, _: Poll, _: &mut Context<Self>) -> Self::Result {
        self.poll()
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
