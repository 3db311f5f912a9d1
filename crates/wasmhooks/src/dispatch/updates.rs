//! Checking a call's updates before any is applied: keys, grants, JSON and
//! size. All or nothing, so a bad update cannot leave half a change behind.

use serde_json::Value;

use crate::bindings::{Incoming, Update};
use crate::error::{Cause, TypeMismatch};
use crate::policy::Grants;

use crate::manifest::MAX_KEY;
use crate::schema::{KeySpec, schema};
use crate::text::clean;

/// A checked change to the data map.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Set a key to a value.
    Set(String, Value),
    /// Remove a key.
    Remove(String),
}

impl Change {
    /// The key it changes.
    pub fn key(&self) -> &str {
        match self {
            Change::Set(key, _) | Change::Remove(key) => key,
        }
    }
}

/// Checks every update of `plugin` against its write `grants` and the most
/// bytes one call may update; the first problem fails the whole call.
/// Returns the changes with the bytes each set takes (key and JSON text),
/// which count against the job's data-map limit.
pub(crate) fn check(
    updates: Vec<Update>,
    plugin: &str,
    grants: &Grants,
    max_update_bytes: usize,
) -> Result<(Vec<Change>, Vec<usize>), Cause> {
    let sizes: Vec<usize> = updates
        .iter()
        .map(|u| match u {
            Update::Set(key, value) => key.len() + value.bytes(),
            Update::Remove(_) => 0,
        })
        .collect();
    let size: usize = updates
        .iter()
        .zip(&sizes)
        .map(|(u, size)| match u {
            Update::Set(..) => *size,
            Update::Remove(key) => key.len(),
        })
        .sum();
    if size > max_update_bytes {
        return Err(Cause::TooLarge {
            size,
            limit: max_update_bytes,
        });
    }
    let changes = updates
        .into_iter()
        .map(|update| {
            let key = match &update {
                Update::Set(key, _) | Update::Remove(key) => key,
            };
            check_key(key)?;
            let spec = schema().key(key);
            // A plugin's own namespace (`<name>.anything`) needs no grant.
            let own = key
                .strip_prefix(plugin)
                .is_some_and(|rest| rest.starts_with('.'));
            if !own && !grants.may_write(key) {
                return Err(Cause::ForbiddenKey {
                    key: clean(key, MAX_KEY),
                    allowed: grants.describe_write(),
                });
            }
            if spec.is_some_and(KeySpec::host_only) && !grants.names(key) {
                return Err(Cause::HostKey {
                    key: clean(key, MAX_KEY),
                });
            }
            Ok(match update {
                Update::Set(key, incoming) => {
                    let value = match incoming {
                        Incoming::Value(value) => value,
                        Incoming::Json(text) => {
                            crate::json::parse_exact(&text).map_err(|reason| {
                                Cause::InvalidJson {
                                    key: clean(&key, MAX_KEY),
                                    reason,
                                }
                            })?
                        }
                        Incoming::NotFinite(f) => {
                            return Err(Cause::InvalidJson {
                                key: clean(&key, MAX_KEY),
                                reason: format!("{f} is not a number JSON can hold"),
                            });
                        }
                    };
                    if let Some(spec) = spec {
                        spec.check(&value).map_err(|found| {
                            Cause::WrongType(Box::new(TypeMismatch {
                                key: key.clone(),
                                expected: spec.type_name(),
                                found,
                            }))
                        })?;
                    }
                    Change::Set(key, value)
                }
                Update::Remove(k) => Change::Remove(k),
            })
        })
        .collect::<Result<Vec<_>, Cause>>()?;
    Ok((changes, sizes))
}

fn check_key(key: &str) -> Result<(), Cause> {
    let reason = if key.is_empty() {
        "keys may not be empty"
    } else if key.len() > MAX_KEY {
        "keys may be at most 256 bytes"
    } else if key.chars().any(char::is_control) {
        "keys may not hold control characters"
    } else {
        return Ok(());
    };
    Err(Cause::InvalidKey {
        key: clean(key, 64),
        reason: reason.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PluginPolicy;

    fn check_as(
        updates: Vec<Update>,
        policy: &PluginPolicy,
    ) -> Result<(Vec<Change>, Vec<usize>), Cause> {
        check(
            updates,
            &policy.name,
            &policy.grants,
            policy.limits.max_update_bytes,
        )
    }

    fn set(key: &str, value: &str) -> Update {
        Update::Set(key.into(), Incoming::Json(value.into()))
    }

    fn policy() -> PluginPolicy {
        PluginPolicy::new("p", "00".repeat(32)).allow_write(["a", "m.*"])
    }

    #[test]
    fn accepts_granted_keys() {
        let (changes, sizes) = check_as(
            vec![
                set("a", "{\"x\": 1}"),
                set("m.loss", "0.5"),
                Update::Remove("m.old".into()),
            ],
            &policy(),
        )
        .unwrap();
        assert_eq!(changes.len(), 3);
        assert_eq!(sizes, [1 + 8, 6 + 3, 0]);
        assert_eq!(
            changes[0],
            Change::Set("a".into(), serde_json::json!({"x": 1}))
        );
    }

    #[test]
    fn one_bad_update_fails_all() {
        let err = check_as(vec![set("a", "1"), set("b", "2")], &policy()).unwrap_err();
        assert!(
            matches!(err, Cause::ForbiddenKey { ref key, .. } if key == "b"),
            "{err}"
        );
        let err = check_as(vec![Update::Remove("skip_default".into())], &policy()).unwrap_err();
        assert!(matches!(err, Cause::ForbiddenKey { .. }));
        let err = check_as(vec![set("a", "{nope")], &policy()).unwrap_err();
        assert!(matches!(err, Cause::InvalidJson { .. }), "{err}");
        let err = check_as(vec![set("", "1")], &policy()).unwrap_err();
        assert!(matches!(err, Cause::InvalidKey { .. }));
        let err = check_as(vec![set("m.\n", "1")], &policy()).unwrap_err();
        assert!(matches!(err, Cause::InvalidKey { .. }));
        let big = "1".repeat(2 << 20);
        let err = check_as(vec![set("a", &big)], &policy()).unwrap_err();
        assert!(matches!(err, Cause::TooLarge { .. }));
        // A typed value is held to the same bounds and checks.
        let text = Incoming::Value(Value::String(big));
        let err = check_as(vec![Update::Set("a".into(), text)], &policy()).unwrap_err();
        assert!(matches!(err, Cause::TooLarge { .. }));
        let nan = Update::Set("a".into(), Incoming::NotFinite(f64::NAN));
        let err = check_as(vec![nan], &policy()).unwrap_err();
        assert!(err.to_string().contains("NaN"), "{err}");
    }

    /// No list of updates a plugin returns panics the check, and what it
    /// accepts is exactly what the grants allow.
    #[test]
    fn the_key_schema_types_known_keys_and_keeps_host_keys_to_exact_grants() {
        let all = PluginPolicy::new("p", "00".repeat(32)).allow_write(["*"]);
        let err = check_as(vec![set("should_training_stop", "\"yes\"")], &all).unwrap_err();
        assert_eq!(
            err.to_string(),
            "set 'should_training_stop' to the string \"yes\", but should_training_stop \
             must be a bool (the key schema)"
        );
        assert!(check_as(vec![set("should_training_stop", "true")], &all).is_ok());
        assert!(check_as(vec![set("unlisted", "\"anything\"")], &all).is_ok());
        // `rank` is the host's: `*` does not cover it, naming it does.
        let err = check_as(vec![set("rank", "3")], &all).unwrap_err();
        assert!(
            matches!(err, Cause::HostKey { ref key } if key == "rank"),
            "{err}"
        );
        assert!(check_as(vec![Update::Remove("rank".into())], &all).is_err());
        let named = PluginPolicy::new("p", "00".repeat(32)).allow_write(["rank"]);
        assert!(check_as(vec![set("rank", "3")], &named).is_ok());
        // Its own namespace needs no grant; another plugin's does.
        let none = PluginPolicy::new("p", "00".repeat(32));
        assert!(check_as(vec![set("p.best", "1")], &none).is_ok());
        assert!(check_as(vec![set("px.best", "1")], &none).is_err());
        assert!(check_as(vec![set("q.best", "1")], &none).is_err());
    }

    #[test]
    fn no_update_list_panics_the_check() {
        use proptest::prelude::*;
        let update = prop_oneof![
            (
                "\\PC{0,12}|[a-z.]{0,300}|m\\.[\\x00-\\x1f]",
                "\\PC{0,16}|[0-9]{1,400}|\\{\\}|\\[1,"
            )
                .prop_map(|(k, v)| set(&k, &v)),
            "\\PC{0,12}".prop_map(Update::Remove),
        ];
        let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
            cases: 512,
            failure_persistence: None,
            ..Default::default()
        });
        runner
            .run(&proptest::collection::vec(update, 0..16), |updates| {
                if let Ok((changes, sizes)) = check_as(updates, &policy()) {
                    prop_assert_eq!(changes.len(), sizes.len());
                    for c in &changes {
                        // Granted, or in the plugin's own namespace.
                        let key = c.key();
                        prop_assert!(key == "a" || key.starts_with("m.") || key.starts_with("p."));
                    }
                }
                Ok(())
            })
            .unwrap();
    }
}
