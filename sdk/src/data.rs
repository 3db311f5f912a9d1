//! The data map as a plugin sees it, and the updates it returns.

use std::collections::BTreeMap;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::Error;
use crate::bindings::wasmhooks::plugin::types as wit;

/// The keys of the job's data map that the plugin reads, parsed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Data {
    map: BTreeMap<String, Value>,
}

impl Data {
    pub(crate) fn from_entries(entries: Vec<wit::Entry>) -> Result<Self, Error> {
        let mut map = BTreeMap::new();
        for e in entries {
            let value = serde_json::from_str(&e.value).map_err(|err| {
                Error::new(format!(
                    "the host passed invalid JSON for '{}': {err}",
                    e.key
                ))
            })?;
            map.insert(e.key, value);
        }
        Ok(Data { map })
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key)
    }

    /// The value of `key` as `T`; an error names the key if it does not fit.
    pub fn get_as<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        self.map
            .get(key)
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
        self.map.contains_key(key)
    }

    /// Every key and value, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.map.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// How many keys the plugin was given.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the plugin was given no keys.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

impl FromIterator<(String, Value)> for Data {
    fn from_iter<I: IntoIterator<Item = (String, Value)>>(iter: I) -> Self {
        Data {
            map: iter.into_iter().collect(),
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

    /// Sets `key` to a value, or says why it does not serialize.
    pub fn try_set(self, key: impl Into<String>, value: impl Serialize) -> Result<Self, Error> {
        let text = serde_json::to_string(&value)?;
        Ok(self.set_raw(key, text))
    }

    /// Sets `key` to JSON text the plugin already has. The host checks it.
    pub fn set_raw(mut self, key: impl Into<String>, json: impl Into<String>) -> Self {
        self.items.push(wit::Update::Set(wit::Entry {
            key: key.into(),
            value: json.into(),
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

    #[test]
    fn data_reads_typed_values() {
        let data = Data::from_entries(vec![
            wit::Entry {
                key: "loss".into(),
                value: "0.25".into(),
            },
            wit::Entry {
                key: "step".into(),
                value: "7".into(),
            },
            wit::Entry {
                key: "pg".into(),
                value: r#"{"bundles": [1, 2]}"#.into(),
            },
        ])
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
    }

    #[test]
    fn data_refuses_invalid_json() {
        let err = Data::from_entries(vec![wit::Entry {
            key: "k".into(),
            value: "{".into(),
        }])
        .unwrap_err();
        assert!(err.message().contains("'k'"));
    }

    #[test]
    fn updates_serialize_in_order() {
        let updates = Updates::new()
            .set("a", json!({"x": [1]}))
            .remove("b")
            .set_raw("c", "null");
        let items = updates.into_wit();
        assert_eq!(items.len(), 3);
        match &items[0] {
            wit::Update::Set(e) => {
                assert_eq!((e.key.as_str(), e.value.as_str()), ("a", r#"{"x":[1]}"#))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(&items[1], wit::Update::Remove(k) if k == "b"));
    }
}
