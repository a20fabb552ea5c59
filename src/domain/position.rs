//! Positions and balances as the exchange reports them (one-way mode: one net position per
//! symbol, positive for long, negative for short).

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::domain::Symbol;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PositionSide {
    Long,
    Short,
    Flat,
}

impl PositionSide {
    pub fn as_str(self) -> &'static str {
        match self {
            PositionSide::Long => "long",
            PositionSide::Short => "short",
            PositionSide::Flat => "flat",
        }
    }
}

/// A net position (signed quantity, average entry price) after a fill of `signed_quantity` at
/// `price`, and the PnL the fill realized: adding averages the entry price, reducing keeps it and
/// realizes the difference, flipping opens the rest at the fill's price. (How a one-way-mode
/// exchange books a fill; the paper venue books with it, and a trader predicts its position row
/// from an order's execution with it.)
pub fn net_position_after_fill(
    quantity: Decimal,
    entry_price: Decimal,
    signed_quantity: Decimal,
    price: Decimal,
) -> (Decimal, Decimal, Decimal) {
    if quantity.is_zero() || quantity.is_sign_positive() == signed_quantity.is_sign_positive() {
        let after = quantity + signed_quantity;
        if after.is_zero() {
            return (Decimal::ZERO, Decimal::ZERO, Decimal::ZERO);
        }
        let entry = (quantity.abs() * entry_price + signed_quantity.abs() * price) / after.abs();
        return (after, entry.round_dp(8), Decimal::ZERO);
    }
    let closing = signed_quantity.abs().min(quantity.abs());
    let direction = if quantity.is_sign_positive() { Decimal::ONE } else { Decimal::NEGATIVE_ONE };
    let realized_pnl = (closing * (price - entry_price) * direction).round_dp(8);
    let after = quantity + signed_quantity;
    if after.is_zero() {
        (Decimal::ZERO, Decimal::ZERO, realized_pnl)
    } else if after.is_sign_positive() == quantity.is_sign_positive() {
        (after, entry_price, realized_pnl)
    } else {
        (after, price, realized_pnl)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub symbol: Symbol,
    /// Signed: positive long, negative short, zero flat.
    pub quantity: Decimal,
    /// Average entry price; zero when flat.
    pub entry_price: Decimal,
    pub mark_price: Decimal,
    pub unrealized_pnl: Decimal,
}

impl Position {
    pub fn flat(symbol: Symbol, mark_price: Decimal) -> Self {
        Self { symbol, quantity: Decimal::ZERO, entry_price: Decimal::ZERO, mark_price, unrealized_pnl: Decimal::ZERO }
    }

    pub fn side(&self) -> PositionSide {
        if self.quantity > Decimal::ZERO {
            PositionSide::Long
        } else if self.quantity < Decimal::ZERO {
            PositionSide::Short
        } else {
            PositionSide::Flat
        }
    }

    pub fn notional(&self) -> Decimal {
        (self.quantity * self.mark_price).abs()
    }
}

/// The margin account in the quote asset (USDT).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balance {
    pub asset: String,
    pub wallet_balance: Decimal,
    pub unrealized_pnl: Decimal,
    pub available_balance: Decimal,
}
