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
    assert!(log.contains("SIGHUP: the config file is valid"), "the reload was checked and logged");
}
