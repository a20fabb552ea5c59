//! Operating as a systemd service: the unit file verifies, and a run with a fake `NOTIFY_SOCKET`
//! (a datagram socket this test binds) hears READY, WATCHDOG pings and STOPPING; SIGHUP re-reads
//! the config without stopping the server.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WAIT_GUARD: Duration = Duration::from_secs(40);

fn config(dir: &Path) -> PathBuf {
    let shipped = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/bulwark.toml")).unwrap();
    let text = shipped
        .replace("data_dir = \"data\"", &format!("data_dir = {:?}", dir.join("data").display().to_string()))
        .replace("log_dir = \"logs\"", &format!("log_dir = {:?}", dir.join("logs").display().to_string()))
        .replace("listen = \"127.0.0.1:8377\"", "listen = \"127.0.0.1:0\"")
        .replace("candle_interval_ms = 1000", "candle_interval_ms = 100");
    let path = dir.join("bulwark.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_unit_file_verifies() {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bulwark.service");
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze (Debian's systemd package; .ci/run installs it)");
    assert!(
        output.status.success(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn systemd_hears_ready_watchdog_pings_and_stopping_and_sighup_does_not_stop_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut server = Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .args(["run", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let started = Instant::now();
    let mut messages: Vec<String> = Vec::new();
    let mut buffer = [0_u8; 4096];
    let mut hangup_sent = false;
    let mut stop_sent = false;
    while !messages.iter().any(|m| m.contains("STOPPING=1")) {
        assert!(started.elapsed() < WAIT_GUARD, "messages so far: {messages:?}");
        if let Ok(length) = socket.recv(&mut buffer) {
            messages.push(String::from_utf8_lossy(&buffer[..length]).into_owned());
        }
        let pings = messages.iter().filter(|m| m.contains("WATCHDOG=1")).count();
        if pings >= 2 && !hangup_sent {
            let hup = Command::new("kill").args(["-HUP", &server.id().to_string()]).status().unwrap();
            assert!(hup.success());
            hangup_sent = true;
        }
        // Two more pings after SIGHUP: the server is still up and healthy.
        if pings >= 4 && hangup_sent && !stop_sent {
            assert!(server.try_wait().unwrap().is_none(), "SIGHUP must not stop the server");
            let term = Command::new("kill").args(["-TERM", &server.id().to_string()]).status().unwrap();
            assert!(term.success());
            stop_sent = true;
        }
    }
    assert!(server.wait().unwrap().success());
    let ready = messages.iter().position(|m| m.contains("READY=1")).expect("READY=1 was sent");
    let stopping = messages.iter().position(|m| m.contains("STOPPING=1")).unwrap();
    let pings = messages[ready..stopping].iter().filter(|m| m.contains("WATCHDOG=1")).count();
    assert!(pings >= 4, "{messages:?}");
    assert!(messages[ready].contains("STATUS="), "{}", messages[ready]);
    let log = std::fs::read_to_string(dir.path().join("logs/bulwark.log")).unwrap();
    assert!(log.contains("SIGHUP: the config file is unchanged"), "the reload was checked and logged");
}

/// Waits until `path` holds text for which `wanted` is true; returns it.
fn wait_for_text(path: &Path, what: &str, wanted: impl Fn(&str) -> bool) -> String {
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if wanted(&text) {
            return text;
        }
        assert!(started.elapsed() < WAIT_GUARD, "never: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn events_of<'a>(journal: &'a str, user: &str, event: &str) -> Vec<&'a str> {
    let (user, event) = (format!("\"user\":\"{user}\""), format!("\"event\":\"{event}\""));
    journal.lines().filter(|l| l.contains(&user) && l.contains(&event)).collect()
}

#[test]
fn sighup_applies_a_changed_strategy_live_names_what_needs_a_restart_and_ignores_an_invalid_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let mut server = Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (journal, log) = (dir.path().join("logs/supervisor.jsonl"), dir.path().join("logs/bulwark.log"));
    wait_for_text(&journal, "u1 and u2 started", |text| {
        !events_of(text, "u1", "started").is_empty() && !events_of(text, "u2", "started").is_empty()
    });
    let hangup = || assert!(Command::new("kill").args(["-HUP", &server.id().to_string()]).status().unwrap().success());

    // u1's position size and the monitor's interval change.
    let original = std::fs::read_to_string(&config).unwrap();
    let changed = original.replacen("position_size_usdt = 200", "position_size_usdt = 210", 1).replacen(
        "summary_interval_secs = 300",
        "summary_interval_secs = 7",
        1,
    );
    assert_ne!(changed, original);
    std::fs::write(&config, &changed).unwrap();
    hangup();
    let text = wait_for_text(&journal, "u1 reconfigured and restarted", |text| {
        let reconfigured = text.lines().position(|l| l.contains("\"user\":\"u1\"") && l.contains("\"reconfigured\""));
        reconfigured.is_some_and(|at| {
            text.lines().skip(at).any(|l| l.contains("\"user\":\"u1\"") && l.contains("\"event\":\"restarted\""))
        })
    });
    let reconfigured = events_of(&text, "u1", "reconfigured");
    assert!(reconfigured[0].contains("config reloaded: strategies changed"), "{reconfigured:?}");
    assert!(events_of(&text, "u2", "reconfigured").is_empty(), "u2's trading did not change");
    assert!(events_of(&text, "u1", "crashed").is_empty(), "a reconfiguration is not a crash");
    wait_for_text(&log, "the restart-only change named", |text| {
        text.contains("These take effect at the next restart: [monitor]")
    });

    // An invalid file changes nothing: reported, and the server keeps running.
    std::fs::write(&config, changed.replacen("max_open_positions = 3", "max_open_positions = -1", 1)).unwrap();
    hangup();
    wait_for_text(&log, "the invalid file reported", |text| {
        text.contains("SIGHUP: the config file does not validate") && text.contains("risk.max_open_positions")
    });
    assert!(server.try_wait().unwrap().is_none(), "an invalid file must not stop the server");
    assert!(Command::new("kill").args(["-TERM", &server.id().to_string()]).status().unwrap().success());
    assert!(server.wait().unwrap().success());
    let text = std::fs::read_to_string(&journal).unwrap();
    assert_eq!(events_of(&text, "u1", "reconfigured").len(), 1, "the invalid file reconfigured nothing");
}
