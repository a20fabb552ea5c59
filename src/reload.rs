//! Live config reload (SIGHUP, `systemctl reload bulwark`): what a new, valid config file changes
//! in the running tree, decided here as a pure comparison and carried out by the server.
//!
//! Applied live: each existing user's strategies (symbols, timeframes, parameters, sizes), the
//! `[risk]` limits and the `[guards]` settings. A user whose trading changes is reconfigured: its
//! trader stops in order and starts again on the new settings (reloading its state and
//! reconciling first, as after any restart); users whose trading is unchanged are not touched.
//! Everything else — users added or removed, the server's directories, the exchange, supervision,
//! monitor, healer, intelligence, notifications, breakers, retries, reconciliation, chaos — is
//! named in the log as taking effect at the next restart. An invalid file changes nothing: the
//! server keeps the config it runs on, and the Monitor reports CFG-INVALID.

use std::collections::BTreeSet;
use std::path::Path;

use crate::config::{Config, ConfigErrors, UserConfig};
use crate::domain::UserId;

/// What a reload does.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReloadPlan {
    /// Users reconfigured live, with what changed for each.
    pub reconfigure: Vec<(UserId, String)>,
    /// Changes that take effect only at the next restart.
    pub needs_restart: Vec<String>,
}

impl ReloadPlan {
    pub fn is_empty(&self) -> bool {
        self.reconfigure.is_empty() && self.needs_restart.is_empty()
    }
}

/// Reads the file a reload applies and validates it exactly as at start-up (`config::load`: every
/// number in range, every problem named by path and value), then plans the change. An error
/// changes nothing: the server keeps running on `running`.
pub fn prepare(running: &Config, path: &Path) -> Result<(Config, ReloadPlan), ConfigErrors> {
    let new = crate::config::load(Some(path))?;
    let plan = plan(running, &new);
    Ok((new, plan))
}

/// Compares the running config with a new one.
pub fn plan(running: &Config, new: &Config) -> ReloadPlan {
    let mut plan = ReloadPlan::default();
    let differs = |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
    let mut shared = Vec::new();
    if running.risk != new.risk {
        shared.push("[risk]");
    }
    if differs(&running.guards, &new.guards) {
        shared.push("[guards]");
    }
    for user in &new.users {
        let Some(before) = running.users.iter().find(|u| u.id == user.id) else { continue };
        let mut what: Vec<String> = shared.iter().map(|s| s.to_string()).collect();
        if strategies_differ(before, user) {
            what.insert(0, "strategies".to_owned());
        }
        if !what.is_empty() {
            plan.reconfigure.push((user.id.clone(), format!("config reloaded: {} changed", what.join(", "))));
        }
    }
    let ids = |config: &Config| config.users.iter().map(|u| u.id.clone()).collect::<BTreeSet<_>>();
    let (before, after) = (ids(running), ids(new));
    let added: Vec<String> = after.difference(&before).map(ToString::to_string).collect();
    let removed: Vec<String> = before.difference(&after).map(ToString::to_string).collect();
    if !added.is_empty() {
        plan.needs_restart.push(format!("users added: {}", added.join(", ")));
    }
    if !removed.is_empty() {
        plan.needs_restart.push(format!("users removed: {}", removed.join(", ")));
    }
    for user in &new.users {
        if let Some(before) = running.users.iter().find(|u| u.id == user.id)
            && (before.api_key_env != user.api_key_env || before.api_secret_env != user.api_secret_env)
        {
            plan.needs_restart.push(format!("{}'s API key variables", user.id));
        }
    }
    let sections: [(&str, bool); 11] = [
        ("[server]", differs(&running.server, &new.server)),
        ("[supervisor]", differs(&running.supervisor, &new.supervisor)),
        ("[exchange]", differs(&running.exchange, &new.exchange)),
        ("[monitor]", differs(&running.monitor, &new.monitor)),
        ("[healer]", differs(&running.healer, &new.healer)),
        ("[intelligence]", differs(&running.intelligence, &new.intelligence)),
        ("[notify]", differs(&running.notify, &new.notify)),
        ("[breaker]", differs(&running.breaker, &new.breaker)),
        ("[retry]", differs(&running.retry, &new.retry)),
        (
            "[reconcile]",
            running.reconcile_interval != new.reconcile_interval
                || running.reconcile_weight_per_minute != new.reconcile_weight_per_minute,
        ),
        ("[chaos]", differs(&running.chaos, &new.chaos)),
    ];
    plan.needs_restart.extend(sections.into_iter().filter(|(_, changed)| *changed).map(|(name, _)| name.to_owned()));
    plan
}

/// The config the server runs on once the users in `delivered` took their new settings: their
/// new strategies (and, if every user to reconfigure took them, the new limits and guards);
/// everything else as it was, so a later reload reports (or retries) the rest.
pub fn applied(running: &Config, new: &Config, delivered: &[UserId]) -> Config {
    let mut applied = running.clone();
    let reached_everyone = plan(running, new).reconfigure.iter().all(|(user, _)| delivered.contains(user));
    if reached_everyone {
        applied.risk = new.risk;
        applied.guards = new.guards.clone();
    }
    for user in &mut applied.users {
        if delivered.contains(&user.id)
            && let Some(updated) = new.users.iter().find(|u| u.id == user.id)
        {
            user.strategies = updated.strategies.clone();
        }
    }
    applied
}

fn strategies_differ(before: &UserConfig, after: &UserConfig) -> bool {
    format!("{:?}", before.strategies) != format!("{:?}", after.strategies)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[server]
data_dir = "data"
[[users]]
id = "u1"
[[users.strategies]]
symbol = "XRPUSDT"
timeframe = "5m"
strategy = "ema_crossover"
params = { fast = 9, slow = 21 }
position_size_usdt = 200
[[users]]
id = "u2"
[[users.strategies]]
symbol = "ETHUSDT"
timeframe = "5m"
strategy = "ema_crossover"
params = { fast = 9, slow = 21 }
position_size_usdt = 200
"#;

    fn parse(text: &str) -> Config {
        crate::config::parse(text, "test").unwrap_or_else(|errors| panic!("{errors}"))
    }

    #[test]
    fn a_reloaded_file_with_an_out_of_range_number_is_refused_naming_path_and_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bulwark.toml");
        std::fs::write(&path, BASE.replacen("position_size_usdt = 200", "position_size_usdt = 1e30", 1)).unwrap();
        let errors = prepare(&parse(BASE), &path).unwrap_err();
        let text = errors.to_string();
        assert!(
            text.contains("users[0].strategies[0].position_size_usdt: must be from 0.01 to 1e12, got 1e30"),
            "{text}"
        );
        // A valid file is read and planned.
        std::fs::write(&path, BASE.replacen("position_size_usdt = 200", "position_size_usdt = 300", 1)).unwrap();
        let (_, plan) = prepare(&parse(BASE), &path).unwrap_or_else(|errors| panic!("{errors}"));
        assert_eq!(plan.reconfigure.len(), 1, "{plan:?}");
    }

    #[test]
    fn the_same_file_changes_nothing() {
        assert!(plan(&parse(BASE), &parse(BASE)).is_empty());
    }

    #[test]
    fn a_changed_strategy_reconfigures_only_its_user() {
        let new = BASE.replacen("position_size_usdt = 200", "position_size_usdt = 300", 1);
        let plan = plan(&parse(BASE), &parse(&new));
        assert_eq!(plan.reconfigure, vec![(UserId::new("u1").unwrap(), "config reloaded: strategies changed".into())]);
        assert!(plan.needs_restart.is_empty(), "{plan:?}");
    }

    #[test]
    fn new_risk_limits_reconfigure_every_user() {
        let new = format!("[risk]\nmax_open_positions = 1\n{BASE}");
        let plan = plan(&parse(BASE), &parse(&new));
        let users: Vec<&str> = plan.reconfigure.iter().map(|(u, _)| u.as_str()).collect();
        assert_eq!(users, ["u1", "u2"]);
        assert!(plan.reconfigure[0].1.contains("[risk]"), "{plan:?}");
        // Only u1 took it (u2's supervisor did not answer): the next reload tries u2 again.
        let (running, new) = (parse(BASE), parse(&new));
        let partly = applied(&running, &new, &[UserId::new("u1").unwrap()]);
        assert_eq!(partly.risk, running.risk, "not every user runs on the new limits yet");
        let again: Vec<String> =
            super::plan(&partly, &new).reconfigure.into_iter().map(|(u, _)| u.to_string()).collect();
        assert_eq!(again, ["u1", "u2"]);
        let all = applied(&running, &new, &[UserId::new("u1").unwrap(), UserId::new("u2").unwrap()]);
        assert!(super::plan(&all, &new).is_empty());
    }

    #[test]
    fn what_cannot_change_live_is_named_and_not_applied() {
        let new = BASE
            .replace("data_dir = \"data\"", "data_dir = \"elsewhere\"")
            .replace("[[users]]\nid = \"u2\"", "[monitor]\ninterval_secs = 5\n[[users]]\nid = \"u3\"");
        let (running, new) = (parse(BASE), parse(&new));
        let plan = plan(&running, &new);
        assert!(plan.reconfigure.is_empty(), "{plan:?}");
        assert_eq!(plan.needs_restart, ["users added: u3", "users removed: u2", "[server]", "[monitor]"]);
        // After applying, the running config still has what was not applied: it is reported again.
        let applied = applied(&running, &new, &[]);
        assert_eq!(applied.server, running.server);
        assert_eq!(super::plan(&applied, &new).needs_restart.len(), 4);
    }
}
