//! Exact money: integer micro-USD for amounts, decimals for per-token rates.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use serde::{Deserialize, Serialize};

/// An amount of money in micro-units of the billing currency (1 USD = 1,000,000).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Micros(pub i64);

impl Micros {
    pub const ZERO: Micros = Micros(0);

    /// Converts a decimal currency amount, rejecting one with more than six decimals.
    pub fn from_decimal(amount: Decimal) -> Option<Micros> {
        let scaled = amount.checked_mul(Decimal::from(1_000_000))?;
        if scaled.fract() != Decimal::ZERO {
            return None;
        }
        scaled.to_i64().map(Micros)
    }

    /// Rounds a decimal amount of micro-units to a whole micro-unit, half away from zero.
    pub fn round_from_micro_decimal(micros: Decimal) -> Micros {
        let rounded =
            micros.round_dp_with_strategy(0, rust_decimal::RoundingStrategy::MidpointAwayFromZero);
        Micros(rounded.to_i64().unwrap_or(i64::MAX))
    }

    /// Rounds a decimal amount of micro-units up to a whole micro-unit, for estimates
    /// that must not understate a cost.
    pub fn ceil_from_micro_decimal(micros: Decimal) -> Micros {
        Micros(micros.ceil().to_i64().unwrap_or(i64::MAX))
    }

    pub fn to_decimal(self) -> Decimal {
        Decimal::new(self.0, 6)
    }
}

impl fmt::Display for Micros {
    /// Formats as a currency amount with six decimals, for example `12.345678`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.to_decimal().to_string())
    }
}

impl FromStr for Micros {
    type Err = String;

    fn from_str(text: &str) -> Result<Micros, String> {
        let amount = Decimal::from_str(text.trim())
            .map_err(|_| format!("invalid amount {text:?}: expected a decimal such as 125.50"))?;
        if amount.is_sign_negative() {
            return Err(format!("invalid amount {text:?}: must not be negative"));
        }
        Micros::from_decimal(amount)
            .ok_or_else(|| format!("invalid amount {text:?}: at most six decimals are allowed"))
    }
}

impl std::ops::Add for Micros {
    type Output = Micros;
    fn add(self, other: Micros) -> Micros {
        Micros(self.0 + other.0)
    }
}

impl std::ops::Sub for Micros {
    type Output = Micros;
    fn sub(self, other: Micros) -> Micros {
        Micros(self.0 - other.0)
    }
}

impl std::iter::Sum for Micros {
    fn sum<I: Iterator<Item = Micros>>(iter: I) -> Micros {
        Micros(iter.map(|amount| amount.0).sum())
    }
}

/// Serde format of an amount as an exact decimal string with six decimals,
/// for example `"-0.000125"`, as FOCUS cost columns are written.
pub mod decimal_string {
    use super::*;

    pub fn serialize<S: serde::Serializer>(
        amount: &Micros,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_str(amount)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Micros, D::Error> {
        let text = String::deserialize(deserializer)?;
        Decimal::from_str(text.trim())
            .ok()
            .and_then(Micros::from_decimal)
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "invalid amount {text:?}: expected a decimal string with at most six decimals"
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_strings_round_trip() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Row {
            #[serde(with = "decimal_string")]
            cost: Micros,
        }
        for micros in [0, 1, -125, 12_345_678] {
            let json = serde_json::to_string(&Row {
                cost: Micros(micros),
            })
            .unwrap();
            assert_eq!(
                serde_json::from_str::<Row>(&json).unwrap(),
                Row {
                    cost: Micros(micros)
                }
            );
        }
        assert_eq!(
            serde_json::to_string(&Row { cost: Micros(-125) }).unwrap(),
            r#"{"cost":"-0.000125"}"#
        );
        assert!(serde_json::from_str::<Row>(r#"{"cost":"0.0000001"}"#).is_err());
    }

    #[test]
    fn parses_and_formats_amounts() {
        let amount: Micros = "125.5".parse().unwrap();
        assert_eq!(amount, Micros(125_500_000));
        assert_eq!(amount.to_string(), "125.500000");
    }

    #[test]
    fn rejects_sub_micro_and_negative_amounts() {
        assert!("0.0000001".parse::<Micros>().is_err());
        assert!("-1".parse::<Micros>().is_err());
        assert!("ten".parse::<Micros>().is_err());
    }

    #[test]
    fn rounds_half_away_from_zero() {
        assert_eq!(
            Micros::round_from_micro_decimal(Decimal::new(25, 1)),
            Micros(3)
        );
        assert_eq!(
            Micros::round_from_micro_decimal(Decimal::new(24, 1)),
            Micros(2)
        );
        assert_eq!(
            Micros::ceil_from_micro_decimal(Decimal::new(21, 1)),
            Micros(3)
        );
    }
}
