//! `bulwark sim` and `bulwark run` as child processes, for the tests that run them against each
//! other over loopback (tests/sim.rs, tests/verify.rs, tests/crash.rs): the simulator's config
//! with one account per user, a client config against it, the commands with every user's key in
//! the environment, and waits on the simulator's own clock (never on wall-time guesses).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bulwark::clock::SystemClock;
use bulwark::domain::UserId;
use bulwark::exchange::binance::{BinanceClient, BinanceSettings, Credentials};
use bulwark::exchange::retry::RetryPolicy;
use bulwark::secret::Secret;
use serde_json::Value;

/// Guard against a hung test; never a reason for a test to pass.
pub const WAIT_GUARD: Duration = Duration::from_secs(60);

pub const SYMBOLS: [&str; 5] = ["XRPUSDT", "BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT"];

pub fn key(user: &str) -> String {
    format!("key-{user}")
}

pub fn secret(user: &str) -> String {
    format!("secret-{user}")
}

/// A simulator config with `users` accounts and an accelerated market. The weight limit is raised:
/// at 1,500 times real time a bot makes a day's requests in a minute of wall time, and the limit
/// (per wall-clock minute) would bind where a real one never does. `a_418_ban_stops_every_request`
/// exercises the limit itself.
pub fn sim_config(dir: &Path, users: usize, candle_interval_ms: u64, faults: &str) -> PathBuf {
    let weight_limit = 1_000_000;
    let mut text = format!(
        "[sim]\nlisten = \"127.0.0.1:0\"\ndata_dir = {:?}\ncoinglass_api_key = \"cg-key\"\nweight_limit_per_minute = {weight_limit}\n",
        dir.join("sim-data").display().to_string()
    );
    for i in 1..=users {
        let user = format!("u{i}");
        text += &format!(
            "[[sim.accounts]]\nuser = \"{user}\"\napi_key = \"{}\"\napi_secret = \"{}\"\n",
            key(&user),
            secret(&user)
        );
    }
    text += faults;
    text += &format!(
        "\n[exchange.paper]\ncandle_interval_ms = {candle_interval_ms}\nseed = 7\n\
         [[exchange.paper.replay]]\nsymbol = \"XRPUSDT\"\ndataset = \"XRP_USDT_USDT-5m-futures\"\ntick_size = 0.0001\nstep_size = 0.1\nmin_notional = 5\n\
         [[exchange.paper.random_walk]]\nsymbol = \"BTCUSDT\"\nstart_price = 60000\nvolatility_pct = 0.25\ntick_size = 0.1\nstep_size = 0.001\nmin_notional = 20\n\
         [[exchange.paper.random_walk]]\nsymbol = \"ETHUSDT\"\nstart_price = 3000\nvolatility_pct = 0.35\ntick_size = 0.01\nstep_size = 0.001\nmin_notional = 20\n\
         [[exchange.paper.random_walk]]\nsymbol = \"SOLUSDT\"\nstart_price = 150\nvolatility_pct = 0.5\ntick_size = 0.01\nstep_size = 0.01\nmin_notional = 5\n\
         [[exchange.paper.random_walk]]\nsymbol = \"BNBUSDT\"\nstart_price = 600\nvolatility_pct = 0.4\ntick_size = 0.01\nstep_size = 0.01\nmin_notional = 5\n"
    );
    let path = dir.join("sim.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A bulwark config for `users` users against the simulator at `url`, user i on symbol i mod 5.
/// Retries back off from 100 ms rather than 2 s: the market runs 1,500 times faster than real.
pub fn client_config(dir: &Path, url: &str, users: usize, recv_window_ms: u64, timeout_ms: u64) -> PathBuf {
    let mut text = format!(
        "[server]\ndata_dir = {:?}\nlog_dir = {:?}\n\
         [supervisor]\nbackoff_ms_initial = 100\nbackoff_ms_max = 1000\nstatus_interval_secs = 1\nshutdown_deadline_secs = 5\n\
         [exchange]\nkind = \"binance\"\nbase_url = \"{url}\"\nrecv_window_ms = {recv_window_ms}\ntimeout_ms = {timeout_ms}\npoll_interval_ms = 40\n\
         [risk]\nmax_open_positions = 3\nmax_position_notional_usdt = 5000\n\
         [retry]\nbackoff_ms_initial = 100\nbackoff_ms_max = 1000\n\
         [http]\nlisten = \"127.0.0.1:0\"\n",
        dir.join("data").display().to_string(),
        dir.join("logs").display().to_string()
    );
    for i in 1..=users {
        let user = format!("u{i}");
        let symbol = SYMBOLS[(i - 1) % SYMBOLS.len()];
        text += &format!(
            "[[users]]\nid = \"{user}\"\napi_key_env = \"SIM_KEY_{i}\"\napi_secret_env = \"SIM_SECRET_{i}\"\n\
             [[users.strategies]]\nsymbol = \"{symbol}\"\ntimeframe = \"5m\"\nstrategy = \"ema_crossover\"\nparams = {{ fast = 2, slow = 3 }}\nposition_size_usdt = 300\n"
        );
    }
    let path = dir.join("bulwark.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A simulator process, killed when dropped.
pub struct Sim {
    child: Child,
    pub url: String,
    pub http: reqwest::Client,
}

impl Sim {
    pub fn start(config: &Path, seed: u64) -> Self {
        Self::start_on(config, seed, "127.0.0.1:0")
    }

    /// The same, listening on `listen` (to come back on the address a killed one had).
    pub fn start_on(config: &Path, seed: u64, listen: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_bulwark"))
            .args(["sim", "--listen", listen, "--seed", &seed.to_string(), "--config"])
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("bulwark sim starts");
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
        let url =
            first.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("first line was {first:?}")).to_owned();
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        Self { child, url, http: reqwest::Client::new() }
    }

    /// Kills the simulator process (SIGKILL) and waits for it: the exchange is gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The address it listens on (`127.0.0.1:PORT`).
    pub fn address(&self) -> String {
        self.url.trim_start_matches("http://").to_owned()
    }

    /// A Binance client for `user` on this simulator, signing with `secret_text`.
    pub fn client(&self, user: &str, secret_text: &str) -> BinanceClient {
        BinanceClient::new(self.client_settings(user, secret_text), Arc::new(SystemClock)).unwrap()
    }

    /// What [`Sim::client`] builds its client with.
    pub fn client_settings(&self, user: &str, secret_text: &str) -> BinanceSettings {
        let credentials = BTreeMap::from([(
            UserId::new(user).unwrap(),
            Credentials { api_key: Secret::new(key(user)), api_secret: Secret::new(secret_text.to_owned()) },
        )]);
        BinanceSettings {
            base_url: self.url.parse().unwrap(),
            recv_window_ms: 5_000,
            timeout: Duration::from_secs(5),
            weight_limit_per_minute: 2_400,
            credentials,
            credentials_missing: BTreeMap::new(),
            retry: RetryPolicy { attempts_max: 3, backoff_ms_initial: 150, backoff_ms_max: 1_000 },
            user_data_stream: true,
            market_stream: true,
            trade_stream: true,
            stream_url: self.url.replace("http://", "ws://").parse().unwrap(),
            listen_key_keepalive: Duration::from_secs(1_800),
            stream_connects_per_second: 1_000,
            stream_rotation: Duration::from_secs(84_600),
            stream_silence_max: Duration::from_secs(60),
        }
    }

    pub async fn get(&self, path: &str) -> Value {
        self.http.get(format!("{}{path}", self.url)).send().await.unwrap().json().await.unwrap()
    }

    /// A signed request as any Binance client sends it (parameters in the query string, `timestamp`
    /// from the simulator's own clock, `signature` last, the key in `X-MBX-APIKEY`): its HTTP status
    /// and JSON answer.
    pub async fn signed(&self, method: reqwest::Method, path: &str, user: &str, query: &str) -> (u16, Value) {
        let server_ms = self.get("/fapi/v1/time").await["serverTime"].as_i64().expect("serverTime");
        let query = format!("{query}{}timestamp={server_ms}", if query.is_empty() { "" } else { "&" });
        let signed = bulwark::exchange::binance::sign::signed_query(&Secret::new(secret(user)), &query);
        let answer = self
            .http
            .request(method, format!("{}{path}?{signed}", self.url))
            .header("X-MBX-APIKEY", key(user))
            .send()
            .await
            .unwrap();
        let status = answer.status().as_u16();
        (status, answer.json().await.unwrap())
    }

    pub async fn faults(&self, plan: Value) {
        let answer = self.http.post(format!("{}/sim/faults", self.url)).json(&plan).send().await.unwrap();
        assert!(answer.status().is_success(), "{:?}", answer.text().await);
    }

    pub async fn requests(&self, endpoint: &str) -> u64 {
        self.get("/sim/stats").await["requests"][endpoint].as_u64().unwrap_or(0)
    }

    /// Waits until the simulator's market has moved `candles` 5-minute candles on from now (the
    /// paper engine fills a market order on the candle after it arrives).
    pub async fn wait_candles(&self, candles: i64) {
        let market_ms = || async { self.get("/sim/stats").await["market_time_ms"].as_i64().unwrap() };
        let until_ms = market_ms().await + candles * 300_000;
        let waiting = async {
            while market_ms().await < until_ms {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        if tokio::time::timeout(WAIT_GUARD, waiting).await.is_err() {
            panic!("the simulator's market did not move {candles} candles within {WAIT_GUARD:?}");
        }
    }

    /// Waits until the simulator has seen at least `count` requests to `endpoint`.
    pub async fn wait_requests(&self, endpoint: &str, count: u64) {
        let waiting = async {
            while self.requests(endpoint).await < count {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        if tokio::time::timeout(WAIT_GUARD, waiting).await.is_err() {
            panic!("fewer than {count} requests to {endpoint} within {WAIT_GUARD:?}");
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `bulwark <args> --config <config>` with every user's key and secret in the environment.
pub fn bulwark_command(args: &[&str], config: &Path, users: usize) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_bulwark"));
    command.args(args).arg("--config").arg(config);
    // The simulator's CoinGlass key, for configs with an [intelligence] section.
    command.env("SIM_CG_KEY", "cg-key");
    for i in 1..=users {
        let user = format!("u{i}");
        command.env(format!("SIM_KEY_{i}"), key(&user)).env(format!("SIM_SECRET_{i}"), secret(&user));
    }
    command
}

/// Runs bulwark for `seconds` against the simulator (in the background while the test acts).
pub fn run_bulwark(config: &Path, users: usize, seconds: u64) -> Child {
    let mut command = bulwark_command(&["run", "--duration", &seconds.to_string()], config, users);
    command.stdout(Stdio::null()).stderr(Stdio::null());
    command.spawn().expect("bulwark runs")
}

/// `bulwark reconcile`, at once after the server stopped (orders it placed last may still be open:
/// reconcile waits for them to settle), which must succeed.
pub async fn reconcile(config: &Path, users: usize) {
    let command = bulwark_command(&["reconcile"], config, users);
    let output = tokio::task::spawn_blocking(move || { command }.output().unwrap()).await.unwrap();
    // Its log (stderr) says why an order stayed unresolved: shown only when it failed.
    assert!(
        output.status.success(),
        "reconcile: {}\nits log:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprint!("{}", String::from_utf8_lossy(&output.stdout));
}

pub async fn finish(mut child: Child) {
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert!(status.success(), "bulwark exited with {status}");
}
