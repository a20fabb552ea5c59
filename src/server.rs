//! The composition root: builds the supervision tree from a validated [`Config`], runs it until a
//! signal, a duration or an escalation, and shuts it down in order.
//!
//! # Shutdown protocol
//!
//! On SIGTERM, SIGINT or the end of `--duration`, the root supervisor runs these steps, each with
//! the `shutdown_deadline_secs` deadline:
//! 1. market data stops delivering candles, so no new decision starts;
//! 2. every user's trader stops (`stopped` events), so no new intent is made;
//! 3. the order router sends nothing new and finishes the orders it is placing (those still
//!    unfinished at the deadline stay `sending`/`unknown` in the database and the next start
//!    resolves them by client id);
//! 4. market data and the order router stop;
//! 5. persistence runs every queued write, checkpoints the WAL into the database file, and stops;
//! 6. the final tree snapshot goes to `supervisor.jsonl`;
//!
//! then the process exits 0. An escalation (a shared actor past its restart limits) instead
//! flushes persistence and exits with [`EXIT_ESCALATED`], so that systemd restarts the process.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use anyhow::Context as _;
use tokio::sync::{broadcast, oneshot};

use crate::actors::Directory;
use crate::actors::healer::HealerSettings;
use crate::actors::intelligence::IntelSource;
use crate::actors::monitor::{MonitorSettings, MonitoredUser};
use crate::actors::notifier::Destinations;
use crate::actors::order_router::{OrderRouter, ReconcileReport, ReconcileUser, RouterSettings};
use crate::actors::persistence::{PersistenceActor, PersistenceSettings};
use crate::actors::trader::{ChaosPlan, TraderSeed, UserCounters};
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, ConfigProblem, VenueConfig};
use crate::domain::UserId;
use crate::exchange::binance::{BinanceClient, BinanceSettings, Credentials};
use crate::exchange::breaker::BreakerState;
use crate::exchange::guarded::{BreakerExchange, TransitionHook};
use crate::exchange::paper::PaperExchange;
use crate::exchange::{Exchange, ExchangeError};
use crate::http::HttpSettings;
use crate::instance_lock::InstanceLock;
use crate::intelligence::coinglass::CoinGlassClient;
use crate::limits::EVENT_TAP_CAPACITY;
use crate::limits::{PERSISTENCE_MAILBOX_CAPACITY, SHARED_MAILBOX_CAPACITY};
use crate::metrics::Metrics;
use crate::persistence::paper_journal::PaperJournal;
use crate::persistence::{DecisionRecord, GuardDecisionRecord, Store};
use crate::secret::Secret;
use crate::supervision::journal::{SupervisionJournal, TreeEvent};
use crate::supervision::root::{RootSupervisor, SharedArbiters, ShutdownReport, ShutdownTree, TreeSettings};
use crate::supervision::watch::spawn_watched;
use crate::trader::core::SlotSpec;

/// Exit code after an escalation (EX_SOFTWARE).
pub const EXIT_ESCALATED: i32 = 70;

/// What the tree runs against: injected so that tests can use a manual clock, their own exchange
/// and a market they step themselves.
#[derive(Debug, Clone)]
pub struct ServerDeps {
    pub clock: Arc<dyn Clock>,
    pub exchange: Arc<dyn Exchange>,
    /// `None`: market data polls only when sent `Poll`.
    pub market_poll_interval: Option<Duration>,
    /// Shared with the exchange wrapper, which counts requests into it (`/metrics`).
    pub metrics: Metrics,
}

/// A running tree.
pub struct RunningServer {
    pub root: Addr<RootSupervisor>,
    pub directory: Arc<Directory>,
    /// Every decision record, live (bounded; a slow receiver loses the oldest).
    pub decisions: broadcast::Sender<DecisionRecord>,
    /// Every supervision event and state change, live (bounded; a slow receiver loses the oldest).
    pub supervision: broadcast::Sender<TreeEvent>,
    /// Every guard decision, live (bounded; a slow receiver loses the oldest).
    pub guard_decisions: broadcast::Sender<GuardDecisionRecord>,
    pub counters: BTreeMap<UserId, Arc<UserCounters>>,
    /// Fires once if a shared actor escalates.
    pub escalation: oneshot::Receiver<String>,
    shutdown_deadline: Duration,
    /// Owned so they can be stopped and joined after the system stops.
    arbiters: Vec<Arbiter>,
    /// Where the HTTP API listens (`None`: `[http] enabled = false`).
    pub http_url: Option<String>,
    /// Which server this is (also in `<data_dir>/bulwark.instance` and on `/health`).
    pub instance: crate::instance::InstanceIdentity,
}

impl std::fmt::Debug for RunningServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningServer").field("users", &self.counters.len()).finish()
    }
}

impl RunningServer {
    /// The ordered shutdown (see the module documentation).
    pub async fn shutdown(&self) -> ShutdownReport {
        let deadline = self.shutdown_deadline;
        self.root.send(ShutdownTree { deadline }).timeout(deadline * 8).await.unwrap_or_default()
    }

    /// Stops the actor threads; call after the actix system has stopped.
    pub fn join_arbiters(arbiters: Vec<Arbiter>) {
        for arbiter in &arbiters {
            arbiter.stop();
        }
        for arbiter in arbiters {
            let _ = arbiter.join();
        }
    }

    /// Hands over the arbiters (to join them once the system is down).
    pub fn take_arbiters(&mut self) -> Vec<Arbiter> {
        std::mem::take(&mut self.arbiters)
    }
}

/// Builds and starts the tree. Must run inside an actix `System`.
pub fn start(config: &Config, deps: ServerDeps) -> anyhow::Result<RunningServer> {
    for dir in [&config.server.data_dir, &config.server.log_dir] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating directory {}", dir.display()))?;
    }
    let database_path = config.database_path();
    let user_ids: Vec<UserId> = config.users.iter().map(|u| u.id.clone()).collect();
    // Opening here first migrates the schema and registers users, and turns an unusable database
    // into a clear start-up error rather than a crash loop.
    Store::open(&database_path)
        .and_then(|mut store| store.ensure_users(&user_ids, deps.clock.now_ms()))
        .with_context(|| format!("preparing the database {}", database_path.display()))?;

    let (mut http, http_url) = match &config.http {
        Some(settings) => {
            let (http, url) = http_settings(config, settings, &deps)?;
            (Some(http), Some(url))
        }
        None => (None, None),
    };
    // Which server this is, beside its database: the command line trusts only its answers.
    let instance = crate::instance::InstanceIdentity::new(&database_path, http_url.clone());
    crate::instance::write(&config.server.data_dir, &instance).with_context(|| {
        format!("writing {}", config.server.data_dir.join(crate::instance::INSTANCE_FILE).display())
    })?;
    if let Some(http) = http.as_mut() {
        http.instance = instance.clone();
    }
    // The URL last: whoever finds it finds the identity that vouches for it already written.
    if let Some(url) = &http_url {
        let url_file = config.server.data_dir.join("bulwark.http");
        std::fs::write(&url_file, format!("{url}\n")).with_context(|| format!("writing {}", url_file.display()))?;
    }

    let mut directory = Directory::with_metrics(deps.metrics.clone())
        .with_persistence_permits(crate::limits::persistence_in_flight_max(config.users.len()));
    if let VenueConfig::Binance(binance) = &config.exchange.venue {
        directory = directory.with_start_up_pacer(binance.start_up_weight_per_minute, deps.clock.now_ms());
    }
    let directory = Arc::new(directory);
    let (supervision, _) = broadcast::channel(EVENT_TAP_CAPACITY);
    let (decisions, _) = broadcast::channel(EVENT_TAP_CAPACITY);
    let (guard_decisions, _) = broadcast::channel(EVENT_TAP_CAPACITY);
    let journal =
        SupervisionJournal::open(&config.server.log_dir, deps.clock.clone(), directory.clone(), supervision.clone())
            .with_context(|| format!("opening {}", config.server.log_dir.join("supervisor.jsonl").display()))?
            .shared();

    let (persistence_arbiter, market_data_arbiter, order_router_arbiter, monitor_arbiter) =
        (Arbiter::new(), Arbiter::new(), Arbiter::new(), Arbiter::new());
    let shared_arbiters = SharedArbiters {
        persistence: persistence_arbiter.handle(),
        market_data: market_data_arbiter.handle(),
        order_router: order_router_arbiter.handle(),
        monitor: monitor_arbiter.handle(),
    };
    let trader_arbiters: Vec<Arbiter> = (0..config.supervisor.trader_threads.max(1)).map(|_| Arbiter::new()).collect();

    if config.chaos.enabled {
        let users: Vec<&str> = config.chaos.panic_users.iter().map(UserId::as_str).collect();
        let fault = config.chaos.database_fault_file.as_ref().map_or(String::new(), |path| {
            format!(" While {} exists, the database refuses every write.", path.display())
        });
        tracing::warn!(
            "CHAOS ENABLED: the traders of [{}] will panic on every decision number {} of each incarnation.{fault} \
             This is for demonstrations and tests; never run it against real money.",
            users.join(", "),
            config.chaos.panic_every_decisions
        );
    }

    let mut counters = BTreeMap::new();
    // Safety nets: the router gives one exchange call room for the client's own retries and a
    // wait for rate-limit budget; a trader gives the router room for a whole account sync.
    let router_call_timeout = config.exchange.timeout * 4 + Duration::from_secs(70);
    let call_timeout = Duration::from_secs(300);
    let users: Vec<(TraderSeed, ArbiterHandle)> = config
        .users
        .iter()
        .enumerate()
        .map(|(index, user)| {
            let user_counters = Arc::new(UserCounters::default());
            counters.insert(user.id.clone(), user_counters.clone());
            let chaos = (config.chaos.enabled && config.chaos.panic_users.contains(&user.id))
                .then_some(ChaosPlan { panic_every_decisions: config.chaos.panic_every_decisions });
            let slots = slot_specs(user);
            let seed = TraderSeed {
                user: user.id.clone(),
                slots,
                limits: config.risk,
                directory: directory.clone(),
                clock: deps.clock.clone(),
                counters: user_counters,
                chaos,
                decisions_tap: decisions.clone(),
                call_timeout,
                guards: config.guards.clone(),
                guards_tap: guard_decisions.clone(),
                venue_pace: deps.exchange.venue_pace(),
            };
            (seed, trader_arbiters[index % trader_arbiters.len()].handle())
        })
        .collect();

    let intelligence = match &config.intelligence {
        Some(settings) => {
            let api_key = intelligence_api_key(settings)?;
            let client = CoinGlassClient::new(settings.base_url.clone(), api_key, config.exchange.timeout)
                .map_err(anyhow::Error::msg)?;
            IntelSource::CoinGlass(client)
        }
        None => IntelSource::Derived(directory.clone()),
    };
    let notify_destinations = notify_destinations(config)?;
    let settings = TreeSettings {
        user_policy: config.supervisor.user_policy,
        shared_policy: config.supervisor.shared_policy,
        status_interval: config.supervisor.status_interval,
        market_poll_interval: deps.market_poll_interval,
        router: RouterSettings {
            recv_window_ms: config.exchange.recv_window_ms,
            exchange_timeout: router_call_timeout,
            ..RouterSettings::default()
        },
        persistence: persistence_settings(config),
        external_breaker: config.breaker,
        http: http.take().map(|http| HttpSettings { counters: Arc::new(counters.clone()), ..http }),
        monitor: Arc::new(MonitorSettings {
            interval: config.monitor.interval,
            summary_interval: config.monitor.summary_interval,
            log_dir: config.server.log_dir.clone(),
            data_dir: config.server.data_dir.clone(),
            config_file: config.source_file(),
            users: config
                .users
                .iter()
                .map(|u| MonitoredUser {
                    id: u.id.clone(),
                    max_open_positions: config.risk.max_open_positions,
                    symbols: u
                        .strategies
                        .iter()
                        .map(|s| s.symbol.clone())
                        .collect::<std::collections::BTreeSet<_>>()
                        .into_iter()
                        .collect(),
                })
                .collect(),
            guards_disabled: config.guards.is_none(),
            orphan_check_weight_per_minute: config.monitor.orphan_check_weight_per_minute,
        }),
        healer: Arc::new(HealerSettings {
            interval: config.healer.interval,
            readmit_cooldown: config.healer.readmit_cooldown,
            attempts_max: config.healer.attempts_max,
            budget_window: config.healer.budget_window,
            log_dir: config.server.log_dir.clone(),
            monitor_interval: config.monitor.interval,
            config_file: config.source_file(),
            user_symbols: config
                .users
                .iter()
                .map(|u| (u.id.clone(), u.strategies.iter().map(|s| s.symbol.clone()).collect()))
                .collect(),
            config_file_is_shipped: config.source_file().is_some_and(|path| {
                crate::config::shipped_config(&path)
                    .is_some_and(|shipped| std::fs::read_to_string(&path).is_ok_and(|text| text == shipped))
            }),
        }),
        intelligence,
        watchdog_interval: crate::service::watchdog_interval(),
        notify_destinations,
        notify_rate_window: config.notify.as_ref().map_or(Duration::from_secs(300), |n| n.rate_window),
        reconcile: config.reconcile_interval.map(|interval| {
            let users = config
                .users
                .iter()
                .map(|u| (u.id.clone(), u.strategies.iter().map(|s| s.symbol.clone()).collect()))
                .collect();
            crate::actors::order_router::PeriodicReconcile {
                interval,
                weight_per_minute: config.reconcile_weight_per_minute,
                users,
            }
        }),
    };
    let (escalate, escalation) = oneshot::channel();
    let root = RootSupervisor::new(
        settings,
        deps.exchange,
        directory.clone(),
        deps.clock,
        journal,
        shared_arbiters,
        users,
        escalate,
    )
    .start();

    spawn_supervision_notices(supervision.subscribe(), directory.clone());
    let mut arbiters = trader_arbiters;
    arbiters.extend([persistence_arbiter, market_data_arbiter, order_router_arbiter, monitor_arbiter]);
    Ok(RunningServer {
        root,
        directory,
        decisions,
        supervision,
        guard_decisions,
        counters,
        escalation,
        shutdown_deadline: config.supervisor.shutdown_deadline,
        arbiters,
        http_url,
        instance,
    })
}

/// Binds the HTTP API's socket (a port already taken is a start-up error naming it) and reads its
/// token; `start` writes the URL to `<data_dir>/bulwark.http` once the identity file is written.
fn http_settings(
    config: &Config,
    settings: &crate::config::HttpConfig,
    deps: &ServerDeps,
) -> anyhow::Result<(HttpSettings, String)> {
    let listener = std::net::TcpListener::bind(settings.listen)
        .with_context(|| format!("cannot listen on {} for the HTTP API ([http] listen)", settings.listen))?;
    let address = listener.local_addr().context("the HTTP API's socket has no address")?;
    let url = format!("http://{address}");
    let token = http_token(settings)?;
    tracing::info!(%url, "http: the status API and dashboard listen on {url}");
    let http = HttpSettings {
        listener: Arc::new(listener),
        access: crate::http::Access {
            token,
            protect_reads: settings.protect_reads,
            body_limit_bytes: settings.body_limit_bytes,
        },
        config: Arc::new(config.clone()),
        exchange: deps.exchange.clone(),
        started_at_ms: deps.clock.now_ms(),
        // Filled in once the users' counters exist.
        counters: Arc::new(BTreeMap::new()),
        // Filled in once the identity is made (it carries this URL).
        instance: crate::instance::InstanceIdentity::new(&config.database_path(), Some(url.clone())),
    };
    Ok((http, url))
}

/// A user's configured strategies as trader slots.
fn slot_specs(user: &crate::config::UserConfig) -> Vec<SlotSpec> {
    user.strategies
        .iter()
        .map(|s| SlotSpec {
            symbol: s.symbol.clone(),
            timeframe: s.timeframe,
            strategy: s.strategy.clone(),
            position_size_usdt: s.position_size_usdt,
        })
        .collect()
}

/// The database, its outbox and (with `[chaos]` on) the database fault hook.
fn persistence_settings(config: &Config) -> PersistenceSettings {
    PersistenceSettings {
        database_path: config.database_path(),
        outbox_path: config.outbox_path(),
        outbox_capacity: config.server.outbox_records_max,
        database_fault_file: config.chaos.database_fault_file.clone().filter(|_| config.chaos.enabled),
    }
}

// ---------------------------------------------------------------------------------------------
// The environment: secrets are read from variables the config names. `run` (and `reconcile`)
// read them through these functions, and `check-config` calls the same ones through
// [`check_environment`], so both refuse the same config with the same words.

/// What [`check_environment`] found: what stops `run`, and what `run` would do without a word.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvironmentCheck {
    /// Each a variable whose absence (or bad value) stops `run` at start-up, named as `run`
    /// names it.
    pub problems: Vec<ConfigProblem>,
    /// Each a Binance user `run` would halt for want of its API keys while the others trade.
    pub warnings: Vec<String>,
}

/// Reads every environment variable `run` needs for `config`, starting nothing and keeping no
/// value: the secrets are dropped at once, and only variable names reach the result.
pub fn check_environment(config: &Config) -> EnvironmentCheck {
    let mut check = EnvironmentCheck::default();
    if matches!(config.exchange.venue, VenueConfig::Binance(_)) {
        match binance_credentials(config) {
            Ok(read) => check.warnings.extend(read.missing.iter().map(|(user, why)| {
                format!("user {user}: {why}: run halts this user at start (the other users trade)")
            })),
            Err(problem) => check.problems.push(problem),
        }
    }
    if let Some(settings) = &config.intelligence
        && let Err(problem) = intelligence_api_key(settings)
    {
        check.problems.push(problem);
    }
    if let Err(problem) = notify_destinations(config) {
        check.problems.push(problem);
    }
    if let Some(settings) = &config.http
        && let Err(problem) = http_token(settings)
    {
        check.problems.push(problem);
    }
    check
}

/// The Binance users' API keys: who has them, and why each of the others does not.
#[derive(Debug)]
pub struct BinanceCredentials {
    pub credentials: BTreeMap<UserId, Credentials>,
    /// By user: which variables are missing (names only). These users are halted with this reason
    /// (their signed requests fail as refused credentials); the others trade.
    pub missing: BTreeMap<UserId, String>,
}

/// Reads every Binance user's key and secret from the variables its config names. With no user
/// able to sign, nothing could trade at all: refused, naming every missing variable.
pub fn binance_credentials(config: &Config) -> Result<BinanceCredentials, ConfigProblem> {
    let (mut credentials, mut missing) = (BTreeMap::new(), BTreeMap::new());
    for (index, user) in config.users.iter().enumerate() {
        let (Some(key_env), Some(secret_env)) = (&user.api_key_env, &user.api_secret_env) else {
            // Config validation requires both with kind = "binance"; a hand-built config may not.
            return Err(ConfigProblem {
                path: format!("users[{index}]"),
                message: format!("user {} has no api_key_env / api_secret_env", user.id),
            });
        };
        match (crate::secret::from_env(key_env), crate::secret::from_env(secret_env)) {
            (Ok(api_key), Ok(api_secret)) => {
                credentials.insert(user.id.clone(), Credentials { api_key, api_secret });
            }
            (key, secret) => {
                let why: Vec<String> = [key.err(), secret.err()].into_iter().flatten().collect();
                missing.insert(user.id.clone(), why.join("; "));
            }
        }
    }
    if credentials.is_empty() && !missing.is_empty() {
        let every: Vec<String> = missing.iter().map(|(user, why)| format!("{user}: {why}")).collect();
        return Err(ConfigProblem {
            path: "users".to_owned(),
            message: format!("no user has API credentials ({})", every.join("; ")),
        });
    }
    Ok(BinanceCredentials { credentials, missing })
}

/// `[intelligence] api_key_env`'s key: a variable that is not set stops the server at start-up.
fn intelligence_api_key(settings: &crate::config::IntelligenceConfig) -> Result<Secret, ConfigProblem> {
    crate::secret::from_env(&settings.api_key_env)
        .map_err(|why| ConfigProblem { path: "intelligence.api_key_env".to_owned(), message: why })
}

/// `[http] token_env`'s bearer token, if one is configured.
fn http_token(settings: &crate::config::HttpConfig) -> Result<Option<Secret>, ConfigProblem> {
    let Some(name) = &settings.token_env else { return Ok(None) };
    crate::secret::from_env(name)
        .map(Some)
        .map_err(|why| ConfigProblem { path: "http.token_env".to_owned(), message: why })
}

/// The notification destinations `[notify]` names, with their secrets read from the environment.
/// A variable that is not set is a start-up error naming it (never its value).
fn notify_destinations(config: &Config) -> Result<Destinations, ConfigProblem> {
    let Some(notify) = &config.notify else { return Ok(Destinations::default()) };
    let read = |path: &str, name: &str| {
        crate::secret::from_env(name).map_err(|why| ConfigProblem { path: path.to_owned(), message: why })
    };
    let telegram = match &notify.telegram {
        Some(telegram) => {
            let token = read("notify.telegram_bot_token_env", &telegram.bot_token_env)?;
            let chat_id = read("notify.telegram_chat_id_env", &telegram.chat_id_env)?;
            Some((telegram.base_url.clone(), token, chat_id.expose().to_owned()))
        }
        None => None,
    };
    let webhook = match &notify.webhook_url_env {
        Some(name) => {
            let url = read("notify.webhook_url_env", name)?;
            if !url::Url::parse(url.expose()).is_ok_and(|u| matches!(u.scheme(), "http" | "https")) {
                return Err(ConfigProblem {
                    path: "notify.webhook_url_env".to_owned(),
                    message: format!("the variable {name} does not hold an http(s) URL"),
                });
            }
            Some(url)
        }
        None => None,
    };
    Ok(Destinations { telegram, webhook })
}

/// Tells the Notifier about the supervision events an operator must hear of (crashes,
/// quarantines, re-admissions, halts, escalations). Reads the journal's live tap (bounded: a
/// burst it cannot keep up with is reported as lost, never queued without bound).
fn spawn_supervision_notices(mut tap: broadcast::Receiver<TreeEvent>, directory: Arc<Directory>) {
    use crate::notify::Severity;
    use crate::supervision::journal::EventKind;
    actix::spawn(async move {
        loop {
            let event = match tap.recv().await {
                Ok(TreeEvent::Supervision(event)) => event,
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(lost)) => {
                    let text = format!("{lost} supervision events were not looked at (burst)");
                    crate::actors::notifier::notify(&directory, "notices-lagged", Severity::Warning, text);
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            let who = match &event.user {
                Some(user) => format!("{} {user}", event.actor.as_str()),
                None => event.actor.as_str().to_owned(),
            };
            let reason = event.reason.as_deref().unwrap_or("");
            let (severity, what) = match event.event {
                EventKind::Crashed => (Severity::Warning, "crashed"),
                EventKind::Quarantined => (Severity::Critical, "quarantined"),
                EventKind::Readmitted => (Severity::Info, "re-admitted"),
                EventKind::Halted => (Severity::Critical, "halted"),
                EventKind::Escalated => (Severity::Critical, "escalated: the process exits for systemd to restart it"),
                _ => continue,
            };
            let key = format!("{}:{who}", event.event.as_str());
            crate::actors::notifier::notify(&directory, key, severity, format!("{who} {what}: {reason}"));
        }
    });
}

/// Starts the configured exchange.
pub fn start_exchange(config: &Config, clock: Arc<dyn Clock>) -> anyhow::Result<Arc<dyn Exchange>> {
    match &config.exchange.venue {
        VenueConfig::Paper(settings) => {
            let path = config.paper_journal_path();
            std::fs::create_dir_all(&config.server.data_dir)
                .with_context(|| format!("creating directory {}", config.server.data_dir.display()))?;
            let journal = PaperJournal::open(&path)
                .with_context(|| format!("opening the paper exchange's books {}", path.display()))?;
            let exchange =
                PaperExchange::start(settings.clone(), clock, journal).context("starting the paper exchange")?;
            Ok(Arc::new(exchange))
        }
        VenueConfig::Binance(binance) => {
            let BinanceCredentials { credentials, missing: credentials_missing } = binance_credentials(config)?;
            for (user, why) in &credentials_missing {
                tracing::error!(%user, %why, "credentials missing: this user will be halted");
            }
            let settings = BinanceSettings {
                base_url: binance.base_url.clone(),
                recv_window_ms: config.exchange.recv_window_ms,
                timeout: config.exchange.timeout,
                weight_limit_per_minute: binance.weight_limit_per_minute,
                credentials,
                credentials_missing,
                retry: config.retry,
                user_data_stream: binance.user_data_stream,
                market_stream: binance.market_stream,
                trade_stream: binance.trade_stream,
                stream_url: binance.stream_url.clone(),
                listen_key_keepalive: binance.listen_key_keepalive,
                stream_connects_per_second: binance.stream_connects_per_second,
                stream_rotation: binance.stream_rotation,
                stream_silence_max: binance.stream_silence,
            };
            let client = BinanceClient::new(settings, clock).map_err(anyhow::Error::msg)?;
            Ok(Arc::new(client))
        }
    }
}

/// Checks every configured symbol against the exchange's own list. An exchange that cannot be
/// reached is not a reason to refuse to start (the traders will say why they skip); a symbol the
/// exchange does not trade is a configuration error.
pub async fn check_symbols(config: &Config, exchange: &dyn Exchange) -> anyhow::Result<()> {
    if matches!(config.exchange.venue, VenueConfig::Paper(_)) {
        return Ok(());
    }
    let mut unknown = Vec::new();
    for (user_index, user) in config.users.iter().enumerate() {
        for (strategy_index, strategy) in user.strategies.iter().enumerate() {
            match exchange.symbol_rules(&strategy.symbol).await {
                Ok(_) => {}
                Err(ExchangeError::Rejected { code: -1121, .. }) => unknown.push(format!(
                    "users[{user_index}].strategies[{strategy_index}].symbol: {} is not traded on {}",
                    strategy.symbol,
                    exchange.venue()
                )),
                Err(error) => {
                    tracing::warn!(%error, "cannot check the configured symbols against the exchange now; going on");
                    return Ok(());
                }
            }
        }
    }
    if unknown.is_empty() { Ok(()) } else { anyhow::bail!("{}", unknown.join("\n")) }
}

/// Why the server is stopping.
enum StopReason {
    Signal(&'static str),
    Duration,
    Escalated(String),
}

/// `bulwark reconcile`: for every user, resolve every unresolved order by its client order id and
/// cancel orphan orders, as a trader does when it starts, then exit. It sends no order: an order
/// whose outcome is unknown is looked up (waiting, within a bound, for its receive window to close)
/// and, if the exchange never had it, recorded as never placed. Refuses to run while a server
/// holds the database.
pub fn reconcile(config: Config) -> anyhow::Result<Vec<(UserId, Result<ReconcileReport, String>)>> {
    let database_path = config.database_path();
    std::fs::create_dir_all(&config.server.data_dir)
        .with_context(|| format!("creating directory {}", config.server.data_dir.display()))?;
    let _lock = InstanceLock::acquire(&database_path)?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let exchange = start_exchange(&config, clock.clone())?;
    let user_ids: Vec<UserId> = config.users.iter().map(|u| u.id.clone()).collect();
    Store::open(&database_path)
        .and_then(|mut store| store.ensure_users(&user_ids, clock.now_ms()))
        .with_context(|| format!("preparing the database {}", database_path.display()))?;
    let system = System::new();
    let (persistence_arbiter, router_arbiter) = (Arbiter::new(), Arbiter::new());
    let reports = system.block_on(async {
        let directory = Arc::new(Directory::default());
        let (settings, gauge) = (persistence_settings(&config), directory.outbox.clone());
        let persistence = spawn_watched(
            &persistence_arbiter.handle(),
            PERSISTENCE_MAILBOX_CAPACITY,
            move || PersistenceActor::new(settings, gauge),
            |_| {},
        );
        directory.set_persistence(Some(persistence.clone()));
        // No resubmission: with no trader running, an order sent now would be a position nobody
        // manages. An order not found once its window closed is recorded as never placed. No grace
        // for committed-but-unsent intents either: the lock proves no server can still send them.
        let settings = RouterSettings {
            recv_window_ms: config.exchange.recv_window_ms,
            exchange_timeout: config.exchange.timeout * 4 + Duration::from_secs(70),
            resubmissions_max: 0,
            pending_grace_ms: 0,
            ..RouterSettings::default()
        };
        // Orders whose receive window is still open (or committed moments ago) cannot be resolved
        // yet, and orders open on the exchange (placed just before the server stopped) have fills
        // still to come: pass again until every order is final, within a bound.
        let wait_ms_max = (settings.recv_window_ms + settings.clock_skew_margin_ms).max(settings.pending_grace_ms)
            + config.exchange.timeout.as_millis() as i64;
        let router_directory = directory.clone();
        let router = spawn_watched(
            &router_arbiter.handle(),
            SHARED_MAILBOX_CAPACITY,
            move || OrderRouter::new(exchange, router_directory, clock.clone(), settings),
            |_| {},
        );
        let started = tokio::time::Instant::now();
        let mut reports: Vec<(UserId, Result<ReconcileReport, String>)> = Vec::new();
        let mut pending_users = user_ids;
        loop {
            // A pass can take long (a request waiting for weight budget): the bound ends the
            // passes only after one that began past it, so the last word on every order is a look
            // taken after the orders had the whole bound to settle.
            let pass_started_ms = started.elapsed().as_millis() as i64;
            let mut waiting = Vec::new();
            for user in pending_users {
                let symbols = config
                    .users
                    .iter()
                    .find(|u| u.id == user)
                    .map(|u| u.strategies.iter().map(|s| s.symbol.clone()).collect())
                    .unwrap_or_default();
                let report = match router.send(ReconcileUser { user: user.clone(), symbols, settled: true }).await {
                    Ok(report) => report.map_err(|e| e.to_string()),
                    Err(error) => Err(format!("order router did not answer: {error}")),
                };
                let merged = match (reports.iter().position(|(u, _)| *u == user), report) {
                    (Some(index), Ok(later)) => {
                        let earlier = std::mem::replace(&mut reports[index].1, Ok(ReconcileReport::default()));
                        reports[index].1 = earlier.map(|e| e.followed_by(later));
                        index
                    }
                    (Some(index), Err(error)) => {
                        reports[index].1 = Err(error);
                        index
                    }
                    (None, report) => {
                        reports.push((user.clone(), report));
                        reports.len() - 1
                    }
                };
                if reports[merged].1.as_ref().is_ok_and(|r| r.waiting_orders() > 0) {
                    waiting.push(user);
                }
            }
            let waited_ms = started.elapsed().as_millis() as i64;
            if waiting.is_empty() || pass_started_ms >= wait_ms_max {
                break;
            }
            tracing::info!(users = ?waiting.iter().map(UserId::as_str).collect::<Vec<_>>(), waited_ms, wait_ms_max, "reconcile: orders not final yet (open, or inside their receive window); passing again in 1 s");
            tokio::time::sleep(Duration::from_secs(1)).await;
            pending_users = waiting;
        }
        let _ = persistence.send(crate::actors::persistence::Run::after_commit(|store| store.checkpoint())).await;
        System::current().stop();
        reports
    });
    RunningServer::join_arbiters(vec![persistence_arbiter, router_arbiter]);
    Ok(reports)
}

/// `bulwark run`: the whole life of the server process. Returns the exit code.
pub fn run(config: Config, duration: Option<Duration>) -> anyhow::Result<i32> {
    let database_path = config.database_path();
    std::fs::create_dir_all(&config.server.data_dir)
        .with_context(|| format!("creating directory {}", config.server.data_dir.display()))?;
    let _lock = InstanceLock::acquire(&database_path)?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let exchange = start_exchange(&config, clock.clone())?;
    // Circuit breakers in front of the exchange; their opening and closing reach operators through
    // the notifier (looked up when it happens: the directory is filled once the tree starts).
    let breaker_directory: Arc<std::sync::OnceLock<Arc<Directory>>> = Arc::new(std::sync::OnceLock::new());
    let hook_directory = breaker_directory.clone();
    let on_transition: TransitionHook = Arc::new(move |name, _user, transition| {
        let Some(directory) = hook_directory.get() else { return };
        let (severity, text) = match transition.to {
            BreakerState::Open => (
                crate::notify::Severity::Critical,
                format!(
                    "circuit breaker {name} opened until {}: {}",
                    transition.until_ms.map(crate::clock::rfc3339_ms).unwrap_or_default(),
                    transition.reason
                ),
            ),
            BreakerState::Closed => {
                (crate::notify::Severity::Info, format!("circuit breaker {name} closed: {}", transition.reason))
            }
            BreakerState::HalfOpen => return,
        };
        let key = format!("breaker:{name}:{}", transition.to.as_str());
        crate::actors::notifier::notify(directory, key, severity, text);
    });
    let metrics = Metrics::new();
    let exchange: Arc<dyn Exchange> =
        Arc::new(BreakerExchange::new(exchange, clock.clone(), config.breaker, on_transition, metrics.clone()));
    let reload_exchange = exchange.clone();
    let deps = ServerDeps { clock, exchange, market_poll_interval: Some(config.market_poll_interval()), metrics };
    let system = System::new();
    let (exit_code, arbiters) = system.block_on(async move {
        // Listen for signals before anything starts, so that a SIGTERM during start-up is an
        // orderly stop too.
        let stop_signals = StopSignals::install();
        tracing::info!(
            config = %config.source_name,
            users = config.users.len(),
            database = %database_path.display(),
            logs = %config.server.log_dir.display(),
            exchange = deps.exchange.venue(),
            "bulwark starting"
        );
        check_symbols(&config, deps.exchange.as_ref()).await?;
        let mut server = start(&config, deps)?;
        let _ = breaker_directory.set(server.directory.clone());
        // The root handles messages only once its `started` has spawned every shared actor and
        // user supervisor: one round trip means the tree is up.
        let _ = server.root.send(crate::supervision::root::GetTreeStatus).await;
        crate::service::ready(&format!("trading {} user(s) from {}", config.users.len(), config.source_name));
        let mut reloader = Reloader { running: config.clone(), root: server.root.clone(), exchange: reload_exchange };
        let reason = stop_signals.wait(&mut server.escalation, duration, &mut reloader).await;
        let exit_code = match reason {
            StopReason::Escalated(reason) => {
                tracing::error!(%reason, "escalation: exiting with code {EXIT_ESCALATED}");
                EXIT_ESCALATED
            }
            StopReason::Signal(signal) => {
                tracing::info!("received {signal}: shutting down in order");
                crate::service::stopping(&format!("received {signal}: shutting down in order"));
                log_shutdown(server.shutdown().await)
            }
            StopReason::Duration => {
                tracing::info!("--duration reached: shutting down in order");
                crate::service::stopping("--duration reached: shutting down in order");
                log_shutdown(server.shutdown().await)
            }
        };
        // The URL no longer leads to this server: the command line reads the database instead.
        if server.http_url.is_some() {
            let _ = std::fs::remove_file(config.server.data_dir.join("bulwark.http"));
        }
        crate::instance::remove(&config.server.data_dir, &server.instance);
        System::current().stop();
        Ok::<_, anyhow::Error>((exit_code, server.take_arbiters()))
    })?;
    RunningServer::join_arbiters(arbiters);
    Ok(exit_code)
}

fn log_shutdown(report: ShutdownReport) -> i32 {
    tracing::info!(orders_in_flight = report.orders_in_flight, flushed = report.flushed, "bulwark stopped");
    0
}

/// Longest wait for the exchange to confirm a reloaded config's symbols.
const RELOAD_CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// Applies a reloaded config file to the running tree (see `crate::reload`).
struct Reloader {
    /// The config the tree runs on now (what was loaded, plus what reloads applied).
    running: Config,
    root: Addr<RootSupervisor>,
    exchange: Arc<dyn Exchange>,
}

impl Reloader {
    /// SIGHUP: re-reads and validates the config file. An invalid file changes nothing (the
    /// Monitor's CFG-INVALID says the same on its next run); a valid one is applied as far as it
    /// can be live, and the rest is named as waiting for a restart.
    async fn reload(&mut self) {
        let Some(path) = self.running.source_file() else {
            tracing::warn!("SIGHUP: the server runs on the embedded default config; nothing to re-read");
            return;
        };
        let (new, plan) = match crate::reload::prepare(&self.running, &path) {
            Ok(prepared) => prepared,
            Err(errors) => {
                tracing::error!(
                    failure_point = "CFG-INVALID",
                    "SIGHUP: the config file does not validate; still running on the config it had: {errors}"
                );
                return;
            }
        };
        // Bounded: stop signals wait while a reload runs.
        match tokio::time::timeout(RELOAD_CHECK_TIMEOUT, check_symbols(&new, self.exchange.as_ref())).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::error!(
                    failure_point = "CFG-INVALID",
                    "SIGHUP: not applied, still running on the config it had: {error:#}"
                );
                return;
            }
            Err(_) => {
                tracing::error!(
                    "SIGHUP: not applied: the exchange did not confirm the symbols within {} s; still running on the config it had",
                    RELOAD_CHECK_TIMEOUT.as_secs()
                );
                return;
            }
        }
        for warning in crate::config::warnings(&new) {
            tracing::warn!(config = %path.display(), "SIGHUP: {warning}");
        }
        if plan.is_empty() {
            tracing::info!(config = %path.display(), "SIGHUP: the config file is unchanged");
            return;
        }
        let delivered;
        (self.running, delivered) = apply_config(&self.root, &self.running, &new).await;
        let reconfigured: Vec<&str> = delivered.iter().map(UserId::as_str).collect();
        if plan.needs_restart.is_empty() {
            tracing::warn!(config = %path.display(), reconfigured = ?reconfigured, "SIGHUP: config reloaded and applied");
        } else {
            tracing::warn!(
                config = %path.display(),
                reconfigured = ?reconfigured,
                "SIGHUP: config reloaded; applied live where possible. These take effect at the next restart: {}",
                plan.needs_restart.join("; ")
            );
        }
    }
}

/// Applies a validated config to the running tree as far as it can change live (see
/// `crate::reload`): every user whose strategies, risk limits or guards changed gets `Reconfigure`
/// (its trader restarts in order on the new seed, reloading its locks and risk state from the
/// database). Returns the config the tree runs on afterwards and the users reconfigured. SIGHUP
/// comes here after validation; tests call it directly.
pub async fn apply_config(root: &Addr<RootSupervisor>, running: &Config, new: &Config) -> (Config, Vec<UserId>) {
    let plan = crate::reload::plan(running, new);
    let mut delivered = Vec::new();
    for (user, reason) in &plan.reconfigure {
        let Some(updated) = new.users.iter().find(|u| &u.id == user) else { continue };
        let message = crate::supervision::user::Reconfigure {
            slots: slot_specs(updated),
            limits: new.risk,
            guards: new.guards.clone(),
            reason: reason.clone(),
        };
        match root.send(crate::supervision::root::UserSupervisorOf(user.clone())).await {
            Ok(Some(supervisor)) => match supervisor.send(message).await {
                Ok(()) => delivered.push(user.clone()),
                Err(error) => {
                    tracing::error!(%user, %error, "config reload: the user's supervisor did not take the new config")
                }
            },
            _ => tracing::error!(%user, "config reload: the user's supervisor could not be found"),
        }
    }
    (crate::reload::applied(running, new, &delivered), delivered)
}

/// SIGTERM and SIGINT, listened for from start-up on; SIGHUP re-reads the config.
struct StopSignals {
    terminate: Option<tokio::signal::unix::Signal>,
    interrupt: Option<tokio::signal::unix::Signal>,
    /// SIGHUP (`systemctl reload`): the config file is re-read, validated and applied (see
    /// [`Reloader`]).
    hangup: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    fn install() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        let listen = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(listener) => Some(listener),
            Err(error) => {
                tracing::warn!(%error, "cannot listen for {name}");
                None
            }
        };
        Self {
            terminate: listen(SignalKind::terminate(), "SIGTERM"),
            interrupt: listen(SignalKind::interrupt(), "SIGINT"),
            hangup: listen(SignalKind::hangup(), "SIGHUP"),
        }
    }

    async fn wait(
        mut self,
        escalation: &mut oneshot::Receiver<String>,
        duration: Option<Duration>,
        reloader: &mut Reloader,
    ) -> StopReason {
        async fn received(listener: &mut Option<tokio::signal::unix::Signal>) {
            match listener.as_mut() {
                Some(listener) => {
                    listener.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        let elapsed = async {
            match duration {
                Some(duration) => tokio::time::sleep(duration).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(elapsed);
        loop {
            tokio::select! {
                _ = received(&mut self.interrupt) => return StopReason::Signal("SIGINT"),
                _ = received(&mut self.terminate) => return StopReason::Signal("SIGTERM"),
                _ = &mut elapsed => return StopReason::Duration,
                reason = &mut *escalation => {
                    return StopReason::Escalated(reason.unwrap_or_else(|_| "escalation channel closed".to_owned()))
                }
                _ = received(&mut self.hangup) => reloader.reload().await,
            }
        }
    }
}
