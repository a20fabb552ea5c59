//! Guard locks: a kill switch (every new entry of a user) or a symbol probation (new entries of a
//! user on one symbol), each a database row with an expiry so that it survives restarts. A lock
//! holds while `now < until_ms`; nothing has to happen for it to end. The Healer marks rows found
//! past their expiry as cleared and reports how late that was (`cleared_at_ms - until_ms`).
//!
//! A lock has two clocks. Its duration is venue time (a 6 h probation is 72 five-minute candles on
//! any venue), and the trader judges it by the close of the candle it decides on
//! (`set_at_venue_ms`, `until_venue_ms`), so that whether an entry is blocked depends on the
//! market, never on how long a request took. `set_at_ms` / `until_ms` are the same moments on the
//! wall clock (the venue duration at the venue's pace): what operators, the Monitor, the Healer and
//! `verify`'s clearing times read. Against Binance the two agree.

use serde::Serialize;

use crate::domain::{Symbol, UserId};

/// One lock as stored. Written by a trader when its guard trips (through persistence); read by the
/// trader at start-up and on every entry, by the Monitor, `bulwark why` and the Healer.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(from = "SerializedGuardLock")]
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
    /// Wall clock: when it was set, and when the venue's clock reaches `until_venue_ms` at the pace
    /// it ran at then.
    pub set_at_ms: i64,
    pub until_ms: i64,
    /// Venue clock: the close of the candle whose decision set it, and that plus its duration.
    pub set_at_venue_ms: i64,
    pub until_venue_ms: i64,
}

/// A lock as an outbox written before locks had a venue clock holds it: its venue window is its
/// wall window.
#[derive(serde::Deserialize)]
struct SerializedGuardLock {
    id: i64,
    user: UserId,
    failure_point: String,
    symbol: Option<Symbol>,
    reason: String,
    values: serde_json::Value,
    set_at_ms: i64,
    until_ms: i64,
    set_at_venue_ms: Option<i64>,
    until_venue_ms: Option<i64>,
}

impl From<SerializedGuardLock> for GuardLock {
    fn from(lock: SerializedGuardLock) -> Self {
        Self {
            id: lock.id,
            user: lock.user,
            failure_point: lock.failure_point,
            symbol: lock.symbol,
            reason: lock.reason,
            values: lock.values,
            set_at_ms: lock.set_at_ms,
            until_ms: lock.until_ms,
            set_at_venue_ms: lock.set_at_venue_ms.unwrap_or(lock.set_at_ms),
            until_venue_ms: lock.until_venue_ms.unwrap_or(lock.until_ms),
        }
    }
}

impl GuardLock {
    /// Whether it still holds at wall time `now_ms` (what the Monitor, the Healer and status judge).
    pub fn holds_at(&self, now_ms: i64) -> bool {
        now_ms < self.until_ms
    }

    /// Whether it blocks a decision on the candle closing at venue time `candle_close_ms` (what the
    /// trader judges).
    pub fn holds_at_venue(&self, candle_close_ms: i64) -> bool {
        candle_close_ms < self.until_venue_ms
    }

    /// Whether its venue clock ran apart from the wall clock (an accelerated venue): `why` then
    /// prints both.
    pub fn venue_differs(&self) -> bool {
        (self.until_venue_ms - self.until_ms).abs() >= 60_000
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
            set_at_venue_ms: 0,
            until_venue_ms: 300_000,
        };
        assert!(lock.holds_at(999));
        assert!(!lock.holds_at(1_000));
        assert!(lock.holds_at_venue(299_999));
        assert!(!lock.holds_at_venue(300_000));
        assert!(lock.venue_differs());
        assert!(lock.covers(&Symbol::new("BTCUSDT").unwrap()));
        assert!(!lock.covers(&Symbol::new("ETHUSDT").unwrap()));
        assert_eq!(lock.overdue_ms(1_500), 500);
        let kill_switch = GuardLock { symbol: None, ..lock };
        assert!(kill_switch.covers(&Symbol::new("ETHUSDT").unwrap()));
    }

    #[test]
    fn a_lock_serialized_without_a_venue_window_reads_its_wall_window_as_one() {
        let old = r#"{"id":3,"user":"u1","failure_point":"SIG-KILL-SWITCH","symbol":null,"reason":"r","values":{},"set_at_ms":10,"until_ms":20}"#;
        let lock: GuardLock = serde_json::from_str(old).unwrap();
        assert_eq!((lock.set_at_venue_ms, lock.until_venue_ms), (10, 20));
        let again: GuardLock = serde_json::from_str(&serde_json::to_string(&lock).unwrap()).unwrap();
        assert_eq!(again, lock);
    }
}
