//! The exchange dies mid-run, and comes back. A green light must mean "checked, and fine": while
//! `bulwark sim` is gone (SIGKILL), SYS-EXCHANGE-API, SYS-NETWORK and DATA-MISSING are critical
//! from the first monitor run after one interval, on every line until it returns, SYS-INTEL-API
//! too (intelligence comes from the same process), and `bulwark why` names them for every user;
//! once it listens again on the same address, all of them are ok within two monitor intervals.
//!
//! Wall time (two processes); every wait is for a condition in the files, bounded by a guard.

mod sim_process;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use sim_process::*;

const USERS: usize = 2;
const INTERVAL_SECS: i64 = 2;
const WAIT_GUARD: Duration = Duration::from_secs(60);
const WATCHED: [&str; 4] = ["SYS-EXCHANGE-API", "SYS-NETWORK", "DATA-MISSING", "SYS-INTEL-API"];

fn monitor_lines(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("logs/failure_point_monitor.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

fn check<'a>(line: &'a Value, id: &str) -> &'a Value {
    line["checks"].as_array().unwrap().iter().find(|c| c["id"] == id).unwrap()
}

fn ts_ms(line: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(line["ts"].as_str().unwrap()).unwrap().timestamp_millis()
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < WAIT_GUARD, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn statuses(line: &Value) -> Vec<(String, String)> {
    WATCHED.iter().map(|id| (id.to_string(), check(line, id)["status"].as_str().unwrap().to_owned())).collect()
}

#[tokio::test]
async fn a_dead_exchange_reads_critical_until_it_returns_then_ok_within_two_intervals() {
    let dir = tempfile::tempdir().unwrap();
    let sim_config = sim_config(dir.path(), USERS, 200, "");
    let seed = 31;
    let mut sim = Sim::start(&sim_config, seed);
    let address = sim.address();
    let config = client_config(dir.path(), &sim.url, USERS, 5_000, 2_000);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text += &format!(
        "[monitor]\ninterval_secs = {INTERVAL_SECS}\n[breaker]\nopen_secs = 1\n[intelligence]\nbase_url = \"{}\"\napi_key_env = \"SIM_CG_KEY\"\n",
        sim.url
    );
    std::fs::write(&config, text).unwrap();
    let mut bulwark = run_bulwark(&config, USERS, 120);

    // Healthy, with intelligence in use.
    let last_details = || {
        monitor_lines(dir.path())
            .last()
            .map(|line| WATCHED.iter().map(|id| format!("{id}: {}", check(line, id))).collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    };
    let healthy = || {
        monitor_lines(dir.path()).last().is_some_and(|line| {
            statuses(line).iter().all(|(_, status)| status == "ok")
                && check(line, "SYS-INTEL-API")["detail"].as_str().unwrap_or("").contains("within a candle")
        })
    };
    let started = Instant::now();
    while !healthy() {
        assert!(started.elapsed() < WAIT_GUARD, "never healthy; the newest monitor line:\n{}", last_details());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_until("every watched point ok, intelligence in use", || {
        monitor_lines(dir.path()).last().is_some_and(|line| {
            statuses(line).iter().all(|(_, status)| status == "ok")
                && check(line, "SYS-INTEL-API")["detail"].as_str().unwrap_or("").contains("within a candle")
        })
    })
    .await;

    // The exchange dies.
    sim.kill();
    let killed_at_ms = now_ms();
    let judged_from_ms = killed_at_ms + INTERVAL_SECS * 1_000;
    wait_until("three monitor runs after the first interval of the outage", || {
        monitor_lines(dir.path()).iter().filter(|line| ts_ms(line) >= judged_from_ms).count() >= 3
    })
    .await;
    for user in ["u1", "u2"] {
        let mut command = bulwark_command(&["why", user, "--json"], &config, USERS);
        command.stderr(Stdio::null());
        let output = tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap();
        let answer: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_ne!(answer["verdict"], "trading", "{answer}");
        let named: Vec<&str> =
            answer["blocks"].as_array().unwrap().iter().filter_map(|b| b["failure_point"].as_str()).collect();
        for id in ["SYS-EXCHANGE-API", "SYS-NETWORK", "DATA-MISSING"] {
            assert!(named.contains(&id), "why {user} names {id}: {named:?}");
        }
    }

    // It comes back on the same address, with its books.
    sim = Sim::start_on(&sim_config, seed, &address);
    let recovered_at_ms = now_ms();
    let ok_from_ms = recovered_at_ms + 2 * INTERVAL_SECS * 1_000;
    wait_until("a monitor run two intervals after the recovery", || {
        monitor_lines(dir.path()).iter().any(|line| ts_ms(line) >= ok_from_ms)
    })
    .await;

    let lines = monitor_lines(dir.path());
    for line in lines.iter().filter(|line| (judged_from_ms..recovered_at_ms).contains(&ts_ms(line))) {
        for (id, status) in statuses(line) {
            assert_eq!(status, "critical", "{id} during the outage, at {}: {}", line["ts"], check(line, &id)["detail"]);
        }
    }
    let first_after = lines.iter().find(|line| ts_ms(line) >= ok_from_ms).unwrap();
    for (id, status) in statuses(first_after) {
        assert_eq!(
            status,
            "ok",
            "{id} two intervals after recovery, at {}: {}",
            first_after["ts"],
            check(first_after, &id)["detail"]
        );
    }
    let network = check(lines.iter().find(|line| ts_ms(line) >= judged_from_ms).unwrap(), "SYS-NETWORK");
    assert!(network["detail"].as_str().unwrap().contains("connection refused"), "{network}");

    let stopped = std::process::Command::new("kill").args(["-TERM", &bulwark.id().to_string()]).status().unwrap();
    assert!(stopped.success());
    let exit = tokio::task::spawn_blocking(move || bulwark.wait().unwrap()).await.unwrap();
    assert!(exit.success(), "bulwark exited with {exit}");
    drop(sim);
}
