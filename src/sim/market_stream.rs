//! `bulwark sim`'s market streams, as Binance serves them (`binance-shapes.md` §1): kline streams
//! (`<symbol>@kline_<interval>`) driven by the simulator's market, on Binance's paths —
//! `/market/ws/<s1>/<s2>` (raw payloads) and `/market/stream?streams=<s1>/<s2>` (each payload
//! wrapped `{"stream":...,"data":...}`) — with the control requests of §1.2 (`SUBSCRIBE`,
//! `UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS`, `SET_PROPERTY` / `GET_PROPERTY` of `combined`) and their
//! documented error replies.
//!
//! As on Binance since the 2026 split, a market stream asked for on another path (the retired
//! `/ws/<stream>` and `/stream?streams=`, or `/public/...`) is accepted and acknowledged and then
//! delivers nothing: a client on the wrong path meets the silence its watchdog must catch.
//!
//! Each connection pushes the candle still forming at most every 250 ms (wall) and the closed
//! candle (`"x": true`) once the market clock passes its end; the forming candle is the REST
//! klines' last row, traded so far along its path inside its range. A closed candle (and each ping the
//! server sends every 3 minutes) draws the plan's `market_stream` faults: dropped, duplicated,
//! delayed, or the connection dropped or stalled. A connection sending more than 10 messages a
//! second is closed, as Binance does.
//!
//! Aggregate trade streams (`<symbol>@aggTrade`) carry the market's recorded tape
//! ([`crate::intelligence::tape`]): each candle's trades go out when it closes, before its closed
//! kline, with their own trade times inside the candle (Binance sends each as it happens; the
//! simulator's market does not know a candle's trades before it closes). They draw no faults of
//! their own: a dropped or stalled connection loses them with everything else. The kline's `n`,
//! `V` and `Q` come from the same tape.

use std::collections::BTreeMap;
use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::Message;
use serde_json::{Value, json};

use crate::domain::{Candle, Symbol, Timeframe};
use crate::exchange::Exchange;
use crate::exchange::paper::market::BASE_TIMEFRAME;
use crate::exchange::paper::market::{KlineInterval, KlineWindow};
use crate::intelligence::tape;
use crate::sim::SimState;
use crate::sim::faults::StreamDraw;

/// Streams one connection may carry (Binance: 1,024 since 2025-07-02).
const STREAMS_PER_CONNECTION_MAX: usize = 1_024;
/// Messages a client may send a second before its connection is closed.
const INCOMING_PER_SECOND_MAX: u32 = 10;
/// How often the forming candle is pushed, at most (wall).
const FORMING_INTERVAL: Duration = Duration::from_millis(250);
/// How often the server pings a connection (Binance: every 3 minutes).
const SERVER_PING_INTERVAL: Duration = Duration::from_secs(180);
/// The control methods, in Binance's error text order.
const METHODS: &str = "`SUBSCRIBE`, `UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS`, `SET_PROPERTY`, `GET_PROPERTY`";

/// Where a connection was opened, which decides whether market streams flow on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// `/market/...`: kline streams are delivered.
    Market,
    /// Any other path: market streams are acknowledged and never delivered.
    Elsewhere,
}

/// A kline stream a connection follows, and the newest closed candle it has sent (open ms).
#[derive(Debug)]
struct Kline {
    name: String,
    symbol: Symbol,
    timeframe: Timeframe,
    sent_open_ms: Option<i64>,
}

/// An aggregate trade stream a connection follows, and the newest base candle whose trades it
/// has sent (open ms).
#[derive(Debug)]
struct TradeFollow {
    name: String,
    symbol: Symbol,
    sent_open_ms: Option<i64>,
}

/// One connection's subscriptions and settings. Written by its own serving task only.
#[derive(Debug)]
struct Subscriptions {
    route: Route,
    /// In subscription order (what `LIST_SUBSCRIPTIONS` answers).
    names: Vec<String>,
    klines: BTreeMap<String, Kline>,
    trades: BTreeMap<String, TradeFollow>,
    combined: bool,
}

impl Subscriptions {
    fn subscribe(&mut self, names: &[String]) -> Result<(), String> {
        let new: Vec<&String> = names.iter().filter(|name| !self.names.contains(name)).collect();
        if self.names.len() + new.len() > STREAMS_PER_CONNECTION_MAX {
            return Err("Invalid request: too many parameters".to_owned());
        }
        for name in new {
            self.names.push(name.clone());
            if let Some((symbol, timeframe)) = kline_stream(name) {
                self.klines.insert(name.clone(), Kline { name: name.clone(), symbol, timeframe, sent_open_ms: None });
            } else if let Some(symbol) = trade_stream(name) {
                self.trades.insert(name.clone(), TradeFollow { name: name.clone(), symbol, sent_open_ms: None });
            }
        }
        Ok(())
    }

    fn unsubscribe(&mut self, names: &[String]) {
        self.names.retain(|name| !names.contains(name));
        self.klines.retain(|name, _| !names.contains(name));
        self.trades.retain(|name, _| !names.contains(name));
    }
}

/// `<symbol>@kline_<interval>` read as a feed; `None` for any other stream (or an unknown interval).
fn kline_stream(name: &str) -> Option<(Symbol, Timeframe)> {
    let (symbol, interval) = name.split_once("@kline_")?;
    if symbol.is_empty() || symbol.chars().any(|c| c.is_ascii_uppercase()) {
        return None;
    }
    Some((Symbol::new(&symbol.to_ascii_uppercase()).ok()?, interval.parse().ok()?))
}

/// `<symbol>@aggTrade` read as its symbol; `None` for any other stream.
fn trade_stream(name: &str) -> Option<Symbol> {
    let symbol = name.strip_suffix("@aggTrade")?;
    if symbol.is_empty() || symbol.chars().any(|c| c.is_ascii_uppercase()) {
        return None;
    }
    Symbol::new(&symbol.to_ascii_uppercase()).ok()
}

/// `GET /market/ws/<streams>`, `/market/ws`, `/market/stream?streams=...`, and the same shapes on
/// other paths (accepted, silent for market streams).
pub async fn connect(request: HttpRequest, body: web::Payload, state: web::Data<SimState>) -> HttpResponse {
    let path = request.path().to_owned();
    let route = if path.starts_with("/market/") { Route::Market } else { Route::Elsewhere };
    let combined = path.ends_with("/stream") || path == "/stream";
    let names: Vec<String> = if combined {
        crate::sim::binance_api::Params::parse(request.query_string(), "")
            .get("streams")
            .map(|streams| streams.split('/').filter(|s| !s.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default()
    } else {
        request
            .match_info()
            .get("streams")
            .unwrap_or("")
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let mut subscriptions =
        Subscriptions { route, names: Vec::new(), klines: BTreeMap::new(), trades: BTreeMap::new(), combined };
    if let Err(msg) = subscriptions.subscribe(&names) {
        return crate::sim::binance_error(actix_web::http::StatusCode::BAD_REQUEST, -1121, &msg);
    }
    let (response, session, incoming) = match actix_ws::handle(&request, body) {
        Ok(parts) => parts,
        Err(error) => return error.error_response(),
    };
    state.stats.lock().market_stream_connections += 1;
    actix_web::rt::spawn(serve(state.into_inner(), subscriptions, session, incoming));
    response
}

/// Why a connection's serving ends.
enum Ended {
    Closed,
    Stalled,
}

/// Serves one connection until the client closes it or a fault ends it.
async fn serve(
    state: std::sync::Arc<SimState>,
    mut subscriptions: Subscriptions,
    mut session: actix_ws::Session,
    mut incoming: actix_ws::MessageStream,
) {
    let mut server_ping = tokio::time::interval(SERVER_PING_INTERVAL);
    server_ping.tick().await;
    let mut last_forming_ms = 0_i64;
    let mut incoming_second = (0_i64, 0_u32);
    let ended = loop {
        tokio::select! {
            message = incoming.recv() => {
                let now_s = state.now_ms().div_euclid(1_000);
                incoming_second = if incoming_second.0 == now_s { (now_s, incoming_second.1 + 1) } else { (now_s, 1) };
                if incoming_second.1 > INCOMING_PER_SECOND_MAX {
                    tracing::info!("sim: market connection closed: more than 10 incoming messages a second");
                    break Ended::Closed;
                }
                match message {
                    Some(Ok(Message::Text(text))) => {
                        let reply = control(&mut subscriptions, &text);
                        if session.text(reply.to_string()).await.is_err() {
                            break Ended::Closed;
                        }
                    }
                    Some(Ok(Message::Ping(bytes))) => {
                        if session.pong(&bytes).await.is_err() {
                            break Ended::Closed;
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break Ended::Closed,
                    Some(Ok(_)) => {}
                }
            }
            _ = tokio::time::sleep(next_push_in(&state, &subscriptions, last_forming_ms)) => {
                if subscriptions.route != Route::Market {
                    continue;
                }
                let wall_ms = state.now_ms();
                let forming_due = wall_ms - last_forming_ms >= FORMING_INTERVAL.as_millis() as i64;
                if forming_due {
                    last_forming_ms = wall_ms;
                }
                if push_trades(&state, &mut subscriptions, &mut session).await.is_err() {
                    break Ended::Closed;
                }
                match push_klines(&state, &mut subscriptions, &mut session, forming_due).await {
                    Ok(()) => {}
                    Err(ended) => break ended,
                }
            }
            _ = server_ping.tick() => {
                match draw(&state) {
                    StreamDraw::Disconnect => break Ended::Closed,
                    StreamDraw::Stall => break Ended::Stalled,
                    StreamDraw::Drop => {}
                    _ => if session.ping(b"").await.is_err() { break Ended::Closed },
                }
            }
        }
    };
    if let Ended::Stalled = ended {
        // Open, sending nothing and answering nothing, until the client gives up.
        while let Some(Ok(message)) = incoming.recv().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    }
    tracing::debug!("sim: market connection closed");
    let _ = session.close(None).await;
}

/// How long until the next push is due: the forming candles' next update, or the next candle
/// close of a kline stream (a closed candle goes out the moment the market clock passes its end).
fn next_push_in(state: &SimState, subscriptions: &Subscriptions, last_forming_ms: i64) -> Duration {
    let wall_ms = state.now_ms();
    let venue_now_ms = state.exchange_now_ms(0);
    let timeframes = subscriptions
        .klines
        .values()
        .map(|kline| kline.timeframe)
        .chain(subscriptions.trades.values().map(|_| BASE_TIMEFRAME));
    let next_close_wall_ms = timeframes
        .map(|timeframe| {
            let duration_ms = timeframe.duration_ms();
            state.market_clock.wall_at_ms(timeframe.last_closed_open_ms(venue_now_ms) + 2 * duration_ms)
        })
        .min();
    let forming_wall_ms = last_forming_ms + FORMING_INTERVAL.as_millis() as i64;
    let wake_ms = next_close_wall_ms.map_or(forming_wall_ms, |close_ms| close_ms.min(forming_wall_ms));
    Duration::from_millis((wake_ms - wall_ms).clamp(1, FORMING_INTERVAL.as_millis() as i64) as u64)
}

/// The plan's next market stream fault, counted.
fn draw(state: &SimState) -> StreamDraw {
    let draw = state.faults.lock().draw_market_stream();
    if let Some(fault) = draw.fault_name() {
        tracing::info!(fault, "sim: market stream fault");
        *state.stats.lock().stream_faults.entry(format!("market_{fault}")).or_default() += 1;
    }
    draw
}

/// Sends the trades of every base candle closed since an aggregate trade stream's last push (a new
/// subscription starts with the candle forming now).
async fn push_trades(
    state: &SimState,
    subscriptions: &mut Subscriptions,
    session: &mut actix_ws::Session,
) -> Result<(), Ended> {
    let venue_now_ms = state.exchange_now_ms(0);
    let combined = subscriptions.combined;
    for follow in subscriptions.trades.values_mut() {
        let last_closed_open_ms = BASE_TIMEFRAME.last_closed_open_ms(venue_now_ms);
        if follow.sent_open_ms.is_some_and(|sent| sent >= last_closed_open_ms) {
            continue;
        }
        let Ok(candles) = state.exchange.klines(&follow.symbol, BASE_TIMEFRAME, 3).await else { continue };
        let Some(last) = candles.last() else { continue };
        let Some(sent_open_ms) = follow.sent_open_ms else {
            follow.sent_open_ms = Some(last.open_time_ms);
            continue;
        };
        for candle in candles.iter().filter(|c| c.open_time_ms > sent_open_ms) {
            follow.sent_open_ms = Some(candle.open_time_ms);
            for trade in tape::candle_trades(candle) {
                let payload = agg_trade_json(&follow.symbol, &trade, venue_now_ms);
                send(session, &wrap(combined, &follow.name, payload)).await?;
            }
        }
    }
    Ok(())
}

/// Binance's aggregate trade event (`binance-shapes.md` §1.5): one recorded trade is one
/// aggregate of one fill.
pub fn agg_trade_json(symbol: &Symbol, trade: &crate::intelligence::large_trades::MarketTrade, event_ms: i64) -> Value {
    json!({
        "e": "aggTrade",
        "E": event_ms,
        "s": symbol.as_str(),
        "a": trade.id,
        "p": format!("{}", trade.price),
        "q": format!("{}", trade.quantity),
        "nq": format!("{}", trade.quantity),
        "f": trade.id,
        "l": trade.id,
        "T": trade.time_ms,
        "m": !trade.taker_buys,
    })
}

/// Sends every kline stream's newly closed candles (each drawing the fault plan), and the forming
/// candle when `forming_due`.
async fn push_klines(
    state: &SimState,
    subscriptions: &mut Subscriptions,
    session: &mut actix_ws::Session,
    forming_due: bool,
) -> Result<(), Ended> {
    let venue_now_ms = state.exchange_now_ms(0);
    let combined = subscriptions.combined;
    for kline in subscriptions.klines.values_mut() {
        let last_closed_open_ms = kline.timeframe.last_closed_open_ms(venue_now_ms);
        let newly_closed = kline.sent_open_ms.is_none_or(|sent| sent < last_closed_open_ms);
        if !newly_closed && !forming_due {
            continue;
        }
        let Ok(candles) = state.exchange.klines(&kline.symbol, kline.timeframe, 3).await else { continue };
        let Some(last) = candles.last() else { continue };
        if kline.sent_open_ms.is_none() {
            // A new subscription starts with the candle forming now (as Binance's does).
            kline.sent_open_ms = Some(last.open_time_ms);
        }
        let sent_open_ms = kline.sent_open_ms;
        for candle in candles.iter().filter(|c| sent_open_ms.is_some_and(|sent| c.open_time_ms > sent)) {
            kline.sent_open_ms = Some(candle.open_time_ms);
            let text =
                wrap(combined, &kline.name, kline_json(&kline.symbol, kline.timeframe, candle, true, venue_now_ms));
            match draw(state) {
                StreamDraw::Deliver | StreamDraw::Expire => send(session, &text).await?,
                StreamDraw::Duplicate => {
                    send(session, &text).await?;
                    send(session, &text).await?;
                }
                StreamDraw::Delay { ms } => {
                    let mut late = session.clone();
                    actix_web::rt::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        let _ = late.text(text).await;
                    });
                }
                StreamDraw::Drop => {}
                StreamDraw::Disconnect => return Err(Ended::Closed),
                StreamDraw::Stall => return Err(Ended::Stalled),
            }
        }
        if forming_due {
            // The candle forming now, traded so far along its path (as the REST klines' last row).
            let newest = KlineWindow { start_ms: None, end_ms: None, limit: 1 };
            let interval = KlineInterval::of(kline.timeframe);
            let Ok(rows) = state.exchange.klines_window(&kline.symbol, interval, newest).await else { continue };
            let Some(forming) = rows.last().filter(|c| c.open_time_ms > last.open_time_ms) else { continue };
            let text =
                wrap(combined, &kline.name, kline_json(&kline.symbol, kline.timeframe, forming, false, venue_now_ms));
            send(session, &text).await?;
        }
    }
    Ok(())
}

async fn send(session: &mut actix_ws::Session, text: &str) -> Result<(), Ended> {
    session.text(text.to_owned()).await.map_err(|_| Ended::Closed)
}

/// Trades in a candle of the simulator's market: the tape's per base candle it spans (none in a
/// candle with no volume yet).
pub fn trade_count(candle: &Candle) -> u64 {
    if candle.volume == 0.0 {
        return 0;
    }
    let span_ms = candle.close_time_ms + 1 - candle.open_time_ms;
    let base_candles = (span_ms as f64 / BASE_TIMEFRAME.duration_ms() as f64).max(1.0);
    (base_candles * tape::TRADES_PER_CANDLE as f64).round() as u64
}

/// A payload as the connection's mode sends it: bare, or wrapped with its stream's name.
fn wrap(combined: bool, stream: &str, payload: Value) -> String {
    if combined { json!({ "stream": stream, "data": payload }).to_string() } else { payload.to_string() }
}

/// Binance's kline event (`binance-shapes.md` §1.4).
pub fn kline_json(symbol: &Symbol, timeframe: Timeframe, candle: &Candle, closed: bool, event_ms: i64) -> Value {
    let number = |value: f64| format!("{value}");
    let taker_buy_volume = candle.taker_buy_volume.unwrap_or(0.0);
    json!({
        "e": "kline",
        "E": event_ms,
        "s": symbol.as_str(),
        "k": {
            "t": candle.open_time_ms,
            "T": candle.close_time_ms,
            "s": symbol.as_str(),
            "i": timeframe.as_str(),
            "f": 0,
            "L": 0,
            "o": number(candle.open),
            "c": number(candle.close),
            "h": number(candle.high),
            "l": number(candle.low),
            "v": number(candle.volume),
            "n": trade_count(candle),
            "x": closed,
            "q": number(candle.volume * candle.close),
            "V": number(taker_buy_volume),
            "Q": number(taker_buy_volume * candle.close),
            "B": "0",
        }
    })
}

/// Answers one control message (`binance-shapes.md` §1.2), changing the subscriptions it asks to.
fn control(subscriptions: &mut Subscriptions, text: &str) -> Value {
    let request: Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(error) => {
            return json!({ "code": 3, "msg": format!("Invalid JSON: expected value at line {} column {}", error.line(), error.column()) });
        }
    };
    let Some(method) = request.get("method") else {
        return json!({ "code": 2, "msg": format!("Invalid request: missing field `method` at line 1 column {}", text.len()) });
    };
    let Some(id) = request.get("id").and_then(Value::as_u64) else {
        return json!({ "code": 2, "msg": "Invalid request: request ID must be an unsigned integer" });
    };
    let params: Vec<Value> = request.get("params").and_then(Value::as_array).cloned().unwrap_or_default();
    let names = || params.iter().filter_map(Value::as_str).map(str::to_owned).collect::<Vec<_>>();
    match method.as_str().unwrap_or("") {
        "SUBSCRIBE" => match subscriptions.subscribe(&names()) {
            Ok(()) => json!({ "result": null, "id": id }),
            Err(msg) => json!({ "code": 2, "msg": msg, "id": id }),
        },
        "UNSUBSCRIBE" => {
            subscriptions.unsubscribe(&names());
            json!({ "result": null, "id": id })
        }
        "LIST_SUBSCRIPTIONS" => json!({ "result": subscriptions.names, "id": id }),
        "SET_PROPERTY" => match (params.first().and_then(Value::as_str), params.get(1)) {
            (None, _) => json!({ "code": 2, "msg": "Invalid request: property name must be a string", "id": id }),
            (Some("combined"), Some(Value::Bool(combined))) => {
                subscriptions.combined = *combined;
                json!({ "result": null, "id": id })
            }
            (Some("combined"), _) => json!({ "code": 1, "msg": "Invalid value type: expected Boolean", "id": id }),
            (Some(_), _) => json!({ "code": 0, "msg": "Unknown property", "id": id }),
        },
        "GET_PROPERTY" => match params.first().and_then(Value::as_str) {
            None => json!({ "code": 2, "msg": "Invalid request: property name must be a string", "id": id }),
            Some("combined") => json!({ "result": subscriptions.combined, "id": id }),
            Some(_) => json!({ "code": 0, "msg": "Unknown property", "id": id }),
        },
        other => json!({
            "code": 2,
            "msg": format!("Invalid request: unknown variant `{other}`, expected one of {METHODS} at line 1 column 28"),
            "id": id,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscriptions() -> Subscriptions {
        Subscriptions {
            route: Route::Market,
            names: Vec::new(),
            klines: BTreeMap::new(),
            trades: BTreeMap::new(),
            combined: false,
        }
    }

    #[test]
    fn control_requests_are_answered_as_binance_answers_them() {
        let mut subs = subscriptions();
        let ack =
            control(&mut subs, r#"{"method":"SUBSCRIBE","params":["btcusdt@kline_5m","btcusdt@aggTrade"],"id":1}"#);
        assert_eq!(ack, json!({ "result": null, "id": 1 }));
        assert_eq!(subs.klines.len(), 1, "one of them is a kline stream");
        let listed = control(&mut subs, r#"{"method":"LIST_SUBSCRIPTIONS","id":3}"#);
        assert_eq!(listed, json!({ "result": ["btcusdt@kline_5m", "btcusdt@aggTrade"], "id": 3 }));
        control(&mut subs, r#"{"method":"UNSUBSCRIBE","params":["btcusdt@kline_5m"],"id":312}"#);
        assert!(subs.klines.is_empty());
        assert_eq!(
            control(&mut subs, r#"{"method":"SET_PROPERTY","params":["combined",true],"id":5}"#)["result"],
            Value::Null
        );
        assert_eq!(
            control(&mut subs, r#"{"method":"GET_PROPERTY","params":["combined"],"id":2}"#),
            json!({ "result": true, "id": 2 })
        );
        assert_eq!(control(&mut subs, r#"{"method":"SET_PROPERTY","params":["combined","yes"],"id":5}"#)["code"], 1);
        assert_eq!(
            control(&mut subs, r#"{"method":"GET_PROPERTY","params":["colour"],"id":5}"#)["msg"],
            "Unknown property"
        );
        assert_eq!(
            control(&mut subs, r#"{"method":"SUBSCRIBE","params":[],"id":-1}"#)["msg"],
            "Invalid request: request ID must be an unsigned integer"
        );
        assert!(
            control(&mut subs, r#"{"method":"PUBLISH","id":4}"#)["msg"]
                .as_str()
                .unwrap()
                .contains("unknown variant `PUBLISH`")
        );
        assert!(
            control(&mut subs, r#"{"params":[],"id":4}"#)["msg"]
                .as_str()
                .unwrap()
                .starts_with("Invalid request: missing field `method`")
        );
        assert_eq!(control(&mut subs, "{not json")["code"], 3);
        let many: Vec<String> = (0..1_025).map(|i| format!("s{i}usdt@kline_5m")).collect();
        let request = json!({ "method": "SUBSCRIBE", "params": many, "id": 9 }).to_string();
        assert_eq!(control(&mut subs, &request)["msg"], "Invalid request: too many parameters");
    }

    #[test]
    fn only_lowercase_kline_names_with_a_known_interval_are_kline_streams() {
        assert_eq!(kline_stream("xrpusdt@kline_5m"), Some((Symbol::new("XRPUSDT").unwrap(), Timeframe::M5)));
        assert_eq!(kline_stream("XRPUSDT@kline_5m"), None);
        assert_eq!(kline_stream("xrpusdt@kline_7m"), None);
        assert_eq!(kline_stream("xrpusdt@aggTrade"), None);
    }
}
