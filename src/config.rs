//! Configuration: TOML in, a validated [`Config`] out.
//!
//! Parsing is two-phase (as ripgrep's low/high args): serde reads the raw file into plain structs
//! with defaults, recording every unknown key instead of stopping at the first; validation then
//! turns raw values into typed ones and collects every problem, each named by its path and value
//! (`users[1].strategies[0].symbol: unknown symbol "XRPUSD"`). A config either validates whole or
//! is refused whole: nothing runs on half a config.
//!
//! `config/bulwark.toml` is also compiled in as the embedded default: with no `--config` and no
//! file at the default path, bulwark runs on it (paper exchange, SQLite, no keys, no network).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rust_decimal::Decimal;
use rust_decimal::prelude::{FromPrimitive, ToPrimitive};
use serde::Deserialize;
use url::Url;

use crate::domain::{Symbol, SymbolRules, Timeframe, UserId};
use crate::exchange::paper::market::{BASE_TIMEFRAME, RandomWalkParams, SeriesSource, parse_replay};
use crate::exchange::paper::venue::VenueSettings;
use crate::exchange::paper::{PaperSettings, PaperSymbol, embedded_dataset};
use crate::guards::GuardSettings;
use crate::limits::{
    CANDLE_WINDOW_LEN, PAPER_RANDOM_WALK_HISTORY_MAX, STRATEGIES_PER_USER_MAX, USERS_MAX, excerpt, excerpt_lines,
};
use crate::secret::Secret;
use crate::sim::faults::FaultPlan;
use crate::strategy::{self, Strategy};
use crate::supervision::policy::RestartPolicy;
use crate::trader::risk::RiskLimits;

/// The default config path, relative to the current directory.
pub const DEFAULT_CONFIG_PATH: &str = "config/bulwark.toml";

/// The shipped default config, compiled in.
pub const EMBEDDED_DEFAULT: &str = include_str!("../config/bulwark.toml");

/// Every config file bulwark ships, compiled in, by file name: the Healer restores a shipped file
/// that disappears while the server runs (CFG-MISSING) from these. They hold no secret (only the
/// names of the environment variables that do).
pub const SHIPPED_CONFIG_FILES: &[(&str, &str)] = &[
    ("bulwark.toml", EMBEDDED_DEFAULT),
    ("chaos.toml", include_str!("../config/chaos.toml")),
    ("fast-monitor.toml", include_str!("../config/fast-monitor.toml")),
    ("sim.toml", include_str!("../config/sim.toml")),
    ("sim-server.toml", include_str!("../config/sim-server.toml")),
];

/// The shipped content of a config file, by its file name.
pub fn shipped_config(path: &Path) -> Option<&'static str> {
    let name = path.file_name()?.to_str()?;
    SHIPPED_CONFIG_FILES.iter().find(|(shipped, _)| *shipped == name).map(|(_, text)| *text)
}

/// `Config::source_name` of the embedded default.
pub const EMBEDDED_SOURCE_NAME: &str = "embedded default";

/// One problem in a config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Where: `users[1].strategies[0].symbol`, or `(file)` for the file as a whole.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl std::error::Error for ConfigProblem {}

/// Every problem of a config that did not validate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    pub source_name: String,
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.problems.len();
        write!(f, "{}: {count} problem{}", self.source_name, if count == 1 { "" } else { "s" })?;
        for problem in &self.problems {
            write!(f, "\n  {problem}")?;
        }
        Ok(())
    }
}

/// `[server]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub log_dir: PathBuf,
    /// Records the durable outbox holds while the database refuses writes; beyond it new records
    /// are refused and entries halt (SYS-DATABASE).
    pub outbox_records_max: usize,
}

/// `[supervisor]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupervisorConfig {
    pub user_policy: RestartPolicy,
    pub shared_policy: RestartPolicy,
    pub status_interval: Duration,
    /// Arbiter threads the traders share.
    pub trader_threads: usize,
    /// Deadline of each shutdown step.
    pub shutdown_deadline: Duration,
}

/// `[exchange]`
#[derive(Debug, Clone)]
pub struct ExchangeConfig {
    pub recv_window_ms: i64,
    pub timeout: Duration,
    pub venue: VenueConfig,
}

#[derive(Debug, Clone)]
pub enum VenueConfig {
    Paper(PaperSettings),
    Binance(BinanceVenueConfig),
}

/// `[exchange] kind = "binance"`: a Binance USDⓈ-M Futures REST endpoint (production, demo, or a
/// local `bulwark sim`). Credentials are per user (`users[].api_key_env`, `api_secret_env`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinanceVenueConfig {
    pub base_url: Url,
    /// Until the exchange's own exchangeInfo says otherwise.
    pub weight_limit_per_minute: u32,
    /// How often market data checks the exchange clock for closed candles (no request is made
    /// unless one has closed).
    pub poll_interval: Duration,
    /// Whether each account's user data stream is followed (its decisions then read the account
    /// book it keeps, without a request).
    pub user_data_stream: bool,
    /// Whether closed candles come from the market kline streams (REST klines then only backfill
    /// what a connection missed) instead of a REST request after each close.
    pub market_stream: bool,
    /// Whether the market connections also follow each traded symbol's aggregate trades
    /// (`<symbol>@aggTrade`), from which each streamed candle gets its large-trade flow (the
    /// whale-CVD guard). Only with `market_stream`.
    pub trade_stream: bool,
    /// The WebSocket base: `<stream_url>/private/ws/<listenKey>` (`wss://fstream.binance.com` for
    /// production; by default the base URL's host with a `ws(s)` scheme).
    pub stream_url: Url,
    /// How often a listenKey is kept alive (Binance lets one lapse after 60 minutes).
    pub listen_key_keepalive: Duration,
    /// At most this many new stream connections a second over every account (one IP).
    pub stream_connects_per_second: u32,
    /// A stream connection is replaced after this long, the new one up first (Binance cuts at 24 h).
    pub stream_rotation: Duration,
    /// A stream connection that delivered nothing for this long is treated as down.
    pub stream_silence: Duration,
    /// The request weight a minute trader start-ups may take together (the rest is for the
    /// running traders): starts beyond it wait their turn.
    pub start_up_weight_per_minute: u32,
}

/// Binance's production streams for its production REST host; otherwise the REST host itself with a
/// `ws(s)` scheme (what `bulwark sim` serves).
fn default_stream_url(base_url: &Url) -> Option<Url> {
    if base_url.host_str() == Some("fapi.binance.com") {
        return Url::parse("wss://fstream.binance.com").ok();
    }
    let scheme = if base_url.scheme() == "https" { "wss" } else { "ws" };
    let mut url = base_url.clone();
    url.set_scheme(scheme).ok()?;
    url.set_path("");
    Some(url)
}

/// `[notify]`: where operators are told (Telegram Bot API and/or a JSON webhook). Read by the
/// Notifier actor. Secrets (the bot token) stay in the environment; only their variable names are
/// here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyConfig {
    /// Telegram: `sendMessage` at `<telegram_base_url>/bot<token>/sendMessage`.
    pub telegram: Option<TelegramConfig>,
    /// The environment variable holding a URL that receives every notification as a JSON POST
    /// (webhook URLs often carry a token, so the URL itself is treated as a secret).
    pub webhook_url_env: Option<String>,
    /// One message per dedup key per window; later ones are counted and reported after it.
    pub rate_window: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelegramConfig {
    pub base_url: Url,
    pub bot_token_env: String,
    pub chat_id_env: String,
}

/// `[intelligence]`: the CoinGlass v4 API (or `bulwark sim`'s copy of it). Read by the
/// Intelligence actor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntelligenceConfig {
    pub base_url: Url,
    /// The environment variable holding the `CG-API-KEY`.
    pub api_key_env: String,
}

/// `[http]`: the status API, dashboard and metrics (`crate::http`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// Where it listens; port 0 picks a free port (the URL is written to `<data_dir>/bulwark.http`).
    pub listen: SocketAddr,
    /// The environment variable holding the bearer token for admin requests (and for reads when
    /// `protect_reads`). Without it the admin endpoints are refused, and only a loopback address
    /// may be bound.
    pub token_env: Option<String>,
    pub protect_reads: bool,
    /// Largest request body accepted.
    pub body_limit_bytes: usize,
}

/// `[chaos]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChaosConfig {
    pub enabled: bool,
    pub panic_users: BTreeSet<UserId>,
    pub panic_every_decisions: u64,
    /// While this file exists (and chaos is enabled) the database refuses every write, as a
    /// read-only or failing disk would: the outbox's fault hook.
    pub database_fault_file: Option<PathBuf>,
}

/// `[[users.strategies]]`
#[derive(Debug, Clone)]
pub struct StrategyConfig {
    pub symbol: Symbol,
    pub timeframe: Timeframe,
    pub strategy: Arc<dyn Strategy>,
    pub position_size_usdt: Decimal,
}

/// `[[users]]`
#[derive(Debug, Clone)]
pub struct UserConfig {
    pub id: UserId,
    pub strategies: Vec<StrategyConfig>,
    /// Environment variables holding this user's exchange API key and secret (Binance only).
    pub api_key_env: Option<String>,
    pub api_secret_env: Option<String>,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it came from (a path, or "embedded default").
    pub source_name: String,
    pub server: ServerConfig,
    pub supervisor: SupervisorConfig,
    pub exchange: ExchangeConfig,
    pub risk: RiskLimits,
    pub chaos: ChaosConfig,
    pub users: Vec<UserConfig>,
    pub intelligence: Option<IntelligenceConfig>,
    pub monitor: MonitorConfig,
    pub healer: HealerConfig,
    /// The signal guards; `None` when `[guards] enabled = false`.
    pub guards: Option<GuardSettings>,
    /// `None`: no `[notify]` section (notifications are only logged).
    pub notify: Option<NotifyConfig>,
    /// `[breaker]`: the exchange's circuit breakers.
    pub breaker: crate::exchange::breaker::BreakerPolicy,
    /// `[retry]`: retries of idempotent exchange calls.
    pub retry: crate::exchange::retry::RetryPolicy,
    /// `[reconcile] interval_secs`: a periodic pass this often (`None`: only at start-up).
    pub reconcile_interval: Option<Duration>,
    /// `[reconcile] weight_per_minute`: the request weight periodic passes may spend, users taken
    /// in turn as far as each pass's share pays for.
    pub reconcile_weight_per_minute: u32,
    /// `None`: `[http] enabled = false`.
    pub http: Option<HttpConfig>,
}

/// `[healer]`: how often failing failure points are healed, and how hard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealerConfig {
    pub interval: Duration,
    /// A quarantined user is re-admitted once it has been quarantined this long.
    pub readmit_cooldown: Duration,
    /// Attempts of one action on one failure point within `budget_window`; beyond it the action
    /// is `skipped` (healing never loops).
    pub attempts_max: u32,
    pub budget_window: Duration,
}

/// `[monitor]`: how often every failure point is checked and the summary rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonitorConfig {
    pub interval: Duration,
    pub summary_interval: Duration,
    /// Request weight per minute the orphan check may spend listing users' open orders (one per
    /// user and symbol): every user is checked within `Σ symbols / this` minutes.
    pub orphan_check_weight_per_minute: u32,
}

impl Config {
    /// The file this config was read from; `None` for the embedded default.
    pub fn source_file(&self) -> Option<PathBuf> {
        (self.source_name != EMBEDDED_SOURCE_NAME).then(|| PathBuf::from(&self.source_name))
    }

    pub fn database_path(&self) -> PathBuf {
        self.server.data_dir.join("bulwark.db")
    }

    /// The durable outbox, beside the database (see `persistence::outbox`).
    pub fn outbox_path(&self) -> PathBuf {
        self.server.data_dir.join("bulwark.outbox")
    }

    pub fn paper_journal_path(&self) -> PathBuf {
        self.server.data_dir.join("paper_exchange.db")
    }

    /// How often market data checks for closed candles: four times per replayed candle on paper.
    pub fn market_poll_interval(&self) -> Duration {
        match &self.exchange.venue {
            VenueConfig::Paper(paper) => Duration::from_millis((paper.candle_interval_ms / 4).clamp(10, 1_000) as u64),
            VenueConfig::Binance(binance) => binance.poll_interval,
        }
    }
}

/// What a valid config does that its operator should hear of, though it runs: `check-config`
/// prints each after `config ok` (as `warning: ...`), `run` and a reload log them.
pub fn warnings(config: &Config) -> Vec<String> {
    let mut warnings = Vec::new();
    if config.guards.is_none() {
        warnings.push(
            "guards.enabled = false: no new kill switch or probation will be set and entries skip the signal guards \
             (locks already set still hold until they expire or are cleared; the [risk] limits still apply)"
                .to_owned(),
        );
    }
    warnings
}

/// Loads the config at `path`; with `None`, the default path, or the embedded default when no
/// file is there.
pub fn load(path: Option<&Path>) -> Result<Config, ConfigErrors> {
    let (path, explicit) = match path {
        Some(path) => (path.to_path_buf(), true),
        None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => parse(&text, &path.display().to_string()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound && !explicit => {
            parse(EMBEDDED_DEFAULT, EMBEDDED_SOURCE_NAME)
        }
        Err(error) => Err(ConfigErrors {
            source_name: path.display().to_string(),
            problems: vec![ConfigProblem { path: "(file)".to_owned(), message: format!("cannot read: {error}") }],
        }),
    }
}

/// Parses and validates config text. `source_name` names it in errors.
pub fn parse(text: &str, source_name: &str) -> Result<Config, ConfigErrors> {
    let fail = |problems| ConfigErrors { source_name: source_name.to_owned(), problems };
    let deserializer = toml::Deserializer::parse(text).map_err(|error| fail(vec![toml_problem(&error)]))?;
    let mut problems = Vec::new();
    let raw: RawConfig = serde_ignored::deserialize(deserializer, |path| {
        problems.push(ConfigProblem { path: format_path(&path), message: "unknown key".to_owned() });
    })
    .map_err(|error| {
        let mut all = problems.clone();
        all.push(toml_problem(&error));
        fail(all)
    })?;
    let mut validator = Validator { problems };
    let config = validator.config(raw, source_name);
    if validator.problems.is_empty() {
        Ok(config.expect("Invariant: no problems means a config"))
    } else {
        Err(fail(validator.problems))
    }
}

/// A TOML syntax or type error, with its line; every line of it bounded (the message quotes the
/// offending line and value, which may be a megabyte long).
fn toml_problem(error: &toml::de::Error) -> ConfigProblem {
    let message = excerpt_lines(error.to_string().trim());
    ConfigProblem { path: "(file)".to_owned(), message: message.replace('\n', "\n    ") }
}

/// `users[1].strategies[0].foo` from serde_ignored's path.
fn format_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", format_path(parent)),
        Path::Map { parent, key } => {
            let (parent, key) = (format_path(parent), excerpt(key));
            if parent.is_empty() { key.to_string() } else { format!("{parent}.{key}") }
        }
        Path::Some { parent } | Path::NewtypeStruct { parent } | Path::NewtypeVariant { parent } => format_path(parent),
    }
}

// ---------------------------------------------------------------------------------------------
// Raw structure: what the file may contain, with defaults. Numbers are read wide (i64, f64) so
// that a negative value is reported by validation with its path, not as a type error.

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawConfig {
    server: RawServer,
    supervisor: RawSupervisor,
    exchange: RawExchange,
    risk: RawRisk,
    chaos: RawChaos,
    users: Vec<RawUser>,
    intelligence: Option<RawIntelligence>,
    monitor: RawMonitor,
    healer: RawHealer,
    guards: RawGuards,
    notify: Option<RawNotify>,
    breaker: RawBreaker,
    retry: RawRetry,
    reconcile: RawReconcile,
    http: RawHttp,
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct RawHttp {
    enabled: bool,
    listen: String,
    token_env: Option<String>,
    protect_reads: bool,
    body_limit_bytes: i64,
}

impl Default for RawHttp {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: "127.0.0.1:8377".to_owned(),
            token_env: None,
            protect_reads: false,
            body_limit_bytes: 16 * 1024,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct RawReconcile {
    interval_secs: i64,
    weight_per_minute: i64,
}

impl Default for RawReconcile {
    fn default() -> Self {
        Self { interval_secs: 300, weight_per_minute: 240 }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct RawRetry {
    attempts_max: i64,
    backoff_ms_initial: i64,
    backoff_ms_max: i64,
}

impl Default for RawRetry {
    fn default() -> Self {
        let policy = crate::exchange::retry::RetryPolicy::default();
        Self {
            attempts_max: i64::from(policy.attempts_max),
            backoff_ms_initial: policy.backoff_ms_initial as i64,
            backoff_ms_max: policy.backoff_ms_max as i64,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct RawBreaker {
    failures_max: i64,
    within_secs: i64,
    open_secs: i64,
}

impl Default for RawBreaker {
    fn default() -> Self {
        Self { failures_max: 5, within_secs: 60, open_secs: 300 }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct RawNotify {
    telegram_bot_token_env: Option<String>,
    telegram_chat_id_env: Option<String>,
    telegram_base_url: String,
    webhook_url_env: Option<String>,
    rate_window_secs: i64,
}

impl Default for RawNotify {
    fn default() -> Self {
        Self {
            telegram_bot_token_env: None,
            telegram_chat_id_env: None,
            telegram_base_url: "https://api.telegram.org".to_owned(),
            webhook_url_env: None,
            rate_window_secs: 300,
        }
    }
}

/// `[guards]`: every threshold of `guards::GuardSettings` (defaults there).
#[derive(Debug, Deserialize)]
#[serde(default)]
struct RawGuards {
    enabled: bool,
    max_drawdown_pct: f64,
    drawdown_lookback_hours: f64,
    block_hours: f64,
    probation_losses: i64,
    probation_loss_pct: f64,
    probation_hours: f64,
    trading_hours_utc: Vec<String>,
    regime_candles: i64,
    regime_volatility_min_pct: f64,
    regime_volatility_max_pct: f64,
    fee_atr_candles: i64,
    fee_multiple: f64,
    taker_fee_bps: Option<f64>,
    min_signal_score: f64,
    power_rank_top_k: i64,
    power_rank_candles: i64,
    intel_window: i64,
    intel_age_secs_max: i64,
    whale_volume_multiple: f64,
    whale_cvd_share_max: f64,
    taker_window: i64,
    taker_ratio_long_min: f64,
    taker_ratio_short_max: f64,
    liquidation_leverage: f64,
    liquidation_wall_distance_pct: f64,
    liquidation_wall_share: f64,
    trap_lookback: i64,
    trap_volume_ratio_max: f64,
    trap_wick_share_min: f64,
}

impl Default for RawGuards {
    fn default() -> Self {
        let d = GuardSettings::default();
        Self {
            enabled: true,
            max_drawdown_pct: d.max_drawdown_pct,
            drawdown_lookback_hours: d.drawdown_lookback_hours,
            block_hours: d.block_hours,
            probation_losses: i64::from(d.probation_losses),
            probation_loss_pct: d.probation_loss_pct,
            probation_hours: d.probation_hours,
            trading_hours_utc: Vec::new(),
            regime_candles: d.regime_candles as i64,
            regime_volatility_min_pct: d.regime_volatility_min_pct,
            regime_volatility_max_pct: d.regime_volatility_max_pct,
            fee_atr_candles: d.fee_atr_candles as i64,
            fee_multiple: d.fee_multiple,
            taker_fee_bps: None,
            min_signal_score: d.min_signal_score,
            power_rank_top_k: d.power_rank_top_k as i64,
            power_rank_candles: d.power_rank_candles as i64,
            intel_window: d.intel_window as i64,
            intel_age_secs_max: d.intel_age_ms_max / 1_000,
            whale_volume_multiple: d.whale_volume_multiple,
            whale_cvd_share_max: d.whale_cvd_share_max,
            taker_window: d.taker_window as i64,
            taker_ratio_long_min: d.taker_ratio_long_min,
            taker_ratio_short_max: d.taker_ratio_short_max,
            liquidation_leverage: d.liquidation_leverage,
            liquidation_wall_distance_pct: d.liquidation_wall_distance_pct,
            liquidation_wall_share: d.liquidation_wall_share,
            trap_lookback: d.trap_lookback as i64,
            trap_volume_ratio_max: d.trap_volume_ratio_max,
            trap_wick_share_min: d.trap_wick_share_min,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct RawHealer {
    interval_secs: i64,
    readmit_cooldown_secs: i64,
    attempts_max: i64,
    budget_window_secs: i64,
}

impl Default for RawHealer {
    fn default() -> Self {
        Self { interval_secs: 300, readmit_cooldown_secs: 600, attempts_max: 3, budget_window_secs: 3_600 }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct RawMonitor {
    interval_secs: i64,
    summary_interval_secs: i64,
    orphan_check_weight_per_minute: i64,
}

impl Default for RawMonitor {
    fn default() -> Self {
        Self { interval_secs: 60, summary_interval_secs: 300, orphan_check_weight_per_minute: 120 }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct RawIntelligence {
    base_url: String,
    api_key_env: String,
}

impl Default for RawIntelligence {
    fn default() -> Self {
        Self { base_url: "https://open-api-v4.coinglass.com".to_owned(), api_key_env: String::new() }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct RawServer {
    data_dir: String,
    log_dir: String,
    outbox_records_max: i64,
}

impl Default for RawServer {
    fn default() -> Self {
        Self { data_dir: "data".to_owned(), log_dir: "logs".to_owned(), outbox_records_max: 100_000 }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct RawSupervisor {
    max_restarts: i64,
    within_secs: i64,
    backoff_ms_initial: i64,
    backoff_ms_max: i64,
    status_interval_secs: i64,
    shared_max_restarts: i64,
    shared_within_secs: i64,
    trader_threads: i64,
    shutdown_deadline_secs: i64,
}

impl Default for RawSupervisor {
    fn default() -> Self {
        Self {
            max_restarts: 3,
            within_secs: 60,
            backoff_ms_initial: 500,
            backoff_ms_max: 30_000,
            status_interval_secs: 10,
            shared_max_restarts: 2,
            shared_within_secs: 60,
            trader_threads: 0,
            shutdown_deadline_secs: 5,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct RawExchange {
    kind: String,
    recv_window_ms: i64,
    timeout_ms: i64,
    base_url: Option<String>,
    weight_limit_per_minute: i64,
    poll_interval_ms: i64,
    user_data_stream: bool,
    market_stream: bool,
    trade_stream: bool,
    stream_url: Option<String>,
    listen_key_keepalive_secs: i64,
    stream_connects_per_second: i64,
    stream_rotation_secs: i64,
    stream_silence_secs: i64,
    start_up_weight_per_minute: i64,
    paper: Option<RawPaper>,
}

impl Default for RawExchange {
    fn default() -> Self {
        Self {
            kind: "paper".to_owned(),
            recv_window_ms: 5_000,
            timeout_ms: 10_000,
            base_url: None,
            weight_limit_per_minute: 2_400,
            poll_interval_ms: 1_000,
            user_data_stream: true,
            market_stream: true,
            trade_stream: true,
            stream_url: None,
            listen_key_keepalive_secs: 1_800,
            stream_connects_per_second: 5,
            stream_rotation_secs: 84_600,
            stream_silence_secs: 60,
            start_up_weight_per_minute: 1_200,
            paper: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct RawPaper {
    /// `None`: not given (bulwark's paper default, or the simulator's `[sim] speed`).
    candle_interval_ms: Option<i64>,
    starting_balance_usdt: f64,
    taker_fee_bps: f64,
    slippage_bps: f64,
    leverage: f64,
    seed: i64,
    replay: Option<Vec<RawReplay>>,
    random_walk: Option<Vec<RawRandomWalk>>,
}

impl Default for RawPaper {
    fn default() -> Self {
        Self {
            candle_interval_ms: None,
            starting_balance_usdt: 10_000.0,
            taker_fee_bps: 4.0,
            slippage_bps: 1.0,
            leverage: 5.0,
            seed: 42,
            replay: None,
            random_walk: None,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawRules {
    tick_size: Option<f64>,
    step_size: Option<f64>,
    min_quantity: Option<f64>,
    min_notional: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawReplay {
    symbol: String,
    /// A recording compiled into the binary (see `data/replay/PROVENANCE.md`).
    dataset: Option<String>,
    /// A recording on disk, relative to the current directory.
    file: Option<String>,
    #[serde(flatten)]
    rules: RawRules,
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct RawRandomWalk {
    symbol: String,
    start_price: f64,
    volatility_pct: f64,
    mean_reversion: f64,
    base_volume: f64,
    #[serde(flatten)]
    rules: RawRules,
}

impl Default for RawRandomWalk {
    fn default() -> Self {
        Self {
            symbol: String::new(),
            start_price: 0.0,
            volatility_pct: 0.3,
            mean_reversion: 0.001,
            base_volume: 100.0,
            rules: RawRules::default(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct RawRisk {
    max_open_positions: i64,
    max_position_notional_usdt: f64,
}

impl Default for RawRisk {
    fn default() -> Self {
        Self { max_open_positions: 3, max_position_notional_usdt: 5_000.0 }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct RawChaos {
    enabled: bool,
    panic_users: Vec<String>,
    panic_every_decisions: i64,
    database_fault_file: Option<String>,
}

impl Default for RawChaos {
    fn default() -> Self {
        Self { enabled: false, panic_users: Vec::new(), panic_every_decisions: 3, database_fault_file: None }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawUser {
    id: String,
    paper_balance_usdt: Option<f64>,
    api_key_env: Option<String>,
    api_secret_env: Option<String>,
    strategies: Vec<RawStrategy>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawStrategy {
    symbol: String,
    timeframe: String,
    strategy: String,
    params: BTreeMap<String, toml::Value>,
    position_size_usdt: f64,
}

// ---------------------------------------------------------------------------------------------
// Validation.

/// What strategies can be validated against: the paper exchange's symbols, or (Binance) only the
/// symbol format; the server checks Binance symbols against exchangeInfo when it starts.
enum Venue {
    Paper(BTreeSet<Symbol>),
    Binance,
}

struct Validator {
    problems: Vec<ConfigProblem>,
}

/// The range of a config number that becomes a [`Decimal`] (see [`Validator::decimal_in`]).
#[derive(Debug, Clone, Copy)]
struct DecimalRange {
    min: f64,
    max: f64,
}

/// The smallest non-zero amount, price or quantity bulwark keeps: an exchange's finest unit (a
/// satoshi, Binance's eighth decimal). A smaller one would round to 0 somewhere on its way.
const SMALLEST_UNIT: f64 = 1e-8;

/// USDT amounts: position sizes, the notional limit, balances. From a cent to a trillion USDT:
/// more than any account holds, and far inside what a [`Decimal`] holds (7.9e28).
const USDT_AMOUNT_RANGE: DecimalRange = DecimalRange { min: 0.01, max: 1e12 };

/// Prices and a symbol's rules (tick size, step size, minimum quantity, minimum notional): from
/// the smallest unit to a billion.
const PRICE_RANGE: DecimalRange = DecimalRange { min: SMALLEST_UNIT, max: 1e9 };

/// A random walk's base volume per candle, in base-asset units.
const VOLUME_RANGE: DecimalRange = DecimalRange { min: SMALLEST_UNIT, max: 1e15 };

/// Stands in for a refused number so validation goes on and names every other problem. A config
/// with any problem is refused whole, so a placeholder never runs.
const REFUSED_PLACEHOLDER: Decimal = Decimal::ONE;

/// A number as a problem names it: plain (`5000`, `0.25`), or in exponent form when very large or
/// very small (`1e30`, `1e-30`), so that `1e300` is not 301 digits.
fn number(value: f64) -> String {
    if value.is_finite() && value != 0.0 && !(1e-6..1e9).contains(&value.abs()) {
        format!("{value:e}")
    } else {
        format!("{value}")
    }
}

impl Validator {
    fn problem(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(ConfigProblem { path: path.into(), message: message.into() });
    }

    fn int_in(&mut self, path: &str, value: i64, min: i64, max: i64) -> i64 {
        if value < min || value > max {
            self.problem(path, format!("must be from {min} to {max}, got {value}"));
            return min.max(0);
        }
        value
    }

    fn real_in(&mut self, path: &str, value: f64, min: f64, max: f64) -> f64 {
        if !(value.is_finite() && value >= min && value <= max) {
            self.problem(path, format!("must be from {} to {}, got {}", number(min), number(max), number(value)));
            return min;
        }
        value
    }

    /// A config number that becomes a [`Decimal`]: the one conversion from the file's floats to
    /// money. Refused, naming path, range and value, when it is not finite, outside the range, not
    /// zero but below [`SMALLEST_UNIT`] (it would round to 0), or not kept by the conversion.
    /// Never a silent default: `None` means a problem was recorded.
    fn decimal_in(&mut self, path: &str, value: f64, range: DecimalRange) -> Option<Decimal> {
        let DecimalRange { min, max } = range;
        if !(value.is_finite() && value >= min && value <= max) {
            self.problem(path, format!("must be from {} to {}, got {}", number(min), number(max), number(value)));
            return None;
        }
        if value != 0.0 && value.abs() < SMALLEST_UNIT {
            self.problem(
                path,
                format!(
                    "{} is below the smallest unit bulwark keeps ({}): it would round to 0",
                    number(value),
                    number(SMALLEST_UNIT)
                ),
            );
            return None;
        }
        let kept = Decimal::from_f64(value).filter(|decimal| {
            let back = decimal.to_f64().unwrap_or(f64::NAN);
            (back - value).abs() <= value.abs() * 1e-12
        });
        if kept.is_none() {
            self.problem(path, format!("{} cannot be held exactly as a decimal", number(value)));
        }
        kept
    }

    /// A kill switch or probation setting: greater than 0 and at most `max` (below it, with
    /// `max_exclusive`). A value that would keep the lock from ever being set, or let it expire the
    /// moment it is set, turns the guard off without a word: refused, with `when_zero` or
    /// `when_max` saying so.
    fn lock_setting(
        &mut self,
        path: &str,
        value: f64,
        (max, max_exclusive): (f64, bool),
        when_zero: Option<&str>,
        when_max: Option<&str>,
    ) -> f64 {
        let above = if max_exclusive { value >= max } else { value > max };
        if value.is_finite() && value > 0.0 && !above {
            return value;
        }
        let bound = if max_exclusive { "less than" } else { "at most" };
        let mut message = format!("must be greater than 0 and {bound} {}, got {}", number(max), number(value));
        let why = if value <= 0.0 {
            when_zero
        } else if value >= max {
            when_max
        } else {
            None
        };
        if let Some(why) = why {
            message.push_str(": ");
            message.push_str(why);
        }
        self.problem(path, message);
        max / 2.0
    }

    fn config(&mut self, raw: RawConfig, source_name: &str) -> Option<Config> {
        let server = self.server(raw.server);
        let supervisor = self.supervisor(raw.supervisor);
        let risk = self.risk(raw.risk);
        let balances = self.user_balances(&raw.users);
        let binance = raw.exchange.kind == "binance";
        let exchange = self.exchange(raw.exchange, balances);
        let venue = match &exchange.venue {
            _ if binance => Venue::Binance,
            VenueConfig::Paper(paper) => Venue::Paper(paper.symbols.iter().map(|s| s.symbol.clone()).collect()),
            VenueConfig::Binance(_) => Venue::Binance,
        };
        let users = self.users(raw.users, &venue, risk);
        let chaos = self.chaos(raw.chaos, &users);
        let intelligence = raw.intelligence.map(|raw| self.intelligence(raw));
        let monitor = MonitorConfig {
            interval: Duration::from_secs(
                self.int_in("monitor.interval_secs", raw.monitor.interval_secs, 1, 3_600) as u64
            ),
            summary_interval: Duration::from_secs(self.int_in(
                "monitor.summary_interval_secs",
                raw.monitor.summary_interval_secs,
                1,
                86_400,
            ) as u64),
            orphan_check_weight_per_minute: self.int_in(
                "monitor.orphan_check_weight_per_minute",
                raw.monitor.orphan_check_weight_per_minute,
                1,
                100_000,
            ) as u32,
        };
        let secs = |validator: &mut Self, path: &str, value: i64, min: i64, max: i64| {
            Duration::from_secs(validator.int_in(path, value, min, max) as u64)
        };
        let healer = HealerConfig {
            interval: secs(self, "healer.interval_secs", raw.healer.interval_secs, 1, 86_400),
            readmit_cooldown: secs(self, "healer.readmit_cooldown_secs", raw.healer.readmit_cooldown_secs, 0, 604_800),
            attempts_max: self.int_in("healer.attempts_max", raw.healer.attempts_max, 1, 100) as u32,
            budget_window: secs(self, "healer.budget_window_secs", raw.healer.budget_window_secs, 1, 604_800),
        };
        let venue_fee_bps = match &exchange.venue {
            VenueConfig::Paper(paper) => paper.venue.taker_fee_rate.to_f64().map(|rate| rate * 10_000.0),
            VenueConfig::Binance(_) => None,
        };
        let guards = self.guards(raw.guards, venue_fee_bps);
        let notify = raw.notify.map(|raw| self.notify(raw));
        let breaker = crate::exchange::breaker::BreakerPolicy {
            failures_max: self.int_in("breaker.failures_max", raw.breaker.failures_max, 1, 1_000) as u32,
            window_ms: self.int_in("breaker.within_secs", raw.breaker.within_secs, 1, 86_400) * 1_000,
            open_ms: self.int_in("breaker.open_secs", raw.breaker.open_secs, 1, 86_400) * 1_000,
        };
        let reconcile_secs = self.int_in("reconcile.interval_secs", raw.reconcile.interval_secs, 0, 86_400);
        let reconcile_interval = (reconcile_secs > 0).then(|| Duration::from_secs(reconcile_secs as u64));
        let reconcile_weight_per_minute =
            self.int_in("reconcile.weight_per_minute", raw.reconcile.weight_per_minute, 1, 100_000) as u32;
        let retry = crate::exchange::retry::RetryPolicy {
            attempts_max: self.int_in("retry.attempts_max", raw.retry.attempts_max, 1, 20) as u32,
            backoff_ms_initial: self.int_in("retry.backoff_ms_initial", raw.retry.backoff_ms_initial, 0, 600_000)
                as u64,
            backoff_ms_max: self.int_in("retry.backoff_ms_max", raw.retry.backoff_ms_max, 0, 3_600_000) as u64,
        };
        if retry.backoff_ms_max < retry.backoff_ms_initial {
            self.problem(
                "retry.backoff_ms_max",
                format!(
                    "must be at least backoff_ms_initial ({}), got {}",
                    retry.backoff_ms_initial, retry.backoff_ms_max
                ),
            );
        }
        let http = raw.http.enabled.then(|| self.http(raw.http)).flatten();
        Some(Config {
            source_name: source_name.to_owned(),
            server,
            supervisor,
            exchange,
            risk,
            chaos,
            users,
            intelligence,
            monitor,
            healer,
            guards,
            notify,
            breaker,
            retry,
            reconcile_interval,
            reconcile_weight_per_minute,
            http,
        })
    }

    fn http(&mut self, raw: RawHttp) -> Option<HttpConfig> {
        let token_env = raw.token_env.as_deref().and_then(|name| self.env_name("http.token_env", Some(name), true));
        let body_limit_bytes =
            self.int_in("http.body_limit_bytes", raw.body_limit_bytes, 256, 16 * 1024 * 1024) as usize;
        let listen: SocketAddr = match raw.listen.parse() {
            Ok(listen) => listen,
            Err(_) => {
                self.problem(
                    "http.listen",
                    format!("{:?} is not an address and port like \"127.0.0.1:8377\"", excerpt(&raw.listen)),
                );
                return None;
            }
        };
        if !listen.ip().is_loopback() && token_env.is_none() {
            self.problem(
                "http.listen",
                format!("{listen} is reachable from other machines: set http.token_env (a bearer token) or listen on 127.0.0.1"),
            );
        }
        if raw.protect_reads && token_env.is_none() {
            self.problem("http.protect_reads", "needs http.token_env");
        }
        Some(HttpConfig { listen, token_env, protect_reads: raw.protect_reads, body_limit_bytes })
    }

    fn guards(&mut self, raw: RawGuards, venue_fee_bps: Option<f64>) -> Option<GuardSettings> {
        let max_drawdown_pct = self.lock_setting(
            "guards.max_drawdown_pct",
            raw.max_drawdown_pct,
            (100.0, true),
            None,
            Some("equity falls 100 % below its peak only once the account is empty, so the kill switch would never trip in time (it would be off)"),
        );
        let drawdown_lookback_hours = self.lock_setting(
            "guards.drawdown_lookback_hours",
            raw.drawdown_lookback_hours,
            (24.0 * 90.0, false),
            Some("with no look-back there is no peak to fall from, so the kill switch would never trip (it would be off)"),
            None,
        );
        let block_hours = self.lock_setting(
            "guards.block_hours",
            raw.block_hours,
            (24.0 * 30.0, false),
            Some("a kill switch that lasts 0 hours expires the instant it is set (it would be off)"),
            None,
        );
        let probation_hours = self.lock_setting(
            "guards.probation_hours",
            raw.probation_hours,
            (24.0 * 30.0, false),
            Some("a probation that lasts 0 hours expires the instant it is set (it would be off)"),
            None,
        );
        let mut real =
            |name: &str, value: f64, min: f64, max: f64| self.real_in(&format!("guards.{name}"), value, min, max);
        let probation_loss_pct = real("probation_loss_pct", raw.probation_loss_pct, 0.001, 100.0);
        let regime_volatility_min_pct = real("regime_volatility_min_pct", raw.regime_volatility_min_pct, 0.0, 100.0);
        let regime_volatility_max_pct = real("regime_volatility_max_pct", raw.regime_volatility_max_pct, 0.0, 100.0);
        let fee_multiple = real("fee_multiple", raw.fee_multiple, 0.0, 100.0);
        let taker_fee_bps = match raw.taker_fee_bps {
            Some(bps) => real("taker_fee_bps", bps, 0.0, 100.0),
            None => venue_fee_bps.unwrap_or(GuardSettings::default().taker_fee_bps),
        };
        let min_signal_score = real("min_signal_score", raw.min_signal_score, 0.0, 1.0);
        let whale_volume_multiple = real("whale_volume_multiple", raw.whale_volume_multiple, 1.0, 100.0);
        let whale_cvd_share_max = real("whale_cvd_share_max", raw.whale_cvd_share_max, 0.0, 1.0);
        let taker_ratio_long_min = real("taker_ratio_long_min", raw.taker_ratio_long_min, 0.0, 100.0);
        let taker_ratio_short_max = real("taker_ratio_short_max", raw.taker_ratio_short_max, 0.0, 100.0);
        let liquidation_leverage = real("liquidation_leverage", raw.liquidation_leverage, 1.0, 125.0);
        let liquidation_wall_distance_pct =
            real("liquidation_wall_distance_pct", raw.liquidation_wall_distance_pct, 0.0, 100.0);
        let liquidation_wall_share = real("liquidation_wall_share", raw.liquidation_wall_share, 0.0, 1.0);
        let trap_volume_ratio_max = real("trap_volume_ratio_max", raw.trap_volume_ratio_max, 0.0, 100.0);
        let trap_wick_share_min = real("trap_wick_share_min", raw.trap_wick_share_min, 0.0, 1.0);
        if regime_volatility_min_pct > regime_volatility_max_pct {
            self.problem("guards.regime_volatility_min_pct", "must not be above regime_volatility_max_pct");
        }
        let window = CANDLE_WINDOW_LEN as i64 - 1;
        let mut count =
            |name: &str, value: i64, min: i64, max: i64| self.int_in(&format!("guards.{name}"), value, min, max);
        let probation_losses = count("probation_losses", raw.probation_losses, 1, 1_000) as u32;
        let regime_candles = count("regime_candles", raw.regime_candles, 2, window) as usize;
        let fee_atr_candles = count("fee_atr_candles", raw.fee_atr_candles, 1, window) as usize;
        let power_rank_top_k = count("power_rank_top_k", raw.power_rank_top_k, 1, 1_000) as usize;
        let power_rank_candles = count("power_rank_candles", raw.power_rank_candles, 1, window) as usize;
        let intel_window = count("intel_window", raw.intel_window, 1, 60) as usize;
        let intel_age_ms_max = count("intel_age_secs_max", raw.intel_age_secs_max, 1, 86_400) * 1_000;
        let taker_window = count("taker_window", raw.taker_window, 1, 60) as usize;
        let trap_lookback = count("trap_lookback", raw.trap_lookback, 1, window) as usize;
        let mut trading_hours_utc = Vec::new();
        for (index, text) in raw.trading_hours_utc.iter().enumerate() {
            match crate::guards::HoursWindow::parse(text) {
                Ok(window) => trading_hours_utc.push(window),
                Err(why) => self.problem(format!("guards.trading_hours_utc[{index}]"), why),
            }
        }
        raw.enabled.then_some(GuardSettings {
            max_drawdown_pct,
            drawdown_lookback_hours,
            block_hours,
            probation_losses,
            probation_loss_pct,
            probation_hours,
            trading_hours_utc,
            regime_candles,
            regime_volatility_min_pct,
            regime_volatility_max_pct,
            fee_atr_candles,
            fee_multiple,
            taker_fee_bps,
            min_signal_score,
            power_rank_top_k,
            power_rank_candles,
            intel_window,
            intel_age_ms_max,
            whale_volume_multiple,
            whale_cvd_share_max,
            taker_window,
            taker_ratio_long_min,
            taker_ratio_short_max,
            liquidation_leverage,
            liquidation_wall_distance_pct,
            liquidation_wall_share,
            trap_lookback,
            trap_volume_ratio_max,
            trap_wick_share_min,
        })
    }

    fn server(&mut self, raw: RawServer) -> ServerConfig {
        for (path, value) in [("server.data_dir", &raw.data_dir), ("server.log_dir", &raw.log_dir)] {
            if value.trim().is_empty() {
                self.problem(path, "must not be empty");
            }
        }
        let outbox_records_max =
            self.int_in("server.outbox_records_max", raw.outbox_records_max, 10, 10_000_000) as usize;
        ServerConfig { data_dir: PathBuf::from(raw.data_dir), log_dir: PathBuf::from(raw.log_dir), outbox_records_max }
    }

    fn supervisor(&mut self, raw: RawSupervisor) -> SupervisorConfig {
        let max_restarts = self.int_in("supervisor.max_restarts", raw.max_restarts, 0, 1_000) as u32;
        let within_secs = self.int_in("supervisor.within_secs", raw.within_secs, 1, 86_400);
        let backoff_ms_initial =
            self.int_in("supervisor.backoff_ms_initial", raw.backoff_ms_initial, 1, 3_600_000) as u64;
        let backoff_ms_max = self.int_in("supervisor.backoff_ms_max", raw.backoff_ms_max, 1, 3_600_000) as u64;
        if backoff_ms_max < backoff_ms_initial {
            self.problem(
                "supervisor.backoff_ms_max",
                format!("must be at least backoff_ms_initial ({backoff_ms_initial}), got {backoff_ms_max}"),
            );
        }
        let status_interval_secs = self.int_in("supervisor.status_interval_secs", raw.status_interval_secs, 1, 3_600);
        let shared_max_restarts = self.int_in("supervisor.shared_max_restarts", raw.shared_max_restarts, 0, 100) as u32;
        let shared_within_secs = self.int_in("supervisor.shared_within_secs", raw.shared_within_secs, 1, 86_400);
        let trader_threads = self.int_in("supervisor.trader_threads", raw.trader_threads, 0, 64) as usize;
        let shutdown_deadline_secs =
            self.int_in("supervisor.shutdown_deadline_secs", raw.shutdown_deadline_secs, 1, 300);
        let trader_threads = if trader_threads == 0 {
            std::thread::available_parallelism().map(usize::from).unwrap_or(2)
        } else {
            trader_threads
        };
        SupervisorConfig {
            user_policy: RestartPolicy {
                max_restarts,
                within_ms: within_secs * 1_000,
                backoff_ms_initial,
                backoff_ms_max,
            },
            shared_policy: RestartPolicy {
                max_restarts: shared_max_restarts,
                within_ms: shared_within_secs * 1_000,
                backoff_ms_initial,
                backoff_ms_max,
            },
            status_interval: Duration::from_secs(status_interval_secs as u64),
            trader_threads,
            shutdown_deadline: Duration::from_secs(shutdown_deadline_secs as u64),
        }
    }

    fn risk(&mut self, raw: RawRisk) -> RiskLimits {
        let max_position_notional_usdt = self
            .decimal_in("risk.max_position_notional_usdt", raw.max_position_notional_usdt, USDT_AMOUNT_RANGE)
            // A refused limit: no position size is also named as exceeding it.
            .unwrap_or(Decimal::MAX);
        RiskLimits {
            max_open_positions: self.int_in("risk.max_open_positions", raw.max_open_positions, 1, 1_000) as u32,
            max_position_notional_usdt,
        }
    }

    /// Per-user paper balances, read before the users themselves (the venue needs them).
    fn user_balances(&mut self, users: &[RawUser]) -> BTreeMap<UserId, Decimal> {
        let mut balances = BTreeMap::new();
        for (index, user) in users.iter().enumerate() {
            if let (Ok(id), Some(balance)) = (UserId::new(&user.id), user.paper_balance_usdt) {
                let path = format!("users[{index}].paper_balance_usdt");
                let balance = self.decimal_in(&path, balance, USDT_AMOUNT_RANGE).unwrap_or(REFUSED_PLACEHOLDER);
                balances.insert(id, balance);
            }
        }
        balances
    }

    fn exchange(&mut self, raw: RawExchange, balances: BTreeMap<UserId, Decimal>) -> ExchangeConfig {
        let recv_window_ms = self.int_in("exchange.recv_window_ms", raw.recv_window_ms, 1, 60_000);
        let timeout_ms = self.int_in("exchange.timeout_ms", raw.timeout_ms, 100, 120_000);
        let venue = match raw.kind.as_str() {
            "binance" => {
                let base_url = match raw.base_url.as_deref() {
                    Some(url) => self.url("exchange.base_url", url),
                    None => {
                        self.problem(
                            "exchange.base_url",
                            "required for kind = \"binance\" (e.g. \"https://fapi.binance.com\")",
                        );
                        None
                    }
                };
                let weight_limit_per_minute =
                    self.int_in("exchange.weight_limit_per_minute", raw.weight_limit_per_minute, 1, 1_000_000) as u32;
                let poll_interval_ms = self.int_in("exchange.poll_interval_ms", raw.poll_interval_ms, 10, 60_000);
                let poll_interval = Duration::from_millis(poll_interval_ms as u64);
                let keepalive_secs =
                    self.int_in("exchange.listen_key_keepalive_secs", raw.listen_key_keepalive_secs, 1, 3_300);
                let stream_connects_per_second =
                    self.int_in("exchange.stream_connects_per_second", raw.stream_connects_per_second, 1, 1_000) as u32;
                let stream_rotation_secs =
                    self.int_in("exchange.stream_rotation_secs", raw.stream_rotation_secs, 1, 86_000);
                let stream_silence_secs = self.int_in("exchange.stream_silence_secs", raw.stream_silence_secs, 1, 600);
                let start_up_weight_per_minute =
                    self.int_in("exchange.start_up_weight_per_minute", raw.start_up_weight_per_minute, 1, 1_000_000)
                        as u32;
                let stream_url = match raw.stream_url.as_deref() {
                    Some(url) => self.stream_url("exchange.stream_url", url),
                    None => base_url.as_ref().and_then(default_stream_url),
                };
                base_url.zip(stream_url).map(|(base_url, stream_url)| {
                    VenueConfig::Binance(BinanceVenueConfig {
                        base_url,
                        weight_limit_per_minute,
                        poll_interval,
                        user_data_stream: raw.user_data_stream,
                        market_stream: raw.market_stream,
                        trade_stream: raw.trade_stream,
                        stream_url,
                        listen_key_keepalive: Duration::from_secs(keepalive_secs as u64),
                        stream_connects_per_second,
                        stream_rotation: Duration::from_secs(stream_rotation_secs as u64),
                        stream_silence: Duration::from_secs(stream_silence_secs as u64),
                        start_up_weight_per_minute,
                    })
                })
            }
            kind => {
                if kind != "paper" {
                    self.problem(
                        "exchange.kind",
                        format!("unknown exchange kind {:?} (expected \"paper\" or \"binance\")", excerpt(kind)),
                    );
                }
                Some(VenueConfig::Paper(self.paper(raw.paper.unwrap_or_default(), recv_window_ms, balances)))
            }
        };
        let venue = venue
            .unwrap_or_else(|| VenueConfig::Paper(self.paper(RawPaper::default(), recv_window_ms, BTreeMap::new())));
        ExchangeConfig { recv_window_ms, timeout: Duration::from_millis(timeout_ms as u64), venue }
    }

    fn stream_url(&mut self, path: &str, value: &str) -> Option<Url> {
        self.url_with_scheme(path, value, ["ws", "wss"], "ws(s)")
    }

    fn url(&mut self, path: &str, value: &str) -> Option<Url> {
        self.url_with_scheme(path, value, ["http", "https"], "http(s)")
    }

    /// `value` as a URL with a host and one of `schemes` (named `kind` in the problem otherwise).
    fn url_with_scheme(&mut self, path: &str, value: &str, schemes: [&str; 2], kind: &str) -> Option<Url> {
        match Url::parse(value) {
            Ok(url) if schemes.contains(&url.scheme()) && url.host().is_some() => Some(url),
            Ok(_) => {
                let article = if kind.starts_with('h') { "an" } else { "a" };
                self.problem(path, format!("{:?} is not {article} {kind} URL", excerpt(value)));
                None
            }
            Err(error) => {
                self.problem(path, format!("{:?} is not a URL: {error}", excerpt(value)));
                None
            }
        }
    }

    /// An environment variable's name (never its value).
    fn env_name(&mut self, path: &str, value: Option<&str>, required: bool) -> Option<String> {
        let Some(value) = value else {
            if required {
                self.problem(path, "required for exchange.kind = \"binance\" (the name of an environment variable)");
            }
            return None;
        };
        let valid = !value.is_empty()
            && value.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if valid {
            Some(value.to_owned())
        } else {
            // Not echoed: a value pasted here by mistake may be the secret itself.
            self.problem(
                path,
                format!(
                    "is not an environment variable name ({} characters; letters, digits and _ only, not starting with a digit)",
                    value.chars().count()
                ),
            );
            None
        }
    }

    fn notify(&mut self, raw: RawNotify) -> NotifyConfig {
        let telegram = match (&raw.telegram_bot_token_env, &raw.telegram_chat_id_env) {
            (None, None) => None,
            (token, chat) => {
                let bot_token_env = self.env_name("notify.telegram_bot_token_env", token.as_deref(), true);
                let chat_id_env = self.env_name("notify.telegram_chat_id_env", chat.as_deref(), true);
                let base_url = self.url("notify.telegram_base_url", &raw.telegram_base_url);
                match (bot_token_env, chat_id_env, base_url) {
                    (Some(bot_token_env), Some(chat_id_env), Some(base_url)) => {
                        Some(TelegramConfig { base_url, bot_token_env, chat_id_env })
                    }
                    _ => None,
                }
            }
        };
        let webhook_url_env =
            raw.webhook_url_env.as_deref().and_then(|name| self.env_name("notify.webhook_url_env", Some(name), true));
        let rate_window =
            Duration::from_secs(self.int_in("notify.rate_window_secs", raw.rate_window_secs, 1, 86_400) as u64);
        if raw.telegram_bot_token_env.is_none() && raw.telegram_chat_id_env.is_none() && raw.webhook_url_env.is_none() {
            self.problem(
                "notify",
                "names no destination (telegram_bot_token_env and telegram_chat_id_env, or webhook_url_env)",
            );
        }
        NotifyConfig { telegram, webhook_url_env, rate_window }
    }

    fn intelligence(&mut self, raw: RawIntelligence) -> IntelligenceConfig {
        let base_url = self
            .url("intelligence.base_url", &raw.base_url)
            .unwrap_or_else(|| Url::parse("https://open-api-v4.coinglass.com").expect("a valid URL"));
        if raw.api_key_env.is_empty() {
            self.problem(
                "intelligence.api_key_env",
                "required (the name of the environment variable holding the CG-API-KEY)",
            );
        }
        let api_key_env = self.env_name("intelligence.api_key_env", Some(&raw.api_key_env), false).unwrap_or_default();
        IntelligenceConfig { base_url, api_key_env }
    }

    fn paper(
        &mut self,
        raw: RawPaper,
        recv_window_ms: i64,
        account_balances: BTreeMap<UserId, Decimal>,
    ) -> PaperSettings {
        let prefix = "exchange.paper";
        let candle_interval_ms = self.int_in(
            &format!("{prefix}.candle_interval_ms"),
            raw.candle_interval_ms.unwrap_or(PAPER_CANDLE_INTERVAL_MS_DEFAULT),
            10,
            3_600_000,
        );
        let default_balance = self
            .decimal_in(&format!("{prefix}.starting_balance_usdt"), raw.starting_balance_usdt, USDT_AMOUNT_RANGE)
            .unwrap_or(REFUSED_PLACEHOLDER);
        let mut rate_of_bps = |name: &str, value: f64, max: f64| {
            let bps = self.decimal_in(&format!("{prefix}.{name}"), value, DecimalRange { min: 0.0, max });
            bps.map_or(Decimal::ZERO, |bps| bps / Decimal::from(10_000))
        };
        let taker_fee_rate = rate_of_bps("taker_fee_bps", raw.taker_fee_bps, 100.0);
        let slippage_rate = rate_of_bps("slippage_bps", raw.slippage_bps, 500.0);
        let leverage = self
            .decimal_in(&format!("{prefix}.leverage"), raw.leverage, DecimalRange { min: 1.0, max: 125.0 })
            .unwrap_or(REFUSED_PLACEHOLDER);
        if raw.seed < 0 {
            self.problem(format!("{prefix}.seed"), format!("must not be negative, got {}", raw.seed));
        }
        let (replay, random_walk) = match (raw.replay, raw.random_walk) {
            (None, None) => default_paper_symbols(),
            (replay, random_walk) => (replay.unwrap_or_default(), random_walk.unwrap_or_default()),
        };
        let mut symbols: Vec<PaperSymbol> = Vec::new();
        let mut seen = BTreeSet::new();
        for (index, replay) in replay.into_iter().enumerate() {
            let path = format!("{prefix}.replay[{index}]");
            if let Some(symbol) = self.replay_symbol(&path, replay)
                && self.unique_symbol(&path, &symbol.symbol, &mut seen)
            {
                symbols.push(symbol);
            }
        }
        for (index, walk) in random_walk.into_iter().enumerate() {
            let path = format!("{prefix}.random_walk[{index}]");
            if let Some(symbol) = self.walk_symbol(&path, walk)
                && self.unique_symbol(&path, &symbol.symbol, &mut seen)
            {
                symbols.push(symbol);
            }
        }
        if symbols.is_empty() {
            self.problem(
                prefix,
                "no tradable symbols (add [[exchange.paper.replay]] or [[exchange.paper.random_walk]])",
            );
        }
        PaperSettings {
            candle_interval_ms,
            seed: raw.seed.max(0) as u64,
            venue: VenueSettings {
                taker_fee_rate,
                slippage_rate,
                leverage,
                recv_window_ms,
                default_balance,
                account_balances,
            },
            symbols,
        }
    }

    fn unique_symbol(&mut self, path: &str, symbol: &Symbol, seen: &mut BTreeSet<Symbol>) -> bool {
        if seen.insert(symbol.clone()) {
            return true;
        }
        self.problem(format!("{path}.symbol"), format!("{symbol} is configured twice"));
        false
    }

    fn symbol(&mut self, path: &str, value: &str) -> Option<Symbol> {
        match Symbol::new(value) {
            Ok(symbol) => Some(symbol),
            Err(error) => {
                self.problem(path, error.to_string());
                None
            }
        }
    }

    fn rules(&mut self, path: &str, raw: &RawRules, reference_price: f64) -> SymbolRules {
        // Defaults follow Binance's habits for a price of this size: ticks of 1e-5 of the price,
        // steps of about a hundredth of a unit of notional, 5 USDT minimum notional.
        let magnitude = reference_price.max(f64::MIN_POSITIVE).log10().floor();
        let default_tick = 10_f64.powf(magnitude - 4.0);
        let default_step = 10_f64.powf(-1.0 - (magnitude / 2.0).floor().max(0.0));
        let mut value = |name: &str, given: Option<f64>, default: f64| -> Decimal {
            let path = format!("{path}.{name}");
            let value = match given {
                Some(given) => self.decimal_in(&path, given, PRICE_RANGE),
                None if (PRICE_RANGE.min..=PRICE_RANGE.max).contains(&default) => {
                    self.decimal_in(&path, default, PRICE_RANGE).map(|default| default.normalize())
                }
                None => {
                    let message = format!(
                        "not set, and its default for a price of {} would be {}, outside {} to {}: set it",
                        number(reference_price),
                        number(default),
                        number(PRICE_RANGE.min),
                        number(PRICE_RANGE.max)
                    );
                    self.problem(path, message);
                    None
                }
            };
            value.unwrap_or(REFUSED_PLACEHOLDER)
        };
        let tick_size = value("tick_size", raw.tick_size, default_tick);
        let step_size = value("step_size", raw.step_size, default_step);
        let min_quantity = value("min_quantity", raw.min_quantity, crate::domain::decimal_to_f64(step_size));
        let min_notional = value("min_notional", raw.min_notional, 5.0);
        SymbolRules { tick_size, step_size, min_quantity, min_notional }
    }

    fn replay_symbol(&mut self, path: &str, raw: RawReplay) -> Option<PaperSymbol> {
        let symbol = self.symbol(&format!("{path}.symbol"), &raw.symbol);
        let loaded = match (&raw.dataset, &raw.file) {
            (Some(dataset), None) => match embedded_dataset(dataset) {
                Some(bytes) => parse_replay(dataset, bytes).map_err(|e| (format!("{path}.dataset"), e.to_string())),
                None => {
                    let known: Vec<&str> =
                        crate::exchange::paper::EMBEDDED_DATASETS.iter().map(|(name, _)| *name).collect();
                    Err((
                        format!("{path}.dataset"),
                        format!("unknown dataset {:?} (built in: {})", excerpt(dataset), known.join(", ")),
                    ))
                }
            },
            (None, Some(file)) => match std::fs::read(file) {
                Ok(bytes) => parse_replay(file, &bytes).map_err(|e| (format!("{path}.file"), e.to_string())),
                Err(error) => Err((format!("{path}.file"), format!("cannot read {:?}: {error}", excerpt(file)))),
            },
            _ => Err((path.to_owned(), "give exactly one of dataset (built in) or file".to_owned())),
        };
        let candles = match loaded {
            Ok(candles) => candles,
            Err((where_, message)) => {
                self.problem(where_, message);
                return None;
            }
        };
        let reference_price = candles[0].close;
        let rules = self.rules(path, &raw.rules, reference_price);
        let source_name = raw.dataset.or(raw.file).unwrap_or_default();
        Some(PaperSymbol { symbol: symbol?, rules, source: SeriesSource::Replay { source_name, candles } })
    }

    fn walk_symbol(&mut self, path: &str, raw: RawRandomWalk) -> Option<PaperSymbol> {
        let symbol = self.symbol(&format!("{path}.symbol"), &raw.symbol);
        let start_price = self
            .decimal_in(&format!("{path}.start_price"), raw.start_price, PRICE_RANGE)
            .unwrap_or(REFUSED_PLACEHOLDER);
        let volatility_pct = self.real_in(&format!("{path}.volatility_pct"), raw.volatility_pct, 0.0001, 10.0);
        let mean_reversion = self.real_in(&format!("{path}.mean_reversion"), raw.mean_reversion, 0.0, 0.5);
        let base_volume = self
            .decimal_in(&format!("{path}.base_volume"), raw.base_volume, VOLUME_RANGE)
            .unwrap_or(REFUSED_PLACEHOLDER);
        let start_price = crate::domain::decimal_to_f64(start_price);
        let rules = self.rules(path, &raw.rules, start_price);
        let params = RandomWalkParams {
            start_price,
            volatility: volatility_pct / 100.0,
            mean_reversion,
            base_volume: crate::domain::decimal_to_f64(base_volume),
        };
        Some(PaperSymbol { symbol: symbol?, rules, source: SeriesSource::RandomWalk(params) })
    }

    fn users(&mut self, raw: Vec<RawUser>, venue: &Venue, risk: RiskLimits) -> Vec<UserConfig> {
        if raw.is_empty() {
            self.problem("users", "at least one user is required ([[users]])");
        }
        if raw.len() > USERS_MAX {
            self.problem("users", format!("at most {USERS_MAX} users, got {}", raw.len()));
        }
        let mut ids = BTreeSet::new();
        let mut users = Vec::new();
        for (index, user) in raw.into_iter().enumerate() {
            let path = format!("users[{index}]");
            let id = match UserId::new(&user.id) {
                Ok(id) => Some(id),
                Err(error) => {
                    self.problem(format!("{path}.id"), error.to_string());
                    None
                }
            };
            if let Some(id) = &id
                && !ids.insert(id.clone())
            {
                self.problem(format!("{path}.id"), format!("user {id} is configured twice"));
            }
            if user.strategies.is_empty() {
                self.problem(
                    format!("{path}.strategies"),
                    "at least one strategy is required (a user with none would sit idle)",
                );
            }
            if user.strategies.len() > STRATEGIES_PER_USER_MAX {
                self.problem(
                    format!("{path}.strategies"),
                    format!("at most {STRATEGIES_PER_USER_MAX} strategies, got {}", user.strategies.len()),
                );
            }
            let binance = matches!(venue, Venue::Binance);
            let api_key_env = self.env_name(&format!("{path}.api_key_env"), user.api_key_env.as_deref(), binance);
            let api_secret_env =
                self.env_name(&format!("{path}.api_secret_env"), user.api_secret_env.as_deref(), binance);
            let mut traded = BTreeMap::new();
            let mut strategies = Vec::new();
            for (strategy_index, raw_strategy) in user.strategies.into_iter().enumerate() {
                let strategy_path = format!("{path}.strategies[{strategy_index}]");
                if let Some(strategy) = self.strategy(&strategy_path, raw_strategy, venue, risk) {
                    if let Some(first) = traded.insert(strategy.symbol.clone(), strategy_index) {
                        self.problem(
                            format!("{strategy_path}.symbol"),
                            format!(
                                "{} is already traded by strategies[{first}] (one position per symbol per user)",
                                strategy.symbol
                            ),
                        );
                    }
                    strategies.push(strategy);
                }
            }
            if let Some(id) = id {
                users.push(UserConfig { id, strategies, api_key_env, api_secret_env });
            }
        }
        users
    }

    fn strategy(&mut self, path: &str, raw: RawStrategy, venue: &Venue, risk: RiskLimits) -> Option<StrategyConfig> {
        let symbol = match (Symbol::new(&raw.symbol), venue) {
            (Ok(symbol), Venue::Paper(symbols)) if symbols.contains(&symbol) => Some(symbol),
            (Ok(symbol), Venue::Binance) => Some(symbol),
            (Ok(_), Venue::Paper(symbols)) => {
                let known: Vec<&str> = symbols.iter().map(Symbol::as_str).collect();
                self.problem(
                    format!("{path}.symbol"),
                    format!("unknown symbol {:?} (the exchange has {})", excerpt(&raw.symbol), known.join(", ")),
                );
                None
            }
            (Err(error), _) => {
                // The error names the value (cut to its first characters).
                self.problem(format!("{path}.symbol"), format!("unknown symbol: {error}"));
                None
            }
        };
        let base_ms = BASE_TIMEFRAME.duration_ms();
        let paper = matches!(venue, Venue::Paper(_));
        let timeframe = match raw.timeframe.parse::<Timeframe>() {
            Ok(timeframe) if !paper => Some(timeframe),
            Ok(timeframe) if timeframe.duration_ms() % base_ms != 0 => {
                self.problem(
                    format!("{path}.timeframe"),
                    format!("{timeframe} is finer than the paper exchange's 5m candles"),
                );
                None
            }
            Ok(timeframe) => {
                // A window of this timeframe must fit in the history a random-walk symbol keeps.
                let needed = (CANDLE_WINDOW_LEN + 1) * (timeframe.duration_ms() / base_ms) as usize;
                if needed > PAPER_RANDOM_WALK_HISTORY_MAX {
                    let message = format!(
                        "{timeframe} needs {needed} 5-minute candles of history; the paper exchange keeps {PAPER_RANDOM_WALK_HISTORY_MAX} (use 8h or shorter)"
                    );
                    self.problem(format!("{path}.timeframe"), message);
                    None
                } else {
                    Some(timeframe)
                }
            }
            Err(error) => {
                self.problem(format!("{path}.timeframe"), error);
                None
            }
        };
        let size_path = format!("{path}.position_size_usdt");
        let position_size_usdt = self.decimal_in(&size_path, raw.position_size_usdt, USDT_AMOUNT_RANGE);
        if let Some(size) = position_size_usdt
            && size > risk.max_position_notional_usdt
        {
            self.problem(
                &size_path,
                format!("{size} exceeds risk.max_position_notional_usdt ({})", risk.max_position_notional_usdt),
            );
        }
        let mut params = BTreeMap::new();
        for (key, value) in &raw.params {
            match value {
                toml::Value::Integer(n) => {
                    params.insert(key.clone(), *n as f64);
                }
                toml::Value::Float(x) => {
                    params.insert(key.clone(), *x);
                }
                other => self.problem(
                    format!("{path}.params.{}", excerpt(key)),
                    format!("must be a number, got {}", excerpt(&other.to_string())),
                ),
            }
        }
        let strategy = match strategy::build(&raw.strategy, &params) {
            Ok(strategy) => {
                if strategy.lookback_candles() > CANDLE_WINDOW_LEN {
                    self.problem(
                        format!("{path}.params"),
                        format!(
                            "needs {} candles of history; at most {CANDLE_WINDOW_LEN} are kept",
                            strategy.lookback_candles()
                        ),
                    );
                }
                Some(Arc::from(strategy))
            }
            Err(problems) => {
                for problem in problems {
                    match problem.param {
                        Some(param) => self.problem(format!("{path}.params.{}", excerpt(&param)), problem.message),
                        None => self.problem(format!("{path}.strategy"), problem.message),
                    }
                }
                None
            }
        };
        Some(StrategyConfig {
            symbol: symbol?,
            timeframe: timeframe?,
            strategy: strategy?,
            position_size_usdt: position_size_usdt?,
        })
    }

    fn chaos(&mut self, raw: RawChaos, users: &[UserConfig]) -> ChaosConfig {
        let panic_every_decisions =
            self.int_in("chaos.panic_every_decisions", raw.panic_every_decisions, 1, 1_000_000) as u64;
        let known: BTreeSet<&UserId> = users.iter().map(|u| &u.id).collect();
        let mut panic_users = BTreeSet::new();
        for (index, user) in raw.panic_users.iter().enumerate() {
            match UserId::new(user) {
                Ok(id) if known.contains(&id) => {
                    panic_users.insert(id);
                }
                _ => self.problem(format!("chaos.panic_users[{index}]"), format!("unknown user {:?}", excerpt(user))),
            }
        }
        let database_fault_file = match raw.database_fault_file {
            Some(path) if path.trim().is_empty() => {
                self.problem("chaos.database_fault_file", "must not be empty (leave it out for no fault hook)");
                None
            }
            path => path.map(PathBuf::from),
        };
        ChaosConfig { enabled: raw.enabled, panic_users, panic_every_decisions, database_fault_file }
    }
}

// ---------------------------------------------------------------------------------------------
// `bulwark sim`'s own configuration.

/// The default path of the simulator's config, relative to the current directory.
pub const DEFAULT_SIM_CONFIG_PATH: &str = "config/sim-server.toml";

/// The shipped simulator config, compiled in.
pub const EMBEDDED_SIM_DEFAULT: &str = include_str!("../config/sim-server.toml");

/// One simulated exchange account and the credentials that reach it.
#[derive(Debug, Clone)]
pub struct SimAccount {
    pub user: UserId,
    pub api_key: Secret,
    pub api_secret: Secret,
}

/// Wall time per 5-minute candle of bulwark's own paper exchange (300 times real time).
const PAPER_CANDLE_INTERVAL_MS_DEFAULT: i64 = 1_000;
/// The simulator's default: one 5-minute candle per 5 minutes of wall time.
pub const SIM_REAL_TIME_CANDLE_INTERVAL_MS: i64 = 300_000;
/// The fastest simulator market: 10 ms of wall time per 5-minute candle.
pub const SIM_SPEED_MAX: i64 = 30_000;

/// Wall time per candle of a simulator running `speed` times faster than real time.
pub fn sim_candle_interval_ms_at(speed: u32) -> i64 {
    SIM_REAL_TIME_CANDLE_INTERVAL_MS / i64::from(speed.max(1))
}

/// A validated `bulwark sim` configuration.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub source_name: String,
    pub listen: SocketAddr,
    /// Holds the simulator's books (`paper_exchange.db`) and its lock.
    pub data_dir: PathBuf,
    /// The market and matching engine (`[exchange.paper]`, as for a paper bulwark).
    pub paper: PaperSettings,
    pub accounts: Vec<SimAccount>,
    /// The `CG-API-KEY` the CoinGlass-shaped endpoints accept (none: they refuse every key).
    pub coinglass_api_key: Option<Secret>,
    pub weight_limit_per_minute: u32,
    /// Requests over the limit within one minute before the client is banned (418).
    pub ban_after_violations: u32,
    pub ban_secs: u64,
    pub faults: FaultPlan,
}

/// Loads the simulator's config at `path`; with `None`, the default path, or the embedded
/// default when no file is there.
pub fn load_sim(path: Option<&Path>) -> Result<SimConfig, ConfigErrors> {
    let (path, explicit) = match path {
        Some(path) => (path.to_path_buf(), true),
        None => (PathBuf::from(DEFAULT_SIM_CONFIG_PATH), false),
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => parse_sim(&text, &path.display().to_string()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound && !explicit => {
            parse_sim(EMBEDDED_SIM_DEFAULT, EMBEDDED_SOURCE_NAME)
        }
        Err(error) => Err(ConfigErrors {
            source_name: path.display().to_string(),
            problems: vec![ConfigProblem { path: "(file)".to_owned(), message: format!("cannot read: {error}") }],
        }),
    }
}

pub fn parse_sim(text: &str, source_name: &str) -> Result<SimConfig, ConfigErrors> {
    let fail = |problems| ConfigErrors { source_name: source_name.to_owned(), problems };
    let deserializer = toml::Deserializer::parse(text).map_err(|error| fail(vec![toml_problem(&error)]))?;
    let mut problems = Vec::new();
    let raw: RawSimFile = serde_ignored::deserialize(deserializer, |path| {
        problems.push(ConfigProblem { path: format_path(&path), message: "unknown key".to_owned() });
    })
    .map_err(|error| {
        let mut all = problems.clone();
        all.push(toml_problem(&error));
        fail(all)
    })?;
    let mut validator = Validator { problems };
    let config = validator.sim(raw, source_name);
    if validator.problems.is_empty() { Ok(config) } else { Err(fail(validator.problems)) }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawSimFile {
    sim: RawSim,
    exchange: RawSimExchange,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawSimExchange {
    paper: Option<RawPaper>,
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct RawSim {
    listen: String,
    /// Market time per wall time; `None`: real time (unless `[exchange.paper] candle_interval_ms`).
    speed: Option<i64>,
    data_dir: String,
    weight_limit_per_minute: i64,
    ban_after_violations: i64,
    ban_secs: i64,
    coinglass_api_key: Option<String>,
    accounts: Vec<RawSimAccount>,
    faults: FaultPlan,
}

impl Default for RawSim {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8378".to_owned(),
            speed: None,
            data_dir: "data/sim".to_owned(),
            weight_limit_per_minute: 2_400,
            ban_after_violations: 3,
            ban_secs: 120,
            coinglass_api_key: None,
            accounts: Vec::new(),
            faults: FaultPlan::default(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawSimAccount {
    user: String,
    api_key: String,
    api_secret: String,
    paper_balance_usdt: Option<f64>,
}

impl Validator {
    /// The simulator's wall time per 5-minute candle: real time unless `[sim] speed` (or, as
    /// before it, `[exchange.paper] candle_interval_ms`) says otherwise; not both.
    fn sim_candle_interval_ms(&mut self, speed: Option<i64>, candle_interval_ms: Option<i64>) -> Option<i64> {
        match (speed, candle_interval_ms) {
            (Some(_), Some(_)) => {
                self.problem(
                    "sim.speed",
                    "give either [sim] speed or [exchange.paper] candle_interval_ms, not both (they set the same clock)",
                );
                candle_interval_ms
            }
            (Some(speed), None) => {
                let speed = self.int_in("sim.speed", speed, 1, SIM_SPEED_MAX);
                Some(sim_candle_interval_ms_at(speed as u32))
            }
            (None, given) => Some(given.unwrap_or(SIM_REAL_TIME_CANDLE_INTERVAL_MS)),
        }
    }

    fn sim(&mut self, raw: RawSimFile, source_name: &str) -> SimConfig {
        let sim = raw.sim;
        let listen = sim.listen.parse().unwrap_or_else(|error| {
            self.problem(
                "sim.listen",
                format!("{:?} is not an address like 127.0.0.1:8378: {error}", excerpt(&sim.listen)),
            );
            SocketAddr::from(([127, 0, 0, 1], 0))
        });
        if sim.data_dir.trim().is_empty() {
            self.problem("sim.data_dir", "must not be empty");
        }
        let weight_limit_per_minute =
            self.int_in("sim.weight_limit_per_minute", sim.weight_limit_per_minute, 1, 1_000_000) as u32;
        let ban_after_violations = self.int_in("sim.ban_after_violations", sim.ban_after_violations, 1, 1_000) as u32;
        let ban_secs = self.int_in("sim.ban_secs", sim.ban_secs, 1, 86_400) as u64;
        if sim.accounts.is_empty() {
            self.problem("sim.accounts", "at least one account is required ([[sim.accounts]])");
        }
        let mut accounts = Vec::new();
        let mut balances = BTreeMap::new();
        let (mut users, mut keys) = (BTreeSet::new(), BTreeSet::new());
        for (index, account) in sim.accounts.into_iter().enumerate() {
            let path = format!("sim.accounts[{index}]");
            let user = match UserId::new(&account.user) {
                Ok(user) => Some(user),
                Err(error) => {
                    self.problem(format!("{path}.user"), error.to_string());
                    None
                }
            };
            for (name, value) in [("api_key", &account.api_key), ("api_secret", &account.api_secret)] {
                if value.trim().is_empty() {
                    self.problem(format!("{path}.{name}"), "must not be empty");
                }
            }
            if !keys.insert(account.api_key.clone()) {
                self.problem(format!("{path}.api_key"), "is used by another account");
            }
            let Some(user) = user else { continue };
            if !users.insert(user.clone()) {
                self.problem(format!("{path}.user"), format!("{user} is configured twice"));
            }
            if let Some(balance) = account.paper_balance_usdt {
                let balance = self
                    .decimal_in(&format!("{path}.paper_balance_usdt"), balance, USDT_AMOUNT_RANGE)
                    .unwrap_or(REFUSED_PLACEHOLDER);
                balances.insert(user.clone(), balance);
            }
            accounts.push(SimAccount {
                user,
                api_key: Secret::new(account.api_key),
                api_secret: Secret::new(account.api_secret),
            });
        }
        for problem in sim.faults.problems("sim.faults") {
            let (path, message) = problem.split_once(": ").unwrap_or(("sim.faults", problem.as_str()));
            self.problem(path, message);
        }
        let mut raw_paper = raw.exchange.paper.unwrap_or_default();
        raw_paper.candle_interval_ms = self.sim_candle_interval_ms(sim.speed, raw_paper.candle_interval_ms);
        // The simulator checks each request's own recvWindow; the engine accepts anything it passes.
        let paper = self.paper(raw_paper, 60_000, balances);
        SimConfig {
            source_name: source_name.to_owned(),
            listen,
            data_dir: PathBuf::from(sim.data_dir),
            paper,
            accounts,
            coinglass_api_key: sim.coinglass_api_key.filter(|k| !k.trim().is_empty()).map(Secret::new),
            weight_limit_per_minute,
            ban_after_violations,
            ban_secs,
            faults: sim.faults,
        }
    }
}

/// The symbols a paper exchange has when the config names none: the recorded XRP market and
/// random walks shaped like BTC, ETH and SOL.
fn default_paper_symbols() -> (Vec<RawReplay>, Vec<RawRandomWalk>) {
    let replay = vec![RawReplay {
        symbol: "XRPUSDT".to_owned(),
        dataset: Some("XRP_USDT_USDT-5m-futures".to_owned()),
        file: None,
        rules: RawRules {
            tick_size: Some(0.0001),
            step_size: Some(0.1),
            min_quantity: Some(0.1),
            min_notional: Some(5.0),
        },
    }];
    let walk =
        |symbol: &str, start_price: f64, volatility_pct: f64, tick: f64, step: f64, min_notional: f64| RawRandomWalk {
            symbol: symbol.to_owned(),
            start_price,
            volatility_pct,
            mean_reversion: 0.001,
            base_volume: 100.0,
            rules: RawRules {
                tick_size: Some(tick),
                step_size: Some(step),
                min_quantity: Some(step),
                min_notional: Some(min_notional),
            },
        };
    let random_walk = vec![
        walk("BTCUSDT", 60_000.0, 0.25, 0.1, 0.001, 100.0),
        walk("ETHUSDT", 3_000.0, 0.35, 0.01, 0.001, 20.0),
        walk("SOLUSDT", 150.0, 0.5, 0.01, 0.01, 5.0),
    ];
    (replay, random_walk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_default_validates() {
        let config = parse(EMBEDDED_DEFAULT, "embedded default").unwrap_or_else(|e| panic!("{e}"));
        assert!(config.users.len() >= 2);
        assert!(!config.chaos.enabled);
        assert_eq!(config.database_path(), PathBuf::from("data/bulwark.db"));
        let VenueConfig::Paper(paper) = &config.exchange.venue else { panic!("a paper config") };
        assert_eq!(paper.candle_interval_ms, 1_000);
    }

    #[test]
    fn the_shipped_configs_validate() {
        let sim =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/sim-server.toml")).unwrap();
        let sim = parse_sim(&sim, "config/sim-server.toml").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sim.listen.port(), 8378);
        assert_eq!(
            sim.paper.candle_interval_ms, SIM_REAL_TIME_CANDLE_INTERVAL_MS,
            "the shipped simulator runs in real time"
        );
        for file in ["config/bulwark.toml", "config/chaos.toml", "config/sim.toml", "config/fast-monitor.toml"] {
            let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
            parse(&text, file).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[test]
    fn every_config_file_in_the_repository_is_shipped_in_the_binary() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let on_disk = std::fs::read_to_string(&path).unwrap();
            let shipped =
                shipped_config(&path).unwrap_or_else(|| panic!("{} is not in SHIPPED_CONFIG_FILES", path.display()));
            assert_eq!(shipped, on_disk, "{}", path.display());
        }
    }

    #[test]
    fn an_unknown_key_a_bad_symbol_and_a_negative_size_are_all_named() {
        let text = r#"
            [server]
            data_dir = "data"
            colour = "blue"

            [[users]]
            id = "u1"
            [[users.strategies]]
            symbol = "XRPUSDT"
            timeframe = "5m"
            strategy = "ema_crossover"
            position_size_usdt = 100

            [[users]]
            id = "u2"
            [[users.strategies]]
            symbol = "XRPUSD"
            timeframe = "5m"
            strategy = "ema_crossover"
            position_size_usdt = -5
        "#;
        let errors = parse(text, "bad.toml").unwrap_err();
        let lines: Vec<String> = errors.problems.iter().map(ToString::to_string).collect();
        assert!(lines.contains(&"server.colour: unknown key".to_owned()), "{lines:#?}");
        assert!(
            lines.iter().any(|l| l.starts_with("users[1].strategies[0].symbol: unknown symbol \"XRPUSD\"")),
            "{lines:#?}"
        );
        assert!(
            lines.contains(&"users[1].strategies[0].position_size_usdt: must be from 0.01 to 1e12, got -5".to_owned()),
            "{lines:#?}"
        );
        assert_eq!(lines.len(), 3, "{lines:#?}");
        let rendered = errors.to_string();
        assert!(rendered.starts_with("bad.toml: 3 problems"), "{rendered}");
    }

    #[test]
    fn unknown_keys_deep_in_arrays_have_indexed_paths() {
        let text = r#"
            [[users]]
            id = "u1"
            [[users.strategies]]
            symbol = "XRPUSDT"
            timeframe = "5m"
            strategy = "ema_crossover"
            position_size_usdt = 100
            positon_size = 3
        "#;
        let errors = parse(text, "x").unwrap_err();
        assert_eq!(errors.problems[0].to_string(), "users[0].strategies[0].positon_size: unknown key");
    }

    #[test]
    fn the_http_api_beyond_loopback_needs_a_token_and_a_bad_address_is_named() {
        const USER: &str = "[[users]]\nid = \"u1\"\n[[users.strategies]]\nsymbol = \"XRPUSDT\"\ntimeframe = \"5m\"\nstrategy = \"ema_crossover\"\nposition_size_usdt = 100\n";
        let with = |http: &str| format!("{http}\n{USER}");
        let errors = parse(&with("[http]\nlisten = \"0.0.0.0:8377\""), "x").unwrap_err();
        let text = errors.to_string();
        assert!(
            text.contains("http.listen: 0.0.0.0:8377 is reachable from other machines: set http.token_env"),
            "{text}"
        );
        let errors = parse(&with("[http]\nlisten = \"localhost\""), "x").unwrap_err();
        assert!(errors.to_string().contains("http.listen: \"localhost\" is not an address and port"), "{errors}");
        let config = parse(&with("[http]\nlisten = \"0.0.0.0:8377\"\ntoken_env = \"BULWARK_TOKEN\""), "x").unwrap();
        assert_eq!(config.http.unwrap().token_env.as_deref(), Some("BULWARK_TOKEN"));
        assert!(parse(&with("[http]\nenabled = false"), "x").unwrap().http.is_none());
        assert_eq!(parse(&with(""), "x").unwrap().http.unwrap().listen.to_string(), "127.0.0.1:8377");
    }

    #[test]
    fn type_errors_and_syntax_errors_point_into_the_file() {
        let errors = parse("[supervisor]\nmax_restarts = \"three\"\n", "x").unwrap_err();
        assert!(errors.problems[0].message.contains("line 2"), "{}", errors);
        let errors = parse("[server\n", "x").unwrap_err();
        assert!(errors.problems[0].message.contains("line 1"), "{}", errors);
    }

    #[test]
    fn strategy_parameters_and_limits_are_checked() {
        let text = r#"
            [risk]
            max_position_notional_usdt = 1000
            [chaos]
            panic_users = ["nobody"]
            [[users]]
            id = "u1"
            [[users.strategies]]
            symbol = "XRPUSDT"
            timeframe = "1m"
            strategy = "ema_crossover"
            params = { fast = 30, slow = 10, colour = "red" }
            position_size_usdt = 2000
            [[users.strategies]]
            symbol = "XRPUSDT"
            timeframe = "5m"
            strategy = "martingale"
            position_size_usdt = 10
        "#;
        let errors = parse(text, "x").unwrap_err();
        let lines: Vec<String> = errors.problems.iter().map(ToString::to_string).collect();
        let has = |prefix: &str| lines.iter().any(|l| l.starts_with(prefix));
        assert!(has("users[0].strategies[0].timeframe: 1m is finer"), "{lines:#?}");
        assert!(has("users[0].strategies[0].params.colour: must be a number"), "{lines:#?}");
        assert!(has("users[0].strategies[0].params.slow: must be greater than fast"), "{lines:#?}");
        assert!(has("users[0].strategies[0].position_size_usdt: 2000 exceeds"), "{lines:#?}");
        assert!(has("users[0].strategies[1].strategy: unknown strategy \"martingale\""), "{lines:#?}");
        assert!(has("chaos.panic_users[0]: unknown user \"nobody\""), "{lines:#?}");
    }

    #[test]
    fn timeframes_longer_than_the_paper_history_are_refused() {
        let user = |timeframe: &str| {
            format!(
                "[[users]]\nid = \"u1\"\n[[users.strategies]]\nsymbol = \"BTCUSDT\"\ntimeframe = \"{timeframe}\"\nstrategy = \"ema_crossover\"\nposition_size_usdt = 100\n"
            )
        };
        assert!(parse(&user("8h"), "x").is_ok());
        for timeframe in ["12h", "1d"] {
            let errors = parse(&user(timeframe), "x").unwrap_err();
            assert!(errors.problems[0].message.contains("use 8h or shorter"), "{errors}");
        }
    }

    #[test]
    fn the_simulator_runs_in_real_time_unless_a_speed_is_given() {
        let account = "[[sim.accounts]]\nuser = \"u1\"\napi_key = \"k\"\napi_secret = \"s\"\n";
        let interval =
            |text: &str| parse_sim(&format!("{text}\n{account}"), "sim.toml").map(|c| c.paper.candle_interval_ms);
        assert_eq!(interval("[sim]"), Ok(300_000));
        assert_eq!(interval("[sim]\nspeed = 300"), Ok(1_000));
        assert_eq!(interval("[sim]\nspeed = 1"), Ok(300_000));
        let mut older = String::from("[sim]\n");
        older += account;
        older += "[exchange.paper]\ncandle_interval_ms = 200\n";
        assert_eq!(parse_sim(&older, "sim.toml").unwrap().paper.candle_interval_ms, 200);
        let both = format!("[sim]\nspeed = 2\n{account}[exchange.paper]\ncandle_interval_ms = 200\n");
        let errors = parse_sim(&both, "sim.toml").unwrap_err().to_string();
        assert!(errors.contains("sim.speed") && errors.contains("not both"), "{errors}");
        let errors = parse_sim(&format!("[sim]\nspeed = 0\n{account}"), "sim.toml").unwrap_err().to_string();
        assert!(errors.contains("sim.speed"), "{errors}");
        // bulwark's own paper exchange keeps its 300x default.
        assert_eq!(sim_candle_interval_ms_at(300), 1_000);
    }

    #[test]
    fn sim_configs_name_their_problems() {
        let text = r#"
            [sim]
            listen = "nowhere"
            [[sim.accounts]]
            user = "u1"
            api_key = "k"
            api_secret = ""
            [[sim.accounts]]
            user = "u1"
            api_key = "k"
            api_secret = "s"
            [sim.faults.global]
            lost_response_rate = 2.0
            "#;
        let errors = parse_sim(text, "sim.toml").unwrap_err();
        let paths: Vec<&str> = errors.problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "sim.listen",
                "sim.accounts[0].api_secret",
                "sim.accounts[1].api_key",
                "sim.accounts[1].user",
                "sim.faults.global.lost_response_rate",
                "sim.faults.global"
            ],
            "{errors}"
        );
    }

    #[test]
    fn a_config_without_users_is_refused() {
        let errors = parse("", "empty").unwrap_err();
        assert_eq!(errors.problems[0].to_string(), "users: at least one user is required ([[users]])");
    }

    #[test]
    fn binance_needs_a_url_and_key_variables_per_user() {
        let user = "[[users]]\nid = \"u1\"\n[[users.strategies]]\nsymbol = \"DOGEUSDT\"\ntimeframe = \"1m\"\nstrategy = \"ema_crossover\"\nposition_size_usdt = 100\n";
        let errors = parse(&format!("[exchange]\nkind = \"binance\"\n{user}"), "x").unwrap_err();
        let paths: Vec<&str> = errors.problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["exchange.base_url", "users[0].api_key_env", "users[0].api_secret_env"], "{errors}");
        let good = format!(
            "[exchange]\nkind = \"binance\"\nbase_url = \"http://127.0.0.1:8378\"\n{}",
            user.replace("id = \"u1\"\n", "id = \"u1\"\napi_key_env = \"U1_KEY\"\napi_secret_env = \"U1_SECRET\"\n")
        );
        let config = parse(&good, "x").unwrap_or_else(|e| panic!("{e}"));
        assert!(
            matches!(&config.exchange.venue, VenueConfig::Binance(b) if b.base_url.as_str() == "http://127.0.0.1:8378/")
        );
        assert_eq!(config.users[0].api_key_env.as_deref(), Some("U1_KEY"));
        let bad_env = good.replace("U1_KEY", "not a name");
        assert!(parse(&bad_env, "x").unwrap_err().problems[0].message.contains("not an environment variable name"));
    }

    /// One user with one strategy of `position_size_usdt = {size}`, after `sections`.
    fn one_user(sections: &str, size: &str) -> String {
        format!(
            "{sections}\n[[users]]\nid = \"u1\"\n[[users.strategies]]\nsymbol = \"XRPUSDT\"\ntimeframe = \"5m\"\nstrategy = \"ema_crossover\"\nposition_size_usdt = {size}\n"
        )
    }

    fn problem_lines(text: &str) -> Vec<String> {
        match parse(text, "x") {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(errors) => errors.problems.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn out_of_range_numbers_are_refused_naming_path_and_value_never_replaced() {
        const SIZE: &str = "users[0].strategies[0].position_size_usdt";
        // The issue's cases: 1e30 became 0, 1e300 became 1, 1e-30 became 0.
        for (size, shown) in [("1e30", "1e30"), ("1e-30", "1e-30"), ("nan", "NaN"), ("inf", "inf"), ("-inf", "-inf")] {
            let lines = problem_lines(&one_user("", size));
            assert_eq!(lines, [format!("{SIZE}: must be from 0.01 to 1e12, got {shown}")], "{size}");
        }
        let lines = problem_lines(&one_user("[risk]\nmax_position_notional_usdt = 1e300", "100"));
        assert_eq!(lines, ["risk.max_position_notional_usdt: must be from 0.01 to 1e12, got 1e300"]);
        let lines = problem_lines(&one_user("[risk]\nmax_position_notional_usdt = 1e-30", "100"));
        assert_eq!(lines, ["risk.max_position_notional_usdt: must be from 0.01 to 1e12, got 1e-30"]);
        // The largest and smallest sizes taken are held exactly.
        let config = parse(&one_user("[risk]\nmax_position_notional_usdt = 1e12", "1e12"), "x").unwrap();
        assert_eq!(config.users[0].strategies[0].position_size_usdt, Decimal::from(1_000_000_000_000_i64));
        assert_eq!(config.risk.max_position_notional_usdt, Decimal::from(1_000_000_000_000_i64));
        let config = parse(&one_user("", "0.01"), "x").unwrap();
        assert_eq!(config.users[0].strategies[0].position_size_usdt, Decimal::new(1, 2));
    }

    #[test]
    fn every_money_price_and_rate_of_the_paper_exchange_is_range_checked() {
        let paper = r#"
            [exchange.paper]
            starting_balance_usdt = 1e30
            taker_fee_bps = 1e-30
            slippage_bps = nan
            leverage = 1e300
            [[exchange.paper.replay]]
            symbol = "XRPUSDT"
            dataset = "XRP_USDT_USDT-5m-futures"
            tick_size = 1e-30
            min_notional = inf
            [[exchange.paper.random_walk]]
            symbol = "BTCUSDT"
            start_price = 1e30
            base_volume = -1
            step_size = 1e10
        "#;
        let text = one_user(paper, "100").replace("id = \"u1\"\n", "id = \"u1\"\npaper_balance_usdt = 1e-9\n");
        let lines = problem_lines(&text);
        let expected = [
            "exchange.paper.starting_balance_usdt: must be from 0.01 to 1e12, got 1e30",
            "exchange.paper.taker_fee_bps: 1e-30 is below the smallest unit bulwark keeps (1e-8): it would round to 0",
            "exchange.paper.slippage_bps: must be from 0 to 500, got NaN",
            "exchange.paper.leverage: must be from 1 to 125, got 1e300",
            "exchange.paper.replay[0].tick_size: must be from 1e-8 to 1e9, got 1e-30",
            "exchange.paper.replay[0].min_notional: must be from 1e-8 to 1e9, got inf",
            "exchange.paper.random_walk[0].start_price: must be from 1e-8 to 1e9, got 1e30",
            "exchange.paper.random_walk[0].base_volume: must be from 1e-8 to 1e15, got -1",
            "exchange.paper.random_walk[0].step_size: must be from 1e-8 to 1e9, got 1e10",
            "users[0].paper_balance_usdt: must be from 0.01 to 1e12, got 1e-9",
        ];
        for line in expected {
            assert!(lines.contains(&line.to_owned()), "{line} missing from {lines:#?}");
        }
        assert_eq!(lines.len(), expected.len(), "{lines:#?}");
        let sim =
            "[sim]\n[[sim.accounts]]\nuser = \"u1\"\napi_key = \"k\"\napi_secret = \"s\"\npaper_balance_usdt = 1e30\n";
        let errors = parse_sim(sim, "sim.toml").unwrap_err();
        assert_eq!(
            errors.problems[0].to_string(),
            "sim.accounts[0].paper_balance_usdt: must be from 0.01 to 1e12, got 1e30"
        );
    }

    #[test]
    fn settings_that_would_turn_the_kill_switch_or_probation_off_are_refused_saying_so() {
        let guards =
            "[guards]\nmax_drawdown_pct = 100\nblock_hours = 0\nprobation_hours = 0\ndrawdown_lookback_hours = 0";
        let lines = problem_lines(&one_user(guards, "100"));
        let has = |prefix: &str, words: &str| {
            assert!(lines.iter().any(|l| l.starts_with(prefix) && l.contains(words)), "{prefix} … {words}: {lines:#?}")
        };
        has(
            "guards.max_drawdown_pct: must be greater than 0 and less than 100, got 100",
            "kill switch would never trip",
        );
        has(
            "guards.drawdown_lookback_hours: must be greater than 0 and at most 2160, got 0",
            "kill switch would never trip",
        );
        has("guards.block_hours: must be greater than 0 and at most 720, got 0", "expires the instant it is set");
        has("guards.probation_hours: must be greater than 0 and at most 720, got 0", "expires the instant it is set");
        assert_eq!(lines.len(), 4, "{lines:#?}");
        let lines = problem_lines(&one_user("[guards]\nmax_drawdown_pct = nan\nblock_hours = -1", "100"));
        assert_eq!(
            lines,
            [
                "guards.max_drawdown_pct: must be greater than 0 and less than 100, got NaN",
                "guards.block_hours: must be greater than 0 and at most 720, got -1: a kill switch that lasts 0 hours expires the instant it is set (it would be off)"
            ]
        );
    }

    #[test]
    fn guards_turned_off_pass_with_a_warning() {
        let config = parse(&one_user("[guards]\nenabled = false", "100"), "x").unwrap();
        let warnings = warnings(&config);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("guards.enabled = false: no new kill switch or probation will be set"),
            "{warnings:?}"
        );
        assert!(warnings[0].contains("locks already set still hold until they expire or are cleared"), "{warnings:?}");
        assert!(super::warnings(&parse(&one_user("", "100"), "x").unwrap()).is_empty());
    }

    #[test]
    fn other_unchecked_numbers_are_checked() {
        let lines = problem_lines(&one_user("[retry]\nbackoff_ms_initial = 5000\nbackoff_ms_max = 1000", "100"));
        assert_eq!(lines, ["retry.backoff_ms_max: must be at least backoff_ms_initial (5000), got 1000"]);
        let lines = problem_lines(&one_user("[guards]\nwhale_volume_multiple = 1e300", "100"));
        assert_eq!(lines, ["guards.whale_volume_multiple: must be from 1 to 100, got 1e300"]);
    }

    #[test]
    fn a_duplicate_user_is_named_plainly() {
        let text = format!("{}{}", one_user("", "100"), one_user("", "100").trim_start());
        let lines = problem_lines(&text);
        assert_eq!(lines, ["users[1].id: user u1 is configured twice"]);
    }

    #[test]
    fn a_huge_value_is_echoed_cut_with_its_length() {
        let huge = "A".repeat(1 << 20);
        for text in [
            one_user("", "100").replace("symbol = \"XRPUSDT\"", &format!("symbol = \"{huge}\"")),
            one_user("", "100").replace("id = \"u1\"", &format!("id = \"{huge}\"")),
            one_user("", "100").replace("strategy = \"ema_crossover\"", &format!("strategy = \"{huge}\"")),
            one_user("", &format!("\"{huge}\"")),
            one_user(&format!("[exchange]\nkind = \"{huge}\""), "100"),
            one_user("", "100")
                .replace("ema_crossover\"", &format!("ema_crossover\"\nparams = {{ fast = \"{huge}\" }}")),
            one_user("", "100").replace("ema_crossover\"", &format!("ema_crossover\"\nparams = {{ {huge} = 1 }}")),
            one_user(&format!("[server]\n{huge} = 1"), "100"),
        ] {
            let rendered = parse(&text, "x").unwrap_err().to_string();
            assert!(rendered.len() < 2_000, "{} bytes: {}", rendered.len(), &rendered[..2_000.min(rendered.len())]);
            // Cut with the length of what was cut (the value, or the line a TOML error quotes).
            assert!(rendered.contains("…") && rendered.contains(" bytes)"), "{rendered}");
        }
    }
}
