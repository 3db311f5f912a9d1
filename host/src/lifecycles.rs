//! The lifecycles the host drives: node initialization and training. Each
//! does real work at its default steps and calls the plugins at every
//! phase through [`Hooks`](crate::Hooks).

mod error;
pub mod node;
mod timing;
pub mod training;

pub use error::LifecycleError;
pub(crate) use timing::Driver;
pub use timing::{PhaseTime, PhaseTimings};
