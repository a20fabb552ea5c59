//! Notifications: a repeated-crash run (chaos) against a loopback Telegram receiver gets one
//! message per dedup key within the rate window, and the bot token never appears in bulwark's
//! output, logs or database.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const TOKEN: &str = "987654:TEST-bot-token-never-logged";

fn config(dir: &Path, telegram_url: &str) -> PathBuf {
    let shipped = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/bulwark.toml")).unwrap();
    let text = shipped
        .replace("data_dir = \"data\"", &format!("data_dir = {:?}", dir.join("data").display().to_string()))
        .replace("log_dir = \"logs\"", &format!("log_dir = {:?}", dir.join("logs").display().to_string()))
        .replace("listen = \"127.0.0.1:8377\"", "listen = \"127.0.0.1:0\"")
        .replace("candle_interval_ms = 1000", "candle_interval_ms = 50")
        .replace("backoff_ms_initial = 500", "backoff_ms_initial = 50")
        .replace(
            "[chaos]\nenabled = false            # see config/chaos.toml",
            "[chaos]\nenabled = true\npanic_users = [\"u2\"]\npanic_every_decisions = 3",
        );
    let text = format!(
        "{text}\n[notify]\ntelegram_bot_token_env = \"TEST_TG_TOKEN\"\ntelegram_chat_id_env = \"TEST_TG_CHAT\"\ntelegram_base_url = \"{telegram_url}\"\nrate_window_secs = 120\n"
    );
    let path = dir.join("bulwark.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    files
}

#[tokio::test]
async fn a_crash_loop_sends_one_message_per_key_and_the_token_never_leaks() {
    let telegram = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("/bot{TOKEN}/sendMessage")))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "ok": true })))
        .mount(&telegram)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &telegram.uri());
    let mut command = Command::new(env!("CARGO_BIN_EXE_bulwark"));
    command
        .args(["run", "--duration", "6", "--config"])
        .arg(&config)
        .env("TEST_TG_TOKEN", TOKEN)
        .env("TEST_TG_CHAT", "-1001234");
    let output = tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    let requests = telegram.received_requests().await.unwrap();
    let texts: Vec<String> = requests
        .iter()
        .map(|r| {
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(body["chat_id"], "-1001234");
            body["text"].as_str().unwrap().to_owned()
        })
        .collect();
    // The supervision events' own messages (the Monitor's SYS-PROCESS message quotes them too).
    let crashed: Vec<&String> = texts.iter().filter(|t| t.contains("] trader u2 crashed")).collect();
    let quarantined: Vec<&String> = texts.iter().filter(|t| t.contains("] trader u2 quarantined")).collect();
    assert_eq!(crashed.len(), 1, "one message for u2's four crashes: {texts:#?}");
    assert_eq!(quarantined.len(), 1, "{texts:#?}");
    assert!(crashed[0].contains("panic: chaos"), "{}", crashed[0]);

    // The journal shows the crash loop that was held back to one message.
    let journal = std::fs::read_to_string(dir.path().join("logs/supervisor.jsonl")).unwrap();
    assert!(journal.matches("\"event\":\"crashed\"").count() >= 4, "{journal}");

    for (path, bytes) in files_under(dir.path()) {
        assert!(!bytes.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()), "the token is in {}", path.display());
    }
    for (name, bytes) in [("stdout", &output.stdout), ("stderr", &output.stderr)] {
        assert!(!String::from_utf8_lossy(bytes).contains(TOKEN), "the token is in bulwark's {name}");
    }
}

#[test]
fn a_notify_section_with_a_missing_variable_refuses_to_start_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "http://127.0.0.1:9");
    let output = Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .args(["run", "--duration", "1", "--config"])
        .arg(&config)
        .env_remove("TEST_TG_TOKEN")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("notify.telegram_bot_token_env") && stderr.contains("TEST_TG_TOKEN"), "{stderr}");
}
