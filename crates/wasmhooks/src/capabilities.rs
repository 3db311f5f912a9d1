//! Host capabilities. Each is a module that owns its grant (the part of the
//! operator's policy it reads), its linking (the host functions it adds or
//! shadows) and its per-instance state, behind one shape, [`Capability`];
//! the host and the sandbox only loop over the list at the bottom. Adding a
//! capability is a module and a line there.
//!
//! - `clocks`: a monotonic clock whose waits the call's deadline cuts short;
//! - `env`: host environment variables, by name;
//! - `folders`: folders to read, or read and write under a quota, with WASI's
//!   filesystem shadowed where it would block the host or write past the
//!   quota (`folders::filesystem`);
//! - `kv`: values and counters that outlive a call, in the plugin's
//!   namespace of a store every instance made through one host shares
//!   (contract 0.3.0 on);
//! - `log`: messages into the host's log.
//!
//! Modelled on wasmtime-wasi's per-interface views and Spin's factors, with
//! the list expanded by a macro rather than boxed: a call's `begin_call` and
//! `end_call` are plain calls on each field, no dynamic dispatch and no
//! allocation per call.

pub(crate) mod clocks;
pub(crate) mod env;
pub(crate) mod folders;
pub(crate) mod kv;
pub(crate) mod log;

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::Linker;
use wasmtime_wasi::{WasiCtxBuilder, WasiView};

use crate::policy::PluginPolicy;
use crate::{Cause, Error};

/// One capability: its state in a plugin's store is `Self`.
pub(crate) trait Capability: Sized {
    /// Reads its grant from the plugin's policy and sets up what WASI
    /// provides of it; the state one instance starts with. A grant the host
    /// cannot give (a folder that is not there) is an error naming the
    /// plugin.
    fn grant(policy: &PluginPolicy, wasi: &mut WasiCtxBuilder) -> Result<Self, Error>;

    /// Like `grant`, with what the capabilities keep host-wide (`kv`'s
    /// store), for one whose instances share something. What the host
    /// calls; most capabilities keep nothing host-wide and leave it to
    /// `grant`.
    fn grant_in(
        host: &HostWide,
        policy: &PluginPolicy,
        wasi: &mut WasiCtxBuilder,
    ) -> Result<Self, Error> {
        let _ = host;
        Self::grant(policy, wasi)
    }

    /// Adds its host functions to the plugin linker, once per host, after
    /// WASI's own (which it may shadow). Most capabilities are WASI's and
    /// add nothing.
    fn add_to_linker<T: CapabilityView + 'static>(_: &mut Linker<T>) -> wasmtime::Result<()> {
        Ok(())
    }

    /// Before every call, which must end by `deadline`.
    #[inline]
    fn begin_call(&mut self, _deadline: Instant) {}

    /// After every call that returned in time: an error fails the call
    /// (what it wrote past a quota, say).
    #[inline]
    fn end_call(&mut self) -> Result<(), Cause> {
        Ok(())
    }
}

/// What the capabilities keep for every plugin and instance of one host.
#[derive(Default)]
pub(crate) struct HostWide {
    /// The key-value store, a namespace per plugin.
    pub(crate) kv: Arc<kv::KvStore>,
}

/// What the capabilities' host functions need of a store's state: WASI's
/// context (its resource table) and their own states.
pub(crate) trait CapabilityView: WasiView {
    fn capabilities(&mut self) -> &mut Capabilities;
}

/// The list: declares [`Capabilities`], one field of state per capability,
/// and the loops over it.
macro_rules! capabilities {
    ($($(#[$doc:meta])* $field:ident: $state:ty,)*) => {
        /// Every capability's state for one plugin instance.
        pub(crate) struct Capabilities {
            $($(#[$doc])* pub(crate) $field: $state,)*
        }

        impl Capabilities {
            /// Each capability's grant, in the order listed, with what
            /// the host keeps for all its plugins.
            pub(crate) fn grant(
                host: &HostWide,
                policy: &PluginPolicy,
                wasi: &mut WasiCtxBuilder,
            ) -> Result<Self, Error> {
                Ok(Capabilities {
                    $($field: <$state as Capability>::grant_in(host, policy, wasi)?,)*
                })
            }

            /// Each capability's host functions.
            pub(crate) fn add_to_linker<T: CapabilityView + 'static>(
                linker: &mut Linker<T>,
            ) -> wasmtime::Result<()> {
                $(<$state as Capability>::add_to_linker(linker)?;)*
                Ok(())
            }

            #[inline]
            pub(crate) fn begin_call(&mut self, deadline: Instant) {
                $(self.$field.begin_call(deadline);)*
            }

            /// The first capability's error, if any.
            #[inline]
            pub(crate) fn end_call(&mut self) -> Result<(), Cause> {
                $(self.$field.end_call()?;)*
                Ok(())
            }
        }
    };
}

capabilities! {
    /// The monotonic clock and the current call's deadline.
    clocks: clocks::Clocks,
    /// Nothing past the grant: WASI holds the variables.
    env: env::Env,
    /// The read-write folders' quotas and the file streams they count.
    folders: folders::Folders,
    /// The plugin's namespace in the host's key-value store.
    kv: kv::Kv,
    /// The per-call budget of log messages.
    log: log::PluginLog,
}
