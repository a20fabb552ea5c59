//! The crash test: `bulwark run` trades many users against `bulwark sim` with faults on (5xx,
//! executed-but-503-unknown, hangs, lost responses, 429 bursts, and every account and market
//! stream fault) and is killed with SIGKILL at
//! seeded random moments — at a random time, during start-up, or the instant an order request
//! reaches the exchange (so its answer is in flight) — and restarted each time, as systemd would.
//! Then the faults stop, bulwark runs once more and stops cleanly, `bulwark reconcile` settles
//! what was still in flight, and `bulwark verify` must find every invariant intact.
//!
//! CI runs 5 kills; `scripts/crash-test.sh --kills 100` runs the long one and writes its summary to
//! `docs/CRASH-TEST.md`. `BULWARK_CRASH_KILLS`, `BULWARK_CRASH_USERS` and `BULWARK_CRASH_SEED`
//! override the defaults. The seed fixes the kill schedule, the fault plans and the markets; the
//! moments themselves are wall-clock moments in two processes, so a replay meets the same
//! schedule, not necessarily the same interleaving.

mod sim_process;

use std::fmt::Write as _;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use bulwark::persistence::Store;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};
use sim_process::*;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(text) => text.parse().unwrap_or_else(|_| panic!("{name}={text:?} is not a number")),
        Err(_) => default,
    }
}

/// When the next SIGKILL lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Moment {
    /// During start-up: reconciliation, or before the first decision.
    StartUp,
    /// At a random moment of trading.
    Random,
    /// The instant the next order request reaches the exchange: its answer is in flight.
    OrderInFlight,
}

impl Moment {
    fn name(self) -> &'static str {
        match self {
            Moment::StartUp => "start-up",
            Moment::Random => "random",
            Moment::OrderInFlight => "order in flight",
        }
    }
}

/// The faults while bulwark is being killed: every kind at once (the account and market streams'
/// too: dropped, duplicated, delayed and expired events, disconnects and stalls), a new 429 burst
/// each restart.
fn fault_plan(rng: &mut ChaCha8Rng) -> Value {
    json!({
        "global": { "error_5xx_rate": 0.03, "burst_429": rng.random_range(0..6) },
        "user_stream": {
            "drop_rate": 0.25,
            "duplicate_rate": 0.2,
            "delay_rate": 0.2,
            "delay_ms": 500,
            "expire_rate": 0.05,
            "disconnect_rate": 0.05,
            "stall_rate": 0.03
        },
        "market_stream": {
            "drop_rate": 0.25,
            "duplicate_rate": 0.2,
            "delay_rate": 0.2,
            "delay_ms": 300,
            "disconnect_rate": 0.05,
            "stall_rate": 0.03
        },
        "endpoints": {
            "POST /fapi/v1/order": {
                "error_5xx_rate": 0.05,
                "unknown_503_rate": 0.1,
                "lost_response_rate": 0.1,
                "hang_rate": 0.1,
                "hang_ms": 1500
            },
            "GET /fapi/v1/order": { "error_5xx_rate": 0.1, "lost_response_rate": 0.05 },
            "GET /fapi/v1/userTrades": { "error_5xx_rate": 0.1 }
        }
    })
}

fn kill(mut child: Child) -> Option<std::process::ExitStatus> {
    // Already gone by itself (an escalation exits 70): systemd would restart it just the same.
    let exited = child.try_wait().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    exited
}

/// Orders whose outcome the database does not know yet (pending, sending, unknown).
fn unresolved(database: &std::path::Path) -> u32 {
    match Store::open_read_only(database) {
        Ok(mut store) => store.unresolved_order_counts().map(|c| c.iter().map(|(_, n, _)| n).sum()).unwrap_or(0),
        Err(_) => 0,
    }
}

#[tokio::test]
async fn bulwark_killed_at_seeded_moments_keeps_every_invariant() {
    let kills: u32 = env_or("BULWARK_CRASH_KILLS", 5);
    let users: usize = env_or("BULWARK_CRASH_USERS", 8);
    let seed: u64 = env_or("BULWARK_CRASH_SEED", 20_261_122);
    eprintln!(
        "SEED={seed} (replay: BULWARK_CRASH_SEED={seed} BULWARK_CRASH_KILLS={kills} BULWARK_CRASH_USERS={users})"
    );
    let began = Instant::now();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(&sim_config(dir.path(), users, 200, ""), seed);
    let config = client_config(dir.path(), &sim.url, users, 1_000, 1_000);
    let database = dir.path().join("data/bulwark.db");

    let mut by_moment = [(Moment::StartUp, 0u32), (Moment::Random, 0), (Moment::OrderInFlight, 0)];
    let (mut in_flight_at_kill, mut exited_by_itself) = (0u32, 0u32);
    for kill_number in 1..=kills {
        sim.faults(fault_plan(&mut rng)).await;
        let moment = match rng.random_range(0..10) {
            0..=1 => Moment::StartUp,
            2..=5 => Moment::Random,
            _ => Moment::OrderInFlight,
        };
        let orders_before = sim.requests("POST /fapi/v1/order").await;
        let mut command = bulwark_command(&["run"], &config, users);
        command.stdout(Stdio::null()).stderr(Stdio::null());
        let child = command.spawn().expect("bulwark runs");
        // The schedule is the experiment's randomness: these waits choose when to kill, they
        // synchronize nothing.
        match moment {
            Moment::StartUp => tokio::time::sleep(Duration::from_millis(rng.random_range(50..400))).await,
            Moment::Random => tokio::time::sleep(Duration::from_millis(rng.random_range(400..3_000))).await,
            Moment::OrderInFlight => {
                let guard = Instant::now() + WAIT_GUARD;
                while sim.requests("POST /fapi/v1/order").await <= orders_before && Instant::now() < guard {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        }
        let exited = kill(child);
        if let Some(status) = exited {
            exited_by_itself += 1;
            eprintln!("kill {kill_number}: bulwark had already exited ({status})");
        }
        let unresolved_now = unresolved(&database);
        in_flight_at_kill += u32::from(unresolved_now > 0);
        by_moment.iter_mut().find(|(m, _)| *m == moment).unwrap().1 += 1;
        eprintln!(
            "kill {kill_number}/{kills}: {} ({unresolved_now} order(s) unresolved in the database)",
            moment.name()
        );
    }

    // Faults off; one clean run resumes from the database and stops in order; reconcile settles
    // what the market fills after the stop; then the invariants.
    sim.faults(json!({})).await;
    finish(run_bulwark(&config, users, 4)).await;
    reconcile(&config, users).await;
    let mut command = bulwark_command(&["verify", "--sim-url", &sim.url], &config, users);
    let output = tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap();
    let verdict = String::from_utf8_lossy(&output.stdout).into_owned();
    eprint!("{verdict}");

    let stats = sim.get("/sim/stats").await;
    let mut store = Store::open_read_only(&database).unwrap();
    let (mut intents, mut fills) = (0usize, 0u64);
    for status in store.user_statuses().unwrap() {
        intents += status.orders_total as usize;
        fills += status.fills_total;
    }
    let mut summary = String::new();
    let _ = writeln!(summary, "seed {seed}, {users} users, {kills} SIGKILLs in {:.0} s", began.elapsed().as_secs_f64());
    for (moment, count) in by_moment {
        let _ = writeln!(summary, "- kills at {}: {count}", moment.name());
    }
    let _ = writeln!(
        summary,
        "- kills after which the database held orders of unknown outcome (pending, sending or unknown) for the restart to resolve: {in_flight_at_kill}"
    );
    let _ = writeln!(summary, "- runs that had exited by themselves before their kill: {exited_by_itself}");
    let _ = writeln!(
        summary,
        "- the simulator: {} order requests, {} hung, {} requests in all",
        stats["requests"]["POST /fapi/v1/order"],
        stats["hung"]["POST /fapi/v1/order"].as_u64().unwrap_or(0),
        stats["requests"].as_object().unwrap().values().filter_map(Value::as_u64).sum::<u64>()
    );
    let _ = writeln!(
        summary,
        "- stream faults met: {}; account stream connections {}, market stream connections {}",
        stats["stream_faults"], stats["user_stream_connections"], stats["market_stream_connections"]
    );
    let _ = writeln!(summary, "- the database: {intents} intents, {fills} fills");
    let _ = writeln!(summary, "\n```text\n{}```", verdict);
    println!("CRASH-TEST-SUMMARY-BEGIN\n{summary}CRASH-TEST-SUMMARY-END");
    assert!(output.status.success(), "SEED={seed}: verify failed after {kills} kills:\n{verdict}");
    assert!(intents >= 5, "SEED={seed}: the run traded ({intents} intents)");
}
