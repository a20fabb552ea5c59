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
