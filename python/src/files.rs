//! A job's files for Python: the host's own `files::Root` (cap-std), so
//! the Ray driver and the pipeline runner confine a job's paths with the
//! very code the CLI does. Everything a job or a plugin names is a path
//! below a folder held open, opened component by component without
//! following a symlink, without blocking, regular files only, within a cap.

use std::os::fd::{AsFd, AsRawFd, IntoRawFd};
use std::path::{Path, PathBuf};

use std::sync::{Mutex, PoisonError};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::errors::JobError;

/// `path` (a path a job or plugin gave for `field`) checked to stay below
/// its folder; `JobError` naming `field` if it does not.
pub(crate) fn checked(field: &str, path: &str) -> PyResult<PathBuf> {
    wasmhooks::files::relative(field, Path::new(path)).map_err(JobError::new_err)
}

/// `path` checked to stay below a folder: relative, no `..`, no NUL, at
/// most 4096 bytes and 64 components, `.` components dropped. `field`
/// names it in the `JobError` it raises otherwise.
#[pyfunction]
pub(crate) fn relative(field: &str, path: &str) -> PyResult<String> {
    Ok(checked(field, path)?.display().to_string())
}

/// An I/O error as Python's `OSError` of its kind, with the host's message.
pub(crate) fn os_err(e: std::io::Error) -> PyErr {
    PyErr::from(e)
}

/// A folder held open; every path below it is checked by `relative` and
/// opened without following a symlink at any component.
#[pyclass(module = "wasmhooks._native", frozen)]
pub(crate) struct Root {
    /// `None` once closed.
    inner: Mutex<Option<wasmhooks::files::Root>>,
    /// A plain descriptor of the folder, opened by the first `fileno()`
    /// (the handle the host holds may be an `O_PATH` one, which `flock`
    /// and `futimens` refuse); kept, with any lock on it, until `close`.
    plain: Mutex<Option<std::os::fd::OwnedFd>>,
    /// Where it is, for messages and `path`.
    path: PathBuf,
}

impl Root {
    pub(crate) fn wrap(inner: wasmhooks::files::Root) -> Self {
        Root {
            path: inner.path().to_owned(),
            inner: Mutex::new(Some(inner)),
            plain: Mutex::new(None),
        }
    }

    /// The plain descriptor `fileno()` opened, if it has.
    fn plain_fd(&self) -> Option<i32> {
        let plain = self.plain.lock().unwrap_or_else(PoisonError::into_inner);
        plain.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Where it is.
    pub(crate) fn path_str(&self) -> String {
        self.path.display().to_string()
    }

    /// Runs `f` on the open folder (GIL released); `ValueError` if closed.
    pub(crate) fn with<R: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&wasmhooks::files::Root) -> std::io::Result<R> + Send,
    ) -> PyResult<R> {
        let result = py.detach(|| {
            let guard = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            guard.as_ref().map(f)
        });
        match result {
            Some(r) => r.map_err(os_err),
            None => Err(PyValueError::new_err(format!(
                "{}: this Root is closed",
                self.path.display()
            ))),
        }
    }
}

#[pymethods]
impl Root {
    /// Opens the folder `path` (which the caller trusts); with `create`,
    /// makes it and its parents first.
    #[new]
    #[pyo3(signature = (path, create = false))]
    fn new(path: PathBuf, create: bool) -> PyResult<Self> {
        if create {
            std::fs::create_dir_all(&path).map_err(os_err)?;
        }
        Ok(Root::wrap(
            wasmhooks::files::Root::open(&path).map_err(os_err)?,
        ))
    }

    /// Where the folder is.
    #[getter]
    fn path(&self) -> String {
        self.path_str()
    }

    /// The folder's descriptor (for `flock`, `fstat`); it stays this
    /// root's, open while the root is.
    fn fileno(&self, py: Python<'_>) -> PyResult<i32> {
        if let Some(fd) = self.plain_fd() {
            return Ok(fd);
        }
        // Opened without holding `plain` (nor, in `with`, the GIL): a
        // second thread asking at the same time opens its own, and the
        // first one stored is kept.
        let fresh = self.with(py, plain_fd)?;
        let mut plain = self.plain.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(plain.get_or_insert(fresh).as_raw_fd())
    }

    /// Closes the folder's descriptor (and with it any lock taken on it);
    /// closing twice is harmless.
    fn close(&self) {
        drop(
            self.plain
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        drop(
            self.inner
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
    }

    /// The folder `rel` below this one, made (with its parents) if `create`.
    #[pyo3(signature = (rel, create = false))]
    fn dir(&self, py: Python<'_>, rel: &str, create: bool) -> PyResult<Root> {
        let rel = checked("folder", rel)?;
        self.with(py, |r| r.dir(&rel, create)).map(Root::wrap)
    }

    /// The regular file `rel`, whole, if it is at most `max_bytes`.
    fn read<'py>(
        &self,
        py: Python<'py>,
        rel: &str,
        max_bytes: u64,
    ) -> PyResult<Bound<'py, pyo3::types::PyBytes>> {
        let rel = checked("file", rel)?;
        let bytes = self.with(py, |r| r.read(&rel, max_bytes))?;
        Ok(pyo3::types::PyBytes::new(py, &bytes))
    }

    /// The regular file `rel` open for reading (a binary file object), if
    /// it is at most `max_bytes` now. For a caller that reads into its own
    /// buffer or keys on the open file's identity (`os.fstat`).
    fn open<'py>(&self, py: Python<'py>, rel: &str, max_bytes: u64) -> PyResult<Bound<'py, PyAny>> {
        let rel = checked("file", rel)?;
        let full = self.path.join(&rel);
        let file = self.with(py, |r| {
            let file = r.open_file(&rel)?;
            if file.metadata()?.len() > max_bytes {
                return Err(wasmhooks::files::too_large(&full, max_bytes));
            }
            Ok(file)
        })?;
        // Blocking again for reads: opened without, so a FIFO could not hang.
        let fd: std::os::fd::OwnedFd = file.into_std().into();
        rustix::fs::fcntl_setfl(&fd, rustix::fs::OFlags::empty()).map_err(|e| os_err(e.into()))?;
        let file = py
            .import("io")?
            .call_method1("open", (fd.as_raw_fd(), "rb"))?;
        // The file object owns the descriptor now (and closes it); had the
        // open failed, `fd` would have closed it on the way out.
        let _ = fd.into_raw_fd();
        Ok(file)
    }

    /// The size of the regular file `rel`; `None` if there is none, or a
    /// symlink, FIFO or device stands there (never followed or read).
    fn size(&self, py: Python<'_>, rel: &str) -> PyResult<Option<u64>> {
        let rel = checked("file", rel)?;
        self.with(py, |r| r.regular_len(&rel))
    }

    /// Writes `data` (any bytes-like object) to a fresh file beside `rel`
    /// and renames it over `rel`: no half-written file, and no symlink at
    /// either name is followed.
    fn write_atomic(&self, py: Python<'_>, rel: &str, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let rel = checked("file", rel)?;
        // Any bytes-like object (a memoryview, an Arrow buffer), as bytes;
        // through `memoryview`, so an int is refused rather than taken as
        // a count of zero bytes to write.
        let data = match data.cast::<pyo3::types::PyBytes>() {
            Ok(b) => b.clone(),
            Err(_) => py
                .import("builtins")?
                .getattr("memoryview")?
                .call1((data,))?
                .call_method0("tobytes")?
                .cast_into::<pyo3::types::PyBytes>()?,
        };
        let bytes = data.as_bytes();
        self.with(py, |r| r.write_atomic(&rel, bytes))
    }

    /// Removes the file (or symlink) `rel`, if it is there.
    fn remove(&self, py: Python<'_>, rel: &str) -> PyResult<()> {
        let rel = checked("file", rel)?;
        self.with(py, |r| match r.remove(&rel) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        })
    }

    /// Removes the folder `rel` and all in it, following no link.
    fn remove_dir_all(&self, py: Python<'_>, rel: &str) -> PyResult<()> {
        let rel = checked("folder", rel)?;
        self.with(py, |r| r.remove_dir_all(&rel))
    }

    /// Renames `src` over `dst`: a symlink at `dst` is replaced, not followed.
    fn rename(&self, py: Python<'_>, src: &str, dst: &str) -> PyResult<()> {
        let (src, dst) = (checked("file", src)?, checked("file", dst)?);
        self.with(py, |r| r.rename(&src, &dst))
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.close();
        false
    }

    fn __repr__(&self) -> String {
        format!("Root({:?})", self.path.display().to_string())
    }
}

/// A plain read-only descriptor of the folder `root` holds, for `flock`,
/// `fstat` and `futimens`.
pub(crate) fn plain_fd(root: &wasmhooks::files::Root) -> std::io::Result<std::os::fd::OwnedFd> {
    use rustix::fs::{Mode, OFlags, openat};
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    Ok(openat(root.as_fd(), ".", flags, Mode::empty())?)
}
