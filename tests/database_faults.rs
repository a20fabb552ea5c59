//! The database failing under a running server (the real binary on the shipped config, paper
//! exchange, a free port), the ways an operator's machine makes it fail:
//!
//! - another connection holds the write lock for 20 s (an operator's `sqlite3` session, a tool):
//!   every user keeps deciding on every candle, records wait in the outbox, `/health` says the
//!   database is degraded and SYS-DATABASE is critical with the kind; after the lock is released
//!   everything is replayed and both are ok again;
//! - the database's shared-memory file becomes unwritable (what a read-only remount after an I/O
//!   error does to it; here `chattr +i`): SQLite would crash the process on it with SIGBUS. The
//!   process lives on with SYS-DATABASE critical and records in the outbox (or, if the kernel
//!   struck first, exits 70 with the reason in `supervisor.jsonl`: never a silent signal).
//!
//! Runs on wall time; every wait is for a condition in the files or the API, bounded by a guard.
//! One more test runs the tree in-process on a manual clock: an exit decided while another
//! connection holds the write lock is committed to the outbox and placed, and every invariant
//! holds once the lock is gone.

mod common;

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const WAIT_GUARD: Duration = Duration::from_secs(60);

/// How long the foreign connection holds the write lock (the figure).
const FOREIGN_LOCK_HELD: Duration = Duration::from_secs(20);

fn config(dir: &Path) -> PathBuf {
    let shipped = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/bulwark.toml")).unwrap();
    let text = shipped
        .replace("data_dir = \"data\"", &format!("data_dir = {:?}", dir.join("data").display().to_string()))
        .replace("log_dir = \"logs\"", &format!("log_dir = {:?}", dir.join("logs").display().to_string()))
        .replace("listen = \"127.0.0.1:8377\"", "listen = \"127.0.0.1:0\"")
        .replace("candle_interval_ms = 1000", "candle_interval_ms = 250")
        .replace("\ninterval_secs = 60", "\ninterval_secs = 1")
        .replace("\ninterval_secs = 300", "\ninterval_secs = 1");
    assert!(text.contains("candle_interval_ms = 250") && text.matches("\ninterval_secs = 1 ").count() >= 2, "{text}");
    let path = dir.join("bulwark.toml");
    std::fs::write(&path, text).unwrap();
    path
}

struct Server {
    child: Child,
    dir: PathBuf,
    address: String,
}

impl Server {
    fn start(dir: &Path) -> Self {
        let config = config(dir);
        let child = Command::new(env!("CARGO_BIN_EXE_bulwark"))
            .args(["run", "--duration", "180", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let url_file = dir.join("data/bulwark.http");
        let mut url = String::new();
        wait_until("the server's URL", || {
            url = std::fs::read_to_string(&url_file).unwrap_or_default();
            url.ends_with('\n')
        });
        let address = url.trim().trim_start_matches("http://").trim_end_matches('/').to_owned();
        Self { child, dir: dir.to_owned(), address }
    }

    fn database(&self) -> PathBuf {
        self.dir.join("data/bulwark.db")
    }

    /// `GET /health`: the status code and the body.
    fn health(&self) -> (u16, Value) {
        let mut stream = std::net::TcpStream::connect(&self.address).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(stream, "GET /health HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", self.address).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        let status = answer.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
        let body = answer.split_once("\r\n\r\n").map(|(_, body)| body).unwrap_or("");
        // The body may come chunked: the JSON object is between the first '{' and the last '}'.
        let json = body.find('{').zip(body.rfind('}')).map(|(start, end)| &body[start..=end]).unwrap_or("null");
        (status, serde_json::from_str(json).unwrap_or(Value::Null))
    }

    fn monitor_lines(&self) -> Vec<Value> {
        lines(&self.dir.join("logs/failure_point_monitor.jsonl"))
    }

    /// SYS-DATABASE in the newest monitor line: (status, detail).
    fn database_check(&self) -> (String, String) {
        let lines = self.monitor_lines();
        let Some(line) = lines.last() else { return Default::default() };
        let check = line["checks"].as_array().unwrap().iter().find(|c| c["id"] == "SYS-DATABASE").unwrap();
        (check["status"].as_str().unwrap_or("").to_owned(), check["detail"].as_str().unwrap_or("").to_owned())
    }

    /// The healing log's lines for one failure point.
    fn healing_lines(&self, failure_point: &str) -> Vec<Value> {
        lines(&self.dir.join("logs/failure_point_healing.jsonl"))
            .into_iter()
            .filter(|line| line["failure_point"] == failure_point)
            .collect()
    }

    fn outbox_depth(&self) -> usize {
        bulwark::persistence::outbox::count_entries(&self.dir.join("data/bulwark.outbox")).unwrap()
    }

    /// Decisions per user made within `[from_ms, to_ms)`, from the database.
    fn decisions_between(&self, from_ms: i64, to_ms: i64) -> Vec<(String, usize)> {
        let mut store = bulwark::persistence::Store::open_read_only(&self.database()).unwrap();
        ["u1", "u2", "u3", "u4"]
            .iter()
            .map(|user| {
                let user_id = bulwark::domain::UserId::new(user).unwrap();
                let made = store
                    .recent_decisions(&user_id, 10_000)
                    .unwrap()
                    .iter()
                    .filter(|d| d.counts_as_decision && (from_ms..to_ms).contains(&d.decided_at_ms))
                    .count();
                (user.to_string(), made)
            })
            .collect()
    }

    /// SIGTERM; the ordered shutdown must exit 0.
    fn stop(mut self) {
        let stopped = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(stopped.success());
        let exit = self.child.wait().unwrap();
        assert!(exit.success(), "bulwark exited with {exit}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Polls `condition` every 50 ms until it holds; panics with `what` after the guard.
fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < WAIT_GUARD, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until every user has decided and the monitor has judged the database ok.
fn wait_trading(server: &Server) {
    wait_until("every user deciding and SYS-DATABASE ok", || {
        server.database_check().0 == "ok" && server.decisions_between(0, i64::MAX).iter().all(|(_, n)| *n >= 2)
    });
}

#[test]
fn a_foreign_write_lock_held_20_s_stops_no_user_and_is_reported_as_degraded() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    wait_trading(&server);

    // Another connection takes the write lock and holds it.
    let foreign = rusqlite::Connection::open(server.database()).unwrap();
    foreign.execute_batch("BEGIN IMMEDIATE; UPDATE users SET decision_count = decision_count WHERE 0;").unwrap();
    let locked_at_ms = now_ms();
    let held = Instant::now();

    let mut degraded_health = Value::Null;
    wait_until("/health degraded by the foreign lock", || {
        let (status, body) = server.health();
        degraded_health = body;
        status == 200 && degraded_health["status"] == "degraded"
    });
    assert_eq!(degraded_health["database"]["refusal"]["kind"], "foreign_lock", "{degraded_health}");
    wait_until("SYS-DATABASE critical with the foreign lock", || {
        let (status, detail) = server.database_check();
        status == "critical" && detail.contains("foreign_lock")
    });
    assert!(server.outbox_depth() > 0, "records wait in the outbox while the lock holds");
    std::thread::sleep(FOREIGN_LOCK_HELD.saturating_sub(held.elapsed()));
    let released_at_ms = now_ms();
    foreign.execute_batch("ROLLBACK").unwrap();
    drop(foreign);

    wait_until("the outbox replayed and SYS-DATABASE ok again", || {
        server.outbox_depth() == 0 && server.database_check().0 == "ok"
    });
    let (status, health) = server.health();
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")), "{health}");
    // The Healer's action while the lock held changed nothing, and says so; the one whose window
    // saw the writes go through again is healed.
    wait_until("a healed line for SYS-DATABASE", || {
        server.healing_lines("SYS-DATABASE").iter().any(|line| line["result"] == "healed")
    });
    let healing = server.healing_lines("SYS-DATABASE");
    assert!(healing.iter().any(|line| line["result"] == "no_effect"), "{healing:?}");
    // Every user went on deciding while the lock held: with a candle every 250 ms, a user on 5m
    // candles decides about 60 times in the 15 s after the first second of the lock.
    let during = server.decisions_between(locked_at_ms + 1_000, released_at_ms - 1_000);
    for (user, made) in &during {
        assert!(*made >= 10, "{user} made {made} decisions while the lock held: {during:?}");
    }
    server.stop();
}

/// Clears the immutable flag on the way out, whatever happened (an immutable file cannot be
/// deleted with the temporary directory).
struct Immutable(PathBuf);

impl Immutable {
    fn set(path: &Path) -> Result<Self, String> {
        let output = Command::new("chattr").arg("+i").arg(path).output().map_err(|e| e.to_string())?;
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).into_owned());
        }
        Ok(Self(path.to_owned()))
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

#[test]
fn an_unwritable_shared_memory_file_never_kills_the_process_silently() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path());
    wait_trading(&server);
    let shared_memory = bulwark::persistence::shared_memory_path(&server.database());
    let immutable = match Immutable::set(&shared_memory) {
        Ok(immutable) => immutable,
        Err(why) => {
            // chattr needs root (CAP_LINUX_IMMUTABLE) and a filesystem with the flag (ext4, xfs,
            // btrfs); this machine and CI have both.
            panic!("chattr +i {} failed: {why}", shared_memory.display());
        }
    };

    // Either the persistence actor saw it first (the process lives on, SYS-DATABASE says why),
    // or the kernel struck inside SQLite (a logged exit 70). Never a silent SIGBUS.
    let mut exited = None;
    wait_until("SYS-DATABASE critical for the shared-memory file, or an exit", || {
        exited = server.child.try_wait().unwrap();
        let (status, detail) = server.database_check();
        exited.is_some() || (status == "critical" && detail.contains("shared_memory_unwritable"))
    });
    if let Some(exit) = exited {
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!((exit.code(), exit.signal()), (Some(70), None), "an ordered exit 70, not a signal: {exit}");
        let journal = lines(&dir.path().join("logs/supervisor.jsonl"));
        let note = journal.iter().find(|l| l["signal"] == "SIGBUS").expect("the reason is in supervisor.jsonl");
        assert_eq!((note["event"].as_str(), note["exit_code"].as_i64()), (Some("escalated"), Some(70)), "{note}");
        return;
    }
    // Alive: it keeps deciding (skips with the reason, kept in the outbox) for several monitor
    // runs, and says so on /health.
    let runs_before = server.monitor_lines().len();
    wait_until("three more monitor runs", || server.monitor_lines().len() >= runs_before + 3);
    assert!(server.child.try_wait().unwrap().is_none(), "the process is alive");
    assert!(server.outbox_depth() > 0, "records wait in the outbox");
    let (status, health) = server.health();
    assert_eq!((status, health["status"].as_str()), (200, Some("degraded")), "{health}");
    assert_eq!(health["database"]["refusal"]["kind"], "shared_memory_unwritable", "{health}");

    // Writable again: the outbox is replayed, and the database is ok again.
    drop(immutable);
    wait_until("the outbox replayed and SYS-DATABASE ok again", || {
        server.outbox_depth() == 0 && server.database_check().0 == "ok"
    });
    let (status, health) = server.health();
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")), "{health}");
    server.stop();
}

/// Trades u1 until it has entered a position (its entry order placed).
async fn enter_a_position(tree: &mut common::Tree) {
    for _ in 0..300 {
        let outcome = tree.step_and_settle(&["u1"]).await;
        let iteration = &outcome.iterations[0];
        if iteration.decision.outcome == "enter" && iteration.follow_ups.iter().any(|f| f.outcome == "order_placed") {
            return;
        }
    }
    panic!("u1 did not enter within 300 candles");
}

#[actix_rt::test]
async fn an_exit_decided_under_a_foreign_write_lock_is_placed_and_every_invariant_holds() {
    use bulwark::actors::DatabaseRefusalKind;
    use bulwark::clock::ManualClock;

    let dir = tempfile::tempdir().unwrap();
    let config = common::config_in(dir.path(), common::ONE_USER);
    let mut tree = common::Tree::start(config, ManualClock::new(common::START_MS));
    tree.wait_ready(&["u1"]).await;

    // Trade until u1 holds a position.
    enter_a_position(&mut tree).await;

    // Another connection takes the write lock; u1 decides on every candle until it exits.
    let foreign = tree.store_writable();
    foreign.execute_batch("BEGIN IMMEDIATE; UPDATE users SET decision_count = decision_count WHERE 0;").unwrap();
    let mut exit = None;
    for _ in 0..300 {
        let outcome = tree.step_and_settle(&["u1"]).await;
        let iteration = outcome.iterations[0].clone();
        assert_ne!(iteration.decision.outcome, "skipped", "u1 keeps deciding under the lock: {iteration:?}");
        if iteration.decision.outcome == "enter" {
            panic!("no entry while the database refuses writes: {iteration:?}");
        }
        if iteration.decision.outcome == "exit" {
            exit = Some(iteration);
            break;
        }
    }
    let exit = exit.expect("u1 decided an exit within 300 candles of the lock");
    let placed = exit.follow_ups.iter().find(|f| f.outcome == "order_placed");
    assert!(placed.is_some_and(|p| p.reason.contains("durable outbox")), "the exit was placed: {exit:?}");
    let outbox = tree.server.directory.outbox();
    assert!(outbox.depth > 0, "{outbox:?}");
    assert_eq!(outbox.refusal.map(|r| r.kind), Some(DatabaseRefusalKind::ForeignLock));

    // The lock goes: the outbox is replayed (probed with backoff) and the database has it all.
    foreign.execute_batch("ROLLBACK").unwrap();
    drop(foreign);
    let started = Instant::now();
    while tree.server.directory.outbox().is_degraded() {
        assert!(started.elapsed() < WAIT_GUARD, "the outbox was not replayed: {:?}", tree.server.directory.outbox());
        tree.step_and_settle(&["u1"]).await;
    }
    let client_order_id = exit.decision.client_order_id.clone().expect("the exit's order");
    let order = tree.store().order(&client_order_id).unwrap().expect("the exit's intent is in the database");
    assert!(order.state.is_final(), "{order:?}");
    let ledger = tree.paper.full_ledger().await.unwrap();
    let report = bulwark::verify::check(&mut tree.store(), &ledger).unwrap();
    assert!(report.passed(), "{}", report.render());
    tree.shutdown().await;
}

#[actix_rt::test]
async fn while_records_can_be_kept_nowhere_no_order_is_placed() {
    use std::sync::Arc;

    use bulwark::clock::ManualClock;

    let dir = tempfile::tempdir().unwrap();
    let fault = dir.path().join("database-fault");
    // A tiny outbox, so that with the database refusing writes it fills within a few candles.
    let body = format!(
        "outbox_records_max = 10\n[http]\nlisten = \"127.0.0.1:0\"\n[chaos]\nenabled = true\ndatabase_fault_file = {:?}\n{}",
        fault.display().to_string(),
        common::ONE_USER
    );
    let config = common::config_in(dir.path(), &body);
    let clock = ManualClock::new(common::START_MS);
    let paper = common::start_paper(&config, clock.clone());
    let exchange = Arc::new(common::ScriptedExchange::new(paper.clone(), Vec::new()));
    let mut tree = common::Tree::start_with_exchange(config, clock, paper, exchange.clone());
    tree.wait_ready(&["u1"]).await;
    enter_a_position(&mut tree).await;

    // The database refuses writes and the outbox fills: records are lost, and said to be.
    std::fs::write(&fault, b"").unwrap();
    for _ in 0..20 {
        if tree.server.directory.outbox().records_unkept.is_some() {
            break;
        }
        tree.step_and_settle(&["u1"]).await;
    }
    let status = tree.server.directory.outbox();
    assert!(status.records_unkept.is_some() && status.records_lost_total > 0, "{status:?}");

    // Nothing reaches the exchange while records cannot be kept: an exit decided now is not sent.
    let sent_before = exchange.attempts.lock().unwrap().len();
    let mut exit = None;
    for _ in 0..300 {
        let outcome = tree.step_and_settle(&["u1"]).await;
        if outcome.iterations[0].decision.outcome == "exit" {
            exit = Some(outcome.iterations[0].clone());
            break;
        }
    }
    let exit = exit.expect("u1 decided an exit within 300 candles");
    assert!(exit.follow_ups.iter().any(|f| f.outcome == "order_failed"), "the exit was not placed: {exit:?}");
    assert_eq!(exchange.attempts.lock().unwrap().len(), sent_before, "no order request left");

    // The database takes writes again: records are kept, the outbox replays, invariants hold.
    std::fs::remove_file(&fault).unwrap();
    let started = Instant::now();
    while tree.server.directory.outbox().is_degraded() {
        assert!(started.elapsed() < WAIT_GUARD, "still degraded: {:?}", tree.server.directory.outbox());
        tree.step_and_settle(&["u1"]).await;
    }
    let ledger = tree.paper.full_ledger().await.unwrap();
    let report = bulwark::verify::check(&mut tree.store(), &ledger).unwrap();
    assert!(report.passed(), "{}", report.render());
    tree.shutdown().await;
}
