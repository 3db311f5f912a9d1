//! Fetching a model's files into a cache folder: from `file://` or
//! `http(s)://` sources, each file checked against its sha256, partial
//! downloads resumed with HTTP ranges, failures retried with backoff, and a
//! file already in the cache with the right digest not fetched again.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::super::LifecycleError;

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

/// Fetches `files` from `source` (a `file://` or `http(s)://` base) into
/// `dir`, trying each up to `retries + 1` times; a transfer that receives
/// nothing for `stall` is cut and retried.
pub fn fetch_all(
    source: &str,
    files: &[ModelFile],
    dir: &Path,
    retries: u32,
    stall: Duration,
) -> Result<Vec<Fetched>, LifecycleError> {
    std::fs::create_dir_all(dir).map_err(LifecycleError::io(dir))?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(10)))
        // A stall, not the whole transfer: each read restarts the clock.
        .timeout_per_read(Some(stall))
        .http_status_as_error(false)
        .build()
        .into();
    files
        .iter()
        .map(|f| fetch_one(&agent, source, f, dir, retries))
        .collect()
}

fn fetch_one(
    agent: &ureq::Agent,
    source: &str,
    file: &ModelFile,
    dir: &Path,
    retries: u32,
) -> Result<Fetched, LifecycleError> {
    let dest = safe_join(dir, &file.path)?;
    if dest.is_file() && sha256_file(&dest)? == file.sha256 {
        let bytes = dest.metadata().map_err(LifecycleError::io(&dest))?.len();
        return Ok(Fetched {
            path: file.path.clone(),
            bytes,
            cached: true,
            attempts: 0,
            resumed_bytes: 0,
        });
    }
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(LifecycleError::io(parent))?;
    }
    // `weights.json` downloads into `weights.json.part`.
    let mut part = dest.clone().into_os_string();
    part.push(".part");
    let part = PathBuf::from(part);
    let url = format!("{}/{}", source.trim_end_matches('/'), file.path);
    let mut last_error = String::new();
    let mut resumed_bytes = 0;
    for attempt in 1..=retries + 1 {
        if attempt > 1 {
            std::thread::sleep(Duration::from_millis(100 * 2u64.pow(attempt - 2).min(50)));
        }
        match transfer(agent, &url, &part) {
            Ok(resumed) => {
                resumed_bytes += resumed;
                let digest = sha256_file(&part)?;
                if digest != file.sha256 {
                    last_error = format!("sha256 is {digest}, expected {}", file.sha256);
                    std::fs::remove_file(&part).map_err(LifecycleError::io(&part))?;
                    continue;
                }
                std::fs::rename(&part, &dest).map_err(LifecycleError::io(&dest))?;
                let bytes = dest.metadata().map_err(LifecycleError::io(&dest))?.len();
                return Ok(Fetched {
                    path: file.path.clone(),
                    bytes,
                    cached: false,
                    attempts: attempt,
                    resumed_bytes,
                });
            }
            Err(e) => {
                tracing::warn!(url, attempt, "download failed: {e}");
                last_error = e;
            }
        }
    }
    Err(LifecycleError::Config(format!(
        "cannot download {url} after {} attempts: {last_error}",
        retries + 1
    )))
}

/// Moves the bytes of `url` into `part`, continuing what is there; returns
/// how many bytes it continued from.
fn transfer(agent: &ureq::Agent, url: &str, part: &Path) -> Result<u64, String> {
    if let Some(path) = url.strip_prefix("file://") {
        std::fs::copy(path, part).map_err(|e| format!("{path}: {e}"))?;
        return Ok(0);
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!(
            "{url}: only file://, http:// and https:// sources are supported"
        ));
    }
    let have = part.metadata().map(|m| m.len()).unwrap_or(0);
    let mut request = agent.get(url);
    if have > 0 {
        request = request.header("Range", format!("bytes={have}-"));
    }
    let response = request.call().map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let (mut out, resumed, total) = match status {
        206 => {
            let out = OpenOptions::new()
                .append(true)
                .open(part)
                .map_err(|e| e.to_string())?;
            (out, have, content_length(&response).map(|n| n + have))
        }
        200 => {
            let out = File::create(part).map_err(|e| e.to_string())?;
            (out, 0, content_length(&response))
        }
        // The part was complete already: nothing more to send.
        416 if have > 0 => return Ok(have),
        other => return Err(format!("HTTP {other}")),
    };
    let bar = progress(url, total, resumed);
    let mut body = response.into_body().into_reader();
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = body.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).map_err(|e| e.to_string())?;
        bar.inc(n as u64);
    }
    out.flush().map_err(|e| e.to_string())?;
    bar.finish_and_clear();
    let got = part.metadata().map(|m| m.len()).unwrap_or(0);
    if let Some(total) = total
        && got != total
    {
        return Err(format!("connection closed after {got} of {total} bytes"));
    }
    Ok(resumed)
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
    bar.set_message(url.rsplit('/').next().unwrap_or(url).to_owned());
    bar.set_position(done);
    bar
}

/// `dir/rel`, refusing paths that climb out of `dir`.
fn safe_join(dir: &Path, rel: &str) -> Result<PathBuf, LifecycleError> {
    let rel = Path::new(rel);
    let ok = rel
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !ok || rel.as_os_str().is_empty() {
        return Err(LifecycleError::Config(format!(
            "model file path {:?} must be relative and stay inside the cache",
            rel.display()
        )));
    }
    Ok(dir.join(rel))
}

/// The sha256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String, LifecycleError> {
    let mut file = File::open(path).map_err(LifecycleError::io(path))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(LifecycleError::io(path))?;
    Ok(format!("{:x}", hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_may_not_leave_the_cache() {
        let dir = Path::new("/cache");
        assert!(safe_join(dir, "a/b.bin").is_ok());
        for bad in ["../etc/passwd", "/etc/passwd", "a/../../b", ""] {
            assert!(safe_join(dir, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn file_sources_are_copied_verified_and_cached() {
        let src = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("w.bin"), b"weights").unwrap();
        let file = ModelFile {
            path: "w.bin".into(),
            sha256: format!("{:x}", Sha256::digest(b"weights")),
            kind: "model".into(),
        };
        let source = format!("file://{}", src.path().display());
        let first = fetch_all(
            &source,
            std::slice::from_ref(&file),
            cache.path(),
            0,
            Duration::from_secs(5),
        )
        .unwrap();
        assert!(!first[0].cached);
        let again = fetch_all(
            &source,
            std::slice::from_ref(&file),
            cache.path(),
            0,
            Duration::from_secs(5),
        )
        .unwrap();
        assert!(again[0].cached);

        let wrong = ModelFile {
            sha256: "00".repeat(32),
            ..file
        };
        let err = fetch_all(&source, &[wrong], cache.path(), 1, Duration::from_secs(5))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("after 2 attempts") && err.contains("expected 0000"),
            "{err}"
        );
    }
}
