//! KAZOO's document, read for the few fields the index takes from it (caller, callee, mailbox,
//! folder, length, time) without building it in memory: every other value is skipped as it is
//! read, so a job's memory is the document's bytes, whatever they would expand to.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

/// The index's fields of a document: KAZOO puts a voicemail's in its `metadata` object; the top
/// level is the fallback for documents shaped differently.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Fields {
    pub caller_id_number: Text,
    pub caller_id_name: Text,
    pub call_id: Text,
    pub from_user: Text,
    pub from_realm: Text,
    pub to_user: Text,
    pub to_realm: Text,
    pub folder: Text,
    pub length: Integer,
    pub timestamp: Integer,
    /// Top level only: the voicemail box.
    pub source_id: Text,
    /// Top level only: the message's time, when `metadata.timestamp` is missing.
    pub utc_seconds: Integer,
    pub metadata: Option<Box<Fields>>,
}

/// A document as a job may carry it: parsed, or still JSON text.
pub(crate) trait KazooDocument {
    fn fields(&self) -> Fields;
    fn to_raw(&self) -> Box<RawValue>;
}

impl KazooDocument for Value {
    fn fields(&self) -> Fields {
        Fields::deserialize(self).unwrap_or_default()
    }

    fn to_raw(&self) -> Box<RawValue> {
        serde_json::value::to_raw_value(self).expect("a JSON value serialises")
    }
}

impl KazooDocument for Box<RawValue> {
    fn fields(&self) -> Fields {
        serde_json::from_str(self.get()).unwrap_or_default()
    }

    fn to_raw(&self) -> Box<RawValue> {
        self.clone()
    }
}

/// A text field: a non-empty string, or a number written as text; anything else is absent.
#[derive(Debug, Default)]
pub(crate) struct Text(pub Option<String>);

/// An integer field; anything else is absent.
#[derive(Debug, Default)]
pub(crate) struct Integer(pub Option<i64>);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(Scalar::Integer(0))
            .map(|s| Text(s.and_then(Scalar::text).filter(|t| !t.is_empty())))
    }
}

impl<'de> Deserialize<'de> for Integer {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(Scalar::Integer(0)).map(|s| {
            Integer(match s {
                Some(Scalar::Integer(i)) => Some(i),
                _ => None,
            })
        })
    }
}

/// What a scalar visitor saw (the visitor itself is any value of it); arrays and objects are
/// skipped without being built.
enum Scalar {
    Text(String),
    /// A number, as text.
    Number(String),
    /// A number that is an `i64` (also given as `Number`'s text).
    Integer(i64),
}

impl<'de> Visitor<'de> for Scalar {
    type Value = Option<Scalar>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(Scalar::Text(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Some(Scalar::Text(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Some(Scalar::Integer(v)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Some(match i64::try_from(v) {
            Ok(i) => Scalar::Integer(i),
            Err(_) => Scalar::Number(v.to_string()),
        }))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Some(Scalar::Number(
            serde_json::Number::from_f64(v).map_or_else(String::new, |n| n.to_string()),
        )))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

impl Scalar {
    /// The text a number field gives (integers included).
    fn text(self) -> Option<String> {
        match self {
            Scalar::Text(t) => Some(t),
            Scalar::Number(n) => Some(n),
            Scalar::Integer(i) => Some(i.to_string()),
        }
    }
}

impl Fields {
    /// `metadata.NAME`, else the top-level `NAME`.
    pub(crate) fn text(&self, pick: impl Fn(&Fields) -> &Text) -> Option<String> {
        self.metadata
            .as_deref()
            .and_then(|m| pick(m).0.clone())
            .or_else(|| pick(self).0.clone())
    }

    /// `metadata.NAME`, else the top-level `NAME`.
    pub(crate) fn integer(&self, pick: impl Fn(&Fields) -> &Integer) -> Option<i64> {
        self.metadata
            .as_deref()
            .and_then(|m| pick(m).0)
            .or_else(|| pick(self).0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_come_from_metadata_then_the_top_level_and_the_rest_is_skipped() {
        let doc = serde_json::json!({
            "source_id": "box", "utc_seconds": 63962891000u64, "folder": "top",
            "metadata": {"caller_id_number": 14155550100u64, "caller_id_name": "",
                         "to_user": "1010", "length": 5320, "timestamp": "not a number",
                         "huge": [[0, 0, [0]], {"a": [1]}]}
        });
        let raw = doc.to_raw();
        for fields in [doc.fields(), raw.fields()] {
            assert_eq!(
                fields.text(|f| &f.caller_id_number).as_deref(),
                Some("14155550100")
            );
            assert_eq!(fields.text(|f| &f.caller_id_name), None, "empty is absent");
            assert_eq!(
                fields.text(|f| &f.folder).as_deref(),
                Some("top"),
                "fallback"
            );
            assert_eq!(fields.integer(|f| &f.length), Some(5320));
            assert_eq!(fields.integer(|f| &f.timestamp), None);
            assert_eq!(fields.source_id.0.as_deref(), Some("box"));
            assert_eq!(fields.utc_seconds.0, Some(63962891000));
        }
        let not_an_object = serde_json::json!([1, 2]);
        assert_eq!(not_an_object.fields().text(|f| &f.to_user), None);
    }
}
