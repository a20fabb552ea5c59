//! One account's user data stream (`exchange-streams.md`, `binance-shapes.md` §2): a listenKey
//! (`POST /fapi/v1/listenKey`, API key only, weight 1), a WebSocket on
//! `<stream_url>/private/ws/<listenKey>`, each `ORDER_TRADE_UPDATE` and `ACCOUNT_UPDATE` handed on
//! as a [`domain::AccountEvent`](crate::domain::AccountEvent), the key kept alive
//! (`PUT`, every `listen_key_keepalive`).
//!
//! The stream ends — its receiver sees the end, and the account book that follows it turns
//! unverified until a new connection and a new snapshot — when the connection closes or fails, the
//! key expires (`listenKeyExpired`, or a keepalive answered -1125), the listener falls
//! `ACCOUNT_STREAM_QUEUE_MAX` events behind, or nothing at all was heard for `SILENCE_MS_MAX` (the
//! silent-stream watchdog: a connection on a wrong path is accepted and then says nothing; our own
//! pings every `PING_INTERVAL` must be answered). Every ping or pong heard is passed on as a
//! heartbeat, so a quiet account's book stays verified.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use reqwest::Method;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::domain::{AccountEvent, EventTimes, UserId};
use crate::exchange::ExchangeError;
use crate::exchange::binance::models::{self, UserStreamMessage};
use crate::exchange::binance::{Call, Inner};

/// How often the client pings the connection (each pong is proof it is alive).
pub const PING_INTERVAL: Duration = Duration::from_secs(20);
/// A connection that delivered nothing (no event, ping or pong) for this long is treated as down.
pub const SILENCE_MS_MAX: i64 = 60_000;
/// Longest wait for the WebSocket handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a stream ended (logged; the listener sees the end either way).
enum Ended {
    Closed(String),
    KeyExpired,
    Silent,
    FellBehind,
    NobodyListens,
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Closed(why) => write!(f, "the connection ended: {why}"),
            Ended::KeyExpired => f.write_str("the listenKey expired"),
            Ended::Silent => write!(f, "nothing heard for {} s (treated as down)", SILENCE_MS_MAX / 1_000),
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

async fn follow(inner: &Inner, account: &UserId, events: &mpsc::Sender<AccountEvent>) -> Result<Ended, ExchangeError> {
    let key = listen_key(inner, account, Method::POST).await?;
    let url = format!("{}/private/ws/{key}", inner.settings.stream_url.as_str().trim_end_matches('/'));
    let connected = tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(url.as_str())).await;
    let (socket, _) = match connected {
        Ok(Ok(connected)) => connected,
        Ok(Err(error)) => return Err(ExchangeError::Retryable { detail: format!("user data stream: {error}") }),
        Err(_) => return Err(ExchangeError::Retryable { detail: "user data stream: no handshake within 10 s".into() }),
    };
    tracing::info!(%account, "binance: user data stream connected");
    // Up: the listener counts the connection from here (a snapshot it reads now misses nothing).
    if events.try_send(heartbeat(inner)).is_err() {
        return Ok(Ended::NobodyListens);
    }
    let (mut write, mut read) = socket.split();
    let mut ping = tokio::time::interval(PING_INTERVAL);
    let mut keepalive = tokio::time::interval(inner.settings.listen_key_keepalive);
    keepalive.tick().await;
    let mut last_heard_ms = inner.local.now_ms();
    loop {
        tokio::select! {
            frame = read.next() => {
                let message = match frame {
                    Some(Ok(message)) => message,
                    Some(Err(error)) => return Ok(Ended::Closed(error.to_string())),
                    None => return Ok(Ended::Closed("the exchange closed the connection".into())),
                };
                last_heard_ms = inner.local.now_ms();
                let event = match message {
                    Message::Text(text) => match models::user_stream_message(&text) {
                        Ok(UserStreamMessage::Event(event)) => *event,
                        Ok(UserStreamMessage::ListenKeyExpired) => return Ok(Ended::KeyExpired),
                        Ok(UserStreamMessage::Ignored(_)) => continue,
                        Err(error) => {
                            // A message that does not parse is not applied (reconciliation finds
                            // what it said); the stream goes on.
                            tracing::warn!(%account, %error, "binance: user data message not understood");
                            continue;
                        }
                    },
                    Message::Ping(payload) => {
                        if write.send(Message::Pong(payload)).await.is_err() {
                            return Ok(Ended::Closed("the pong could not be sent".into()));
                        }
                        heartbeat(inner)
                    }
                    Message::Pong(_) => heartbeat(inner),
                    Message::Close(frame) => return Ok(Ended::Closed(format!("closed by the exchange: {frame:?}"))),
                    _ => continue,
                };
                match events.try_send(event) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => return Ok(Ended::FellBehind),
                    Err(mpsc::error::TrySendError::Closed(_)) => return Ok(Ended::NobodyListens),
                }
            }
            _ = ping.tick() => {
                if inner.local.now_ms() - last_heard_ms > SILENCE_MS_MAX {
                    return Ok(Ended::Silent);
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
            _ = events.closed() => return Ok(Ended::NobodyListens),
        }
    }
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
