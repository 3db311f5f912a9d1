//! The plugin interface, one module per version of the `wasmhooks:plugin`
//! WIT package this host links. Each released version is frozen in
//! `wit/v<version>/` and keeps its own generated bindings, its own `log`
//! host and its own conversions here, so a plugin built against it runs
//! unchanged on later hosts. The rest of the crate speaks in the host's own
//! terms ([`Input`], [`Update`], `Manifest`), so a new version changes this
//! module and nothing else.

/// The parts of the interface no version has changed yet (`log`, the
/// manifest, `init` up to what it returns, the state): written once,
/// expanded in each version's module over its own generated types.
macro_rules! unchanged_since_0_1_0 {
    () => {
        impl types::Host for crate::capabilities::log::PluginLog {}

        impl log::Host for crate::capabilities::log::PluginLog {
            fn log(&mut self, level: types::Level, message: String) {
                use crate::capabilities::log::Level;
                self.record(
                    match level {
                        types::Level::Trace => Level::Trace,
                        types::Level::Debug => Level::Debug,
                        types::Level::Info => Level::Info,
                        types::Level::Warn => Level::Warn,
                        types::Level::Error => Level::Error,
                    },
                    message,
                );
            }
        }

        pub(super) fn add_log_to_linker<T: crate::capabilities::CapabilityView + 'static>(
            linker: &mut wasmtime::component::Linker<T>,
        ) -> wasmtime::Result<()> {
            use crate::capabilities::log::PluginLog;
            use wasmtime::component::HasSelf;
            fn get<T: crate::capabilities::CapabilityView>(state: &mut T) -> &mut PluginLog {
                &mut state.capabilities().log
            }
            log::add_to_linker::<_, HasSelf<PluginLog>>(linker, get::<T>)?;
            types::add_to_linker::<_, HasSelf<PluginLog>>(linker, get::<T>)
        }

        pub(super) fn describe(
            p: &Plugin,
            store: &mut Store<PluginState>,
        ) -> wasmtime::Result<crate::manifest::Manifest> {
            let m = p.wasmhooks_plugin_hooks().call_describe(store)?;
            Ok(crate::manifest::Manifest {
                name: m.name,
                version: m.version,
                phases: m.phases,
                order: m.order,
                reads: m.reads,
                observe: m.observe,
                rank_zero_only: m.rank_zero_only,
            })
        }

        /// `init`: the keys it names, where the version lets it name any.
        pub(super) fn init(
            p: &Plugin,
            store: &mut Store<PluginState>,
            job: &str,
            config: &str,
        ) -> super::CallResult<Option<Vec<String>>> {
            // The generated signature takes the WIT `json` alias as `&String`.
            let (job, config) = (job.to_owned(), config.to_owned());
            Ok(p.wasmhooks_plugin_hooks()
                .call_init(store, &job, &config)?
                .map(super::InitReturns::reads)
                .map_err(|f| f.message))
        }

        pub(super) fn save_state(
            p: &Plugin,
            store: &mut Store<PluginState>,
        ) -> wasmtime::Result<Option<String>> {
            p.wasmhooks_plugin_hooks().call_save_state(store)
        }

        pub(super) fn load_state(
            p: &Plugin,
            store: &mut Store<PluginState>,
            state: &str,
        ) -> super::CallResult<()> {
            Ok(p.wasmhooks_plugin_hooks()
                .call_load_state(store, &state.to_owned())?
                .map_err(|f| f.message))
        }
    };
}
use unchanged_since_0_1_0;

/// How 0.2.0 on crosses the data map (typed scalars, keys by position):
/// written once, expanded in each such version's module over its own
/// generated types.
macro_rules! typed_since_0_2_0 {
    () => {
        use serde_json::{Number, Value};

        use super::{CallResult, Incoming, Input, Update};

        /// A data-map value as it crosses: scalars typed, the rest as JSON text.
        fn lower(value: &Value) -> types::Value {
            match value {
                Value::Null => types::Value::Null,
                Value::Bool(b) => types::Value::Boolean(*b),
                Value::Number(n) => match (n.as_i64(), n.is_f64()) {
                    (Some(i), _) => types::Value::Integer(i),
                    (None, true) => types::Value::Float(n.as_f64().unwrap_or_default()),
                    // A `u64` past `i64::MAX`: exact only as text.
                    (None, false) => types::Value::Json(n.to_string()),
                },
                Value::String(s) => types::Value::Text(s.clone()),
                Value::Array(_) | Value::Object(_) => types::Value::Json(value.to_string()),
            }
        }

        /// A value a plugin returned, for the host to check.
        fn lift(value: types::Value) -> Incoming {
            match value {
                types::Value::Null => Incoming::Value(Value::Null),
                types::Value::Boolean(b) => Incoming::Value(Value::Bool(b)),
                types::Value::Integer(i) => Incoming::Value(Value::Number(i.into())),
                types::Value::Float(f) => match Number::from_f64(f) {
                    Some(n) => Incoming::Value(Value::Number(n)),
                    None => Incoming::NotFinite(f),
                },
                types::Value::Text(s) => Incoming::Value(Value::String(s)),
                types::Value::Json(text) => Incoming::Json(text),
            }
        }

        pub(super) fn on_phase(
            p: &Plugin,
            store: &mut Store<PluginState>,
            phases: &[String],
            phase: &str,
            input: &Input,
        ) -> CallResult<Vec<Update>> {
            let listed = phases.iter().position(|p| p == phase);
            let phase = match listed.and_then(|i| u32::try_from(i).ok()) {
                Some(i) => types::Phase::Listed(i),
                None => types::Phase::Named(phase.to_owned()),
            };
            let data = match input {
                Input::Listed(values) => {
                    types::Data::Listed(values.iter().map(|v| v.as_ref().map(lower)).collect())
                }
                Input::Whole(all) => types::Data::Whole(
                    all.iter()
                        .map(|(key, value)| types::Entry {
                            key: key.clone(),
                            value: lower(value),
                        })
                        .collect(),
                ),
            };
            let result = p
                .wasmhooks_plugin_hooks()
                .call_on_phase(store, &phase, &data)?;
            Ok(result
                .map(|updates| {
                    updates
                        .into_iter()
                        .map(|u| match u {
                            types::Update::Set(e) => Update::Set(e.key, lift(e.value)),
                            types::Update::Remove(key) => Update::Remove(key),
                        })
                        .collect()
                })
                .map_err(|f| f.message))
        }
    };
}
use typed_since_0_2_0;

mod shapes;
mod v0_1_0;
mod v0_2_0;
mod v0_3_0;

use serde_json::Value;
use wasmtime::Store;
use wasmtime::component::{Component, InstancePre, Linker};

use crate::manifest::Manifest;
use crate::sandbox::PluginState;

/// The newest version: the one the SDKs in this repository build against.
pub(crate) const NEWEST: &str = v0_3_0::VERSION;

/// Every version this host runs plugins of, oldest first.
pub(crate) const SUPPORTED: &[&str] = &[v0_1_0::VERSION, v0_2_0::VERSION, v0_3_0::VERSION];

/// The interface a plugin exports, without its version.
pub(crate) const HOOKS: &str = "wasmhooks:plugin/hooks";

/// The version of the hooks interface a component exports, if it exports
/// one at all: what it was built against.
pub(crate) fn targeted_version(component: &Component, engine: &wasmtime::Engine) -> Option<String> {
    component
        .component_type()
        .exports(engine)
        .find_map(|(name, _)| Some(name.strip_prefix(HOOKS)?.strip_prefix('@')?.to_owned()))
}

/// Adds every version's `log` import to the plugin linker, for the `log`
/// capability. The versions' interfaces have distinct names, so one linker
/// serves them all.
pub(crate) fn add_log_to_linker<T: crate::capabilities::CapabilityView + 'static>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    v0_1_0::add_log_to_linker(linker)?;
    v0_2_0::add_log_to_linker(linker)?;
    v0_3_0::add_log_to_linker(linker)
}

/// Adds every version's `kv` import (0.3.0 on) to the plugin linker, for
/// the `kv` capability. A plugin of such a version that uses none of it
/// does not import it (wit-component drops unused imports), and links all
/// the same.
pub(crate) fn add_kv_to_linker<T: crate::capabilities::CapabilityView + 'static>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    v0_3_0::add_kv_to_linker(linker)
}

/// What a plugin is called with at a phase, in the host's terms.
pub(crate) enum Input {
    /// The plugin lists the keys it reads: one value per listed key, in
    /// the manifest's order, `None` where the map lacks it.
    Listed(Vec<Option<Value>>),
    /// The plugin reads the whole map.
    Whole(Vec<(String, Value)>),
}

impl Input {
    /// About how many bytes it holds, for bounding the observer's queue.
    pub(crate) fn bytes(&self) -> usize {
        match self {
            Input::Listed(values) => values.iter().flatten().map(value_bytes).sum(),
            Input::Whole(entries) => entries.iter().map(|(k, v)| k.len() + value_bytes(v)).sum(),
        }
    }
}

/// About how many bytes a value takes as JSON text, without writing it
/// (and without recursion: a value may nest deeply).
pub(crate) fn value_bytes(value: &Value) -> usize {
    let mut total = 0;
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        total += match v {
            Value::Null | Value::Bool(_) => 5,
            Value::Number(_) => 8,
            Value::String(s) => s.len() + 2,
            Value::Array(items) => {
                stack.extend(items);
                2 + items.len()
            }
            Value::Object(map) => {
                stack.extend(map.values());
                map.keys().map(|k| k.len() + 4).sum::<usize>() + 2
            }
        };
    }
    total
}

/// A change a plugin asked for, before the host checks it.
#[derive(Debug)]
pub(crate) enum Update {
    Set(String, Incoming),
    Remove(String),
}

/// A value as a plugin returned it.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// JSON text, still to be parsed.
    Json(String),
    /// A scalar that crossed typed.
    Value(Value),
    /// A float JSON cannot hold (NaN or an infinity).
    NotFinite(f64),
}

impl Incoming {
    /// The bytes it counts for against the update and data-map limits.
    pub(crate) fn bytes(&self) -> usize {
        match self {
            Incoming::Json(text) => text.len(),
            Incoming::Value(v) => value_bytes(v),
            Incoming::NotFinite(_) => 8,
        }
    }
}

/// What `init` returns in each version, as the keys the plugin reads
/// (`None`: the manifest's stand).
pub(crate) trait InitReturns {
    fn reads(self) -> Option<Vec<String>>;
}

/// 0.1.0: nothing.
impl InitReturns for () {
    fn reads(self) -> Option<Vec<String>> {
        None
    }
}

/// 0.2.0 on: the keys, if the config decided them.
impl InitReturns for Option<Vec<String>> {
    fn reads(self) -> Option<Vec<String>> {
        self
    }
}

/// A compiled plugin matched against the version of the world it targets.
pub(crate) enum Pre {
    V0_1_0(v0_1_0::PluginPre<PluginState>),
    V0_2_0(v0_2_0::PluginPre<PluginState>),
    V0_3_0(v0_3_0::PluginPre<PluginState>),
}

/// A live instance's exports, as bound for its version.
pub(crate) enum Bound {
    V0_1_0(v0_1_0::Plugin),
    V0_2_0(v0_2_0::Plugin),
    V0_3_0(v0_3_0::Plugin),
}

impl Pre {
    /// Matches an instantiable component against the world of the version
    /// it targets. The caller has refused versions this host does not link
    /// (`SUPPORTED`); a component that names none is matched against the
    /// newest, so the error says what it lacks.
    pub(crate) fn new(
        instance: InstancePre<PluginState>,
        version: Option<&str>,
    ) -> wasmtime::Result<Self> {
        let (name, shapes) = match version {
            Some(v0_1_0::VERSION) => (v0_1_0::VERSION, v0_1_0::SHAPES),
            Some(v0_2_0::VERSION) => (v0_2_0::VERSION, v0_2_0::SHAPES),
            _ => (v0_3_0::VERSION, v0_3_0::SHAPES),
        };
        shapes::check(
            instance.component(),
            instance.engine(),
            &format!("{HOOKS}@{name}"),
            shapes,
        )
        .map_err(wasmtime::Error::msg)?;
        Ok(match version {
            Some(v0_1_0::VERSION) => Pre::V0_1_0(v0_1_0::PluginPre::new(instance)?),
            Some(v0_2_0::VERSION) => Pre::V0_2_0(v0_2_0::PluginPre::new(instance)?),
            _ => Pre::V0_3_0(v0_3_0::PluginPre::new(instance)?),
        })
    }

    pub(crate) fn instantiate(&self, store: &mut Store<PluginState>) -> wasmtime::Result<Bound> {
        Ok(match self {
            Pre::V0_1_0(pre) => Bound::V0_1_0(pre.instantiate(store)?),
            Pre::V0_2_0(pre) => Bound::V0_2_0(pre.instantiate(store)?),
            Pre::V0_3_0(pre) => Bound::V0_3_0(pre.instantiate(store)?),
        })
    }
}

/// A call's result: a trap (outer), or the plugin's own failure message.
pub(crate) type CallResult<T> = wasmtime::Result<Result<T, String>>;

impl Bound {
    pub(crate) fn describe(&self, store: &mut Store<PluginState>) -> wasmtime::Result<Manifest> {
        match self {
            Bound::V0_1_0(p) => v0_1_0::describe(p, store),
            Bound::V0_2_0(p) => v0_2_0::describe(p, store),
            Bound::V0_3_0(p) => v0_3_0::describe(p, store),
        }
    }

    /// Returns the keys the plugin reads, if its config decided them
    /// (0.2.0 on; `None` keeps the manifest's).
    pub(crate) fn init(
        &self,
        store: &mut Store<PluginState>,
        job: &str,
        config: &str,
    ) -> CallResult<Option<Vec<String>>> {
        match self {
            Bound::V0_1_0(p) => v0_1_0::init(p, store, job, config),
            Bound::V0_2_0(p) => v0_2_0::init(p, store, job, config),
            Bound::V0_3_0(p) => v0_3_0::init(p, store, job, config),
        }
    }

    /// `manifest` is the plugin's own, whose lists (phases, and the keys
    /// `Input::Listed` follows) a version may refer to by position.
    pub(crate) fn on_phase(
        &self,
        store: &mut Store<PluginState>,
        manifest: &Manifest,
        phase: &str,
        input: &Input,
    ) -> CallResult<Vec<Update>> {
        match self {
            Bound::V0_1_0(p) => v0_1_0::on_phase(p, store, phase, manifest.reads.as_deref(), input),
            Bound::V0_2_0(p) => v0_2_0::on_phase(p, store, &manifest.phases, phase, input),
            Bound::V0_3_0(p) => v0_3_0::on_phase(p, store, &manifest.phases, phase, input),
        }
    }

    pub(crate) fn save_state(
        &self,
        store: &mut Store<PluginState>,
    ) -> wasmtime::Result<Option<String>> {
        match self {
            Bound::V0_1_0(p) => v0_1_0::save_state(p, store),
            Bound::V0_2_0(p) => v0_2_0::save_state(p, store),
            Bound::V0_3_0(p) => v0_3_0::save_state(p, store),
        }
    }

    pub(crate) fn load_state(&self, store: &mut Store<PluginState>, state: &str) -> CallResult<()> {
        match self {
            Bound::V0_1_0(p) => v0_1_0::load_state(p, store, state),
            Bound::V0_2_0(p) => v0_2_0::load_state(p, store, state),
            Bound::V0_3_0(p) => v0_3_0::load_state(p, store, state),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn each_version_constant_matches_its_frozen_wit() {
        for (version, wit) in [
            (
                super::v0_1_0::VERSION,
                include_str!("../../../wit/v0.1.0/plugin.wit"),
            ),
            (
                super::v0_2_0::VERSION,
                include_str!("../../../wit/v0.2.0/plugin.wit"),
            ),
            (
                super::v0_3_0::VERSION,
                include_str!("../../../wit/v0.3.0/plugin.wit"),
            ),
        ] {
            let package = format!("package wasmhooks:plugin@{version};");
            assert!(wit.lines().any(|l| l.trim() == package), "{package}");
        }
        assert_eq!(super::SUPPORTED.last(), Some(&super::NEWEST));
    }

    #[test]
    fn value_bytes_is_near_the_json_length() {
        let v = serde_json::json!({"a": [1, 2.5, "xyz", null], "bb": {"c": true}});
        let (estimate, real) = (super::value_bytes(&v), v.to_string().len());
        assert!(
            estimate >= real / 2 && estimate <= real * 2,
            "{estimate} vs {real}"
        );
    }
}
