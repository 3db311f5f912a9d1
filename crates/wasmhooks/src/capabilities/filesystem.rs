//! Opening files in granted folders. WASI's `open-at` opens whatever the
//! path names, and a FIFO (or a device) blocks the opening thread until a
//! writer appears: in the host, where no deadline reaches. So `open-at` is
//! shadowed here: what is not a regular file or a folder is refused with
//! `access` before it is opened. A plugin cannot make a FIFO through WASI;
//! this is for the ones a job's files or other processes leave in a folder
//! the operator granted.

use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::WasiView;
use wasmtime_wasi::filesystem::{WasiFilesystemCtxView, WasiFilesystemView};
use wasmtime_wasi::p2::bindings::sync::filesystem::types::{self as fs, Host as _, HostDescriptor};

/// The interface wasmtime-wasi links; older 0.2.x imports resolve to it.
const TYPES: &str = "wasi:filesystem/types@0.2.12";

type OpenArgs = (
    Resource<fs::Descriptor>,
    fs::PathFlags,
    String,
    fs::OpenFlags,
    fs::DescriptorFlags,
);

/// Shadows `[method]descriptor.open-at` in a linker that already has WASI.
pub(crate) fn add_to_linker<T: WasiView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut types = linker.instance(TYPES)?;
    types.func_wrap(
        "[method]descriptor.open-at",
        |mut store, (fd, path_flags, path, oflags, flags): OpenArgs| {
            let mut view = store.data_mut().filesystem();
            Ok((open_at(&mut view, fd, path_flags, path, oflags, flags)?,))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

fn open_at(
    view: &mut WasiFilesystemCtxView<'_>,
    fd: Resource<fs::Descriptor>,
    path_flags: fs::PathFlags,
    path: String,
    oflags: fs::OpenFlags,
    flags: fs::DescriptorFlags,
) -> wasmtime::Result<Result<Resource<fs::Descriptor>, fs::ErrorCode>> {
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
