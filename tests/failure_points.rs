//! The Monitor and the Healer in a real process: a 30-second run of the shipped
//! `config/fast-monitor.toml` (monitor every 2 s, summary every 5 s, healer every 5 s) writes a
//! monitor line with every catalog id per run, the summary and the healing log; and deleting the
//! config file during the run is reported as CFG-MISSING and undone by the Healer.
//!
//! The run is on wall time (the acceptance asks for 30 s); every wait below is for a condition in
//! the files, bounded by a guard, never a sleep standing in for one.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bulwark::failure_points::catalog::CATALOG;
use serde_json::Value;

const WAIT_GUARD: Duration = Duration::from_secs(40);

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

fn status<'a>(line: &'a Value, id: &str) -> &'a str {
    line["checks"].as_array().unwrap().iter().find(|c| c["id"] == id).and_then(|c| c["status"].as_str()).unwrap_or("")
}

/// Polls `condition` every 100 ms until it holds; panics with `what` after the guard.
fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < WAIT_GUARD, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_thirty_second_fast_monitor_run_writes_every_file_and_a_deleted_config_is_restored() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/fast-monitor.toml");
    let config: PathBuf = dir.path().join("config/fast-monitor.toml");
    std::fs::copy(&shipped, &config).unwrap();
    let mut server = Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .args(["run", "--config", "config/fast-monitor.toml", "--duration", "30"])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let logs = dir.path().join("logs/fast-monitor");
    let monitor_log = logs.join("failure_point_monitor.jsonl");
    let healing_log = logs.join("failure_point_healing.jsonl");

    wait_until("two monitor lines", || lines(&monitor_log).len() >= 2);
    std::fs::remove_file(&config).unwrap();
    let deleted_after = lines(&monitor_log).len();
    wait_until("CFG-MISSING critical", || {
        lines(&monitor_log)[deleted_after..].iter().any(|l| status(l, "CFG-MISSING") == "critical")
    });
    wait_until("the healer's restore_config", || {
        lines(&healing_log).iter().any(|l| l["failure_point"] == "CFG-MISSING" && l["action"] == "restore_config")
    });
    let restored = lines(&healing_log)
        .into_iter()
        .find(|l| l["failure_point"] == "CFG-MISSING" && l["action"] == "restore_config")
        .unwrap();
    assert_eq!(restored["result"], "healed", "a re-check found the file back: {restored}");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), std::fs::read_to_string(&shipped).unwrap());
    let restored_after = lines(&monitor_log).len();
    wait_until("CFG-MISSING ok again", || {
        lines(&monitor_log)[restored_after..].iter().any(|l| status(l, "CFG-MISSING") == "ok")
    });

    // A file that no longer validates: reported, and the server keeps its last good config.
    let valid = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("bogus_key = 1\n{valid}")).unwrap();
    let broken_after = lines(&monitor_log).len();
    wait_until("CFG-INVALID critical", || {
        lines(&monitor_log)[broken_after..].iter().any(|l| status(l, "CFG-INVALID") == "critical")
    });
    wait_until("the healer's report of CFG-INVALID", || {
        lines(&healing_log).iter().any(|l| l["failure_point"] == "CFG-INVALID" && l["action"] == "manual")
    });
    let kept = lines(&healing_log).into_iter().find(|l| l["failure_point"] == "CFG-INVALID").unwrap();
    assert_eq!(kept["result"], "reported", "nothing automatic, and it says so: {kept}");
    assert!(kept["detail"].as_str().unwrap().contains("bogus_key"), "{kept}");
    std::fs::write(&config, valid).unwrap();

    let exit = server.wait().unwrap();
    assert!(exit.success(), "bulwark exited with {exit}");

    let monitor = lines(&monitor_log);
    assert!(monitor.len() >= 10, "{} monitor lines in 30 s", monitor.len());
    for line in &monitor {
        let ids: Vec<&str> = line["checks"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
        let catalog: Vec<&str> = CATALOG.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, catalog, "every catalog id, in catalog order");
        assert!(["ok", "warn", "critical", "unknown"].contains(&line["overall"].as_str().unwrap()));
        for check in line["checks"].as_array().unwrap() {
            for field in ["category", "priority", "status", "detail"] {
                assert!(check[field].is_string(), "{field} in {check}");
            }
        }
    }

    // No false alarm on a healthy paper run: positions add up to their fills, no orphan anywhere.
    let last = monitor.last().unwrap();
    assert_eq!(status(last, "STATE-POSITION-SYNC"), "ok", "{last}");
    assert_eq!(status(last, "STATE-ORPHAN-ORDERS"), "ok", "{last}");
    assert_eq!(status(last, "SYS-EXCHANGE-API"), "ok", "{last}");

    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(logs.join("failure_point_monitor_summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["latest"].as_object().unwrap().len(), CATALOG.len());
    let counted: u64 = summary["counts_by_status"].as_object().unwrap().values().map(|n| n.as_u64().unwrap()).sum();
    assert_eq!(counted as usize, CATALOG.len());
    assert_eq!(summary["counts_by_category"].as_object().unwrap().len(), 6);
    assert!(summary["active_blocks"].is_array() && summary["users_not_trading"].is_array(), "{summary}");

    let healing = lines(&healing_log);
    assert!(!healing.is_empty());
    for line in &healing {
        for field in ["ts", "failure_point", "action", "detail"] {
            assert!(line[field].is_string(), "{field} in {line}");
        }
        let result = line["result"].as_str().unwrap();
        assert!(["healed", "no_effect", "failed", "reported", "skipped"].contains(&result), "{line}");
        if result == "healed" {
            assert_healed_after_an_ok_check(&monitor, line);
        }
    }
}

/// A `healed` line follows a monitor run, no older than the action's time bound, that found its
/// failure point ok (the re-check).
fn assert_healed_after_an_ok_check(monitor: &[Value], healed: &Value) {
    let at = chrono::DateTime::parse_from_rfc3339(healed["ts"].as_str().unwrap()).unwrap();
    let id = healed["failure_point"].as_str().unwrap();
    let rechecked = monitor.iter().any(|line| {
        let ts = chrono::DateTime::parse_from_rfc3339(line["ts"].as_str().unwrap()).unwrap();
        ts <= at && at - ts <= chrono::Duration::seconds(30) && status(line, id) == "ok"
    });
    assert!(rechecked, "no ok check of {id} before {healed}");
}

/// A paper market moving fast (one 5-minute candle per 200 ms) and strategies that flip often, with
/// a kill switch at 0.01 % drawdown: the first round trip's fees trip it.
fn kill_switch_config(dir: &Path) -> PathBuf {
    let base = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/bulwark.toml")).unwrap();
    let mut text = String::new();
    for line in base.lines() {
        if line.starts_with("[[users]]") {
            break;
        }
        text.push_str(line);
        text.push('\n');
    }
    let text = text
        .replace("data_dir = \"data\"", &format!("data_dir = {:?}", dir.join("data").display().to_string()))
        .replace("log_dir = \"logs\"", &format!("log_dir = {:?}", dir.join("logs").display().to_string()))
        .replace("listen = \"127.0.0.1:8377\"", "listen = \"127.0.0.1:0\"")
        .replace("candle_interval_ms = 1000", "candle_interval_ms = 200");
    // 100 h of market time: 1,200 candles of 200 ms, 240 wall seconds.
    let mut text = text + "[guards]\nmax_drawdown_pct = 0.01\nblock_hours = 100\nmin_signal_score = 0\n";
    for (user, symbol) in [("k1", "BTCUSDT"), ("k2", "ETHUSDT"), ("k3", "SOLUSDT")] {
        text += &format!(
            "[[users]]\nid = \"{user}\"\n[[users.strategies]]\nsymbol = \"{symbol}\"\ntimeframe = \"5m\"\nstrategy = \"ema_crossover\"\nparams = {{ fast = 2, slow = 3 }}\nposition_size_usdt = 500\n"
        );
    }
    let path = dir.join("kill-switch.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_tripped_kill_switch_is_stored_blocks_every_entry_and_why_names_it() {
    use bulwark::domain::{IntentPurpose, UserId};
    use bulwark::persistence::Store;

    let dir = tempfile::tempdir().unwrap();
    let config = kill_switch_config(dir.path());
    let database = dir.path().join("data/bulwark.db");
    let mut server = Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .args(["run", "--duration", "30", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let tripped = || {
        Store::open_read_only(&database)
            .ok()
            .and_then(|mut store| store.uncleared_guard_locks(None).ok())
            .unwrap_or_default()
    };
    wait_until("a kill switch lock in the database", || tripped().iter().any(|l| l.failure_point == "SIG-KILL-SWITCH"));
    let lock = tripped().into_iter().find(|l| l.failure_point == "SIG-KILL-SWITCH").unwrap();
    assert_eq!(lock.symbol, None);
    // One clock per venue: the lock lasts 100 h of the paper market's time, which runs 1,500 times
    // as fast as the wall clock (a 5-minute candle every 200 ms).
    assert_eq!(lock.until_venue_ms - lock.set_at_venue_ms, 100 * 3_600_000, "block_hours = 100, venue time");
    assert_eq!(lock.until_ms - lock.set_at_ms, 240_000, "100 h at the paper market's pace");

    let why = Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .args(["why", lock.user.as_str(), "--json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(why.status.success());
    let answer: Value = serde_json::from_slice(&why.stdout).unwrap();
    assert_eq!(answer["verdict"], "not_trading", "{answer}");
    let block = answer["blocks"].as_array().unwrap().iter().find(|b| b["failure_point"] == "SIG-KILL-SWITCH").unwrap();
    assert!(block["until"].is_string() && block["unblocks"].as_str().unwrap().contains("clears itself"), "{block}");
    assert!(block["until"].as_str().unwrap().contains("venue time"), "why names both clocks: {block}");

    // An orderly stop (SIGTERM) rather than waiting out the duration.
    let stopped = Command::new("kill").args(["-TERM", &server.id().to_string()]).status().unwrap();
    assert!(stopped.success());
    let exit = server.wait().unwrap();
    assert!(exit.success(), "bulwark exited with {exit}");
    let mut store = Store::open_read_only(&database).unwrap();
    let locks = store.uncleared_guard_locks(None).unwrap();
    for user in ["k1", "k2", "k3"] {
        let user = UserId::new(user).unwrap();
        let Some(first_lock) =
            locks.iter().filter(|l| l.user == user && l.symbol.is_none()).min_by_key(|l| l.set_at_ms)
        else {
            continue;
        };
        for order in store.orders_of(&user).unwrap() {
            let intent = &order.intent;
            if intent.purpose == IntentPurpose::Entry {
                assert!(
                    intent.created_at_ms < first_lock.set_at_ms,
                    "{user}: entry {} made at {} while the kill switch set at {} held",
                    intent.client_order_id,
                    intent.created_at_ms,
                    first_lock.set_at_ms
                );
            }
        }
    }
}

#[test]
fn the_healer_readmits_a_quarantined_user_after_its_cool_down() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/bulwark.toml")).unwrap();
    let text = shipped
        .replace("data_dir = \"data\"", &format!("data_dir = {:?}", dir.path().join("data").display().to_string()))
        .replace("log_dir = \"logs\"", &format!("log_dir = {:?}", dir.path().join("logs").display().to_string()))
        .replace("listen = \"127.0.0.1:8377\"", "listen = \"127.0.0.1:0\"")
        .replace("candle_interval_ms = 1000", "candle_interval_ms = 50")
        .replace("backoff_ms_initial = 500", "backoff_ms_initial = 50")
        .replace("\ninterval_secs = 60", "\ninterval_secs = 1")
        .replace("\ninterval_secs = 300", "\ninterval_secs = 1")
        .replace("readmit_cooldown_secs = 600", "readmit_cooldown_secs = 2")
        .replace(
            "[chaos]\nenabled = false            # see config/chaos.toml",
            "[chaos]\nenabled = true\npanic_users = [\"u2\"]\npanic_every_decisions = 3",
        );
    assert!(text.contains("readmit_cooldown_secs = 2") && text.contains("panic_users"), "the replacements apply");
    let config = dir.path().join("bulwark.toml");
    std::fs::write(&config, text).unwrap();
    let mut server = Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .args(["run", "--duration", "60", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let journal = dir.path().join("logs/supervisor.jsonl");
    let healing_log = dir.path().join("logs/failure_point_healing.jsonl");
    let u2_events = || -> Vec<String> {
        lines(&journal)
            .iter()
            .filter(|l| l["user"] == "u2" && l["event"].is_string())
            .map(|l| l["event"].as_str().unwrap().to_owned())
            .collect()
    };
    wait_until("u2 quarantined, then readmitted and restarted", || {
        let events = u2_events();
        events.iter().position(|e| e == "quarantined").is_some_and(|q| {
            events[q..]
                .iter()
                .position(|e| e == "readmitted")
                .is_some_and(|r| events[q + r..].contains(&"restarted".to_owned()))
        })
    });
    // The line is written once the re-check after the action is in.
    let readmission = |l: &Value| {
        l["action"] == "readmit_quarantined" && l["detail"].as_str().is_some_and(|d| d.starts_with("re-admitted"))
    };
    wait_until("the healing log's re-admission line", || lines(&healing_log).iter().any(readmission));
    let readmitted =
        lines(&healing_log).into_iter().find(readmission).expect("the healing log records the re-admission");
    // Healed only if the re-check found SYS-PROCESS ok; u2 may still be starting, then it says so.
    assert!(["healed", "no_effect"].contains(&readmitted["result"].as_str().unwrap()), "{readmitted}");
    assert_eq!(readmitted["failure_point"], "SYS-PROCESS");
    assert!(readmitted["detail"].as_str().unwrap().contains("u2"), "{readmitted}");
    let stopped = Command::new("kill").args(["-TERM", &server.id().to_string()]).status().unwrap();
    assert!(stopped.success());
    assert!(server.wait().unwrap().success());
}
