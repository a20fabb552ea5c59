//! Refused credentials (a revoked or wrong API key) halt that user with the reason: no crash loop,
//! no quarantine, no restart, and the other users keep trading.

mod common;

use std::sync::Arc;

use bulwark::clock::ManualClock;
use bulwark::domain::UserId;
use bulwark::supervision::journal::{ActorKind, ChildState, EventKind, TreeEvent};
use common::{ScriptedExchange, Tree, config_in, start_paper, three_users};

fn user(name: &str) -> UserId {
    UserId::new(name).unwrap()
}

fn start(dir: &tempfile::TempDir, refused_from_the_start: &[&str]) -> (Tree, Arc<ScriptedExchange>) {
    let config = config_in(dir.path(), &three_users());
    let clock = ManualClock::new(common::START_MS);
    let paper = start_paper(&config, clock.clone());
    let scripted = Arc::new(ScriptedExchange::new(paper.clone(), Vec::new()));
    for name in refused_from_the_start {
        scripted.revoke(&user(name));
    }
    (Tree::start_with_exchange(config, clock, paper, scripted.clone()), scripted)
}

fn is_halt_of(event: &bulwark::supervision::journal::SupervisionEvent, name: &str) -> bool {
    event.actor == ActorKind::Trader && event.user == Some(user(name)) && event.event == EventKind::Halted
}

#[actix_rt::test]
async fn a_key_revoked_while_decisions_read_the_book_is_found_by_the_periodic_reconciliation() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path(), &format!("{}\n[reconcile]\ninterval_secs = 1\n", three_users()));
    let clock = ManualClock::new(common::START_MS);
    let paper = start_paper(&config, clock.clone());
    let scripted = Arc::new(ScriptedExchange::new(paper.clone(), Vec::new()));
    let mut tree = Tree::start_with_exchange(config, clock, paper, scripted.clone());
    tree.wait_ready(&["u1", "u2", "u3"]).await;
    tree.step_and_settle(&["u1", "u2", "u3"]).await;
    // Revoked while u2's decisions need no request: the reconciliation pass (every second here)
    // meets the refusal and records it.
    scripted.revoke(&user("u2"));
    let directory = tree.server.directory.clone();
    let recorded = async {
        loop {
            if let Some(refusal) = directory.credentials_refusal(&user("u2")) {
                return refusal;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    let refusal = tokio::time::timeout(std::time::Duration::from_secs(30), recorded)
        .await
        .expect("the periodic reconciliation reaches u2 within 30 s");
    assert!(refusal.contains("-2015"), "{refusal}");
    // u2's next decision halts it, whatever its book says; the others trade on.
    let step = tree.step_and_settle(&["u1", "u2", "u3"]).await;
    assert!(step.crashes.is_empty(), "{:?}", step.crashes);
    let halted = tree.wait_supervision("u2 to be halted", |e| is_halt_of(e, "u2")).await;
    assert!(halted.reason.unwrap_or_default().contains("-2015"));
    assert_eq!(directory.credentials_refusal(&user("u1")), None);
    tree.shutdown().await;
}

#[actix_rt::test]
async fn a_key_revoked_while_trading_halts_that_user_only() {
    let dir = tempfile::tempdir().unwrap();
    let (mut tree, scripted) = start(&dir, &[]);
    // Started (reconciled) with a good key; then the key is revoked. A decision on a verified
    // account book asks the exchange nothing, so the refusal shows at u2's next request: here its
    // first sync, which reads the account before the book has its first snapshot.
    tree.wait_ready(&["u1", "u2", "u3"]).await;
    scripted.revoke(&user("u2"));
    let second = tree.step_and_settle(&["u1", "u2", "u3"]).await;
    assert!(second.crashes.is_empty(), "{:?}", second.crashes);
    let u2 = second.iterations.iter().find(|i| i.user == "u2").expect("u2 recorded its iteration");
    let skipped = u2.follow_ups.last().unwrap_or(&u2.decision);
    assert_eq!(skipped.outcome, "skipped", "{skipped:?}");
    assert!(skipped.reason.contains("halted") && skipped.reason.contains("-2015"), "{}", skipped.reason);
    let halted = tree.wait_supervision("u2 to be halted", |e| is_halt_of(e, "u2")).await;
    let reason = halted.reason.clone().unwrap_or_default();
    assert!(reason.contains("no usable API credentials") && reason.contains("-2015"), "{reason}");

    // The others keep trading; u2 decides nothing more and is never restarted.
    let decisions_before = tree.store().user_statuses().unwrap();
    let u2_decisions = decisions_before.iter().find(|s| s.user == "u2").unwrap().decision_count;
    for _ in 0..3 {
        let step = tree.step_and_settle(&["u1", "u3"]).await;
        assert!(step.crashes.is_empty(), "{:?}", step.crashes);
        assert_eq!(step.iterations.len(), 2);
    }
    let statuses = tree.store().user_statuses().unwrap();
    let u2_status = statuses.iter().find(|s| s.user == "u2").unwrap();
    assert_eq!(u2_status.state, "halted");
    assert_eq!(u2_status.decision_count, u2_decisions, "a halted user decides nothing");
    assert_eq!(u2_status.restart_count, 0);
    assert!(u2_status.reason.as_deref().unwrap_or("").contains("-2015"), "{u2_status:?}");
    for other in ["u1", "u3"] {
        assert_eq!(statuses.iter().find(|s| s.user == other).unwrap().state, "running");
    }
    tree.shutdown().await;

    // After shutdown the status still says why u2 stopped.
    let after = tree_status(&dir);
    assert!(after.contains("halted") && after.contains("-2015"), "{after}");
}

#[actix_rt::test]
async fn credentials_refused_at_start_up_halt_instead_of_crash_looping() {
    let dir = tempfile::tempdir().unwrap();
    let (mut tree, _scripted) = start(&dir, &["u3"]);
    // Wait for u3's halt and for u1 and u2 to be ready, in whatever order they come.
    let (mut halt_reason, mut ready) = (None, Vec::new());
    while halt_reason.is_none() || ready.len() < 2 {
        match tree.next_event("u3 halted and u1, u2 ready").await {
            TreeEvent::Supervision(event) if event.user == Some(user("u3")) => {
                assert!(
                    !matches!(event.event, EventKind::Crashed | EventKind::Quarantined),
                    "refused credentials must not count as a crash: {event:?}"
                );
                if is_halt_of(&event, "u3") {
                    halt_reason = event.reason;
                }
            }
            TreeEvent::StateChanged {
                actor: ActorKind::Trader, user: Some(who), state: ChildState::Running, ..
            } => {
                assert_ne!(who.as_str(), "u3", "u3 must not start trading");
                ready.push(who);
            }
            _ => {}
        }
    }
    let reason = halt_reason.unwrap_or_default();
    assert!(reason.contains("reconciliation") && reason.contains("-2015"), "{reason}");
    let step = tree.step_and_settle(&["u1", "u2"]).await;
    assert!(step.crashes.is_empty(), "{:?}", step.crashes);
    let statuses = tree.store().user_statuses().unwrap();
    let u3 = statuses.iter().find(|s| s.user == "u3").unwrap();
    assert_eq!((u3.state.as_str(), u3.restart_count, u3.decision_count), ("halted", 0, 0), "{u3:?}");
    tree.shutdown().await;
}

fn tree_status(dir: &tempfile::TempDir) -> String {
    let config = config_in(dir.path(), &three_users());
    let report = bulwark::status::collect(&config).expect("status reads the database");
    bulwark::status::render_text(&report)
}
