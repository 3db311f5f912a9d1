//! Loading an operator config with the tables this crate reads checked as
//! well as the core's: `[engine.NAME]` (node initialization's engines) and
//! `[serving]` (the request path's deadlines, headers and pool) and
//! `[registry."HOST"]` (where plugins are pulled from, and how). The core
//! keeps them for this crate ([`SECTIONS`]); each is parsed and checked
//! here, when the config is loaded, so a mistake in one is refused then,
//! as any other mistake in the config is, and kept with the policy.

use std::path::Path;

use wasmhooks::{Error, Policy};

use crate::node::engine::{self, Engines};
use crate::serving::{self, ServingConfig};

/// The operator config's top-level tables this crate reads.
pub const SECTIONS: &[&str] = &[engine::SECTION, serving::SECTION, wasmhooks_oci::SECTION];

/// Reads an operator config file, with the tables this crate claims
/// ([`SECTIONS`]) checked as well as the core's.
pub fn load_policy(path: impl AsRef<Path>) -> Result<Policy, Error> {
    let path = path.as_ref();
    let policy = Policy::from_file_claiming(path, SECTIONS)?;
    checked(policy, path.display().to_string())
}

/// Parses an operator config (relative folders resolve against `base`),
/// with the tables this crate claims ([`SECTIONS`]) checked as well as the
/// core's.
pub fn parse_policy(text: &str, base: &Path) -> Result<Policy, Error> {
    let policy = Policy::from_toml_str_claiming(text, base, SECTIONS)?;
    checked(policy, "<inline>".into())
}

/// `policy` once its claimed tables are read and checked (and kept with it).
fn checked(policy: Policy, source_name: String) -> Result<Policy, Error> {
    let claimed = Engines::of(&policy)
        .map(drop)
        .and_then(|()| ServingConfig::of(&policy).map(drop))
        .and_then(|()| wasmhooks_oci::Registries::of(&policy).map(drop));
    match claimed {
        Ok(()) => Ok(policy),
        Err(message) => Err(Error::Policy {
            source_name,
            message,
        }),
    }
}
