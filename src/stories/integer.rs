//! Integer fields of a JSON body as JSON Schema defines integers: any number without a
//! fractional part, so `8.0` is the integer 8 (the published OpenAPI document says
//! `type: integer`, and a generated client may send either form); serde alone refuses `8.0`
//! for a `u32`. Everything else reads and fails as serde's own integer types do, with the
//! same wording ("invalid type: floating point `1.5`, expected u32"); a query string's
//! integers are read by `serde_urlencoded` as before (canonical decimal text).

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, Unexpected, Visitor};
use serde::Deserialize;

/// An unsigned integer type a request field may have.
pub trait Unsigned: Copy + TryFrom<u64> {
    /// serde's name of the type (`u32`), as its error messages say it.
    const NAME: &'static str;

    /// Asks the format for this type, as serde's own `Deserialize` does.
    fn ask<'de, D: Deserializer<'de>, V: Visitor<'de, Value = Self>>(
        deserializer: D,
        visitor: V,
    ) -> Result<Self, D::Error>;
}

/// serde's own name and `deserialize_*` method for each type.
macro_rules! unsigned {
    ($type:ty, $name:literal, $method:ident) => {
        impl Unsigned for $type {
            const NAME: &'static str = $name;

            fn ask<'de, D: Deserializer<'de>, V: Visitor<'de, Value = Self>>(
                deserializer: D,
                visitor: V,
            ) -> Result<Self, D::Error> {
                deserializer.$method(visitor)
            }
        }
    };
}

unsigned!(u32, "u32", deserialize_u32);
unsigned!(u64, "u64", deserialize_u64);

/// `#[serde(default, deserialize_with = "integer::optional")]` for an `Option<u32>` or
/// `Option<u64>` field.
pub fn optional<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Unsigned,
{
    Option::<Integer<T>>::deserialize(deserializer).map(|value| value.map(|v| v.0))
}

struct Integer<T>(T);

impl<'de, T: Unsigned> Deserialize<'de> for Integer<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::ask(deserializer, IntegerVisitor(PhantomData)).map(Integer)
    }
}

struct IntegerVisitor<T>(PhantomData<T>);

impl<T: Unsigned> IntegerVisitor<T> {
    fn fits<E: de::Error>(&self, value: u64) -> Result<T, E> {
        T::try_from(value).map_err(|_| E::invalid_value(Unexpected::Unsigned(value), self))
    }
}

impl<T: Unsigned> Visitor<'_> for IntegerVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(T::NAME)
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<T, E> {
        self.fits(value)
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<T, E> {
        match u64::try_from(value) {
            Ok(value) => self.fits(value),
            Err(_) => Err(E::invalid_value(Unexpected::Signed(value), &self)),
        }
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<T, E> {
        // 2^64 as f64; every smaller non-negative f64 without a fraction converts exactly.
        const U64_END: f64 = 18_446_744_073_709_551_616.0;
        if value.fract() == 0.0 && (0.0..U64_END).contains(&value) {
            self.fits(value as u64)
        } else {
            Err(E::invalid_type(Unexpected::Float(value), &self))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Fields {
        #[serde(default, deserialize_with = "optional")]
        small: Option<u32>,
        #[serde(default, deserialize_with = "optional")]
        big: Option<u64>,
    }

    fn json(text: &str) -> Result<Fields, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn integral_numbers_are_integers_in_any_notation() {
        let fields = json(r#"{"small": 8.0, "big": 1e19}"#).unwrap();
        assert_eq!(fields.small, Some(8));
        assert_eq!(fields.big, Some(10_000_000_000_000_000_000));
        let fields = json(r#"{"small": null, "big": 18446744073709551615}"#).unwrap();
        assert_eq!((fields.small, fields.big), (None, Some(u64::MAX)));
        assert_eq!(json("{}").unwrap().small, None);
    }

    #[test]
    fn fractions_negatives_and_overflow_keep_serdes_wording() {
        let err = json(r#"{"small": 1.5}"#).unwrap_err();
        assert!(
            err.starts_with("invalid type: floating point `1.5`, expected u32"),
            "{err}"
        );
        let err = json(r#"{"small": -1}"#).unwrap_err();
        assert!(
            err.starts_with("invalid value: integer `-1`, expected u32"),
            "{err}"
        );
        let err = json(r#"{"small": 4294967296}"#).unwrap_err();
        assert!(
            err.starts_with("invalid value: integer `4294967296`, expected u32"),
            "{err}"
        );
        let err = json(r#"{"big": 18446744073709551616.0}"#).unwrap_err();
        assert!(err.contains("expected u64"), "{err}");
        let err = json(r#"{"small": "8"}"#).unwrap_err();
        assert!(err.contains("expected u32"), "{err}");
    }

    #[test]
    fn query_text_reads_as_serde_reads_it() {
        let query = |text| serde_urlencoded::from_str::<Fields>(text).map_err(|e| e.to_string());
        let fields = query("small=8&big=18446744073709551615").unwrap();
        assert_eq!((fields.small, fields.big), (Some(8), Some(u64::MAX)));
        assert_eq!(
            query("small=-3").unwrap_err(),
            "invalid digit found in string"
        );
        assert_eq!(
            query("small=4294967296").unwrap_err(),
            "number too large to fit in target type"
        );
        assert!(query("small=ten").is_err());
    }
}
