//! One account's user data stream (`exchange-streams.md`, `binance-shapes.md` §2): a listenKey
//! (`POST /fapi/v1/listenKey`, API key only, weight 1), a WebSocket on
//! `<stream_url>/private/ws/<listenKey>`, each `ORDER_TRADE_UPDATE` and `ACCOUNT_UPDATE` handed on
//! as a [`domain::AccountEvent`](crate::domain::AccountEvent), the key kept alive
//! (`PUT`, every `listen_key_keepalive`).
//!
//! The stream ends — its receiver sees the end, and the account book that follows it turns
//! unverified until a new connection and a new snapshot — when the connection closes or fails, the
//! key expires (`listenKeyExpired`, or a keepalive answered -1125), the listener falls
//! `ACCOUNT_STREAM_QUEUE_MAX` events behind, or nothing at all was heard for `stream_silence_max`
//! (the silent-stream watchdog: a connection on a wrong path is accepted and then says nothing; our
//! own pings, every `PING_INTERVAL` or a third of that bound if shorter, must be answered). Every ping or pong heard is passed on as a
//! heartbeat, so a quiet account's book stays verified.
//!
//! Every connection (the first, and each rotation) waits for its slot in the client's connect pace
//! (`stream_connects_per_second`, one IP for every account). After `stream_rotation` a new
//! connection on the same listenKey is opened and only then the old one closed: Binance delivers an
//! event to every connection of the key, so nothing falls in between, and what both delivered is
//! applied once by the account book (events carry absolute values and trade ids).

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use reqwest::Method;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::domain::{AccountEvent, EventTimes, UserId};
use crate::exchange::ExchangeError;
use crate::exchange::binance::models::{self, UserStreamMessage};
use crate::exchange::binance::ws::{self, Socket};
use crate::exchange::binance::{Call, Inner};

/// A connection that delivered nothing (no event, ping or pong) for this long is treated as down
/// (the default of `[exchange] stream_silence_secs`).
pub const SILENCE_MAX_DEFAULT: Duration = Duration::from_secs(60);
/// A rotation that could not connect is tried again this much later (the old connection stays).
pub(super) const ROTATION_RETRY: Duration = Duration::from_secs(60);
/// A rotated-out connection is read until it closes, for at most this long.
pub(super) const ROTATION_DRAIN: Duration = Duration::from_secs(5);

/// Why a stream ended (logged; the listener sees the end either way).
enum Ended {
    Closed(String),
    KeyExpired,
    Silent(Duration),
    FellBehind,
    NobodyListens,
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Closed(why) => write!(f, "the connection ended: {why}"),
            Ended::KeyExpired => f.write_str("the listenKey expired"),
            Ended::Silent(bound) => write!(f, "nothing heard for {} ms (treated as down)", bound.as_millis()),
            Ended::FellBehind => f.write_str("the listener fell behind"),
            Ended::NobodyListens => f.write_str("nobody listens any more"),
        }
    }
}

/// Follows `account`'s stream into `events` until it ends; logs why.
pub(super) async fn run(inner: Arc<Inner>, account: UserId, events: mpsc::Sender<AccountEvent>) {
    match follow(&inner, &account, &events).await {
        Ok(Ended::NobodyListens) => tracing::debug!(%account, "binance: user data stream no longer listened to"),
        Ok(ended) => {
            tracing::warn!(%account, %ended, "binance: user data stream ended; the next account sync reconnects")
        }
        Err(error) => tracing::warn!(%account, %error, "binance: user data stream could not be followed"),
    }
}

/// A WebSocket on `key`, in its turn of the connect pace.
async fn connect(inner: &Inner, key: &str) -> Result<Socket, ExchangeError> {
    let url = format!("{}/private/ws/{key}", inner.settings.stream_url.as_str().trim_end_matches('/'));
    ws::connect(inner, &url, "user data stream").await
}

async fn follow(inner: &Inner, account: &UserId, events: &mpsc::Sender<AccountEvent>) -> Result<Ended, ExchangeError> {
    let key = listen_key(inner, account, Method::POST).await?;
    let socket = connect(inner, &key).await?;
    tracing::info!(%account, "binance: user data stream connected");
    // Up: the listener counts the connection from here (a snapshot it reads now misses nothing).
    if events.try_send(heartbeat(inner)).is_err() {
        return Ok(Ended::NobodyListens);
    }
    let (mut write, mut read) = socket.split();
    let silence_max = inner.settings.stream_silence_max;
    let mut ping = tokio::time::interval(ws::ping_interval(silence_max));
    let mut keepalive = tokio::time::interval(inner.settings.listen_key_keepalive);
    keepalive.tick().await;
    let rotate = tokio::time::sleep(inner.settings.stream_rotation);
    tokio::pin!(rotate);
    let mut last_heard_ms = inner.local.now_ms();
    loop {
        tokio::select! {
            frame = read.next() => {
                last_heard_ms = inner.local.now_ms();
                if let Some(ended) = pass_on(inner, account, frame, &mut write, events).await {
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
            _ = keepalive.tick() => {
                match listen_key(inner, account, Method::PUT).await {
                    Ok(_) => {}
                    Err(ExchangeError::Rejected { code: -1125, .. }) => return Ok(Ended::KeyExpired),
                    // A refused key ends the stream: the next sync reads by REST and halts the user.
                    Err(ExchangeError::Auth { detail }) => return Ok(Ended::Closed(format!("the API key was refused: {detail}"))),
                    Err(error) => tracing::warn!(%account, %error, "binance: listenKey keepalive failed; retried at the next interval"),
                }
            }
            _ = &mut rotate => {
                // The new connection first; the old one is closed only once it is up.
                let next = match connect(inner, &key).await {
                    Ok(socket) => {
                        let (old_write, old_read) = (write, read);
                        (write, read) = socket.split();
                        if let Some(ended) = close_and_drain(inner, account, old_write, old_read, events).await {
                            return Ok(ended);
                        }
                        last_heard_ms = inner.local.now_ms();
                        tracing::info!(%account, "binance: user data stream rotated to a new connection");
                        inner.settings.stream_rotation
                    }
                    Err(error) => {
                        tracing::warn!(%account, %error, "binance: user data stream rotation failed; the connection stays, tried again in a minute");
                        ROTATION_RETRY
                    }
                };
                rotate.as_mut().reset(tokio::time::Instant::now() + next);
            }
            _ = events.closed() => return Ok(Ended::NobodyListens),
        }
    }
}

/// Hands one frame's event to the listener (answering a ping); `Some` when the stream ends with it.
async fn pass_on(
    inner: &Inner,
    account: &UserId,
    frame: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    write: &mut futures::stream::SplitSink<Socket, Message>,
    events: &mpsc::Sender<AccountEvent>,
) -> Option<Ended> {
    let message = match frame {
        Some(Ok(message)) => message,
        Some(Err(error)) => return Some(Ended::Closed(error.to_string())),
        None => return Some(Ended::Closed("the exchange closed the connection".into())),
    };
    let event = match message {
        Message::Text(text) => match models::user_stream_message(&text) {
            Ok(UserStreamMessage::Event(event)) => *event,
            Ok(UserStreamMessage::ListenKeyExpired) => return Some(Ended::KeyExpired),
            Ok(UserStreamMessage::Ignored(_)) => return None,
            Err(error) => {
                // A message that does not parse is not applied (reconciliation finds what it
                // said); the stream goes on.
                tracing::warn!(%account, %error, "binance: user data message not understood");
                return None;
            }
        },
        Message::Ping(payload) => {
            if write.send(Message::Pong(payload)).await.is_err() {
                return Some(Ended::Closed("the pong could not be sent".into()));
            }
            heartbeat(inner)
        }
        Message::Pong(_) => heartbeat(inner),
        Message::Close(frame) => return Some(Ended::Closed(format!("closed by the exchange: {frame:?}"))),
        _ => return None,
    };
    match events.try_send(event) {
        Ok(()) => None,
        Err(mpsc::error::TrySendError::Full(_)) => Some(Ended::FellBehind),
        Err(mpsc::error::TrySendError::Closed(_)) => Some(Ended::NobodyListens),
    }
}

/// Closes a rotated-out connection and passes on what it still delivers until it is closed (sent
/// before the new connection was up, read by nobody else), for at most `ROTATION_DRAIN`. `Some`
/// when the stream as a whole ends (the key expired, the listener is gone or behind).
async fn close_and_drain(
    inner: &Inner,
    account: &UserId,
    mut write: futures::stream::SplitSink<Socket, Message>,
    mut read: futures::stream::SplitStream<Socket>,
    events: &mpsc::Sender<AccountEvent>,
) -> Option<Ended> {
    let _ = write.send(Message::Close(None)).await;
    let drain = async {
        loop {
            match pass_on(inner, account, read.next().await, &mut write, events).await {
                None => continue,
                Some(Ended::Closed(_)) => return None,
                Some(ended) => return Some(ended),
            }
        }
    };
    tokio::time::timeout(ROTATION_DRAIN, drain).await.unwrap_or(None)
}

/// A heartbeat at the exchange's time now (as far as the client knows it).
fn heartbeat(inner: &Inner) -> AccountEvent {
    let local_ms = inner.local.now_ms();
    let exchange_ms = inner.clock.lock().now_ms(local_ms).unwrap_or(local_ms);
    AccountEvent::Heartbeat { times: EventTimes { transaction_ms: exchange_ms, event_ms: exchange_ms } }
}

/// `POST` (create, or the live key extended) or `PUT` (keep alive) `/fapi/v1/listenKey`.
async fn listen_key(inner: &Inner, account: &UserId, method: Method) -> Result<String, ExchangeError> {
    let endpoint = if method == Method::POST { "POST /fapi/v1/listenKey" } else { "PUT /fapi/v1/listenKey" };
    let body = inner
        .send_with_retries(&|| Call::new(method.clone(), "/fapi/v1/listenKey", endpoint, 1).with_api_key(account))
        .await?;
    let answer: models::ListenKey = models::parse(endpoint, &body)?;
    Ok(answer.listen_key)
}
