//! A whole supervision tree in a test: temp directories, a manual clock, the paper exchange, and a
//! market the test steps itself. Tests wait on the tree's live taps (decisions, supervision events)
//! instead of sleeping; the only timeout is a guard that turns a hang into a failure.

#![allow(dead_code)]

use std::collections::{HashSet, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bulwark::domain::{
    Balance, Candle, ClientOrderId, ExchangeOrder, Fill, OrderRequest, Position, Symbol, SymbolRules, Timeframe, UserId,
};
use bulwark::exchange::ExchangeError;

use bulwark::actors::market_data::{Poll, PollReport};
use bulwark::clock::{Clock, ManualClock};
use bulwark::config::{Config, VenueConfig};
use bulwark::exchange::Exchange;
use bulwark::exchange::paper::PaperExchange;
use bulwark::persistence::paper_journal::PaperJournal;
use bulwark::persistence::{DecisionRecord, Store};
use bulwark::server::{RunningServer, ServerDeps};
use bulwark::supervision::journal::{ActorKind, ChildState, EventKind, SupervisionEvent, TreeEvent};
use tokio::sync::broadcast;

pub const START_MS: i64 = 1_700_000_000_000;

/// Guard against a hung test; never used to wait for something to happen.
const WAIT_GUARD: Duration = Duration::from_secs(60);

/// One user trading XRPUSDT 5-minute candles (the replayed market).
pub const ONE_USER: &str = r#"
[[users]]
id = "u1"
[[users.strategies]]
symbol = "XRPUSDT"
timeframe = "5m"
strategy = "ema_crossover"
params = { fast = 3, slow = 8 }
position_size_usdt = 200
"#;

/// Two more users, on the random-walk markets.
pub const TWO_MORE_USERS: &str = r#"
[[users]]
id = "u2"
[[users.strategies]]
symbol = "BTCUSDT"
timeframe = "5m"
strategy = "ema_crossover"
params = { fast = 3, slow = 8 }
position_size_usdt = 500

[[users]]
id = "u3"
[[users.strategies]]
symbol = "ETHUSDT"
timeframe = "5m"
strategy = "ema_crossover"
params = { fast = 4, slow = 10 }
position_size_usdt = 300
"#;

pub fn three_users() -> String {
    format!("{ONE_USER}\n{TWO_MORE_USERS}")
}

/// Builds a config whose data and logs live in `dir`.
pub fn config_in(dir: &Path, body: &str) -> Config {
    // Any free port for the HTTP API, so that tests running at once never collide.
    let http = if body.contains("[http]") { "" } else { "[http]\nlisten = \"127.0.0.1:0\"\n" };
    let text = format!(
        "[server]\ndata_dir = {:?}\nlog_dir = {:?}\n{http}{body}",
        dir.join("data").display().to_string(),
        dir.join("logs").display().to_string()
    );
    bulwark::config::parse(&text, "test config").unwrap_or_else(|errors| panic!("{errors}"))
}

pub struct Tree {
    pub clock: Arc<ManualClock>,
    pub paper: PaperExchange,
    pub server: RunningServer,
    pub config: Config,
    pub decisions: broadcast::Receiver<DecisionRecord>,
    pub events: broadcast::Receiver<TreeEvent>,
    /// Events received while waiting for something else, in order; read before the tap.
    backlog: VecDeque<TreeEvent>,
    pub candle_interval_ms: i64,
}

impl Tree {
    /// Starts a tree on `config` with the paper exchange journaled in the config's data dir.
    pub fn start(config: Config, clock: Arc<ManualClock>) -> Self {
        let paper = start_paper(&config, clock.clone());
        Self::start_with_exchange(config, clock, paper.clone(), Arc::new(paper))
    }

    /// Starts a tree whose exchange is `exchange` (which may wrap `paper`).
    pub fn start_with_exchange(
        config: Config,
        clock: Arc<ManualClock>,
        paper: PaperExchange,
        exchange: Arc<dyn Exchange>,
    ) -> Self {
        let deps = ServerDeps {
            clock: clock.clone(),
            exchange,
            market_poll_interval: None,
            metrics: bulwark::metrics::Metrics::new(),
        };
        let server = bulwark::server::start(&config, deps).unwrap_or_else(|e| panic!("start: {e:#}"));
        let decisions = server.decisions.subscribe();
        let events = server.supervision.subscribe();
        let VenueConfig::Paper(paper_settings) = &config.exchange.venue else { panic!("a paper config") };
        let candle_interval_ms = paper_settings.candle_interval_ms;
        Self { clock, paper, server, config, decisions, events, backlog: VecDeque::new(), candle_interval_ms }
    }

    /// The next tree event (failing the test if none comes).
    pub async fn next_event(&mut self, waiting_for: &str) -> TreeEvent {
        if let Some(event) = self.backlog.pop_front() {
            return event;
        }
        match tokio::time::timeout(WAIT_GUARD, self.events.recv()).await {
            Ok(Ok(event)) => event,
            Ok(Err(error)) => panic!("event tap failed while waiting for {waiting_for}: {error}"),
            Err(_) => panic!("no tree event within {WAIT_GUARD:?} while waiting for {waiting_for}"),
        }
    }

    /// Waits for the first supervision event that `matches`.
    pub async fn wait_supervision(
        &mut self,
        waiting_for: &str,
        matches: impl Fn(&SupervisionEvent) -> bool,
    ) -> SupervisionEvent {
        loop {
            if let TreeEvent::Supervision(event) = self.next_event(waiting_for).await
                && matches(&event)
            {
                return event;
            }
        }
    }

    /// Waits until every named user's trader has finished starting (state reloaded, reconciled,
    /// subscribed). Returns each one's start-up detail.
    pub async fn wait_ready(&mut self, users: &[&str]) -> Vec<(String, String)> {
        let mut pending: Vec<String> = users.iter().map(|u| u.to_string()).collect();
        let mut details = Vec::new();
        while !pending.is_empty() {
            if let TreeEvent::StateChanged {
                actor: ActorKind::Trader,
                user: Some(user),
                state: ChildState::Running,
                reason,
            } = self.next_event(&format!("traders {pending:?} to be ready")).await
                && let Some(index) = pending.iter().position(|p| p == user.as_str())
            {
                pending.remove(index);
                details.push((user.to_string(), reason.unwrap_or_default()));
            }
        }
        details
    }

    /// Moves the market one candle and has market data deliver it.
    pub async fn step(&mut self) -> PollReport {
        self.clock.advance_ms(self.candle_interval_ms);
        let market_data = self.server.directory.market_data().expect("market data is running");
        market_data.send(Poll).timeout(WAIT_GUARD).await.expect("market data answers a poll")
    }

    /// The next decision record (failing the test if none comes).
    pub async fn next_decision(&mut self, waiting_for: &str) -> DecisionRecord {
        match tokio::time::timeout(WAIT_GUARD, self.decisions.recv()).await {
            Ok(Ok(record)) => record,
            Ok(Err(error)) => panic!("decision tap failed while waiting for {waiting_for}: {error}"),
            Err(_) => panic!("no decision within {WAIT_GUARD:?} while waiting for {waiting_for}"),
        }
    }

    pub async fn shutdown(mut self) {
        let report = self.server.shutdown().await;
        assert!(report.flushed, "persistence flushed at shutdown: {report:?}");
        RunningServer::join_arbiters(self.server.take_arbiters());
    }

    /// A read-only connection to the database, once everything the tree has written so far is
    /// committed: the persistence actor group-commits the records nobody waits on, so another
    /// connection would otherwise see them up to one batch late.
    pub fn store(&self) -> Store {
        if let Ok(persistence) = self.server.directory.persistence() {
            let (committed, wait) = std::sync::mpsc::channel();
            let commit = bulwark::actors::persistence::Run::after_commit(move |_| {
                let _ = committed.send(());
                Ok(())
            });
            if persistence.try_send(commit).is_ok() {
                wait.recv_timeout(WAIT_GUARD).expect("persistence commits within the guard");
            }
        }
        Store::open_read_only(&self.config.database_path()).expect("database opens read-only")
    }

    /// A second, writable connection to the database, for tests that tamper with it behind the
    /// server's back (WAL: the server's connection sees the change on its next read).
    pub fn store_writable(&self) -> rusqlite::Connection {
        let connection = rusqlite::Connection::open(self.config.database_path()).expect("database opens");
        connection.busy_timeout(Duration::from_secs(5)).unwrap();
        connection
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }
}

pub fn start_paper(config: &Config, clock: Arc<ManualClock>) -> PaperExchange {
    let VenueConfig::Paper(settings) = &config.exchange.venue else { panic!("a paper config") };
    std::fs::create_dir_all(&config.server.data_dir).unwrap();
    let journal = PaperJournal::open(&config.paper_journal_path()).expect("paper journal opens");
    PaperExchange::start(settings.clone(), clock, journal).expect("paper exchange starts")
}

/// What one user did with one candle.
#[derive(Debug, Clone, PartialEq)]
pub struct Iteration {
    pub user: String,
    /// The iteration's own record (hold / enter / exit / blocked / skipped).
    pub decision: DecisionRecord,
    /// Follow-up records of the order it placed (order_placed, order_rejected, ...).
    pub follow_ups: Vec<DecisionRecord>,
}

/// The outcome of one market step.
#[derive(Debug, Default)]
pub struct StepOutcome {
    pub iterations: Vec<Iteration>,
    /// Users whose trader crashed during the step, with the crash event.
    pub crashes: Vec<SupervisionEvent>,
}

impl Tree {
    /// Steps the market and waits until each of `users` has finished its iteration for the new
    /// candle (including the placement of any order it decided), or crashed.
    pub async fn step_and_settle(&mut self, users: &[&str]) -> StepOutcome {
        self.step().await;
        let mut outcome = StepOutcome::default();
        let mut open: Vec<String> = users.iter().map(|u| u.to_string()).collect();
        // Per user: the iteration record, and whether a follow-up is still owed.
        let mut partial: Vec<(String, DecisionRecord, Vec<DecisionRecord>, bool)> = Vec::new();
        while !open.is_empty() {
            tokio::select! {
                record = self.decisions.recv() => {
                    let record = record.expect("decision tap");
                    let user = record.user.to_string();
                    if !open.contains(&user) {
                        continue;
                    }
                    if let Some(entry) = partial.iter_mut().find(|(u, ..)| *u == user) {
                        entry.2.push(record);
                        entry.3 = false;
                    } else {
                        let owes_follow_up = matches!(record.outcome.as_str(), "enter" | "exit");
                        partial.push((user.clone(), record, Vec::new(), owes_follow_up));
                    }
                    if let Some(index) = partial.iter().position(|(u, _, _, owed)| *u == user && !owed) {
                        let (user, decision, follow_ups, _) = partial.remove(index);
                        open.retain(|u| *u != user);
                        outcome.iterations.push(Iteration { user, decision, follow_ups });
                    }
                }
                event = self.events.recv() => {
                    let event = event.expect("event tap");
                    self.backlog.push_back(event.clone());
                    if let TreeEvent::Supervision(event) = event
                        && event.event == EventKind::Crashed
                        && let Some(user) = event.user.as_ref().map(|u| u.to_string())
                        && open.contains(&user)
                    {
                        open.retain(|u| *u != user);
                        partial.retain(|(u, ..)| *u != user);
                        outcome.crashes.push(event);
                    }
                }
                _ = tokio::time::sleep(WAIT_GUARD) => panic!("users {open:?} did not finish their iteration within {WAIT_GUARD:?}"),
            }
        }
        outcome.iterations.sort_by(|a, b| a.user.cmp(&b.user));
        outcome
    }
}

/// What the next order request meets.
#[derive(Debug, Clone)]
pub enum Fault {
    /// The exchange executes the order, and the answer is lost on the way back.
    LoseResponse,
    /// Refused before anything happened (connection refused, 503 "Service Unavailable").
    RefuseBeforeSend,
    /// The request never reaches the matching engine, and the caller times out.
    NeverArrives,
    /// The exchange rejects it.
    Reject,
}

/// The paper exchange with scripted faults: on order creation, and optionally a klines endpoint
/// that panics (a bug in a shared actor's dependency).
#[derive(Debug)]
pub struct ScriptedExchange {
    pub inner: PaperExchange,
    /// Faults met by the next order requests, in order; when empty, requests pass through.
    pub script: Mutex<VecDeque<Fault>>,
    /// Every create-order request that reached this wrapper.
    pub attempts: Mutex<Vec<ClientOrderId>>,
    pub panic_on_klines: bool,
    /// The next this-many fill listings come back empty (an exchange whose trade history lags).
    pub lagging_fill_reads: Mutex<u32>,
    /// The next this-many cancels fail (the exchange refuses them).
    pub failing_cancels: Mutex<u32>,
    /// Accounts whose credentials the exchange refuses (-2015 on every signed request).
    pub refused_accounts: Mutex<HashSet<UserId>>,
    /// While set, an account's trade list comes back empty (history beyond the exchange's window).
    pub empty_trade_lists: Mutex<bool>,
    /// While set, every account's equity (its wallet balance, with no unrealized PnL): what the
    /// kill switch measures drawdown on.
    pub equity_usdt: Mutex<Option<rust_decimal::Decimal>>,
    /// Account reads that cost request weight, counted by kind: `open orders (all)` (40 on
    /// Binance), `open orders (one symbol)` (1), `position` (5).
    pub reads: Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// Whether accounts are streamed (the paper venue's stream); off, every account sync reads by
    /// REST, as against a venue without streams.
    pub streams_accounts: bool,
}

impl ScriptedExchange {
    fn count(&self, read: &'static str) {
        *self.reads.lock().unwrap().entry(read).or_default() += 1;
    }

    /// How many reads of this kind reached the exchange.
    pub fn read_count(&self, read: &str) -> u64 {
        self.reads.lock().unwrap().get(read).copied().unwrap_or(0)
    }
}

impl ScriptedExchange {
    pub fn new(inner: PaperExchange, faults: Vec<Fault>) -> Self {
        Self {
            inner,
            script: Mutex::new(faults.into()),
            attempts: Mutex::new(Vec::new()),
            panic_on_klines: false,
            lagging_fill_reads: Mutex::new(0),
            failing_cancels: Mutex::new(0),
            refused_accounts: Mutex::new(HashSet::new()),
            empty_trade_lists: Mutex::new(false),
            equity_usdt: Mutex::new(None),
            reads: Mutex::new(std::collections::BTreeMap::new()),
            streams_accounts: true,
        }
    }

    /// The same exchange without account streams: account syncs read by REST.
    pub fn without_account_streams(mut self) -> Self {
        self.streams_accounts = false;
        self
    }

    /// From now on the exchange refuses `account`'s credentials (a revoked API key).
    pub fn revoke(&self, account: &UserId) {
        self.refused_accounts.lock().unwrap().insert(account.clone());
    }

    fn check_credentials(&self, account: &UserId) -> Result<(), ExchangeError> {
        if self.refused_accounts.lock().unwrap().contains(account) {
            return Err(ExchangeError::Auth {
                detail: "code -2015: Invalid API-key, IP, or permissions for action.".into(),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl Exchange for ScriptedExchange {
    fn venue(&self) -> &'static str {
        "scripted"
    }
    fn clock_is_exact(&self) -> bool {
        true
    }
    fn estimated_now_ms(&self) -> Option<i64> {
        self.inner.estimated_now_ms()
    }
    fn venue_pace(&self) -> bulwark::clock::VenuePace {
        self.inner.venue_pace()
    }
    fn candle_stream(
        &self,
        feeds: &[(bulwark::domain::Symbol, bulwark::domain::Timeframe)],
    ) -> Option<bulwark::exchange::CandleStream> {
        self.inner.candle_stream(feeds)
    }
    fn account_stream(&self, account: &bulwark::domain::UserId) -> Option<bulwark::exchange::AccountStream> {
        if !self.streams_accounts {
            return None;
        }
        self.inner.account_stream(account)
    }
    async fn probe_time_ms(&self) -> Result<bulwark::exchange::TimeProbe, ExchangeError> {
        self.inner.probe_time_ms().await
    }
    async fn server_time_ms(&self) -> Result<i64, ExchangeError> {
        self.inner.server_time_ms().await
    }
    async fn symbol_rules(&self, symbol: &Symbol) -> Result<SymbolRules, ExchangeError> {
        self.inner.symbol_rules(symbol).await
    }
    async fn klines(&self, symbol: &Symbol, timeframe: Timeframe, limit: u16) -> Result<Vec<Candle>, ExchangeError> {
        if self.panic_on_klines {
            panic!("klines exploded");
        }
        self.inner.klines(symbol, timeframe, limit).await
    }
    async fn position(&self, account: &UserId, symbol: &Symbol) -> Result<Position, ExchangeError> {
        self.check_credentials(account)?;
        self.count("position");
        self.inner.position(account, symbol).await
    }
    async fn positions_and_open_orders(
        &self,
        account: &UserId,
    ) -> Result<(Vec<Position>, Vec<ExchangeOrder>), ExchangeError> {
        Ok((self.positions(account).await?, self.open_orders(account, None).await?))
    }
    async fn positions(&self, account: &UserId) -> Result<Vec<Position>, ExchangeError> {
        self.check_credentials(account)?;
        self.count("positions");
        self.inner.positions(account).await
    }
    async fn balance(&self, account: &UserId) -> Result<Balance, ExchangeError> {
        self.check_credentials(account)?;
        let balance = self.inner.balance(account).await?;
        Ok(match *self.equity_usdt.lock().unwrap() {
            Some(equity) => Balance {
                wallet_balance: equity,
                unrealized_pnl: rust_decimal::Decimal::ZERO,
                available_balance: equity,
                ..balance
            },
            None => balance,
        })
    }
    async fn create_order(&self, account: &UserId, request: &OrderRequest) -> Result<ExchangeOrder, ExchangeError> {
        self.check_credentials(account)?;
        self.attempts.lock().unwrap().push(request.client_order_id.clone());
        let fault = self.script.lock().unwrap().pop_front();
        match fault {
            None => self.inner.create_order(account, request).await,
            Some(Fault::LoseResponse) => {
                self.inner.create_order(account, request).await?;
                Err(ExchangeError::UnknownOutcome { detail: "connection reset after the request was sent".into() })
            }
            Some(Fault::RefuseBeforeSend) => Err(ExchangeError::Retryable { detail: "connection refused".into() }),
            Some(Fault::NeverArrives) => {
                Err(ExchangeError::UnknownOutcome { detail: "no answer within 10000 ms".into() })
            }
            Some(Fault::Reject) => Err(ExchangeError::Rejected { code: -2019, msg: "Margin is insufficient.".into() }),
        }
    }
    async fn order_by_client_id(
        &self,
        account: &UserId,
        symbol: &Symbol,
        id: &ClientOrderId,
    ) -> Result<Option<ExchangeOrder>, ExchangeError> {
        self.check_credentials(account)?;
        self.inner.order_by_client_id(account, symbol, id).await
    }
    async fn cancel_order(
        &self,
        account: &UserId,
        symbol: &Symbol,
        id: &ClientOrderId,
    ) -> Result<ExchangeOrder, ExchangeError> {
        self.check_credentials(account)?;
        {
            let mut failing = self.failing_cancels.lock().unwrap();
            if *failing > 0 {
                *failing -= 1;
                return Err(ExchangeError::Retryable { detail: "503 Service Unavailable".into() });
            }
        }
        self.inner.cancel_order(account, symbol, id).await
    }
    async fn open_orders(
        &self,
        account: &UserId,
        symbol: Option<&Symbol>,
    ) -> Result<Vec<ExchangeOrder>, ExchangeError> {
        self.check_credentials(account)?;
        self.count(if symbol.is_some() { "open orders (one symbol)" } else { "open orders (all)" });
        self.inner.open_orders(account, symbol).await
    }
    async fn fills(&self, account: &UserId, symbol: &Symbol, since_ms: i64) -> Result<Vec<Fill>, ExchangeError> {
        self.check_credentials(account)?;
        if *self.empty_trade_lists.lock().unwrap() {
            return Ok(Vec::new());
        }
        self.inner.fills(account, symbol, since_ms).await
    }
    async fn order_fills(&self, account: &UserId, symbol: &Symbol, id: &str) -> Result<Vec<Fill>, ExchangeError> {
        self.check_credentials(account)?;
        {
            let mut lagging = self.lagging_fill_reads.lock().unwrap();
            if *lagging > 0 {
                *lagging -= 1;
                return Ok(Vec::new());
            }
        }
        self.inner.order_fills(account, symbol, id).await
    }
}
