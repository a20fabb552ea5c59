//! `bulwark sim`'s user data stream, as Binance serves it (`binance-shapes.md` §2): listenKeys
//! (`POST`/`PUT`/`DELETE /fapi/v1/listenKey`, API key only, valid 60 minutes, a `POST` on an account
//! with a live key answers that key extended) and the WebSocket a key opens
//! (`/private/ws/<key>`, `/private/ws?listenKey=<key>`, and the pre-2026 `/ws/<key>`), which pushes
//! the account's `ORDER_TRADE_UPDATE` and `ACCOUNT_UPDATE` events from the paper matching engine,
//! pings the client while the account is quiet, and sends `listenKeyExpired` when its key lapses.
//!
//! An account may have several connections open at once (a client rotating its connection opens
//! the new one before closing the old): as on Binance, each receives every event of the account.
//! The simulator follows the account's one paper stream ([`Connections`]) and hands each event to
//! every connection; one that falls `ACCOUNT_STREAM_QUEUE_MAX` events behind is closed.

use std::collections::BTreeMap;
use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::Message;
use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::domain::{AccountEvent, ExchangeOrder, ExchangeOrderStatus, Fill, UserId};
use crate::exchange::Exchange;
use crate::sim::SimState;
use crate::sim::faults::StreamDraw;

/// How long a listenKey lives without a keepalive (Binance: 60 minutes).
pub const LISTEN_KEY_LIFETIME_MS: i64 = 60 * 60_000;

/// How often a connection checks that its key still lives.
const KEY_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Each account's open connections, fed from the account's one paper stream by a task of its own
/// (started with the account's first connection, ended with its last). Written by the WebSocket
/// upgrades (a new connection) and the feeding tasks (a connection gone or behind); read by those.
#[derive(Debug, Default)]
pub struct Connections {
    accounts: parking_lot::Mutex<BTreeMap<UserId, Vec<tokio::sync::mpsc::Sender<AccountEvent>>>>,
}

impl Connections {
    /// A new connection's share of `user`'s events (`None`: the venue streams no account).
    fn open(state: &std::sync::Arc<SimState>, user: &UserId) -> Option<crate::exchange::AccountStream> {
        let (sender, receiver) = tokio::sync::mpsc::channel(crate::limits::ACCOUNT_STREAM_QUEUE_MAX);
        let mut accounts = state.connections.accounts.lock();
        match accounts.get_mut(user) {
            Some(connections) => connections.push(sender),
            None => {
                let paper = state.exchange.account_stream(user)?;
                accounts.insert(user.clone(), vec![sender]);
                actix_web::rt::spawn(feed(state.clone(), user.clone(), paper));
            }
        }
        Some(receiver)
    }
}

/// Hands each of `user`'s paper events to every open connection until none is left (or the paper
/// stream ends, which ends them all).
async fn feed(state: std::sync::Arc<SimState>, user: UserId, mut paper: crate::exchange::AccountStream) {
    while let Some(event) = paper.recv().await {
        let mut accounts = state.connections.accounts.lock();
        let Some(connections) = accounts.get_mut(&user) else { return };
        connections.retain(|connection| connection.try_send(event.clone()).is_ok());
        if connections.is_empty() {
            accounts.remove(&user);
            return;
        }
    }
    state.connections.accounts.lock().remove(&user);
}

/// The live listenKeys. Written by the listenKey endpoints; read by the WebSocket connections.
#[derive(Debug, Default)]
pub struct ListenKeys {
    /// Key → (account, expiry in wall ms).
    keys: BTreeMap<String, (UserId, i64)>,
    /// Keys made so far (each new key is derived from it).
    made: u64,
}

impl ListenKeys {
    /// The account's live key extended, or a new one.
    pub fn create(&mut self, user: &UserId, now_ms: i64, seed: u64) -> String {
        self.keys.retain(|_, (_, expires_ms)| *expires_ms > now_ms);
        if let Some((key, entry)) = self.keys.iter_mut().find(|(_, (owner, _))| owner == user) {
            entry.1 = now_ms + LISTEN_KEY_LIFETIME_MS;
            return key.clone();
        }
        self.made += 1;
        let key = listen_key(seed, user, self.made);
        self.keys.insert(key.clone(), (user.clone(), now_ms + LISTEN_KEY_LIFETIME_MS));
        key
    }

    /// Extends the account's live key; `None` when it has none (Binance: -1125).
    pub fn keepalive(&mut self, user: &UserId, now_ms: i64) -> Option<String> {
        let (key, entry) =
            self.keys.iter_mut().find(|(_, (owner, expires_ms))| owner == user && *expires_ms > now_ms)?;
        entry.1 = now_ms + LISTEN_KEY_LIFETIME_MS;
        Some(key.clone())
    }

    /// Closes the account's key (its connections get `listenKeyExpired` and no more events).
    pub fn delete(&mut self, user: &UserId) {
        self.keys.retain(|_, (owner, _)| owner != user);
    }

    /// The account a live key belongs to.
    pub fn account_of(&self, key: &str, now_ms: i64) -> Option<UserId> {
        self.keys.get(key).filter(|(_, expires_ms)| *expires_ms > now_ms).map(|(user, _)| user.clone())
    }

    /// Ends `user`'s key now, as if its 60 minutes had passed (the `listen_key_expired` fault).
    pub fn expire(&mut self, user: &UserId, now_ms: i64) {
        for (owner, expires_ms) in self.keys.values_mut() {
            if owner == user {
                *expires_ms = now_ms;
            }
        }
    }
}

/// A 64-character key, derived from the seed (replays make the same keys).
fn listen_key(seed: u64, user: &UserId, made: u64) -> String {
    use std::hash::{Hash, Hasher};
    let mut key = String::with_capacity(64);
    for part in 0..4_u64 {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (seed, user.as_str(), made, part).hash(&mut hasher);
        key.push_str(&format!("{:016x}", hasher.finish()));
    }
    key
}

/// `GET /private/ws/<key>`, `/private/ws?listenKey=<key>` or `/ws/<key>`: the account's user data
/// stream. An unknown or expired key is refused before the upgrade (400, -1125).
pub async fn connect(request: HttpRequest, body: web::Payload, state: web::Data<SimState>) -> HttpResponse {
    let key = request
        .match_info()
        .get("key")
        .map(str::to_owned)
        .or_else(|| {
            crate::sim::binance_api::Params::parse(request.query_string(), "").get("listenKey").map(str::to_owned)
        })
        .unwrap_or_default();
    let now_ms = state.now_ms();
    let Some(user) = state.listen_keys.lock().account_of(&key, now_ms) else {
        return crate::sim::binance_error(
            actix_web::http::StatusCode::BAD_REQUEST,
            -1125,
            "This listenKey does not exist.",
        );
    };
    let Some(events) = Connections::open(&state, &user) else {
        return crate::sim::binance_error(actix_web::http::StatusCode::SERVICE_UNAVAILABLE, -1000, "no account stream");
    };
    let (response, session, incoming) = match actix_ws::handle(&request, body) {
        Ok(parts) => parts,
        Err(error) => return error.error_response(),
    };
    state.stats.lock().user_stream_connections += 1;
    actix_web::rt::spawn(serve(state.into_inner(), user, key, events, session, incoming));
    response
}

/// Pushes `user`'s events until the connection, the key or the account's stream ends.
async fn serve(
    state: std::sync::Arc<SimState>,
    user: UserId,
    key: String,
    mut events: crate::exchange::AccountStream,
    mut session: actix_ws::Session,
    mut incoming: actix_ws::MessageStream,
) {
    let mut key_check = tokio::time::interval(KEY_CHECK_INTERVAL);
    loop {
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else { break };
                let draw = state.faults.lock().draw_stream();
                if let Some(fault) = draw.fault_name() {
                    tracing::info!(account = %user, fault, "sim: user data stream fault");
                    *state.stats.lock().stream_faults.entry(fault.to_owned()).or_default() += 1;
                }
                match draw {
                    StreamDraw::Deliver => if send(&mut session, &event).await.is_err() { break },
                    StreamDraw::Duplicate => {
                        if send(&mut session, &event).await.is_err() || send(&mut session, &event).await.is_err() {
                            break;
                        }
                    }
                    StreamDraw::Delay { ms } => {
                        let mut late = session.clone();
                        actix_web::rt::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                            let _ = send(&mut late, &event).await;
                        });
                    }
                    StreamDraw::Drop => {}
                    StreamDraw::Disconnect => break,
                    StreamDraw::Stall => {
                        stall(&mut incoming).await;
                        break;
                    }
                    StreamDraw::Expire => {
                        state.listen_keys.lock().expire(&user, state.now_ms());
                        tell_expired(&state, &key, &mut session, &mut incoming).await;
                        break;
                    }
                }
            }
            message = incoming.recv() => match message {
                Some(Ok(Message::Ping(bytes))) => {
                    if session.pong(&bytes).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            _ = key_check.tick() => {
                let now_ms = state.now_ms();
                if state.listen_keys.lock().account_of(&key, now_ms).is_none() {
                    tell_expired(&state, &key, &mut session, &mut incoming).await;
                    break;
                }
            }
        }
    }
    tracing::debug!(account = %user, "sim: user data connection closed");
    let _ = session.close(None).await;
}

/// One event as Binance sends it: its JSON, or a ping for a heartbeat (the account is quiet, and
/// Binance's server pings each connection).
async fn send(session: &mut actix_ws::Session, event: &AccountEvent) -> Result<(), actix_ws::Closed> {
    match event_json(event) {
        Some(json) => session.text(json.to_string()).await,
        None => session.ping(b"").await,
    }
}

/// Tells the connection its key expired; it then only answers pings until the client closes
/// (Binance keeps it open; no user event comes any more).
async fn tell_expired(
    state: &SimState,
    key: &str,
    session: &mut actix_ws::Session,
    incoming: &mut actix_ws::MessageStream,
) {
    let expired = json!({ "e": "listenKeyExpired", "E": state.exchange_now_ms(0), "listenKey": key });
    let _ = session.text(expired.to_string()).await;
    drain_silently(incoming, session).await;
}

/// A stalled connection: open, sending nothing and answering nothing (not even a ping), until the
/// client gives up and closes it.
async fn stall(incoming: &mut actix_ws::MessageStream) {
    while let Some(Ok(message)) = incoming.recv().await {
        if matches!(message, Message::Close(_)) {
            return;
        }
    }
}

/// Answers pings until the client closes, sending nothing else (a connection whose key expired).
async fn drain_silently(incoming: &mut actix_ws::MessageStream, session: &mut actix_ws::Session) {
    while let Some(Ok(message)) = incoming.recv().await {
        match message {
            Message::Ping(bytes) if session.pong(&bytes).await.is_err() => return,
            Message::Close(_) => return,
            _ => {}
        }
    }
}

/// The Binance JSON of one event (`None` for a heartbeat, which is a ping frame instead).
pub fn event_json(event: &AccountEvent) -> Option<Value> {
    match event {
        AccountEvent::Order { order, fill, times } => Some(json!({
            "e": "ORDER_TRADE_UPDATE",
            "E": times.event_ms,
            "T": times.transaction_ms,
            "o": order_json(order, fill.as_ref(), times.transaction_ms),
        })),
        AccountEvent::Account { positions, balances, times } => Some(json!({
            "e": "ACCOUNT_UPDATE",
            "E": times.event_ms,
            "T": times.transaction_ms,
            "a": {
                "m": "ORDER",
                "B": balances.iter().map(|b| json!({
                    "a": b.asset, "wb": b.wallet_balance.to_string(), "cw": b.wallet_balance.to_string(), "bc": "0",
                })).collect::<Vec<_>>(),
                "P": positions.iter().map(|p| json!({
                    "s": p.symbol.as_str(), "pa": p.quantity.to_string(), "ep": p.entry_price.to_string(),
                    "bep": p.entry_price.to_string(), "cr": "0", "up": p.unrealized_pnl.to_string(),
                    "mt": "cross", "iw": "0", "ps": "BOTH", "ma": "USDT",
                })).collect::<Vec<_>>(),
            },
        })),
        AccountEvent::Heartbeat { .. } => None,
    }
}

fn order_json(order: &ExchangeOrder, fill: Option<&Fill>, transaction_ms: i64) -> Value {
    let execution = match (fill, order.status) {
        (Some(_), _) => "TRADE",
        (None, ExchangeOrderStatus::Canceled) => "CANCELED",
        (None, ExchangeOrderStatus::Expired | ExchangeOrderStatus::ExpiredInMatch) => "EXPIRED",
        (None, _) => "NEW",
    };
    let zero = Decimal::ZERO.to_string();
    json!({
        "s": order.symbol.as_str(),
        "c": order.client_order_id.as_str(),
        "S": order.side.as_str(),
        "o": order.order_type.as_str(),
        "f": "GTC",
        "q": order.quantity.to_string(),
        "p": order.order_type.limit_price().map_or(zero.clone(), |p| p.to_string()),
        "ap": order.average_price.map_or(zero.clone(), |p| p.to_string()),
        "sp": "0",
        "x": execution,
        "X": order.status.as_str(),
        "i": order.exchange_order_id.parse::<i64>().unwrap_or_default(),
        "l": fill.map_or(zero.clone(), |f| f.quantity.to_string()),
        "z": order.filled_quantity.to_string(),
        "L": fill.map_or(zero.clone(), |f| f.price.to_string()),
        "N": fill.map_or("USDT".to_owned(), |f| f.fee_asset.clone()),
        "n": fill.map_or(zero.clone(), |f| f.fee.to_string()),
        "T": fill.map_or(transaction_ms, |f| f.time_ms),
        "t": fill.and_then(|f| f.trade_id.parse::<i64>().ok()).unwrap_or(0),
        "b": "0",
        "a": "0",
        "m": false,
        "R": order.reduce_only,
        "wt": "CONTRACT_PRICE",
        "ot": order.order_type.as_str(),
        "ps": "BOTH",
        "cp": false,
        "rp": fill.map_or(zero, |f| f.realized_pnl.to_string()),
        "pP": false,
        "si": 0,
        "ss": 0,
        "V": "EXPIRE_MAKER",
        "pm": "NONE",
        "gtd": 0,
        "er": "0",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_lives_an_hour_is_extended_by_a_keepalive_or_a_second_post_and_ends_when_deleted() {
        let (u1, u2) = (UserId::new("u1").unwrap(), UserId::new("u2").unwrap());
        let mut keys = ListenKeys::default();
        let key = keys.create(&u1, 0, 7);
        assert_eq!(key.len(), 64);
        assert_eq!(keys.account_of(&key, LISTEN_KEY_LIFETIME_MS - 1), Some(u1.clone()));
        assert_eq!(keys.account_of(&key, LISTEN_KEY_LIFETIME_MS), None, "60 minutes without a keepalive");
        // A second POST while it lives answers the same key, extended.
        let key = keys.create(&u1, 1_000, 7);
        assert_eq!(keys.create(&u1, 2_000, 7), key);
        assert_eq!(keys.keepalive(&u1, 30 * 60_000).as_deref(), Some(key.as_str()));
        assert_eq!(keys.account_of(&key, 80 * 60_000), Some(u1.clone()));
        assert_ne!(keys.create(&u2, 2_000, 7), key, "each account its own key");
        keys.delete(&u1);
        assert_eq!(keys.account_of(&key, 2_001), None);
        assert_eq!(keys.keepalive(&u1, 2_001), None, "-1125: no key to extend");
    }
}
