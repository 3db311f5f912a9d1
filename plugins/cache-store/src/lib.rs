//! Keeps a pipeline node's result in a cache folder (order 75). At
//! `on_node_end`, when the node was computed rather than read from the
//! cache, it asks the runner to write the result to
//! `<dir>/<cache_signature>.arrow` (key `cache_store`): the column's bytes
//! never cross the sandbox, the runner writes them under this plugin's
//! grant. At `on_cache_store`, once the column is written, it writes the
//! entry's record (`<signature>.json`: node, rows, bytes), which is what
//! makes the entry count for `cache-check`, and then evicts the oldest
//! entries while the folder holds more than `max_mib`. Config: `{"dir":
//! "/cache", "max_mib": 1024}`; `dir` is a folder the operator granted
//! read-write, the same as `cache-check`'s.

use std::fs;
use std::time::SystemTime;

use wasmhooks_sdk::{Data, Error, Manifest, Plugin, Updates, Value, json, log};

struct CacheStore {
    dir: String,
    max_bytes: u64,
}

impl Default for CacheStore {
    fn default() -> Self {
        CacheStore {
            dir: "/cache".into(),
            max_bytes: 1024 << 20,
        }
    }
}

/// The signature from the data map, if it is one: 64 lowercase hex digits,
/// so it can name a file and nothing else (the map is as untrusted as any
/// plugin that wrote to it).
fn signature(data: &Data) -> Option<&str> {
    data.str("cache_signature")
        .filter(|s| s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

impl CacheStore {
    /// Every complete entry: (signature, bytes of column and record, when stored).
    fn entries(&self) -> Result<Vec<(String, u64, SystemTime)>, Error> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(sig) = name.strip_suffix(".json") else {
                continue;
            };
            let record = entry.metadata()?;
            let column = fs::metadata(format!("{}/{sig}.arrow", self.dir)).ok();
            let bytes = record.len() + column.as_ref().map_or(0, fs::Metadata::len);
            let when = record.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            out.push((sig.to_owned(), bytes, when));
        }
        Ok(out)
    }

    /// Removes the oldest entries (never `keep`) until the folder holds at
    /// most `max_bytes`; returns how many it removed.
    fn evict(&self, keep: &str) -> Result<u64, Error> {
        let mut entries = self.entries()?;
        let mut total: u64 = entries.iter().map(|e| e.1).sum();
        entries.sort_by_key(|e| e.2);
        let mut removed = 0;
        for (sig, bytes, _) in entries {
            if total <= self.max_bytes {
                break;
            }
            if sig == keep {
                continue;
            }
            // The record first: without it the entry is a miss at once.
            fs::remove_file(format!("{}/{sig}.json", self.dir))?;
            let _ = fs::remove_file(format!("{}/{sig}.arrow", self.dir));
            total = total.saturating_sub(bytes);
            removed += 1;
        }
        Ok(removed)
    }
}

impl Plugin for CacheStore {
    fn manifest() -> Manifest {
        Manifest::new("cache-store", env!("CARGO_PKG_VERSION"))
            .phases(["on_node_end", "on_cache_store"])
            .order(75)
            .reads([
                "node",
                "cache_signature",
                "cache_hit",
                "outputs",
                "cache_bytes",
            ])
    }

    fn init(&mut self, _job: &Value, config: &Value) -> Result<(), Error> {
        if let Some(dir) = config["dir"].as_str() {
            self.dir = dir.trim_end_matches('/').to_owned();
        }
        if let Some(mib) = config["max_mib"].as_u64() {
            self.max_bytes = mib.saturating_mul(1 << 20);
        }
        if !fs::metadata(&self.dir).is_ok_and(|m| m.is_dir()) {
            return Err(Error::new(format!(
                "cache folder {:?} is not there: the operator must grant it read-write",
                self.dir
            )));
        }
        Ok(())
    }

    fn on_phase(&mut self, phase: &str, data: &Data) -> Result<Updates, Error> {
        let Some(sig) = signature(data) else {
            // No cache-check ran for this node: nothing to key an entry by.
            return Ok(Updates::new());
        };
        match phase {
            "on_node_end" if data.bool("cache_hit") != Some(true) => {
                Ok(Updates::new().set("cache_store", format!("{}/{sig}.arrow", self.dir)))
            }
            "on_cache_store" => {
                let record = json!({
                    "node": data.str("node"),
                    "signature": sig,
                    "rows": data.get("outputs").and_then(|o| o["rows"].as_u64()),
                    "bytes": data.u64("cache_bytes"),
                });
                let tmp = format!("{}/.{sig}.json.tmp", self.dir);
                fs::write(&tmp, record.to_string())?;
                fs::rename(&tmp, format!("{}/{sig}.json", self.dir))?;
                let removed = self.evict(sig)?;
                if removed > 0 {
                    log::info(format!("evicted {removed} cache entries over the size cap"));
                }
                Ok(Updates::new().remove("cache_store"))
            }
            _ => Ok(Updates::new()),
        }
    }
}

wasmhooks_sdk::export_plugin!(CacheStore);
