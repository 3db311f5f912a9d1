//! Fetching a model's files into a cache folder: from `file://` or
//! `http(s)://` sources, each file checked against its sha256, partial
//! downloads resumed with HTTP ranges, failures retried with backoff, and a
//! file already in the cache with the right digest not fetched again.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::super::LifecycleError;
use wasmhooks::files::{self, Root};

/// One file of a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    /// Path below the source and the cache folder.
    pub path: String,
    /// Expected sha256, lowercase hex.
    pub sha256: String,
    /// `model` (weights) or `tokenizer`.
    #[serde(default = "model_kind")]
    pub kind: String,
}

fn model_kind() -> String {
    "model".into()
}

impl ModelFile {
    /// Checks the `i`th file of a job's list: a path below the model's
    /// folder, a sha256 of 64 lowercase hex digits, a known kind.
    pub fn check(&mut self, i: usize) -> Result<(), String> {
        let field = format!("files[{i}]");
        let path = files::relative(&format!("{field}.path"), Path::new(&self.path))?;
        self.path = path.display().to_string();
        let hex = self.sha256.len() == 64
            && self
                .sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex {
            return Err(format!("{field}.sha256 must be 64 lowercase hex digits"));
        }
        if self.kind != "model" && self.kind != "tokenizer" {
            return Err(format!(
                "{field}.kind must be 'model' or 'tokenizer', not {:?}",
                wasmhooks::clean_text(&self.kind, 80)
            ));
        }
        Ok(())
    }
}

/// What one file's fetch came to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fetched {
    /// Path below the cache folder.
    pub path: String,
    /// Its size.
    pub bytes: u64,
    /// Whether it was in the cache already.
    pub cached: bool,
    /// Attempts it took (0 for a cache hit).
    pub attempts: u32,
    /// Bytes reused from a partial download.
    pub resumed_bytes: u64,
}

/// Where a fetch reads and writes, and how much it may take: the cache
/// folder and the job's folder (for `file://` sources) as capability
/// handles, so neither a planted symlink nor a source outside the job
/// reaches the host's files.
pub struct Fetch<'a> {
    /// The model's folder in the cache.
    pub dir: &'a Root,
    /// The job's folder: `file://` sources are read below it.
    pub job: &'a Root,
    /// Tries per file after the first.
    pub retries: u32,
    /// A transfer that receives nothing for this long is cut and retried.
    pub stall: Duration,
    /// Bytes all the files may take, downloaded or found in the cache.
    pub max_bytes: u64,
    /// Bytes one file may take.
    pub max_file_bytes: u64,
}

/// Fetches `files` from `source` (a `file://` path below the job's folder,
/// or an `http(s)://` base) into the cache folder.
pub fn fetch_all(
    source: &str,
    files: &[ModelFile],
    fetch: &Fetch<'_>,
) -> Result<Vec<Fetched>, LifecycleError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(10)))
        // A stall, not the whole transfer: each read restarts the clock.
        .timeout_per_read(Some(fetch.stall))
        // The response's head, however slowly it trickles in, within one
        // stall; its body is held to a floor of bytes a second (`Floor`).
        .timeout_recv_response(Some(fetch.stall))
        .http_status_as_error(false)
        .build()
        .into();
    let mut budget = fetch.max_bytes;
    let mut fetched = Vec::with_capacity(files.len());
    for file in files {
        let one = fetch_one(
            &agent,
            source,
            file,
            fetch,
            budget.min(fetch.max_file_bytes),
        )?;
        budget = budget.saturating_sub(one.bytes);
        fetched.push(one);
    }
    Ok(fetched)
}

fn fetch_one(
    agent: &ureq::Agent,
    source: &str,
    file: &ModelFile,
    fetch: &Fetch<'_>,
    budget: u64,
) -> Result<Fetched, LifecycleError> {
    let rel = safe_path(&file.path)?;
    let io = |e| LifecycleError::io(fetch.dir.path().join(&rel))(e);
    // Hashed only within the budget: a file larger than this one may take
    // (a sparse terabyte planted in the cache) is a miss, not hours read.
    if let Some(bytes) = fetch.dir.regular_len(&rel).map_err(io)?
        && bytes <= budget
        && sha256_file(fetch.dir, &rel)? == file.sha256
    {
        return Ok(Fetched {
            path: file.path.clone(),
            bytes,
            cached: true,
            attempts: 0,
            resumed_bytes: 0,
        });
    }
    // `weights.json` downloads into `weights.json.part`.
    let mut part = rel.clone().into_os_string();
    part.push(".part");
    let part = PathBuf::from(part);
    let url = format!("{}/{}", source.trim_end_matches('/'), file.path);
    let mut last_error = String::new();
    let mut resumed_bytes = 0;
    for attempt in 1..=fetch.retries.saturating_add(1) {
        if attempt > 1 {
            let backoff = 100u64.saturating_mul(1 << (attempt - 2).min(5));
            std::thread::sleep(Duration::from_millis(backoff));
        }
        match transfer(agent, &url, fetch, &part, budget) {
            Ok(resumed) => {
                resumed_bytes += resumed;
                let digest = sha256_file(fetch.dir, &part)?;
                if digest != file.sha256 {
                    last_error = format!("sha256 is {digest}, expected {}", file.sha256);
                    fetch.dir.remove(&part).map_err(io)?;
                    continue;
                }
                fetch.dir.rename(&part, &rel).map_err(io)?;
                let bytes = fetch.dir.file_len(&rel).map_err(io)?.unwrap_or(0);
                return Ok(Fetched {
                    path: file.path.clone(),
                    bytes,
                    cached: false,
                    attempts: attempt,
                    resumed_bytes,
                });
            }
            Err(Failure::OverBudget) => return Err(over_budget(&file.path, budget)),
            Err(Failure::Other(e)) => {
                tracing::warn!(url, attempt, "download failed: {e}");
                last_error = e;
            }
        }
    }
    Err(LifecycleError::Config(format!(
        "cannot download {url} after {} attempts: {last_error}",
        fetch.retries.saturating_add(1)
    )))
}

fn over_budget(path: &str, budget: u64) -> LifecycleError {
    LifecycleError::Config(format!(
        "downloading {path} would take more than the {budget} bytes it may still take \
         (the operator's max_download_mib for the job, max_file_mib for a file)"
    ))
}

/// `download_result`: what a node's download came to, for the plugins.
pub fn result(mode: &str, dir: &Path, fetched: &[Fetched]) -> serde_json::Value {
    let downloaded: u64 = fetched.iter().filter(|f| !f.cached).map(|f| f.bytes).sum();
    serde_json::json!({
        "mode": mode,
        "dir": dir.display().to_string(),
        "files": fetched,
        "bytes_downloaded": downloaded,
        "cache_hits": fetched.iter().filter(|f| f.cached).count(),
    })
}

/// Why a transfer stopped.
enum Failure {
    /// More bytes than the job may download: not worth a retry.
    OverBudget,
    Other(String),
}

impl From<String> for Failure {
    fn from(e: String) -> Self {
        Failure::Other(e)
    }
}

/// Moves the bytes of `url` into `part`, continuing what is there; returns
/// how many bytes it continued from.
fn transfer(
    agent: &ureq::Agent,
    url: &str,
    fetch: &Fetch<'_>,
    part: &Path,
    budget: u64,
) -> Result<u64, Failure> {
    let text = |e: std::io::Error| Failure::Other(e.to_string());
    if let Some(path) = url.strip_prefix("file://") {
        let source = fetch.job.open_file(Path::new(path)).map_err(text)?;
        let out = fetch.dir.create(part).map_err(text)?;
        copy_capped(source, out, budget)?;
        return Ok(0);
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(Failure::Other(format!(
            "{url}: only file://, http:// and https:// sources are supported"
        )));
    }
    let mut have = fetch.dir.regular_len(part).map_err(text)?.unwrap_or(0);
    if have > budget {
        // Not ours to hash or resume: more than this file may take.
        fetch.dir.remove(part).map_err(text)?;
        have = 0;
    }
    let mut request = agent.get(url);
    if have > 0 {
        request = request.header("Range", format!("bytes={have}-"));
    }
    let response = request.call().map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let (out, resumed, total) = match status {
        206 => {
            let out = fetch.dir.append(part).map_err(text)?;
            (
                out,
                have,
                content_length(&response).map(|n| n.saturating_add(have)),
            )
        }
        200 => {
            let out = fetch.dir.create(part).map_err(text)?;
            (out, 0, content_length(&response))
        }
        // The part was complete already: nothing more to send.
        416 if have > 0 => return Ok(have),
        other => return Err(Failure::Other(format!("HTTP {other}"))),
    };
    if total.is_some_and(|t| t > budget) {
        return Err(Failure::OverBudget);
    }
    let bar = progress(url, total, resumed);
    let body = Floor::new(response.into_body().into_reader(), fetch.stall);
    let got = copy_capped(bar.wrap_read(body), out, budget.saturating_sub(resumed))?
        .saturating_add(resumed);
    bar.finish_and_clear();
    if let Some(total) = total
        && got != total
    {
        return Err(Failure::Other(format!(
            "connection closed after {got} of {total} bytes"
        )));
    }
    Ok(resumed)
}

/// Bytes a second a transfer must keep up, averaged over each stall window:
/// a source that sends a byte now and then never stalls a read, and would
/// otherwise hold the download (and the cache folder's lock) for days.
const MIN_BYTES_PER_S: u64 = 1024;

/// A body reader held to [`MIN_BYTES_PER_S`] over every window of `window`.
struct Floor<R> {
    inner: R,
    window: Duration,
    started: std::time::Instant,
    got: u64,
}

impl<R> Floor<R> {
    fn new(inner: R, window: Duration) -> Self {
        Floor {
            inner,
            window,
            started: std::time::Instant::now(),
            got: 0,
        }
    }
}

impl<R: Read> Read for Floor<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.got = self.got.saturating_add(n as u64);
        let elapsed = self.started.elapsed();
        if elapsed >= self.window {
            let floor = MIN_BYTES_PER_S.saturating_mul(self.window.as_secs().max(1));
            if self.got < floor && n > 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "{} bytes in {} s: slower than {MIN_BYTES_PER_S} bytes a second",
                        self.got,
                        elapsed.as_secs()
                    ),
                ));
            }
            self.started = std::time::Instant::now();
            self.got = 0;
        }
        Ok(n)
    }
}

/// Copies at most `budget` bytes; more is `OverBudget`.
fn copy_capped(from: impl Read, mut to: impl Write, budget: u64) -> Result<u64, Failure> {
    let text = |e: std::io::Error| Failure::Other(e.to_string());
    let copied = std::io::copy(&mut from.take(budget.saturating_add(1)), &mut to).map_err(text)?;
    if copied > budget {
        return Err(Failure::OverBudget);
    }
    to.flush().map_err(text)?;
    Ok(copied)
}

fn content_length(response: &ureq::http::Response<ureq::Body>) -> Option<u64> {
    response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// A progress bar on stderr; indicatif hides it when stderr is no terminal.
fn progress(url: &str, total: Option<u64>, done: u64) -> ProgressBar {
    let bar = ProgressBar::new(total.unwrap_or(0));
    if let Ok(style) =
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(wasmhooks::clean_text(
        url.rsplit('/').next().unwrap_or(url),
        80,
    ));
    bar.set_position(done);
    bar
}

/// A model file's path below the cache, refusing paths that climb out.
fn safe_path(rel: &str) -> Result<PathBuf, LifecycleError> {
    let path = Path::new(rel);
    let ok = path
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !ok || path.as_os_str().is_empty() {
        return Err(LifecycleError::Config(format!(
            "model file path {:?} must be relative and stay inside the cache",
            wasmhooks::clean_text(rel, 200)
        )));
    }
    Ok(path.to_owned())
}

/// The sha256 of a file below `dir`, lowercase hex.
pub fn sha256_file(dir: &Root, rel: &Path) -> Result<String, LifecycleError> {
    let path = dir.path().join(rel);
    let mut file = dir.open_file(rel).map_err(LifecycleError::io(&path))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(LifecycleError::io(&path))?;
    Ok(format!("{:x}", hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_may_not_leave_the_cache() {
        assert!(safe_path("a/b.bin").is_ok());
        for bad in ["../etc/passwd", "/etc/passwd", "a/../../b", ""] {
            assert!(safe_path(bad).is_err(), "{bad}");
        }
    }

    fn fetch<'a>(dir: &'a Root, job: &'a Root, retries: u32, max_bytes: u64) -> Fetch<'a> {
        Fetch {
            dir,
            job,
            retries,
            stall: Duration::from_secs(5),
            max_bytes,
            max_file_bytes: u64::MAX,
        }
    }

    #[test]
    fn file_sources_are_copied_verified_and_cached() {
        let job_dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(job_dir.path().join("src")).unwrap();
        std::fs::write(job_dir.path().join("src/w.bin"), b"weights").unwrap();
        let job = Root::open(job_dir.path()).unwrap();
        let cache = job.dir(Path::new("cache/m"), true).unwrap();
        let file = ModelFile {
            path: "w.bin".into(),
            sha256: format!("{:x}", Sha256::digest(b"weights")),
            kind: "model".into(),
        };
        let first = fetch_all(
            "file://src",
            std::slice::from_ref(&file),
            &fetch(&cache, &job, 0, 100),
        )
        .unwrap();
        assert!(!first[0].cached);
        let again = fetch_all(
            "file://src",
            std::slice::from_ref(&file),
            &fetch(&cache, &job, 0, 100),
        )
        .unwrap();
        assert!(again[0].cached);

        let err = fetch_all(
            "file://src",
            std::slice::from_ref(&file),
            &fetch(&cache, &job, 0, 3),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("max_download_mib"), "{err}");

        let wrong = ModelFile {
            sha256: "00".repeat(32),
            ..file.clone()
        };
        let err = fetch_all("file://src", &[wrong], &fetch(&cache, &job, 1, 100))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("after 2 attempts") && err.contains("expected 0000"),
            "{err}"
        );
        // A source outside the job's folder is never read.
        let err = fetch_all(
            "file:///etc",
            &[ModelFile {
                path: "hostname".into(),
                ..file
            }],
            &fetch(&cache, &job, 0, 100),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("leaves its folder"), "{err}");
    }

    #[test]
    fn a_trickle_is_cut_and_an_oversized_cache_file_is_not_read() {
        // One byte every 30 ms: never a stalled read, far under the floor.
        struct Trickle;
        impl Read for Trickle {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                std::thread::sleep(Duration::from_millis(30));
                buf[0] = b'x';
                Ok(1)
            }
        }
        let mut floor = Floor::new(Trickle, Duration::from_millis(100));
        let err = std::io::copy(&mut floor, &mut std::io::sink()).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");

        let job_dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(job_dir.path().join("src")).unwrap();
        std::fs::write(job_dir.path().join("src/w.bin"), b"weights").unwrap();
        let job = Root::open(job_dir.path()).unwrap();
        let cache = job.dir(Path::new("cache/m"), true).unwrap();
        // A sparse terabyte planted at the file's name: a miss, replaced,
        // never hashed (which would take hours).
        let planted = std::fs::File::create(job_dir.path().join("cache/m/w.bin")).unwrap();
        planted.set_len(1 << 40).unwrap();
        let file = ModelFile {
            path: "w.bin".into(),
            sha256: format!("{:x}", Sha256::digest(b"weights")),
            kind: "model".into(),
        };
        let got = fetch_all("file://src", &[file], &fetch(&cache, &job, 0, 100)).unwrap();
        assert!(!got[0].cached);
        assert_eq!(
            std::fs::read(job_dir.path().join("cache/m/w.bin")).unwrap(),
            b"weights"
        );
    }
}
