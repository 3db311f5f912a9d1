//! Project tasks, run as `cargo xtask <task>`. Each installs what it needs
//! (the wasm32-wasip2 target) before it builds, so a fresh machine with only
//! the Rust toolchain can run them.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

mod toolchains;

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  test      install the wasm32-wasip2 target and the other languages' toolchains,
            build the guest plugins, run every test
  toolchains  install the Python, JavaScript, C/Zig and Go plugin toolchains
            into target/toolchains (skipped when already there)
  demo      build the plugins and run the example job: node initialization, then training
  plugins   install the toolchains, build the guest plugins in plugins/ and the
            templates in sdk/ (into target/plugins)
  bench     run the benchmarks (criterion) and print the table of ratios
  bench-table  print that table again from the last run";

fn main() -> anyhow::Result<()> {
    let task = std::env::args().nth(1).unwrap_or_default();
    let root = root();
    match task.as_str() {
        "test" => {
            wasm_target()?;
            toolchains::install(&root)?;
            cargo(&root, &["test", "--workspace"])
        }
        "toolchains" => toolchains::install(&root).map(|_| ()),
        "demo" => demo(&root),
        "plugins" => {
            toolchains::install(&root)?;
            plugins(&root).map(|_| ())
        }
        "bench" => {
            wasm_target()?;
            cargo(&root, &["bench", "-p", "wasmhooks", "--bench", "dispatch"])?;
            bench_table(&root)
        }
        "bench-table" => bench_table(&root),
        _ => {
            eprintln!("{USAGE}");
            if task.is_empty() {
                Ok(())
            } else {
                bail!("unknown task '{task}'")
            }
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_owned()
}

/// Adds the wasm32-wasip2 target with rustup, if it is not there yet.
fn wasm_target() -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("rustup is needed to add the wasm32-wasip2 target")?;
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.trim() == "wasm32-wasip2")
    {
        return Ok(());
    }
    eprintln!("xtask: adding the wasm32-wasip2 target");
    run(Command::new("rustup").args(["target", "add", "wasm32-wasip2"]))
}

/// Builds the guest plugins (through the tests crate's build script, so
/// tests and demo share one build); returns the Rust plugins' folder. The
/// other languages' plugins are built too when their toolchains are
/// installed; the demo needs only the Rust ones.
fn plugins(root: &Path) -> anyhow::Result<PathBuf> {
    wasm_target()?;
    cargo(root, &["build", "--quiet", "-p", "wasmhooks-tests"])?;
    Ok(root.join("target/plugins/wasm32-wasip2/release"))
}

/// Assembles the example job bundle (the example's files plus the freshly
/// built plugins) and its operator config under target/demo, then runs it.
fn demo(root: &Path) -> anyhow::Result<()> {
    let built = plugins(root)?;
    let example = root.join("examples/job");
    let out = root.join("target/demo");
    let job = out.join("job");
    if job.exists() {
        std::fs::remove_dir_all(&job)?;
    }
    copy_dir(&example, &job)?;
    std::fs::create_dir_all(job.join("plugins"))?;
    std::fs::create_dir_all(job.join("output"))?;
    let mut operator = std::fs::read_to_string(example.join("operator.template.toml"))?
        .replace("{job}", &job.display().to_string());
    for entry in std::fs::read_dir(&built)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "wasm") {
            let name = path.file_name().unwrap_or_default();
            std::fs::copy(&path, job.join("plugins").join(name))?;
            let stem = path.file_stem().unwrap_or_default().to_string_lossy();
            let digest = format!("{:x}", Sha256::digest(std::fs::read(&path)?));
            operator = operator.replace(&format!("{{sha256:{stem}}}"), &digest);
        }
    }
    let operator_path = out.join("operator.toml");
    std::fs::write(&operator_path, operator)?;
    eprintln!("xtask: job bundle at {}", job.display());
    eprintln!("xtask: operator config at {}", operator_path.display());
    let report = out.join("report.json");
    cargo(
        root,
        &[
            "run",
            "--quiet",
            "-p",
            "wasmhooks",
            "--",
            "run",
            &job.display().to_string(),
            "--operator",
            &operator_path.display().to_string(),
            "--report",
            &report.display().to_string(),
        ],
    )?;
    eprintln!("xtask: JSON report at {}", report.display());
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// Reads criterion's estimates and the bench's extras, and prints them as
/// one table with the ratios the targets are stated in.
fn bench_table(root: &Path) -> anyhow::Result<()> {
    let ns = |id: &str| -> anyhow::Result<f64> {
        let path = root
            .join("target/criterion")
            .join(id)
            .join("new/estimates.json");
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)?;
        v["mean"]["point_estimate"]
            .as_f64()
            .context("no mean estimate")
    };
    let extras: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        root.join("target/tmp/bench-extras.json"),
    )?)?;
    let native = ns("call/native")?;
    let raw = ns("call/raw_wasmtime")?;
    let cpython = extras["cpython_ns"].as_f64();
    let mut out = String::from("| measure | time | ratio | target |\n|---|---|---|---|\n");
    let mut row = |m: &str, t: String, r: String, target: &str| {
        out.push_str(&format!("| {m} | {t} | {r} | {target} |\n"));
    };
    row(
        "native closure (the limit)",
        fmt_ns(native),
        "1.00x native".into(),
        "",
    );
    row(
        "raw wasmtime component call",
        fmt_ns(raw),
        format!("{:.1}x native", raw / native),
        "",
    );
    let metered = ns("call/raw_wasmtime_metered")?;
    row(
        "raw call, fuel and epoch checks on",
        fmt_ns(metered),
        format!("{:.2}x raw", metered / raw),
        "",
    );
    // Sixteen different plugins are sixteen copies of machine code: their
    // raw calls are the fair baseline for dispatching to sixteen.
    let raw16 = ns("call/raw_wasmtime_metered_16_copies")? / 16.0;
    row(
        "raw metered call, 16 compiled copies, per call",
        fmt_ns(raw16),
        format!("{:.2}x raw", raw16 / raw),
        "",
    );
    let one_code = ns("dispatch/16x_one_code")? / 16.0;
    row(
        "dispatch, 16 instances of one compiled plugin, per call",
        fmt_ns(one_code),
        format!("{:.2}x raw", one_code / raw),
        "",
    );
    for n in [1.0, 4.0, 16.0] {
        for size in ["small", "large"] {
            let t = ns(&format!("dispatch/{n}x{size}"))?;
            let per = t / n;
            let mut ratio = format!("{:.2}x raw per plugin", per / raw);
            if n == 16.0 {
                ratio.push_str(&format!("; {:.2}x the 16 copies' raw call", per / raw16));
            }
            row(
                &format!(
                    "dispatch, {n} plugin(s), {} keys",
                    if size == "small" { 4 } else { 200 }
                ),
                format!("{} ({} per plugin)", fmt_ns(t), fmt_ns(per)),
                ratio,
                "<= 2x raw",
            );
        }
    }
    if let Some(py) = cpython {
        let one = ns("dispatch/1xsmall")?;
        row(
            "CPython callback on a dict",
            fmt_ns(py),
            format!("dispatch is {:.2}x CPython", one / py),
            "<= 1x",
        );
    }
    let compile = ns("cold/compile")?;
    let start = ns("cold/instantiate")?;
    row("cold: digest + compile", fmt_ns(compile), String::new(), "");
    row(
        "cold: instantiate + describe + init",
        fmt_ns(start),
        String::new(),
        "< 5 ms cached",
    );
    let memory = extras["idle_instance_linear_memory_bytes"]
        .as_f64()
        .unwrap_or(0.0);
    row(
        "linear memory of an idle instance",
        format!("{:.0} KiB", memory / 1024.0),
        String::new(),
        "< 1 MiB",
    );
    // Seven phases a step, four plugins subscribed to each.
    let per_step = 7.0 * ns("dispatch/4xsmall")?;
    row(
        "4 plugins on every phase of a 10 ms step",
        fmt_ns(per_step),
        format!("{:.3}% of the step", per_step / 10e6 * 100.0),
        "< 1%",
    );
    out.push('\n');
    out.push_str(&languages_table(root, &ns)?);
    std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes())?;
    Ok(())
}

const MIB: f64 = 1024.0 * 1024.0;

/// The metrics collector in each language: size, first compile, cached
/// load, start, call and memory.
fn languages_table(
    root: &Path,
    ns: &dyn Fn(&str) -> anyhow::Result<f64>,
) -> anyhow::Result<String> {
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
        out.push_str(&format!(
            "| {language} | {:.0} KB | {} | {} | {} | {} | {:.1} / {:.1} MiB |\n",
            num("bytes") / 1e3,
            fmt_ns(num("compile_ns")),
            fmt_ns(ns(&format!("languages/load_cached_{language}"))?),
            fmt_ns(ns(&format!("languages/start_{language}"))?),
            fmt_ns(ns(&format!("languages/call_{language}"))?),
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

fn cargo(root: &Path, args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    run(Command::new(cargo).current_dir(root).args(args))
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}
