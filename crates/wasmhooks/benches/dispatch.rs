//! The cost of a callback, measured against its baselines in one run:
//!
//! - `native`: a Rust closure doing the plugin's work (the limit);
//! - `raw_wasmtime`: the same component called through plain wasmtime
//!   bindings with a default engine (what the sandbox and dispatch add is
//!   our cost), and `raw_wasmtime_metered`, the same with fuel and epoch
//!   checks on, as the sandbox runs it;
//! - `dispatch/{1,4,16}x{small,large}`: `Hooks::fire` with 1, 4 and 16
//!   plugins on data maps of 4 and 200 keys;
//! - `cold/compile` and `cold/instantiate`: loading (digest, compile) and
//!   starting (instantiate, describe, init) one plugin; `cold/raw_instantiate_*`:
//!   instantiation alone in plain wasmtime, through the linker, through
//!   `InstancePre`, and through `InstancePre` on the pooling allocator.
//! - `languages/{load_cached,start,call}/<language>`: the metrics collector
//!   written in Rust, Python, JavaScript, Zig and Go, loaded from the compile
//!   cache, started, and called at one phase; its size, first compile and
//!   memory go to the extras.
//!
//! CPython calling the same callback on a dict is timed by `timeit` from
//! here and written, with the memory of an idle instance, next to
//! criterion's results; `cargo xtask bench` prints them all as one table
//! with ratios.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};
use wasmhooks::{DataMap, Hooks, Host, Plugin, PluginPolicy, Policy, sha256_hex};

/// The bench plugin, as copy `i` (its own name and digest).
fn copy(i: usize) -> Vec<u8> {
    let mut bytes = std::fs::read(wasmhooks_tests::BENCH_EMA).expect("the bench plugin is built");
    let name = b"bench-ema-00";
    let at = bytes
        .windows(name.len())
        .position(|w| w == name)
        .expect("the name is in the binary");
    bytes[at..at + name.len()].copy_from_slice(format!("bench-ema-{i:02}").as_bytes());
    bytes
}

fn host_for(n: usize) -> (Host, Vec<Plugin>) {
    let copies: Vec<Vec<u8>> = (0..n).map(copy).collect();
    let policy = Policy::from_plugins(copies.iter().enumerate().map(|(i, b)| {
        PluginPolicy::new(format!("bench-ema-{i:02}"), sha256_hex(b)).allow_write(["loss_ema"])
    }))
    .expect("valid policy");
    let host = Host::new(policy).expect("host");
    let plugins = copies
        .iter()
        .enumerate()
        .map(|(i, b)| {
            host.load_bytes(&format!("bench_ema_{i:02}.wasm"), b)
                .expect("loads")
        })
        .collect();
    (host, plugins)
}

fn hooks(plugins: &[Plugin]) -> Hooks {
    let mut builder = Hooks::builder(json!({}));
    for p in plugins {
        builder = builder.plugin(p.clone(), Value::Null);
    }
    builder.start().expect("starts")
}

fn data(keys: usize) -> DataMap {
    let mut data = DataMap::new();
    data.insert("loss".into(), json!(0.5));
    for i in 1..keys {
        let value = match i % 3 {
            0 => json!(i as f64 * 0.25),
            1 => json!(format!("value-{i}")),
            _ => json!({"step": i, "tags": ["a", "b"]}),
        };
        data.insert(format!("key_{i:03}"), value);
    }
    data
}

mod raw {
    wasmtime::component::bindgen!({ path: "../../wit/v0.3.0", world: "plugin" });

    use wasmtime::component::ResourceTable;
    use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

    pub struct State {
        pub wasi: WasiCtx,
        pub table: ResourceTable,
    }

    impl WasiView for State {
        fn ctx(&mut self) -> WasiCtxView<'_> {
            WasiCtxView {
                ctx: &mut self.wasi,
                table: &mut self.table,
            }
        }
    }

    impl wasmhooks::plugin::types::Host for State {}

    impl wasmhooks::plugin::log::Host for State {
        fn log(&mut self, _: wasmhooks::plugin::types::Level, _: String) {}
    }

    /// The bench plugin keeps no state across calls: an empty store.
    impl wasmhooks::plugin::kv::Host for State {
        fn get(&mut self, _: String) -> Option<Vec<u8>> {
            None
        }

        fn set(
            &mut self,
            _: String,
            _: Vec<u8>,
            _: Option<u64>,
        ) -> Result<(), wasmhooks::plugin::kv::KvError> {
            Ok(())
        }

        fn delete(&mut self, _: String) {}

        fn increment(
            &mut self,
            _: String,
            delta: i64,
            _: Option<u64>,
        ) -> Result<i64, wasmhooks::plugin::kv::KvError> {
            Ok(delta)
        }

        fn get_counter(&mut self, _: String) -> Result<i64, wasmhooks::plugin::kv::KvError> {
            Ok(0)
        }
    }
}

/// A plain wasmtime engine and linker for the bench plugin: a default
/// engine, or one with the sandbox's fuel and epoch checks compiled in
/// (`metered`), on the on-demand or the pooling instance allocator.
fn raw_engine(
    metered: bool,
    pooling: bool,
) -> (wasmtime::Engine, wasmtime::component::Linker<raw::State>) {
    use wasmtime::component::{HasSelf, Linker};
    let mut config = wasmtime::Config::new();
    config.consume_fuel(metered).epoch_interruption(metered);
    if pooling {
        let mut pool = wasmtime::PoolingAllocationConfig::new();
        pool.total_component_instances(64)
            .total_core_instances(512)
            .total_memories(64)
            .total_tables(512);
        config.allocation_strategy(pool);
    }
    let engine = wasmtime::Engine::new(&config).expect("engine");
    let mut linker = Linker::<raw::State>::new(&engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker).expect("wasi");
    raw::Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).expect("imports");
    (engine, linker)
}

/// A fresh store, armed if the engine meters.
fn raw_store(engine: &wasmtime::Engine, metered: bool) -> wasmtime::Store<raw::State> {
    let state = raw::State {
        wasi: wasmtime_wasi::WasiCtx::builder().build(),
        table: wasmtime::component::ResourceTable::new(),
    };
    let mut store = wasmtime::Store::new(engine, state);
    if metered {
        store.set_fuel(u64::MAX).expect("fuel");
        store.set_epoch_deadline(u64::MAX / 2);
    }
    store
}

/// A store and the bench plugin instantiated in it, as plain wasmtime has them.
type RawInstance = (wasmtime::Store<raw::State>, raw::Plugin);

/// The value the bench plugin reads (it lists one key, `loss`), as the raw
/// calls pass it.
fn raw_entries() -> raw::wasmhooks::plugin::types::Data {
    use raw::wasmhooks::plugin::types::{Data, Value};
    Data::Listed(vec![Some(Value::Float(0.5))])
}

/// The phase of the raw calls: the bench plugin's first (and only) listed
/// phase, `on_step_end`, by position as the host passes it.
fn raw_phase() -> raw::wasmhooks::plugin::types::Phase {
    raw::wasmhooks::plugin::types::Phase::Listed(0)
}

/// One raw `on-phase` call to each instance.
fn call_raw(instances: &mut [RawInstance], entries: &raw::wasmhooks::plugin::types::Data) {
    for (store, plugin) in instances {
        let _ = black_box(
            plugin
                .wasmhooks_plugin_hooks()
                .call_on_phase(&mut *store, &raw_phase(), entries)
                .expect("call"),
        );
    }
}

/// Plain wasmtime: `copies` compiled copies of the bench plugin, each
/// instantiated and initialized, nothing checked or merged.
fn raw_instances(metered: bool, copies: usize) -> Vec<RawInstance> {
    let (engine, linker) = raw_engine(metered, false);
    (0..copies)
        .map(|i| {
            let component =
                wasmtime::component::Component::from_binary(&engine, &copy(i)).expect("compiles");
            let mut store = raw_store(&engine, metered);
            let plugin =
                raw::Plugin::instantiate(&mut store, &component, &linker).expect("instantiates");
            plugin
                .wasmhooks_plugin_hooks()
                .call_init(&mut store, &"{}".to_owned(), &"null".to_owned())
                .expect("init")
                .expect("ok");
            (store, plugin)
        })
        .collect()
}

/// How long each call and dispatch benchmark samples: long enough that a
/// few seconds of another tenant's load on a shared machine move the
/// median little.
const MEASURE: Duration = Duration::from_secs(8);

fn bench_calls(c: &mut Criterion) {
    let mut g = c.benchmark_group("call");
    g.measurement_time(MEASURE);

    // The limit: the same work, native.
    let mut ema: Option<f64> = None;
    let mut native_data = data(4);
    g.bench_function("native", |b| {
        b.iter(|| {
            let loss = native_data["loss"].as_f64().unwrap_or_default();
            let next = ema.map_or(loss, |p| 0.9 * p + 0.1 * loss);
            ema = Some(next);
            native_data.insert("loss_ema".into(), json!(next));
            black_box(&native_data);
        })
    });

    // Plain wasmtime: a default engine, the component's export called with
    // the entry it reads, nothing checked or merged. Then the same with the
    // sandbox's metering (fuel and epoch checks compiled in), to tell what
    // metering costs from what dispatch costs.
    let entries = raw_entries();
    for (name, metered, copies) in [
        ("raw_wasmtime", false, 1),
        ("raw_wasmtime_metered", true, 1),
        // The fair baselines for 4 and 16 different plugins: as many
        // compiled copies, each called once per iteration.
        ("raw_wasmtime_metered_4_copies", true, 4),
        ("raw_wasmtime_metered_16_copies", true, 16),
    ] {
        let mut instances = raw_instances(metered, copies);
        g.bench_function(name, |b| b.iter(|| call_raw(&mut instances, &entries)));
    }
    g.finish();

    let mut g = c.benchmark_group("dispatch");
    g.measurement_time(MEASURE);
    // Why 16 plugins cost more each than one: 16 instances of one compiled
    // plugin (one copy of the machine code, 16 stores and memories), each
    // in a job of its own, against 16 separately compiled copies below.
    let (_host, plugins) = host_for(1);
    let mut jobs: Vec<Hooks> = (0..16).map(|_| hooks(&plugins)).collect();
    let mut map = data(4);
    g.bench_function("16x_one_code", |b| {
        b.iter(|| {
            for job in &mut jobs {
                black_box(job.fire("on_step_end", &mut map).expect("fires"));
            }
        })
    });
    for n in [1, 4, 16] {
        let (_host, plugins) = host_for(n);
        for (size, keys) in [("small", 4), ("large", 200)] {
            let mut hooks = hooks(&plugins);
            let mut data = data(keys);
            g.bench_function(format!("{n}x{size}"), |b| {
                b.iter(|| black_box(hooks.fire("on_step_end", &mut data).expect("fires")))
            });
        }
    }
    g.finish();
}

fn bench_cold(c: &mut Criterion) {
    let mut g = c.benchmark_group("cold");
    g.sample_size(10);
    let (host, plugins) = host_for(1);
    let bytes = copy(0);
    g.bench_function("compile", |b| {
        b.iter(|| black_box(host.load_bytes("bench_ema_00.wasm", &bytes).expect("loads")))
    });
    g.bench_function("instantiate", |b| {
        b.iter_batched(
            || (),
            |()| black_box(hooks(&plugins)),
            BatchSize::PerIteration,
        )
    });
    g.finish();

    // Instantiation alone, in plain wasmtime with the sandbox's metering:
    // resolving the imports at each start (`Linker::instantiate`), once
    // ahead (`InstancePre`, what the host does), and ahead on the pooling
    // allocator, which keeps memories and tables mapped between instances.
    let mut g = c.benchmark_group("cold");
    for (name, pre, pooling) in [
        ("raw_instantiate_linker", false, false),
        ("raw_instantiate_pre", true, false),
        ("raw_instantiate_pre_pooling", true, true),
    ] {
        let (engine, linker) = raw_engine(true, pooling);
        let component =
            wasmtime::component::Component::from_binary(&engine, &bytes).expect("compiles");
        let instance_pre = linker.instantiate_pre(&component).expect("links");
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut store = raw_store(&engine, true);
                let instance = if pre {
                    instance_pre.instantiate(&mut store)
                } else {
                    linker.instantiate(&mut store, &component)
                };
                black_box(instance.expect("instantiates"));
            })
        });
    }
    g.finish();
}

/// CPython on the same callback, and an idle instance's memory, written
/// next to criterion's results.
fn extras() {
    let script = r#"
import timeit
state = {"ema": None}
def callback(phase, config, data):
    loss = data["loss"]
    ema = loss if state["ema"] is None else 0.9 * state["ema"] + 0.1 * loss
    state["ema"] = ema
    return {"loss_ema": ema}
data = {"loss": 0.5, "step": 1, "epoch": 0, "learning_rate": 0.05}
def step():
    updates = callback("on_step_end", None, data)
    if updates:
        data.update(updates)
n = 200000
best = min(timeit.repeat(step, number=n, repeat=5))
print(best / n * 1e9)
"#;
    let cpython_ns = std::process::Command::new("python3")
        .args(["-c", script])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        });
    let (_host, plugins) = host_for(1);
    let mut hooks = hooks(&plugins);
    hooks.fire("on_step_end", &mut data(4)).expect("fires");
    let memory = hooks.stats()[0].memory;
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-extras.json");
    let extras = json!({
        "cpython_ns": cpython_ns,
        "idle_instance_linear_memory_bytes": memory,
        "paired": paired_ratios(),
        "soak": soak(),
    });
    std::fs::write(&out, extras.to_string()).expect("write extras");
    eprintln!("extras: {extras} -> {}", out.display());
}

/// This process's resident memory, in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// A million calls into one instance, then a thousand starts and stops of
/// one, with the process's resident memory before and after each: a host
/// that leaks per call or per instance grows here.
fn soak() -> Value {
    let (_host, plugins) = host_for(1);
    let mut data = data(4);
    let mut hooks = hooks(&plugins);
    for _ in 0..10_000 {
        hooks.fire("on_step_end", &mut data).expect("fires");
    }
    let calls_before = rss_kib();
    for _ in 0..1_000_000 {
        hooks.fire("on_step_end", &mut data).expect("fires");
    }
    let calls_after = rss_kib();
    drop(hooks);
    for _ in 0..50 {
        drop(hooks_fired(&plugins, &mut data));
    }
    let cycles_before = rss_kib();
    for _ in 0..1_000 {
        drop(hooks_fired(&plugins, &mut data));
    }
    let cycles_after = rss_kib();
    json!({
        "calls": 1_000_000,
        "calls_rss_kib": [calls_before, calls_after],
        "cycles": 1_000,
        "cycles_rss_kib": [cycles_before, cycles_after],
    })
}

/// Hooks started, fired once.
fn hooks_fired(plugins: &[Plugin], data: &mut DataMap) -> Hooks {
    let mut hooks = hooks(plugins);
    hooks.fire("on_step_end", data).expect("fires");
    hooks
}

/// The median ratio of `a`'s time to `b`'s over blocks run back to back:
/// `a` runs `per_block` times, then `b` runs `per_block * b_per_a` times,
/// and so on. Load from outside that comes and goes in bursts slows both
/// blocks of a pair alike, so the ratio holds where separate measurements
/// minutes apart drift.
fn paired(mut a: impl FnMut(), mut b: impl FnMut(), b_per_a: u32) -> f64 {
    const BLOCKS: usize = 301;
    let per_block = 1000;
    let time = |f: &mut dyn FnMut(), n: u32| {
        let start = std::time::Instant::now();
        for _ in 0..n {
            f();
        }
        start.elapsed().as_secs_f64()
    };
    // Warm up both.
    time(&mut a, per_block);
    time(&mut b, per_block * b_per_a);
    let mut ratios: Vec<f64> = (0..BLOCKS)
        .map(|_| time(&mut a, per_block) / time(&mut b, per_block * b_per_a))
        .collect();
    ratios.sort_by(f64::total_cmp);
    ratios[BLOCKS / 2]
}

/// Dispatch against raw wasmtime calls, measured in pairs of blocks (see
/// [`paired`]): per plugin, one plugin against one raw call (plain and
/// metered), and four plugins against four raw calls to one copy and to
/// four compiled copies.
fn paired_ratios() -> Value {
    let entries = raw_entries();
    let call = |instances: &mut Vec<RawInstance>| call_raw(instances, &entries);
    let (mut plain, mut metered, mut copies) = (
        raw_instances(false, 1),
        raw_instances(true, 1),
        raw_instances(true, 4),
    );
    let (_one, one) = host_for(1);
    let (_four, four) = host_for(4);
    let (mut one, mut four) = (hooks(&one), hooks(&four));
    let mut map = data(4);
    let mut fire = |hooks: &mut Hooks| {
        black_box(hooks.fire("on_step_end", &mut map).expect("fires"));
    };
    let ratios = json!({
        "dispatch_1_vs_raw": paired(|| fire(&mut one), || call(&mut plain), 1),
        "dispatch_1_vs_raw_metered": paired(|| fire(&mut one), || call(&mut metered), 1),
        "dispatch_4_vs_4_raw": paired(|| fire(&mut four), || call(&mut plain), 4),
        "dispatch_4_vs_4_copies_raw_metered": paired(|| fire(&mut four), || call(&mut copies), 1),
    });
    eprintln!("paired ratios: {ratios}");
    ratios
}

fn collector_policy(name: &str, path: &str) -> (Policy, Vec<u8>) {
    let bytes = std::fs::read(path).expect("the collector is built (cargo xtask toolchains)");
    let mut plugin = PluginPolicy::new(name, sha256_hex(&bytes)).allow_write(["metrics"]);
    // SpiderMonkey lets its heap grow to about 95 MiB before it collects
    // under a long run of calls: the JavaScript guide's `memory_mib = 128`.
    if name.ends_with("-js") {
        plugin.limits.memory_bytes = 128 << 20;
    }
    let policy = Policy::from_plugins([plugin]).expect("valid policy");
    (policy, bytes)
}

fn bench_languages(c: &mut Criterion) -> Value {
    let cache = tempfile::tempdir().expect("a temporary folder");
    let mut extras = serde_json::Map::new();
    let mut g = c.benchmark_group("languages");
    g.sample_size(10);
    for &(language, name, path) in wasmhooks_tests::METRICS_COLLECTORS {
        let (policy, bytes) = collector_policy(name, path);
        let cold = Host::new(policy.clone()).expect("host");
        let started = std::time::Instant::now();
        black_box(cold.load_file(path).expect("loads"));
        let compile_ns = started.elapsed().as_nanos();
        let host = Host::with_compile_cache(policy, cache.path()).expect("host");
        let plugin = host.load_file(path).expect("loads");
        g.bench_function(format!("load_cached/{language}"), |b| {
            b.iter(|| black_box(host.load_file(path).expect("loads")))
        });
        g.bench_function(format!("start/{language}"), |b| {
            b.iter_batched(
                || (),
                |()| black_box(hooks(std::slice::from_ref(&plugin))),
                BatchSize::PerIteration,
            )
        });
        let mut running = hooks(std::slice::from_ref(&plugin));
        let mut map = data(4);
        running.fire("on_step_end", &mut map).expect("fires");
        let idle = running.stats()[0].memory;
        g.bench_function(format!("call/{language}"), |b| {
            b.iter(|| black_box(running.fire("on_step_end", &mut map).expect("fires")))
        });
        extras.insert(
            language.into(),
            json!({
                "bytes": bytes.len(),
                "compile_ns": compile_ns,
                "idle_memory_bytes": idle,
                "busy_memory_bytes": running.stats()[0].memory,
            }),
        );
    }
    g.finish();
    Value::Object(extras)
}

fn all(c: &mut Criterion) {
    extras();
    bench_calls(c);
    bench_cold(c);
    let languages = bench_languages(c);
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-languages.json");
    std::fs::write(&out, languages.to_string()).expect("write the languages' extras");
}

criterion_group!(benches, all);
criterion_main!(benches);
