//! Folders a plugin may read, or read and write, with a quota on each
//! read-write one: the operator's `read` and `readwrite` grants, preopened
//! through WASI, and the quotas checked after calls. This module owns that
//! part of the policy; it takes the grants and the quota, nothing else.
//!
//! Counting walks a folder, so it runs when a folder could have crossed
//! its quota since the last count: after a call that did something which
//! may change a folder by any amount, after the call following it (WASI
//! finishes some writes in the background), while a folder is over, once
//! what was appended to files since (which `filesystem` sums) could take
//! one past its quota, and at least every [`RECOUNT`] (other writers).
//! A restarted instance goes on from its first one's baseline.
//!
//! WASI's filesystem is shadowed where it would block the host or write
//! past a quota, and what may change a folder is noted: `filesystem`.

mod filesystem;

use std::time::{Duration, Instant};

use wasmtime::component::Linker;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use super::{Capability, CapabilityView};
use crate::files::Root;
use crate::policy::{DirGrant, PluginPolicy};
use crate::{Cause, Error};
use filesystem::FileStreams;

/// Entries a read-write folder may hold: counting more would itself be a
/// cost a plugin could impose on every call.
const MAX_ENTRIES: usize = 10_000;

/// The longest a plugin's folders go uncounted while it is being called.
pub(crate) const RECOUNT: Duration = Duration::from_secs(1);

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
    /// A call did something that may change a folder by any amount.
    changed: bool,
    /// Bytes appended to files since the last count.
    appended: u64,
    /// The last count followed such a call: count after the next one too.
    settling: bool,
    /// The last count found a folder over its quota.
    over: bool,
    /// Bytes the writes since the last count may have added, as each was
    /// checked against the room left (`may_grow`).
    grown: u64,
    counted_at: Instant,
    /// The plugin's file output streams, by how they were opened.
    streams: FileStreams,
}

impl Capability for Folders {
    /// The operator's `read` and `readwrite` grants, each read-write
    /// folder under the plugin's `readwrite_quota`.
    fn grant(policy: &PluginPolicy, wasi: &mut WasiCtxBuilder) -> Result<Self, Error> {
        Folders::preopen(
            wasi,
            &policy.name,
            &policy.grants.read,
            &policy.grants.read_write,
            policy.limits.readwrite_quota_bytes,
        )
    }

    fn add_to_linker<T: CapabilityView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
        filesystem::add_to_linker(linker)
    }

    /// Checks the quotas after a call (see [`Folders::check`]).
    #[inline]
    fn end_call(&mut self) -> Result<(), Cause> {
        self.check()
    }
}

impl Folders {
    /// Preopens the folders in `wasi`, read-only or read-write, under their
    /// guest paths; a folder that does not exist is an error naming the
    /// plugin. `quota` bounds what each read-write folder may grow by.
    fn preopen(
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
                    .size(MAX_ENTRIES)
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
        Ok(Folders {
            quotas,
            changed: false,
            appended: 0,
            settling: false,
            over: false,
            grown: 0,
            counted_at: Instant::now(),
            streams: FileStreams::default(),
        })
    }

    /// Notes something that may change a folder by any amount.
    fn changed(&mut self) {
        self.changed = true;
    }

    /// Notes `bytes` appended to a file.
    fn appended(&mut self, bytes: u64) {
        self.appended = self.appended.saturating_add(bytes);
    }

    /// Whether the folders may grow by `bytes` more, asked before a write:
    /// within the room the last count left (the least any read-write
    /// folder has, since which one a stream writes to is not known), less
    /// what writes since may have added; past it, counted again first (a
    /// write over old bytes, or into a file since removed, added nothing).
    /// A write the quota has no room for is refused before it is made, so
    /// no call writes past a quota, whatever its deadline.
    fn may_grow(&mut self, bytes: u64) -> bool {
        if self.quotas.is_empty() || bytes == 0 {
            return true;
        }
        let room = |quotas: &[Quota]| {
            quotas
                .iter()
                .map(|q| q.limit.saturating_sub(q.now))
                .min()
                .unwrap_or(u64::MAX)
        };
        if self.grown.saturating_add(bytes) <= room(&self.quotas) {
            self.grown += bytes;
            return true;
        }
        // A folder over its quota, or one that cannot be counted, has no room.
        if self.recount().is_ok() && bytes <= room(&self.quotas) {
            self.grown = bytes;
            true
        } else {
            false
        }
    }

    /// What each read-write folder held when the first instance started.
    pub(crate) fn baseline(&self) -> Vec<u64> {
        self.quotas.iter().map(|q| q.start).collect()
    }

    /// Goes on from a baseline an earlier instance of the same plugin (and
    /// grants) took; the next check counts.
    pub(crate) fn resume(&mut self, baseline: &[u64]) {
        for (q, &start) in self.quotas.iter_mut().zip(baseline) {
            q.start = start;
        }
        self.changed = true;
    }

    /// Checks every read-write folder against its quota after a call, when
    /// one is due (see the module's doc): what a call wrote past it fails
    /// the call (and every later one, until the folder is back under).
    fn check(&mut self) -> Result<(), Cause> {
        if self.quotas.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        let appended = self.appended;
        let due = self.changed
            || self.settling
            || self.over
            || self
                .quotas
                .iter()
                .any(|q| q.now.saturating_add(appended) > q.limit)
            || now.saturating_duration_since(self.counted_at) >= RECOUNT;
        if !due {
            return Ok(());
        }
        self.settling = std::mem::take(&mut self.changed);
        self.recount()
    }

    /// Counts every read-write folder now, with the bytes of removed files
    /// the plugin still holds open (which folder held them is not known, so
    /// each is charged them).
    fn recount(&mut self) -> Result<(), Cause> {
        self.appended = 0;
        self.grown = 0;
        self.counted_at = Instant::now();
        let unlinked = self.streams.unlinked_bytes();
        let counted = self.count(unlinked);
        self.over = counted.is_err();
        counted
    }

    fn count(&mut self, unlinked: u64) -> Result<(), Cause> {
        for q in &mut self.quotas {
            let mut size = q.root.size(MAX_ENTRIES).map_err(|e| Cause::QuotaExceeded {
                folder: q.guest.clone(),
                used: format!("something the host cannot count ({e})"),
                limit: format!("{} bytes", q.limit),
            })?;
            size.bytes = size.bytes.saturating_add(unlinked);
            q.now = size.bytes;
            if size.entries > MAX_ENTRIES {
                return Err(Cause::QuotaExceeded {
                    folder: q.guest.clone(),
                    used: format!("more than {MAX_ENTRIES} entries"),
                    limit: format!("{MAX_ENTRIES} entries"),
                });
            }
            if size.bytes > q.limit {
                return Err(Cause::QuotaExceeded {
                    folder: q.guest.clone(),
                    used: format!("{} bytes", size.bytes),
                    limit: format!("{} bytes", q.limit),
                });
            }
        }
        Ok(())
    }

    /// Bytes the read-write folders grew by since the plugin started: as
    /// last counted, and what was appended since.
    pub(crate) fn bytes_written(&self) -> u64 {
        self.quotas
            .iter()
            .map(|q| q.now.saturating_sub(q.start))
            .sum::<u64>()
            .saturating_add(self.appended)
    }
}
