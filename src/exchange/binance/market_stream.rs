//! One market connection (`exchange-streams.md`, `binance-shapes.md` §1): the kline streams of up
//! to 1,024 feeds on `<stream_url>/market/stream` (the `/market` path of the 2026 split, combined
//! mode), each closed candle (`k.x`) handed on the moment it arrives as a
//! [`MarketEvent::CandleClosed`](crate::domain::MarketEvent).
//!
//! The first streams are named in the URL (`?streams=a/b/...`, kept under `QUERY_CHARS_MAX`); the
//! rest are added with `SUBSCRIBE` requests of at most `SUBSCRIBE_PARAMS_MAX` names, spaced
//! `SUBSCRIBE_SPACING` apart (Binance disconnects a connection sending more than 10 messages a
//! second). A refused request ends the connection: a feed it left out would otherwise wait for
//! candles that never come.
//!
//! Liveness is the user data stream's: our pings (every `PING_INTERVAL`, or a third of
//! `stream_silence_max` if shorter) must be answered, a connection that delivers nothing for
//! `stream_silence_max` is treated as down (a stream on the wrong path is accepted and then sends
//! nothing), and what proves it alive (a pong, a forming candle's update) is passed on as a
//! heartbeat at most once a second. After `stream_rotation` a new connection is opened and only
//! then the old one closed; a candle both deliver is recognised by its open time downstream.
//!
//! With `trade_stream` the connection also follows each feed symbol's aggregate trades
//! (`<symbol>@aggTrade`) into a [`LargeTradeMeter`] per feed, and a closed candle leaves with the
//! large-trade flow of its interval when the connection followed the whole of it (the meter knows;
//! a trade both connections deliver during a rotation is counted once by its id). Trades are not
//! passed on one by one: the listener gets the flow with the candle.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use std::collections::BTreeMap;

use crate::domain::{Candle, MarketEvent, Symbol, Timeframe};
use crate::exchange::ExchangeError;
use crate::exchange::binance::Inner;
use crate::exchange::binance::models::{self, MarketStreamMessage};
use crate::exchange::binance::user_stream::{ROTATION_DRAIN, ROTATION_RETRY};
use crate::exchange::binance::ws::{self, Socket};
use crate::intelligence::large_trades::{LargeTradeMeter, MarketTrade};

/// Longest query string of stream names in the connection URL.
const QUERY_CHARS_MAX: usize = 2_000;
/// Stream names in one `SUBSCRIBE` request.
const SUBSCRIBE_PARAMS_MAX: usize = 200;
/// Between two `SUBSCRIBE` requests on one connection (Binance: at most 10 incoming a second).
const SUBSCRIBE_SPACING: Duration = Duration::from_millis(250);
/// At most one heartbeat passed on this often (local ms): forming candles arrive every 250 ms.
const HEARTBEAT_SPACING_MS: i64 = 1_000;

/// Why a connection ended (logged; the listener sees the end either way).
enum Ended {
    Closed(String),
    Refused(String),
    Silent(Duration),
    FellBehind,
    NobodyListens,
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Closed(why) => write!(f, "the connection ended: {why}"),
            Ended::Refused(why) => write!(f, "a subscription was refused: {why}"),
            Ended::Silent(bound) => write!(f, "nothing heard for {} ms (treated as down)", bound.as_millis()),
            Ended::FellBehind => f.write_str("the listener fell behind"),
            Ended::NobodyListens => f.write_str("nobody listens any more"),
        }
    }
}

/// Binance's name of a feed's kline stream: `btcusdt@kline_5m`.
pub fn stream_name(symbol: &Symbol, timeframe: Timeframe) -> String {
    format!("{}@kline_{}", symbol.as_str().to_ascii_lowercase(), timeframe.as_str())
}

/// Binance's name of a symbol's aggregate trade stream: `btcusdt@aggTrade`.
pub fn trade_stream_name(symbol: &Symbol) -> String {
    format!("{}@aggTrade", symbol.as_str().to_ascii_lowercase())
}

/// The large-trade meters of a connection's feeds (empty without `trade_stream`). Written by the
/// connection's task only.
struct TradeFlows {
    meters: BTreeMap<(Symbol, Timeframe), LargeTradeMeter>,
}

impl TradeFlows {
    fn new(feeds: &[(Symbol, Timeframe)], follow_trades: bool) -> Self {
        let meters = feeds
            .iter()
            .filter(|_| follow_trades)
            .map(|(symbol, timeframe)| ((symbol.clone(), *timeframe), LargeTradeMeter::new(timeframe.duration_ms())))
            .collect();
        Self { meters }
    }

    fn record(&mut self, symbol: &Symbol, trade: &MarketTrade) {
        for ((_, _), meter) in self.meters.iter_mut().filter(|((feed_symbol, _), _)| feed_symbol == symbol) {
            meter.record(trade);
        }
    }

    /// The closed candle with its interval's large-trade flow, where the interval was followed whole.
    fn attach(&mut self, symbol: &Symbol, timeframe: Timeframe, mut candle: Candle) -> Candle {
        if let Some(meter) = self.meters.get_mut(&(symbol.clone(), timeframe)) {
            candle.large_trades = meter.take(candle.open_time_ms);
        }
        candle
    }
}

/// The connection URL for `names`, and the names left for `SUBSCRIBE` requests.
fn url_and_rest<'a>(base: &str, names: &'a [String]) -> (String, &'a [String]) {
    let mut query_chars = 0;
    let in_query = names
        .iter()
        .take_while(|name| {
            query_chars += name.len() + 1;
            query_chars <= QUERY_CHARS_MAX
        })
        .count()
        .max(1)
        .min(names.len());
    let url = format!("{}/market/stream?streams={}", base.trim_end_matches('/'), names[..in_query].join("/"));
    (url, &names[in_query..])
}

/// Follows the closed candles of `feeds` into `events` until the connection ends; logs why.
pub(super) async fn run(inner: Arc<Inner>, feeds: Vec<(Symbol, Timeframe)>, events: mpsc::Sender<MarketEvent>) {
    let mut names: Vec<String> = feeds.iter().map(|(symbol, timeframe)| stream_name(symbol, *timeframe)).collect();
    if names.is_empty() {
        return;
    }
    let follow_trades = inner.settings.trade_stream;
    if follow_trades {
        let symbols: std::collections::BTreeSet<&Symbol> = feeds.iter().map(|(symbol, _)| symbol).collect();
        names.extend(symbols.into_iter().map(trade_stream_name));
    }
    let mut flows = TradeFlows::new(&feeds, follow_trades);
    match follow(&inner, &names, &events, &mut flows).await {
        Ok(Ended::NobodyListens) => {
            tracing::debug!(streams = names.len(), "binance: market stream no longer listened to")
        }
        Ok(ended) => {
            tracing::warn!(streams = names.len(), %ended, "binance: market stream ended; market data reconnects")
        }
        Err(error) => tracing::warn!(streams = names.len(), %error, "binance: market stream could not be opened"),
    }
}

/// A connection carrying every stream of `names` (the URL's, then the `SUBSCRIBE`d rest).
async fn open(inner: &Inner, names: &[String]) -> Result<Socket, ExchangeError> {
    let (url, rest) = url_and_rest(inner.settings.stream_url.as_str(), names);
    let mut socket = ws::connect(inner, &url, "market stream").await?;
    for (index, batch) in rest.chunks(SUBSCRIBE_PARAMS_MAX).enumerate() {
        tokio::time::sleep(SUBSCRIBE_SPACING).await;
        let request = serde_json::json!({ "method": "SUBSCRIBE", "params": batch, "id": index + 1 });
        socket.send(Message::Text(request.to_string())).await.map_err(|error| ExchangeError::Retryable {
            detail: format!("market stream: SUBSCRIBE not sent: {error}"),
        })?;
    }
    Ok(socket)
}

/// When the last heartbeat was passed on (local ms), to pass on at most one a second.
struct Heartbeats {
    last_passed_ms: i64,
}

impl Heartbeats {
    fn due(&mut self, now_ms: i64) -> bool {
        if now_ms - self.last_passed_ms < HEARTBEAT_SPACING_MS {
            return false;
        }
        self.last_passed_ms = now_ms;
        true
    }
}

async fn follow(
    inner: &Inner,
    names: &[String],
    events: &mpsc::Sender<MarketEvent>,
    flows: &mut TradeFlows,
) -> Result<Ended, ExchangeError> {
    let socket = open(inner, names).await?;
    tracing::info!(streams = names.len(), "binance: market stream connected");
    // Up: candles closing from here on arrive on it (the listener fetches by REST what came before).
    if events.try_send(MarketEvent::Heartbeat).is_err() {
        return Ok(Ended::NobodyListens);
    }
    let mut heartbeats = Heartbeats { last_passed_ms: inner.local.now_ms() };
    let (mut write, mut read) = socket.split();
    let silence_max = inner.settings.stream_silence_max;
    let mut ping = tokio::time::interval(ws::ping_interval(silence_max));
    let rotate = tokio::time::sleep(inner.settings.stream_rotation);
    tokio::pin!(rotate);
    let mut last_heard_ms = inner.local.now_ms();
    loop {
        tokio::select! {
            frame = read.next() => {
                last_heard_ms = inner.local.now_ms();
                if let Some(ended) = pass_on(inner, frame, &mut write, events, &mut heartbeats, flows).await {
                    return Ok(ended);
                }
            }
            _ = ping.tick() => {
                if inner.local.now_ms() - last_heard_ms > silence_max.as_millis() as i64 {
                    return Ok(Ended::Silent(silence_max));
                }
                if write.send(Message::Ping(Vec::new())).await.is_err() {
                    return Ok(Ended::Closed("the ping could not be sent".into()));
                }
            }
            _ = &mut rotate => {
                // The new connection first; the old one is closed only once it is up.
                let next = match open(inner, names).await {
                    Ok(socket) => {
                        let (old_write, old_read) = (write, read);
                        (write, read) = socket.split();
                        let drained = close_and_drain(inner, old_write, old_read, events, &mut heartbeats, flows).await;
                        if let Some(ended) = drained {
                            return Ok(ended);
                        }
                        last_heard_ms = inner.local.now_ms();
                        tracing::info!(streams = names.len(), "binance: market stream rotated to a new connection");
                        inner.settings.stream_rotation
                    }
                    Err(error) => {
                        tracing::warn!(%error, "binance: market stream rotation failed; the connection stays, tried again in a minute");
                        ROTATION_RETRY
                    }
                };
                rotate.as_mut().reset(tokio::time::Instant::now() + next);
            }
            _ = events.closed() => return Ok(Ended::NobodyListens),
        }
    }
}

/// Hands one frame's closed candle (with its large-trade flow) or a heartbeat (at most one a
/// second) to the listener, counts a trade, answers a ping; `Some` when the connection ends with it.
async fn pass_on(
    inner: &Inner,
    frame: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    write: &mut futures::stream::SplitSink<Socket, Message>,
    events: &mpsc::Sender<MarketEvent>,
    heartbeats: &mut Heartbeats,
    flows: &mut TradeFlows,
) -> Option<Ended> {
    let message = match frame {
        Some(Ok(message)) => message,
        Some(Err(error)) => return Some(Ended::Closed(error.to_string())),
        None => return Some(Ended::Closed("the exchange closed the connection".into())),
    };
    let event = match message {
        Message::Text(text) => match models::market_stream_message(&text) {
            Ok(MarketStreamMessage::ClosedCandle { symbol, timeframe, candle, event_ms }) => {
                let candle = flows.attach(&symbol, timeframe, candle);
                MarketEvent::CandleClosed { symbol, timeframe, candle, event_ms }
            }
            Ok(MarketStreamMessage::Trade { symbol, trade }) => {
                flows.record(&symbol, &trade);
                MarketEvent::Heartbeat
            }
            Ok(MarketStreamMessage::Refused { code, msg }) => {
                return Some(Ended::Refused(format!("code {code}: {msg}")));
            }
            Ok(MarketStreamMessage::Alive) => MarketEvent::Heartbeat,
            Err(error) => {
                // A candle that does not parse is not delivered (the feed fetches it by REST when
                // it is overdue); the connection goes on.
                tracing::warn!(%error, "binance: market stream message not understood");
                return None;
            }
        },
        Message::Ping(payload) => {
            if write.send(Message::Pong(payload)).await.is_err() {
                return Some(Ended::Closed("the pong could not be sent".into()));
            }
            MarketEvent::Heartbeat
        }
        Message::Pong(_) => MarketEvent::Heartbeat,
        Message::Close(frame) => return Some(Ended::Closed(format!("closed by the exchange: {frame:?}"))),
        _ => return None,
    };
    if matches!(event, MarketEvent::Heartbeat) && !heartbeats.due(inner.local.now_ms()) {
        return None;
    }
    match events.try_send(event) {
        Ok(()) => None,
        Err(mpsc::error::TrySendError::Full(_)) => Some(Ended::FellBehind),
        Err(mpsc::error::TrySendError::Closed(_)) => Some(Ended::NobodyListens),
    }
}

/// Closes a rotated-out connection and passes on what it still delivers until it is closed, for at
/// most `ROTATION_DRAIN`. `Some` when the stream as a whole ends (the listener is gone or behind).
async fn close_and_drain(
    inner: &Inner,
    mut write: futures::stream::SplitSink<Socket, Message>,
    mut read: futures::stream::SplitStream<Socket>,
    events: &mpsc::Sender<MarketEvent>,
    heartbeats: &mut Heartbeats,
    flows: &mut TradeFlows,
) -> Option<Ended> {
    let _ = write.send(Message::Close(None)).await;
    let drain = async {
        loop {
            match pass_on(inner, read.next().await, &mut write, events, heartbeats, flows).await {
                None => continue,
                Some(Ended::Closed(_)) => return None,
                Some(ended) => return Some(ended),
            }
        }
    };
    tokio::time::timeout(ROTATION_DRAIN, drain).await.unwrap_or(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_streams_go_in_the_url_and_the_rest_are_subscribed() {
        let names: Vec<String> = (0..300).map(|i| format!("sym{i:04}usdt@kline_5m")).collect();
        let (url, rest) = url_and_rest("wss://fstream.binance.com/", &names);
        assert!(url.starts_with("wss://fstream.binance.com/market/stream?streams=sym0000usdt@kline_5m/sym0001usdt"));
        let in_url = names.len() - rest.len();
        assert!(url.len() < QUERY_CHARS_MAX + 100, "{} chars", url.len());
        assert_eq!(url.matches("@kline_5m").count(), in_url);
        assert_eq!(rest.first(), Some(&names[in_url]));
        let (url, rest) = url_and_rest("ws://127.0.0.1:9", &names[..2]);
        assert_eq!(url, "ws://127.0.0.1:9/market/stream?streams=sym0000usdt@kline_5m/sym0001usdt@kline_5m");
        assert!(rest.is_empty());
    }

    #[test]
    fn a_stream_is_named_as_binance_names_it() {
        assert_eq!(stream_name(&Symbol::new("BTCUSDT").unwrap(), Timeframe::M5), "btcusdt@kline_5m");
    }
}
