//! `cargo xtask bench`: runs the criterion suite (`crates/wasmhooks/benches/dispatch.rs`)
//! and the Extism baseline (`baselines/extism`), then prints one table with
//! the ratios the performance targets are stated in. Both suites run in the
//! same invocation, on the same machine, one after the other.

use std::path::Path;

use anyhow::Context;

use crate::{cargo, cargo_command, rust_target, wasm_target};

/// Runs both suites and prints the table. The Extism baseline is a
/// comparison, not ours: if it fails to build, the table goes without it.
pub(crate) fn run(root: &Path) -> anyhow::Result<()> {
    wasm_target()?;
    // The languages' rows call the collectors built in every language: on a
    // fresh clone, nothing has installed their toolchains yet.
    crate::toolchains::install(root)?;
    cargo(root, &["bench", "-p", "wasmhooks", "--bench", "dispatch"])?;
    if let Err(e) = extism(root) {
        eprintln!("xtask: the Extism baseline did not run, so the table leaves it out: {e:#}");
    }
    let figures = crate::python::bench(root)?;
    std::fs::write(
        root.join("target/tmp/bench-python.json"),
        figures.to_string(),
    )?;
    table(root)
}

/// The Extism baseline: a workspace of its own, built into the shared
/// target folder, its results written next to the main suite's.
fn extism(root: &Path) -> anyhow::Result<()> {
    rust_target("wasm32-unknown-unknown")?;
    crate::run(
        cargo_command(root)
            .env("CARGO_TARGET_DIR", root.join("target"))
            .args(["bench", "--manifest-path", "baselines/extism/Cargo.toml"]),
    )
}

/// Criterion's median estimate for a benchmark, in nanoseconds: on a shared
/// machine a few slow samples move the mean, not the median.
fn estimate(root: &Path, id: &str) -> anyhow::Result<f64> {
    let path = root
        .join("target/criterion")
        .join(id)
        .join("new/estimates.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    v["median"]["point_estimate"]
        .as_f64()
        .context("no median estimate")
}

/// Rows of a markdown table: measure, time, ratio, target.
#[derive(Default)]
struct Rows(String);

impl Rows {
    fn row(&mut self, measure: &str, time: String, ratio: String, target: &str) {
        self.0
            .push_str(&format!("| {measure} | {time} | {ratio} | {target} |\n"));
    }
}

/// Reads criterion's estimates and the bench's extras, and prints them as
/// one table with the ratios the targets are stated in.
pub(crate) fn table(root: &Path) -> anyhow::Result<()> {
    let ns = |id: &str| estimate(root, id);
    let extras: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        root.join("target/tmp/bench-extras.json"),
    )?)?;
    let native = ns("call/native")?;
    let raw = ns("call/raw_wasmtime")?;
    let mut t = Rows::default();
    t.row(
        "native closure (the limit)",
        fmt_ns(native),
        "1.00x native".into(),
        "",
    );
    t.row(
        "raw wasmtime component call",
        fmt_ns(raw),
        format!("{:.1}x native", raw / native),
        "",
    );
    let metered = ns("call/raw_wasmtime_metered")?;
    t.row(
        "raw call, fuel and epoch checks on",
        fmt_ns(metered),
        format!("{:.2}x raw", metered / raw),
        "",
    );
    // Four or sixteen different plugins are as many copies of machine code:
    // their raw calls are the fair baseline for dispatching to that many.
    let mut copies = |n: u32| -> anyhow::Result<f64> {
        let per = ns(&format!("call/raw_wasmtime_metered_{n}_copies"))? / f64::from(n);
        t.row(
            &format!("raw metered call, {n} compiled copies, per call"),
            fmt_ns(per),
            format!("{:.2}x raw", per / raw),
            "",
        );
        Ok(per)
    };
    let (raw4, raw16) = (copies(4)?, copies(16)?);
    let one_code = ns("dispatch/16x_one_code")? / 16.0;
    t.row(
        "dispatch, 16 instances of one compiled plugin, per call",
        fmt_ns(one_code),
        format!("{:.2}x raw", one_code / raw),
        "",
    );
    for (n, fair) in [(1.0, None), (4.0, Some(raw4)), (16.0, Some(raw16))] {
        for (size, keys) in [("small", 4), ("large", 200)] {
            let total = ns(&format!("dispatch/{n}x{size}"))?;
            let per = total / n;
            let mut ratio = format!("{:.2}x raw per plugin", per / raw);
            if let Some(fair) = fair {
                ratio.push_str(&format!("; {:.2}x the {n} copies' raw call", per / fair));
            }
            t.row(
                &format!("dispatch, {n} plugin(s), {keys} keys"),
                format!("{} ({} per plugin)", fmt_ns(total), fmt_ns(per)),
                ratio,
                "<= 2x raw",
            );
        }
    }
    // The same ratios from blocks run back to back (`paired` in the bench),
    // which outside load disturbs far less than measurements minutes apart.
    for (key, what, target) in [
        (
            "dispatch_1_vs_raw",
            "paired: dispatch, 1 plugin / raw call",
            "<= 2x raw",
        ),
        (
            "dispatch_1_vs_raw_metered",
            "paired: dispatch, 1 plugin / metered raw call",
            "",
        ),
        (
            "dispatch_4_vs_4_raw",
            "paired: dispatch, 4 plugins, per plugin / raw call",
            "<= 2x raw",
        ),
        (
            "dispatch_4_vs_4_copies_raw_metered",
            "paired: dispatch, 4 plugins / metered raw calls to 4 compiled copies",
            "",
        ),
    ] {
        if let Some(ratio) = extras["paired"][key].as_f64() {
            t.row(what, String::new(), format!("{ratio:.2}x"), target);
        }
    }
    let one = ns("dispatch/1xsmall")?;
    if let Some(py) = extras["cpython_ns"].as_f64() {
        t.row(
            "CPython callback on a dict",
            fmt_ns(py),
            format!("dispatch is {:.2}x CPython", one / py),
            "<= 1x",
        );
    }
    for (id, what) in [
        ("extism/call", "Extism call, the 4-key map as JSON"),
        ("extism/call_loss_only", "Extism call, sent only `loss`"),
        (
            "extism/call_metered",
            "Extism call with fuel and a timeout, the 4-key map",
        ),
        (
            "extism/call_metered_loss_only",
            "Extism call with fuel and a timeout, sent only `loss`",
        ),
    ] {
        // Absent when the baseline did not build or run.
        if let Ok(extism) = ns(id) {
            t.row(
                what,
                fmt_ns(extism),
                format!("{:.2}x dispatch", extism / one),
                ">= 3x dispatch",
            );
        }
    }
    t.row(
        "cold: digest + compile",
        fmt_ns(ns("cold/compile")?),
        String::new(),
        "",
    );
    t.row(
        "cold: instantiate + describe + init",
        fmt_ns(ns("cold/instantiate")?),
        String::new(),
        "< 5 ms cached",
    );
    let through_linker = ns("cold/raw_instantiate_linker")?;
    for (id, what) in [
        (
            "cold/raw_instantiate_linker",
            "raw instantiate, imports resolved each time",
        ),
        (
            "cold/raw_instantiate_pre",
            "raw instantiate with InstancePre",
        ),
        (
            "cold/raw_instantiate_pre_pooling",
            "raw instantiate with InstancePre, pooling allocator",
        ),
    ] {
        let time = ns(id)?;
        t.row(
            what,
            fmt_ns(time),
            format!("{:.2}x through the linker", time / through_linker),
            "",
        );
    }
    let memory = extras["idle_instance_linear_memory_bytes"]
        .as_f64()
        .unwrap_or(0.0);
    t.row(
        "linear memory of an idle instance",
        format!("{:.0} KiB", memory / 1024.0),
        String::new(),
        "< 1 MiB",
    );
    let soak = &extras["soak"];
    for (what, runs, key) in [
        (
            "soak: 10^6 calls into one instance",
            "calls",
            "calls_rss_kib",
        ),
        (
            "soak: 1,000 starts and stops of an instance",
            "cycles",
            "cycles_rss_kib",
        ),
    ] {
        let before = soak[key][0].as_f64().unwrap_or(0.0);
        let after = soak[key][1].as_f64().unwrap_or(0.0);
        let per_run = (after - before) * 1024.0 / soak[runs].as_f64().unwrap_or(1.0);
        t.row(
            what,
            format!("RSS {:.1} -> {:.1} MiB", before / 1024.0, after / 1024.0),
            format!("{per_run:+.1} bytes per run"),
            "flat RSS",
        );
    }
    // Seven phases a step, four plugins subscribed to each.
    let per_step = 7.0 * ns("dispatch/4xsmall")?;
    t.row(
        "4 plugins on every phase of a 10 ms step",
        fmt_ns(per_step),
        format!("{:.3}% of the step", per_step / 10e6 * 100.0),
        "< 1%",
    );
    if let Ok(text) = std::fs::read_to_string(root.join("target/tmp/bench-python.json")) {
        let py: serde_json::Value = serde_json::from_str(&text)?;
        let e = &py["per_event"];
        let num = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
        t.row(
            "HF on_step_end, one wasm plugin through the adapter",
            fmt_ns(num(&e["wasm_event_ns"])),
            format!(
                "{:.1}x the same Python TrainerCallback ({}), paired",
                num(&e["ratio"]),
                fmt_ns(num(&e["python_event_ns"]))
            ),
            "<= 3x",
        );
        let s = &py["per_step"];
        t.row(
            "4 plugins on every HF event of a tiny GPT-2 step (1 thread)",
            format!(
                "{:.0} µs of a {:.2} ms step",
                num(&s["plugins_per_step_us"]),
                num(&s["step_ms"])
            ),
            format!("{:.2}% of the step", num(&s["share_of_step"]) * 100.0),
            "< 1%",
        );
        if py["ray_llm_ratio"].is_number() {
            t.row(
                "Ray Serve LLM node init (2 Ray nodes), 3 wasm plugins",
                fmt_ns(num(&py["ray_llm_wasm_ms"]) * 1e6),
                format!(
                    "{:.3}x the same callbacks in Python ({}), paired",
                    num(&py["ray_llm_ratio"]),
                    fmt_ns(num(&py["ray_llm_python_ms"]) * 1e6)
                ),
                "<= 1.05x",
            );
            t.row(
                "wasmhooks.ray.initialize_node (2 Ray nodes, cached files)",
                fmt_ns(num(&py["initialize_node_ms"]) * 1e6),
                format!(
                    "{:.2}x Ray's initialize_node with Python callbacks",
                    num(&py["initialize_node_ratio"])
                ),
                "",
            );
        }
    }
    if let Ok(text) = std::fs::read_to_string(root.join("target/tmp/bench-python.json")) {
        let py = serde_json::from_str(&text)?;
        pipeline_rows(&mut t, &py);
        serving_rows(&mut t, &py);
        instructlab_rows(&mut t, &py);
    }
    let mut out = String::from("| measure | time | ratio | target |\n|---|---|---|---|\n");
    out.push_str(&t.0);
    out.push('\n');
    out.push_str(&languages_table(root)?);
    std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes())?;
    Ok(())
}

/// The serving rows: Ray Serve LLM on vLLM (CPU) with the four reference
/// plugins against Ray's own ingress and the same four as Python
/// middleware, requests interleaved on one app; and the app's time to
/// ready with the node-init callback against without.
fn serving_rows(t: &mut Rows, py: &serde_json::Value) {
    let num = |key: &str| py[key].as_f64().unwrap_or(0.0);
    if !py["serving_plain_p50_ms"].is_number() {
        return;
    }
    let ms = |key: &str| fmt_ns(num(key) * 1e6);
    t.row(
        "serving, 4 wasm plugins: added p50 per request (concurrency 1)",
        format!(
            "{:+.2} ms",
            num("serving_wasm_p50_ms") - num("serving_plain_p50_ms")
        ),
        format!(
            "p50 {} against {} without plugins; {} in the plugins' calls \
             (p50, timed in the ingress); Python middleware {:+.2} ms",
            ms("serving_wasm_p50_ms"),
            ms("serving_plain_p50_ms"),
            fmt_ns(num("serving_wasm_own_p50_us") * 1e3),
            num("serving_python_p50_ms") - num("serving_plain_p50_ms"),
        ),
        "<= 0.5 ms",
    );
    t.row(
        "serving, 4 wasm plugins: added p99 per request (concurrency 1)",
        format!(
            "{:+.2} ms",
            num("serving_wasm_p99_ms") - num("serving_plain_p99_ms")
        ),
        format!(
            "p99 {} against {}; Python middleware {}",
            ms("serving_wasm_p99_ms"),
            ms("serving_plain_p99_ms"),
            ms("serving_python_p99_ms"),
        ),
        "<= 2 ms",
    );
    let loss = 1.0 - num("serving_wasm_rps_16") / num("serving_plain_rps_16");
    t.row(
        "serving, 4 wasm plugins: throughput at concurrency 16",
        format!("{:.1} req/s", num("serving_wasm_rps_16")),
        format!(
            "{:+.1}% against {:.1} req/s without plugins; Python middleware {:.1} req/s \
             ({:.3}x the wasm path)",
            -loss * 100.0,
            num("serving_plain_rps_16"),
            num("serving_python_rps_16"),
            num("serving_python_rps_16") / num("serving_wasm_rps_16"),
        ),
        "loss < 3%",
    );
    t.row(
        "serving, 4 wasm plugins: streamed tokens a second (concurrency 1)",
        format!("{:.0} tok/s", num("serving_wasm_stream_tps")),
        format!(
            "{:.3}x without plugins ({:.0} tok/s); Python middleware {:.3}x",
            num("serving_wasm_stream_tps") / num("serving_plain_stream_tps"),
            num("serving_plain_stream_tps"),
            num("serving_python_stream_tps") / num("serving_plain_stream_tps"),
        ),
        "within 2%",
    );
    t.row(
        "Ray Serve LLM app on vLLM (CPU), time to ready, node init with 3 plugins",
        format!("{:.1} s", num("serving_ready_hooked_s")),
        format!(
            "{:+.2}% against {:.1} s without the callback, paired",
            (num("serving_ready_ratio") - 1.0) * 100.0,
            num("serving_ready_s")
        ),
        "< 1%",
    );
}

/// The InstructLab row: one hook (`on_step_end`) through InstructLab's own
/// `CallbackManager` with one wasm plugin against the same callback in
/// Python, fires interleaved, each callback timed on the manager's loop
/// thread (caches cold, as between training steps); and what
/// `manager.fire` costs the training thread, which should not depend on the
/// callback (a callback doing nothing is the floor).
fn instructlab_rows(t: &mut Rows, py: &serde_json::Value) {
    let num = |key: &str| py[key].as_f64().unwrap_or(0.0);
    if !py["instructlab_ratio"].is_number() {
        return;
    }
    let us = |key: &str| fmt_ns(num(key) * 1e3);
    t.row(
        "InstructLab hook, 1 wasm plugin (on the CallbackManager's loop)",
        us("instructlab_wasm_hook_us"),
        format!(
            "{:.1}x the same Python TrainerCallback ({}), interleaved; back to back {} \
             against {}; manager.fire on the training thread {} (wasm), {} (Python), \
             {} (a callback doing nothing)",
            num("instructlab_ratio"),
            us("instructlab_python_hook_us"),
            us("instructlab_wasm_hot_us"),
            us("instructlab_python_hot_us"),
            us("instructlab_wasm_fire_us"),
            us("instructlab_python_fire_us"),
            us("instructlab_nothing_fire_us"),
        ),
        "",
    );
}

/// The daft pipeline's rows: hooks on every batch against no plugins, and
/// a fully cached run against the first.
fn pipeline_rows(t: &mut Rows, py: &serde_json::Value) {
    let num = |key: &str| py[key].as_f64().unwrap_or(0.0);
    if !py["pipeline_hooks_ratio"].is_number() {
        return;
    }
    t.row(
        "daft pipeline, 1M rows, 5 nodes: hooks on every phase and batch",
        fmt_ns(num("pipeline_hooks_ms") * 1e6),
        format!(
            "{:.3}x the same runner without plugins ({}), median of {} blocks \
             (middle half {:.3} to {:.3}); daft alone {}",
            num("pipeline_hooks_ratio"),
            fmt_ns(num("pipeline_bare_ms") * 1e6),
            num("pipeline_hooks_blocks"),
            num("pipeline_hooks_ratio_q1"),
            num("pipeline_hooks_ratio_q3"),
            fmt_ns(num("pipeline_daft_alone_ms") * 1e6)
        ),
        "< 1.02x",
    );
    t.row(
        "daft pipeline, 1M rows: every node from the cache plugins, same runner",
        fmt_ns(num("pipeline_cached_ms") * 1e6),
        format!(
            "{:.1}% of the first run ({})",
            num("pipeline_cached_share") * 100.0,
            fmt_ns(num("pipeline_first_ms") * 1e6)
        ),
        "< 10%",
    );
    t.row(
        "the same, by a new runner (every cached file read and validated)",
        fmt_ns(num("pipeline_cached_fresh_ms") * 1e6),
        format!(
            "{:.1}% of the first run",
            num("pipeline_cached_fresh_share") * 100.0
        ),
        "",
    );
}

const MIB: f64 = 1024.0 * 1024.0;

/// The metrics collector in each language: size, first compile, cached
/// load, start, call and memory.
fn languages_table(root: &Path) -> anyhow::Result<String> {
    let path = root.join("target/tmp/bench-languages.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let extras: serde_json::Value = serde_json::from_str(&text)?;
    let mut out = String::from(
        "| language | size | first compile | cached load | start | call (4 keys) | memory: idle / after the calls |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for language in ["rust", "python", "js", "zig", "go"] {
        let e = &extras[language];
        let num = |key: &str| e[key].as_f64().unwrap_or(f64::NAN);
        let ns = |what: &str| estimate(root, &format!("languages/{what}_{language}"));
        out.push_str(&format!(
            "| {language} | {:.0} KB | {} | {} | {} | {} | {:.1} / {:.1} MiB |\n",
            num("bytes") / 1e3,
            fmt_ns(num("compile_ns")),
            fmt_ns(ns("load_cached")?),
            fmt_ns(ns("start")?),
            fmt_ns(ns("call")?),
            num("idle_memory_bytes") / MIB,
            num("busy_memory_bytes") / MIB,
        ));
    }
    Ok(out)
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.2} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}
