//! The lifecycles wasmhooks drives over its plugin host: node
//! initialization (download, placement, engine), the reference trainer (an
//! MLP on a real data set, the embedded reference for one machine), the
//! request path of LLM serving, and job bundles. Each does real work at its default steps and calls the plugins
//! at every phase through [`Hooks`](wasmhooks::Hooks).

pub mod bundle;
mod driver;
mod error;
pub mod job;
pub mod node;
pub mod policy;
pub mod serving;
pub mod training;

pub(crate) use driver::Driver;
pub use driver::{PhaseTime, PhaseTimings};
pub use error::LifecycleError;
