//! The operator's `[serving]` table: what the request path allows plugins
//! and how long it waits for them.
//!
//! ```toml
//! [serving]
//! timeout_ms = 20                  # each plugin call, at most (caps timeout_ms)
//! tenant_header = "x-tenant-id"    # its value is the `tenant` key
//! headers = ["user-agent"]         # request headers plugins see
//! instances = 2                    # instances of each plugin per replica
//! max_request_kib = 1024           # a request body, at most
//! kv_sync_ms = 50                  # replicas share the kv store this often
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};
use wasmhooks::Policy;

use super::SECTION;

/// Milliseconds a plugin call may take on the request path unless the
/// operator says otherwise: a guard that takes longer costs the user more
/// than it saves.
pub const DEFAULT_TIMEOUT_MS: u64 = 20;
/// Instances of each plugin a replica keeps unless the operator says
/// otherwise: one a core on a small replica.
pub const DEFAULT_INSTANCES: usize = 2;
/// A request body's bytes, at most, unless the operator says otherwise.
pub const DEFAULT_MAX_REQUEST_KIB: usize = 1024;
/// How often a replica shares its plugins' key-value changes with the
/// cluster's store, in milliseconds, unless the operator says otherwise:
/// how stale one replica's view of another's counters may be.
pub const DEFAULT_KV_SYNC_MS: u64 = 50;

/// The largest values: past them a number is a typo.
const MAX_TIMEOUT_MS: u64 = 60_000;
const MAX_INSTANCES: usize = 64;
const MAX_REQUEST_KIB: usize = 64 * 1024;
const MAX_HEADERS: usize = 64;
const MAX_KV_SYNC_MS: u64 = 60_000;

/// The request path's settings, checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServingConfig {
    /// Each plugin call's deadline at most: the operator's per-plugin
    /// `timeout_ms` is capped to it on the request path.
    pub timeout: Duration,
    /// The header whose value is the `tenant` key (lower case).
    pub tenant_header: Option<String>,
    /// The headers plugins see in `headers` (lower case).
    pub headers: Vec<String>,
    /// Instances of each plugin per replica: calls of concurrent requests
    /// run on different instances, never two on one.
    pub instances: usize,
    /// A request body's bytes, at most.
    pub max_request_bytes: usize,
    /// How often a replica on a cluster shares the plugins' key-value
    /// changes with the cluster's store and takes the others'.
    pub kv_sync: Duration,
}

impl Default for ServingConfig {
    fn default() -> Self {
        ServingConfig {
            timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
            tenant_header: None,
            headers: Vec::new(),
            instances: DEFAULT_INSTANCES,
            max_request_bytes: DEFAULT_MAX_REQUEST_KIB << 10,
            kv_sync: Duration::from_millis(DEFAULT_KV_SYNC_MS),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    timeout_ms: Option<u64>,
    tenant_header: Option<String>,
    #[serde(default)]
    headers: Vec<String>,
    instances: Option<usize>,
    max_request_kib: Option<usize>,
    kv_sync_ms: Option<u64>,
}

impl ServingConfig {
    /// The `[serving]` table of `policy`, or the defaults where it has none.
    /// Parsed and checked the first time (when the config is loaded, through
    /// [`crate::policy`]) and kept with the policy.
    pub fn of(policy: &Policy) -> Result<&ServingConfig, String> {
        static DEFAULT: std::sync::LazyLock<ServingConfig> =
            std::sync::LazyLock::new(ServingConfig::default);
        let Some(section) = policy.section(SECTION) else {
            return Ok(&DEFAULT);
        };
        section.get_or_parse(|section| Self::checked(section.deserialize()?))
    }

    fn checked(raw: Raw) -> Result<ServingConfig, String> {
        let fail = |m: String| format!("[serving] {m}");
        let timeout_ms = raw.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
        if !(1..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
            return Err(fail(format!(
                "timeout_ms must be 1 to {MAX_TIMEOUT_MS}, not {timeout_ms}"
            )));
        }
        let instances = raw.instances.unwrap_or(DEFAULT_INSTANCES);
        if !(1..=MAX_INSTANCES).contains(&instances) {
            return Err(fail(format!(
                "instances must be 1 to {MAX_INSTANCES}, not {instances}"
            )));
        }
        let kib = raw.max_request_kib.unwrap_or(DEFAULT_MAX_REQUEST_KIB);
        if !(1..=MAX_REQUEST_KIB).contains(&kib) {
            return Err(fail(format!(
                "max_request_kib must be 1 to {MAX_REQUEST_KIB}, not {kib}"
            )));
        }
        let kv_sync_ms = raw.kv_sync_ms.unwrap_or(DEFAULT_KV_SYNC_MS);
        if !(1..=MAX_KV_SYNC_MS).contains(&kv_sync_ms) {
            return Err(fail(format!(
                "kv_sync_ms must be 1 to {MAX_KV_SYNC_MS}, not {kv_sync_ms}"
            )));
        }
        if raw.headers.len() > MAX_HEADERS {
            return Err(fail(format!("headers lists at most {MAX_HEADERS} names")));
        }
        let header = |name: &String| -> Result<String, String> {
            let valid = !name.is_empty()
                && name.len() <= 128
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if valid {
                Ok(name.to_ascii_lowercase())
            } else {
                Err(fail(format!("{name:?} is not a header name")))
            }
        };
        Ok(ServingConfig {
            timeout: Duration::from_millis(timeout_ms),
            tenant_header: raw.tenant_header.as_ref().map(header).transpose()?,
            headers: raw.headers.iter().map(header).collect::<Result<_, _>>()?,
            instances,
            max_request_bytes: kib << 10,
            kv_sync: Duration::from_millis(kv_sync_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::policy::parse_policy;

    #[test]
    fn the_table_is_read_checked_and_defaulted() {
        let policy = parse_policy(
            "[serving]\ntimeout_ms = 5\ntenant_header = \"X-Tenant\"\nheaders = [\"User-Agent\"]\n",
            Path::new("."),
        )
        .unwrap();
        let config = ServingConfig::of(&policy).unwrap();
        assert_eq!(config.timeout, Duration::from_millis(5));
        assert_eq!(config.tenant_header.as_deref(), Some("x-tenant"));
        assert_eq!(config.headers, ["user-agent"]);
        assert_eq!(config.instances, DEFAULT_INSTANCES);
        let none = parse_policy("", Path::new(".")).unwrap();
        assert_eq!(ServingConfig::of(&none).unwrap(), &ServingConfig::default());
    }

    #[test]
    fn mistakes_are_refused_when_the_config_loads() {
        for (text, want) in [
            ("[serving]\ntimeout_ms = 0", "timeout_ms must be 1 to"),
            ("[serving]\ninstances = 1000", "instances must be 1 to"),
            (
                "[serving]\nheaders = [\"a b\"]",
                "\"a b\" is not a header name",
            ),
            ("[serving]\ntenant_header = \"\"", "is not a header name"),
            ("[serving]\ntimeout = 3", "unknown field `timeout`"),
        ] {
            let err = parse_policy(text, Path::new(".")).unwrap_err().to_string();
            assert!(err.contains(want), "{err} should say {want}");
        }
    }
}
