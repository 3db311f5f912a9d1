//! The data map as a plugin sees it, and the updates it returns.

use std::collections::BTreeMap;
use std::rc::Rc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Number, Value};

use crate::Error;
use crate::bindings::wasmhooks::plugin::types as wit;

/// The names a plugin declared in its manifest's `reads`, which the host's
/// values follow by position: read once per instance.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Reads {
    names: Vec<String>,
    /// Positions in key order, so `Data::iter` keeps its order.
    sorted: Vec<usize>,
}

impl Reads {
    pub(crate) fn new(names: Vec<String>) -> Self {
        let mut sorted: Vec<usize> = (0..names.len()).collect();
        sorted.sort_by(|&a, &b| names[a].cmp(&names[b]));
        Reads { names, sorted }
    }
}

/// The keys of the job's data map that the plugin reads, with their values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Data {
    /// When the plugin lists its keys: their names, and one value per name.
    reads: Rc<Reads>,
    values: Vec<Option<Value>>,
    /// When it reads the whole map (or the data was built by hand).
    map: BTreeMap<String, Value>,
}

/// A value as the host sent it, in `serde_json`'s terms.
fn lift(key: &str, value: wit::Value) -> Result<Value, Error> {
    Ok(match value {
        wit::Value::Null => Value::Null,
        wit::Value::Boolean(b) => Value::Bool(b),
        wit::Value::Integer(i) => Value::from(i),
        // The host sends only finite floats.
        wit::Value::Float(f) => Number::from_f64(f).map_or(Value::Null, Value::Number),
        wit::Value::Text(s) => Value::String(s),
        wit::Value::Json(text) => serde_json::from_str(&text).map_err(|err| {
            Error::new(format!("the host passed invalid JSON for '{key}': {err}"))
        })?,
    })
}

/// A value to send: scalars typed, lists and maps as JSON text.
fn lower(value: Value) -> wit::Value {
    match value {
        Value::Null => wit::Value::Null,
        Value::Bool(b) => wit::Value::Boolean(b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => wit::Value::Integer(i),
            (None, Some(f)) if n.is_f64() => wit::Value::Float(f),
            _ => wit::Value::Json(n.to_string()),
        },
        Value::String(s) => wit::Value::Text(s),
        other => wit::Value::Json(other.to_string()),
    }
}

impl Data {
    pub(crate) fn from_wit(reads: Rc<Reads>, data: wit::Data) -> Result<Self, Error> {
        match data {
            wit::Data::Listed(values) => {
                if values.len() != reads.names.len() {
                    return Err(Error::new(format!(
                        "the host passed {} values for the {} keys the plugin reads",
                        values.len(),
                        reads.names.len()
                    )));
                }
                let values = values
                    .into_iter()
                    .zip(&reads.names)
                    .map(|(v, key)| v.map(|v| lift(key, v)).transpose())
                    .collect::<Result<_, _>>()?;
                Ok(Data {
                    reads,
                    values,
                    map: BTreeMap::new(),
                })
            }
            wit::Data::Whole(entries) => {
                let mut map = BTreeMap::new();
                for e in entries {
                    let value = lift(&e.key, e.value)?;
                    map.insert(e.key, value);
                }
                Ok(Data {
                    map,
                    ..Data::default()
                })
            }
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self.reads.names.iter().position(|name| name == key) {
            Some(i) => self.values[i].as_ref(),
            None => self.map.get(key),
        }
    }

    /// The value of `key` as `T`; an error names the key if it does not fit.
    pub fn get_as<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        self.get(key)
            .map(|v| T::deserialize(v).map_err(|e| Error::new(format!("key '{key}': {e}"))))
            .transpose()
    }

    /// The value of `key` if it is a string.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    /// The value of `key` if it is a number.
    pub fn f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(Value::as_f64)
    }

    /// The value of `key` if it is a non-negative integer.
    pub fn u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(Value::as_u64)
    }

    /// The value of `key` if it is a boolean.
    pub fn bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(Value::as_bool)
    }

    /// Whether `key` is present.
    pub fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Every key and value present, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        let listed = self
            .reads
            .sorted
            .iter()
            .filter_map(|&i| Some((self.reads.names[i].as_str(), self.values[i].as_ref()?)));
        listed.chain(self.map.iter().map(|(k, v)| (k.as_str(), v)))
    }

    /// How many keys the plugin was given.
    pub fn len(&self) -> usize {
        self.values.iter().flatten().count() + self.map.len()
    }

    /// Whether the plugin was given no keys.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl FromIterator<(String, Value)> for Data {
    fn from_iter<I: IntoIterator<Item = (String, Value)>>(iter: I) -> Self {
        Data {
            map: iter.into_iter().collect(),
            ..Data::default()
        }
    }
}

/// The changes a call asks for, applied in order, all or none.
#[derive(Debug, Clone, Default)]
pub struct Updates {
    items: Vec<wit::Update>,
}

impl Updates {
    /// No changes.
    pub fn new() -> Self {
        Updates::default()
    }

    /// Sets `key` to a value that serializes to JSON.
    ///
    /// # Panics
    /// If the value cannot be serialized (a map with non-string keys, say);
    /// use [`Updates::try_set`] to handle that.
    pub fn set(self, key: impl Into<String>, value: impl Serialize) -> Self {
        self.try_set(key, value).expect("value serializes to JSON")
    }

    /// Sets `key` to a value, or says why it does not serialize. Scalars
    /// cross typed; lists and maps as JSON text.
    pub fn try_set(mut self, key: impl Into<String>, value: impl Serialize) -> Result<Self, Error> {
        let value = lower(serde_json::to_value(&value)?);
        self.items.push(wit::Update::Set(wit::Entry {
            key: key.into(),
            value,
        }));
        Ok(self)
    }

    /// Sets `key` to JSON text the plugin already has. The host checks it.
    pub fn set_raw(mut self, key: impl Into<String>, json: impl Into<String>) -> Self {
        self.items.push(wit::Update::Set(wit::Entry {
            key: key.into(),
            value: wit::Value::Json(json.into()),
        }));
        self
    }

    /// Removes `key`.
    pub fn remove(mut self, key: impl Into<String>) -> Self {
        self.items.push(wit::Update::Remove(key.into()));
        self
    }

    /// Whether there are no changes.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// How many changes.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub(crate) fn into_wit(self) -> Vec<wit::Update> {
        self.items
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reads(names: &[&str]) -> Rc<Reads> {
        Rc::new(Reads::new(names.iter().map(|s| s.to_string()).collect()))
    }

    #[test]
    fn data_reads_typed_values_by_position() {
        let data = Data::from_wit(
            reads(&["step", "loss", "pg", "absent"]),
            wit::Data::Listed(vec![
                Some(wit::Value::Integer(7)),
                Some(wit::Value::Float(0.25)),
                Some(wit::Value::Json(r#"{"bundles": [1, 2]}"#.into())),
                None,
            ]),
        )
        .unwrap();
        assert_eq!(data.f64("loss"), Some(0.25));
        assert_eq!(data.u64("step"), Some(7));
        assert_eq!(
            data.get_as::<BTreeMap<String, Vec<u32>>>("pg")
                .unwrap()
                .unwrap()["bundles"],
            [1, 2]
        );
        assert!(
            data.get_as::<String>("step")
                .unwrap_err()
                .message()
                .contains("key 'step'")
        );
        assert_eq!(data.get_as::<u32>("absent").unwrap(), None);
        assert!(!data.contains("absent") && data.contains("pg"));
        let keys: Vec<&str> = data.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["loss", "pg", "step"]);
        assert_eq!(data.len(), 3);
    }

    #[test]
    fn data_reads_the_whole_map_by_key() {
        let data = Data::from_wit(
            Rc::default(),
            wit::Data::Whole(vec![wit::Entry {
                key: "b".into(),
                value: wit::Value::Text("x".into()),
            }]),
        )
        .unwrap();
        assert_eq!(data.str("b"), Some("x"));
        assert_eq!(data.len(), 1);
    }

    #[test]
    fn data_refuses_invalid_json_and_a_wrong_count() {
        let err = Data::from_wit(
            reads(&["k"]),
            wit::Data::Listed(vec![Some(wit::Value::Json("{".into()))]),
        )
        .unwrap_err();
        assert!(err.message().contains("'k'"));
        let err = Data::from_wit(reads(&["k"]), wit::Data::Listed(vec![])).unwrap_err();
        assert!(err.message().contains("0 values for the 1 keys"), "{err}");
    }

    #[test]
    fn updates_cross_scalars_typed_and_the_rest_as_json() {
        let updates = Updates::new()
            .set("a", json!({"x": [1]}))
            .remove("b")
            .set_raw("c", "null")
            .set("d", 1.5)
            .set("e", u64::MAX)
            .set("f", "s");
        let items = updates.into_wit();
        assert_eq!(items.len(), 6);
        let value = |i: usize| match &items[i] {
            wit::Update::Set(e) => e.value.clone(),
            other => panic!("{other:?}"),
        };
        assert!(matches!(value(0), wit::Value::Json(t) if t == r#"{"x":[1]}"#));
        assert!(matches!(&items[1], wit::Update::Remove(k) if k == "b"));
        assert!(matches!(value(2), wit::Value::Json(t) if t == "null"));
        assert!(matches!(value(3), wit::Value::Float(f) if f == 1.5));
        assert!(matches!(value(4), wit::Value::Json(t) if t == u64::MAX.to_string()));
        assert!(matches!(value(5), wit::Value::Text(t) if t == "s"));
    }
}
