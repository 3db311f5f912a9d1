//! Opening files in granted folders. WASI's `open-at` opens whatever the
//! path names, and a FIFO (or a device) blocks the opening thread until a
//! writer appears: in the host, where no deadline reaches. So `open-at` is
//! shadowed here: what is not a regular file or a folder is refused with
//! `access` before it is opened. A plugin cannot make a FIFO through WASI;
//! this is for the ones a job's files or other processes leave in a folder
//! the operator granted.
//!
//! `output-stream.write` is shadowed too: wasmtime-wasi hands every
//! non-blocking file write to tokio's blocking pool, even with
//! `allow_blocking_current_thread`, and the guest's libc flushes right after,
//! so each line a logging plugin writes cost two thread switches (tens of
//! microseconds on a busy machine, and an observer queue that overflowed).
//! Here the write happens on the calling thread, as `blocking-write-and-flush`
//! does, within what `check-write` permitted.
//!
//! And what a plugin does that may change what a folder holds is noted
//! through [`WritesView`], so the read-write quotas are counted when they
//! could have been crossed (see `folders`) rather than after every call:
//! counting walks the folder, and a cache folder holds thousands of files.
//! Bytes appended to a file grow it by exactly that much, so appends are
//! summed; anything else (a write at a position, a new size, a new entry,
//! a link, a rename, a removal) asks for a count. Which output streams
//! append is known from how they were opened: the plugin's other streams
//! are its stdout and stderr.
//!
//! Every write is also checked, before it is made, against the room its
//! folders have left ([`WritesView::may_grow`]): one call under a deadline
//! could otherwise write gigabytes before the count after it. What a write
//! can add is what it writes past the file's end: all of an append; for a
//! write at a position, past the size the file had (asked of the file for
//! a descriptor's `write` and `set-size`, followed from the opening for a
//! stream). A refused write fails as a full disk does (`ENOSPC`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};

use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource, ResourceTable};
use wasmtime_wasi::WasiView;
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemCtxView, WasiFilesystemView};
use wasmtime_wasi::p2::bindings::sync::filesystem::types::{self as fs, Host as _, HostDescriptor};
use wasmtime_wasi::p2::bindings::sync::io::streams as io;
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, StreamError, StreamResult};
use wasmtime_wasi::runtime::in_tokio;

use crate::capabilities::CapabilityView;

/// The interfaces wasmtime-wasi links; older 0.2.x imports resolve to them.
const TYPES: &str = "wasi:filesystem/types@0.2.12";
const STREAMS: &str = "wasi:io/streams@0.2.12";

type OpenArgs = (
    Resource<Descriptor>,
    fs::PathFlags,
    String,
    fs::OpenFlags,
    fs::DescriptorFlags,
);

/// Notes, for the quota checks, what a call did that may change what a
/// plugin's folders hold: the view of [`Folders`](super::Folders) the
/// shadowed functions take, so they run on any store state that holds the
/// capabilities.
pub(crate) trait WritesView {
    /// Something that may change a folder by any amount.
    fn changed(&mut self);
    /// `bytes` appended to a file.
    fn appended(&mut self, bytes: u64);
    /// Whether the folders may grow by `bytes` more: asked before a write
    /// that could add that much, which is refused if not.
    fn may_grow(&mut self, bytes: u64) -> bool;
    /// The plugin's file output streams, by how they were opened.
    fn file_streams(&mut self) -> &mut FileStreams;
}

impl<T: CapabilityView> WritesView for T {
    #[inline]
    fn changed(&mut self) {
        self.capabilities().folders.changed();
    }

    #[inline]
    fn appended(&mut self, bytes: u64) {
        self.capabilities().folders.appended(bytes);
    }

    #[inline]
    fn may_grow(&mut self, bytes: u64) -> bool {
        self.capabilities().folders.may_grow(bytes)
    }

    #[inline]
    fn file_streams(&mut self) -> &mut FileStreams {
        &mut self.capabilities().folders.streams
    }
}

/// The output streams a plugin opened on files, by resource handle: those
/// that append and those that write at a position (with where they are
/// and the file's end as far as they know). A handle WASI reuses for
/// another stream is filed again when that one is opened on a file; one
/// left from a dropped file stream and reused for stdout only makes
/// stdout's writes count (never too little).
#[derive(Default)]
pub(crate) struct FileStreams {
    appending: HashSet<u32>,
    positioned: HashMap<u32, Position>,
    /// Every file the plugin has written through, weakly (by address, so
    /// once each): bytes in a file it removed but still holds open are on
    /// the disk, not in the folder a count walks (`unlinked_bytes`).
    written: HashMap<usize, Weak<std::fs::File>>,
}

/// Files of [`FileStreams::written`] past which dead entries are dropped.
const WRITTEN_PRUNE: usize = 1024;

/// A stream writing at a position: where its next byte goes, and the end
/// of its file as it last knew it.
#[derive(Clone, Copy)]
struct Position {
    at: u64,
    end: u64,
}

impl FileStreams {
    fn opened(&mut self, rep: u32, position: Option<Position>) {
        match position {
            None => {
                self.positioned.remove(&rep);
                self.appending.insert(rep);
            }
            Some(position) => {
                self.appending.remove(&rep);
                self.positioned.insert(rep, position);
            }
        }
    }

    /// A file was cut short (a new size, or opened with `truncate`): what
    /// any stream knew of its file's end may be past it now, so every
    /// write at a position counts in full.
    fn truncated(&mut self) {
        for position in self.positioned.values_mut() {
            position.end = 0;
        }
    }

    /// Notes a file written through.
    fn wrote(&mut self, file: &Arc<std::fs::File>) {
        if self.written.len() >= WRITTEN_PRUNE {
            self.written.retain(|_, weak| weak.strong_count() > 0);
        }
        self.written
            .entry(Arc::as_ptr(file) as usize)
            .or_insert_with(|| Arc::downgrade(file));
    }

    /// Bytes held by files the plugin wrote through, still holds open, and
    /// that no folder lists any more (removed, or renamed over): a count
    /// of the folders misses them, so they are added to it.
    pub(super) fn unlinked_bytes(&mut self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        let mut held = 0u64;
        self.written.retain(|_, weak| match weak.upgrade() {
            Some(file) => {
                if let Ok(meta) = file.metadata()
                    && meta.nlink() == 0
                {
                    held = held.saturating_add(meta.len());
                }
                true
            }
            None => false,
        });
        held
    }
}

/// The file a descriptor is open on, if it is a file.
fn file_of<T: WasiView>(state: &mut T, fd: &Resource<Descriptor>) -> Option<Arc<std::fs::File>> {
    let view = state.filesystem();
    match view.table.get(fd) {
        Ok(Descriptor::File(f)) => Some(f.file.clone()),
        _ => None,
    }
}

/// Checks and notes `bytes` written to the stream `rep`: false if the
/// folders have no room for what it could add.
fn writes_to<T: WritesView>(state: &mut T, rep: u32, bytes: u64) -> bool {
    let streams = state.file_streams();
    if let Some(position) = streams.positioned.get_mut(&rep) {
        let end = position.at.saturating_add(bytes);
        let grows = end.saturating_sub(position.end);
        *position = Position {
            at: end,
            end: position.end.max(end),
        };
        state.changed();
        state.may_grow(grows)
    } else if streams.appending.contains(&rep) {
        state.appended(bytes);
        state.may_grow(bytes)
    } else {
        true
    }
}

/// The size of the file `fd` is open on (0 if it cannot be told: every
/// byte written then counts).
fn size_of(view: &mut WasiFilesystemCtxView<'_>, fd: &Resource<Descriptor>) -> u64 {
    HostDescriptor::stat(view, Resource::new_borrow(fd.rep())).map_or(0, |stat| stat.size)
}

/// Whether a write to the file `fd` that ends at `end` is refused for want
/// of room: it can add what lies past the file's size. Noted either way.
fn refused<T: WasiView + WritesView>(state: &mut T, fd: &Resource<Descriptor>, end: u64) -> bool {
    state.changed();
    if let Some(file) = file_of(state, fd) {
        state.file_streams().wrote(&file);
    }
    let size = size_of(&mut state.filesystem(), fd);
    !state.may_grow(end.saturating_sub(size))
}

/// What a refused write fails with in the guest: a full disk.
fn no_room() -> StreamError {
    StreamError::LastOperationFailed(std::io::Error::from(rustix::io::Errno::NOSPC).into())
}

/// Shadows a method of `descriptor` that may change what a folder holds:
/// noted, then as WASI does it.
macro_rules! descriptor_writes {
    ($instance:ident, $name:literal, $method:ident($($arg:ident: $ty:ty),*)) => {
        $instance.func_wrap(
            concat!("[method]descriptor.", $name),
            |mut store: StoreContextMut<'_, T>, ($($arg,)*): ($($ty,)*)| {
                store.data_mut().changed();
                let mut view = store.data_mut().filesystem();
                Ok((match HostDescriptor::$method(&mut view, $($arg),*) {
                    Ok(v) => Ok(v),
                    Err(e) => Err(view.convert_error_code(e)?),
                },))
            },
        )?;
    };
}

/// Shadows a method of `output-stream` that writes: checked against the
/// room left and noted (`$len` bytes), then done by `$write` (WASI's own,
/// or [`write`]).
macro_rules! stream_writes {
    ($instance:ident, $name:literal, $write:expr, ($($arg:ident: $ty:ty),*), $len:expr) => {
        $instance.func_wrap(
            concat!("[method]output-stream.", $name),
            |mut store: StoreContextMut<'_, T>, (stream, $($arg,)*): (Resource<DynOutputStream>, $($ty,)*)| {
                let len: u64 = $len;
                let room = writes_to(store.data_mut(), stream.rep(), len);
                let table = store.data_mut().ctx().table;
                let done = if room { $write(table, stream, $($arg),*) } else { Err(no_room()) };
                Ok((match done {
                    Ok(v) => Ok(v),
                    Err(e) => Err(io::Host::convert_stream_error(table, e)?),
                },))
            },
        )?;
    };
}

/// Shadows, in a linker that already has WASI, `descriptor.open-at` (see
/// the module's doc), `output-stream.write` (on this thread) and every
/// method that may change what a folder holds (noted for the quotas).
pub(crate) fn add_to_linker<T: WasiView + WritesView + 'static>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut types = linker.instance(TYPES)?;
    types.func_wrap(
        "[method]descriptor.open-at",
        |mut store: StoreContextMut<'_, T>, (fd, path_flags, path, oflags, flags): OpenArgs| {
            if oflags.intersects(fs::OpenFlags::CREATE | fs::OpenFlags::TRUNCATE) {
                store.data_mut().changed();
            }
            if oflags.contains(fs::OpenFlags::TRUNCATE) {
                store.data_mut().file_streams().truncated();
            }
            let mut view = store.data_mut().filesystem();
            Ok((open_at(&mut view, fd, path_flags, path, oflags, flags)?,))
        },
    )?;
    type Fd = Resource<Descriptor>;
    types.func_wrap(
        "[method]descriptor.write",
        |mut store: StoreContextMut<'_, T>, (fd, buf, offset): (Fd, Vec<u8>, u64)| {
            let state = store.data_mut();
            if refused(state, &fd, offset.saturating_add(buf.len() as u64)) {
                return Ok((Err(fs::ErrorCode::InsufficientSpace),));
            }
            let mut view = state.filesystem();
            Ok((match HostDescriptor::write(&mut view, fd, buf, offset) {
                Ok(v) => Ok(v),
                Err(e) => Err(view.convert_error_code(e)?),
            },))
        },
    )?;
    types.func_wrap(
        "[method]descriptor.set-size",
        |mut store: StoreContextMut<'_, T>, (fd, size): (Fd, u64)| {
            let state = store.data_mut();
            if refused(state, &fd, size) {
                return Ok((Err(fs::ErrorCode::InsufficientSpace),));
            }
            state.file_streams().truncated();
            let mut view = state.filesystem();
            Ok((match HostDescriptor::set_size(&mut view, fd, size) {
                Ok(v) => Ok(v),
                Err(e) => Err(view.convert_error_code(e)?),
            },))
        },
    )?;
    descriptor_writes!(types, "create-directory-at", create_directory_at(fd: Fd, path: String));
    descriptor_writes!(
        types,
        "link-at",
        link_at(fd: Fd, flags: fs::PathFlags, old: String, to: Fd, new: String)
    );
    descriptor_writes!(types, "symlink-at", symlink_at(fd: Fd, old: String, new: String));
    descriptor_writes!(types, "rename-at", rename_at(fd: Fd, old: String, to: Fd, new: String));
    descriptor_writes!(types, "unlink-file-at", unlink_file_at(fd: Fd, path: String));
    descriptor_writes!(types, "remove-directory-at", remove_directory_at(fd: Fd, path: String));
    types.func_wrap(
        "[method]descriptor.write-via-stream",
        |mut store: StoreContextMut<'_, T>, (fd, at): (Fd, u64)| {
            let state = store.data_mut();
            let end = size_of(&mut state.filesystem(), &fd);
            if let Some(file) = file_of(state, &fd) {
                state.file_streams().wrote(&file);
            }
            let mut view = state.filesystem();
            let opened = match HostDescriptor::write_via_stream(&mut view, fd, at) {
                Ok(stream) => Ok(stream),
                Err(e) => Err(view.convert_error_code(e)?),
            };
            if let Ok(stream) = &opened {
                let position = Position { at, end };
                state.file_streams().opened(stream.rep(), Some(position));
            }
            Ok((opened,))
        },
    )?;
    types.func_wrap(
        "[method]descriptor.append-via-stream",
        |mut store: StoreContextMut<'_, T>, (fd,): (Fd,)| {
            let state = store.data_mut();
            if let Some(file) = file_of(state, &fd) {
                state.file_streams().wrote(&file);
            }
            let mut view = state.filesystem();
            let opened = match HostDescriptor::append_via_stream(&mut view, fd) {
                Ok(stream) => Ok(stream),
                Err(e) => Err(view.convert_error_code(e)?),
            };
            if let Ok(stream) = &opened {
                state.file_streams().opened(stream.rep(), None);
            }
            Ok((opened,))
        },
    )?;
    let mut streams = linker.instance(STREAMS)?;
    type Out = Resource<DynOutputStream>;
    type In = Resource<DynInputStream>;
    stream_writes!(streams, "write", |t, s: Out, b| write(t, &s, b), (bytes: Vec<u8>), bytes.len() as u64);
    stream_writes!(
        streams,
        "blocking-write-and-flush",
        io::HostOutputStream::blocking_write_and_flush,
        (bytes: Vec<u8>),
        bytes.len() as u64
    );
    stream_writes!(streams, "write-zeroes", io::HostOutputStream::write_zeroes, (n: u64), n);
    stream_writes!(
        streams,
        "blocking-write-zeroes-and-flush",
        io::HostOutputStream::blocking_write_zeroes_and_flush,
        (n: u64),
        n
    );
    stream_writes!(streams, "splice", io::HostOutputStream::splice, (from: In, n: u64), n);
    stream_writes!(
        streams,
        "blocking-splice",
        io::HostOutputStream::blocking_splice,
        (from: In, n: u64),
        n
    );
    linker.allow_shadowing(false);
    Ok(())
}

/// Writes what `check-write` permitted and waits for it: on this thread,
/// for a file (its `allow_blocking_current_thread`), and through the
/// stream's own blocking write for the host's other streams.
fn write(
    table: &mut ResourceTable,
    stream: &Resource<DynOutputStream>,
    bytes: Vec<u8>,
) -> StreamResult<()> {
    let stream = table.get_mut(stream)?;
    let permitted = stream.check_write()?;
    if bytes.len() > permitted {
        return Err(StreamError::trap(&format!(
            "write of {} bytes where check-write permitted {permitted}",
            bytes.len()
        )));
    }
    in_tokio(stream.blocking_write_and_flush(bytes.into()))
}

fn open_at(
    view: &mut WasiFilesystemCtxView<'_>,
    fd: Resource<Descriptor>,
    path_flags: fs::PathFlags,
    path: String,
    oflags: fs::OpenFlags,
    flags: fs::DescriptorFlags,
) -> wasmtime::Result<Result<Resource<Descriptor>, fs::ErrorCode>> {
    let dir = Resource::new_borrow(fd.rep());
    match HostDescriptor::stat_at(view, dir, path_flags, path.clone()) {
        Ok(stat) => match stat.type_ {
            fs::DescriptorType::RegularFile
            | fs::DescriptorType::Directory
            // Opened without following, a link fails as it should.
            | fs::DescriptorType::SymbolicLink => {}
            _ => return Ok(Err(fs::ErrorCode::Access)),
        },
        Err(e) => match view.convert_error_code(e)? {
            // Nothing there yet: the open may create it.
            fs::ErrorCode::NoEntry => {}
            code => return Ok(Err(code)),
        },
    }
    match HostDescriptor::open_at(view, fd, path_flags, path, oflags, flags) {
        Ok(fd) => Ok(Ok(fd)),
        Err(e) => Ok(Err(view.convert_error_code(e)?)),
    }
}
