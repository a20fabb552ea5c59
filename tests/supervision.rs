//! The supervision tree with real actors: a panicking trader is restarted with growing backoff
//! and then quarantined, while every other user decides exactly as it would have without the
//! chaos; a shared actor that keeps failing escalates.

mod common;

use std::sync::Arc;

use bulwark::clock::ManualClock;
use bulwark::domain::UserId;
use bulwark::supervision::journal::{ActorKind, EventKind};
use common::{Iteration, ScriptedExchange, Tree, config_in, start_paper, three_users};

const SUPERVISOR: &str = r#"
[supervisor]
max_restarts = 3
within_secs = 3600
backoff_ms_initial = 2
backoff_ms_max = 1000
"#;

/// Decisions as comparable text: candle, outcome, reason, and what became of any order. The
/// exchange's own order numbers are left out: they count every user's orders in arrival order,
/// which concurrent users legitimately interleave differently from run to run.
fn transcript(iterations: &[Iteration]) -> Vec<String> {
    let without_exchange_ids = |text: &str| {
        text.split(' ').collect::<Vec<_>>().windows(3).fold(text.to_owned(), |acc, w| {
            if w[0] == "exchange" && w[1] == "order" {
                acc.replacen(&format!("exchange order {}", w[2]), "exchange order #", 1)
            } else {
                acc
            }
        })
    };
    iterations
        .iter()
        .map(|i| {
            let follow: Vec<String> =
                i.follow_ups.iter().map(|f| format!("{}: {}", f.outcome, without_exchange_ids(&f.reason))).collect();
            format!(
                "{} @{:?} {}: {} | {}",
                i.user,
                i.decision.candle_close_ms,
                i.decision.outcome,
                i.decision.reason,
                follow.join("; ")
            )
        })
        .collect()
}

/// Runs `steps` candles; returns every user's iterations and the chaos user's crash count.
async fn run_steps(
    tree: &mut Tree,
    steps: usize,
    chaos_user: Option<&str>,
) -> (Vec<Iteration>, Vec<u64>, Option<String>) {
    let mut all = Vec::new();
    let mut backoffs = Vec::new();
    let mut quarantine_reason = None;
    let mut active: Vec<&str> = vec!["u1", "u2", "u3"];
    for _ in 0..steps {
        let outcome = tree.step_and_settle(&active).await;
        all.extend(outcome.iterations);
        for crash in outcome.crashes {
            let user = crash.user.clone().unwrap();
            assert_eq!(Some(user.as_str()), chaos_user, "only the chaos user may crash: {crash:?}");
            assert!(
                crash.reason.as_deref().unwrap_or("").starts_with("panic: chaos: injected panic at decision 3"),
                "{crash:?}"
            );
            let next = tree
                .wait_supervision("restarting or quarantined", |e| {
                    e.user.as_ref() == Some(&user) && matches!(e.event, EventKind::Restarting | EventKind::Quarantined)
                })
                .await;
            if next.event == EventKind::Quarantined {
                quarantine_reason = next.reason.clone();
                active.retain(|u| *u != user.as_str());
            } else {
                backoffs.push(next.backoff_ms.expect("restarting carries its backoff"));
                tree.wait_supervision("restarted", |e| {
                    e.user.as_ref() == Some(&user) && e.event == EventKind::Restarted
                })
                .await;
                tree.wait_ready(&[user.as_str()]).await;
            }
        }
    }
    (all, backoffs, quarantine_reason)
}

#[actix_rt::test]
async fn a_panicking_trader_is_restarted_with_growing_backoff_then_quarantined_while_others_decide_unchanged() {
    const STEPS: usize = 16;

    // Baseline: no chaos.
    let baseline_dir = tempfile::tempdir().unwrap();
    let config = config_in(baseline_dir.path(), &format!("{SUPERVISOR}\n{}", three_users()));
    let mut tree = Tree::start(config, ManualClock::new(common::START_MS));
    tree.wait_ready(&["u1", "u2", "u3"]).await;
    let (baseline, _, _) = run_steps(&mut tree, STEPS, None).await;
    tree.shutdown().await;

    // The same market and users, with u2's trader panicking on every third decision.
    let chaos_dir = tempfile::tempdir().unwrap();
    let chaos = "[chaos]\nenabled = true\npanic_users = [\"u2\"]\npanic_every_decisions = 3\n";
    let config = config_in(chaos_dir.path(), &format!("{SUPERVISOR}\n{chaos}\n{}", three_users()));
    let mut tree = Tree::start(config, ManualClock::new(common::START_MS));
    tree.wait_ready(&["u1", "u2", "u3"]).await;
    let (with_chaos, backoffs, quarantine_reason) = run_steps(&mut tree, STEPS, Some("u2")).await;

    // u2: three restarts with growing backoff, then quarantine on the fourth crash.
    assert_eq!(backoffs.len(), 3, "{backoffs:?}");
    assert!(backoffs.windows(2).all(|w| w[0] < w[1]), "backoff grows: {backoffs:?}");
    let reason = quarantine_reason.expect("u2 was quarantined");
    assert!(reason.starts_with("4 failures within 3600 s (max_restarts 3); last: panic: chaos"), "{reason}");

    // Everyone else decided on every candle, exactly as without the chaos.
    for user in ["u1", "u3"] {
        let only = |iterations: &[Iteration]| {
            transcript(&iterations.iter().filter(|i| i.user == user).cloned().collect::<Vec<_>>())
        };
        let (expected, actual) = (only(&baseline), only(&with_chaos));
        assert_eq!(actual.len(), STEPS, "{user} decided on every candle");
        assert_eq!(actual, expected, "{user}'s decisions are unchanged by u2's chaos");
    }
    // u2 made two decisions per incarnation and none once quarantined.
    let u2_decisions = with_chaos.iter().filter(|i| i.user == "u2" && i.decision.counts_as_decision).count();
    assert_eq!(u2_decisions, 8, "2 decisions in each of 4 incarnations");

    // The database says why u2 is not trading.
    let statuses = tree.store().user_statuses().unwrap();
    let u2 = statuses.iter().find(|s| s.user == "u2").unwrap();
    assert_eq!(u2.state, "quarantined");
    assert_eq!((u2.incarnation, u2.restart_count), (4, 3));
    assert!(u2.reason.as_deref().unwrap().contains("max_restarts 3"), "{:?}", u2.reason);
    let events: Vec<String> = tree
        .store()
        .supervisor_events(Some(&UserId::new("u2").unwrap()))
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .collect();
    let expected: Vec<&str> = ["started"]
        .into_iter()
        .chain(["crashed", "restarting", "restarted"].repeat(3))
        .chain(["crashed", "quarantined"])
        .collect();
    assert_eq!(events, expected);
    // Every shared actor's start is in the database too (persistence starts first, so none is
    // lost: the notifier's was).
    let started: std::collections::BTreeSet<String> = tree
        .store()
        .supervisor_events(None)
        .unwrap()
        .into_iter()
        .filter(|e| e.event == "started" && e.user.is_none())
        .map(|e| e.actor)
        .collect();
    for actor in ["persistence", "notifier", "market_data", "order_router", "intelligence", "monitor", "healer"] {
        assert!(started.contains(actor), "{actor} started is not in the database: {started:?}");
    }
    tree.shutdown().await;

    // The supervisor log has the same story, line by line.
    let log = std::fs::read_to_string(chaos_dir.path().join("logs/supervisor.jsonl")).unwrap();
    let u2_lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|l| l["user"] == "u2")
        .collect();
    let kinds: Vec<&str> = u2_lines.iter().map(|l| l["event"].as_str().unwrap()).collect();
    assert_eq!(&kinds[..expected.len()], expected.as_slice());
    let logged_backoffs: Vec<u64> =
        u2_lines.iter().filter(|l| l["event"] == "restarting").map(|l| l["backoff_ms"].as_u64().unwrap()).collect();
    assert_eq!(logged_backoffs, backoffs);
    assert!(u2_lines.iter().all(|l| l["actor"] == "trader" && l["ts"].as_str().unwrap().ends_with('Z')));
    assert!(log.lines().any(|l| l.contains("\"event\":\"tree\"")), "a final tree snapshot");
}

#[actix_rt::test]
async fn a_shared_actor_that_keeps_failing_escalates() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(
        dir.path(),
        &format!(
            "[supervisor]\nshared_max_restarts = 1\nbackoff_ms_initial = 1\nbackoff_ms_max = 5\n{}",
            three_users()
        ),
    );
    let clock = ManualClock::new(common::START_MS);
    let paper = start_paper(&config, clock.clone());
    let exchange = ScriptedExchange { panic_on_klines: true, ..ScriptedExchange::new(paper.clone(), Vec::new()) };
    let mut tree = Tree::start_with_exchange(config, clock, paper, Arc::new(exchange));
    tree.wait_ready(&["u1", "u2", "u3"]).await;

    // First failure: restarted (and the restarted incarnation still serves every subscriber).
    tree.clock.advance_ms(tree.candle_interval_ms);
    let market_data = tree.server.directory.market_data().unwrap();
    let _ = market_data.send(bulwark::actors::market_data::Poll).await;
    let crashed = tree
        .wait_supervision("market data crash", |e| e.actor == ActorKind::MarketData && e.event == EventKind::Crashed)
        .await;
    assert_eq!(crashed.reason.as_deref(), Some("panic: klines exploded"));
    tree.wait_supervision("market data restart", |e| {
        e.actor == ActorKind::MarketData && e.event == EventKind::Restarted
    })
    .await;

    // Second failure within the window: beyond shared_max_restarts, the process must go.
    let market_data = tree.server.directory.market_data().unwrap();
    let _ = market_data.send(bulwark::actors::market_data::Poll).await;
    let escalated = tree.wait_supervision("escalation", |e| e.event == EventKind::Escalated).await;
    assert_eq!(escalated.actor, ActorKind::MarketData);
    let reason = (&mut tree.server.escalation).await.expect("the process is told to exit");
    assert!(reason.starts_with("market_data escalated: 2 failures within 60 s (shared_max_restarts 1)"), "{reason}");
    // Persistence and the traders were untouched until then.
    assert!(tree.server.directory.persistence().is_ok());
    tree.shutdown().await;
}
