//! Folders a plugin may read, or read and write, with a quota on each
//! read-write one: the operator's `read` and `readwrite` grants, preopened
//! through WASI, and the quotas checked after every call. This module owns
//! that part of the policy; it takes the grants and the quota, nothing else.

use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use crate::files::Root;
use crate::policy::DirGrant;
use crate::{Cause, Error};

/// Entries a read-write folder may hold: counting more would itself be a
/// cost a plugin could impose on every call.
const MAX_ENTRIES: usize = 10_000;

/// A read-write folder and its quota, checked after every call.
struct Quota {
    guest: String,
    root: Root,
    limit: u64,
    /// What it held when the plugin started.
    start: u64,
    /// What it held after the last check.
    now: u64,
}

/// The read-write folders of one plugin instance, with their quotas.
pub(crate) struct Folders {
    quotas: Vec<Quota>,
}

impl Folders {
    /// Preopens the folders in `wasi`, read-only or read-write, under their
    /// guest paths; a folder that does not exist is an error naming the
    /// plugin. `quota` bounds what each read-write folder may grow by.
    pub(crate) fn grant(
        wasi: &mut WasiCtxBuilder,
        plugin: &str,
        read: &[DirGrant],
        read_write: &[DirGrant],
        quota: u64,
    ) -> Result<Self, Error> {
        let mut quotas = Vec::new();
        let dirs = (read.iter().map(|d| (d, FsPerms::ReadOnly)))
            .chain(read_write.iter().map(|d| (d, FsPerms::ReadWrite)));
        for (dir, perms) in dirs {
            let grant_error = |reason: String| Error::Grant {
                name: plugin.to_owned(),
                what: match perms {
                    FsPerms::ReadOnly => format!("read access to {}", dir.host.display()),
                    FsPerms::ReadWrite => format!("read-write access to {}", dir.host.display()),
                },
                reason,
            };
            if !dir.host.is_dir() {
                return Err(grant_error("no such folder".into()));
            }
            wasi.preopened_dir(&dir.host, &dir.guest, perms)
                .map_err(|e| grant_error(e.to_string()))?;
            if perms == FsPerms::ReadWrite {
                let root = Root::open(&dir.host).map_err(|e| grant_error(e.to_string()))?;
                let held = root
                    .usage(MAX_ENTRIES)
                    .map_err(|e| grant_error(e.to_string()))?
                    .bytes;
                quotas.push(Quota {
                    guest: dir.guest.clone(),
                    root,
                    limit: quota,
                    start: held,
                    now: held,
                });
            }
        }
        Ok(Folders { quotas })
    }

    /// Checks every read-write folder against its quota after a call: what
    /// a call wrote past it fails the call (and every later one, until the
    /// folder is back under).
    pub(crate) fn check(&mut self) -> Result<(), Cause> {
        for q in &mut self.quotas {
            let usage = q
                .root
                .usage(MAX_ENTRIES)
                .map_err(|e| Cause::QuotaExceeded {
                    folder: q.guest.clone(),
                    used: format!("something the host cannot count ({e})"),
                    limit: format!("{} bytes", q.limit),
                })?;
            q.now = usage.bytes;
            if usage.entries > MAX_ENTRIES {
                return Err(Cause::QuotaExceeded {
                    folder: q.guest.clone(),
                    used: format!("more than {MAX_ENTRIES} entries"),
                    limit: format!("{MAX_ENTRIES} entries"),
                });
            }
            if usage.bytes > q.limit {
                return Err(Cause::QuotaExceeded {
                    folder: q.guest.clone(),
                    used: format!("{} bytes", usage.bytes),
                    limit: format!("{} bytes", q.limit),
                });
            }
        }
        Ok(())
    }

    /// Bytes the read-write folders grew by since the plugin started.
    pub(crate) fn bytes_written(&self) -> u64 {
        self.quotas
            .iter()
            .map(|q| q.now.saturating_sub(q.start))
            .sum()
    }
}
