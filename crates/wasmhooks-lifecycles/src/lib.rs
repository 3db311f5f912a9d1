//! The lifecycles wasmhooks drives over its plugin host: node
//! initialization (download, placement, engine), the reference trainer (an
//! MLP on a real data set, the embedded reference for one machine) and job
//! bundles. Each does real work at its default steps and calls the plugins
//! at every phase through [`Hooks`](wasmhooks::Hooks).

mod error;
pub mod job;
pub mod node;
mod timing;
pub mod training;

pub use error::LifecycleError;
pub(crate) use timing::Driver;
pub use timing::{PhaseTime, PhaseTimings};
