//! Extism's Rust host calling a plugin that keeps the moving average of
//! `loss`, the work `plugins/bench-ema` does under wasmhooks. The data map
//! is the one `dispatch/1xsmall` fires (4 keys), sent as JSON as an Extism
//! host would send it; the update that comes back is merged into it.
//!
//! - `extism/call`: a plugin built with Extism's defaults;
//! - `extism/call_loss_only`: the same, sent only `loss`, as wasmhooks sends
//!   only the keys a plugin declares it reads;
//! - `extism/call_metered` and `extism/call_metered_loss_only`: with a fuel
//!   limit and a timeout, the sandbox wasmhooks always runs plugins in.
//!
//! `cargo xtask bench` runs this after the main suite and prints the ratio.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use extism::convert::Json;
use extism::{Manifest, Plugin, PluginBuilder, Wasm};
use serde_json::{Map, Value, json};

/// The data map of `dispatch/1xsmall`: `loss` and three other keys.
fn data() -> Map<String, Value> {
    let mut data = Map::new();
    data.insert("loss".into(), json!(0.5));
    data.insert("key_001".into(), json!("value-1"));
    data.insert("key_002".into(), json!({"step": 2, "tags": ["a", "b"]}));
    data.insert("key_003".into(), json!(0.75));
    data
}

fn plugin(metered: bool) -> Plugin {
    let bytes = std::fs::read(env!("EXTISM_EMA")).expect("the Extism plugin is built");
    let mut manifest = Manifest::new([Wasm::data(bytes)]);
    if metered {
        manifest = manifest.with_timeout(Duration::from_secs(10));
    }
    let mut builder = PluginBuilder::new(manifest).with_wasi(false);
    if metered {
        builder = builder.with_fuel_limit(u64::MAX / 2);
    }
    builder.build().expect("the Extism plugin loads")
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("extism");
    // As long as the main suite samples its calls.
    g.measurement_time(Duration::from_secs(8));
    for (name, metered, loss_only) in [
        ("call", false, false),
        ("call_loss_only", false, true),
        ("call_metered", true, false),
        ("call_metered_loss_only", true, true),
    ] {
        let mut plugin = plugin(metered);
        let mut data = data();
        g.bench_function(name, |b| {
            b.iter(|| {
                let result = if loss_only {
                    let mut sent = Map::new();
                    sent.insert("loss".into(), data["loss"].clone());
                    plugin.call("on_step_end", Json(&sent))
                } else {
                    plugin.call("on_step_end", Json(&data))
                };
                let Json(updates): Json<Map<String, Value>> = result.expect("the call succeeds");
                data.extend(updates);
                black_box(&data);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
