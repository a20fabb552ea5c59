//! What a trader must not forget across a crash, a restart, a re-admission or a reconfiguration:
//! the inputs of its risk locks. The kill switch measures drawdown from an equity peak over a
//! look-back, and a probation follows a streak of losing trades on a symbol; if a restart started
//! them afresh, a user 4 % down would start again from zero. The core hands this out whenever it
//! changes ([`crate::trader::core::TraderCommand::SaveRiskMemory`]); it is stored with the durable
//! writes and given back at the next start. Pure data.

use serde::{Deserialize, Serialize};

use crate::domain::Symbol;

/// One user's risk memory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RiskMemory {
    /// The kill switch's peak candidates within its look-back: (time ms, equity USDT), oldest
    /// first (`guards::equity::EquityTracker::peaks`).
    pub equity_peaks: Vec<(i64, f64)>,
    /// Per strategy slot: the probation's inputs.
    pub slots: Vec<SlotMemory>,
}

/// One strategy slot's losing streak, keyed by what identifies the slot in the config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotMemory {
    pub symbol: Symbol,
    pub timeframe: String,
    pub strategy: String,
    /// Losing trades in a row.
    pub loss_streak: u32,
    /// The newest closed trade's result, in %.
    pub last_trade_pct: Option<f64>,
}
