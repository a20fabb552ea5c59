//! The dashboard in a real browser: headless Chromium (Debian's `chromium`, started with
//! `--headless --no-sandbox --disable-gpu`; `.ci/run` installs it) driven over the DevTools
//! protocol. The page is loaded once, while the chaos user is still running; the test then watches
//! the same document (no reload) until the live data shows the tree, the failure-point grid, a
//! kill switch's countdown, and the crashing user's restarts and quarantine. The screenshot is
//! saved as a test artifact (its path is printed).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const WAIT_GUARD: Duration = Duration::from_secs(60);

/// The shipped config, fast, with chaos on for u2 (quarantined about 25 s in: 4 crashes 6 decisions
/// apart, restarts 3, 6 and 12 s later, so that a freshly installed browser's slow first start
/// still loads the page before it) and a kill switch that trips on a 0.01 %
/// drawdown (so a countdown is on screen within seconds). Its 100 h are market time: 1,200 candles
/// of 200 ms, a four-minute countdown.
fn config(dir: &Path) -> PathBuf {
    let shipped = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/bulwark.toml")).unwrap();
    let mut text = shipped
        .replace("data_dir = \"data\"", &format!("data_dir = {:?}", dir.join("data").display().to_string()))
        .replace("log_dir = \"logs\"", &format!("log_dir = {:?}", dir.join("logs").display().to_string()))
        .replace("listen = \"127.0.0.1:8377\"", "listen = \"127.0.0.1:0\"")
        .replace("candle_interval_ms = 1000", "candle_interval_ms = 200")
        .replace("backoff_ms_initial = 500", "backoff_ms_initial = 3000")
        .replace("\ninterval_secs = 60", "\ninterval_secs = 1")
        .replace(
            "[chaos]\nenabled = false            # see config/chaos.toml",
            "[chaos]\nenabled = true\npanic_users = [\"u2\"]\npanic_every_decisions = 6",
        );
    let users = text.find("[[users]]").unwrap();
    text.insert_str(users, "[guards]\nmax_drawdown_pct = 0.01\nblock_hours = 100\nmin_signal_score = 0\n\n");
    let path = dir.join("bulwark.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A headless Chromium and one page, over the DevTools protocol.
struct Browser {
    child: Child,
    socket: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    session: String,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn launch() -> Self {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--remote-debugging-port=0",
                "--window-size=1400,1100",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium (Debian's chromium package; .ci/run installs it)");
        let stderr = child.stderr.take().unwrap();
        let url = tokio::task::spawn_blocking(move || {
            for line in BufReader::new(stderr).lines() {
                let line = line.unwrap();
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    return url.trim().to_owned();
                }
            }
            panic!("chromium ended before it listened for DevTools");
        });
        let url = tokio::time::timeout(WAIT_GUARD, url).await.expect("chromium starts").unwrap();
        let (socket, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        let mut browser = Self { child, socket, session: String::new(), next_id: 0, _profile: profile };
        let target = browser.call("Target.createTarget", json!({ "url": "about:blank" }), false).await;
        let attached = browser
            .call("Target.attachToTarget", json!({ "targetId": target["targetId"], "flatten": true }), false)
            .await;
        browser.session = attached["sessionId"].as_str().unwrap().to_owned();
        browser
    }

    async fn call(&mut self, method: &str, params: Value, in_page: bool) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if in_page {
            message["sessionId"] = json!(self.session);
        }
        self.socket.send(Message::Text(message.to_string())).await.unwrap();
        let answer = async {
            loop {
                let Some(Ok(Message::Text(text))) = self.socket.next().await else { continue };
                let reply: Value = serde_json::from_str(&text).unwrap();
                if reply["id"] == id {
                    return reply;
                }
            }
        };
        let reply = tokio::time::timeout(WAIT_GUARD, answer).await.unwrap_or_else(|_| panic!("{method}: no answer"));
        assert!(reply.get("error").is_none(), "{method}: {reply}");
        reply["result"].clone()
    }

    /// Evaluates `expression` in the page; its value.
    async fn eval(&mut self, expression: &str) -> Value {
        let result =
            self.call("Runtime.evaluate", json!({ "expression": expression, "returnByValue": true }), true).await;
        result["result"]["value"].clone()
    }

    /// Polls `expression` until it is true.
    async fn wait_for(&mut self, what: &str, expression: &str) {
        let started = Instant::now();
        while self.eval(expression).await != json!(true) {
            if started.elapsed() > WAIT_GUARD {
                let body = self.eval("document.body.innerText").await;
                panic!("the dashboard never showed {what}; it shows:\n{}", body.as_str().unwrap_or_default());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The server process, killed when dropped (a failing wait ends the test at once).
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_tree_the_grid_a_countdown_and_a_quarantine_live() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let _server = Server(
        Command::new(env!("CARGO_BIN_EXE_bulwark"))
            .args(["run", "--duration", "120", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url_file = dir.path().join("data/bulwark.http");
    let started = Instant::now();
    let url = loop {
        if let Ok(text) = std::fs::read_to_string(&url_file)
            && text.ends_with('\n')
        {
            break text.trim().to_owned();
        }
        assert!(started.elapsed() < WAIT_GUARD, "no {}", url_file.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let mut browser = Browser::launch().await;
    browser.call("Page.navigate", json!({ "url": format!("{url}/") }), true).await;
    browser.wait_for("its first live data", "document.body.dataset.loaded === 'true'").await;
    // The document this test watches: a reload would lose the marker.
    browser.eval("window.loadedOnce = 42").await;
    let u2_at_load = browser.eval("document.querySelector('[data-user=\"u2\"]')?.dataset.state").await;
    assert_ne!(u2_at_load, json!("quarantined"), "loaded before u2 was quarantined (to see it happen live)");

    browser
        .wait_for(
            "every shared actor running in the tree",
            "['persistence','market_data','order_router','monitor','healer','http'].every(a => \
             document.querySelector(`[data-actor=\"${a}\"]`)?.dataset.state === 'running')",
        )
        .await;
    browser
        .wait_for(
            "all 35 failure points in the grid",
            "document.querySelectorAll('#grid .fp[data-status]').length === 35",
        )
        .await;
    browser
        .wait_for(
            "a kill switch with a live countdown",
            "[...document.querySelectorAll('.countdown[data-until]')].some(c => /^ends in \\d+m \\d+s$/.test(c.textContent) \
             && Number(c.dataset.until) > Date.now())",
        )
        .await;
    browser
        .wait_for(
            "u2 quarantined after its restarts, and SYS-PROCESS critical",
            "document.querySelector('[data-user=\"u2\"]')?.dataset.state === 'quarantined' \
             && /\\b3 restart\\(s\\)/.test(document.querySelector('[data-user=\"u2\"]').textContent) \
             && document.querySelector('#events tr[data-event=\"quarantined\"][data-user=\"u2\"]') !== null",
        )
        .await;
    browser
        .wait_for(
            "SYS-PROCESS critical in the grid",
            "document.querySelector('.fp[data-id=\"SYS-PROCESS\"]')?.dataset.status === 'critical'",
        )
        .await;
    assert_eq!(browser.eval("window.loadedOnce").await, json!(42), "the page was never reloaded");
    let countdown = browser.eval("document.querySelector('.countdown[data-until]').textContent").await;
    eprintln!("countdown on screen: {countdown}");

    let shot = browser.call("Page.captureScreenshot", json!({ "format": "png" }), true).await;
    let png = base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let artifact = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&artifact, &png).unwrap();
    eprintln!("dashboard screenshot: {}", artifact.display());
}
