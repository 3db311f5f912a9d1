//! Write wasmhooks plugins in Rust.
//!
//! A plugin is a type with a `Default` value that implements [`Plugin`], and
//! one [`export_plugin!`] line. The SDK keeps one instance of the type for
//! the life of the plugin instance, so fields are state that persists from
//! phase to phase.
//!
//! ```
//! use wasmhooks_sdk::{Data, Error, Manifest, Plugin, Updates};
//!
//! #[derive(Default)]
//! struct ForceDownload;
//!
//! impl Plugin for ForceDownload {
//!     fn manifest() -> Manifest {
//!         Manifest::new("force-download", "0.1.0")
//!             .phases(["pre_download"])
//!             .reads_nothing()
//!     }
//!
//!     fn on_phase(&mut self, _phase: &str, _data: &Data) -> Result<Updates, Error> {
//!         Ok(Updates::new()
//!             .set("local_node_download_model", "MODEL_AND_TOKENIZER")
//!             .set("worker_node_download_model", "MODEL_AND_TOKENIZER"))
//!     }
//! }
//!
//! // In the plugin crate (a `cdylib` built for wasm32-wasip2):
//! // wasmhooks_sdk::export_plugin!(ForceDownload);
//! ```
//!
//! Build with `cargo build --target wasm32-wasip2 --release`; the `.wasm` in
//! `target/wasm32-wasip2/release/` is the component to ship. It targets
//! contract 0.3.0 (`wit/v0.3.0`); state that must outlive an instance (a
//! budget shared by every request) goes in [`kv`].

extern crate self as wasmhooks_sdk;

mod data;
pub mod keys;
pub mod kv;
pub mod log;
mod manifest;

pub use data::{Data, Updates};
pub use manifest::Manifest;
pub use serde_json::{self, Value, json};

/// Generated bindings of the `wasmhooks:plugin` world. Public for the
/// export macro and for authors who want the raw interface.
#[doc(hidden)]
#[allow(unsafe_code, missing_docs, unused_qualifications, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit/v0.3.0",
        world: "plugin",
        pub_export_macro: true,
        export_macro_name: "__export_plugin_world",
        default_bindings_module: "::wasmhooks_sdk::bindings",
        runtime_path: "::wasmhooks_sdk::__private::wit_bindgen::rt",
    });
}

/// Why a callback failed. The host reports the message with the plugin's
/// name and phase, and leaves the data map as it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    message: String,
}

impl Error {
    /// An error with this message.
    pub fn new(message: impl std::fmt::Display) -> Self {
        Error {
            message: message.to_string(),
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Self {
        Error::new(message)
    }
}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Error { message }
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::new(format!("JSON: {e}"))
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::new(format!("I/O: {e}"))
    }
}

/// A callback plugin. Only `manifest` and `on_phase` are required.
pub trait Plugin: Default + 'static {
    /// Describes the plugin: its name (the operator allows it under this
    /// name), the phases it wants, its priority and the keys it reads.
    fn manifest() -> Manifest;

    /// Called once per job before any phase, with the job's config and this
    /// plugin's own config (`null` when the job gives none).
    fn init(&mut self, job_config: &Value, plugin_config: &Value) -> Result<(), Error> {
        let _ = (job_config, plugin_config);
        Ok(())
    }

    /// The keys to read, when the config decides them (the metric a plugin
    /// monitors, say); called right after `init`. They replace the
    /// manifest's `reads`, so a plugin whose keys come from its config is
    /// not handed the whole map at every call. `None` keeps the manifest's.
    fn reads(&self) -> Option<Vec<String>> {
        None
    }

    /// Called at each subscribed phase with the keys the plugin reads.
    fn on_phase(&mut self, phase: &str, data: &Data) -> Result<Updates, Error>;

    /// The plugin's state to save with a checkpoint; `None` if it keeps none.
    fn save_state(&self) -> Option<Value> {
        None
    }

    /// Restores what `save_state` returned, when a job resumes.
    fn load_state(&mut self, state: Value) -> Result<(), Error> {
        let _ = state;
        Ok(())
    }
}

/// Exports a [`Plugin`] type as the component's `wasmhooks:plugin/hooks`.
/// Use it once, in the plugin crate's root.
#[macro_export]
macro_rules! export_plugin {
    ($ty:ty) => {
        const _: () = {
            struct Adapter;

            impl $crate::bindings::exports::wasmhooks::plugin::hooks::Guest for Adapter {
                fn describe() -> $crate::bindings::wasmhooks::plugin::types::Manifest {
                    $crate::__private::describe::<$ty>()
                }

                fn init(
                    job_config: ::std::string::String,
                    plugin_config: ::std::string::String,
                ) -> ::core::result::Result<
                    ::core::option::Option<::std::vec::Vec<::std::string::String>>,
                    $crate::bindings::wasmhooks::plugin::types::Failure,
                > {
                    $crate::__private::init::<$ty>(&job_config, &plugin_config)
                }

                fn on_phase(
                    phase: $crate::bindings::wasmhooks::plugin::types::Phase,
                    data: $crate::bindings::wasmhooks::plugin::types::Data,
                ) -> ::core::result::Result<
                    ::std::vec::Vec<$crate::bindings::wasmhooks::plugin::types::Update>,
                    $crate::bindings::wasmhooks::plugin::types::Failure,
                > {
                    $crate::__private::on_phase::<$ty>(phase, data)
                }

                fn save_state() -> ::core::option::Option<::std::string::String> {
                    $crate::__private::save_state::<$ty>()
                }

                fn load_state(
                    state: ::std::string::String,
                ) -> ::core::result::Result<(), $crate::bindings::wasmhooks::plugin::types::Failure>
                {
                    $crate::__private::load_state::<$ty>(&state)
                }
            }

    $crate::bindings::__export_plugin_world!(Adapter with_types_in $crate::bindings);
        };
    };
}

/// What the export macro expands to calls; not part of the API.
#[doc(hidden)]
pub mod __private {
    use std::any::Any;
    use std::cell::{OnceCell, RefCell};
    use std::rc::Rc;

    use crate::bindings::wasmhooks::plugin::types as wit;
    use crate::data::Reads;
    use crate::{Data, Error, Plugin, Value};

    pub use wit_bindgen;

    thread_local! {
        // One plugin per component, so one slot: the plugin's value.
        static STATE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
        // What its manifest lists, which the host refers to by position.
        static DECLARED: OnceCell<Declared> = const { OnceCell::new() };
    }

    fn with<T: Plugin, R>(f: impl FnOnce(&mut T) -> R) -> R {
        STATE.with(|slot| {
            let mut slot = slot.borrow_mut();
            let state = slot.get_or_insert_with(|| Box::new(T::default()));
            let state = state
                .downcast_mut::<T>()
                .expect("one plugin type per component");
            f(state)
        })
    }

    fn failure(e: Error) -> wit::Failure {
        wit::Failure { message: e.message }
    }

    fn parse(what: &str, text: &str) -> Result<Value, wit::Failure> {
        serde_json::from_str(text).map_err(|e| wit::Failure {
            message: format!("the host passed invalid JSON as {what}: {e}"),
        })
    }

    pub fn describe<T: Plugin>() -> wit::Manifest {
        T::manifest().into_wit()
    }

    pub fn init<T: Plugin>(job: &str, config: &str) -> Result<Option<Vec<String>>, wit::Failure> {
        let (job, config) = (parse("job config", job)?, parse("plugin config", config)?);
        let reads = with::<T, _>(|p| p.init(&job, &config).map(|()| p.reads())).map_err(failure)?;
        // Values will follow these keys' order.
        if let Some(keys) = &reads {
            DECLARED.with(|declared| {
                let _ = declared.set(Declared::new::<T>(Some(keys.clone())));
            });
        }
        Ok(reads)
    }

    /// The manifest's phases and the keys read (the manifest's, or those
    /// `init` named), read once.
    struct Declared {
        phases: Vec<String>,
        reads: Rc<Reads>,
    }

    impl Declared {
        fn new<T: Plugin>(reads: Option<Vec<String>>) -> Self {
            let manifest = T::manifest().into_wit();
            let reads = reads.or(manifest.reads).unwrap_or_default();
            Declared {
                phases: manifest.phases,
                reads: Rc::new(Reads::new(reads)),
            }
        }
    }

    pub fn on_phase<T: Plugin>(
        phase: wit::Phase,
        data: wit::Data,
    ) -> Result<Vec<wit::Update>, wit::Failure> {
        DECLARED.with(|declared| {
            let declared = declared.get_or_init(|| Declared::new::<T>(None));
            let phase = match &phase {
                wit::Phase::Named(name) => name.as_str(),
                wit::Phase::Listed(i) => declared.phases.get(*i as usize).ok_or_else(|| {
                    failure(Error::new(format!(
                        "the host passed phase #{i}, past the manifest's list"
                    )))
                })?,
            };
            let data = Data::from_wit(declared.reads.clone(), data).map_err(failure)?;
            let updates = with::<T, _>(|p| p.on_phase(phase, &data)).map_err(failure)?;
            Ok(updates.into_wit())
        })
    }

    pub fn save_state<T: Plugin>() -> Option<String> {
        with::<T, _>(|p| p.save_state()).map(|v| v.to_string())
    }

    pub fn load_state<T: Plugin>(state: &str) -> Result<(), wit::Failure> {
        let state = parse("state", state)?;
        with::<T, _>(|p| p.load_state(state)).map_err(failure)
    }
}
