//! Whole numbers as JSON has them: `60` and `60.0` are the same number to JSON (and to JSON
//! Schema's `integer`), and clients that keep numbers as floats (Python, JavaScript
//! libraries) send the second. serde reads only the first into an integer; these read both,
//! and refuse a fraction or a value out of the type's range like serde does.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, Unexpected, Visitor};

/// An integer of type `T` read from any whole JSON number.
pub(crate) struct Whole<T>(pub T);

impl<'de, T: TryFrom<u64> + TryFrom<i64>> Deserialize<'de> for Whole<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(WholeVisitor(PhantomData))
            .map(Whole)
    }
}

struct WholeVisitor<T>(PhantomData<T>);

impl<'de, T: TryFrom<u64> + TryFrom<i64>> Visitor<'de> for WholeVisitor<T> {
    type Value = T;

    // In JSON's words, as `error::json_words` says serde's integer types.
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if std::any::type_name::<T>().starts_with('u') {
            f.write_str("a whole number, 0 or more")
        } else {
            f.write_str("a whole number")
        }
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<T, E> {
        T::try_from(value).map_err(|_| E::invalid_value(Unexpected::Unsigned(value), &self))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<T, E> {
        T::try_from(value).map_err(|_| E::invalid_value(Unexpected::Signed(value), &self))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<T, E> {
        // Above 2^53 a float no longer tells neighbouring integers apart, and serde_json reads
        // integers out of i64 and u64 range as floats: such a value is out of range, not whole.
        const EXACT: f64 = 9_007_199_254_740_992.0;
        if value.fract() != 0.0 || !value.is_finite() {
            return Err(E::invalid_type(Unexpected::Float(value), &self));
        }
        if value.abs() > EXACT {
            return Err(E::invalid_value(Unexpected::Float(value), &self));
        }
        if value >= 0.0 {
            self.visit_u64(value as u64)
        } else {
            self.visit_i64(value as i64)
        }
    }
}

/// `#[serde(deserialize_with = "whole::option")]` for an `Option` of an integer.
pub(crate) fn option<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64> + TryFrom<i64>,
{
    Ok(Option::<Whole<T>>::deserialize(deserializer)?.map(|whole| whole.0))
}

/// `#[serde(deserialize_with = "whole::exact")]` for an integer.
pub(crate) fn exact<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64> + TryFrom<i64>,
{
    Ok(Whole::<T>::deserialize(deserializer)?.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read<T: TryFrom<u64> + TryFrom<i64>>(json: &str) -> Result<T, serde_json::Error> {
        serde_json::from_str::<Whole<T>>(json).map(|whole| whole.0)
    }

    #[test]
    fn whole_floats_read_as_integers_and_fractions_do_not() {
        assert_eq!(read::<u64>("60").unwrap(), 60);
        assert_eq!(read::<u64>("60.0").unwrap(), 60);
        assert_eq!(read::<u32>("1e3").unwrap(), 1000);
        assert_eq!(read::<i64>("-3.0").unwrap(), -3);
        assert!(read::<u64>("60.5").is_err());
        assert!(read::<u64>("-1").is_err());
        assert!(read::<u32>("4294967296.0").is_err());
        assert!(read::<u64>("1e30").is_err());
        assert!(read::<i64>("-9223372036854775809").is_err());
        assert_eq!(read::<u64>("18446744073709551615").unwrap(), u64::MAX);
        assert!(read::<u8>("\"5\"").is_err());
    }
}
