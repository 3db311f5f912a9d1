//! Counts a pipeline run's cache hits, misses, stores and bytes (order 90)
//! and reports them at `on_pipeline_end` under `cache_stats`: `hits`,
//! `misses`, `stores`, `bytes_read`, `bytes_written`, `hit_rate`, and each
//! node's outcome under `nodes`. The counts start again at every
//! `on_pipeline_begin`.

use std::collections::BTreeMap;

use wasmhooks_sdk::{Data, Error, Manifest, Plugin, Updates, json, log};

#[derive(Default)]
struct CacheStats {
    hits: u64,
    misses: u64,
    stores: u64,
    bytes_read: u64,
    bytes_written: u64,
    nodes: BTreeMap<String, &'static str>,
}

impl Plugin for CacheStats {
    fn manifest() -> Manifest {
        Manifest::new("cache-stats", env!("CARGO_PKG_VERSION"))
            .phases([
                "on_pipeline_begin",
                "on_cache_hit",
                "on_cache_miss",
                "on_cache_store",
                "on_pipeline_end",
            ])
            .order(90)
            .reads(["node", "cache_bytes"])
    }

    fn on_phase(&mut self, phase: &str, data: &Data) -> Result<Updates, Error> {
        let node = data.str("node").unwrap_or_default().to_owned();
        let bytes = data.u64("cache_bytes").unwrap_or(0);
        match phase {
            "on_pipeline_begin" => *self = CacheStats::default(),
            "on_cache_hit" => {
                self.hits += 1;
                self.bytes_read += bytes;
                self.nodes.insert(node, "hit");
            }
            "on_cache_miss" => {
                self.misses += 1;
                self.nodes.insert(node, "miss");
            }
            "on_cache_store" => {
                self.stores += 1;
                self.bytes_written += bytes;
            }
            _ => {
                let looked = self.hits + self.misses;
                let rate = if looked == 0 {
                    0.0
                } else {
                    self.hits as f64 / looked as f64
                };
                log::info(format!(
                    "cache: {} hits, {} misses, {} stored; {} bytes read, {} written",
                    self.hits, self.misses, self.stores, self.bytes_read, self.bytes_written
                ));
                let stats = json!({
                    "hits": self.hits,
                    "misses": self.misses,
                    "stores": self.stores,
                    "bytes_read": self.bytes_read,
                    "bytes_written": self.bytes_written,
                    "hit_rate": rate,
                    "nodes": self.nodes,
                });
                return Ok(Updates::new().set("cache_stats", stats));
            }
        }
        Ok(Updates::new())
    }
}

wasmhooks_sdk::export_plugin!(CacheStats);
