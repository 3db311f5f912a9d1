//! The host's own file reads and writes for a job, through capability
//! handles (`cap_std::fs::Dir`) opened on a folder the caller trusts (the job
//! bundle). Everything a job names is a path *below* such a folder; every
//! component of it is opened without following symlinks, files are opened
//! without blocking and must be regular files, and reads are capped.
//!
//! Why: a job's folders are shared with its plugins (a read-write grant) and
//! with whatever the job shipped. A relative symlink a plugin leaves behind
//! (`output/checkpoints -> ../../../home`), a FIFO (`job.toml` that never
//! ends) or `/dev/zero` behind a checkpoint's name must not make the host
//! write outside the job, hang, or read without end.

use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use cap_fs_ext::{DirExt, FollowSymlinks, OpenOptionsFollowExt};
use cap_std::fs::{Dir, File, OpenOptions};

/// A folder the host works in, and what it is called in messages.
#[derive(Debug)]
pub struct Root {
    dir: Dir,
    path: PathBuf,
}

/// Components a path a job gives may have, and its bytes: a path is a name
/// below a folder, not a place to hide a quadratic walk or a huge string.
pub const MAX_COMPONENTS: usize = 64;
/// Bytes of a path a job gives, at most.
pub const MAX_PATH_BYTES: usize = 4096;

/// Checks that `rel` (a path a job gave for `field`) stays below its folder:
/// relative, with no `..`, no root and no prefix, no NUL, at most
/// [`MAX_PATH_BYTES`] bytes and [`MAX_COMPONENTS`] components. Returns it
/// with its `.` components dropped.
pub fn relative(field: &str, rel: &Path) -> Result<PathBuf, String> {
    use std::os::unix::ffi::OsStrExt;
    let shown = || crate::text::clean(&rel.display().to_string(), 200);
    let bytes = rel.as_os_str().as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_PATH_BYTES || bytes.contains(&0) {
        return Err(format!(
            "{field} = {:?}: a path of 1 to {MAX_PATH_BYTES} bytes without NUL",
            shown()
        ));
    }
    let mut parts = PathBuf::new();
    let mut count = 0;
    for c in rel.components() {
        match c {
            Component::Normal(part) => {
                parts.push(part);
                count += 1;
            }
            Component::CurDir => {}
            _ => {
                return Err(format!(
                    "{field} = {:?} must be a relative path that stays inside the job's folder",
                    shown()
                ));
            }
        }
    }
    if count > MAX_COMPONENTS {
        return Err(format!(
            "{field} = {:?}: at most {MAX_COMPONENTS} path components",
            shown()
        ));
    }
    // `.` (the folder itself) is a folder a job may name; as a file's
    // path it names nothing, and opening it fails.
    Ok(if count == 0 {
        PathBuf::from(".")
    } else {
        parts
    })
}

/// What an entry of a folder is, seen without following it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A folder.
    Folder,
    /// A symbolic link (never followed).
    Symlink,
    /// A FIFO, a socket or a device.
    Other,
}

fn nofollow_file() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.follow(FollowSymlinks::No);
    // A FIFO or a device opens without waiting for a writer; the type check
    // after the open then refuses it.
    cap_std::fs::OpenOptionsExt::custom_flags(
        &mut options,
        rustix::fs::OFlags::NONBLOCK.bits() as i32,
    );
    options
}

impl std::os::fd::AsFd for Root {
    /// The folder's descriptor, to lock it (`flock`) or to ask what it is.
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.dir.as_fd()
    }
}

impl Root {
    /// Opens `path` itself, which the caller trusts (a folder it was given on
    /// the command line, say).
    pub fn open(path: &Path) -> io::Result<Self> {
        let dir = Dir::open_ambient_dir(path, cap_std::ambient_authority())?;
        Ok(Root {
            dir,
            path: path.to_owned(),
        })
    }

    /// Where this folder is, for messages and for the paths given to
    /// plugins and engines.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The sub-folder `rel`, each component opened without following a
    /// symlink; with `create`, missing folders are made.
    pub fn dir(&self, rel: &Path, create: bool) -> io::Result<Root> {
        let mut dir = self.dir.try_clone()?;
        let mut path = self.path.clone();
        for part in clean_components(rel)? {
            let next = match dir.open_dir_nofollow(part) {
                Err(e) if create && e.kind() == io::ErrorKind::NotFound => {
                    match dir.create_dir(part) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                        Err(e) => return Err(e),
                    }
                    dir.open_dir_nofollow(part)
                }
                other => other,
            };
            path.push(part);
            dir = next.map_err(|e| explain(&dir, part, &path, e))?;
        }
        Ok(Root { dir, path })
    }

    /// Opens the regular file `rel` for reading.
    pub fn open_file(&self, rel: &Path) -> io::Result<File> {
        let (parent, name) = self.parent_of(rel, false)?;
        let file = parent
            .dir
            .open_with(name, nofollow_file().read(true))
            .map_err(|e| explain(&parent.dir, name, &self.path.join(rel), e))?;
        regular(&file, &self.path.join(rel))?;
        Ok(file)
    }

    /// Reads the regular file `rel`, refusing it if it is over `max` bytes.
    pub fn read(&self, rel: &Path, max: u64) -> io::Result<Vec<u8>> {
        let file = self.open_file(rel)?;
        read_capped(file, max, &self.path.join(rel))
    }

    /// Writes `bytes` to `rel` through a new temporary file renamed over it,
    /// so a crash never leaves half a file and no symlink planted at either
    /// name is followed.
    pub fn write_atomic(&self, rel: &Path, bytes: &[u8]) -> io::Result<()> {
        let (parent, name) = self.parent_of(rel, true)?;
        let tmp = format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id());
        // A leftover of ours, or a plugin's plant: not ours to follow.
        match parent.dir.remove_file_or_symlink(&tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let written = parent
            .dir
            .open_with(&tmp, nofollow_file().write(true).create_new(true))
            .and_then(|mut file| {
                file.write_all(bytes)?;
                file.sync_data()
            })
            .and_then(|()| parent.dir.rename(&tmp, &parent.dir, name));
        if written.is_err() {
            // No half-written file left behind under the temporary name.
            let _ = parent.dir.remove_file_or_symlink(&tmp);
        }
        written
    }

    /// Creates `rel` anew (replacing a file or symlink there) for writing.
    pub fn create(&self, rel: &Path) -> io::Result<File> {
        let (parent, name) = self.parent_of(rel, true)?;
        match parent.dir.remove_file_or_symlink(name) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        parent
            .dir
            .open_with(name, nofollow_file().write(true).create_new(true))
    }

    /// Opens the regular file `rel` to append to it.
    pub fn append(&self, rel: &Path) -> io::Result<File> {
        let (parent, name) = self.parent_of(rel, false)?;
        let file = parent
            .dir
            .open_with(name, nofollow_file().append(true))
            .map_err(|e| explain(&parent.dir, name, &self.path.join(rel), e))?;
        regular(&file, &self.path.join(rel))?;
        Ok(file)
    }

    /// The size of the regular file `rel`, or `None` if there is none.
    pub fn file_len(&self, rel: &Path) -> io::Result<Option<u64>> {
        match self.open_file(rel) {
            Ok(file) => Ok(Some(file.metadata()?.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The size of the regular file `rel`, or `None` where there is none,
    /// or where a symlink, FIFO, socket or device stands at its name
    /// (something planted): never followed or read, and replaced by a
    /// rename onto that name.
    pub fn regular_len(&self, rel: &Path) -> io::Result<Option<u64>> {
        match self.file_len(rel) {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::PermissionDenied
                        | io::ErrorKind::InvalidInput
                        | io::ErrorKind::NotADirectory
                ) || e.raw_os_error() == Some(rustix::io::Errno::NXIO.raw_os_error()) =>
            {
                Ok(None)
            }
            other => other,
        }
    }

    /// Renames `from` to `to`, both in this folder tree.
    pub fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (a, a_name) = self.parent_of(from, false)?;
        let (b, b_name) = self.parent_of(to, true)?;
        a.dir.rename(a_name, &b.dir, b_name)
    }

    /// Removes the file (or symlink) `rel`; never what a symlink points to.
    pub fn remove(&self, rel: &Path) -> io::Result<()> {
        let (parent, name) = self.parent_of(rel, false)?;
        parent.dir.remove_file_or_symlink(name)
    }

    /// The names of the regular files directly in this folder (symlinks and
    /// anything else are passed over), sorted.
    pub fn files(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        // A fresh handle: a clone shares its read position with the one it
        // was cloned from, so a second listing would come back empty.
        for entry in self.dir.open_dir(".")?.entries()? {
            let entry = entry?;
            if entry.file_type()?.is_file()
                && let Ok(name) = entry.file_name().into_string()
            {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// The entries directly in this folder, each with what it is (a link
    /// is reported, not followed), sorted by name; names that are not
    /// UTF-8 are refused, as no job path could name them.
    pub fn entries(&self) -> io::Result<Vec<(String, EntryKind)>> {
        let mut out = Vec::new();
        for entry in self.dir.open_dir(".")?.entries()? {
            let entry = entry?;
            let kind = entry.file_type()?;
            let kind = if kind.is_file() {
                EntryKind::File
            } else if kind.is_dir() {
                EntryKind::Folder
            } else if kind.is_symlink() {
                EntryKind::Symlink
            } else {
                EntryKind::Other
            };
            let name = entry.file_name().into_string().map_err(|name| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}/{name:?}: a name that is not UTF-8", self.path.display()),
                )
            })?;
            out.push((name, kind));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Removes the folder `rel` and everything in it, following no link.
    pub fn remove_dir_all(&self, rel: &Path) -> io::Result<()> {
        let (parent, name) = self.parent_of(rel, false)?;
        parent.dir.remove_dir_all(name)
    }

    /// Bytes and entries below this folder, counted without following
    /// symlinks; stops counting past `max_entries`.
    pub fn size(&self, max_entries: usize) -> io::Result<FolderSize> {
        let mut size = FolderSize::default();
        let mut stack = vec![self.dir.open_dir(".")?];
        while let Some(dir) = stack.pop() {
            for entry in dir.entries()? {
                let entry = entry?;
                size.entries += 1;
                if size.entries > max_entries {
                    return Ok(size);
                }
                let kind = entry.file_type()?;
                if kind.is_dir() {
                    if let Ok(sub) = dir.open_dir_nofollow(entry.file_name()) {
                        stack.push(sub);
                    }
                } else {
                    size.bytes = size.bytes.saturating_add(entry.metadata()?.len());
                }
            }
        }
        Ok(size)
    }

    /// The folder holding `rel` and its last component.
    fn parent_of<'a>(
        &self,
        rel: &'a Path,
        create: bool,
    ) -> io::Result<(Root, &'a std::ffi::OsStr)> {
        let parts = clean_components(rel)?;
        let Some((name, dirs)) = parts.split_last() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an empty path names no file",
            ));
        };
        let parent: PathBuf = dirs.iter().collect();
        Ok((self.dir(&parent, create)?, name))
    }
}

/// What a folder holds: its bytes and entries.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FolderSize {
    /// Bytes of its files (their lengths, so a sparse file counts whole).
    pub bytes: u64,
    /// Files, folders and links.
    pub entries: usize,
}

fn clean_components(rel: &Path) -> io::Result<Vec<&std::ffi::OsStr>> {
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(p) => parts.push(p),
            Component::CurDir => {}
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "{:?} leaves its folder; only relative paths below it are used",
                        rel.display()
                    ),
                ));
            }
        }
    }
    Ok(parts)
}

/// Says in words why opening `name` failed where the reason is a symlink.
fn explain(dir: &Dir, name: &std::ffi::OsStr, full: &Path, e: io::Error) -> io::Error {
    let is_link = dir
        .symlink_metadata(name)
        .is_ok_and(|m| m.file_type().is_symlink());
    if is_link {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is a symbolic link; the host follows none in a job's folders",
                full.display()
            ),
        )
    } else {
        e
    }
}

fn regular(file: &File, path: &Path) -> io::Result<()> {
    let kind = file.metadata()?.file_type();
    if kind.is_file() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is not a regular file{}",
                path.display(),
                if kind.is_dir() { " but a folder" } else { "" }
            ),
        ))
    }
}

/// Reads all of `reader`, refusing more than `max` bytes.
pub fn read_capped(reader: impl Read, max: u64, path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    reader.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(too_large(path, max));
    }
    Ok(bytes)
}

/// The error for a file over its cap.
pub fn too_large(path: &Path, max: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::FileTooLarge,
        format!("{} is larger than the {max} bytes allowed", path.display()),
    )
}

/// Reads a regular file the caller names by a trusted path (a plugin file
/// on the command line), without blocking on a FIFO and within `max` bytes.
pub fn read_regular(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)?;
    let kind = file.metadata()?.file_type();
    if !kind.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        ));
    }
    read_capped(file, max, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_stay_below_their_folder() {
        assert!(relative("f", Path::new("a/b.json")).is_ok());
        assert!(relative("f", Path::new("./a")).is_ok());
        assert_eq!(
            relative("f", Path::new("./a/./b")).unwrap(),
            Path::new("a/b")
        );
        let deep = vec!["d"; 65].join("/");
        let long = "x".repeat(4097);
        for bad in ["/etc/passwd", "../x", "a/../../b", "", &deep, &long, "a\0b"] {
            let err = relative("output_dir", Path::new(bad)).unwrap_err();
            assert!(err.contains("output_dir"), "{err}");
        }
    }

    #[test]
    fn symlinks_are_never_followed_and_fifos_never_block() {
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("secret");
        std::fs::write(&secret, "keep").unwrap();
        let job = tempfile::tempdir().unwrap();
        std::fs::create_dir(job.path().join("out")).unwrap();
        // A link out of the job, as a plugin with a read-write grant can make.
        std::os::unix::fs::symlink(&secret, job.path().join("out/ckpt.json")).unwrap();
        std::os::unix::fs::symlink(outside.path(), job.path().join("linked")).unwrap();
        let root = Root::open(job.path()).unwrap();

        root.write_atomic(Path::new("out/ckpt.json"), b"new")
            .unwrap();
        assert_eq!(std::fs::read_to_string(&secret).unwrap(), "keep");
        assert_eq!(
            std::fs::read(job.path().join("out/ckpt.json")).unwrap(),
            b"new"
        );

        let err = root.write_atomic(Path::new("linked/x"), b"x").unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(!outside.path().join("x").exists());
        let err = root.read(Path::new("linked/secret"), 100).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");

        let status = std::process::Command::new("mkfifo")
            .arg(job.path().join("fifo"))
            .status()
            .unwrap();
        assert!(status.success());
        let err = root.read(Path::new("fifo"), 100).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");

        std::fs::write(job.path().join("big"), vec![0u8; 1000]).unwrap();
        let err = root.read(Path::new("big"), 999).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::FileTooLarge);
        assert_eq!(root.read(Path::new("big"), 1000).unwrap().len(), 1000);
        assert_eq!(
            root.dir(Path::new("out"), false).unwrap().files().unwrap(),
            ["ckpt.json"]
        );
    }
}
