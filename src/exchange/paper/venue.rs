//! The paper exchange's matching engine: accounts, orders, fills, positions, margin and PnL,
//! as a plain struct with no I/O. Every operation takes the wall time, settles whatever the
//! market has filled since the last call, and appends the [`VenueChange`]s it made so that the
//! venue thread can journal them (the engine itself never touches a disk).
//!
//! Rules, chosen to behave like Binance USDⓈ-M in one-way mode:
//! - A market order executes at once, at the current price (where the forming candle's path is
//!   now, [`crate::exchange::paper::market::path_price`]) moved against the taker by the slippage rate, and is answered executed; a limit order fills
//!   on the first closed candle after it that trades through its price (at the open if the candle
//!   gaps through it).
//! - Fees are the taker fee on the fill's notional. Realized PnL and fees move the wallet.
//! - Orders are refused with Binance's error codes: unknown symbol (-1121), quantity or price off
//!   the step or tick (-4023, -4014), a client order id already used by an *open* order (-4116: as
//!   on Binance, a finished order's id may be used again), notional below the minimum
//!   unless reduce-only (-4164), a reduce-only order that would not reduce (-2022), insufficient
//!   margin (-2019), and a timestamp outside the receive window (-1021).
//! - A reduce-only order that finds nothing to reduce when it fills expires without a fill.

use std::collections::{BTreeMap, HashMap, VecDeque};

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use serde::{Deserialize, Serialize};

use crate::domain::{
    Balance, Candle, ClientOrderId, ExchangeOrder, ExchangeOrderStatus, Fill, MoneyError, OrderRequest, OrderType,
    Position, Price, Side, Symbol, SymbolRules, Timeframe, UserId, decimal_from_f64,
};
use crate::exchange::ExchangeError;
use crate::exchange::paper::market::{KlineInterval, KlineWindow, MarketClock, MarketError, PaperMarket};
use crate::limits::{PAPER_FILLS_PER_ACCOUNT_MAX, PAPER_ORDERS_PER_ACCOUNT_MAX};

/// Fees, slippage, leverage and balances of the paper venue.
#[derive(Debug, Clone)]
pub struct VenueSettings {
    /// Fraction of notional charged per fill (0.0004 = 4 basis points).
    pub taker_fee_rate: Decimal,
    /// Fraction by which a market fill is moved against the taker.
    pub slippage_rate: Decimal,
    pub leverage: Decimal,
    pub recv_window_ms: i64,
    /// Starting balance (USDT) of an account not listed in `account_balances`.
    pub default_balance: Decimal,
    pub account_balances: BTreeMap<UserId, Decimal>,
}

/// A working or finished paper order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaperOrder {
    pub order: ExchangeOrder,
    /// Base candle forming when the order arrived.
    pub placed_index: u64,
    /// Highest closed candle a limit order has been checked against.
    pub checked_index: u64,
    /// Global arrival sequence (the exchange order id as a number): settlement order.
    pub sequence: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PaperPosition {
    /// Signed: positive long, negative short.
    pub quantity: Decimal,
    pub entry_price: Decimal,
}

/// One change to durable venue state, for the journal.
#[derive(Debug, Clone, PartialEq)]
pub enum VenueChange {
    Account {
        user: UserId,
        wallet_balance: Decimal,
    },
    Position {
        user: UserId,
        symbol: Symbol,
        position: PaperPosition,
    },
    Order {
        user: UserId,
        order: PaperOrder,
    },
    /// A finished order dropped from the books (by its arrival sequence).
    OrderPruned {
        user: UserId,
        sequence: u64,
    },
    Fill {
        user: UserId,
        fill: Fill,
    },
    SymbolSettings {
        user: UserId,
        symbol: Symbol,
        settings: SymbolSettings,
    },
    FillPruned {
        user: UserId,
        trade_id: String,
    },
    Counters {
        next_sequence: u64,
        next_trade_id: u64,
    },
    Clock(MarketClock),
}

/// One order the venue accepted, with its fills: the ground truth `bulwark sim` serves at
/// `/sim/ledger` for invariant checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerOrder {
    pub account: UserId,
    pub order: ExchangeOrder,
    pub fills: Vec<Fill>,
}

/// One account's position on one symbol, as the venue holds it (non-zero ones only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerPosition {
    pub account: UserId,
    pub symbol: Symbol,
    /// Signed: positive long, negative short.
    pub quantity: Decimal,
}

/// Everything the venue knows that bulwark's database should agree with: `bulwark sim` serves it
/// at `/sim/ledger`, `bulwark verify` reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    pub orders: Vec<LedgerOrder>,
    pub positions: Vec<LedgerPosition>,
}

/// Durable venue state, as the journal stores it and the venue restores it.
#[derive(Debug, Clone, Default)]
pub struct VenueSnapshot {
    pub clock: Option<MarketClock>,
    pub next_sequence: u64,
    pub next_trade_id: u64,
    pub wallets: BTreeMap<UserId, Decimal>,
    pub positions: Vec<(UserId, Symbol, PaperPosition)>,
    /// In arrival order.
    pub orders: Vec<(UserId, PaperOrder)>,
    /// Oldest first.
    pub fills: Vec<(UserId, Fill)>,
    pub symbol_settings: Vec<(UserId, Symbol, SymbolSettings)>,
}

#[derive(Debug, Default)]
struct Account {
    wallet_balance: Decimal,
    positions: BTreeMap<Symbol, PaperPosition>,
    /// Every order kept, by arrival sequence. A client order id is unique only among open orders
    /// (as on Binance): a finished order's id may be used again, so ids do not key this map.
    orders: BTreeMap<u64, PaperOrder>,
    /// The newest order with each client order id (what a query by client id answers).
    by_client_id: HashMap<ClientOrderId, u64>,
    /// Finished orders, oldest first: pruned beyond [`PAPER_ORDERS_PER_ACCOUNT_MAX`].
    finished: VecDeque<u64>,
    fills: VecDeque<Fill>,
    /// Leverage and margin type per symbol, where the account changed them (Binance's
    /// `POST /fapi/v1/leverage` and `marginType`); the venue's defaults elsewhere.
    symbol_settings: BTreeMap<Symbol, SymbolSettings>,
}

/// One account's settings on one symbol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SymbolSettings {
    /// Margin = notional / leverage, for this symbol's positions and orders.
    pub leverage: u32,
    /// Recorded as Binance records it; margin is computed as cross margin either way.
    pub isolated: bool,
}

/// One account on every symbol, read at one moment ([`PaperVenue::account_view`]).
#[derive(Debug, Clone)]
pub struct AccountView {
    pub balance: Balance,
    pub symbols: Vec<SymbolView>,
    /// Market time of the reading.
    pub time_ms: i64,
}

/// One account's standing on one symbol.
#[derive(Debug, Clone)]
pub struct SymbolView {
    pub position: Position,
    /// Signed: the position's quantity at the mark price.
    pub notional: Decimal,
    pub settings: SymbolSettings,
    /// The position's margin at the symbol's leverage.
    pub position_margin: Decimal,
    /// Margin held by the symbol's open orders that add exposure.
    pub open_order_margin: Decimal,
    pub has_open_orders: bool,
}

/// The leverage Binance takes (`-4028` outside it).
pub const LEVERAGE_RANGE: std::ops::RangeInclusive<u32> = 1..=125;

impl Account {
    /// The newest order with this client order id.
    fn newest(&self, client_order_id: &ClientOrderId) -> Option<&PaperOrder> {
        self.by_client_id.get(client_order_id).and_then(|sequence| self.orders.get(sequence))
    }

    /// Stores an order (new, or a new version of one already kept).
    fn keep(&mut self, order: PaperOrder) {
        let newest = self.by_client_id.entry(order.order.client_order_id.clone()).or_insert(order.sequence);
        *newest = (*newest).max(order.sequence);
        self.orders.insert(order.sequence, order);
    }

    fn forget(&mut self, sequence: u64) {
        if let Some(order) = self.orders.remove(&sequence)
            && self.by_client_id.get(&order.order.client_order_id) == Some(&sequence)
        {
            self.by_client_id.remove(&order.order.client_order_id);
        }
    }
}

/// The matching engine.
#[derive(Debug)]
pub struct PaperVenue {
    settings: VenueSettings,
    rules: BTreeMap<Symbol, SymbolRules>,
    market: PaperMarket,
    accounts: BTreeMap<UserId, Account>,
    /// Working orders across accounts, by arrival sequence.
    working: BTreeMap<u64, UserId>,
    next_sequence: u64,
    next_trade_id: u64,
    /// The forming candle at the last settlement: nothing can fill until the next one forms, so
    /// requests within one candle settle once (settlement is then O(1) per request, not O(orders)).
    settled_at_forming: Option<u64>,
}

/// How a LIMIT order meets the market when it is placed (Binance's `timeInForce`; GTD is not kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeInForce {
    GoodTillCancel,
    ImmediateOrCancel,
    FillOrKill,
    /// GTX: a maker order only.
    PostOnly,
}

/// What a new order does at once.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Placement {
    ExecutesAt(Decimal),
    Rests,
    Expires,
}

pub(crate) fn rejected(code: i64, msg: impl Into<String>) -> ExchangeError {
    ExchangeError::Rejected { code, msg: msg.into() }
}

fn market_error(error: MarketError) -> ExchangeError {
    match error {
        MarketError::UnknownSymbol(_) => rejected(-1121, "Invalid symbol."),
        MarketError::UnsupportedInterval(_) => rejected(-1120, format!("Invalid interval: {error}")),
        MarketError::HistoryExhausted { .. } => rejected(-1130, format!("Invalid data sent for a parameter: {error}")),
    }
}

fn price_from_market(value: f64) -> Result<Decimal, ExchangeError> {
    decimal_from_f64(value)
        .map_err(|error: MoneyError| ExchangeError::Malformed { detail: format!("paper market price: {error}") })
}

impl PaperVenue {
    pub fn new(settings: VenueSettings, rules: BTreeMap<Symbol, SymbolRules>, market: PaperMarket) -> Self {
        Self {
            settings,
            rules,
            market,
            accounts: BTreeMap::new(),
            working: BTreeMap::new(),
            next_sequence: 1,
            next_trade_id: 1,
            settled_at_forming: None,
        }
    }

    /// Rebuilds the venue from its journal.
    pub fn restore(
        settings: VenueSettings,
        rules: BTreeMap<Symbol, SymbolRules>,
        market: PaperMarket,
        snapshot: VenueSnapshot,
    ) -> Self {
        let mut venue = Self::new(settings, rules, market);
        venue.next_sequence = snapshot.next_sequence.max(1);
        venue.next_trade_id = snapshot.next_trade_id.max(1);
        for (user, wallet_balance) in snapshot.wallets {
            venue.accounts.entry(user).or_default().wallet_balance = wallet_balance;
        }
        for (user, symbol, position) in snapshot.positions {
            venue.accounts.entry(user).or_default().positions.insert(symbol, position);
        }
        for (user, order) in snapshot.orders {
            let account = venue.accounts.entry(user.clone()).or_default();
            if order.order.status.is_open() {
                venue.working.insert(order.sequence, user);
            } else {
                account.finished.push_back(order.sequence);
            }
            account.keep(order);
        }
        for (user, fill) in snapshot.fills {
            venue.accounts.entry(user).or_default().fills.push_back(fill);
        }
        for (user, symbol, settings) in snapshot.symbol_settings {
            venue.accounts.entry(user).or_default().symbol_settings.insert(symbol, settings);
        }
        venue
    }

    /// `user`'s leverage and margin type on `symbol` (the venue's defaults until changed).
    pub fn symbol_settings(&self, user: &UserId, symbol: &Symbol) -> SymbolSettings {
        self.accounts.get(user).and_then(|account| account.symbol_settings.get(symbol)).copied().unwrap_or(
            SymbolSettings {
                leverage: self.settings.leverage.trunc().to_u32().unwrap_or(1).clamp(1, *LEVERAGE_RANGE.end()),
                isolated: false,
            },
        )
    }

    fn leverage_on(&self, user: &UserId, symbol: &Symbol) -> Decimal {
        Decimal::from(self.symbol_settings(user, symbol).leverage)
    }

    /// Binance's `POST /fapi/v1/leverage`: `-4028` outside [`LEVERAGE_RANGE`], `-1121` for an
    /// unknown symbol.
    pub fn set_leverage(
        &mut self,
        user: &UserId,
        symbol: &Symbol,
        leverage: u32,
        changes: &mut Vec<VenueChange>,
    ) -> Result<SymbolSettings, ExchangeError> {
        self.symbol_rules(symbol)?;
        if !LEVERAGE_RANGE.contains(&leverage) {
            return Err(rejected(-4028, format!("Leverage {leverage} is not valid")));
        }
        let settings = SymbolSettings { leverage, ..self.symbol_settings(user, symbol) };
        self.keep_symbol_settings(user, symbol, settings, changes);
        Ok(settings)
    }

    /// Binance's `POST /fapi/v1/marginType`: `-4046` when nothing changes, `-4047` with open
    /// orders on the symbol, `-4048` with a position.
    pub fn set_margin_type(
        &mut self,
        user: &UserId,
        symbol: &Symbol,
        isolated: bool,
        wall_ms: i64,
        changes: &mut Vec<VenueChange>,
    ) -> Result<SymbolSettings, ExchangeError> {
        self.settle(wall_ms, changes)?;
        self.symbol_rules(symbol)?;
        let current = self.symbol_settings(user, symbol);
        if current.isolated == isolated {
            return Err(rejected(-4046, "No need to change margin type."));
        }
        let account = Self::account(&mut self.accounts, &self.settings, user, changes);
        if account.orders.values().any(|o| o.order.status.is_open() && o.order.symbol == *symbol) {
            return Err(rejected(-4047, "Margin type cannot be changed if there exists open orders."));
        }
        if account.positions.get(symbol).is_some_and(|held| !held.quantity.is_zero()) {
            return Err(rejected(-4048, "Margin type cannot be changed if there exists position."));
        }
        let settings = SymbolSettings { isolated, ..current };
        self.keep_symbol_settings(user, symbol, settings, changes);
        Ok(settings)
    }

    fn keep_symbol_settings(
        &mut self,
        user: &UserId,
        symbol: &Symbol,
        settings: SymbolSettings,
        changes: &mut Vec<VenueChange>,
    ) {
        let account = Self::account(&mut self.accounts, &self.settings, user, changes);
        account.symbol_settings.insert(symbol.clone(), settings);
        changes.push(VenueChange::SymbolSettings { user: user.clone(), symbol: symbol.clone(), settings });
    }

    /// Every order `user` has on the venue (open and kept finished ones), oldest first.
    pub fn account_orders(
        &mut self,
        user: &UserId,
        wall_ms: i64,
        changes: &mut Vec<VenueChange>,
    ) -> Result<Vec<ExchangeOrder>, ExchangeError> {
        self.settle(wall_ms, changes)?;
        Ok(self.accounts.get(user).map(|a| a.orders.values().map(|o| o.order.clone()).collect()).unwrap_or_default())
    }

    /// `user`'s account on every symbol at once, as Binance's account and position endpoints show
    /// it: margins by each symbol's leverage.
    pub fn account_view(
        &mut self,
        user: &UserId,
        wall_ms: i64,
        changes: &mut Vec<VenueChange>,
    ) -> Result<AccountView, ExchangeError> {
        let balance = self.balance(user, wall_ms, changes)?;
        let symbols: Vec<Symbol> = self.rules.keys().cloned().collect();
        let mut views = Vec::with_capacity(symbols.len());
        for symbol in symbols {
            let position = self.position(user, &symbol, wall_ms, changes)?;
            let settings = self.symbol_settings(user, &symbol);
            let leverage = Decimal::from(settings.leverage);
            let account = self.accounts.get(user);
            let open_orders: Vec<&PaperOrder> = account
                .map(|a| a.orders.values().filter(|o| o.order.status.is_open() && o.order.symbol == symbol).collect())
                .unwrap_or_default();
            let mut open_order_margin = Decimal::ZERO;
            for order in open_orders.iter().filter(|o| !o.order.reduce_only) {
                let price = order.order.order_type.limit_price().map_or(position.mark_price, |p| p.get());
                open_order_margin += (order.order.quantity.get() - order.order.filled_quantity) * price / leverage;
            }
            views.push(SymbolView {
                notional: position.quantity * position.mark_price,
                position_margin: (position.quantity * position.mark_price).abs() / leverage,
                has_open_orders: !open_orders.is_empty(),
                open_order_margin,
                settings,
                position,
            });
        }
        Ok(AccountView { balance, symbols: views, time_ms: self.market.clock().market_now_ms(wall_ms) })
    }

    /// Every fill the venue keeps for `user`, oldest first.
    pub fn account_fills(
        &mut self,
        user: &UserId,
        wall_ms: i64,
        changes: &mut Vec<VenueChange>,
    ) -> Result<Vec<Fill>, ExchangeError> {
        self.settle(wall_ms, changes)?;
        Ok(self.accounts.get(user).map(|a| a.fills.iter().cloned().collect()).unwrap_or_default())
    }

    pub fn market_clock(&self) -> MarketClock {
        self.market.clock()
    }

    /// Every order the venue still keeps, per account in arrival order, with its fills.
    pub fn ledger(&mut self, wall_ms: i64, changes: &mut Vec<VenueChange>) -> Result<Vec<LedgerOrder>, ExchangeError> {
        self.settle(wall_ms, changes)?;
        let mut ledger = Vec::new();
        for (account, state) in &self.accounts {
            for order in state.orders.values() {
                let fills = state
                    .fills
                    .iter()
                    .filter(|f| f.exchange_order_id == order.order.exchange_order_id)
                    .cloned()
                    .collect();
                ledger.push(LedgerOrder { account: account.clone(), order: order.order.clone(), fills });
            }
        }
        Ok(ledger)
    }

    /// Every non-zero position of every account.
    pub fn ledger_positions(
        &mut self,
        wall_ms: i64,
        changes: &mut Vec<VenueChange>,
    ) -> Result<Vec<LedgerPosition>, ExchangeError> {
        self.settle(wall_ms, changes)?;
        let mut positions = Vec::new();
        for (account, state) in &self.accounts {
            for (symbol, held) in &state.positions {
                if !held.quantity.is_zero() {
                    positions.push(LedgerPosition {
                        account: account.clone(),
                        symbol: symbol.clone(),
                        quantity: held.quantity,
                    });
                }
            }
        }
        Ok(positions)
    }

    /// Changes the market speed, keeping the market where it is.
    pub fn set_candle_interval(&mut self, wall_ms: i64, candle_interval_ms: i64, changes: &mut Vec<VenueChange>) {
        let clock = self.market.clock().with_candle_interval(wall_ms, candle_interval_ms);
        if clock != self.market.clock() {
            self.market.set_clock(clock);
            changes.push(VenueChange::Clock(clock));
        }
    }

    pub fn server_time_ms(&self, wall_ms: i64) -> i64 {
        self.market.clock().market_now_ms(wall_ms)
    }

    pub fn symbol_rules(&self, symbol: &Symbol) -> Result<SymbolRules, ExchangeError> {
        self.rules.get(symbol).copied().ok_or_else(|| rejected(-1121, "Invalid symbol."))
    }

    pub fn klines(
        &mut self,
        symbol: &Symbol,
        timeframe: Timeframe,
        limit: u16,
        wall_ms: i64,
    ) -> Result<Vec<Candle>, ExchangeError> {
        self.market.closed_candles(symbol, timeframe, limit, wall_ms).map_err(market_error)
    }

    /// Binance's klines rows at `wall_ms`, the forming candle last (the simulator's REST klines).
    pub fn klines_window(
        &mut self,
        symbol: &Symbol,
        interval: KlineInterval,
        window: KlineWindow,
        wall_ms: i64,
    ) -> Result<Vec<Candle>, ExchangeError> {
        self.market.klines(symbol, interval, window, wall_ms).map_err(market_error)
    }

    /// The price `symbol` trades at now (the forming candle's), for tickers and the mark price.
    pub fn current_price(&mut self, symbol: &Symbol, wall_ms: i64) -> Result<Decimal, ExchangeError> {
        self.mark_price(symbol, wall_ms)
    }

    fn account<'a>(
        accounts: &'a mut BTreeMap<UserId, Account>,
        settings: &VenueSettings,
        user: &UserId,
        changes: &mut Vec<VenueChange>,
    ) -> &'a mut Account {
        accounts.entry(user.clone()).or_insert_with(|| {
            let wallet_balance = settings.account_balances.get(user).copied().unwrap_or(settings.default_balance);
            changes.push(VenueChange::Account { user: user.clone(), wallet_balance });
            Account { wallet_balance, ..Account::default() }
        })
    }

    fn mark_price(&mut self, symbol: &Symbol, wall_ms: i64) -> Result<Decimal, ExchangeError> {
        price_from_market(self.market.last_price(symbol, wall_ms).map_err(market_error)?)
    }

    pub fn position(
        &mut self,
        user: &UserId,
        symbol: &Symbol,
        wall_ms: i64,
        changes: &mut Vec<VenueChange>,
    ) -> Result<Position, ExchangeError> {
        self.settle(wall_ms, changes)?;
        let mark_price = self.mark_price(symbol, wall_ms)?;
        let account = Self::account(&mut self.accounts, &self.settings, user, changes);
        let held = account.positions.get(symbol).copied().unwrap_or_default();
        Ok(Position {
            symbol: symbol.clone(),
            quantity: held.quantity,
            entry_price: held.entry_price,
            mark_price,
            unrealized_pnl: held.quantity * (mark_price - held.entry_price),
        })
    }

    /// Every non-flat position of `user`, at the mark price now.
    pub fn positions(
        &mut self,
        user: &UserId,
        wall_ms: i64,
        changes: &mut Vec<VenueChange>,
    ) -> Result<Vec<Position>, ExchangeError> {
        self.settle(wall_ms, changes)?;
        let held: Vec<Symbol> = self
            .accounts
            .get(user)
            .map(|account| {
                account.positions.iter().filter(|(_, p)| !p.quantity.is_zero()).map(|(s, _)| s.clone()).collect()
            })
            .unwrap_or_default();
        held.iter().map(|symbol| self.position(user, symbol, wall_ms, changes)).collect()
    }

    pub fn balance(
        &mut self,
        user: &UserId,
        wall_ms: i64,
        changes: &mut Vec<VenueChange>,
    ) -> Result<Balance, ExchangeError> {
        self.settle(wall_ms, changes)?;
        let (unrealized_pnl, margin_used) = self.exposure(user, wall_ms, changes)?;
        let account = Self::account(&mut self.accounts, &self.settings, user, changes);
        Ok(Balance {
            asset: "USDT".to_owned(),
            wallet_balance: account.wallet_balance,
            unrealized_pnl,
            available_balance: account.wallet_balance + unrealized_pnl - margin_used,
        })
    }

    /// Unrealized PnL and margin in use (positions plus working orders that add exposure).
    fn exposure(
        &mut self,
        user: &UserId,
        wall_ms: i64,
        changes: &mut Vec<VenueChange>,
    ) -> Result<(Decimal, Decimal), ExchangeError> {
        let account = Self::account(&mut self.accounts, &self.settings, user, changes);
        let positions: Vec<(Symbol, PaperPosition)> = account.positions.iter().map(|(s, p)| (s.clone(), *p)).collect();
        let working: Vec<(Symbol, Decimal, Option<Price>, bool)> = account
            .orders
            .values()
            .filter(|o| o.order.status.is_open())
            .map(|o| {
                (
                    o.order.symbol.clone(),
                    o.order.quantity.get() - o.order.filled_quantity,
                    o.order.order_type.limit_price(),
                    o.order.reduce_only,
                )
            })
            .collect();
        let (mut unrealized_pnl, mut margin_used) = (Decimal::ZERO, Decimal::ZERO);
        for (symbol, position) in positions {
            if position.quantity.is_zero() {
                continue;
            }
            let mark = self.mark_price(&symbol, wall_ms)?;
            unrealized_pnl += position.quantity * (mark - position.entry_price);
            margin_used += (position.quantity * mark).abs() / self.leverage_on(user, &symbol);
        }
        for (symbol, remaining, limit_price, reduce_only) in working {
            if reduce_only {
                continue;
            }
            let price = match limit_price {
                Some(price) => price.get(),
                None => self.mark_price(&symbol, wall_ms)?,
            };
            margin_used += remaining * price / self.leverage_on(user, &symbol);
        }
        Ok((unrealized_pnl, margin_used))
    }

    /// Places a GTC order (what bulwark sends).
    pub fn create_order(
        &mut self,
        user: &UserId,
        request: &OrderRequest,
        wall_ms: i64,
        changes: &mut Vec<VenueChange>,
    ) -> Result<ExchangeOrder, ExchangeError> {
        self.create_order_in_force(user, request, TimeInForce::GoodTillCancel, wall_ms, changes)
    }

    /// Places an order with its time in force: a MARKET order, or a LIMIT order that crosses the
    /// current price, executes at once (a LIMIT one at its price or better); a LIMIT order that
    /// does not rests (GTC, GTX), expires unfilled (IOC) or is refused unrecorded (FOK `-5021`);
    /// a GTX order that would cross is refused unrecorded (`-5022`), as Binance does since 2023.
    pub fn create_order_in_force(
        &mut self,
        user: &UserId,
        request: &OrderRequest,
        time_in_force: TimeInForce,
        wall_ms: i64,
        changes: &mut Vec<VenueChange>,
    ) -> Result<ExchangeOrder, ExchangeError> {
        self.settle(wall_ms, changes)?;
        if request.timestamp_ms < wall_ms - self.settings.recv_window_ms || request.timestamp_ms > wall_ms + 1_000 {
            return Err(rejected(-1021, "Timestamp for this request is outside of the recvWindow."));
        }
        let rules = self.symbol_rules(&request.symbol)?;
        let mark_price = self.mark_price(&request.symbol, wall_ms)?;
        let reference_price = match request.order_type {
            OrderType::Limit { price } => price,
            OrderType::Market => {
                Price::new(mark_price).map_err(|e| ExchangeError::Malformed { detail: e.to_string() })?
            }
        };
        if let Err(problem) =
            rules.check_order(request.quantity, request.order_type.limit_price(), reference_price, request.reduce_only)
        {
            return Err(match problem {
                MoneyError::OffStep { .. } | MoneyError::BelowMinQuantity { .. } => {
                    rejected(-4023, format!("Quantity not increased by step size: {problem}"))
                }
                MoneyError::OffTick { .. } => rejected(-4014, format!("Price not increased by tick size: {problem}")),
                MoneyError::BelowMinNotional { min_notional, .. } => rejected(
                    -4164,
                    format!("Order's notional must be no smaller than {min_notional} (unless you choose reduce only)."),
                ),
                other => rejected(-1111, other.to_string()),
            });
        }
        let account = Self::account(&mut self.accounts, &self.settings, user, changes);
        if account.newest(&request.client_order_id).is_some_and(|o| o.order.status.is_open()) {
            return Err(ExchangeError::Duplicate { code: -4116, msg: "ClientOrderId is duplicated.".to_owned() });
        }
        let held = account.positions.get(&request.symbol).copied().unwrap_or_default();
        let signed_quantity = request.side.sign() * request.quantity.get();
        let reduces =
            !held.quantity.is_zero() && held.quantity.is_sign_positive() != signed_quantity.is_sign_positive();
        if request.reduce_only && !reduces {
            return Err(rejected(-2022, "ReduceOnly Order is rejected."));
        }
        let adds_exposure = !request.reduce_only && (!reduces || request.quantity.get() > held.quantity.abs());
        if adds_exposure {
            let (unrealized_pnl, margin_used) = self.exposure(user, wall_ms, changes)?;
            let wallet_balance = self.accounts.get(user).map(|a| a.wallet_balance).unwrap_or_default();
            let available = wallet_balance + unrealized_pnl - margin_used;
            let required = request.quantity.get() * reference_price.get() / self.leverage_on(user, &request.symbol)
                + request.quantity.get() * reference_price.get() * self.settings.taker_fee_rate;
            if required > available {
                return Err(rejected(-2019, "Margin is insufficient."));
            }
        }
        let placement = self.placement(request, time_in_force, mark_price)?;
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        let placed_index = self.market.clock().forming_index(wall_ms);
        let order = PaperOrder {
            order: ExchangeOrder {
                exchange_order_id: sequence.to_string(),
                client_order_id: request.client_order_id.clone(),
                symbol: request.symbol.clone(),
                side: request.side,
                order_type: request.order_type,
                quantity: request.quantity,
                filled_quantity: Decimal::ZERO,
                average_price: None,
                status: ExchangeOrderStatus::New,
                reduce_only: request.reduce_only,
                updated_at_ms: self.market.clock().market_now_ms(wall_ms),
                created_at_ms: self.market.clock().market_now_ms(wall_ms),
            },
            placed_index,
            checked_index: placed_index,
            sequence,
        };
        let account = self.accounts.get_mut(user).expect("Invariant: account created above");
        account.keep(order.clone());
        self.working.insert(sequence, user.clone());
        changes.push(VenueChange::Order { user: user.clone(), order: order.clone() });
        changes.push(VenueChange::Counters { next_sequence: self.next_sequence, next_trade_id: self.next_trade_id });
        let time_ms = order.order.updated_at_ms;
        match placement {
            Placement::Rests => return Ok(order.order),
            Placement::ExecutesAt(price) => self.execute(user, order, price, time_ms, changes)?,
            Placement::Expires => {
                let mut expired = order;
                expired.order.status = ExchangeOrderStatus::Expired;
                self.finish(user, expired, changes);
            }
        }
        let account = self.accounts.get(user).expect("Invariant: account created above");
        let placed = account.orders.get(&sequence).expect("Invariant: a finished order is kept");
        Ok(placed.order.clone())
    }

    /// What an order does the moment it is placed, against the current price `mark_price`: a
    /// taker executes at that price moved against it by the slippage (a LIMIT one no worse than
    /// its price).
    fn placement(
        &self,
        request: &OrderRequest,
        time_in_force: TimeInForce,
        mark_price: Decimal,
    ) -> Result<Placement, ExchangeError> {
        let slipped = match request.side {
            Side::Buy => mark_price * (Decimal::ONE + self.settings.slippage_rate),
            Side::Sell => mark_price * (Decimal::ONE - self.settings.slippage_rate),
        };
        let OrderType::Limit { price } = request.order_type else {
            return Ok(Placement::ExecutesAt(slipped));
        };
        let limit = price.get();
        let crosses = match request.side {
            Side::Buy => limit >= mark_price,
            Side::Sell => limit <= mark_price,
        };
        let no_worse_than_limit = match request.side {
            Side::Buy => slipped.min(limit),
            Side::Sell => slipped.max(limit),
        };
        Ok(match (time_in_force, crosses) {
            (TimeInForce::PostOnly, true) => {
                return Err(rejected(
                    -5022,
                    "Due to the order could not be executed as maker, the Post Only order will be rejected. The order will not be recorded in the order history",
                ));
            }
            (TimeInForce::FillOrKill, false) => {
                return Err(rejected(
                    -5021,
                    "Due to the order could not be filled immediately, the FOK order has been rejected. The order will not be recorded in the order history",
                ));
            }
            (TimeInForce::ImmediateOrCancel, false) => Placement::Expires,
            (TimeInForce::GoodTillCancel | TimeInForce::PostOnly, false) => Placement::Rests,
            (_, true) => Placement::ExecutesAt(no_worse_than_limit),
        })
    }

    pub fn order_by_client_id(
        &mut self,
        user: &UserId,
        client_order_id: &ClientOrderId,
        wall_ms: i64,
        changes: &mut Vec<VenueChange>,
    ) -> Result<Option<ExchangeOrder>, ExchangeError> {
        self.settle(wall_ms, changes)?;
        Ok(self.accounts.get(user).and_then(|a| a.newest(client_order_id)).map(|o| o.order.clone()))
    }

    pub fn cancel_order(
        &mut self,
        user: &UserId,
        client_order_id: &ClientOrderId,
        wall_ms: i64,
        changes: &mut Vec<VenueChange>,
    ) -> Result<ExchangeOrder, ExchangeError> {
        self.settle(wall_ms, changes)?;
        let Some(order) = self.accounts.get(user).and_then(|a| a.newest(client_order_id)).cloned() else {
            return Err(rejected(-2011, "Unknown order sent."));
        };
        if !order.order.status.is_open() {
            return Err(rejected(-2011, "Unknown order sent."));
        }
        let mut order = order;
        order.order.status = ExchangeOrderStatus::Canceled;
        order.order.updated_at_ms = self.market.clock().market_now_ms(wall_ms);
        self.finish(user, order.clone(), changes);
        Ok(order.order)
    }

    pub fn open_orders(
        &mut self,
        user: &UserId,
        symbol: Option<&Symbol>,
        wall_ms: i64,
        changes: &mut Vec<VenueChange>,
    ) -> Result<Vec<ExchangeOrder>, ExchangeError> {
        self.settle(wall_ms, changes)?;
        let Some(account) = self.accounts.get(user) else { return Ok(Vec::new()) };
        Ok(account
            .orders
            .values()
            .filter(|o| o.order.status.is_open() && symbol.is_none_or(|s| &o.order.symbol == s))
            .map(|o| o.order.clone())
            .collect())
    }

    pub fn fills(
        &mut self,
        user: &UserId,
        symbol: &Symbol,
        since_ms: i64,
        wall_ms: i64,
        changes: &mut Vec<VenueChange>,
    ) -> Result<Vec<Fill>, ExchangeError> {
        self.settle(wall_ms, changes)?;
        let Some(account) = self.accounts.get(user) else { return Ok(Vec::new()) };
        Ok(account.fills.iter().filter(|f| &f.symbol == symbol && f.time_ms >= since_ms).cloned().collect())
    }

    /// Fills every working order the market has reached by `wall_ms`.
    /// Settles working orders the market has reached (what every request does first); the ticker
    /// calls it while accounts listen.
    pub fn settle_pending(&mut self, wall_ms: i64, changes: &mut Vec<VenueChange>) -> Result<(), ExchangeError> {
        self.settle(wall_ms, changes)
    }

    fn settle(&mut self, wall_ms: i64, changes: &mut Vec<VenueChange>) -> Result<(), ExchangeError> {
        let forming = self.market.clock().forming_index(wall_ms);
        if self.settled_at_forming == Some(forming) {
            return Ok(());
        }
        let working: Vec<(u64, UserId)> =
            self.working.iter().map(|(sequence, user)| (*sequence, user.clone())).collect();
        for (sequence, user) in working {
            let Some(order) = self.accounts.get(&user).and_then(|a| a.orders.get(&sequence)).cloned() else {
                continue;
            };
            if forming <= order.placed_index {
                continue;
            }
            match order.order.order_type {
                // Only an order kept from before MARKET orders executed at once (a journal of an
                // older version) is still working: filled at the open after the candle it came in.
                OrderType::Market => {
                    let candle =
                        self.market.base_candle(&order.order.symbol, order.placed_index + 1).map_err(market_error)?;
                    let open = price_from_market(candle.open)?;
                    let slipped = match order.order.side {
                        Side::Buy => open * (Decimal::ONE + self.settings.slippage_rate),
                        Side::Sell => open * (Decimal::ONE - self.settings.slippage_rate),
                    };
                    self.execute(&user, order, slipped, candle.open_time_ms, changes)?;
                }
                OrderType::Limit { price: limit } => {
                    let mut order = order;
                    let checked_before = order.checked_index;
                    let mut executed = false;
                    // Candles after the one the order arrived in, up to the newest closed one.
                    for index in order.checked_index.max(order.placed_index) + 1..forming {
                        let candle = self.market.base_candle(&order.order.symbol, index).map_err(market_error)?;
                        let (open, high, low) = (
                            price_from_market(candle.open)?,
                            price_from_market(candle.high)?,
                            price_from_market(candle.low)?,
                        );
                        let limit = limit.get();
                        let fill_price = match order.order.side {
                            Side::Buy if open <= limit => Some(open),
                            Side::Buy if low <= limit => Some(limit),
                            Side::Sell if open >= limit => Some(open),
                            Side::Sell if high >= limit => Some(limit),
                            _ => None,
                        };
                        order.checked_index = index;
                        if let Some(fill_price) = fill_price {
                            self.execute(&user, order.clone(), fill_price, candle.open_time_ms, changes)?;
                            executed = true;
                            break;
                        }
                    }
                    if !executed && order.checked_index != checked_before {
                        self.accounts.get_mut(&user).expect("Invariant: order's account exists").keep(order.clone());
                        changes.push(VenueChange::Order { user: user.clone(), order });
                    }
                }
            }
        }
        self.settled_at_forming = Some(forming);
        Ok(())
    }

    /// Executes a working order in full at `price` (rounded to the tick), or expires a reduce-only
    /// order that has nothing left to reduce.
    fn execute(
        &mut self,
        user: &UserId,
        mut order: PaperOrder,
        price: Decimal,
        time_ms: i64,
        changes: &mut Vec<VenueChange>,
    ) -> Result<(), ExchangeError> {
        let symbol = order.order.symbol.clone();
        let rules = self.symbol_rules(&symbol)?;
        let price = rules.price_round(price).map_err(|e| ExchangeError::Malformed { detail: e.to_string() })?.get();
        let account = self.accounts.get_mut(user).expect("Invariant: order's account exists");
        let held = account.positions.get(&symbol).copied().unwrap_or_default();
        let mut quantity = order.order.quantity.get() - order.order.filled_quantity;
        if order.order.reduce_only {
            let reduces =
                !held.quantity.is_zero() && held.quantity.is_sign_positive() != (order.order.side == Side::Buy);
            quantity = if reduces { quantity.min(held.quantity.abs()) } else { Decimal::ZERO };
        }
        order.order.updated_at_ms = time_ms;
        if quantity.is_zero() {
            order.order.status = ExchangeOrderStatus::Expired;
            self.finish(user, order, changes);
            return Ok(());
        }
        let fee = (quantity * price * self.settings.taker_fee_rate).round_dp(8);
        let (position, realized_pnl) = apply_fill(held, order.order.side.sign() * quantity, price);
        let trade_id = self.next_trade_id;
        self.next_trade_id += 1;
        let fill = Fill {
            trade_id: trade_id.to_string(),
            exchange_order_id: order.order.exchange_order_id.clone(),
            symbol: symbol.clone(),
            side: order.order.side,
            price,
            quantity,
            fee,
            fee_asset: "USDT".to_owned(),
            realized_pnl,
            time_ms,
        };
        let account = self.accounts.get_mut(user).expect("Invariant: order's account exists");
        account.wallet_balance += realized_pnl - fee;
        account.positions.insert(symbol.clone(), position);
        account.fills.push_back(fill.clone());
        changes.push(VenueChange::Account { user: user.clone(), wallet_balance: account.wallet_balance });
        changes.push(VenueChange::Position { user: user.clone(), symbol, position });
        changes.push(VenueChange::Fill { user: user.clone(), fill });
        while account.fills.len() > PAPER_FILLS_PER_ACCOUNT_MAX {
            if let Some(old) = account.fills.pop_front() {
                changes.push(VenueChange::FillPruned { user: user.clone(), trade_id: old.trade_id });
            }
        }
        let filled_before = order.order.filled_quantity;
        let filled_after = filled_before + quantity;
        let average_before = order.order.average_price.unwrap_or_default();
        order.order.average_price =
            Some(((average_before * filled_before + price * quantity) / filled_after).round_dp(8));
        order.order.filled_quantity = filled_after;
        order.order.status = ExchangeOrderStatus::Filled;
        changes.push(VenueChange::Counters { next_sequence: self.next_sequence, next_trade_id: self.next_trade_id });
        self.finish(user, order, changes);
        Ok(())
    }

    /// Moves an order out of the working set and prunes the account's oldest finished orders.
    fn finish(&mut self, user: &UserId, order: PaperOrder, changes: &mut Vec<VenueChange>) {
        self.working.remove(&order.sequence);
        let account = self.accounts.get_mut(user).expect("Invariant: order's account exists");
        account.finished.push_back(order.sequence);
        account.keep(order.clone());
        changes.push(VenueChange::Order { user: user.clone(), order });
        while account.finished.len() > PAPER_ORDERS_PER_ACCOUNT_MAX {
            if let Some(old) = account.finished.pop_front() {
                account.forget(old);
                changes.push(VenueChange::OrderPruned { user: user.clone(), sequence: old });
            }
        }
    }
}

/// The position after a signed fill, and the PnL the fill realized.
fn apply_fill(held: PaperPosition, signed_quantity: Decimal, price: Decimal) -> (PaperPosition, Decimal) {
    let (quantity, entry_price, realized_pnl) =
        crate::domain::net_position_after_fill(held.quantity, held.entry_price, signed_quantity, price);
    (PaperPosition { quantity, entry_price }, realized_pnl)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::paper::market::{SeriesSource, parse_replay};
    use std::str::FromStr;

    const XRP: &[u8] = include_bytes!("../../../data/replay/XRP_USDT_USDT-5m-futures.json");
    const START_MS: i64 = 1_700_000_000_000;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn xrp() -> Symbol {
        Symbol::new("XRPUSDT").unwrap()
    }

    fn user() -> UserId {
        UserId::new("u1").unwrap()
    }

    fn venue() -> PaperVenue {
        let candles = parse_replay("xrp", XRP).unwrap();
        let market = PaperMarket::new(
            MarketClock::fresh(START_MS, 1_000),
            1,
            &[(xrp(), SeriesSource::Replay { source_name: "xrp".into(), candles }, 0.0001)],
        );
        let rules = BTreeMap::from([(
            xrp(),
            SymbolRules {
                tick_size: dec("0.0001"),
                step_size: dec("0.1"),
                min_quantity: dec("0.1"),
                min_notional: dec("5"),
            },
        )]);
        let settings = VenueSettings {
            taker_fee_rate: dec("0.0004"),
            slippage_rate: dec("0.0002"),
            leverage: dec("5"),
            recv_window_ms: 5_000,
            default_balance: dec("1000"),
            account_balances: BTreeMap::new(),
        };
        PaperVenue::new(settings, rules, market)
    }

    fn market_order(id: &str, side: Side, quantity: &str, reduce_only: bool, wall_ms: i64) -> OrderRequest {
        OrderRequest {
            client_order_id: ClientOrderId::parse(id).unwrap(),
            symbol: xrp(),
            side,
            order_type: OrderType::Market,
            quantity: crate::domain::Quantity::new(dec(quantity)).unwrap(),
            reduce_only,
            timestamp_ms: wall_ms,
        }
    }

    #[test]
    fn a_market_order_fills_at_once_at_the_current_price_with_slippage_and_fee() {
        let mut venue = venue();
        let mut changes = Vec::new();
        // The current price: where the forming candle's path is now, inside its range.
        let forming = venue.market.forming_base_candle(&xrp(), START_MS).unwrap();
        let whole = venue.market.base_candle(&xrp(), venue.market_clock().forming_index(START_MS)).unwrap();
        assert!(whole.low <= forming.close && forming.close <= whole.high);
        let last_close = price_from_market(forming.close).unwrap();
        let filled = venue
            .create_order(&user(), &market_order("bw-u1-1", Side::Buy, "100", false, START_MS), START_MS, &mut changes)
            .unwrap();
        // The answer is the executed order (Binance's RESULT response), at the current price moved
        // up by the slippage, and a query says the same.
        assert_eq!(filled.status, ExchangeOrderStatus::Filled);
        assert_eq!(filled.filled_quantity, dec("100"));
        let expected_price = (last_close * dec("1.0002") / dec("0.0001")).round() * dec("0.0001");
        assert_eq!(filled.average_price, Some(expected_price));
        let queried =
            venue.order_by_client_id(&user(), &filled.client_order_id, START_MS, &mut changes).unwrap().unwrap();
        assert_eq!(queried, filled);
        assert!(venue.open_orders(&user(), None, START_MS, &mut changes).unwrap().is_empty());
        let fills = venue.fills(&user(), &xrp(), 0, START_MS + 1_000, &mut changes).unwrap();
        assert_eq!(fills.len(), 1);
        assert_eq!(fills[0].fee, (dec("100") * expected_price * dec("0.0004")).round_dp(8));
        let position = venue.position(&user(), &xrp(), START_MS + 1_000, &mut changes).unwrap();
        assert_eq!(position.quantity, dec("100"));
        assert_eq!(position.entry_price, expected_price);
        let balance = venue.balance(&user(), START_MS + 1_000, &mut changes).unwrap();
        assert_eq!(balance.wallet_balance, dec("1000") - fills[0].fee);
    }

    #[test]
    fn closing_a_position_realizes_pnl() {
        let mut venue = venue();
        let mut changes = Vec::new();
        venue
            .create_order(&user(), &market_order("bw-u1-1", Side::Buy, "100", false, START_MS), START_MS, &mut changes)
            .unwrap();
        let t1 = START_MS + 1_000;
        venue.create_order(&user(), &market_order("bw-u1-2", Side::Sell, "100", true, t1), t1, &mut changes).unwrap();
        let t2 = START_MS + 2_000;
        let fills = venue.fills(&user(), &xrp(), 0, t2, &mut changes).unwrap();
        assert_eq!(fills.len(), 2);
        let expected_pnl = ((fills[1].price - fills[0].price) * dec("100")).round_dp(8);
        assert_eq!(fills[1].realized_pnl, expected_pnl);
        let position = venue.position(&user(), &xrp(), t2, &mut changes).unwrap();
        assert!(position.quantity.is_zero());
        let balance = venue.balance(&user(), t2, &mut changes).unwrap();
        assert_eq!(balance.wallet_balance, dec("1000") + expected_pnl - fills[0].fee - fills[1].fee);
    }

    #[test]
    fn orders_are_refused_with_binance_codes() {
        let mut venue = venue();
        let mut changes = Vec::new();
        let code = |result: Result<ExchangeOrder, ExchangeError>| match result {
            Err(ExchangeError::Rejected { code, .. }) | Err(ExchangeError::Duplicate { code, .. }) => code,
            other => panic!("expected a rejection, got {other:?}"),
        };
        let mut off_step = market_order("bw-u1-1", Side::Buy, "10.05", false, START_MS);
        assert_eq!(code(venue.create_order(&user(), &off_step, START_MS, &mut changes)), -4023);
        off_step.quantity = crate::domain::Quantity::new(dec("1")).unwrap();
        assert_eq!(code(venue.create_order(&user(), &off_step, START_MS, &mut changes)), -4164, "notional ~1.2 USDT");
        let reduce_nothing = market_order("bw-u1-2", Side::Sell, "10", true, START_MS);
        assert_eq!(code(venue.create_order(&user(), &reduce_nothing, START_MS, &mut changes)), -2022);
        let too_big = market_order("bw-u1-3", Side::Buy, "100000", false, START_MS);
        assert_eq!(code(venue.create_order(&user(), &too_big, START_MS, &mut changes)), -2019);
        let stale = market_order("bw-u1-4", Side::Buy, "10", false, START_MS - 10_000);
        assert_eq!(code(venue.create_order(&user(), &stale, START_MS, &mut changes)), -1021);
        let mut unknown = market_order("bw-u1-5", Side::Buy, "10", false, START_MS);
        unknown.symbol = Symbol::new("DOGEUSDT").unwrap();
        assert_eq!(code(venue.create_order(&user(), &unknown, START_MS, &mut changes)), -1121);
        let mut working = market_order("bw-u1-6", Side::Buy, "10", false, START_MS);
        working.order_type = OrderType::Limit { price: Price::new(dec("0.5")).unwrap() };
        venue.create_order(&user(), &working, START_MS, &mut changes).unwrap();
        assert_eq!(code(venue.create_order(&user(), &working, START_MS, &mut changes)), -4116, "still open");
    }

    #[test]
    fn a_client_order_id_is_unique_among_open_orders_only() {
        let mut venue = venue();
        let mut changes = Vec::new();
        let first = market_order("bw-u1-1", Side::Buy, "10", false, START_MS);
        let placed = venue.create_order(&user(), &first, START_MS, &mut changes).unwrap();
        // Filled at once; from then on the id is free again, as on Binance.
        let t1 = START_MS + 1_000;
        let again = market_order("bw-u1-1", Side::Buy, "10", false, t1);
        let second = venue.create_order(&user(), &again, t1, &mut changes).unwrap();
        assert_ne!(second.exchange_order_id, placed.exchange_order_id, "a second exchange order");
        let newest = venue.order_by_client_id(&user(), &first.client_order_id, t1, &mut changes).unwrap().unwrap();
        assert_eq!(newest.exchange_order_id, second.exchange_order_id, "a query by client id answers the newest");
        let t2 = START_MS + 2_000;
        let ledger = venue.ledger(t2, &mut changes).unwrap();
        let ids: Vec<&str> = ledger.iter().map(|o| o.order.client_order_id.as_str()).collect();
        assert_eq!(ids, ["bw-u1-1", "bw-u1-1"], "both orders are in the ledger");
        assert!(ledger.iter().all(|o| o.order.status == ExchangeOrderStatus::Filled && o.fills.len() == 1));

        // The journal keeps both across a restart.
        let mut journal = crate::persistence::paper_journal::PaperJournal::open_in_memory().unwrap();
        journal.apply(&changes).unwrap();
        let kept: Vec<(String, u64)> = journal
            .load()
            .unwrap()
            .orders
            .iter()
            .map(|(_, o)| (o.order.client_order_id.to_string(), o.sequence))
            .collect();
        assert_eq!(kept, [("bw-u1-1".to_owned(), 1), ("bw-u1-1".to_owned(), 2)]);
    }

    #[test]
    fn a_limit_order_waits_for_the_price_and_can_be_cancelled() {
        let mut venue = venue();
        let mut changes = Vec::new();
        let mut far = market_order("bw-u1-1", Side::Buy, "10", false, START_MS);
        far.order_type = OrderType::Limit { price: Price::new(dec("0.5")).unwrap() };
        venue.create_order(&user(), &far, START_MS, &mut changes).unwrap();
        let later = START_MS + 5_000;
        let open = venue.open_orders(&user(), Some(&xrp()), later, &mut changes).unwrap();
        assert_eq!(open.len(), 1, "0.5 is far below the market");
        let cancelled = venue.cancel_order(&user(), &far.client_order_id, later, &mut changes).unwrap();
        assert_eq!(cancelled.status, ExchangeOrderStatus::Canceled);
        assert!(venue.open_orders(&user(), None, later, &mut changes).unwrap().is_empty());
        let again = venue.cancel_order(&user(), &far.client_order_id, later, &mut changes);
        assert!(matches!(again, Err(ExchangeError::Rejected { code: -2011, .. })));

        let mut near = market_order("bw-u1-2", Side::Buy, "10", false, later);
        near.order_type = OrderType::Limit { price: Price::new(dec("5")).unwrap() };
        venue.create_order(&user(), &near, later, &mut changes).unwrap();
        let filled =
            venue.order_by_client_id(&user(), &near.client_order_id, later + 2_000, &mut changes).unwrap().unwrap();
        assert_eq!(filled.status, ExchangeOrderStatus::Filled);
        assert!(filled.average_price.unwrap() < dec("5"), "gapped through: filled at the open");
    }

    #[test]
    fn a_reduce_only_order_with_nothing_left_expires() {
        let mut venue = venue();
        let mut changes = Vec::new();
        venue
            .create_order(&user(), &market_order("bw-u1-1", Side::Buy, "100", false, START_MS), START_MS, &mut changes)
            .unwrap();
        // A reduce-only limit sell above the market (at the high of the first later candle that
        // trades above it) rests until that candle; a market sell closes the position at once, so
        // when the limit executes it has nothing left to reduce.
        let forming = venue.market_clock().forming_index(START_MS);
        let now = venue.current_price(&xrp(), START_MS).unwrap();
        let (candles_later, resting_price) = (1..100)
            .map(|later| {
                (later, price_from_market(venue.market.base_candle(&xrp(), forming + later).unwrap().high).unwrap())
            })
            .find(|(_, high)| *high > now)
            .expect("the market rises above the start within 100 candles");
        let mut waiting = market_order("bw-u1-3", Side::Sell, "100", true, START_MS);
        waiting.order_type = OrderType::Limit { price: Price::new(resting_price).unwrap() };
        let rests = venue.create_order(&user(), &waiting, START_MS, &mut changes).unwrap();
        assert_eq!(rests.status, ExchangeOrderStatus::New);
        let t1 = START_MS + 1;
        venue.create_order(&user(), &market_order("bw-u1-2", Side::Sell, "100", true, t1), t1, &mut changes).unwrap();
        let nothing_to_reduce = market_order("bw-u1-4", Side::Sell, "100", true, t1);
        assert!(matches!(
            venue.create_order(&user(), &nothing_to_reduce, t1, &mut changes),
            Err(ExchangeError::Rejected { code: -2022, .. })
        ));
        let t2 = START_MS + (candles_later as i64 + 1) * 1_000;
        let second = venue
            .order_by_client_id(&user(), &ClientOrderId::parse("bw-u1-3").unwrap(), t2, &mut changes)
            .unwrap()
            .unwrap();
        assert_eq!(second.status, ExchangeOrderStatus::Expired);
        assert!(venue.position(&user(), &xrp(), t2, &mut changes).unwrap().quantity.is_zero());
    }

    #[test]
    fn limit_orders_meet_the_market_by_their_time_in_force() {
        let mut venue = venue();
        let mut changes = Vec::new();
        let now = venue.current_price(&xrp(), START_MS).unwrap();
        let limit = |id: &str, side: Side, price: Decimal| {
            let mut order = market_order(id, side, "10", false, START_MS);
            order.order_type = OrderType::Limit { price: Price::new(price.round_dp(4)).unwrap() };
            order
        };
        let (above, below) = (now * dec("1.05"), now * dec("0.95"));
        let mut place = |order: &OrderRequest, time_in_force| {
            venue.create_order_in_force(&user(), order, time_in_force, START_MS, &mut changes)
        };
        // Crossing: executes at once as a taker, no worse than its price (any time in force but GTX).
        for (id, time_in_force) in [
            ("c-gtc", TimeInForce::GoodTillCancel),
            ("c-ioc", TimeInForce::ImmediateOrCancel),
            ("c-fok", TimeInForce::FillOrKill),
        ] {
            let executed = place(&limit(id, Side::Buy, above), time_in_force).unwrap();
            assert_eq!(executed.status, ExchangeOrderStatus::Filled, "{id}");
            let price = executed.average_price.unwrap();
            assert!(
                price > now && price <= above.round_dp(4),
                "{id}: slipped {price} against {now}, capped by the limit"
            );
        }
        let post_only = place(&limit("c-gtx", Side::Buy, above), TimeInForce::PostOnly);
        assert!(matches!(post_only, Err(ExchangeError::Rejected { code: -5022, .. })), "{post_only:?}");
        // Not crossing: GTC and GTX rest, IOC expires unfilled, FOK is refused.
        for (id, time_in_force) in [("r-gtc", TimeInForce::GoodTillCancel), ("r-gtx", TimeInForce::PostOnly)] {
            assert_eq!(place(&limit(id, Side::Buy, below), time_in_force).unwrap().status, ExchangeOrderStatus::New);
        }
        let expired = place(&limit("r-ioc", Side::Buy, below), TimeInForce::ImmediateOrCancel).unwrap();
        assert_eq!((expired.status, expired.filled_quantity), (ExchangeOrderStatus::Expired, Decimal::ZERO));
        let killed = place(&limit("r-fok", Side::Buy, below), TimeInForce::FillOrKill);
        assert!(matches!(killed, Err(ExchangeError::Rejected { code: -5021, .. })), "{killed:?}");
        // Refused orders are not recorded; the expired IOC is.
        let ids = |venue: &mut PaperVenue, id: &str| {
            venue.order_by_client_id(&user(), &ClientOrderId::parse(id).unwrap(), START_MS, &mut Vec::new()).unwrap()
        };
        assert!(ids(&mut venue, "c-gtx").is_none() && ids(&mut venue, "r-fok").is_none());
        assert_eq!(ids(&mut venue, "r-ioc").unwrap().status, ExchangeOrderStatus::Expired);
        let open: Vec<_> = venue.open_orders(&user(), None, START_MS, &mut changes).unwrap();
        assert_eq!(open.len(), 2, "the two resting orders");
    }

    #[test]
    fn fills_flip_and_average_positions() {
        let long = PaperPosition { quantity: dec("10"), entry_price: dec("1") };
        let (added, pnl) = apply_fill(long, dec("10"), dec("2"));
        assert_eq!((added.quantity, added.entry_price, pnl), (dec("20"), dec("1.5"), dec("0")));
        let (flipped, pnl) = apply_fill(long, dec("-15"), dec("2"));
        assert_eq!((flipped.quantity, flipped.entry_price, pnl), (dec("-5"), dec("2"), dec("10")));
        let short = PaperPosition { quantity: dec("-10"), entry_price: dec("2") };
        let (reduced, pnl) = apply_fill(short, dec("4"), dec("1"));
        assert_eq!((reduced.quantity, reduced.entry_price, pnl), (dec("-6"), dec("2"), dec("4")));
    }

    #[test]
    fn the_journal_changes_rebuild_the_same_venue() {
        let mut venue = venue();
        let mut changes = Vec::new();
        venue
            .create_order(&user(), &market_order("bw-u1-1", Side::Buy, "100", false, START_MS), START_MS, &mut changes)
            .unwrap();
        venue.position(&user(), &xrp(), START_MS + 1_000, &mut changes).unwrap();
        let mut far = market_order("bw-u1-2", Side::Buy, "10", false, START_MS + 1_000);
        far.order_type = OrderType::Limit { price: Price::new(dec("0.5")).unwrap() };
        venue.create_order(&user(), &far, START_MS + 1_000, &mut changes).unwrap();

        let snapshot = snapshot_from_changes(venue.market_clock(), &changes);
        let mut restored = PaperVenue::restore(
            venue.settings.clone(),
            venue.rules.clone(),
            {
                let candles = parse_replay("xrp", XRP).unwrap();
                PaperMarket::new(
                    venue.market_clock(),
                    1,
                    &[(xrp(), SeriesSource::Replay { source_name: "xrp".into(), candles }, 0.0001)],
                )
            },
            snapshot,
        );
        let t = START_MS + 1_500;
        let mut scratch = Vec::new();
        assert_eq!(
            restored.position(&user(), &xrp(), t, &mut scratch).unwrap(),
            venue.position(&user(), &xrp(), t, &mut scratch).unwrap()
        );
        assert_eq!(
            restored.balance(&user(), t, &mut scratch).unwrap(),
            venue.balance(&user(), t, &mut scratch).unwrap()
        );
        assert_eq!(
            restored.open_orders(&user(), None, t, &mut scratch).unwrap(),
            venue.open_orders(&user(), None, t, &mut scratch).unwrap()
        );
        assert_eq!(
            restored.fills(&user(), &xrp(), 0, t, &mut scratch).unwrap(),
            venue.fills(&user(), &xrp(), 0, t, &mut scratch).unwrap()
        );
        assert_eq!((restored.next_sequence, restored.next_trade_id), (venue.next_sequence, venue.next_trade_id));
    }

    /// Folds a change log into a snapshot the way the journal does.
    fn snapshot_from_changes(clock: MarketClock, changes: &[VenueChange]) -> VenueSnapshot {
        let mut snapshot = VenueSnapshot { clock: Some(clock), ..VenueSnapshot::default() };
        let mut orders: BTreeMap<u64, (UserId, PaperOrder)> = BTreeMap::new();
        let mut positions: BTreeMap<(UserId, Symbol), PaperPosition> = BTreeMap::new();
        for change in changes {
            match change {
                VenueChange::Account { user, wallet_balance } => {
                    snapshot.wallets.insert(user.clone(), *wallet_balance);
                }
                VenueChange::Position { user, symbol, position } => {
                    positions.insert((user.clone(), symbol.clone()), *position);
                }
                VenueChange::Order { user, order } => {
                    orders.insert(order.sequence, (user.clone(), order.clone()));
                }
                VenueChange::OrderPruned { sequence, .. } => {
                    orders.remove(sequence);
                }
                VenueChange::Fill { user, fill } => snapshot.fills.push((user.clone(), fill.clone())),
                VenueChange::SymbolSettings { user, symbol, settings } => {
                    snapshot.symbol_settings.retain(|(u, s, _)| !(u == user && s == symbol));
                    snapshot.symbol_settings.push((user.clone(), symbol.clone(), *settings));
                }
                VenueChange::FillPruned { trade_id, .. } => snapshot.fills.retain(|(_, f)| &f.trade_id != trade_id),
                VenueChange::Counters { next_sequence, next_trade_id } => {
                    snapshot.next_sequence = *next_sequence;
                    snapshot.next_trade_id = *next_trade_id;
                }
                VenueChange::Clock(clock) => snapshot.clock = Some(*clock),
            }
        }
        snapshot.positions = positions.into_iter().map(|((u, s), p)| (u, s, p)).collect();
        snapshot.orders = orders.into_values().collect();
        snapshot
    }
}
