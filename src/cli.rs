//! The command line: `bulwark run | status | why | reconcile | sim | report | verify | check-config`. Thin: parse, load the config, call the
//! library, map the outcome to an exit code.
//!
//! Exit codes: 0 success; 1 a runtime error (including "another server holds this database");
//! 2 a config that does not validate; 3 `verify` found an invariant violated; 70 an escalation (a shared actor kept failing).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::{self, Config};
use crate::remote::{Remote, RemoteError};

pub const EXIT_RUNTIME_ERROR: u8 = 1;
pub const EXIT_CONFIG_INVALID: u8 = 2;
/// `bulwark verify` found an invariant violated.
pub const EXIT_INVARIANT_VIOLATED: u8 = 3;
/// A command line that asks for nothing (clap's own usage errors exit 2 as well).
pub const EXIT_USAGE: u8 = 2;

#[derive(Debug, Parser)]
#[command(name = "bulwark", version, about = "A supervised, multi-user crypto-futures trading server")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server until SIGTERM/SIGINT (or --duration), then shut down in order.
    Run {
        /// Config file [default: config/bulwark.toml, or the embedded default if it is missing].
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Stop after this many seconds.
        #[arg(long, value_name = "SECS")]
        duration: Option<u64>,
    },
    /// Print each user's state: from the running server (its HTTP API) when one answers, else
    /// from the database and logs.
    Status {
        /// Config file [default: config/bulwark.toml, or the embedded default if it is missing].
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// The running server [default: the URL it wrote to <data_dir>/bulwark.http, or [http] listen].
        #[arg(long, value_name = "URL")]
        url: Option<String>,
    },
    /// Why is this user not trading? Every active block (supervisor state, locks, failing checks
    /// that name the user, the last decision) with since, until and what un-blocks it; a trading
    /// user gets "trading" and its last decision. Asks the running server when one answers, else
    /// reads the database.
    Why {
        /// The user id, as in the config.
        user: String,
        /// Config file [default: config/bulwark.toml, or the embedded default if it is missing].
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// The running server [default: the URL it wrote to <data_dir>/bulwark.http, or [http] listen].
        #[arg(long, value_name = "URL")]
        url: Option<String>,
    },
    /// Resolve every unresolved order by its client order id and cancel orphan orders, for every
    /// user, as a trader does when it starts. Sends no order; waits (bounded) for open receive
    /// windows to close. Refused while a server runs.
    Reconcile {
        /// Config file [default: config/bulwark.toml, or the embedded default if it is missing].
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
    },
    /// Run the Binance-compatible exchange simulator (with fault injection) as its own process.
    /// The first line on stdout is `listening on http://IP:PORT`.
    Sim {
        /// Simulator config [default: config/sim-server.toml, or the embedded default if it is missing].
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Address to listen on (`127.0.0.1:0` picks a free port).
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
        /// Seed for the market and the faults (overrides the config).
        #[arg(long, value_name = "N")]
        seed: Option<u64>,
        /// Market time per wall time (overrides the config): 1 = real time, the default (server
        /// time is the wall clock); 300 = a 5-minute candle a second (clients must then take their
        /// timestamps from `GET /fapi/v1/time`).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=config::SIM_SPEED_MAX))]
        speed: Option<u32>,
    },
    /// Reports. `--catalog`: every failure point (id, category, priority, check, healing).
    /// `--since 24h`: failure-point trends (time in each status per point, top blockers,
    /// restarts), from the running server when one answers, else from the database.
    Report {
        /// Print the failure-point catalog.
        #[arg(long)]
        catalog: bool,
        /// Trends since this time: an age (30m, 24h, 7d), RFC 3339, or epoch milliseconds.
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
        #[arg(long)]
        json: bool,
        /// Config file [default: config/bulwark.toml, or the embedded default if it is missing].
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// The running server [default: the URL it wrote to <data_dir>/bulwark.http, or [http] listen].
        #[arg(long, value_name = "URL")]
        url: Option<String>,
    },
    /// Check bulwark's invariants against a `bulwark sim` ledger, with the server stopped: no two
    /// exchange orders for one intent; every exchange fill in the database; no open `bw-` order
    /// unknown to the database; no entry committed under a kill switch or probation; positions
    /// agree (or the user is halted with STATE-POSITION-SYNC). Prints each invariant with its
    /// counts; exits 3 on any violation.
    Verify {
        /// The simulator, e.g. http://127.0.0.1:9100 (the URL `bulwark sim` printed).
        #[arg(long, value_name = "URL")]
        sim_url: String,
        /// Config file [default: config/bulwark.toml, or the embedded default if it is missing].
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Validate a config, and read the environment variables it names as `run` would (names
    /// only, never values): prints `config ok` and a `warning: ...` line for each setting that
    /// runs but turns something off, or every problem and exits 2.
    CheckConfig {
        /// Config file [default: config/bulwark.toml, or the embedded default if it is missing].
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config, duration } => {
            let Some(config) = load_or_report(config) else { return ExitCode::from(EXIT_CONFIG_INVALID) };
            if let Err(error) = std::fs::create_dir_all(&config.server.log_dir) {
                eprintln!("bulwark: cannot create the log directory {}: {error}", config.server.log_dir.display());
                return ExitCode::from(EXIT_RUNTIME_ERROR);
            }
            let _log = match crate::logging::init(Some(&config.server.log_dir)) {
                Ok(guard) => guard,
                Err(error) => {
                    eprintln!("bulwark: {error}");
                    return ExitCode::from(EXIT_RUNTIME_ERROR);
                }
            };
            if config.source_name == config::EMBEDDED_SOURCE_NAME {
                tracing::info!("{} not found: running on the embedded default config", config::DEFAULT_CONFIG_PATH);
            }
            for warning in config::warnings(&config) {
                tracing::warn!("{warning}");
            }
            match crate::server::run(config, duration.map(Duration::from_secs)) {
                Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
                Err(error) => {
                    tracing::error!("{error:#}");
                    eprintln!("bulwark: {error:#}");
                    ExitCode::from(EXIT_RUNTIME_ERROR)
                }
            }
        }
        Command::Status { config, json, url } => {
            let Some(config) = load_or_report(config) else { return ExitCode::from(EXIT_CONFIG_INVALID) };
            note_embedded(&config);
            if let Some(remote) = Remote::for_config(&config, url.as_deref()) {
                match remote.get("/api/status") {
                    Ok(status) if json => {
                        // The server's /api/status (the database view, below, has its own shape).
                        eprintln!("(from the server at {})", remote.url);
                        println!("{}", serde_json::to_string_pretty(&status).unwrap_or_default());
                        return ExitCode::SUCCESS;
                    }
                    Ok(status) => {
                        print!("{}", crate::status::render_live_text(&remote.url, &status));
                        return ExitCode::SUCCESS;
                    }
                    Err(RemoteError::Unreachable { .. }) if url.is_none() => {}
                    Err(error @ RemoteError::Foreign { .. }) if url.is_none() => {
                        eprintln!("bulwark: {error}; reading the database instead");
                    }
                    Err(error) => {
                        eprintln!("bulwark: {error}");
                        return ExitCode::from(EXIT_RUNTIME_ERROR);
                    }
                }
            }
            match crate::status::collect(&config) {
                Ok(report) if json => {
                    println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
                    ExitCode::SUCCESS
                }
                Ok(report) => {
                    print!("{}", crate::status::render_text(&report));
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("bulwark: {error:#}");
                    ExitCode::from(EXIT_RUNTIME_ERROR)
                }
            }
        }
        Command::Why { user, config, json, url } => {
            let Some(config) = load_or_report(config) else { return ExitCode::from(EXIT_CONFIG_INVALID) };
            note_embedded(&config);
            if !config.users.iter().any(|u| u.id.as_str() == user) {
                let known: Vec<&str> = config.users.iter().map(|u| u.id.as_str()).collect();
                eprintln!(
                    "bulwark why: no user {:?} in {} (users: {})",
                    crate::limits::excerpt(&user),
                    config.source_name,
                    known.join(", ")
                );
                return ExitCode::from(EXIT_USAGE);
            }
            let from_server = Remote::for_config(&config, url.as_deref()).map(|remote| {
                remote.get(&format!("/api/users/{user}/why")).and_then(|answer| {
                    serde_json::from_value::<crate::failure_points::why::WhyAnswer>(answer).map_err(|e| {
                        RemoteError::Refused { url: remote.url.clone(), status: 200, message: e.to_string() }
                    })
                })
            });
            let answer = match from_server {
                Some(Ok(answer)) => Ok(answer),
                Some(Err(RemoteError::Unreachable { .. })) | None if url.is_none() => {
                    crate::status::why(&config, &user)
                }
                Some(Err(error @ RemoteError::Foreign { .. })) if url.is_none() => {
                    eprintln!("bulwark: {error}; reading the database instead");
                    crate::status::why(&config, &user)
                }
                Some(Err(error)) => Err(anyhow::anyhow!(error)),
                None => Err(anyhow::anyhow!("--url given, but the config has the HTTP API off")),
            };
            match answer {
                Ok(answer) if json => {
                    println!("{}", serde_json::to_string_pretty(&answer).unwrap_or_default());
                    ExitCode::SUCCESS
                }
                Ok(answer) => {
                    print!("{}", crate::failure_points::why::render_text(&answer));
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("bulwark: {error:#}");
                    ExitCode::from(EXIT_RUNTIME_ERROR)
                }
            }
        }
        Command::Verify { sim_url, config, json } => {
            let Some(config) = load_or_report(config) else { return ExitCode::from(EXIT_CONFIG_INVALID) };
            note_embedded(&config);
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("bulwark verify: cannot start a runtime: {error}");
                    return ExitCode::from(EXIT_RUNTIME_ERROR);
                }
            };
            match runtime.block_on(crate::verify::run(&config, &sim_url)) {
                Ok(report) => {
                    if json {
                        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
                    } else {
                        print!("{}", report.render());
                    }
                    if report.passed() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_INVARIANT_VIOLATED) }
                }
                Err(error) => {
                    eprintln!("bulwark verify: {error:#}");
                    ExitCode::from(EXIT_RUNTIME_ERROR)
                }
            }
        }
        Command::Report { catalog, since, json, config, url } => {
            if let Some(since) = since {
                let Some(config) = load_or_report(config) else { return ExitCode::from(EXIT_CONFIG_INVALID) };
                note_embedded(&config);
                let remote = Remote::for_config(&config, url.as_deref());
                return match crate::status::trends(&config, remote.as_ref(), url.is_some(), &since) {
                    Ok((report, source)) if json => {
                        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
                        eprintln!("(from {source})");
                        ExitCode::SUCCESS
                    }
                    Ok((report, source)) => {
                        print!("{}", crate::failure_points::trends::render_text(&report));
                        println!("(from {source})");
                        ExitCode::SUCCESS
                    }
                    Err(error) => {
                        eprintln!("bulwark report: {error:#}");
                        ExitCode::from(EXIT_RUNTIME_ERROR)
                    }
                };
            }
            if !catalog {
                eprintln!("bulwark report: say what to report (--catalog, or --since 24h)");
                return ExitCode::from(EXIT_USAGE);
            }
            if json {
                let catalog = crate::failure_points::catalog::CATALOG;
                println!("{}", serde_json::to_string_pretty(catalog).unwrap_or_default());
            } else {
                print!("{}", crate::failure_points::catalog::render_text());
            }
            ExitCode::SUCCESS
        }
        Command::Reconcile { config } => {
            let Some(config) = load_or_report(config) else { return ExitCode::from(EXIT_CONFIG_INVALID) };
            let _log = crate::logging::init(None);
            match crate::server::reconcile(config) {
                Ok(reports) => {
                    let mut failed = false;
                    for (user, report) in reports {
                        match report {
                            Ok(report) => {
                                let resolved: Vec<String> =
                                    report.resolved.iter().map(|(id, state)| format!("{id} {state}")).collect();
                                println!(
                                    "{user}: {} order(s) resolved [{}], {} orphan(s) cancelled, {} cancel failure(s), {} external order(s)",
                                    report.resolved.len(),
                                    resolved.join(", "),
                                    report.orphans_cancelled.len(),
                                    report.cancel_failures.len(),
                                    report.external_orders
                                );
                                for (id, error) in &report.cancel_failures {
                                    println!("{user}: orphan {id} could not be cancelled: {error}");
                                }
                                for (id, error) in &report.unresolvable {
                                    println!("{user}: order {id} could not be looked up: {error}");
                                }
                                let waiting = report.waiting_orders();
                                if waiting > 0 {
                                    println!(
                                        "{user}: {waiting} order(s) not final yet (open on the exchange, or inside their receive window): their fills are not all in the database; run reconcile again once they settle"
                                    );
                                }
                                failed |= !report.cancel_failures.is_empty()
                                    || !report.unresolvable.is_empty()
                                    || waiting > 0;
                            }
                            Err(error) => {
                                println!("{user}: reconciliation failed: {error}");
                                failed = true;
                            }
                        }
                    }
                    if failed { ExitCode::from(EXIT_RUNTIME_ERROR) } else { ExitCode::SUCCESS }
                }
                Err(error) => {
                    eprintln!("bulwark: {error:#}");
                    ExitCode::from(EXIT_RUNTIME_ERROR)
                }
            }
        }
        Command::Sim { config, listen, seed, speed } => {
            let mut config = match config::load_sim(config.as_deref()) {
                Ok(config) => config,
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::from(EXIT_CONFIG_INVALID);
                }
            };
            if let Some(listen) = listen {
                config.listen = listen;
            }
            if let Some(seed) = seed {
                config.paper.seed = seed;
            }
            if let Some(speed) = speed {
                config.paper.candle_interval_ms = config::sim_candle_interval_ms_at(speed);
            }
            let _log = crate::logging::init(None);
            match run_sim(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("bulwark sim: {error:#}");
                    ExitCode::from(EXIT_RUNTIME_ERROR)
                }
            }
        }
        Command::CheckConfig { config } => {
            let Some(config) = load_or_report(config) else { return ExitCode::from(EXIT_CONFIG_INVALID) };
            note_embedded(&config);
            // What `run` reads from the environment, read the same way (variable names only).
            let environment = crate::server::check_environment(&config);
            if !environment.problems.is_empty() {
                let errors =
                    config::ConfigErrors { source_name: config.source_name.clone(), problems: environment.problems };
                eprintln!("{errors}");
                return ExitCode::from(EXIT_CONFIG_INVALID);
            }
            println!("config ok");
            for warning in config::warnings(&config).into_iter().chain(environment.warnings) {
                println!("warning: {warning}");
            }
            ExitCode::SUCCESS
        }
    }
}

fn note_embedded(config: &Config) {
    if config.source_name == config::EMBEDDED_SOURCE_NAME {
        eprintln!("note: {} not found; using the embedded default config", config::DEFAULT_CONFIG_PATH);
    }
}

/// Loads the config, printing every problem to stderr when it does not validate.
fn load_or_report(path: Option<PathBuf>) -> Option<Config> {
    match config::load(path.as_deref()) {
        Ok(config) => Some(config),
        Err(errors) => {
            eprintln!("{errors}");
            None
        }
    }
}

/// What a client must know of the simulator's clock, said on its second line.
fn sim_clock_line(candle_interval_ms: i64) -> String {
    if candle_interval_ms == config::SIM_REAL_TIME_CANDLE_INTERVAL_MS {
        return "clock: real time (server time is the wall clock; a 5-minute candle closes every 5 minutes)".to_owned();
    }
    let speed = config::SIM_REAL_TIME_CANDLE_INTERVAL_MS as f64 / candle_interval_ms as f64;
    format!(
        "clock: accelerated, {speed:.0}x real time (a 5-minute candle every {candle_interval_ms} ms): server time \
         runs ahead of the wall clock, so a third-party client must take its timestamps from GET /fapi/v1/time"
    )
}

/// Runs the simulator until SIGINT/SIGTERM.
fn run_sim(config: config::SimConfig) -> anyhow::Result<()> {
    use std::io::Write as _;
    let system = actix_rt::System::new();
    system.block_on(async move {
        let seed = config.paper.seed;
        let accounts = config.accounts.len();
        let clock_line = sim_clock_line(config.paper.candle_interval_ms);
        let (running, server) = crate::sim::start(config, std::sync::Arc::new(crate::clock::SystemClock)).await?;
        // One write: a reader that stops after the first line has both in its pipe already.
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(format!("listening on http://{}\n{clock_line}\n", running.local_addr).as_bytes())?;
        stdout.flush()?;
        drop(stdout);
        tracing::info!(address = %running.local_addr, seed, accounts, "bulwark sim: serving");
        server.await?;
        tracing::info!("bulwark sim: stopped");
        drop(running);
        Ok(())
    })
}
