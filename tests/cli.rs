//! The `bulwark` binary as an operator runs it: `check-config`, `run` (on the embedded default,
//! with chaos, twice on one database, twice at once), `status`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use bulwark::domain::{OrderState, UserId};
use bulwark::persistence::Store;
use bulwark::persistence::paper_journal::PaperJournal;

fn bulwark() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_bulwark"));
    command.env("RUST_LOG", "info");
    command
}

fn run(command: &mut Command) -> Output {
    command.output().expect("bulwark runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A fast config (20 candles a second) with its data and logs in `dir`.
fn fast_config(dir: &Path, extra: &str) -> PathBuf {
    let shipped = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/bulwark.toml")).unwrap();
    let config = shipped
        .replace("data_dir = \"data\"", &format!("data_dir = {:?}", dir.join("data").display().to_string()))
        .replace("log_dir = \"logs\"", &format!("log_dir = {:?}", dir.join("logs").display().to_string()))
        .replace("listen = \"127.0.0.1:8377\"", "listen = \"127.0.0.1:0\"")
        .replace("candle_interval_ms = 1000", "candle_interval_ms = 50")
        .replace("status_interval_secs = 10", "status_interval_secs = 1")
        .replace("backoff_ms_initial = 500", "backoff_ms_initial = 50")
        .replace("[chaos]\nenabled = false            # see config/chaos.toml", &format!("[chaos]\n{extra}"));
    let path = dir.join("bulwark.toml");
    std::fs::write(&path, config).unwrap();
    path
}

fn journal_lines(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("logs/supervisor.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("bad journal line {line:?}: {e}")))
        .collect()
}

#[test]
fn check_config_accepts_the_shipped_configs() {
    for file in ["config/bulwark.toml", "config/chaos.toml"] {
        let output =
            run(bulwark().args(["check-config", "--config"]).arg(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)));
        assert!(output.status.success(), "{file}: {}", text(&output.stderr));
        assert_eq!(text(&output.stdout), "config ok\n");
    }
}

#[test]
fn check_config_names_an_unknown_key_a_bad_symbol_and_a_negative_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
[server]
data_dir = "data"
verbose = true

[[users]]
id = "u1"
[[users.strategies]]
symbol = "XRPUSD"
timeframe = "5m"
strategy = "ema_crossover"
position_size_usdt = 100

[[users]]
id = "u2"
[[users.strategies]]
symbol = "BTCUSDT"
timeframe = "5m"
strategy = "rsi_reversion"
position_size_usdt = -5
"#,
    )
    .unwrap();
    let output = run(bulwark().args(["check-config", "--config"]).arg(&path));
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("3 problems"), "{stderr}");
    assert!(stderr.contains("server.verbose: unknown key"), "{stderr}");
    assert!(stderr.contains("users[0].strategies[0].symbol: unknown symbol \"XRPUSD\""), "{stderr}");
    assert!(
        stderr.contains("users[1].strategies[0].position_size_usdt: must be from 0.01 to 1e12, got -5"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());

    let missing = run(bulwark().args(["check-config", "--config"]).arg(dir.path().join("nope.toml")));
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing.stderr).contains("cannot read"), "{}", text(&missing.stderr));
}

/// One paper user trading XRPUSDT with `position_size_usdt = {size}`, after `sections`.
fn one_user_config(dir: &Path, sections: &str, size: &str) -> PathBuf {
    let path = dir.join("one-user.toml");
    let text = format!(
        "{sections}\n[[users]]\nid = \"u1\"\n[[users.strategies]]\nsymbol = \"XRPUSDT\"\ntimeframe = \"5m\"\nstrategy = \"ema_crossover\"\nposition_size_usdt = {size}\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_config_refuses_an_out_of_range_number_naming_path_and_value() {
    let dir = tempfile::tempdir().unwrap();
    // Read as 0 before (`config ok`, then the user blocked forever).
    let output = run(bulwark().args(["check-config", "--config"]).arg(one_user_config(dir.path(), "", "1e30")));
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stdout));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("users[0].strategies[0].position_size_usdt: must be from 0.01 to 1e12, got 1e30"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "{}", text(&output.stdout));
}

#[test]
fn check_config_warns_when_the_guards_are_off_and_still_passes() {
    let dir = tempfile::tempdir().unwrap();
    let config = one_user_config(dir.path(), "[guards]\nenabled = false", "100");
    let output = run(bulwark().args(["check-config", "--config"]).arg(config));
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(stdout.starts_with("config ok\nwarning: guards.enabled = false: "), "{stdout}");
    assert!(stdout.contains("no new kill switch or probation will be set"), "{stdout}");
}

#[test]
fn check_config_output_for_a_megabyte_value_is_short() {
    let dir = tempfile::tempdir().unwrap();
    let config = one_user_config(dir.path(), "", "100");
    let huge = "x".repeat(1 << 20);
    let text_with_huge_id =
        std::fs::read_to_string(&config).unwrap().replace("id = \"u1\"", &format!("id = \"{huge}\""));
    std::fs::write(&config, text_with_huge_id).unwrap();
    let output = run(bulwark().args(["check-config", "--config"]).arg(&config));
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(stderr.len() < 1_000, "{} bytes of output", stderr.len());
    assert!(stderr.contains("users[0].id: user id \"xxxx") && stderr.contains("…\" (1048576 bytes)"), "{stderr}");
}

/// A Binance config whose two users read their keys from `BULWARK_TEST_CLI_<USER>_KEY` and
/// `_SECRET`. The exchange is never reached: the keys are checked before any request.
fn binance_config(dir: &Path) -> PathBuf {
    let mut text = format!(
        "[server]\ndata_dir = {:?}\nlog_dir = {:?}\n[http]\nenabled = false\n[exchange]\nkind = \"binance\"\nbase_url = \"http://127.0.0.1:9\"\n",
        dir.join("data").display().to_string(),
        dir.join("logs").display().to_string()
    );
    for user in ["u1", "u2"] {
        let upper = user.to_uppercase();
        text.push_str(&format!(
            "[[users]]\nid = \"{user}\"\napi_key_env = \"BULWARK_TEST_CLI_{upper}_KEY\"\napi_secret_env = \"BULWARK_TEST_CLI_{upper}_SECRET\"\n[[users.strategies]]\nsymbol = \"BTCUSDT\"\ntimeframe = \"5m\"\nstrategy = \"ema_crossover\"\nposition_size_usdt = 100\n"
        ));
    }
    let path = dir.join("binance.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_config_refuses_a_binance_config_whose_key_variables_are_unset_as_run_does() {
    const SECRET_VALUE: &str = "a-key-value-that-must-never-be-printed";
    let dir = tempfile::tempdir().unwrap();
    let config = binance_config(dir.path());
    // u1 has its key but not its secret; u2 has neither: nobody can sign.
    let with_env = |command: &mut Command| {
        command
            .env("BULWARK_TEST_CLI_U1_KEY", SECRET_VALUE)
            .env_remove("BULWARK_TEST_CLI_U1_SECRET")
            .env_remove("BULWARK_TEST_CLI_U2_KEY")
            .env_remove("BULWARK_TEST_CLI_U2_SECRET");
    };
    let mut check = bulwark();
    with_env(check.args(["check-config", "--config"]).arg(&config));
    let checked = run(&mut check);
    assert_eq!(checked.status.code(), Some(2), "{}", text(&checked.stdout));
    let problem = "users: no user has API credentials (u1: environment variable BULWARK_TEST_CLI_U1_SECRET is not set; u2: environment variable BULWARK_TEST_CLI_U2_KEY is not set; environment variable BULWARK_TEST_CLI_U2_SECRET is not set)";
    let stderr = text(&checked.stderr);
    assert!(stderr.contains(problem), "{stderr}");
    assert!(!stderr.contains(SECRET_VALUE) && !text(&checked.stdout).contains(SECRET_VALUE));

    // `run` refuses the same config with the same words (before any request).
    let mut start = bulwark();
    with_env(start.args(["run", "--duration", "1", "--config"]).arg(&config));
    let refused = run(&mut start);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = text(&refused.stderr);
    assert!(stderr.contains(problem), "{stderr}");
    assert!(!stderr.contains(SECRET_VALUE));

    // One user able to sign: the config runs, and the user who cannot is named in a warning.
    let mut check = bulwark();
    with_env(check.args(["check-config", "--config"]).arg(&config));
    let checked = run(check.env("BULWARK_TEST_CLI_U1_SECRET", SECRET_VALUE));
    assert!(checked.status.success(), "{}", text(&checked.stderr));
    let stdout = text(&checked.stdout);
    assert!(
        stdout.contains("warning: user u2: environment variable BULWARK_TEST_CLI_U2_KEY is not set; environment variable BULWARK_TEST_CLI_U2_SECRET is not set: run halts this user at start"),
        "{stdout}"
    );
    assert!(!stdout.contains(SECRET_VALUE));
}

#[test]
fn run_on_the_embedded_default_from_an_empty_directory() {
    let dir = tempfile::tempdir().unwrap();
    let output = run(bulwark().current_dir(dir.path()).args(["run", "--duration", "3"]));
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stderr).contains("running on the embedded default config"), "{}", text(&output.stderr));
    assert!(dir.path().join("data/bulwark.db").exists());
    let lines = journal_lines(dir.path());
    for user in ["u1", "u2", "u3", "u4"] {
        assert!(lines.iter().any(|l| l["event"] == "started" && l["user"] == user), "started {user}");
    }
    let status = run(bulwark().current_dir(dir.path()).arg("status"));
    assert!(status.status.success(), "{}", text(&status.stderr));
    assert!(text(&status.stdout).contains("server not running"), "{}", text(&status.stdout));
}

/// Orders, fills and intents of every user.
fn totals(store: &mut Store) -> Vec<(String, u64, u64)> {
    store.user_statuses().unwrap().into_iter().map(|s| (s.user, s.orders_total, s.fills_total)).collect()
}

#[test]
fn two_runs_on_one_database_trade_resume_and_never_duplicate_an_order() {
    let dir = tempfile::tempdir().unwrap();
    let config = fast_config(dir.path(), "enabled = false");
    let first = run(bulwark().args(["run", "--duration", "3", "--config"]).arg(&config));
    assert!(first.status.success(), "{}", text(&first.stderr));

    let database = dir.path().join("data/bulwark.db");
    let mut store = Store::open_read_only(&database).unwrap();
    let after_first = totals(&mut store);
    let trading = after_first.iter().filter(|(_, orders, fills)| *orders > 0 && *fills > 0).count();
    assert!(trading >= 2, "orders and fills from at least two users: {after_first:?}");
    let lines = journal_lines(dir.path());
    for user in ["u1", "u2", "u3", "u4"] {
        assert!(lines.iter().any(|l| l["event"] == "started" && l["user"] == user && l["actor"] == "trader"));
    }
    assert!(lines.iter().any(|l| l["event"] == "tree"), "a tree snapshot");
    let last_seq: Vec<u64> = ["u1", "u2", "u3", "u4"]
        .iter()
        .map(|u| store.load_trader_state(&UserId::new(u).unwrap()).unwrap().last_intent_seq)
        .collect();
    drop(store);

    let second = run(bulwark().args(["run", "--duration", "2", "--config"]).arg(&config));
    assert!(second.status.success(), "{}", text(&second.stderr));
    let stderr = text(&second.stderr);
    for (user, seq) in ["u1", "u2", "u3", "u4"].iter().zip(&last_seq) {
        let resumed = stderr.lines().any(|l| {
            l.contains("trader ready")
                && l.contains(&format!("intent sequence {seq},"))
                && l.contains(&format!("user={user}"))
        });
        assert!(resumed, "{user} resumed at intent sequence {seq}:\n{stderr}");
    }

    // Every exchange order belongs to exactly one intent, and every intent that reached the
    // exchange is exactly one exchange order: the two sets of client order ids are equal.
    let mut store = Store::open_read_only(&database).unwrap();
    let books = PaperJournal::open(&dir.path().join("data/paper_exchange.db")).unwrap().load().unwrap();
    for user in ["u1", "u2", "u3", "u4"] {
        let orders = store.orders_of(&UserId::new(user).unwrap()).unwrap();
        let mut on_exchange: Vec<String> = books
            .orders
            .iter()
            .filter(|(u, _)| u.as_str() == user)
            .map(|(_, o)| o.order.client_order_id.to_string())
            .collect();
        on_exchange.sort();
        let mut reached: Vec<String> = orders
            .iter()
            .filter(|o| o.exchange_order_id.is_some())
            .map(|o| o.intent.client_order_id.to_string())
            .collect();
        reached.sort();
        assert!(!reached.is_empty() || user == "u3", "{user} traded");
        assert_eq!(on_exchange, reached, "{user}: exchange orders and intents match one to one");
        for (index, order) in orders.iter().enumerate() {
            assert_eq!(order.intent.intent_seq, index as u64 + 1, "{user}: dense sequence, nothing reused");
            // A clean shutdown drains placements: nothing is left pending, sending or unknown.
            assert!(
                matches!(order.state, OrderState::Open) || order.state.is_final(),
                "{user}: {order:?} resolved by a clean shutdown"
            );
        }
    }
    assert!(
        totals(&mut store).iter().zip(&after_first).any(|(now, before)| now.1 > before.1),
        "the second run traded too"
    );
}

/// Reads a child's stderr until a line contains `needle`; returns everything read.
fn read_until(reader: &mut impl BufRead, needle: &str) -> String {
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let read = reader.read_line(&mut line).expect("stderr is readable");
        assert!(read > 0, "the first server ended before printing {needle:?}:\n{seen}");
        seen.push_str(&line);
        if line.contains(needle) {
            return seen;
        }
    }
}

#[test]
fn a_second_server_on_the_same_database_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = fast_config(dir.path(), "enabled = false");
    let mut first =
        bulwark().args(["run", "--duration", "60", "--config"]).arg(&config).stderr(Stdio::piped()).spawn().unwrap();
    let mut first_stderr = BufReader::new(first.stderr.take().expect("stderr is piped"));
    read_until(&mut first_stderr, "bulwark starting");

    let second = run(bulwark().args(["run", "--duration", "5", "--config"]).arg(&config));
    assert_eq!(second.status.code(), Some(1));
    let stderr = text(&second.stderr);
    assert!(stderr.contains("another bulwark server is already running on"), "{stderr}");
    assert!(stderr.contains(&format!("pid {}", first.id())), "{stderr}");

    let terminated = Command::new("kill").args(["-TERM", &first.id().to_string()]).status().unwrap();
    assert!(terminated.success());
    let rest = read_until(&mut first_stderr, "bulwark stopped");
    assert!(rest.contains("received SIGTERM: shutting down in order"), "{rest}");
    assert!(first.wait().unwrap().success(), "SIGTERM is an orderly exit 0");
}

#[test]
fn status_why_and_report_trust_only_the_server_of_their_own_database() {
    // Server A runs on a free port; config B's [http] listen is that same port (its own server is
    // not running), and B's database has a history of its own.
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a_config = fast_config(a_dir.path(), "enabled = false");
    let mut a =
        bulwark().args(["run", "--duration", "60", "--config"]).arg(&a_config).stderr(Stdio::piped()).spawn().unwrap();
    let mut a_stderr = BufReader::new(a.stderr.take().expect("stderr is piped"));
    read_until(&mut a_stderr, "bulwark starting");
    let url_file = a_dir.path().join("data/bulwark.http");
    let started = std::time::Instant::now();
    let a_url = loop {
        let written = std::fs::read_to_string(&url_file).unwrap_or_default();
        if written.ends_with('\n') {
            break written.trim().to_owned();
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "A wrote no URL");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let a_instance: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a_dir.path().join("data/bulwark.instance")).unwrap()).unwrap();
    assert_eq!(a_instance["url"], a_url.as_str());

    let b_config = fast_config(b_dir.path(), "enabled = false");
    let held_port = a_url.trim_start_matches("http://");
    let b_text = std::fs::read_to_string(&b_config)
        .unwrap()
        .replace("listen = \"127.0.0.1:0\"", &format!("listen = {held_port:?}"));
    std::fs::write(&b_config, b_text).unwrap();
    std::fs::create_dir_all(b_dir.path().join("data")).unwrap();
    let b_database = b_dir.path().join("data/bulwark.db");
    Store::open(&b_database).unwrap().ensure_users(&[UserId::new("u1").unwrap()], 0).unwrap();

    let status = run(bulwark().args(["status", "--config"]).arg(&b_config));
    assert!(status.status.success(), "{}", text(&status.stderr));
    let (stdout, stderr) = (text(&status.stdout), text(&status.stderr));
    assert!(stderr.contains(&format!("the server at {a_url} is not this database's")), "{stderr}");
    assert!(stderr.contains("serves another database") && stderr.contains("reading the database instead"), "{stderr}");
    assert!(stdout.starts_with("bulwark status:") && stdout.contains("(server not running)"), "{stdout}");
    assert!(stdout.contains(&b_database.display().to_string()) || stdout.contains("bulwark.db"), "{stdout}");

    let why = run(bulwark().args(["why", "u1", "--json", "--config"]).arg(&b_config));
    assert!(why.status.success(), "{}", text(&why.stderr));
    assert!(text(&why.stderr).contains("is not this database's"), "{}", text(&why.stderr));
    let report = run(bulwark().args(["report", "--since", "1h", "--config"]).arg(&b_config));
    assert!(report.status.success(), "{}", text(&report.stderr));
    assert!(text(&report.stderr).contains("is not this database's"), "{}", text(&report.stderr));
    assert!(!text(&report.stdout).contains(&format!("the server at {a_url}")), "{}", text(&report.stdout));

    // Pointed at A's own config, the same server is trusted.
    let own = run(bulwark().args(["status", "--config"]).arg(&a_config));
    assert!(text(&own.stdout).contains(&a_url), "{}", text(&own.stdout));
    assert!(!text(&own.stderr).contains("not this database's"), "{}", text(&own.stderr));

    let terminated = Command::new("kill").args(["-TERM", &a.id().to_string()]).status().unwrap();
    assert!(terminated.success());
    assert!(a.wait().unwrap().success());
    assert!(!a_dir.path().join("data/bulwark.instance").exists(), "removed at shutdown");
}

#[test]
fn chaos_restarts_one_user_until_quarantine_and_status_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let config = fast_config(dir.path(), "enabled = true\npanic_users = [\"u2\"]\npanic_every_decisions = 3");
    let output = run(bulwark().args(["run", "--duration", "5", "--config"]).arg(&config));
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stderr).contains("CHAOS ENABLED"));

    let lines = journal_lines(dir.path());
    let u2: Vec<&serde_json::Value> = lines.iter().filter(|l| l["user"] == "u2").collect();
    let kinds: Vec<&str> = u2.iter().map(|l| l["event"].as_str().unwrap()).collect();
    let expected = [
        "started",
        "crashed",
        "restarting",
        "restarted",
        "crashed",
        "restarting",
        "restarted",
        "crashed",
        "restarting",
        "restarted",
        "crashed",
        "quarantined",
    ];
    assert_eq!(&kinds[..expected.len()], expected, "{kinds:?}");
    let backoffs: Vec<u64> =
        u2.iter().filter(|l| l["event"] == "restarting").map(|l| l["backoff_ms"].as_u64().unwrap()).collect();
    assert!(backoffs.windows(2).all(|w| w[0] < w[1]), "growing backoff {backoffs:?}");
    assert!(
        u2.iter()
            .filter(|l| l["event"] == "crashed")
            .all(|l| l["reason"].as_str().unwrap().starts_with("panic: chaos"))
    );

    let status = run(bulwark().args(["status", "--config"]).arg(&config));
    let stdout = text(&status.stdout);
    assert!(status.status.success(), "{}", text(&status.stderr));
    let u2_line = stdout.lines().find(|l| l.starts_with("u2 ")).unwrap();
    assert!(u2_line.contains("quarantined"), "{stdout}");
    assert!(
        stdout.contains("quarantined since") && stdout.contains("(max_restarts 3); last: panic: chaos"),
        "{stdout}"
    );

    let json = run(bulwark().args(["status", "--json", "--config"]).arg(&config));
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let users = report["users"].as_array().unwrap();
    for user in users {
        if user["user"] == "u2" {
            assert_eq!(user["state"], "quarantined");
        } else {
            assert!(user["decision_count"].as_u64().unwrap() > 10, "others kept deciding: {user}");
        }
    }
}

#[test]
fn report_catalog_lists_every_failure_point_with_category_and_priority() {
    let output = run(bulwark().args(["report", "--catalog"]));
    assert!(output.status.success(), "{}", text(&output.stderr));
    let listing = text(&output.stdout);
    let rows: Vec<&str> = listing.lines().filter(|line| line.contains('-') && !line.starts_with(' ')).collect();
    assert!(rows.len() >= 30, "{listing}");
    for category in ["signal", "system", "resource", "config", "data", "state"] {
        assert!(rows.iter().any(|row| row.split_whitespace().nth(1) == Some(category)), "{category}: {listing}");
    }
    for priority in ["critical", "high", "medium"] {
        assert!(rows.iter().any(|row| row.split_whitespace().nth(2) == Some(priority)), "{priority}: {listing}");
    }

    let output = run(bulwark().args(["report", "--catalog", "--json"]));
    let catalog: serde_json::Value = serde_json::from_slice(&output.stdout).expect("the catalog is JSON");
    let entries = catalog.as_array().unwrap();
    assert_eq!(entries.len(), rows.len());
    assert!(entries.iter().all(|e| e["id"].is_string() && e["check"].is_string() && e["healing"]["kind"].is_string()));

    let nothing = run(bulwark().arg("report"));
    assert_eq!(nothing.status.code(), Some(2), "a report of nothing is a usage error");
}
