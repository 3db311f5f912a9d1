//! A job bundle packed to travel (to the other machines of a Ray cluster,
//! through its object store) and unpacked where it lands.
//!
//! A bundle holds only files and folders. A symlink in it would be followed
//! by whoever copies the folder, and a FIFO would block them, so packing
//! refuses both; every file is read through [`Root`], which follows no link
//! at any depth. Unpacking takes only files and folders below the target,
//! into a temporary folder renamed into place when whole.

use std::io::Read;
use std::path::{Path, PathBuf};

use wasmhooks::files::{self, EntryKind, Root};

use crate::LifecycleError;

/// Entries a bundle may hold, files and folders together.
pub const MAX_ENTRIES: usize = 100_000;

/// Packs the folder `dir` as an uncompressed tar of its files and folders,
/// without those at the paths in `skip` (the download cache, the output).
/// At most `max_bytes` of file content, [`MAX_ENTRIES`] entries and
/// [`files::MAX_COMPONENTS`] levels of folders (what unpacking takes); a
/// symlink, a FIFO, a device or a socket anywhere in it is refused. The
/// same folder packs to the same bytes.
pub fn pack(dir: &Path, skip: &[PathBuf], max_bytes: u64) -> Result<Vec<u8>, LifecycleError> {
    let root = Root::open(dir).map_err(LifecycleError::io(dir))?;
    let mut tar = tar::Builder::new(Vec::new());
    tar.mode(tar::HeaderMode::Deterministic);
    let (mut total, mut entries) = (0u64, 0usize);
    // Folders still to list, each with its path in the bundle: a stack, not
    // recursion, so a deep tree costs memory, not the thread's stack.
    let mut folders = vec![(root, PathBuf::new())];
    while let Some((folder, rel)) = folders.pop() {
        let here = folder.path().to_owned();
        for (name, kind) in folder.entries().map_err(LifecycleError::io(&here))? {
            let child = rel.join(&name);
            if skip.iter().any(|s| s == &child) {
                continue;
            }
            entries += 1;
            if entries > MAX_ENTRIES {
                return Err(LifecycleError::Config(format!(
                    "{}: more than {MAX_ENTRIES} entries",
                    dir.display()
                )));
            }
            let full = here.join(&name);
            let io = LifecycleError::io(&full);
            match kind {
                EntryKind::Folder => {
                    if child.components().count() >= files::MAX_COMPONENTS {
                        return Err(LifecycleError::Config(format!(
                            "{}: folders nested more than {} deep",
                            full.display(),
                            files::MAX_COMPONENTS
                        )));
                    }
                    let mut header = tar::Header::new_gnu();
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(0o755);
                    header.set_size(0);
                    tar.append_data(&mut header, &child, std::io::empty())
                        .map_err(io)?;
                    let sub = folder
                        .dir(Path::new(&name), false)
                        .map_err(LifecycleError::io(&full))?;
                    folders.push((sub, child));
                }
                EntryKind::File => {
                    let file = folder.open_file(Path::new(&name)).map_err(io)?;
                    let len = file.metadata().map_err(LifecycleError::io(&full))?.len();
                    total = total.saturating_add(len);
                    if total > max_bytes {
                        return Err(LifecycleError::Config(format!(
                            "{}: the bundle's files come to more than the {max_bytes} bytes a bundle may carry",
                            full.display()
                        )));
                    }
                    let mut header = tar::Header::new_gnu();
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(0o644);
                    header.set_size(len);
                    // Exactly the length stated: a file that grows while
                    // read is cut there, and one that shrinks is an error
                    // rather than an archive that lies.
                    let exact = Exact {
                        inner: file.take(len),
                        left: len,
                    };
                    tar.append_data(&mut header, &child, exact)
                        .map_err(LifecycleError::io(&full))?;
                }
                EntryKind::Symlink | EntryKind::Other => {
                    let what = if kind == EntryKind::Symlink {
                        "a symlink"
                    } else {
                        "not a regular file"
                    };
                    return Err(LifecycleError::Config(format!(
                        "{}: {what}; a job bundle holds only files and folders",
                        full.display()
                    )));
                }
            }
        }
    }
    tar.into_inner().map_err(LifecycleError::io(dir))
}

/// A reader of exactly `left` more bytes: ending sooner is an error.
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.left > 0 && !buf.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "the file shrank while it was packed ({} bytes short)",
                    self.left
                ),
            ));
        }
        self.left = self.left.saturating_sub(n as u64);
        Ok(n)
    }
}

/// Unpacks a [`pack`]ed bundle as the folder `name` below `into`, once: a
/// folder already there is taken as it is (`name` is the archive's digest).
/// Returns the folder's path. Only files and folders below the target are
/// made; anything else in the archive is refused.
pub fn unpack(data: &[u8], into: &Root, name: &str) -> Result<PathBuf, LifecycleError> {
    let name_path =
        files::relative("bundle name", Path::new(name)).map_err(LifecycleError::Config)?;
    if name_path.components().count() != 1 {
        return Err(LifecycleError::Config(format!(
            "bundle name {:?}: one folder name",
            wasmhooks::clean_text(name, 80)
        )));
    }
    let final_path = into.path().join(&name_path);
    if into.dir(&name_path, false).is_ok() {
        return Ok(final_path);
    }
    // A name of the caller's (a sha256 on Ray): only its first letters and
    // digits name the temporary folder.
    let short: String = name
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(16)
        .collect();
    let tmp = format!(".{short}-{}-{}", std::process::id(), unique());
    let tmp_path = Path::new(&tmp);
    let result = extract(data, into, tmp_path);
    let result = result.and_then(|()| match into.rename(tmp_path, &name_path) {
        Ok(()) => Ok(()),
        // Another process unpacked it first.
        Err(_) if into.dir(&name_path, false).is_ok() => Ok(()),
        Err(e) => Err(LifecycleError::io(&final_path)(e)),
    });
    if into.dir(tmp_path, false).is_ok() {
        let _ = into.remove_dir_all(tmp_path);
    }
    result.map(|()| final_path)
}

fn extract(data: &[u8], into: &Root, tmp: &Path) -> Result<(), LifecycleError> {
    let target = into
        .dir(tmp, true)
        .map_err(LifecycleError::io(into.path().join(tmp)))?;
    let bad = |m: String| LifecycleError::Config(format!("the packed bundle: {m}"));
    let mut archive = tar::Archive::new(data);
    for entry in archive.entries().map_err(|e| bad(e.to_string()))? {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let path = entry.path().map_err(|e| bad(e.to_string()))?.into_owned();
        let rel = files::relative("entry", &path).map_err(bad)?;
        let io = LifecycleError::io(target.path().join(&rel));
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                target.dir(&rel, true).map_err(io)?;
            }
            tar::EntryType::Regular => {
                let mut out = target.create(&rel).map_err(io)?;
                std::io::copy(&mut entry, &mut out)
                    .map_err(LifecycleError::io(target.path().join(&rel)))?;
            }
            other => return Err(bad(format!("{}: a {other:?} entry", rel.display()))),
        }
    }
    Ok(())
}

/// A number no other unpacking in this process uses at the same time.
fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_files_and_folders_and_refuses_links() {
        let job = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(job.path().join("plugins/deep")).unwrap();
        std::fs::write(job.path().join("job.toml"), "name = 'x'").unwrap();
        std::fs::write(job.path().join("plugins/deep/a.wasm"), b"wasm").unwrap();
        std::fs::create_dir(job.path().join("cache")).unwrap();
        std::fs::write(job.path().join("cache/big"), vec![0u8; 1000]).unwrap();
        let data = pack(job.path(), &[PathBuf::from("cache")], 100).unwrap();
        // Deterministic: the same folder packs to the same bytes.
        assert_eq!(
            data,
            pack(job.path(), &[PathBuf::from("cache")], 100).unwrap()
        );
        let err = pack(job.path(), &[], 100).unwrap_err().to_string();
        assert!(err.contains("more than the 100 bytes"), "{err}");

        let into_dir = tempfile::tempdir().unwrap();
        let into = Root::open(into_dir.path()).unwrap();
        let at = unpack(&data, &into, "abc").unwrap();
        assert_eq!(
            std::fs::read(at.join("plugins/deep/a.wasm")).unwrap(),
            b"wasm"
        );
        assert!(!at.join("cache").exists());
        // Once: a second unpack takes the folder as it is.
        assert_eq!(unpack(b"not a tar", &into, "abc").unwrap(), at);
        assert!(unpack(b"not a tar at all, not even close", &into, "def").is_err());
        assert_eq!(
            into.entries().unwrap().len(),
            1,
            "no temporary folder is left"
        );

        let mut deep = job.path().join("deep");
        for _ in 0..70 {
            deep.push("d");
        }
        std::fs::create_dir_all(&deep).unwrap();
        let err = pack(job.path(), &[], 1 << 20).unwrap_err().to_string();
        assert!(err.contains("nested more than 64 deep"), "{err}");
        std::fs::remove_dir_all(job.path().join("deep")).unwrap();
        let err = unpack(&data, &into, "a/b").unwrap_err().to_string();
        assert!(err.contains("one folder name"), "{err}");
        assert!(unpack(&data, &into, &("a".repeat(15) + "é")).is_ok());

        std::os::unix::fs::symlink("/etc", job.path().join("plugins/etc")).unwrap();
        let err = pack(job.path(), &[], 1 << 20).unwrap_err().to_string();
        assert!(
            err.contains("a symlink; a job bundle holds only files and folders"),
            "{err}"
        );
    }
}
