//! Prices and quantities as exact decimals. Order prices and quantities never go through `f64`
//! formatting: they are rounded to the symbol's tick and step sizes as decimals and sent as the
//! decimal strings they are. Candles stay `f64` (they feed indicators); [`decimal_from_f64`] is the
//! one crossing point.

use std::fmt;

use rust_decimal::Decimal;
use rust_decimal::prelude::{FromPrimitive, ToPrimitive};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MoneyError {
    #[error("price must be positive, got {0}")]
    NonPositivePrice(Decimal),
    #[error("quantity must be positive, got {0}")]
    NonPositiveQuantity(Decimal),
    #[error("{0} is not a finite number")]
    NotFinite(f64),
    #[error("quantity {quantity} is not a multiple of the step size {step_size}")]
    OffStep { quantity: Decimal, step_size: Decimal },
    #[error("price {price} is not a multiple of the tick size {tick_size}")]
    OffTick { price: Decimal, tick_size: Decimal },
    #[error("quantity {quantity} is below the minimum {min_quantity}")]
    BelowMinQuantity { quantity: Decimal, min_quantity: Decimal },
    #[error("notional {notional} is below the minimum {min_notional}")]
    BelowMinNotional { notional: Decimal, min_notional: Decimal },
}

/// A strictly positive price.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "Decimal", into = "Decimal")]
pub struct Price(Decimal);

impl Price {
    pub fn new(value: Decimal) -> Result<Self, MoneyError> {
        if value > Decimal::ZERO { Ok(Self(value.normalize())) } else { Err(MoneyError::NonPositivePrice(value)) }
    }

    pub fn get(self) -> Decimal {
        self.0
    }
}

/// A strictly positive order quantity in base-asset units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "Decimal", into = "Decimal")]
pub struct Quantity(Decimal);

impl Quantity {
    pub fn new(value: Decimal) -> Result<Self, MoneyError> {
        if value > Decimal::ZERO { Ok(Self(value.normalize())) } else { Err(MoneyError::NonPositiveQuantity(value)) }
    }

    pub fn get(self) -> Decimal {
        self.0
    }
}

macro_rules! decimal_newtype_impls {
    ($name:ident) => {
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
        impl TryFrom<Decimal> for $name {
            type Error = MoneyError;
            fn try_from(value: Decimal) -> Result<Self, MoneyError> {
                $name::new(value)
            }
        }
        impl From<$name> for Decimal {
            fn from(value: $name) -> Decimal {
                value.0
            }
        }
    };
}

decimal_newtype_impls!(Price);
decimal_newtype_impls!(Quantity);

/// Converts a market-data float to a decimal, refusing NaN and infinities.
pub fn decimal_from_f64(value: f64) -> Result<Decimal, MoneyError> {
    if !value.is_finite() {
        return Err(MoneyError::NotFinite(value));
    }
    Decimal::from_f64(value).ok_or(MoneyError::NotFinite(value))
}

/// A symbol's trading rules (Binance's PRICE_FILTER, LOT_SIZE and MIN_NOTIONAL filters). Orders
/// are rounded and checked against them before they are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SymbolRules {
    pub tick_size: Decimal,
    pub step_size: Decimal,
    pub min_quantity: Decimal,
    pub min_notional: Decimal,
}

impl SymbolRules {
    /// Rounds a quantity down to the step size; `None` when nothing is left (or it is below the
    /// minimum quantity).
    pub fn quantity_floor(&self, quantity: Decimal) -> Option<Quantity> {
        let rounded = if self.step_size > Decimal::ZERO {
            (quantity / self.step_size).floor() * self.step_size
        } else {
            quantity
        };
        if rounded < self.min_quantity {
            return None;
        }
        Quantity::new(rounded).ok()
    }

    /// Rounds a price to the nearest tick.
    pub fn price_round(&self, price: Decimal) -> Result<Price, MoneyError> {
        let rounded =
            if self.tick_size > Decimal::ZERO { (price / self.tick_size).round() * self.tick_size } else { price };
        Price::new(rounded)
    }

    /// Checks an order against every rule; `reference_price` values the notional (the limit price,
    /// or the mark price for a market order). Reduce-only orders are exempt from the notional
    /// minimum, as on Binance.
    pub fn check_order(
        &self,
        quantity: Quantity,
        limit_price: Option<Price>,
        reference_price: Price,
        reduce_only: bool,
    ) -> Result<(), MoneyError> {
        let quantity = quantity.get();
        if self.step_size > Decimal::ZERO && !(quantity % self.step_size).is_zero() {
            return Err(MoneyError::OffStep { quantity, step_size: self.step_size });
        }
        if quantity < self.min_quantity {
            return Err(MoneyError::BelowMinQuantity { quantity, min_quantity: self.min_quantity });
        }
        if let Some(price) = limit_price {
            let price = price.get();
            if self.tick_size > Decimal::ZERO && !(price % self.tick_size).is_zero() {
                return Err(MoneyError::OffTick { price, tick_size: self.tick_size });
            }
        }
        let notional = quantity * reference_price.get();
        if !reduce_only && notional < self.min_notional {
            return Err(MoneyError::BelowMinNotional { notional, min_notional: self.min_notional });
        }
        Ok(())
    }
}

/// Decimal to f64 for display and indicator inputs (never for order parameters).
pub(crate) fn decimal_to_f64(value: Decimal) -> f64 {
    value.to_f64().unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn xrp_rules() -> SymbolRules {
        SymbolRules {
            tick_size: dec("0.0001"),
            step_size: dec("0.1"),
            min_quantity: dec("0.1"),
            min_notional: dec("5"),
        }
    }

    #[test]
    fn prices_and_quantities_are_positive() {
        assert!(Price::new(dec("0")).is_err());
        assert!(Price::new(dec("-1")).is_err());
        assert!(Quantity::new(dec("0")).is_err());
        assert_eq!(Quantity::new(dec("1.500")).unwrap().to_string(), "1.5");
    }

    #[test]
    fn quantity_rounds_down_to_the_step() {
        let rules = xrp_rules();
        assert_eq!(rules.quantity_floor(dec("170.2799")).unwrap().get(), dec("170.2"));
        assert!(rules.quantity_floor(dec("0.09")).is_none());
    }

    #[test]
    fn price_rounds_to_the_tick() {
        assert_eq!(xrp_rules().price_round(dec("1.19418")).unwrap().get(), dec("1.1942"));
    }

    #[test]
    fn check_order_names_the_broken_rule() {
        let rules = xrp_rules();
        let price = Price::new(dec("1.2")).unwrap();
        let ok = Quantity::new(dec("10")).unwrap();
        assert!(rules.check_order(ok, None, price, false).is_ok());
        let off_step = Quantity::new(dec("10.05")).unwrap();
        assert!(matches!(rules.check_order(off_step, None, price, false), Err(MoneyError::OffStep { .. })));
        let small = Quantity::new(dec("1")).unwrap();
        assert!(matches!(rules.check_order(small, None, price, false), Err(MoneyError::BelowMinNotional { .. })));
        assert!(rules.check_order(small, None, price, true).is_ok(), "reduce-only is exempt");
        let off_tick = Price::new(dec("1.20001")).unwrap();
        assert!(matches!(rules.check_order(ok, Some(off_tick), price, false), Err(MoneyError::OffTick { .. })));
    }

    #[test]
    fn floats_that_are_not_numbers_are_refused() {
        assert!(decimal_from_f64(f64::NAN).is_err());
        assert!(decimal_from_f64(f64::INFINITY).is_err());
        assert_eq!(decimal_from_f64(1.1893).unwrap(), dec("1.1893"));
    }
}
