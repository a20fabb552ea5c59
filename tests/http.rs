//! The HTTP API of a running server (the real binary on the shipped config, paper exchange, a free
//! port): every endpoint, auth failures, bad parameters, and the admin actions' effect on the tree.
//! A handler panic answering 500 is a unit test in `src/http/mod.rs`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const WAIT_GUARD: Duration = Duration::from_secs(40);
const TOKEN: &str = "test-admin-token-never-logged";

fn config(dir: &Path) -> PathBuf {
    let shipped = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/bulwark.toml")).unwrap();
    let text = shipped
        .replace("data_dir = \"data\"", &format!("data_dir = {:?}", dir.join("data").display().to_string()))
        .replace("log_dir = \"logs\"", &format!("log_dir = {:?}", dir.join("logs").display().to_string()))
        .replace("listen = \"127.0.0.1:8377\"", "listen = \"127.0.0.1:0\"\ntoken_env = \"BULWARK_TEST_HTTP_TOKEN\"")
        .replace("candle_interval_ms = 1000", "candle_interval_ms = 100")
        .replace("\ninterval_secs = 60", "\ninterval_secs = 1")
        .replace(
            "[chaos]\nenabled = false            # see config/chaos.toml",
            "[chaos]\nenabled = true\npanic_users = []",
        );
    assert!(text.contains("token_env = \"BULWARK_TEST_HTTP_TOKEN\"") && text.contains("panic_users = []"));
    let path = dir.join("bulwark.toml");
    std::fs::write(&path, text).unwrap();
    path
}

struct Server {
    child: Child,
    url: String,
    http: reqwest::Client,
}

impl Server {
    fn start(dir: &Path, config: &Path) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_bulwark"))
            .args(["run", "--duration", "120", "--config"])
            .arg(config)
            .env("BULWARK_TEST_HTTP_TOKEN", TOKEN)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let url_file = dir.join("data/bulwark.http");
        let started = Instant::now();
        let url = loop {
            if let Ok(text) = std::fs::read_to_string(&url_file)
                && text.ends_with('\n')
            {
                break text.trim().to_owned();
            }
            assert!(started.elapsed() < WAIT_GUARD, "no {}", url_file.display());
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        Self { child, url, http: reqwest::Client::new() }
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let response = self.http.get(format!("{}{path}", self.url)).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut request = self.http.post(format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Polls `path` until `wanted` holds for its answer.
    async fn get_until(&self, path: &str, what: &str, wanted: impl Fn(u16, &Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let (status, body) = self.get(path).await;
            if wanted(status, &body) {
                return body;
            }
            assert!(started.elapsed() < WAIT_GUARD, "never {what}: last answer {status} {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn error_of(body: &Value) -> &str {
    body["error"].as_str().unwrap_or_else(|| panic!("a JSON error: {body}"))
}

fn user_state<'a>(status: &'a Value, user: &str) -> &'a str {
    status["users"].as_array().unwrap().iter().find(|u| u["user"] == user).unwrap()["state"].as_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_and_refuses_what_it_should() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let mut server = Server::start(dir.path(), &config);

    // Health: the tree is up and the monitor runs.
    let health = server
        .get_until("/health", "healthy with a monitor run", |status, body| {
            status == 200 && body["monitor_last_run"].is_string()
        })
        .await;
    assert_eq!(health["status"], "ok");
    assert!(health["shared_actors"].as_u64() >= Some(8), "{health}");

    // Status: the whole tree, every user, the failure points, the outbox.
    let status = server
        .get_until("/api/status", "every user running", |status, body| {
            status == 200 && ["u1", "u2", "u3", "u4"].iter().all(|u| user_state(body, u) == "running")
        })
        .await;
    let tree = status["tree"].as_array().unwrap();
    for actor in ["persistence", "market_data", "order_router", "monitor", "healer", "http"] {
        assert!(tree.iter().any(|a| a["actor"] == actor && a["state"] == "running"), "{actor} in {tree:?}");
    }
    assert!(status["failure_points"].as_array().is_some_and(|c| c.len() == 35), "{}", status["failure_points"]);
    assert_eq!(status["outbox"]["depth"], 0);

    // Why: the same answer as the command line.
    let (code, why) = server.get("/api/users/u1/why").await;
    assert_eq!(code, 200, "{why}");
    assert_eq!(why["user"], "u1");
    let cli =
        Command::new(env!("CARGO_BIN_EXE_bulwark")).args(["why", "u1", "--json", "--config"]).arg(&config).output();
    let cli: Value = serde_json::from_slice(&cli.unwrap().stdout).unwrap();
    assert_eq!(cli["user"], why["user"]);
    assert_eq!(
        cli.as_object().unwrap().keys().collect::<Vec<_>>(),
        why.as_object().unwrap().keys().collect::<Vec<_>>()
    );
    let (code, body) = server.get("/api/users/nobody/why").await;
    assert_eq!(code, 404);
    assert!(error_of(&body).contains("no user nobody"), "{body}");
    let (code, body) = server.get("/api/users/BAD%20ID/why").await;
    assert_eq!(code, 400, "{body}");

    // History, with bad parameters named.
    let (code, body) = server.get("/api/failure-points/history?since=yesterday").await;
    assert_eq!(code, 400);
    assert!(error_of(&body).contains("\"yesterday\" is not a time"), "{body}");
    let (code, body) = server.get("/api/failure-points/history?id=NOPE").await;
    assert_eq!(code, 400);
    assert!(error_of(&body).contains("not a failure point"), "{body}");
    let history = server
        .get_until("/api/failure-points/history?since=1h", "a monitor run in history", |status, body| {
            status == 200 && body["runs"].as_array().is_some_and(|runs| !runs.is_empty())
        })
        .await;
    assert_eq!(history["runs"][0]["statuses"].as_object().unwrap().len(), 35);
    let (code, one) = server.get("/api/failure-points/history?since=1h&id=SYS-DATABASE").await;
    assert_eq!(code, 200);
    assert!(one["runs"][0]["status"].is_string() && one["runs"][0]["detail"].is_string(), "{one}");

    // Events: the supervision tree's start.
    let (code, events) = server.get("/api/events?since=1h").await;
    assert_eq!(code, 200);
    let events = events["events"].as_array().unwrap();
    assert!(events.iter().any(|e| e["kind"] == "supervision" && e["event"] == "started" && e["user"] == "u1"));

    // Admin: the token is required and checked; it is never echoed.
    let (code, body) = server.post("/api/admin/users/u1/pause", None).await;
    assert_eq!(code, 401);
    assert!(error_of(&body).contains("missing Authorization"), "{body}");
    let (code, body) = server.post("/api/admin/users/u1/pause", Some("wrong")).await;
    assert_eq!(code, 401);
    assert!(!body.to_string().contains(TOKEN));
    let (code, body) = server.post("/api/admin/users/u1/pause", Some(TOKEN)).await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = server.post("/api/admin/users/u1/pause", Some(TOKEN)).await;
    assert_eq!(code, 409, "{body}");
    server
        .get_until("/api/status", "u1 paused", |status, body| status == 200 && user_state(body, "u1") == "paused")
        .await;
    let (code, body) = server.post("/api/admin/users/u1/resume", Some(TOKEN)).await;
    assert_eq!(code, 200, "{body}");
    server
        .get_until("/api/status", "u1 running again", |status, body| {
            status == 200 && user_state(body, "u1") == "running"
        })
        .await;

    // Crash (chaos is on): the supervisor restarts the trader.
    let (code, body) = server.post("/api/admin/users/u2/crash", Some(TOKEN)).await;
    assert_eq!(code, 200, "{body}");
    server
        .get_until("/api/events?since=1h", "u2 crashed and restarted", |status, body| {
            let events = body["events"].as_array();
            status == 200
                && ["crashed", "restarted"].iter().all(|kind| {
                    events.is_some_and(|events| events.iter().any(|e| e["user"] == "u2" && e["event"] == *kind))
                })
        })
        .await;

    // Metrics: the Prometheus text format, as promtool reads it.
    let metrics = server.http.get(format!("{}/metrics", server.url)).send().await.unwrap();
    assert_eq!(metrics.status().as_u16(), 200);
    let text = metrics.text().await.unwrap();
    for needle in [
        "bulwark_decisions_total{user=\"u1\"}",
        "bulwark_users{state=\"running\"}",
        "bulwark_failure_point_status{category=",
        "bulwark_outbox_depth 0",
        "bulwark_actor_restarts_total{actor=\"trader\",user=\"u2\"}",
        "bulwark_exchange_requests_total{endpoint=\"klines\",outcome=\"ok\"}",
        // Every trader start reads the account's positions and open orders.
        "bulwark_exchange_request_seconds_bucket{endpoint=\"positions_and_open_orders\",le=",
    ] {
        assert!(text.contains(needle), "{needle} missing from /metrics:\n{text}");
    }
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; .ci/run installs it)");
    use std::io::Write as _;
    promtool.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    // A handler that panics answers 500, and the server keeps serving.
    let (code, body) = server.post("/api/admin/chaos/handler-panic", Some(TOKEN)).await;
    assert_eq!(code, 500, "{body}");
    assert!(error_of(&body).contains("internal error in handler_panic"), "{body}");
    let (code, _) = server.get("/health").await;
    assert_eq!(code, 200, "still serving after a handler panic");

    // Locks: a bad id, an unknown one.
    let (code, body) = server.post("/api/admin/locks/abc/clear", Some(TOKEN)).await;
    assert_eq!((code, error_of(&body).contains("not a number")), (400, true), "{body}");
    let (code, _) = server.post("/api/admin/locks/999999/clear", Some(TOKEN)).await;
    assert_eq!(code, 404);
    let (code, body) = server.get("/no/such/thing").await;
    assert_eq!((code, error_of(&body)), (404, "no such endpoint"));

    // The command line asks the running server.
    let cli = |args: &[&str]| {
        let output =
            Command::new(env!("CARGO_BIN_EXE_bulwark")).args(args).arg("--config").arg(&config).output().unwrap();
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let status = cli(&["status"]);
    assert!(status.contains(&format!("bulwark status: {} (server running", server.url)), "{status}");
    assert!(status.contains("http running #1"), "{status}");
    let trends = cli(&["report", "--since", "1h"]);
    assert!(trends.contains("failure-point trends from"), "{trends}");
    assert!(trends.contains("SYS-DATABASE"), "{trends}");
    assert!(trends.contains("restarts: trader u2"), "the crash is counted: {trends}");
    assert!(trends.contains(&format!("(from the server at {})", server.url)), "{trends}");

    let stopped = Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status().unwrap();
    assert!(stopped.success());
    let exited = tokio::task::block_in_place(|| server.child.wait().unwrap());
    assert!(exited.success());
    let log = std::fs::read_to_string(dir.path().join("logs/bulwark.log")).unwrap();
    assert!(!log.contains(TOKEN), "the token never reaches the log");

    // With the server stopped, the same commands read the database.
    let status = cli(&["status"]);
    assert!(status.contains("(server not running)"), "{status}");
    let trends = cli(&["report", "--since", "1h"]);
    assert!(trends.contains("failure-point trends from") && trends.contains("bulwark.db)"), "{trends}");
    let why: Value = serde_json::from_str(&cli(&["why", "u1", "--json"])).unwrap();
    assert_eq!(why["user"], "u1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_json_echo_values_cut_and_the_bearer_scheme_is_any_case() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let server = Server::start(dir.path(), &config);
    server.get_until("/health", "healthy", |status, _| status == 200).await;

    // RFC 7235: the scheme is case-insensitive. Lock 999999 does not exist: 404 means admitted.
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let response = server
            .http
            .post(format!("{}/api/admin/locks/999999/clear", server.url))
            .header("Authorization", format!("{scheme} {TOKEN}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 404, "{scheme}: {}", response.text().await.unwrap());
    }
    let response = server
        .http
        .post(format!("{}/api/admin/locks/999999/clear", server.url))
        .header("Authorization", "bearer wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);

    // Every refusal is JSON naming the problem, with what was sent cut to its first characters.
    let raw = |path: String| {
        let http = server.http.clone();
        let url = format!("{}{path}", server.url);
        async move {
            let response = http.get(url).send().await.unwrap();
            let status = response.status().as_u16();
            let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
            let body = response.text().await.unwrap();
            assert_eq!(content_type.as_deref(), Some("application/json"), "{status} {body}");
            let json: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
            (status, body.len(), error_of(&json).to_owned())
        }
    };
    let (status, _, error) = raw("/api/users/%3Cscript%3Ealert(1)%3C%2Fscript%3E/why".to_owned()).await;
    assert_eq!(status, 400);
    assert!(error.starts_with("user id \"<script>alert(1)</script>\" must be 1 to 12 characters"), "{error}");
    let (status, length, error) = raw(format!("/api/users/{}/why", "a".repeat(20_480))).await;
    assert_eq!(status, 400);
    assert!(length < 1_024, "a 20 KB id answered with {length} bytes");
    assert!(error.contains("…\" (20480 bytes)"), "{error}");
    for since in ["9223372036854775807", "-9223372036854775808", "99999999999999999999"] {
        for endpoint in ["/api/events", "/api/failure-points/history"] {
            let (status, _, error) = raw(format!("{endpoint}?since={since}")).await;
            assert_eq!(status, 400, "{endpoint}?since={since}");
            assert!(error.starts_with(&format!("since=\"{since}\" is out of range")), "{error}");
        }
    }
    let (status, length, error) = raw(format!("/api/events?since={}", "9".repeat(20_000))).await;
    assert_eq!(status, 400);
    assert!(length < 1_024 && error.contains("(20000 bytes)"), "{length}: {error}");
    let (status, length, error) = raw(format!("/api/failure-points/history?id={}", "X".repeat(20_000))).await;
    assert_eq!(status, 400);
    assert!(length < 1_024 && error.contains("is not a failure point"), "{length}: {error}");
    let (status, _, error) = raw("/no/such/thing".to_owned()).await;
    assert_eq!((status, error.as_str()), (404, "no such endpoint"));
}
