//! Guard locks: a kill switch (every new entry of a user) or a symbol probation (new entries of a
//! user on one symbol), each a database row with an expiry so that it survives restarts. A lock
//! holds while `now < until_ms`; nothing has to happen for it to end. The Healer marks rows found
//! past their expiry as cleared and reports how late that was (`cleared_at_ms - until_ms`).

use serde::Serialize;

use crate::domain::{Symbol, UserId};

/// One lock as stored. Written by a trader when its guard trips (through persistence); read by the
/// trader at start-up and on every entry, by the Monitor, `bulwark why` and the Healer.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct GuardLock {
    /// Row id (0 before it is stored).
    pub id: i64,
    pub user: UserId,
    /// The failure point that set it (`SIG-KILL-SWITCH`, `SIG-SYMBOL-PROBATION`).
    pub failure_point: String,
    /// `None`: every symbol of the user.
    pub symbol: Option<Symbol>,
    pub reason: String,
    /// The values that decided it (JSON).
    pub values: serde_json::Value,
    pub set_at_ms: i64,
    pub until_ms: i64,
}

impl GuardLock {
    /// Whether it blocks an entry at `now_ms`.
    pub fn holds_at(&self, now_ms: i64) -> bool {
        now_ms < self.until_ms
    }

    /// Whether it applies to entries on `symbol`.
    pub fn covers(&self, symbol: &Symbol) -> bool {
        self.symbol.as_ref().is_none_or(|locked| locked == symbol)
    }

    /// How long past its expiry it still is, at `now_ms` (0 while it holds).
    pub fn overdue_ms(&self, now_ms: i64) -> i64 {
        (now_ms - self.until_ms).max(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_holds_until_its_expiry_and_covers_its_symbol_only() {
        let lock = GuardLock {
            id: 1,
            user: UserId::new("u1").unwrap(),
            failure_point: "SIG-SYMBOL-PROBATION".into(),
            symbol: Some(Symbol::new("BTCUSDT").unwrap()),
            reason: "3 losses in a row".into(),
            values: serde_json::json!({}),
            set_at_ms: 0,
            until_ms: 1_000,
        };
        assert!(lock.holds_at(999));
        assert!(!lock.holds_at(1_000));
        assert!(lock.covers(&Symbol::new("BTCUSDT").unwrap()));
        assert!(!lock.covers(&Symbol::new("ETHUSDT").unwrap()));
        assert_eq!(lock.overdue_ms(1_500), 500);
        let kill_switch = GuardLock { symbol: None, ..lock };
        assert!(kill_switch.covers(&Symbol::new("ETHUSDT").unwrap()));
    }
}
