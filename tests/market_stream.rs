//! Market data on a venue that streams candles (issue 14): a closed candle that comes on the
//! market connection is delivered with no request; REST klines only fill what the connection
//! could not bring (the first window, a gap, a candle late past its grace, a connection down);
//! a dropped connection is reconnected after its backoff, and feeds of a later subscriber join an
//! existing connection's set through a replacement that is up before the old one closes.
//!
//! The venue is the paper exchange with its candle streams played by the test: every step is
//! driven by the test (a manual clock, `Poll` messages), so nothing depends on timing.

mod common;

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix::prelude::*;
use async_trait::async_trait;
use bulwark::actors::market_data::STREAM_GRACE_WALL_MS_MIN;
use bulwark::actors::market_data::{CandleClosed, MarketData, MarketStreamStatuses, Poll, Subscribe};
use bulwark::clock::ManualClock;
use bulwark::config::VenueConfig;
use bulwark::domain::{
    Balance, Candle, ClientOrderId, ExchangeOrder, Fill, MarketEvent, OrderRequest, Position, Symbol, SymbolRules,
    Timeframe, UserId,
};
use bulwark::exchange::paper::PaperExchange;
use bulwark::exchange::{CandleStream, Exchange, ExchangeError};
use bulwark::trader::stream_link::LinkState;
use tokio::sync::mpsc;

use common::{ONE_USER, START_MS, config_in, start_paper};

/// Guard against a hung test; never used to wait for something to happen.
const WAIT_GUARD: Duration = Duration::from_secs(30);

/// One connection asked for: its feeds, and the sender the test plays it with.
type PlayedStream = (Vec<(Symbol, Timeframe)>, mpsc::Sender<MarketEvent>);

/// The paper exchange whose candle streams the test plays (each `candle_stream` call leaves its
/// sender here), with every klines request counted.
#[derive(Debug)]
struct PlayedStreams {
    inner: PaperExchange,
    streams: Mutex<Vec<PlayedStream>>,
    klines: AtomicU64,
}

impl PlayedStreams {
    fn klines_requests(&self) -> u64 {
        self.klines.load(Ordering::SeqCst)
    }

    /// The sender of the `index`th connection asked for, with the feeds it was asked for.
    fn stream(&self, index: usize) -> PlayedStream {
        self.streams.lock().unwrap().get(index).cloned().expect("that connection was asked for")
    }

    fn streams_asked(&self) -> usize {
        self.streams.lock().unwrap().len()
    }
}

#[async_trait]
impl Exchange for PlayedStreams {
    fn venue(&self) -> &'static str {
        "played"
    }
    fn venue_pace(&self) -> bulwark::clock::VenuePace {
        self.inner.venue_pace()
    }
    fn account_stream(&self, account: &UserId) -> Option<bulwark::exchange::AccountStream> {
        self.inner.account_stream(account)
    }
    fn candle_stream(&self, feeds: &[(Symbol, Timeframe)]) -> Option<CandleStream> {
        let (sender, receiver) = mpsc::channel(64);
        self.streams.lock().unwrap().push((feeds.to_vec(), sender));
        Some(receiver)
    }
    async fn server_time_ms(&self) -> Result<i64, ExchangeError> {
        self.inner.server_time_ms().await
    }
    fn clock_is_exact(&self) -> bool {
        self.inner.clock_is_exact()
    }
    fn estimated_now_ms(&self) -> Option<i64> {
        self.inner.estimated_now_ms()
    }
    async fn symbol_rules(&self, symbol: &Symbol) -> Result<SymbolRules, ExchangeError> {
        self.inner.symbol_rules(symbol).await
    }
    async fn klines(&self, symbol: &Symbol, timeframe: Timeframe, limit: u16) -> Result<Vec<Candle>, ExchangeError> {
        self.klines.fetch_add(1, Ordering::SeqCst);
        self.inner.klines(symbol, timeframe, limit).await
    }
    async fn position(&self, account: &UserId, symbol: &Symbol) -> Result<Position, ExchangeError> {
        self.inner.position(account, symbol).await
    }
    async fn positions(&self, account: &UserId) -> Result<Vec<Position>, ExchangeError> {
        self.inner.positions(account).await
    }
    async fn positions_and_open_orders(
        &self,
        account: &UserId,
    ) -> Result<(Vec<Position>, Vec<ExchangeOrder>), ExchangeError> {
        self.inner.positions_and_open_orders(account).await
    }
    async fn balance(&self, account: &UserId) -> Result<Balance, ExchangeError> {
        self.inner.balance(account).await
    }
    async fn create_order(&self, account: &UserId, request: &OrderRequest) -> Result<ExchangeOrder, ExchangeError> {
        self.inner.create_order(account, request).await
    }
    async fn order_by_client_id(
        &self,
        account: &UserId,
        symbol: &Symbol,
        client_order_id: &ClientOrderId,
    ) -> Result<Option<ExchangeOrder>, ExchangeError> {
        self.inner.order_by_client_id(account, symbol, client_order_id).await
    }
    async fn cancel_order(
        &self,
        account: &UserId,
        symbol: &Symbol,
        client_order_id: &ClientOrderId,
    ) -> Result<ExchangeOrder, ExchangeError> {
        self.inner.cancel_order(account, symbol, client_order_id).await
    }
    async fn open_orders(
        &self,
        account: &UserId,
        symbol: Option<&Symbol>,
    ) -> Result<Vec<ExchangeOrder>, ExchangeError> {
        self.inner.open_orders(account, symbol).await
    }
    async fn fills(&self, account: &UserId, symbol: &Symbol, since_ms: i64) -> Result<Vec<Fill>, ExchangeError> {
        self.inner.fills(account, symbol, since_ms).await
    }
    async fn order_fills(
        &self,
        account: &UserId,
        symbol: &Symbol,
        exchange_order_id: &str,
    ) -> Result<Vec<Fill>, ExchangeError> {
        self.inner.order_fills(account, symbol, exchange_order_id).await
    }
}

/// A subscriber handing each delivery to the test.
struct Collector(mpsc::Sender<CandleClosed>);

impl Actor for Collector {
    type Context = Context<Self>;
}

impl Handler<CandleClosed> for Collector {
    type Result = ();
    fn handle(&mut self, message: CandleClosed, _: &mut Context<Self>) {
        self.0.try_send(message).expect("the test reads every delivery");
    }
}

fn xrp() -> Symbol {
    Symbol::new("XRPUSDT").unwrap()
}

struct Harness {
    clock: Arc<ManualClock>,
    exchange: Arc<PlayedStreams>,
    market_data: Addr<MarketData>,
    candle_interval_ms: i64,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = config_in(dir.path(), ONE_USER);
        let VenueConfig::Paper(settings) = &config.exchange.venue else { panic!("a paper config") };
        let candle_interval_ms = settings.candle_interval_ms;
        let clock = ManualClock::new(START_MS);
        let paper = start_paper(&config, clock.clone());
        let exchange = Arc::new(PlayedStreams { inner: paper, streams: Mutex::default(), klines: AtomicU64::new(0) });
        let market_data = MarketData::new(exchange.clone(), clock.clone(), Arc::default(), None).start();
        Self { clock, exchange, market_data, candle_interval_ms, _dir: dir }
    }

    async fn subscribe(&self, user: &str, symbol: Symbol) -> mpsc::Receiver<CandleClosed> {
        let (sender, receiver) = mpsc::channel(64);
        let recipient = Collector(sender).start().recipient();
        let subscribe = Subscribe { user: UserId::new(user).unwrap(), feeds: vec![(symbol, Timeframe::M5)], recipient };
        self.market_data.send(subscribe).await.unwrap();
        receiver
    }

    async fn poll(&self) {
        self.market_data.send(Poll).await.unwrap();
    }

    /// Moves the market `candles` five-minute candles on.
    fn advance_candles(&self, candles: i64) {
        self.clock.advance_ms(candles * self.candle_interval_ms);
    }

    /// The newest closed candle the venue has for `symbol`.
    async fn newest_closed(&self, symbol: &Symbol) -> Candle {
        self.exchange.inner.klines(symbol, Timeframe::M5, 2).await.unwrap().pop().unwrap()
    }

    /// Waits until market data has handled everything sent on connection `index` so far (its
    /// state answers `done`).
    async fn settled(&self, done: impl Fn(&[bulwark::failure_points::monitor::MarketStreamObservation]) -> bool) {
        let waiting = async {
            loop {
                let streams = self.market_data.send(MarketStreamStatuses).await.unwrap();
                if done(&streams.connections) {
                    return streams;
                }
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(WAIT_GUARD, waiting).await.expect("market data handled the stream's events");
    }
}

async fn next_window(deliveries: &mut mpsc::Receiver<CandleClosed>) -> Arc<[Candle]> {
    let delivery = tokio::time::timeout(WAIT_GUARD, deliveries.recv()).await.expect("a delivery").unwrap();
    delivery.candles.expect("a window, not an error")
}

fn is_up(connection: &bulwark::failure_points::monitor::MarketStreamObservation) -> bool {
    matches!(connection.state, LinkState::Up { .. })
}

#[actix_rt::test]
async fn streamed_candles_need_no_request_and_rest_fills_only_what_the_stream_could_not_bring() {
    let harness = Harness::start();
    let mut deliveries = harness.subscribe("u1", xrp()).await;
    // The first poll opens a connection and fetches the first window (the connection is not up).
    harness.poll().await;
    let first = next_window(&mut deliveries).await;
    assert_eq!(harness.exchange.streams_asked(), 1);
    assert_eq!(harness.exchange.klines_requests(), 1);
    let (feeds, stream) = harness.exchange.stream(0);
    assert_eq!(feeds, vec![(xrp(), Timeframe::M5)]);

    // Up: the next close comes on the stream, with no request, appended to the window.
    stream.send(MarketEvent::Heartbeat).await.unwrap();
    harness.settled(|c| c.iter().all(is_up)).await;
    harness.advance_candles(1);
    let closed = harness.newest_closed(&xrp()).await;
    assert!(closed.open_time_ms > first.last().unwrap().open_time_ms);
    stream
        .send(MarketEvent::CandleClosed { symbol: xrp(), timeframe: Timeframe::M5, candle: closed, event_ms: 0 })
        .await
        .unwrap();
    let window = next_window(&mut deliveries).await;
    assert_eq!(window.last(), Some(&closed));
    assert_eq!(window.len(), first.len(), "the window slides");
    harness.poll().await;
    assert_eq!(harness.exchange.klines_requests(), 1, "nothing is due: the stream delivered it");

    // The same candle again (a rotation's overlap) is not delivered twice.
    stream
        .send(MarketEvent::CandleClosed { symbol: xrp(), timeframe: Timeframe::M5, candle: closed, event_ms: 0 })
        .await
        .unwrap();

    // A close the stream does not bring: within its grace nothing is asked; after it, REST.
    harness.advance_candles(1);
    harness.poll().await;
    assert_eq!(harness.exchange.klines_requests(), 1, "within the grace the stream may still bring it");
    assert!(deliveries.try_recv().is_err(), "the duplicate was not delivered");
    // Past the venue's grace (a thirtieth of the timeframe) but not yet a wall-time grace after
    // the poll that found it due: an accelerated venue's seconds are not the network's.
    assert!(harness.candle_interval_ms / 10 < STREAM_GRACE_WALL_MS_MIN, "the venue runs faster than the wall");
    harness.clock.advance_ms(harness.candle_interval_ms / 10);
    harness.poll().await;
    assert_eq!(harness.exchange.klines_requests(), 1, "within the wall-time grace");
    harness.clock.advance_ms(STREAM_GRACE_WALL_MS_MIN);
    harness.poll().await;
    let late = next_window(&mut deliveries).await;
    assert_eq!(harness.exchange.klines_requests(), 2, "past the grace the candle is fetched");
    assert_eq!(late.last(), Some(&harness.newest_closed(&xrp()).await));

    // A gap (two closes, only the second streamed): the window is fetched by REST at once.
    harness.advance_candles(2);
    let second = harness.newest_closed(&xrp()).await;
    stream
        .send(MarketEvent::CandleClosed { symbol: xrp(), timeframe: Timeframe::M5, candle: second, event_ms: 0 })
        .await
        .unwrap();
    let filled = next_window(&mut deliveries).await;
    assert_eq!(harness.exchange.klines_requests(), 3);
    assert_eq!(filled.last(), Some(&second));
    let opens: Vec<i64> = filled.windows(2).map(|pair| pair[1].open_time_ms - pair[0].open_time_ms).collect();
    assert!(opens.iter().all(|step| *step == 300_000), "no candle missing from the window");

    // The connection drops: the next close is fetched by REST at once, and the connection comes
    // back after its backoff.
    drop(stream);
    harness.exchange.streams.lock().unwrap().clear();
    harness.settled(|c| c.iter().all(|c| matches!(c.state, LinkState::Down { .. }))).await;
    let down = harness.market_data.send(MarketStreamStatuses).await.unwrap();
    assert!(down.connections[0].reconnect_not_before_ms.is_some(), "a backoff before the reconnect");
    harness.advance_candles(1);
    harness.poll().await;
    next_window(&mut deliveries).await;
    assert_eq!(harness.exchange.klines_requests(), 4, "down: fetched without waiting for a grace");
    harness.clock.advance_ms(2_000);
    harness.poll().await;
    assert_eq!(harness.exchange.streams_asked(), 1, "reconnected after the backoff");
    let (_, stream) = harness.exchange.stream(0);
    stream.send(MarketEvent::Heartbeat).await.unwrap();
    harness.settled(|c| c.iter().all(is_up) && c[0].connections == 2).await;
}

#[actix_rt::test]
async fn a_later_subscribers_feed_joins_the_connection_through_a_replacement_up_before_the_old_one_closes() {
    let harness = Harness::start();
    let mut xrp_deliveries = harness.subscribe("u1", xrp()).await;
    harness.poll().await;
    next_window(&mut xrp_deliveries).await;
    let (_, first) = harness.exchange.stream(0);
    first.send(MarketEvent::Heartbeat).await.unwrap();
    harness.settled(|c| c.iter().all(is_up)).await;

    let btc = Symbol::new("BTCUSDT").unwrap();
    let mut btc_deliveries = harness.subscribe("u2", btc.clone()).await;
    harness.poll().await;
    next_window(&mut btc_deliveries).await;
    let (feeds, replacement) = harness.exchange.stream(1);
    assert_eq!(feeds, vec![(xrp(), Timeframe::M5), (btc.clone(), Timeframe::M5)], "one connection for both feeds");
    assert!(!first.is_closed(), "the old connection stays until the new one is up");
    replacement.send(MarketEvent::Heartbeat).await.unwrap();
    harness.settled(|c| c.len() == 1 && c.iter().all(is_up)).await;
    assert!(first.is_closed(), "the old connection is closed once the new one carries its feeds");

    // Both feeds' closes now come on the one connection.
    harness.advance_candles(1);
    for (symbol, deliveries) in [(xrp(), &mut xrp_deliveries), (btc, &mut btc_deliveries)] {
        let candle = harness.newest_closed(&symbol).await;
        let event = MarketEvent::CandleClosed { symbol, timeframe: Timeframe::M5, candle, event_ms: 0 };
        replacement.send(event).await.unwrap();
        assert_eq!(next_window(deliveries).await.last(), Some(&candle));
    }
    assert_eq!(harness.exchange.klines_requests(), 2, "only each feed's first window was fetched");
}
