//! Tracker metrics: the numbers plugins publish for the run's trackers
//! (W&B, TensorBoard, MLflow, ...), taken from one event's report.
//!
//! A plugin granted `metrics` or `metrics.*` publishes by setting
//! `metrics.<name>` (a number, or a map of them) or `metrics` itself (a map,
//! as the metrics collector does). Each adapter logs what one event
//! published through its framework's own logging (HF's `Trainer.log`,
//! Lightning's loggers, InstructLab's metric logger), so every tracker the
//! user configured gets it, at the step of the event. The rules live here
//! once so that every adapter names, bounds and refuses alike:
//!
//! - only keys a plugin *set* at this event are published (the host's own
//!   `metrics` at `on_evaluate`, or a value left from an earlier step, is
//!   not logged again);
//! - a name is the key's path below `metrics`, parts joined by `/`
//!   (`metrics.ema.loss` and `metrics = {ema = {loss = …}}` both give
//!   `ema/loss`), of at most [`MAX_NAME`] bytes of `[A-Za-z0-9_./-]`;
//! - values are numbers that cross exactly (an integer beyond 2^53 does not);
//! - a name the key schema gives the training lifecycle (`loss`, `step`,
//!   `eval_loss`, ...) is refused: a plugin adds series, it does not
//!   rewrite the trainer's own;
//! - at most [`MAX_PER_EVENT`] names an event, so a plugin cannot flood a
//!   tracker with series.
//!
//! Whatever is refused is named (plugin, key, why) for the adapter to warn
//! about; nothing refused fails the run.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use wasmhooks::{DataMap, Outcome, PhaseReport};

/// The most names one event may publish.
pub const MAX_PER_EVENT: usize = 64;
/// The longest name, in bytes.
pub const MAX_NAME: usize = 128;
/// The largest integer every smaller one of which a tracker's float holds
/// exactly.
const EXACT: u64 = 1 << 53;

/// What one event published for the trackers.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Published {
    /// Name and value, in the order the plugins set them.
    pub metrics: Vec<(String, f64)>,
    /// What was not logged, each naming the plugin, the key and why.
    pub refused: Vec<String>,
}

impl Published {
    /// Whether nothing was published or refused.
    pub fn is_empty(&self) -> bool {
        self.metrics.is_empty() && self.refused.is_empty()
    }
}

/// The key's name below `metrics`, or `None` for any other key.
fn below(key: &str) -> Option<&str> {
    match key.strip_prefix("metrics") {
        Some("") => Some(""),
        Some(rest) => rest.strip_prefix('.'),
        None => None,
    }
}

/// The tracker metrics the plugins of `report` set in `data` (the map as
/// the event left it).
pub fn published(report: &PhaseReport, data: &DataMap) -> Published {
    // Each metrics key with the last plugin that set it (its value is the
    // one in the map), in the order the keys were first set.
    let mut keys: Vec<&str> = Vec::new();
    let mut setter: BTreeMap<&str, &str> = BTreeMap::new();
    for call in &report.calls {
        if let Outcome::Applied { set, .. } = &call.outcome {
            for key in set.iter().filter(|k| below(k).is_some()) {
                if setter.insert(key, &call.plugin).is_none() {
                    keys.push(key);
                }
            }
        }
    }
    let mut out = Published::default();
    if keys.is_empty() {
        return out;
    }
    let mut names = Collector {
        out: &mut out,
        seen: BTreeSet::new(),
        over: 0,
    };
    for key in keys {
        let Some(value) = data.get(key) else { continue };
        let path = below(key).unwrap_or_default().replace('.', "/");
        names.walk(setter[key], key, path, value);
    }
    if names.over > 0 {
        let over = names.over;
        out.refused.push(format!(
            "{over} more metrics were published at this event than the {MAX_PER_EVENT} a \
             tracker takes from one event; they were dropped"
        ));
    }
    out
}

struct Collector<'a> {
    out: &'a mut Published,
    seen: BTreeSet<String>,
    over: usize,
}

impl Collector<'_> {
    fn refuse(&mut self, plugin: &str, key: &str, why: String) {
        self.out
            .refused
            .push(format!("plugin '{plugin}', key '{key}': {why}"));
    }

    fn walk(&mut self, plugin: &str, key: &str, name: String, value: &Value) {
        match value {
            Value::Object(map) => {
                for (part, value) in map {
                    let name = if name.is_empty() {
                        part.clone()
                    } else {
                        format!("{name}/{part}")
                    };
                    self.walk(plugin, key, name, value);
                }
            }
            Value::Number(n) => self.number(plugin, key, name, n),
            other => {
                let what = match other {
                    Value::Null => "null",
                    Value::Bool(_) => "a bool",
                    Value::String(_) => "a string",
                    _ => "a list",
                };
                self.refuse(
                    plugin,
                    key,
                    format!("metric {name:?} is {what}, not a number"),
                );
            }
        }
    }

    fn number(&mut self, plugin: &str, key: &str, name: String, n: &serde_json::Number) {
        if let Err(why) = check_name(&name) {
            return self.refuse(plugin, key, why);
        }
        let value = match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) if i.unsigned_abs() > EXACT => None,
            (None, Some(u), _) if u > EXACT => None,
            (_, _, Some(f)) if f.is_finite() => Some(f),
            _ => None,
        };
        let Some(value) = value else {
            return self.refuse(
                plugin,
                key,
                format!("metric {name:?} = {n} does not cross exactly as a float"),
            );
        };
        if !self.seen.insert(name.clone()) {
            return self.refuse(
                plugin,
                key,
                format!("metric {name:?} was already published at this event"),
            );
        }
        if self.out.metrics.len() >= MAX_PER_EVENT {
            self.over += 1;
            return;
        }
        self.out.metrics.push((name, value));
    }
}

/// Why `name` cannot be a tracker's name, if it cannot.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a metric needs a name: set `metrics.<name>` or a map under `metrics`".into());
    }
    if name.len() > MAX_NAME {
        return Err(format!(
            "metric name {:?}... is longer than {MAX_NAME} bytes",
            &name[..name.floor_char_boundary(32)]
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-')))
    {
        return Err(format!(
            "metric name {name:?} has {c:?}; names are made of A-Z, a-z, 0-9, _ . / -"
        ));
    }
    if name.split('/').any(str::is_empty) {
        return Err(format!("metric name {name:?} has an empty part"));
    }
    if let Some(spec) = wasmhooks::schema::schema().key(name)
        && spec.lifecycles.iter().any(|l| l == "training")
    {
        return Err(format!(
            "metric name {name:?} is the trainer's own key; a plugin adds series under \
             names of its own"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use wasmhooks::CallReport;

    fn report(calls: &[(&str, &[&str])]) -> PhaseReport {
        PhaseReport {
            phase: "on_log".into(),
            calls: calls
                .iter()
                .map(|(plugin, set)| CallReport {
                    plugin: (*plugin).into(),
                    outcome: Outcome::Applied {
                        set: set.iter().map(|s| (*s).into()).collect(),
                        removed: vec![],
                    },
                    fuel: 0,
                    elapsed: Default::default(),
                })
                .collect(),
        }
    }

    fn map(v: Value) -> DataMap {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn names_are_paths_below_metrics() {
        let data = map(json!({
            "metrics.loss_ema": 0.5,
            "metrics.ema.fast": 1,
            "metrics": {"calls": {"on_log": 3}, "total": 7},
            "loss": 0.9,
            "metricsx": 1,
        }));
        let got = published(
            &report(&[
                (
                    "a",
                    &["metrics.loss_ema", "metrics.ema.fast", "loss", "metricsx"],
                ),
                ("b", &["metrics"]),
            ]),
            &data,
        );
        assert_eq!(
            got.metrics,
            vec![
                ("loss_ema".into(), 0.5),
                ("ema/fast".into(), 1.0),
                ("calls/on_log".into(), 3.0),
                ("total".into(), 7.0),
            ]
        );
        assert!(got.refused.is_empty(), "{:?}", got.refused);
    }

    #[test]
    fn only_what_plugins_set_at_this_event() {
        let data = map(json!({"metrics.old": 1.0, "metrics": {"eval_acc": 0.5}}));
        assert!(published(&report(&[("a", &[])]), &data).is_empty());
    }

    #[test]
    fn refusals_name_the_plugin_and_the_key() {
        let data = map(json!({
            "metrics.loss": 1.0,
            "metrics.text": "hi",
            "metrics.big": 9_007_199_254_740_993_u64,
            "metrics.bad name": 1,
            "metrics.a..b": 1,
            "metrics.ok": 2,
        }));
        let got = published(
            &report(&[(
                "p",
                &[
                    "metrics.loss",
                    "metrics.text",
                    "metrics.big",
                    "metrics.bad name",
                    "metrics.a..b",
                    "metrics.ok",
                ],
            )]),
            &data,
        );
        assert_eq!(got.metrics, vec![("ok".into(), 2.0)]);
        assert_eq!(got.refused.len(), 5, "{:?}", got.refused);
        assert!(
            got.refused
                .iter()
                .all(|r| r.starts_with("plugin 'p', key 'metrics."))
        );
        assert!(got.refused[0].contains("trainer's own"));
        assert!(got.refused[1].contains("a string"));
        assert!(got.refused[2].contains("exactly"));
    }

    #[test]
    fn at_most_so_many_an_event_and_no_name_twice() {
        let many: serde_json::Map<String, Value> =
            (0..100).map(|i| (format!("m{i:03}"), json!(i))).collect();
        let data = map(json!({"metrics": many, "metrics.m000": 5}));
        let got = published(
            &report(&[("a", &["metrics"]), ("b", &["metrics.m000"])]),
            &data,
        );
        assert_eq!(got.metrics.len(), MAX_PER_EVENT);
        assert!(
            got.refused
                .iter()
                .any(|r| r.contains("plugin 'b'") && r.contains("already"))
        );
        assert!(got.refused.last().unwrap().starts_with("36 more metrics"));
    }

    #[test]
    fn the_last_plugin_to_set_a_key_answers_for_it() {
        let data = map(json!({"metrics.x": "oops"}));
        let got = published(
            &report(&[("a", &["metrics.x"]), ("b", &["metrics.x"])]),
            &data,
        );
        assert!(
            got.refused[0].starts_with("plugin 'b'"),
            "{:?}",
            got.refused
        );
    }
}
