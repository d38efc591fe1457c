//! Parsing a JSON config into only the fields a reader knows. A `serde_json::Value`
//! takes many times its text's size (40 MB of junk in a `config.json` took 2.4 GB),
//! so every other field is skipped unparsed (`IgnoredAny`) instead of being held.

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Which fields of a JSON object to keep.
#[derive(Clone, Copy)]
pub(crate) struct KnownFields<'a> {
    /// Whether a field is kept, whole.
    pub(crate) keep: &'a dyn Fn(&str) -> bool,
    /// Fields whose value, when an object, is filtered by the same rule (SAELens's
    /// `metadata`, a multimodal config's `text_config`); any other value is kept whole.
    pub(crate) nested: &'a [&'a str],
}

impl KnownFields<'_> {
    /// Parses `text`: `Ok(None)` when its top level is not an object.
    pub(crate) fn parse(self, text: &str) -> serde_json::Result<Option<Map<String, Value>>> {
        let mut de = serde_json::Deserializer::from_str(text);
        let obj = self.deserialize(&mut de)?;
        de.end()?;
        Ok(obj)
    }
}

impl<'de> DeserializeSeed<'de> for KnownFields<'_> {
    type Value = Option<Map<String, Value>>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KnownFields<'_> {
    type Value = Option<Map<String, Value>>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut obj = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if self.nested.contains(&key.as_str()) {
                // Not an object: kept as it is, for the reader to report its type.
                let v = match map.next_value_seed(Nested(self))? {
                    Some(v) => v,
                    None => continue,
                };
                obj.insert(key, v);
            } else if (self.keep)(&key) {
                obj.insert(key, map.next_value::<Value>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Some(obj))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// A nested field's value: an object filtered as its parent, or any other value whole
/// (`None` only where there was nothing to keep).
struct Nested<'a>(KnownFields<'a>);

impl<'de> DeserializeSeed<'de> for Nested<'_> {
    type Value = Option<Value>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Nested<'_> {
    type Value = Option<Value>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        Ok(self.0.visit_map(map)?.map(Value::Object))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        // A list where an object belongs is an error by its type: its items are not needed.
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Some(Value::Array(Vec::new())))
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Some(Value::Bool(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Some(Value::from(v)))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Some(Value::from(v)))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Some(Value::from(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        // Shortened: a string where an object belongs is reported by its type.
        Ok(Some(Value::String(v.chars().take(64).collect())))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Some(Value::Null))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_skipped_and_nested_objects_filtered() {
        let keep = |k: &str| matches!(k, "a" | "b");
        let known = KnownFields {
            keep: &keep,
            nested: &["meta"],
        };
        let text = r#"{"a": 1, "junk": {"x": [1, 2, {"y": "z"}]}, "b": [true],
                       "meta": {"a": 2, "junk": "q"}, "c": null}"#;
        let obj = known.parse(text).unwrap().unwrap();
        assert_eq!(
            Value::Object(obj),
            serde_json::json!({"a": 1, "b": [true], "meta": {"a": 2}})
        );
        // The top level must be an object; the text must be JSON throughout.
        assert_eq!(known.parse("[1, 2]").unwrap(), None);
        assert!(known.parse(r#"{"a": 1, "junk": [1, }"#).is_err());
        assert!(known.parse(r#"{"a": 1} trailing"#).is_err());
        // A nested field that is not an object is kept (for its type to be reported).
        let obj = known.parse(r#"{"meta": "text"}"#).unwrap().unwrap();
        assert_eq!(obj["meta"], Value::String("text".into()));
    }
}
