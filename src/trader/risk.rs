//! The risk gate. An order intent reaches the order router only as a [`RiskApproved`], and only
//! this module can make one: entries pass the checks below (and must show a [`GuardsPassed`] from
//! the signal guards), exits always pass (a risk block must never stop a position from being
//! closed).

use rust_decimal::Decimal;
use serde::Serialize;

use crate::domain::{IntentPurpose, OrderIntent};
use crate::failure_points::catalog::{FailurePointId, RES_POSITION_LIMIT};
use crate::guards::GuardsPassed;

/// Proof that an intent passed the risk gate. The field is private: no other module can build one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RiskApproved<T>(T);

impl<T> RiskApproved<T> {
    pub fn get(&self) -> &T {
        &self.0
    }

    pub fn into_inner(self) -> T {
        self.0
    }
}

/// The `[risk]` limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RiskLimits {
    /// Positions one user may hold at once, across symbols.
    pub max_open_positions: u32,
    /// Largest position notional per symbol, in USDT.
    pub max_position_notional_usdt: Decimal,
}

/// Why an entry was refused: the failure point that owns the check, and the values that decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RiskBlock {
    pub failure_point: FailurePointId,
    pub reason: String,
}

/// What the gate needs to know about the account beyond the intent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryContext {
    /// Open positions on other symbols.
    pub open_positions_elsewhere: u32,
    /// Notional already held on this symbol (USDT).
    pub held_notional_usdt: Decimal,
    /// Notional the intent adds (USDT).
    pub added_notional_usdt: Decimal,
}

/// Checks an entry against the limits.
pub fn check_entry(
    intent: OrderIntent,
    _guards: GuardsPassed,
    context: EntryContext,
    limits: RiskLimits,
) -> Result<RiskApproved<OrderIntent>, RiskBlock> {
    debug_assert_eq!(intent.purpose, IntentPurpose::Entry, "Invariant: exits go through approve_exit");
    let held_here = !context.held_notional_usdt.is_zero();
    let open_after = context.open_positions_elsewhere + 1;
    if !held_here && open_after > limits.max_open_positions {
        return Err(RiskBlock {
            failure_point: RES_POSITION_LIMIT,
            reason: format!(
                "{} positions already open on other symbols; max_open_positions is {}",
                context.open_positions_elsewhere, limits.max_open_positions
            ),
        });
    }
    let notional_after = context.held_notional_usdt + context.added_notional_usdt;
    if notional_after > limits.max_position_notional_usdt {
        return Err(RiskBlock {
            failure_point: RES_POSITION_LIMIT,
            reason: format!(
                "position would be {} USDT on {}; max_position_notional_usdt is {}",
                notional_after.round_dp(2),
                intent.symbol,
                limits.max_position_notional_usdt
            ),
        });
    }
    Ok(RiskApproved(intent))
}

/// Exits always pass.
pub fn approve_exit(intent: OrderIntent) -> RiskApproved<OrderIntent> {
    debug_assert!(
        intent.reduce_only && intent.purpose == IntentPurpose::Exit,
        "Invariant: only reduce-only exits bypass the checks"
    );
    RiskApproved(intent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ClientOrderId, OrderType, Quantity, Side, Symbol, UserId};

    fn intent(purpose: IntentPurpose) -> OrderIntent {
        let user = UserId::new("u1").unwrap();
        OrderIntent {
            client_order_id: ClientOrderId::for_intent(&user, 1),
            user,
            intent_seq: 1,
            symbol: Symbol::new("XRPUSDT").unwrap(),
            side: Side::Buy,
            order_type: OrderType::Market,
            quantity: Quantity::new(Decimal::from(100)).unwrap(),
            reduce_only: purpose == IntentPurpose::Exit,
            purpose,
            strategy: "ema_crossover".into(),
            decision_candle_close_ms: 0,
            created_at_ms: 0,
        }
    }

    fn limits() -> RiskLimits {
        RiskLimits { max_open_positions: 2, max_position_notional_usdt: Decimal::from(1_000) }
    }

    fn context(elsewhere: u32, held: i64, added: i64) -> EntryContext {
        EntryContext {
            open_positions_elsewhere: elsewhere,
            held_notional_usdt: Decimal::from(held),
            added_notional_usdt: Decimal::from(added),
        }
    }

    /// The proof the risk gate takes, from the lock check with no lock in force.
    fn no_lock_holds() -> GuardsPassed {
        let intent = intent(IntentPurpose::Entry);
        let signal = crate::guards::EntrySignal {
            symbol: intent.symbol.clone(),
            strategy: intent.strategy.clone(),
            side: intent.side,
            score: 1.0,
        };
        crate::guards::evaluate_locks(&signal, &[], 0).passed().expect("no lock, no block")
    }

    #[test]
    fn entries_within_limits_pass() {
        assert!(check_entry(intent(IntentPurpose::Entry), no_lock_holds(), context(1, 0, 500), limits()).is_ok());
    }

    #[test]
    fn too_many_positions_blocks_a_new_symbol() {
        let block =
            check_entry(intent(IntentPurpose::Entry), no_lock_holds(), context(2, 0, 100), limits()).unwrap_err();
        assert_eq!(block.failure_point, RES_POSITION_LIMIT);
        assert!(block.reason.contains("max_open_positions is 2"), "{}", block.reason);
    }

    #[test]
    fn too_large_a_position_is_blocked() {
        let block =
            check_entry(intent(IntentPurpose::Entry), no_lock_holds(), context(0, 800, 300), limits()).unwrap_err();
        assert!(block.reason.contains("1100"), "{}", block.reason);
    }

    #[test]
    fn exits_always_pass() {
        let approved = approve_exit(intent(IntentPurpose::Exit));
        assert_eq!(approved.get().purpose, IntentPurpose::Exit);
    }
}
