//! The operator's numeric limits: per plugin (`[defaults]` and each
//! `[[plugin]]`) and per job (`[job]`).
//!
//! Each limit is written once, in [`plugin_limits!`] or [`job_limits!`]: its
//! field, the TOML name and unit it is given in, its default and its largest
//! value. Those lists feed generator macros (the callback pattern: the list
//! macro hands its entries to the macro it is given), so the struct the host
//! reads, its `Default`, the optional values the TOML layer collects with
//! their range check and unit conversion ([`limit_struct!`]) and the serde
//! fields of the tables that carry them (`toml_table!` in `toml.rs`) cannot
//! drift apart: a limit added to a list is in all of them.

use std::time::Duration;

use serde::Serialize;

/// Fuel per call when the operator sets none: about a second of compute.
pub const DEFAULT_FUEL: u64 = 2_000_000_000;
/// Memory per plugin instance when the operator sets none, in MiB.
pub const DEFAULT_MEMORY_MIB: u64 = 64;
/// Wall-clock time per call when the operator sets none, in milliseconds.
pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;
/// Bytes of updates one call may return when the operator sets none, in KiB.
pub const DEFAULT_MAX_UPDATE_KIB: u64 = 1_024;
/// Bytes of state one `save-state` may return when the operator sets none, in KiB.
pub const DEFAULT_MAX_STATE_KIB: u64 = 1_024;
/// WASI handles (open files, folders, streams, pollables) a plugin may hold
/// at once when the operator sets none. The process's descriptors are shared
/// by the host and every plugin: one plugin must not be able to take them all.
pub const DEFAULT_MAX_HANDLES: u64 = 256;
/// Bytes a read-write folder may hold when the operator sets none, in MiB.
pub const DEFAULT_READWRITE_QUOTA_MIB: u64 = 256;
/// Bytes of keys and values a plugin may keep in the key-value store when
/// the operator sets none, in KiB.
pub const DEFAULT_KV_QUOTA_KIB: u64 = 1_024;

// The largest value each numeric operator field takes. Past these a number
// is a typo, and some (a timeout of `u64::MAX` ms) would overflow a clock.
pub(super) const MAX_KIB: u64 = 1 << 30;
pub(super) const MAX_MIB: u64 = 1 << 30;

// What one TOML unit is in the field's own unit: a count or a duration in
// milliseconds is taken as written, sizes are given in KiB or MiB.
pub(super) const ONE: u64 = 1;
pub(super) const KIB: u64 = 1 << 10;
pub(super) const MIB: u64 = 1 << 20;

/// Every per-plugin limit, each once: `field: type = toml_name * unit,
/// default (in TOML units), max (in TOML units)`. Hands the list, after the
/// tokens it is given, to the macro it is given.
macro_rules! plugin_limits {
    ($then:ident! { $($head:tt)* }) => {
        $then! {
            $($head)*
            limits {
                /// Fuel (roughly, wasm instructions) per call.
                fuel: u64 = fuel * ONE,
                    default $crate::policy::DEFAULT_FUEL, max 1 << 60;
                /// Bytes of linear memory (all memories of the instance together).
                memory_bytes: usize = memory_mib * MIB,
                    default $crate::policy::DEFAULT_MEMORY_MIB, max 1 << 20;
                /// Wall-clock time per call.
                timeout: Duration = timeout_ms * ONE,
                    default $crate::policy::DEFAULT_TIMEOUT_MS, max 24 * 3_600_000;
                /// Bytes of keys and values one call may return as updates.
                max_update_bytes: usize = max_update_kib * KIB,
                    default $crate::policy::DEFAULT_MAX_UPDATE_KIB, max MAX_KIB;
                /// Bytes of state one `save-state` may return.
                max_state_bytes: usize = max_state_kib * KIB,
                    default $crate::policy::DEFAULT_MAX_STATE_KIB, max MAX_KIB;
                /// WASI handles the instance may hold at once.
                max_handles: usize = max_handles * ONE,
                    default $crate::policy::DEFAULT_MAX_HANDLES, max 1 << 20;
                /// Bytes each read-write folder may hold, checked after every call.
                readwrite_quota_bytes: u64 = readwrite_quota_mib * MIB,
                    default $crate::policy::DEFAULT_READWRITE_QUOTA_MIB, max MAX_MIB;
                /// Bytes of keys and values the plugin may keep in the
                /// key-value store (its namespace, shared by its instances).
                kv_quota_bytes: usize = kv_quota_kib * KIB,
                    default $crate::policy::DEFAULT_KV_QUOTA_KIB, max MAX_KIB;
            }
        }
    };
}
pub(super) use plugin_limits;

/// Every per-job limit (`[job]`), each once, as in [`plugin_limits!`].
///
/// The download bounds (`max_download_mib`, `max_file_mib`) stay here,
/// though node initialization in the lifecycles crate is what downloads:
/// `max_file_mib` is also the bound of every file the Python pipeline
/// caches and reads, and `[job]` is one table, which the core reads whole
/// (a table is claimed by one crate, not field by field).
macro_rules! job_limits {
    ($then:ident! { $($head:tt)* }) => {
        $then! {
            $($head)*
            limits {
                /// Bytes of keys and values plugins may keep in the data map at once.
                max_data_bytes: usize = max_data_kib * KIB, default 16 << 10, max MAX_KIB;
                /// Bytes of snapshots waiting for the observer worker at once.
                observer_queue_bytes: usize = observer_queue_kib * KIB,
                    default 16 << 10, max MAX_KIB;
                /// Bytes a job's node may download in all.
                max_download_bytes: u64 = max_download_mib * MIB, default 256 << 10, max MAX_MIB;
                /// Bytes of one file the host reads for a job: a data set, a
                /// checkpoint, a model file from a `file://` source.
                max_file_bytes: u64 = max_file_mib * MIB, default 256, max MAX_MIB;
                /// Bytes of one plugin file.
                max_plugin_bytes: u64 = max_plugin_mib * MIB, default 128, max MAX_MIB;
            }
        }
    };
}
pub(super) use job_limits;

/// Makes, from a list of [`plugin_limits!`]'s shape, the limits struct, its
/// `Default`, and the struct of optional TOML values with its checks.
macro_rules! limit_struct {
    (
        $(#[$meta:meta])*
        pub struct $name:ident, values $values:ident;
        limits { $(
            $(#[$doc:meta])*
            $field:ident: $ty:ty = $toml:ident * $unit:ident, default $default:expr, max $max:expr;
        )* }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Serialize)]
        pub struct $name {
            $( $(#[$doc])* pub $field: $ty, )*
        }

        impl Default for $name {
            fn default() -> Self {
                $values::default().resolve()
            }
        }

        /// The limits as the TOML gives them: each in its TOML unit, and
        /// absent where the table does not set it.
        #[derive(Debug, Clone, Copy, Default)]
        pub(super) struct $values {
            $( pub(super) $toml: Option<u64>, )*
        }

        impl $values {
            /// Refuses a value above its largest; the message names `place`
            /// and the field.
            pub(super) fn check(&self, place: &str) -> Result<(), String> {
                $( in_range(place, stringify!($toml), self.$toml, $max)?; )*
                Ok(())
            }

            /// Each value, or `fallback`'s where this one has none.
            #[allow(dead_code, reason = "only per-plugin limits have a defaults table")]
            pub(super) fn or(self, fallback: Self) -> Self {
                $values { $( $toml: self.$toml.or(fallback.$toml), )* }
            }

            /// The limits, each in the field's unit, with the default where
            /// no value is given.
            pub(super) fn resolve(self) -> $name {
                $name {
                    $( $field: FromToml::from_toml(self.$toml.unwrap_or($default), $unit), )*
                }
            }
        }
    };
}

plugin_limits!(limit_struct! {
    /// Resource limits for one plugin.
    pub struct Limits, values LimitValues;
});

job_limits!(limit_struct! {
    /// Bounds on what one job may bring or make, whatever its plugins do.
    pub struct JobLimits, values JobLimitValues;
});

/// A limit's field type, made from a TOML number times its unit. Values are
/// range-checked first; a product too large for the type saturates (a limit
/// of `usize::MAX` bytes is no limit a machine reaches).
trait FromToml {
    fn from_toml(value: u64, unit: u64) -> Self;
}

impl FromToml for u64 {
    fn from_toml(value: u64, unit: u64) -> Self {
        value.saturating_mul(unit)
    }
}

impl FromToml for usize {
    fn from_toml(value: u64, unit: u64) -> Self {
        usize::try_from(value.saturating_mul(unit)).unwrap_or(usize::MAX)
    }
}

/// Durations are given in milliseconds.
impl FromToml for Duration {
    fn from_toml(value: u64, unit: u64) -> Self {
        Duration::from_millis(value.saturating_mul(unit))
    }
}

/// `value` if it is at most `max`; the error names the field.
pub(super) fn in_range(
    place: &str,
    field: &str,
    value: Option<u64>,
    max: u64,
) -> Result<(), String> {
    match value {
        Some(v) if v > max => Err(format!(
            "{place} {field} = {v} is out of range (at most {max})"
        )),
        _ => Ok(()),
    }
}
