//! One account as its exchange stream tells it, kept in memory so that a decision reads it without
//! an exchange request or a database read (issue 14). A REST snapshot sets it; the account's events
//! (`domain::AccountEvent`) keep it current; and it knows whether it can be trusted.
//!
//! It is **verified** only while all of these hold: a snapshot was requested while the stream was
//! already connected, that connection has stayed up since, and the stream was heard from (an event
//! or a keepalive answer) within `silence_ms_max`. Anything else is [`Unverified`], with the reason:
//! the seed's rule applies then (no entry without a verified position; re-read by REST).
//!
//! Events carry absolute values (an order's accumulated fill, a position's amount), so one applied
//! twice changes nothing, and one older than what is known (by the venue's transaction time) is
//! ignored, except for the fill it carries: a fill is a fact, new until its trade id was seen.
//! Remembered trade ids and final orders are bounded; reconciliation stays the safety net for
//! whatever a stream drops.

use std::collections::{BTreeMap, HashSet, VecDeque};

use rust_decimal::Decimal;

use crate::domain::{AccountEvent, ExchangeOrder, Fill, Position, Symbol};
use crate::trader::stream_link::{LinkSettings, LinkState, StreamLink};

/// How much the book trusts and remembers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BookSettings {
    /// A stream not heard from for longer is treated as down (Binance's wrong path accepts the
    /// connection and sends nothing).
    pub silence_ms_max: i64,
    /// Trade ids remembered to recognise a duplicated fill.
    pub trades_remembered: usize,
    /// Final orders remembered to recognise a late event about them.
    pub final_orders_remembered: usize,
    /// The wait before reconnecting after the first failure in a row; it doubles with each further
    /// one up to `reconnect_backoff_ms_max`, and each wait is drawn between half of it and all of
    /// it (jitter: a venue-wide outage does not bring every account back in the same second).
    pub reconnect_backoff_ms_initial: i64,
    pub reconnect_backoff_ms_max: i64,
    /// A connection that stayed up this long before it ended resets the failures in a row.
    pub connection_stable_ms: i64,
}

impl Default for BookSettings {
    fn default() -> Self {
        Self {
            silence_ms_max: 90_000,
            trades_remembered: 4_096,
            final_orders_remembered: 1_024,
            reconnect_backoff_ms_initial: 1_000,
            reconnect_backoff_ms_max: 60_000,
            connection_stable_ms: 60_000,
        }
    }
}

impl BookSettings {
    fn link_settings(&self) -> LinkSettings {
        LinkSettings {
            silence_ms_max: self.silence_ms_max,
            reconnect_backoff_ms_initial: self.reconnect_backoff_ms_initial,
            reconnect_backoff_ms_max: self.reconnect_backoff_ms_max,
            connection_stable_ms: self.connection_stable_ms,
        }
    }
}

/// Why the book cannot be trusted now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unverified {
    /// The stream was never connected.
    NeverConnected,
    /// A connection was asked for then (local ms) and has not said anything yet (a handshake under
    /// way): a snapshot read now could miss what happens before it is up.
    Connecting { since_ms: i64 },
    /// The stream is down since then (local ms).
    Disconnected { since_ms: i64 },
    /// Connected (since then), but no snapshot was requested on this connection yet.
    NoSnapshotOnThisConnection { connected_since_ms: i64 },
    /// Connected, but nothing was heard since `last_heard_ms` (local ms), longer than allowed.
    Silent { last_heard_ms: i64, silence_ms_max: i64 },
}

impl std::fmt::Display for Unverified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = crate::clock::rfc3339_ms;
        match self {
            Unverified::NeverConnected => f.write_str("the account stream was never connected"),
            Unverified::Connecting { since_ms } => {
                write!(f, "the account stream is connecting since {} (nothing heard on it yet)", at(*since_ms))
            }
            Unverified::Disconnected { since_ms } => write!(f, "the account stream is down since {}", at(*since_ms)),
            Unverified::NoSnapshotOnThisConnection { connected_since_ms } => write!(
                f,
                "the account stream reconnected at {}; no account snapshot was read on it yet",
                at(*connected_since_ms)
            ),
            Unverified::Silent { last_heard_ms, silence_ms_max } => write!(
                f,
                "the account stream was last heard from at {} (silent for longer than {} ms: treated as down)",
                at(*last_heard_ms),
                silence_ms_max
            ),
        }
    }
}

/// The account as a REST read found it: every position (a symbol not listed is flat), the USDT
/// wallet balance and the open orders, as of the venue's time `as_of_ms`.
#[derive(Debug, Clone, PartialEq)]
pub struct RestSnapshot {
    pub positions: Vec<Position>,
    pub wallet_usdt: Decimal,
    pub open_orders: Vec<ExchangeOrder>,
    pub as_of_ms: i64,
}

/// What applying an event changed, for the caller to record (fills and order states go to the
/// database through the durable writes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// The fill the event carried, if its trade id was not seen before.
    pub new_fill: Option<Fill>,
    /// The order's new state, if the event was newer than what the book knew.
    pub order: Option<ExchangeOrder>,
    /// Symbols whose position changed.
    pub positions: Vec<Symbol>,
    /// The event was older than what the book knew (its state part was ignored).
    pub stale: bool,
}

/// A value and the venue time it is as of.
#[derive(Debug, Clone, PartialEq)]
struct Known<T> {
    value: T,
    as_of_ms: i64,
}

/// A bounded set that forgets its oldest member first.
#[derive(Debug, Default)]
struct Recent {
    order: VecDeque<String>,
    members: HashSet<String>,
    capacity: usize,
}

impl Recent {
    fn with_capacity(capacity: usize) -> Self {
        Self { order: VecDeque::new(), members: HashSet::new(), capacity: capacity.max(1) }
    }

    /// Adds `id`; `false` if it was there already.
    fn insert(&mut self, id: &str) -> bool {
        if self.members.contains(id) {
            return false;
        }
        if self.order.len() == self.capacity
            && let Some(oldest) = self.order.pop_front()
        {
            self.members.remove(&oldest);
        }
        self.order.push_back(id.to_owned());
        self.members.insert(id.to_owned());
        true
    }

    fn contains(&self, id: &str) -> bool {
        self.members.contains(id)
    }
}

/// One account's book. Written by whoever receives the account's stream and snapshots; read by
/// that account's decisions.
#[derive(Debug)]
pub struct AccountBook {
    settings: BookSettings,
    /// The account stream's connection (up, heard from when; backoff after failures).
    link: StreamLink,
    /// The connection a snapshot was requested on, once one was applied.
    snapshot_connection: Option<u64>,
    positions: BTreeMap<Symbol, Known<Position>>,
    wallet_usdt: Option<Known<Decimal>>,
    /// Orders not final, by exchange order id.
    open_orders: BTreeMap<String, Known<ExchangeOrder>>,
    /// Exchange order ids of orders known final.
    final_orders: Recent,
    trades: Recent,
    /// The venue time of the newest fill seen on each symbol: a position known as of earlier has
    /// not caught up with it yet (Binance may send the order update before the account update).
    newest_fill_ms: BTreeMap<Symbol, i64>,
}

impl AccountBook {
    pub fn new(settings: BookSettings) -> Self {
        Self {
            settings,
            link: StreamLink::new(settings.link_settings()),
            snapshot_connection: None,
            positions: BTreeMap::new(),
            wallet_usdt: None,
            open_orders: BTreeMap::new(),
            final_orders: Recent::with_capacity(settings.final_orders_remembered),
            trades: Recent::with_capacity(settings.trades_remembered),
            newest_fill_ms: BTreeMap::new(),
        }
    }

    /// The same book with its reconnect jitter seeded by `seed` (the account's: accounts that drop
    /// together come back spread apart; the same seed waits the same).
    pub fn with_jitter_seed(mut self, seed: u64) -> Self {
        self.link = self.link.with_jitter_seed(seed);
        self
    }

    /// Whether a connection may be asked for at `now_ms` (`Err`: not before that local ms; a
    /// reconnect asked for by an operator or the Healer does not wait).
    pub fn reconnect_due(&self, now_ms: i64) -> Result<(), i64> {
        self.link.reconnect_due(now_ms)
    }

    /// Connections that failed or ended early in a row.
    pub fn failures_in_a_row(&self) -> u32 {
        self.link.failures_in_a_row()
    }

    /// A connection was asked for at `now_ms`; it counts as up once it says something
    /// ([`AccountBook::stream_connected`]).
    pub fn stream_connecting(&mut self, now_ms: i64) {
        self.link.connecting(now_ms);
    }

    /// Whether a connection was asked for and has not said anything yet.
    pub fn is_connecting(&self) -> bool {
        self.link.is_connecting()
    }

    /// A connection asked for ended before it said anything (the handshake failed).
    pub fn stream_failed(&mut self, now_ms: i64) {
        self.link.failed(now_ms);
    }

    /// The stream connected at `now_ms`: a new connection, on which a snapshot must be read again
    /// before the book is verified. Returns the connection's number (pass it to
    /// [`AccountBook::apply_snapshot`] with a snapshot requested after this).
    pub fn stream_connected(&mut self, now_ms: i64) -> u64 {
        self.link.connected(now_ms)
    }

    /// The stream dropped (or was found silent) at `now_ms`.
    pub fn stream_disconnected(&mut self, now_ms: i64) {
        self.link.disconnected(now_ms);
    }

    /// Connection number `connection` ended at `now_ms`; a newer connection already up stays up.
    pub fn stream_ended(&mut self, connection: u64, now_ms: i64) {
        self.link.ended(connection, now_ms);
    }

    /// The stream answered a keepalive (or delivered anything) at `now_ms`.
    pub fn heard(&mut self, now_ms: i64) {
        self.link.heard(now_ms);
    }

    /// The connection a snapshot requested now would be read on (`None` while the stream is down:
    /// such a snapshot sets the book but cannot verify it).
    pub fn connection(&self) -> Option<u64> {
        self.link.connection()
    }

    /// Connections made so far (one more with each reconnect).
    pub fn connections(&self) -> u64 {
        self.link.connections()
    }

    /// When the connection up now was last heard from (`None` while it is down).
    pub fn last_heard_ms(&self) -> Option<i64> {
        self.link.last_heard_ms()
    }

    /// Whether a decision may trust the book at `now_ms`, or why not.
    pub fn verification(&self, now_ms: i64) -> Result<(), Unverified> {
        match self.link.state() {
            LinkState::Never => Err(Unverified::NeverConnected),
            LinkState::Connecting { since_ms } => Err(Unverified::Connecting { since_ms }),
            LinkState::Down { since_ms } => Err(Unverified::Disconnected { since_ms }),
            LinkState::Up { connection, since_ms, last_heard_ms } => {
                if self.snapshot_connection != Some(connection) {
                    Err(Unverified::NoSnapshotOnThisConnection { connected_since_ms: since_ms })
                } else if now_ms - last_heard_ms > self.settings.silence_ms_max {
                    Err(Unverified::Silent { last_heard_ms, silence_ms_max: self.settings.silence_ms_max })
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Sets the book from a REST read requested on `requested_on` (what [`AccountBook::connection`]
    /// said when the request was sent). What an event already told that is newer than the read
    /// stays; the read verifies the book only if that connection is still the one up.
    pub fn apply_snapshot(&mut self, snapshot: RestSnapshot, requested_on: Option<u64>) {
        let as_of_ms = snapshot.as_of_ms;
        let listed: BTreeMap<Symbol, Position> =
            snapshot.positions.into_iter().map(|position| (position.symbol.clone(), position)).collect();
        let mut symbols: Vec<Symbol> = self.positions.keys().cloned().collect();
        symbols.extend(listed.keys().cloned());
        for symbol in symbols {
            if self.positions.get(&symbol).is_some_and(|known| known.as_of_ms > as_of_ms) {
                continue;
            }
            let mark_price = self.positions.get(&symbol).map(|known| known.value.mark_price).unwrap_or_default();
            let position = listed.get(&symbol).cloned().unwrap_or_else(|| Position::flat(symbol.clone(), mark_price));
            self.positions.insert(symbol, Known { value: position, as_of_ms });
        }
        if self.wallet_usdt.as_ref().is_none_or(|known| known.as_of_ms <= as_of_ms) {
            self.wallet_usdt = Some(Known { value: snapshot.wallet_usdt, as_of_ms });
        }
        let open_now: BTreeMap<String, ExchangeOrder> =
            snapshot.open_orders.into_iter().map(|order| (order.exchange_order_id.clone(), order)).collect();
        // An order the read no longer lists ended before it (unless an event since says otherwise):
        // remembered as final, so that a late event about it cannot reopen it.
        let ended: Vec<String> = self
            .open_orders
            .iter()
            .filter(|(id, known)| known.as_of_ms <= as_of_ms && !open_now.contains_key(*id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in ended {
            self.open_orders.remove(&id);
            self.final_orders.insert(&id);
        }
        for (id, order) in open_now {
            if self.final_orders.contains(&id) || self.open_orders.get(&id).is_some_and(|k| k.as_of_ms > as_of_ms) {
                continue;
            }
            self.open_orders.insert(id, Known { value: order, as_of_ms });
        }
        if requested_on.is_some() && requested_on == self.connection() {
            self.snapshot_connection = requested_on;
        }
    }

    /// Applies one event received at `now_ms` (local).
    pub fn apply(&mut self, event: AccountEvent, now_ms: i64) -> Applied {
        self.heard(now_ms);
        match event {
            AccountEvent::Order { order, fill, times } => self.apply_order(order, fill, times.transaction_ms),
            AccountEvent::Account { positions, balances, times } => {
                let as_of_ms = times.transaction_ms;
                let mut applied = Applied::default();
                for update in positions {
                    if self.positions.get(&update.symbol).is_some_and(|known| known.as_of_ms > as_of_ms) {
                        applied.stale = true;
                        continue;
                    }
                    let mark_price = mark_from(update.quantity, update.entry_price, update.unrealized_pnl)
                        .or_else(|| self.positions.get(&update.symbol).map(|known| known.value.mark_price))
                        .unwrap_or_default();
                    let position = Position {
                        symbol: update.symbol.clone(),
                        quantity: update.quantity,
                        entry_price: update.entry_price,
                        mark_price,
                        unrealized_pnl: update.unrealized_pnl,
                    };
                    applied.positions.push(update.symbol.clone());
                    self.positions.insert(update.symbol, Known { value: position, as_of_ms });
                }
                for balance in balances.into_iter().filter(|balance| balance.asset == "USDT") {
                    if self.wallet_usdt.as_ref().is_some_and(|known| known.as_of_ms > as_of_ms) {
                        applied.stale = true;
                    } else {
                        self.wallet_usdt = Some(Known { value: balance.wallet_balance, as_of_ms });
                    }
                }
                applied
            }
            AccountEvent::Heartbeat { .. } => Applied::default(),
        }
    }

    /// Books the trades of `order` that were read by REST (an order's answer or its trade list),
    /// not heard on the stream: each trade counts as seen (the stream's copy is then a duplicate),
    /// and the position of its symbol is no longer caught up until an account update as new as the
    /// trade arrives. So a fill whose events the stream dropped cannot leave the book saying
    /// "verified" about a position that fill changed: the next sync reads by REST instead.
    pub fn apply_read_fills(&mut self, order: &ExchangeOrder, fills: &[Fill]) {
        for fill in fills {
            self.apply_order(order.clone(), Some(fill.clone()), fill.time_ms);
        }
    }

    fn apply_order(&mut self, order: ExchangeOrder, fill: Option<Fill>, as_of_ms: i64) -> Applied {
        let mut applied = Applied::default();
        if let Some(fill) = fill
            && self.trades.insert(&fill.trade_id)
        {
            let newest = self.newest_fill_ms.entry(fill.symbol.clone()).or_insert(as_of_ms);
            *newest = (*newest).max(as_of_ms);
            applied.new_fill = Some(fill);
        }
        let id = order.exchange_order_id.clone();
        let known_final = self.final_orders.contains(&id);
        let newer_known = self.open_orders.get(&id).is_some_and(|known| {
            known.as_of_ms > as_of_ms
                || (known.as_of_ms == as_of_ms && known.value.filled_quantity > order.filled_quantity)
        });
        if known_final || newer_known {
            applied.stale = true;
            return applied;
        }
        if order.status.is_open() {
            self.open_orders.insert(id, Known { value: order.clone(), as_of_ms });
        } else {
            self.open_orders.remove(&id);
            self.final_orders.insert(&id);
        }
        applied.order = Some(order);
        applied
    }

    /// The position on `symbol` (flat if none is known), whatever the verification says.
    pub fn position(&self, symbol: &Symbol) -> Position {
        self.positions
            .get(symbol)
            .map(|known| known.value.clone())
            .unwrap_or_else(|| Position::flat(symbol.clone(), Decimal::ZERO))
    }

    /// Whether the stream told that this exchange order is final (filled, cancelled, expired),
    /// as far as the book remembers (`final_orders_remembered`).
    pub fn order_is_final(&self, exchange_order_id: &str) -> bool {
        self.final_orders.contains(exchange_order_id)
    }

    /// Orders not final on `symbol`.
    pub fn open_orders(&self, symbol: &Symbol) -> Vec<&ExchangeOrder> {
        self.open_orders.values().map(|known| &known.value).filter(|order| &order.symbol == symbol).collect()
    }

    /// Wallet balance plus every position's unrealized PnL at `marks` (the newest closing price
    /// per symbol; a symbol without one counts at the PnL its newest event or read reported).
    /// `None` before any wallet balance is known.
    pub fn equity_usdt(&self, marks: &BTreeMap<Symbol, Decimal>) -> Option<Decimal> {
        let wallet = self.wallet_usdt.as_ref()?.value;
        Some(equity_at_marks(wallet, self.positions.values().map(|known| &known.value), marks))
    }

    /// Whether the position on `symbol` is known as of the newest fill seen on it (an order update
    /// can arrive before the account update that moves the position: until it does, the book's
    /// position is behind its own fills and must not be decided on).
    pub fn position_caught_up(&self, symbol: &Symbol) -> bool {
        let Some(fill_ms) = self.newest_fill_ms.get(symbol) else { return true };
        self.positions.get(symbol).is_some_and(|known| known.as_of_ms >= *fill_ms)
    }

    /// The symbols the book holds a position on.
    pub fn held_symbols(&self) -> Vec<Symbol> {
        self.positions
            .values()
            .filter(|known| !known.value.quantity.is_zero())
            .map(|known| known.value.symbol.clone())
            .collect()
    }

    /// The USDT wallet balance, once a snapshot or an event told it.
    pub fn wallet_usdt(&self) -> Option<Decimal> {
        self.wallet_usdt.as_ref().map(|known| known.value)
    }
}

/// `wallet` plus each position's unrealized PnL at `marks` (a symbol without a mark counts at the
/// PnL its read reported): one valuation whether the account came from REST or from the stream.
pub fn equity_at_marks<'a>(
    wallet: Decimal,
    positions: impl IntoIterator<Item = &'a Position>,
    marks: &BTreeMap<Symbol, Decimal>,
) -> Decimal {
    let unrealized: Decimal = positions
        .into_iter()
        .map(|position| match marks.get(&position.symbol) {
            Some(mark) if !position.quantity.is_zero() => position.quantity * (*mark - position.entry_price),
            _ => position.unrealized_pnl,
        })
        .sum();
    wallet + unrealized
}

/// The mark price an `ACCOUNT_UPDATE` position implies (entry + PnL per unit), if it holds any.
fn mark_from(quantity: Decimal, entry_price: Decimal, unrealized_pnl: Decimal) -> Option<Decimal> {
    (!quantity.is_zero()).then(|| entry_price + unrealized_pnl / quantity)
}

#[cfg(test)]
#[path = "account_book_tests.rs"]
mod tests;
