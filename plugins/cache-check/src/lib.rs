//! Looks a pipeline node's result up in a cache folder before the node runs
//! (`on_node_begin`, order 25). The node's signature is the sha256 of its
//! name, its code version and its inputs' signature, so a changed input or
//! a changed function misses and everything else hits. On a hit it sets
//! `skip_execution` and `cached_path`, and the runner reads the cached
//! column instead of computing it. It sets `cache_signature` either way, for
//! `cache-store`. Config: `{"dir": "/cache", "salt": ""}`; `dir` is a folder
//! the operator granted read-write (shared with `cache-store`), `salt` is
//! mixed into every signature (change it to drop the whole cache).
//!
//! An entry counts only when both its column (`<signature>.arrow`, written
//! by the runner) and its record (`<signature>.json`, written by
//! `cache-store` once the column is complete) are there, so a run killed
//! while storing leaves a miss, never a half-written hit.

use sha2::{Digest, Sha256};
use wasmhooks_sdk::{Data, Error, Manifest, Plugin, Updates, Value};

struct CacheCheck {
    dir: String,
    salt: String,
}

impl Default for CacheCheck {
    fn default() -> Self {
        CacheCheck {
            dir: "/cache".into(),
            salt: String::new(),
        }
    }
}

/// Whether `path` is a regular file (never a folder or a FIFO someone left).
fn is_file(path: &str) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file())
}

impl Plugin for CacheCheck {
    fn manifest() -> Manifest {
        Manifest::new("cache-check", env!("CARGO_PKG_VERSION"))
            .phases(["on_node_begin"])
            .order(25)
            .reads(["node", "node_version", "inputs"])
    }

    fn init(&mut self, _job: &Value, config: &Value) -> Result<(), Error> {
        if let Some(dir) = config["dir"].as_str() {
            self.dir = dir.trim_end_matches('/').to_owned();
        }
        if let Some(salt) = config["salt"].as_str() {
            self.salt = salt.to_owned();
        }
        if !std::fs::metadata(&self.dir).is_ok_and(|m| m.is_dir()) {
            return Err(Error::new(format!(
                "cache folder {:?} is not there: the operator must grant it read-write",
                self.dir
            )));
        }
        Ok(())
    }

    fn on_phase(&mut self, _phase: &str, data: &Data) -> Result<Updates, Error> {
        let node = data.str("node").ok_or("data has no `node`")?;
        let version = data
            .str("node_version")
            .ok_or("data has no `node_version`")?;
        let inputs = data
            .get("inputs")
            .and_then(|i| i["signature"].as_str())
            .ok_or("data has no `inputs.signature`")?;
        let mut h = Sha256::new();
        for part in ["wasmhooks-cache/1", node, version, inputs, &self.salt] {
            // Length-prefixed, so no two different tuples hash alike.
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        let signature: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        let column = format!("{}/{signature}.arrow", self.dir);
        let hit = is_file(&column) && is_file(&format!("{}/{signature}.json", self.dir));
        let updates = Updates::new()
            .set("cache_signature", &signature)
            .set("cache_hit", hit);
        Ok(if hit {
            updates
                .set("skip_execution", true)
                .set("cached_path", column)
        } else {
            updates
        })
    }
}

wasmhooks_sdk::export_plugin!(CacheCheck);
