//! Fleet benchmarks (issue 7): bulwark's supervision tree against the seed design, for N users on
//! 100 symbols of the paper exchange, every figure measured in this run.
//!
//! `scripts/bench.sh` runs it (`cargo bench --bench fleet -- --out docs/BENCHMARKS.md`). The
//! parent process only orchestrates: for each N it re-executes this binary as a child per
//! measurement, so that every child's peak RSS (`VmHWM`) is its own, and writes the report from the
//! children's JSON answers (one line on stdout each). The children:
//!
//! - `--child bulwark N DIR`: starts the whole tree (`server::start`, the same shared actors,
//!   supervisors and traders as `bulwark run`, the exchange behind the same circuit breakers) on a
//!   fresh database, then measures the cold start, K candle closes (close → every user's
//!   decision), crash → restarted, and durable fills/s through the persistence actor.
//! - `--child restart N DIR CLOCK_MS`: starts a second tree on the database and paper books the
//!   first child left, and measures the cold start from the database (reconciliation included).
//! - `--child seed N DIR`: the seed design (`../shared/seeds/`): one independent loop per user, each
//!   on its own OS thread like the seed's per-user bot, fetching its own candles (`klines`) and its
//!   position from the exchange and running its strategy on them.
//!
//! The market runs on a manual clock: a candle "closes" when the bench advances the clock by the
//! paper exchange's `candle_interval_ms`; the paper venue streams it to market data at once (its
//! ticker wakes on the move), and market data is also polled at once (the poll timer's turn,
//! which backfills by REST what no connection brought). Klines requests are counted by a decorator
//! around the paper exchange. Completion is observed by a sampling thread reading every user's
//! iteration counters every ~100 µs, so latencies have that resolution.
//!
//! Run without `--bench` (as `cargo test --benches` does) it does nothing: it is not a test.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use async_trait::async_trait;
use bulwark::actors::market_data::{GetStats, Poll};
use bulwark::actors::persistence;
use bulwark::actors::trader::UserCounters;
use bulwark::clock::{Clock, ManualClock};
use bulwark::config::{Config, VenueConfig};
use bulwark::domain::{
    Balance, Candle, ClientOrderId, ExchangeOrder, Fill, OrderRequest, Position, Side, Symbol, SymbolRules, Timeframe,
    UserId,
};
use bulwark::exchange::guarded::{BreakerExchange, BreakerStatus};
use bulwark::exchange::paper::PaperExchange;
use bulwark::exchange::{Exchange, ExchangeError, RequestBudget};
use bulwark::persistence::DecisionRecord;
use bulwark::persistence::outbox::{Durability, DurableWrite};
use bulwark::persistence::paper_journal::PaperJournal;
use bulwark::server::{RunningServer, ServerDeps};
use bulwark::supervision::journal::{ActorKind, ChildState, EventKind, TreeEvent};
use bulwark::supervision::root::{GetTreeStatus, UserSupervisorOf};
use bulwark::supervision::user::OperatorRequest;
use futures::StreamExt as _;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use tokio::sync::{broadcast, oneshot};

/// The manual clock's start (any fixed time; the paper market is created fresh at it).
const START_MS: i64 = 1_700_000_000_000;
/// Symbols every run trades (random walks on the paper exchange).
const SYMBOLS: usize = 100;
/// Wall time per 5-minute paper candle (the accelerated market; the manual clock steps by it).
const CANDLE_INTERVAL_MS: i64 = 1_000;
/// Candles handed to a strategy (bulwark's `CANDLE_WINDOW_LEN` plus the forming one, as market
/// data asks for); the seed loop asks for the same so both decide on the same window.
const KLINES_LIMIT: u16 = 201;
/// Closes before the measured ones (first-decision effects: caches, indicator warm-up, accounts).
const WARMUP_CLOSES: usize = 2;
/// Longest wait for one close's decisions, or for a start, before the run is declared stuck.
const STEP_TIMEOUT: Duration = Duration::from_secs(180);
/// Durable writes in flight at once in the fills measurement.
const FILL_WRITES_IN_FLIGHT: usize = 256;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(index) = args.iter().position(|a| a == "--child") {
        let child = &args[index + 1..];
        let n: usize = child.get(1).and_then(|s| s.parse().ok()).expect("--child DESIGN N DIR");
        let dir = PathBuf::from(child.get(2).expect("--child DESIGN N DIR"));
        let plan = Plan::for_users(n);
        let result = match child[0].as_str() {
            "bulwark" => child_bulwark(n, &dir, &plan),
            "restart" => {
                let clock_ms: i64 = child.get(3).and_then(|s| s.parse().ok()).expect("restart needs CLOCK_MS");
                child_restart(n, &dir, clock_ms, plan.fills)
            }
            "seed" => child_seed(n, &dir, &plan),
            other => panic!("unknown child {other}"),
        };
        println!("{result}");
        // Thousands of threads and actors: the process ends here rather than tearing them down.
        std::process::exit(0);
    }
    if !args.iter().any(|a| a == "--bench") {
        eprintln!("fleet: a benchmark, not a test; run it with scripts/bench.sh (cargo bench --bench fleet)");
        return;
    }
    let value_of = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let out = PathBuf::from(value_of("--out").unwrap_or_else(|| "docs/BENCHMARKS.md".to_owned()));
    let users: Vec<usize> = value_of("--users")
        .unwrap_or_else(|| "100,1000,10000".to_owned())
        .split(',')
        .map(|s| s.trim().parse().expect("--users takes numbers separated by commas"))
        .collect();
    parent(&users, &out);
}

/// How much each run measures, by fleet size (kept within the script's time budget).
#[derive(Debug, Clone, Copy)]
struct Plan {
    closes: usize,
    crashes: usize,
    fills: usize,
}

impl Plan {
    fn for_users(n: usize) -> Self {
        let closes = if n >= 10_000 { 10 } else { 20 };
        Self { closes, crashes: n.min(200), fills: 50_000 }
    }
}

// ---------------------------------------------------------------------------------------------
// The parent: runs the children, writes the report.

fn parent(users: &[usize], out: &Path) {
    let work = PathBuf::from("target/bench-fleet");
    std::fs::create_dir_all(&work).expect("creating target/bench-fleet");
    // Before anything of the bench runs: the load average says whether the machine was quiet.
    let machine = machine();
    let started = Instant::now();
    let mut rows = Vec::new();
    for &n in users {
        let dir = work.join(format!("n{n}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating the run directory");
        eprintln!("fleet: N = {n}: bulwark ...");
        let bulwark = run_child(&["bulwark", &n.to_string(), &dir.display().to_string()], &dir.join("bulwark.log"));
        let clock_ms = bulwark["final_clock_ms"].as_i64().expect("the bulwark child reports its final clock");
        eprintln!("fleet: N = {n}: cold start from the database ...");
        let restart = run_child(
            &["restart", &n.to_string(), &dir.display().to_string(), &clock_ms.to_string()],
            &dir.join("restart.log"),
        );
        let seed_dir = dir.join("seed");
        std::fs::create_dir_all(&seed_dir).expect("creating the seed run directory");
        eprintln!("fleet: N = {n}: seed design ...");
        let seed = run_child(&["seed", &n.to_string(), &seed_dir.display().to_string()], &dir.join("seed.log"));
        // The databases are large at 10,000 users; the logs stay for inspection.
        let _ = std::fs::remove_dir_all(dir.join("data"));
        let _ = std::fs::remove_dir_all(seed_dir.join("data"));
        rows.push(json!({ "users": n, "bulwark": bulwark, "restart": restart, "seed": seed }));
    }
    let total = started.elapsed();
    let mut results = json!({ "machine": machine, "runs": rows, "elapsed_s": total.as_secs_f64() });
    results["machine"]["loadavg_after"] =
        json!(std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_owned());
    std::fs::write(work.join("results.json"), serde_json::to_string_pretty(&results).unwrap())
        .expect("writing target/bench-fleet/results.json");
    let report = render(&results);
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).expect("creating the report's directory");
    }
    std::fs::write(out, report).expect("writing the report");
    eprintln!("fleet: wrote {} in {:.0} s", out.display(), total.as_secs_f64());
}

fn run_child(args: &[&str], log: &Path) -> Value {
    let exe = std::env::current_exe().expect("the bench's own path");
    let stderr = std::fs::File::create(log).expect("creating a child's log");
    let output = Command::new(exe)
        .arg("--child")
        .args(args)
        .stdin(Stdio::null())
        .stderr(stderr)
        .output()
        .expect("running a child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().rev().find(|l| l.starts_with('{'));
    match (output.status.success(), line) {
        (true, Some(line)) => serde_json::from_str(line).expect("a child's JSON"),
        _ => panic!("child {args:?} failed ({}); see {}", output.status, log.display()),
    }
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown".to_owned(), |m| m.trim().to_owned());
    let processors = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_total_kb = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let command = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|| "unknown".to_owned())
    };
    let dirty: Vec<String> = command("git", &["status", "--porcelain", "--untracked-files=no"])
        .lines()
        .filter(|l| !l.trim().is_empty() && *l != "unknown")
        .map(|l| l.trim().to_owned())
        .collect();
    json!({
        "cpu_model": model,
        "processors": processors,
        "nproc": command("nproc", &[]),
        "mem_total_kb": mem_total_kb,
        "kernel": command("uname", &["-sr"]),
        "rustc": command("rustc", &["--version"]),
        "commit": command("git", &["rev-parse", "HEAD"]),
        "commit_subject": command("git", &["log", "-1", "--format=%s"]),
        "modified_files": dirty,
        "date": command("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        "loadavg_before": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_owned(),
    })
}

// ---------------------------------------------------------------------------------------------
// Shared set-up.

/// The config both designs run on: 100 random-walk symbols, N users each trading one of them on
/// 5-minute candles with one of the three strategies, the HTTP API off (no port), restarts without
/// backoff (1 ms, the least the config allows; subtracted from the restart figures anyway).
fn config_text(dir: &Path, n: usize) -> String {
    let mut text = String::new();
    let data = dir.join("data");
    let logs = dir.join("logs");
    writeln!(text, "[server]\ndata_dir = {:?}\nlog_dir = {:?}", data.display().to_string(), logs.display().to_string())
        .unwrap();
    text.push_str("[http]\nenabled = false\n");
    text.push_str("[supervisor]\nbackoff_ms_initial = 1\nbackoff_ms_max = 1\n");
    writeln!(
        text,
        "[exchange]\nkind = \"paper\"\n[exchange.paper]\ncandle_interval_ms = {CANDLE_INTERVAL_MS}\nseed = 42"
    )
    .unwrap();
    for index in 0..SYMBOLS {
        writeln!(
            text,
            "[[exchange.paper.random_walk]]\nsymbol = \"{}\"\nstart_price = {}\nvolatility_pct = 0.3\ntick_size = 0.01\nstep_size = 0.01\nmin_notional = 5",
            symbol_name(index),
            20 + 5 * index
        )
        .unwrap();
    }
    const STRATEGIES: [(&str, &str); 3] = [
        ("ema_crossover", "{ fast = 9, slow = 21 }"),
        ("rsi_reversion", "{ period = 14, oversold = 30, overbought = 70 }"),
        ("bollinger_breakout", "{ period = 20, deviations = 2.0 }"),
    ];
    for user in 0..n {
        let (strategy, params) = STRATEGIES[(user / SYMBOLS) % STRATEGIES.len()];
        writeln!(
            text,
            "[[users]]\nid = \"{}\"\n[[users.strategies]]\nsymbol = \"{}\"\ntimeframe = \"5m\"\nstrategy = \"{strategy}\"\nparams = {params}\nposition_size_usdt = 100",
            user_name(user),
            symbol_name(user % SYMBOLS)
        )
        .unwrap();
    }
    text
}

fn symbol_name(index: usize) -> String {
    format!("S{index:03}USDT")
}

fn user_name(index: usize) -> String {
    format!("u{index:05}")
}

/// Writes the config to `<dir>/bulwark.toml` and loads it from there, as `bulwark run --config`
/// does (the Monitor's config checks then look at a real file).
fn load_config(dir: &Path, n: usize) -> Config {
    let path = dir.join("bulwark.toml");
    std::fs::write(&path, config_text(dir, n)).expect("writing the config");
    let config = bulwark::config::load(Some(&path)).unwrap_or_else(|errors| panic!("{errors}"));
    std::fs::create_dir_all(&config.server.data_dir).expect("creating the data directory");
    std::fs::create_dir_all(&config.server.log_dir).expect("creating the log directory");
    config
}

fn start_paper(config: &Config, clock: Arc<ManualClock>) -> PaperExchange {
    let VenueConfig::Paper(settings) = &config.exchange.venue else { panic!("a paper config") };
    let journal = PaperJournal::open(&config.paper_journal_path()).expect("the paper journal opens");
    PaperExchange::start(settings.clone(), clock, journal).expect("the paper exchange starts")
}

/// Has the paper market generate every symbol's history (12,000 candles of random walk each) before
/// anything is measured, so that neither design pays for it inside a figure.
fn warm_market(paper: &PaperExchange) {
    for index in 0..SYMBOLS {
        let symbol = Symbol::new(&symbol_name(index)).unwrap();
        futures::executor::block_on(paper.klines(&symbol, Timeframe::M5, KLINES_LIMIT)).expect("klines");
    }
}

/// A field of `/proc/self/status` in kB (`VmHWM`: peak resident set; `VmRSS`: now).
fn proc_status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn threads_now() -> u64 {
    proc_status_kb("Threads:")
}

/// The paper exchange with every `klines` request counted (the paper exchange counts nothing).
#[derive(Debug)]
struct CountingExchange {
    inner: PaperExchange,
    klines: AtomicU64,
}

impl CountingExchange {
    fn klines_requests(&self) -> u64 {
        self.klines.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Exchange for CountingExchange {
    fn venue(&self) -> &'static str {
        self.inner.venue()
    }
    async fn server_time_ms(&self) -> Result<i64, ExchangeError> {
        self.inner.server_time_ms().await
    }
    fn clock_is_exact(&self) -> bool {
        self.inner.clock_is_exact()
    }
    fn clock_error_ms(&self) -> i64 {
        self.inner.clock_error_ms()
    }
    fn estimated_now_ms(&self) -> Option<i64> {
        self.inner.estimated_now_ms()
    }
    fn venue_pace(&self) -> bulwark::clock::VenuePace {
        self.inner.venue_pace()
    }
    fn account_stream(&self, account: &bulwark::domain::UserId) -> Option<bulwark::exchange::AccountStream> {
        self.inner.account_stream(account)
    }
    fn candle_stream(
        &self,
        feeds: &[(bulwark::domain::Symbol, bulwark::domain::Timeframe)],
    ) -> Option<bulwark::exchange::CandleStream> {
        self.inner.candle_stream(feeds)
    }
    async fn probe_time_ms(&self) -> Result<bulwark::exchange::TimeProbe, ExchangeError> {
        self.inner.probe_time_ms().await
    }
    fn request_budget(&self) -> Option<RequestBudget> {
        self.inner.request_budget()
    }
    fn breaker_statuses(&self) -> Option<Vec<BreakerStatus>> {
        self.inner.breaker_statuses()
    }
    async fn symbol_rules(&self, symbol: &Symbol) -> Result<SymbolRules, ExchangeError> {
        self.inner.symbol_rules(symbol).await
    }
    async fn klines(&self, symbol: &Symbol, timeframe: Timeframe, limit: u16) -> Result<Vec<Candle>, ExchangeError> {
        self.klines.fetch_add(1, Ordering::SeqCst);
        self.inner.klines(symbol, timeframe, limit).await
    }
    async fn position(&self, account: &UserId, symbol: &Symbol) -> Result<Position, ExchangeError> {
        self.inner.position(account, symbol).await
    }
    async fn positions_and_open_orders(
        &self,
        account: &UserId,
    ) -> Result<(Vec<Position>, Vec<ExchangeOrder>), ExchangeError> {
        Ok((self.positions(account).await?, self.open_orders(account, None).await?))
    }
    async fn positions(&self, account: &UserId) -> Result<Vec<Position>, ExchangeError> {
        self.inner.positions(account).await
    }
    async fn balance(&self, account: &UserId) -> Result<Balance, ExchangeError> {
        self.inner.balance(account).await
    }
    async fn create_order(&self, account: &UserId, request: &OrderRequest) -> Result<ExchangeOrder, ExchangeError> {
        self.inner.create_order(account, request).await
    }
    async fn order_by_client_id(
        &self,
        account: &UserId,
        symbol: &Symbol,
        client_order_id: &ClientOrderId,
    ) -> Result<Option<ExchangeOrder>, ExchangeError> {
        self.inner.order_by_client_id(account, symbol, client_order_id).await
    }
    async fn cancel_order(
        &self,
        account: &UserId,
        symbol: &Symbol,
        client_order_id: &ClientOrderId,
    ) -> Result<ExchangeOrder, ExchangeError> {
        self.inner.cancel_order(account, symbol, client_order_id).await
    }
    async fn open_orders(
        &self,
        account: &UserId,
        symbol: Option<&Symbol>,
    ) -> Result<Vec<ExchangeOrder>, ExchangeError> {
        self.inner.open_orders(account, symbol).await
    }
    async fn fills(&self, account: &UserId, symbol: &Symbol, since_ms: i64) -> Result<Vec<Fill>, ExchangeError> {
        self.inner.fills(account, symbol, since_ms).await
    }
    async fn order_fills(
        &self,
        account: &UserId,
        symbol: &Symbol,
        exchange_order_id: &str,
    ) -> Result<Vec<Fill>, ExchangeError> {
        self.inner.order_fills(account, symbol, exchange_order_id).await
    }
}

/// The exchange stack of `bulwark run` (circuit breakers in front), counting klines underneath.
fn exchange_stack(
    config: &Config,
    clock: Arc<ManualClock>,
    paper: PaperExchange,
) -> (Arc<CountingExchange>, ServerDeps) {
    let counting = Arc::new(CountingExchange { inner: paper, klines: AtomicU64::new(0) });
    let metrics = bulwark::metrics::Metrics::new();
    let exchange: Arc<dyn Exchange> = Arc::new(BreakerExchange::new(
        counting.clone(),
        clock.clone(),
        config.breaker,
        Arc::new(|_, _, _| {}),
        metrics.clone(),
    ));
    let deps = ServerDeps { clock, exchange, market_poll_interval: None, metrics };
    (counting, deps)
}

/// Times at which `count()` passed each value from `from + 1` to `to`, measured from `t0` by a
/// thread that reads it about every 100 µs (so each time is late by up to one sampling period).
fn sample_progress(
    count: Arc<dyn Fn() -> u64 + Send + Sync>,
    from: u64,
    to: u64,
    t0: Instant,
) -> oneshot::Receiver<Vec<Duration>> {
    let (answer, answered) = oneshot::channel();
    std::thread::Builder::new()
        .name("bench-sampler".to_owned())
        .spawn(move || {
            let mut times = Vec::with_capacity((to - from) as usize);
            let mut seen = from;
            loop {
                let now = count();
                let elapsed = t0.elapsed();
                if now > seen {
                    for _ in seen..now.min(to) {
                        times.push(elapsed);
                    }
                    seen = now;
                }
                if seen >= to || elapsed > STEP_TIMEOUT {
                    break;
                }
                std::thread::sleep(Duration::from_micros(100));
            }
            let _ = answer.send(times);
        })
        .expect("starting the sampler");
    answered
}

/// The `p` quantile (0..=1) of sorted durations, nearest rank, in ms.
fn quantile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1_000.0
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1_000.0
}

/// What one candle close took.
#[derive(Debug, Default)]
struct CloseOutcome {
    /// When each user's iteration was seen done, from the close (sorted).
    times: Vec<Duration>,
    /// Klines requests the close caused.
    klines: u64,
    /// bulwark: when market data had handed the window to every trader's mailbox.
    delivered: Option<Duration>,
    /// bulwark: when the persistence actor had done everything queued before the last decision.
    persisted: Option<Duration>,
    /// bulwark: durable records refused during the close (every in-flight permit taken).
    refused: u64,
    /// bulwark: deliveries refused because a trader's mailbox was full.
    dropped_full: u32,
}

/// The measured closes of one run, in the shape both designs report.
#[derive(Debug, Default)]
struct CloseStats {
    /// Per close: when the last user decided.
    last: Vec<Duration>,
    /// Every user's decision time over every measured close.
    all: Vec<Duration>,
    klines: Vec<u64>,
    delivered: Vec<Duration>,
    persisted: Vec<Duration>,
    refused: u64,
    dropped_full: u64,
    /// Iterations that did not come within the timeout.
    missing: u64,
    busy: Duration,
    iterations: u64,
}

impl CloseStats {
    fn add(&mut self, close: CloseOutcome, expected: usize) {
        self.missing += (expected - close.times.len()) as u64;
        self.iterations += close.times.len() as u64;
        if let Some(last) = close.times.last() {
            self.last.push(*last);
            self.busy += *last;
        }
        self.all.extend(close.times);
        self.klines.push(close.klines);
        self.delivered.extend(close.delivered);
        self.persisted.extend(close.persisted);
        self.refused += close.refused;
        self.dropped_full += u64::from(close.dropped_full);
    }

    fn summary(&mut self) -> Value {
        for list in [&mut self.last, &mut self.all, &mut self.delivered, &mut self.persisted] {
            list.sort();
        }
        json!({
            "closes": self.last.len(),
            "last_p50_ms": quantile_ms(&self.last, 0.5),
            "last_p99_ms": quantile_ms(&self.last, 0.99),
            "last_max_ms": quantile_ms(&self.last, 1.0),
            "user_p50_ms": quantile_ms(&self.all, 0.5),
            "user_p99_ms": quantile_ms(&self.all, 0.99),
            "delivered_p50_ms": quantile_ms(&self.delivered, 0.5),
            "delivered_p99_ms": quantile_ms(&self.delivered, 0.99),
            "persisted_p50_ms": quantile_ms(&self.persisted, 0.5),
            "persisted_p99_ms": quantile_ms(&self.persisted, 0.99),
            "decisions_per_s": self.iterations as f64 / self.busy.as_secs_f64(),
            "iterations": self.iterations,
            "missing": self.missing,
            "refused": self.refused,
            "dropped_full": self.dropped_full,
            "klines_per_close_min": self.klines.iter().min(),
            "klines_per_close_max": self.klines.iter().max(),
            "klines_per_close_mean": self.klines.iter().sum::<u64>() as f64 / self.klines.len().max(1) as f64,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// bulwark.

/// Decision records seen on the live tap, by kind (a thread drains it so that it never lags far).
#[derive(Debug, Default)]
struct TapCounts {
    follow_ups: AtomicU64,
    lagged: AtomicU64,
}

fn count_follow_ups(mut tap: broadcast::Receiver<DecisionRecord>) -> Arc<TapCounts> {
    let counts = Arc::new(TapCounts::default());
    let written = counts.clone();
    std::thread::Builder::new()
        .name("bench-decision-tap".to_owned())
        .spawn(move || {
            loop {
                match tap.blocking_recv() {
                    Ok(record) => {
                        if !record.counts_as_decision && record.outcome != "skipped" {
                            written.follow_ups.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(lost)) => {
                        written.lagged.fetch_add(lost, Ordering::SeqCst);
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        })
        .expect("starting the tap reader");
    counts
}

/// Waits until all `n` traders report running (state reloaded, reconciled, subscribed). A thread
/// reads the supervision tap and timestamps each `running`; if the tap lags (it holds 4,096 events)
/// the tree is asked instead, every 50 ms. Returns the time and how it was observed.
async fn wait_all_running(server: &RunningServer, n: usize, t0: Instant) -> (Duration, &'static str) {
    let mut tap = server.supervision.subscribe();
    let (done, mut finished) = oneshot::channel::<Option<Duration>>();
    std::thread::Builder::new()
        .name("bench-start-tap".to_owned())
        .spawn(move || {
            let mut running = HashSet::new();
            loop {
                match tap.blocking_recv() {
                    Ok(TreeEvent::StateChanged {
                        actor: ActorKind::Trader,
                        user: Some(user),
                        state: ChildState::Running,
                        ..
                    }) => {
                        running.insert(user);
                        if running.len() == n {
                            let _ = done.send(Some(t0.elapsed()));
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => {
                        let _ = done.send(None);
                        return;
                    }
                }
            }
        })
        .expect("starting the start tap reader");
    let mut tap_failed = false;
    loop {
        if !tap_failed {
            match tokio::time::timeout(Duration::from_millis(50), &mut finished).await {
                Ok(Ok(Some(elapsed))) => return (elapsed, "supervision tap"),
                Ok(_) => tap_failed = true,
                Err(_) => {}
            }
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if tap_failed {
            let status = server.root.send(GetTreeStatus).await.expect("the root answers");
            let running = status.actors.iter().filter(|a| a.actor == "trader" && a.state == "running").count();
            if running == n {
                return (t0.elapsed(), "tree status, polled every 50 ms");
            }
        }
        assert!(t0.elapsed() < STEP_TIMEOUT * 2, "the traders did not all start within {:?}", STEP_TIMEOUT * 2);
    }
}

fn iterations_of(counters: &[Arc<UserCounters>]) -> u64 {
    counters.iter().map(|c| c.decisions.load(Ordering::Relaxed) + c.skipped.load(Ordering::Relaxed)).sum()
}

/// Steps one candle close and waits for every user's iteration on it, then for the orders it
/// decided to be placed (so the next close finds no iteration still running).
async fn bulwark_close(
    server: &RunningServer,
    clock: &ManualClock,
    counting: &CountingExchange,
    counters: &Arc<Vec<Arc<UserCounters>>>,
    tap: &TapCounts,
) -> CloseOutcome {
    let n = counters.len() as u64;
    let before = iterations_of(counters);
    let klines_before = counting.klines_requests();
    let refused_before = server.directory.persistence_writes_refused();
    let count: Arc<dyn Fn() -> u64 + Send + Sync> = {
        let counters = counters.clone();
        Arc::new(move || iterations_of(&counters))
    };
    let market_data = server.directory.market_data().expect("market data runs");
    let handed_before = handed_out(&market_data).await;
    let t0 = Instant::now();
    let progress = sample_progress(count, before, before + n, t0);
    clock.advance_ms(CANDLE_INTERVAL_MS);
    // The poll timer's turn, at once: it opens the market connection on the first close and
    // fetches by REST what no connection brings; the streamed candles need no request.
    market_data.send(Poll).await.expect("market data answers a poll");
    let mut handed = handed_before;
    while handed.0 < handed_before.0 + n && t0.elapsed() < STEP_TIMEOUT {
        tokio::time::sleep(Duration::from_millis(1)).await;
        handed = handed_out(&market_data).await;
    }
    let delivered = t0.elapsed();
    let times = progress.await.expect("the sampler answers");
    // The persistence actor's mailbox is first in, first out: this no-op is done once everything
    // queued before it (the decisions' records, the syncs' reads) is.
    let persisted = persistence::run(&server.directory, |_| Ok(())).await.ok().map(|()| t0.elapsed());
    let klines = counting.klines_requests() - klines_before;
    // Placements finish after their decision: wait for each order's follow-up record.
    let orders: u64 = counters.iter().map(|c| c.orders.load(Ordering::Relaxed)).sum();
    let settle = Instant::now();
    while tap.follow_ups.load(Ordering::SeqCst) + tap.lagged.load(Ordering::SeqCst) < orders
        && settle.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    CloseOutcome {
        times,
        klines,
        delivered: Some(delivered),
        persisted,
        refused: server.directory.persistence_writes_refused() - refused_before,
        dropped_full: u32::try_from(handed.1 - handed_before.1).unwrap_or(u32::MAX),
    }
}

/// Windows market data has handed out so far: (taken by a trader's mailbox or dropped at a full
/// one, of which dropped).
async fn handed_out(market_data: &Addr<bulwark::actors::market_data::MarketData>) -> (u64, u64) {
    let stats = market_data.send(GetStats).await.expect("market data answers");
    (stats.deliveries + stats.dropped_full, stats.dropped_full)
}

fn child_bulwark(n: usize, dir: &Path, plan: &Plan) -> Value {
    let config = load_config(dir, n);
    let _log = bulwark::logging::init(Some(&config.server.log_dir)).expect("logging starts");
    let clock = ManualClock::new(START_MS);
    let paper = start_paper(&config, clock.clone());
    warm_market(&paper);
    let rss_base_kb = proc_status_kb("VmRSS:");
    let (counting, deps) = exchange_stack(&config, clock.clone(), paper);
    let users: Vec<UserId> = config.users.iter().map(|u| u.id.clone()).collect();
    let system = System::new();
    system.block_on(async move {
        let mut result = json!({ "users": n, "rss_base_kb": rss_base_kb });

        // Cold start on an empty database.
        let t0 = Instant::now();
        let mut server = bulwark::server::start(&config, deps).unwrap_or_else(|e| panic!("start: {e:#}"));
        let follow_ups = count_follow_ups(server.decisions.subscribe());
        let (cold, observed) = wait_all_running(&server, n, t0).await;
        result["cold_start_empty_ms"] = json!(ms(cold));
        result["cold_start_empty_observed"] = json!(observed);
        result["rss_after_start_kb"] = json!(proc_status_kb("VmRSS:"));
        eprintln!(
            "fleet: bulwark N={n} started in {:.0} ms, VmRSS {} kB, VmHWM {} kB",
            ms(cold),
            proc_status_kb("VmRSS:"),
            proc_status_kb("VmHWM:")
        );
        let counters: Arc<Vec<Arc<UserCounters>>> = Arc::new(server.counters.values().cloned().collect());

        // Candle closes: warm-up, then measured.
        let mut stats = CloseStats::default();
        for close in 0..WARMUP_CLOSES + plan.closes {
            let outcome = bulwark_close(&server, &clock, &counting, &counters, &follow_ups).await;
            eprintln!(
                "fleet: bulwark N={n} close {close}: {} decided, last at {:.1} ms, {} klines, {} records refused, VmRSS {} kB",
                outcome.times.len(),
                outcome.times.last().map_or(f64::NAN, |t| ms(*t)),
                outcome.klines,
                outcome.refused,
                proc_status_kb("VmRSS:")
            );
            if close >= WARMUP_CLOSES {
                stats.add(outcome, n);
            }
        }
        result["closes"] = stats.summary();
        result["skipped"] = json!(counters.iter().map(|c| c.skipped.load(Ordering::Relaxed)).sum::<u64>());
        result["decisions"] = json!(counters.iter().map(|c| c.decisions.load(Ordering::Relaxed)).sum::<u64>());
        result["orders"] = json!(counters.iter().map(|c| c.orders.load(Ordering::Relaxed)).sum::<u64>());
        result["decision_tap_lagged"] = json!(follow_ups.lagged.load(Ordering::SeqCst));

        // Crash → restarted: one user at a time, spread over the fleet, the rest idle.
        let step = (n / plan.crashes).max(1);
        let crashed: Vec<usize> = (0..plan.crashes).map(|i| i * step).collect();
        let mut restart = Vec::new();
        let (mut detect, mut start_up, mut backoff_total) = (Vec::new(), Vec::new(), Duration::ZERO);
        for &index in &crashed {
            let user = users[index].clone();
            let supervisor = server.root.send(UserSupervisorOf(user.clone())).await.unwrap().expect("a supervisor");
            let mut tap = server.supervision.subscribe();
            let t0 = Instant::now();
            let answer = supervisor.send(OperatorRequest::Crash { reason: "fleet bench".to_owned() }).await.unwrap();
            assert!(answer.is_ok(), "{answer:?}");
            let (mut crashed_at, mut restarting_at, mut restarted_at) = (None, None, None);
            let ready = loop {
                let event = tokio::time::timeout(STEP_TIMEOUT, tap.recv()).await.expect("restart events").expect("tap");
                match event {
                    TreeEvent::Supervision(event) if event.user.as_ref() == Some(&user) => match event.event {
                        EventKind::Crashed => crashed_at = Some(t0.elapsed()),
                        EventKind::Restarting => restarting_at = Some(t0.elapsed()),
                        EventKind::Restarted => restarted_at = Some(t0.elapsed()),
                        _ => {}
                    },
                    TreeEvent::StateChanged {
                        actor: ActorKind::Trader,
                        user: Some(u),
                        state: ChildState::Running,
                        ..
                    } if u == user => {
                        break t0.elapsed();
                    }
                    _ => {}
                }
            };
            // The backoff as it was waited (the configured 1 ms plus the timer's granularity):
            // from the `restarting` event to the `restarted` one.
            let (Some(crashed_at), Some(restarting_at), Some(restarted_at)) = (crashed_at, restarting_at, restarted_at)
            else {
                panic!("{user}: crashed, restarting and restarted events expected before running");
            };
            let backoff = restarted_at.saturating_sub(restarting_at);
            backoff_total += backoff;
            restart.push(ready.saturating_sub(backoff));
            detect.push(crashed_at);
            start_up.push(ready.saturating_sub(restarted_at));
        }
        restart.sort();
        detect.sort();
        start_up.sort();
        // Deciding: every restarted user iterates on the next close.
        let before: Vec<u64> = crashed
            .iter()
            .map(|&i| counters[i].decisions.load(Ordering::Relaxed) + counters[i].skipped.load(Ordering::Relaxed))
            .collect();
        let next = bulwark_close(&server, &clock, &counting, &counters, &follow_ups).await;
        let decided_after = crashed
            .iter()
            .zip(&before)
            .filter(|&(&i, &b)| {
                counters[i].decisions.load(Ordering::Relaxed) + counters[i].skipped.load(Ordering::Relaxed) > b
            })
            .count();
        result["restart"] = json!({
            "samples": restart.len(),
            "p50_ms": quantile_ms(&restart, 0.5),
            "p99_ms": quantile_ms(&restart, 0.99),
            "max_ms": quantile_ms(&restart, 1.0),
            "backoff_subtracted_mean_ms": ms(backoff_total) / restart.len().max(1) as f64,
            "crash_seen_p50_ms": quantile_ms(&detect, 0.5),
            "start_up_p50_ms": quantile_ms(&start_up, 0.5),
            "start_up_p99_ms": quantile_ms(&start_up, 0.99),
            "decided_on_next_close": decided_after,
            "next_close_all_users_ms": next.times.last().map(|t| ms(*t)),
        });

        // The peak of starting and trading (before the fills measurement adds its own).
        result["rss_peak_kb"] = json!(proc_status_kb("VmHWM:"));
        result["threads"] = json!(threads_now());
        result["persistence_writes_refused"] = json!(server.directory.persistence_writes_refused());

        let report = server.shutdown().await;
        result["shutdown_flushed"] = json!(report.flushed);
        result["final_clock_ms"] = json!(clock.now_ms());
        let arbiters = server.take_arbiters();
        System::current().stop();
        drop(arbiters);
        result
    })
}

/// A second process on the first one's database and paper books: the cold start of N users from
/// the database, each reconciled with the exchange before it reports running.
fn child_restart(n: usize, dir: &Path, clock_ms: i64, fills: usize) -> Value {
    let config = load_config(dir, n);
    let _log = bulwark::logging::init(Some(&config.server.log_dir)).expect("logging starts");
    let clock = ManualClock::new(clock_ms);
    let t_paper = Instant::now();
    let paper = start_paper(&config, clock.clone());
    // A real exchange has its history ready; the paper one generates it on first use.
    warm_market(&paper);
    let paper_restore = t_paper.elapsed();
    let (counting, deps) = exchange_stack(&config, clock.clone(), paper);
    let system = System::new();
    system.block_on(async move {
        let t0 = Instant::now();
        let mut server = bulwark::server::start(&config, deps).unwrap_or_else(|e| panic!("start: {e:#}"));
        let follow_ups = count_follow_ups(server.decisions.subscribe());
        let (cold, observed) = wait_all_running(&server, n, t0).await;
        let counters: Arc<Vec<Arc<UserCounters>>> = Arc::new(server.counters.values().cloned().collect());
        let first = bulwark_close(&server, &clock, &counting, &counters, &follow_ups).await;
        let mut result = json!({
            "users": n,
            "paper_restore_ms": ms(paper_restore),
            "cold_start_ms": ms(cold),
            "observed": observed,
            "first_close_decided": first.times.len(),
            "first_close_last_ms": first.times.last().map(|t| ms(*t)),
            "rss_peak_kb": proc_status_kb("VmHWM:"),
        });
        let database = config.database_path();
        // The start-up reads on the database as the cold start found it (before the made-up fills).
        result["store"] = store_timings(&database, &config, clock_ms);
        result["fills"] = durable_fills(&server, &config, clock.now_ms(), fills, "bench").await;
        let _ = server.shutdown().await;
        let counted: i64 = rusqlite::Connection::open(&database)
            .and_then(|c| c.query_row("SELECT COUNT(*) FROM fills WHERE trade_id LIKE 'bench-%'", [], |r| r.get(0)))
            .unwrap_or(-1);
        result["fills_in_database"] = json!(counted);
        let arbiters = server.take_arbiters();
        System::current().stop();
        drop(arbiters);
        result
    })
}

/// Per-user start-up reads, timed on the `Store` directly (a second connection, no actor, while
/// the tree is idle) on the database the cold start found: what each trader's start costs the
/// persistence thread, by fleet size.
fn store_timings(database: &Path, config: &Config, cold_start_ms: i64) -> Value {
    let mut store = bulwark::persistence::Store::open(database).expect("the database opens");
    let users: Vec<&UserId> = config.users.iter().map(|u| &u.id).step_by((config.users.len() / 100).max(1)).collect();
    let time = |store: &mut bulwark::persistence::Store, what: &dyn Fn(&mut bulwark::persistence::Store, &UserId)| {
        let t0 = Instant::now();
        for user in &users {
            what(store, user);
        }
        ms(t0.elapsed()) / users.len() as f64
    };
    let mismatch_ms = time(&mut store, &|store, user| {
        store.position_fill_mismatches_of(Some(user)).expect("mismatch query");
    });
    let state_ms = time(&mut store, &|store, user| {
        store.load_trader_state(user).expect("trader state");
    });
    let unresolved_ms = time(&mut store, &|store, user| {
        store.unresolved_orders(user, None).expect("unresolved orders");
    });
    let rows = |table: &str| -> i64 {
        rusqlite::Connection::open(database)
            .and_then(|c| c.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0)))
            .unwrap_or(-1)
    };
    // What the cold start's reconciliation did (its actions carry the manual clock's time, which
    // does not move during the start; the first run's end before it).
    let actions: serde_json::Map<String, Value> = rusqlite::Connection::open(database)
        .and_then(|c| {
            let mut statement =
                c.prepare("SELECT action, COUNT(*) FROM reconcile_actions WHERE ts_ms >= ?1 GROUP BY action")?;
            let rows = statement.query_map([cold_start_ms], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            rows.map(|row| row.map(|(action, count)| (action, json!(count)))).collect()
        })
        .unwrap_or_default();
    json!({
        "reconcile_actions": actions,
        "users_sampled": users.len(),
        "position_fill_mismatches_of_ms": mismatch_ms,
        "load_trader_state_ms": state_ms,
        "unresolved_orders_ms": unresolved_ms,
        "rows_orders": rows("orders"),
        "rows_fills": rows("fills"),
        "rows_decisions": rows("decisions"),
    })
}

/// Durable fills/s: `fills` fills, each its own durable write (one SQLite transaction, committed
/// in WAL mode on disk) through the tree's persistence actor, `FILL_WRITES_IN_FLIGHT` at a time,
/// spread over the configured users. Runs last, when nothing reads the ledger any more (the fills
/// are made up: they would otherwise be positions the exchange does not hold).
async fn durable_fills(server: &RunningServer, config: &Config, at_ms: i64, fills: usize, prefix: &str) -> Value {
    let directory = server.directory.clone();
    let accounts: Vec<(UserId, Symbol)> = config
        .users
        .iter()
        .enumerate()
        .map(|(index, u)| (u.id.clone(), Symbol::new(&symbol_name((index + 1) % SYMBOLS)).unwrap()))
        .collect();
    let n = accounts.len();
    let t0 = Instant::now();
    let outcomes: Vec<Result<Durability, String>> = futures::stream::iter(0..fills)
        .map(|i| {
            let (directory, prefix) = (directory.clone(), prefix.to_owned());
            // A symbol the user does not trade: its ledger there has no position to be compared
            // with, so these made-up fills never look like a position the exchange does not hold.
            let (user, symbol) = accounts[i % n].clone();
            async move {
                let fill = Fill {
                    trade_id: format!("{prefix}-{i}"),
                    exchange_order_id: format!("{prefix}-order-{i}"),
                    symbol,
                    side: if (i / n).is_multiple_of(2) { Side::Buy } else { Side::Sell },
                    price: Decimal::new(10_012, 2),
                    quantity: Decimal::new(15, 1),
                    fee: Decimal::new(6, 2),
                    fee_asset: "USDT".to_owned(),
                    realized_pnl: Decimal::ZERO,
                    time_ms: at_ms,
                };
                persistence::write(&directory, DurableWrite::Fills { user, fills: vec![(fill, None)], at_ms })
                    .await
                    .map_err(|e| e.to_string())
            }
        })
        .buffer_unordered(FILL_WRITES_IN_FLIGHT)
        .enumerate()
        .map(|(done, outcome)| {
            if (done + 1) % 10_000 == 0 {
                eprintln!("fleet: fills: {} written after {:.0} ms", done + 1, ms(t0.elapsed()));
            }
            outcome
        })
        .collect()
        .await;
    let elapsed = t0.elapsed();
    let applied = outcomes.iter().filter(|o| matches!(o, Ok(Durability::Applied { changed: true }))).count();
    json!({
        "written": fills,
        "applied": applied,
        "elapsed_ms": ms(elapsed),
        "per_s": applied as f64 / elapsed.as_secs_f64(),
    })
}

// ---------------------------------------------------------------------------------------------
// The seed design.

/// The seed's per-user loop, woken at each candle close (its best case: the seed sleeps
/// `LOOP_DELAY_SECONDS` between polls, which would add up to that much to every figure).
struct SeedLoop {
    user: UserId,
    symbol: Symbol,
    strategy: Arc<dyn bulwark::strategy::Strategy>,
}

/// Wakes every loop at a close: the generation number, and whether to stop.
type Wake = Arc<(Mutex<(u64, bool)>, Condvar)>;

fn seed_thread(
    seed: SeedLoop,
    exchange: Arc<CountingExchange>,
    clock: Arc<ManualClock>,
    wake: Wake,
    iterations: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
) {
    let mut seen = 0;
    loop {
        {
            let (lock, signal) = &*wake;
            let mut state = lock.lock().unwrap();
            while state.0 == seen && !state.1 {
                state = signal.wait(state).unwrap();
            }
            if state.1 {
                return;
            }
            seen = state.0;
        }
        // fetch_ohlcv → fetch_position → generate_signal (seed §1–3); a failure skips the iteration.
        let iteration = (|| {
            let mut candles =
                futures::executor::block_on(exchange.klines(&seed.symbol, Timeframe::M5, KLINES_LIMIT)).ok()?;
            let now_ms = clock.now_ms();
            candles.retain(|c| c.close_time_ms < now_ms);
            let position = futures::executor::block_on(exchange.position(&seed.user, &seed.symbol)).ok()?;
            let signal = seed.strategy.evaluate(&candles).ok()?;
            std::hint::black_box((position, signal));
            Some(())
        })();
        if iteration.is_none() {
            errors.fetch_add(1, Ordering::Relaxed);
        }
        iterations.fetch_add(1, Ordering::SeqCst);
    }
}

fn child_seed(n: usize, dir: &Path, plan: &Plan) -> Value {
    let config = load_config(dir, n);
    let clock = ManualClock::new(START_MS);
    let paper = start_paper(&config, clock.clone());
    warm_market(&paper);
    let rss_base_kb = proc_status_kb("VmRSS:");
    let exchange = Arc::new(CountingExchange { inner: paper, klines: AtomicU64::new(0) });
    let wake: Wake = Arc::new((Mutex::new((0, false)), Condvar::new()));
    let iterations = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let t_threads = Instant::now();
    let threads: Vec<std::thread::JoinHandle<()>> = config
        .users
        .iter()
        .map(|user| {
            let seed = SeedLoop {
                user: user.id.clone(),
                symbol: user.strategies[0].symbol.clone(),
                strategy: user.strategies[0].strategy.clone(),
            };
            let (exchange, clock, wake) = (exchange.clone(), clock.clone(), wake.clone());
            let (iterations, errors) = (iterations.clone(), errors.clone());
            std::thread::Builder::new()
                .name(format!("bot-{}", user.id))
                .spawn(move || seed_thread(seed, exchange, clock, wake, iterations, errors))
                .expect("starting a bot thread")
        })
        .collect();
    let thread_start = t_threads.elapsed();
    let mut stats = CloseStats::default();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for close in 0..WARMUP_CLOSES + plan.closes {
        let before = iterations.load(Ordering::SeqCst);
        let klines_before = exchange.klines_requests();
        let count: Arc<dyn Fn() -> u64 + Send + Sync> = {
            let iterations = iterations.clone();
            Arc::new(move || iterations.load(Ordering::SeqCst))
        };
        let t0 = Instant::now();
        let progress = sample_progress(count, before, before + n as u64, t0);
        clock.advance_ms(CANDLE_INTERVAL_MS);
        {
            let (lock, signal) = &*wake;
            lock.lock().unwrap().0 += 1;
            signal.notify_all();
        }
        let times = runtime.block_on(progress).expect("the sampler answers");
        let klines = exchange.klines_requests() - klines_before;
        eprintln!(
            "fleet: seed N={n} close {close}: {} decided, last at {:.1} ms, {klines} klines, VmRSS {} kB",
            times.len(),
            times.last().map_or(f64::NAN, |t| ms(*t)),
            proc_status_kb("VmRSS:")
        );
        if close >= WARMUP_CLOSES {
            stats.add(CloseOutcome { times, klines, ..CloseOutcome::default() }, n);
        }
    }
    let result = json!({
        "users": n,
        "rss_base_kb": rss_base_kb,
        "thread_start_ms": ms(thread_start),
        "closes": stats.summary(),
        "errors": errors.load(Ordering::SeqCst),
        "rss_peak_kb": proc_status_kb("VmHWM:"),
        "threads": threads_now(),
    });
    {
        let (lock, signal) = &*wake;
        lock.lock().unwrap().1 = true;
        signal.notify_all();
    }
    for thread in threads {
        let _ = thread.join();
    }
    result
}

// ---------------------------------------------------------------------------------------------
// The report.

fn render(results: &Value) -> String {
    let machine = &results["machine"];
    let runs: Vec<&Value> = results["runs"].as_array().map(|r| r.iter().collect()).unwrap_or_default();
    let mut out = String::new();
    let w = &mut out;
    writeln!(w, "# Fleet benchmarks\n").unwrap();
    writeln!(
        w,
        "Written by `scripts/bench.sh` (`cargo bench --bench fleet`, source `benches/fleet.rs`) on {}; the whole \
         run took {:.0} s. Every number below was measured in that run; nothing is estimated or copied from \
         elsewhere, except the profile notes at the end, which say how they were taken.\n",
        str_of(&machine["date"]),
        results["elapsed_s"].as_f64().unwrap_or(f64::NAN)
    )
    .unwrap();
    writeln!(w, "## Machine and build\n").unwrap();
    writeln!(w, "| | |\n|---|---|").unwrap();
    writeln!(w, "| CPU (`/proc/cpuinfo`) | {} × {} |", machine["processors"], str_of(&machine["cpu_model"])).unwrap();
    writeln!(w, "| `nproc` | {} |", str_of(&machine["nproc"])).unwrap();
    let mem_kb = machine["mem_total_kb"].as_f64().unwrap_or(f64::NAN);
    writeln!(w, "| Memory (`/proc/meminfo` MemTotal) | {:.1} GiB |", mem_kb / 1_048_576.0).unwrap();
    writeln!(w, "| Kernel | {} |", str_of(&machine["kernel"])).unwrap();
    writeln!(
        w,
        "| `/proc/loadavg` before / after the run | {} / {} |",
        str_of(&machine["loadavg_before"]),
        str_of(&machine["loadavg_after"])
    )
    .unwrap();
    writeln!(w, "| Compiler | {} (release profile, `cargo bench`) |", str_of(&machine["rustc"])).unwrap();
    writeln!(w, "| Commit | `{}` ({}) |", str_of(&machine["commit"]), str_of(&machine["commit_subject"])).unwrap();
    let modified: Vec<String> = machine["modified_files"]
        .as_array()
        .map(|m| m.iter().map(|f| format!("`{}`", str_of(f))).collect())
        .unwrap_or_default();
    let modified = if modified.is_empty() { "none".to_owned() } else { modified.join(", ") };
    writeln!(w, "| Uncommitted changes built in | {modified} |\n").unwrap();

    writeln!(w, "## Against the targets (10,000 users)\n").unwrap();
    match runs.iter().find(|r| r["users"].as_u64() == Some(10_000)) {
        None => writeln!(w, "Not measured: this run did not include N = 10,000.\n").unwrap(),
        Some(run) => {
            let (b, r) = (&run["bulwark"], &run["restart"]);
            let rss_mb = mb(&b["rss_peak_kb"]);
            let own_mb = rss_mb - mb(&b["rss_base_kb"]);
            let klines = b["closes"]["klines_per_close_max"].as_f64().unwrap_or(f64::NAN);
            let seed_klines = run["seed"]["closes"]["klines_per_close_max"].as_f64().unwrap_or(f64::NAN);
            let rows: Vec<(&str, String, String, bool)> = vec![
                (
                    "candle close → last user's decision, p99",
                    "≤ 20 ms".into(),
                    format!("{} ms", fmt(num(&b["closes"]["last_p99_ms"]))),
                    num(&b["closes"]["last_p99_ms"]) <= 20.0,
                ),
                (
                    "peak RSS",
                    "≤ 300 MB".into(),
                    format!(
                        "{} MB (bulwark's own: {} MB above what the process held before the tree started, the paper market and config)",
                        fmt(rss_mb),
                        fmt(own_mb)
                    ),
                    rss_mb <= 300.0,
                ),
                (
                    "exchange candle requests per close",
                    "100 instead of 10,000".into(),
                    format!("{} (seed design: {})", fmt(klines), fmt(seed_klines)),
                    klines <= 100.0,
                ),
                (
                    "crash → restarted, p99 (backoff excluded)",
                    "≤ 10 ms".into(),
                    format!("{} ms", fmt(num(&b["restart"]["p99_ms"]))),
                    num(&b["restart"]["p99_ms"]) <= 10.0,
                ),
                (
                    "cold start of every user from the database, reconciliation included",
                    "≤ 10 s".into(),
                    format!("{} s", fmt(num(&r["cold_start_ms"]) / 1_000.0)),
                    num(&r["cold_start_ms"]) <= 10_000.0,
                ),
                (
                    "durable fills per second",
                    "≥ 20,000".into(),
                    fmt(num(&r["fills"]["per_s"])),
                    num(&r["fills"]["per_s"]) >= 20_000.0,
                ),
            ];
            writeln!(w, "| figure | target | measured | |\n|---|---|---|---|").unwrap();
            for (figure, target, measured, met) in rows {
                writeln!(w, "| {figure} | {target} | {measured} | {} |", if met { "met" } else { "**missed**" })
                    .unwrap();
            }
            writeln!(w, "\nWhy the missed ones are missed, and what was fixed on the way: [Analysis](#analysis).\n")
                .unwrap();
        }
    }
    write_binance_cold_start(w);

    writeln!(w, "## bulwark, by fleet size\n").unwrap();
    let header: Vec<String> = runs.iter().map(|r| format!("N = {}", fmt(num(&r["users"])))).collect();
    writeln!(w, "| figure | {} |", header.join(" | ")).unwrap();
    writeln!(w, "|---|{}", "---|".repeat(runs.len())).unwrap();
    let row = |w: &mut String, name: &str, cell: &dyn Fn(&Value) -> String| {
        let cells: Vec<String> = runs.iter().map(|r| cell(r)).collect();
        writeln!(w, "| {name} | {} |", cells.join(" | ")).unwrap();
    };
    row(w, "closes measured (after 2 warm-up closes)", &|r| fmt(num(&r["bulwark"]["closes"]["closes"])));
    row(w, "close → last user's decision, p50 / p99 (ms)", &|r| {
        pair(&r["bulwark"]["closes"]["last_p50_ms"], &r["bulwark"]["closes"]["last_p99_ms"])
    });
    row(w, "close → each user's decision, p50 / p99 over all users (ms)", &|r| {
        pair(&r["bulwark"]["closes"]["user_p50_ms"], &r["bulwark"]["closes"]["user_p99_ms"])
    });
    row(w, "close → window in every trader's mailbox (market data's fan-out), p50 / p99 (ms)", &|r| {
        pair(&r["bulwark"]["closes"]["delivered_p50_ms"], &r["bulwark"]["closes"]["delivered_p99_ms"])
    });
    row(w, "decisions per second", &|r| fmt(num(&r["bulwark"]["closes"]["decisions_per_s"])));
    row(w, "peak RSS (MB)", &|r| fmt(mb(&r["bulwark"]["rss_peak_kb"])));
    row(w, "of which before the tree starts: config, paper market (MB)", &|r| fmt(mb(&r["bulwark"]["rss_base_kb"])));
    row(w, "peak RSS per user: total / N, (total − before) / N (KB)", &|r| per_user(&r["bulwark"], &r["users"]));
    row(w, "exchange candle (klines) requests per close, min / max", &|r| {
        format!(
            "{} / {}",
            fmt(num(&r["bulwark"]["closes"]["klines_per_close_min"])),
            fmt(num(&r["bulwark"]["closes"]["klines_per_close_max"]))
        )
    });
    row(w, "crash → restarted, p50 / p99 (ms, backoff excluded)", &|r| {
        pair(&r["bulwark"]["restart"]["p50_ms"], &r["bulwark"]["restart"]["p99_ms"])
    });
    row(w, "cold start, empty database (ms)", &|r| fmt(num(&r["bulwark"]["cold_start_empty_ms"])));
    row(w, "cold start from the database, reconciliation included (ms)", &|r| fmt(num(&r["restart"]["cold_start_ms"])));
    row(w, "durable fills per second", &|r| fmt(num(&r["restart"]["fills"]["per_s"])));
    writeln!(w).unwrap();

    writeln!(w, "## Against the seed design\n").unwrap();
    writeln!(
        w,
        "The seed design: one independent loop per user, each on its own OS thread (as the seed's per-user bot), \
         fetching its own candles and position from the exchange at every close and running its strategy on them \
         ([method](#method)). Ratios are bulwark ÷ seed: below 1 bulwark needs less (latency, memory, requests); \
         for decisions per second above 1 bulwark is faster.\n"
    )
    .unwrap();
    writeln!(w, "| N | figure | seed design | bulwark | bulwark ÷ seed |\n|---|---|---|---|---|").unwrap();
    for run in &runs {
        let (b, s) = (&run["bulwark"], &run["seed"]);
        let n = fmt(num(&run["users"]));
        let figures: [(&str, f64, f64); 6] = [
            (
                "close → last user's decision, p50 (ms)",
                num(&s["closes"]["last_p50_ms"]),
                num(&b["closes"]["last_p50_ms"]),
            ),
            (
                "close → last user's decision, p99 (ms)",
                num(&s["closes"]["last_p99_ms"]),
                num(&b["closes"]["last_p99_ms"]),
            ),
            ("decisions per second", num(&s["closes"]["decisions_per_s"]), num(&b["closes"]["decisions_per_s"])),
            ("peak RSS (MB)", mb(&s["rss_peak_kb"]), mb(&b["rss_peak_kb"])),
            (
                "peak RSS above the paper market and config (MB)",
                mb(&s["rss_peak_kb"]) - mb(&s["rss_base_kb"]),
                mb(&b["rss_peak_kb"]) - mb(&b["rss_base_kb"]),
            ),
            (
                "candle requests per close",
                num(&s["closes"]["klines_per_close_max"]),
                num(&b["closes"]["klines_per_close_max"]),
            ),
        ];
        for (figure, seed, bulwark) in figures {
            writeln!(w, "| {n} | {figure} | {} | {} | {} |", fmt(seed), fmt(bulwark), ratio(bulwark, seed)).unwrap();
        }
    }
    writeln!(w).unwrap();

    writeln!(w, "## Breakdown and diagnostics\n").unwrap();
    writeln!(w, "| figure | {} |", header.join(" | ")).unwrap();
    writeln!(w, "|---|{}", "---|".repeat(runs.len())).unwrap();
    row(w, "close → persistence has done everything queued before the last decision, p50 / p99 (ms)", &|r| {
        pair(&r["bulwark"]["closes"]["persisted_p50_ms"], &r["bulwark"]["closes"]["persisted_p99_ms"])
    });
    row(w, "durable records refused over the measured closes (every persistence permit taken)", &|r| {
        fmt(num(&r["bulwark"]["closes"]["refused"]))
    });
    row(w, "… over the whole run (warm-up, crashes, next close)", &|r| {
        fmt(num(&r["bulwark"]["persistence_writes_refused"]))
    });
    row(w, "iterations skipped / candles dropped at a full mailbox / iterations missing", &|r| {
        format!(
            "{} / {} / {}",
            fmt(num(&r["bulwark"]["skipped"])),
            fmt(num(&r["bulwark"]["closes"]["dropped_full"])),
            fmt(num(&r["bulwark"]["closes"]["missing"]))
        )
    });
    row(w, "orders placed (all closes)", &|r| fmt(num(&r["bulwark"]["orders"])));
    row(w, "crash samples; restarted users that decided on the next close", &|r| {
        format!(
            "{}; {}",
            fmt(num(&r["bulwark"]["restart"]["samples"])),
            fmt(num(&r["bulwark"]["restart"]["decided_on_next_close"]))
        )
    });
    row(w, "crash → panic reported to the supervisor, p50 (ms)", &|r| {
        fmt(num(&r["bulwark"]["restart"]["crash_seen_p50_ms"]))
    });
    row(w, "restarted → running (reload, reconcile, subscribe), p50 / p99 (ms)", &|r| {
        pair(&r["bulwark"]["restart"]["start_up_p50_ms"], &r["bulwark"]["restart"]["start_up_p99_ms"])
    });
    row(w, "backoff as waited, subtracted (mean ms; configured 1 ms)", &|r| {
        fmt(num(&r["bulwark"]["restart"]["backoff_subtracted_mean_ms"]))
    });
    row(w, "max crash → restarted (ms)", &|r| fmt(num(&r["bulwark"]["restart"]["max_ms"])));
    row(w, "cold start from the database: paper exchange restore and history (excluded, ms)", &|r| {
        fmt(num(&r["restart"]["paper_restore_ms"]))
    });
    row(w, "first close after the cold start: users decided; last at (ms)", &|r| {
        format!(
            "{}; {}",
            fmt(num(&r["restart"]["first_close_decided"])),
            fmt(num(&r["restart"]["first_close_last_ms"]))
        )
    });
    row(w, "fills written / applied / counted back in the database", &|r| {
        format!(
            "{} / {} / {}",
            fmt(num(&r["restart"]["fills"]["written"])),
            fmt(num(&r["restart"]["fills"]["applied"])),
            fmt(num(&r["restart"]["fills_in_database"]))
        )
    });
    row(w, "database rows at the cold start: orders / fills / decisions", &|r| {
        let s = &r["restart"]["store"];
        format!("{} / {} / {}", fmt(num(&s["rows_orders"])), fmt(num(&s["rows_fills"])), fmt(num(&s["rows_decisions"])))
    });
    row(w, "cold start's reconciliation: positions caught up / re-synced from the exchange", &|r| {
        let actions = &r["restart"]["store"]["reconcile_actions"];
        let count = |action: &str| fmt(actions[action].as_f64().unwrap_or(0.0));
        format!("{} / {}", count("position_caught_up"), count("position_resynced"))
    });
    row(w, "`Store::position_fill_mismatches_of(user)`, per call (ms)", &|r| {
        fmt(num(&r["restart"]["store"]["position_fill_mismatches_of_ms"]))
    });
    row(w, "`Store::load_trader_state(user)`, per call (ms)", &|r| {
        fmt(num(&r["restart"]["store"]["load_trader_state_ms"]))
    });
    row(w, "peak RSS of the cold-start process (MB)", &|r| fmt(mb(&r["restart"]["rss_peak_kb"])));
    row(w, "threads: bulwark / seed design", &|r| {
        format!("{} / {}", fmt(num(&r["bulwark"]["threads"])), fmt(num(&r["seed"]["threads"])))
    });
    row(w, "seed design: starting its threads (ms)", &|r| fmt(num(&r["seed"]["thread_start_ms"])));
    row(w, "seed design: iterations that failed", &|r| fmt(num(&r["seed"]["errors"])));
    writeln!(w).unwrap();
    w.push_str(METHOD_AND_ANALYSIS);
    out
}

fn str_of(value: &Value) -> String {
    value.as_str().map_or_else(|| value.to_string(), str::to_owned)
}

fn num(value: &Value) -> f64 {
    value.as_f64().unwrap_or(f64::NAN)
}

/// kB (KiB, as `/proc` reports them) to MB (10⁶ bytes, as the targets are stated).
fn mb(kb: &Value) -> f64 {
    num(kb) * 1_024.0 / 1_000_000.0
}

/// A number for a table: thousands separated, fewer decimals the larger it is.
fn fmt(value: f64) -> String {
    if !value.is_finite() {
        return "—".to_owned();
    }
    let decimals = match value.abs() {
        v if v >= 100.0 || v.fract() == 0.0 => 0,
        v if v >= 10.0 => 1,
        _ => 2,
    };
    let text = format!("{value:.decimals$}");
    let (int, frac) = text.split_once('.').map_or((text.as_str(), None), |(i, f)| (i, Some(f)));
    let (sign, digits) = int.strip_prefix('-').map_or(("", int), |d| ("-", d));
    let mut grouped = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    match frac {
        Some(frac) => format!("{sign}{grouped}.{frac}"),
        None => format!("{sign}{grouped}"),
    }
}

fn pair(a: &Value, b: &Value) -> String {
    format!("{} / {}", fmt(num(a)), fmt(num(b)))
}

fn ratio(bulwark: f64, seed: f64) -> String {
    if seed > 0.0 && bulwark.is_finite() { format!("{:.2}", bulwark / seed) } else { "—".to_owned() }
}

fn per_user(run: &Value, users: &Value) -> String {
    let n = num(users);
    let total_kb = mb(&run["rss_peak_kb"]) * 1_000.0 / n;
    let own_kb = (mb(&run["rss_peak_kb"]) - mb(&run["rss_base_kb"])) * 1_000.0 / n;
    format!("{} / {}", fmt(total_kb), fmt(own_kb))
}

/// The part of the report that does not change from run to run: how each figure is measured, and
/// what limits the ones that miss their targets.
const METHOD_AND_ANALYSIS: &str = include_str!("fleet-method.md");

/// The cold start at Binance's weight limit is measured against `bulwark sim` by
/// `scripts/bench-weight.py` (a paper fleet has no weight limit); its paragraph is quoted here from
/// `docs/BENCHMARKS-streams.md`, as that run wrote it, so the two documents cannot disagree.
fn write_binance_cold_start(w: &mut String) {
    let streams = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/BENCHMARKS-streams.md");
    let text = std::fs::read_to_string(&streams).unwrap_or_default();
    let written = text.lines().find(|line| line.starts_with("Written by")).unwrap_or("");
    let section = text.split("## Cold start at Binance's weight limit").nth(1).map(str::trim);
    writeln!(w, "## Cold start at Binance's weight limit\n").unwrap();
    match section {
        Some(section) => {
            writeln!(w, "Not measured by this run: quoted from [`docs/BENCHMARKS-streams.md`](BENCHMARKS-streams.md) ({written})\n").unwrap();
            writeln!(w, "> {}\n", section.replace('\n', "\n> ")).unwrap();
        }
        None => {
            writeln!(w, "Not measured yet: run `scripts/bench-weight.py` (it writes `docs/BENCHMARKS-streams.md`).\n")
                .unwrap()
        }
    }
}
