//! One live plugin instance: its store, its bindings, and guarded calls
//! that arm fuel and the deadline, and turn traps into causes.

use std::time::{Duration, Instant};

use serde_json::Value;
use wasmtime::Store;

use crate::bindings;
use crate::error::{Call, CallError, Cause};
use crate::loading::Plugin;
use crate::manifest::Manifest;
use crate::sandbox::{self, EpochTicker, PluginState};
use crate::{Error, policy::PluginPolicy};

/// What one call cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Cost {
    pub(crate) fuel: u64,
    pub(crate) elapsed: Duration,
}

impl Plugin {
    /// Its manifest, from a fresh instance's `describe`, without `init`
    /// (so a plugin that needs a config can be described without one).
    pub fn manifest(&self) -> Result<Manifest, Error> {
        Instance::instantiate(self).map(|instance| instance.manifest)
    }
}

pub(crate) struct Instance {
    pub(crate) plugin: Plugin,
    store: Store<PluginState>,
    hooks: bindings::Bound,
    pub(crate) manifest: Manifest,
    /// Set when a call trapped: the component may not be entered again.
    pub(crate) poisoned: bool,
}

impl Instance {
    /// Instantiates the plugin, reads its manifest and runs `init` (which
    /// may name the keys it reads, now that it knows its config). A restart
    /// passes the first instance's [`Instance::folder_baseline`], so its
    /// quotas go on from there.
    pub(crate) fn start(
        plugin: &Plugin,
        job_config: &str,
        plugin_config: &str,
        folder_baseline: Option<&[u64]>,
    ) -> Result<Self, Error> {
        let mut instance = Self::instantiate(plugin)?;
        if let Some(baseline) = folder_baseline {
            instance
                .store
                .data_mut()
                .capabilities
                .folders
                .resume(baseline);
        }
        let allowed = &plugin.policy().name;
        if &instance.manifest.name != allowed {
            return Err(Error::Manifest {
                name: allowed.clone(),
                reason: format!(
                    "it calls itself '{}', but the operator allowed this file as '{allowed}'",
                    instance.manifest.name
                ),
            });
        }
        let (result, _) = instance.guarded(|h, s| h.init(s, job_config, plugin_config));
        let reads = result
            .and_then(|r| r.map_err(returned))
            .map_err(|cause| instance.error(Call::Init, cause))?;
        // Keys its config decided replace the manifest's, held to the same
        // bounds.
        if let Some(reads) = reads {
            instance.manifest.reads = Some(reads);
            instance
                .manifest
                .validate()
                .map_err(|reason| Error::Manifest {
                    name: allowed.clone(),
                    reason: format!("at init: {reason}"),
                })?;
        }
        Ok(instance)
    }

    /// Instantiates the plugin and reads its manifest, without `init` and
    /// without holding it to the operator's name for it.
    pub(crate) fn instantiate(plugin: &Plugin) -> Result<Self, Error> {
        let policy = plugin.policy();
        let shared = &plugin.inner.shared;
        shared.here()?;
        let _runtime = shared.runtime.as_ref().map(|r| r.enter());
        let mut store = Store::new(
            &shared.engine,
            PluginState::new(&shared.capabilities, policy)?,
        );
        store.limiter(|state| &mut state.memory);
        store.epoch_deadline_trap();
        arm(&mut store, policy, policy.limits.timeout, Instant::now());
        let hooks = plugin.inner.pre.instantiate(&mut store).map_err(|e| {
            let cause = sandbox::classify(&e, store.data(), policy);
            Error::Call(CallError {
                plugin: policy.name.clone(),
                call: Call::Instantiation,
                cause,
            })
        })?;
        let timeout = policy.limits.timeout;
        let (result, _, _) = guarded(&mut store, &hooks, plugin, timeout, |h, s| h.describe(s));
        let describe_error = |cause| {
            Error::Call(CallError {
                plugin: policy.name.clone(),
                call: Call::Describe,
                cause,
            })
        };
        let manifest: Manifest = result.map_err(describe_error)?;
        manifest.validate().map_err(|reason| Error::Manifest {
            name: policy.name.clone(),
            reason,
        })?;
        Ok(Instance {
            plugin: plugin.clone(),
            store,
            hooks,
            manifest,
            poisoned: false,
        })
    }

    pub(crate) fn name(&self) -> &str {
        self.plugin.name()
    }

    /// Bytes of linear memory and tables the instance holds.
    pub(crate) fn memory_used(&self) -> usize {
        self.store.data().memory.used()
    }

    /// The most bytes of linear memory and tables it has held.
    pub(crate) fn memory_peak(&self) -> usize {
        self.store.data().memory.peak()
    }

    /// What its read-write folders held when it started (or the instance
    /// it replaced did).
    pub(crate) fn folder_baseline(&self) -> Vec<u64> {
        self.store.data().capabilities.folders.baseline()
    }

    /// Bytes its read-write folders grew by since it started.
    pub(crate) fn bytes_written(&self) -> u64 {
        self.store.data().capabilities.folders.bytes_written()
    }

    pub(crate) fn error(&self, call: Call, cause: Cause) -> Error {
        Error::Call(CallError {
            plugin: self.name().to_owned(),
            call,
            cause,
        })
    }

    /// Calls `on-phase` with the values of the keys it reads; returns the
    /// updates as it gave them.
    pub(crate) fn on_phase(
        &mut self,
        phase: &str,
        input: &bindings::Input,
    ) -> (Result<Vec<bindings::Update>, Cause>, Cost) {
        let Instance {
            store,
            hooks,
            plugin,
            manifest,
            poisoned,
        } = self;
        let deadline = plugin.policy().phase_deadline();
        let (result, cost, trapped) = guarded(store, hooks, plugin, deadline, |h, s| {
            h.on_phase(s, manifest, phase, input)
        });
        *poisoned |= trapped;
        (result.and_then(|r| r.map_err(returned)), cost)
    }

    /// Calls `save-state`.
    pub(crate) fn save_state(&mut self) -> Result<Option<Value>, Cause> {
        let (result, _) = self.guarded(|h, s| h.save_state(s));
        let limit = self.plugin.policy().limits.max_state_bytes;
        match result? {
            None => Ok(None),
            Some(text) if text.len() > limit => Err(Cause::StateTooLarge {
                size: text.len(),
                limit,
            }),
            Some(text) => {
                crate::json::parse_exact(&text)
                    .map(Some)
                    .map_err(|reason| Cause::InvalidJson {
                        key: "<state>".into(),
                        reason,
                    })
            }
        }
    }

    /// Calls `load-state`.
    pub(crate) fn load_state(&mut self, state: &Value) -> Result<(), Cause> {
        let text = state.to_string();
        let (result, _) = self.guarded(|h, s| h.load_state(s, &text));
        result?.map_err(returned)
    }

    /// Runs one export with fresh fuel and a fresh deadline; a trap
    /// poisons the instance.
    fn guarded<R>(
        &mut self,
        f: impl FnOnce(&bindings::Bound, &mut Store<PluginState>) -> wasmtime::Result<R>,
    ) -> (Result<R, Cause>, Cost) {
        let timeout = self.plugin.policy().limits.timeout;
        let (result, cost, trapped) =
            guarded(&mut self.store, &self.hooks, &self.plugin, timeout, f);
        self.poisoned |= trapped;
        (result, cost)
    }
}

/// Runs one export with fresh fuel and a deadline `timeout` away; says
/// whether it trapped.
fn guarded<R>(
    store: &mut Store<PluginState>,
    hooks: &bindings::Bound,
    plugin: &Plugin,
    timeout: Duration,
    f: impl FnOnce(&bindings::Bound, &mut Store<PluginState>) -> wasmtime::Result<R>,
) -> (Result<R, Cause>, Cost, bool) {
    let policy = plugin.policy();
    // WASI's waits run on the host's own runtime where it has one (a
    // forked child's: `Shared::runtime`).
    let _runtime = plugin.inner.shared.runtime.as_ref().map(|r| r.enter());
    let start = Instant::now();
    arm(store, policy, timeout, start);
    let result = f(hooks, store);
    let cost = Cost {
        fuel: policy.limits.fuel - store.get_fuel().unwrap_or(0),
        elapsed: start.elapsed(),
    };
    match result {
        Err(e) => {
            let cause = match sandbox::classify(&e, store.data(), policy) {
                Cause::Timeout { .. } => Cause::Timeout { timeout },
                cause => cause,
            };
            (Err(cause), cost, true)
        }
        // It returned, but past its deadline (say, from a wait the host cut
        // short, with no epoch check after it): a timeout all the same, and
        // its results are not used.
        Ok(_) if cost.elapsed > timeout => (Err(Cause::Timeout { timeout }), cost, false),
        // What it wrote past a read-write folder's quota fails the call.
        Ok(r) => match store.data_mut().end_call() {
            Ok(()) => (Ok(r), cost, false),
            Err(cause) => (Err(cause), cost, false),
        },
    }
}

/// Gives the store a full tank and a deadline `timeout` away before a call.
fn arm(store: &mut Store<PluginState>, policy: &PluginPolicy, timeout: Duration, now: Instant) {
    store.data_mut().begin_call(now + timeout);
    // Fuel is on in every engine this crate builds, so this cannot fail.
    let _ = store.set_fuel(policy.limits.fuel);
    store.set_epoch_deadline(EpochTicker::ticks(timeout));
}

/// The error a plugin returned, cut and escaped: its every byte is the
/// plugin's to choose, and it goes to logs and reports.
fn returned(message: String) -> Cause {
    Cause::Returned(crate::text::clean(&message, crate::text::MESSAGE))
}
