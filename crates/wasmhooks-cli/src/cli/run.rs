//! `run`: run a job bundle under an operator config, and report.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use wasmhooks_lifecycles::job::{self, JobBundle, JobReport, WorkerRole};

use super::{clean, host, print, print_json};

#[derive(clap::Args)]
pub struct RunArgs {
    /// The job bundle: a folder with job.toml and the plugins it ships.
    job: PathBuf,
    /// The operator config that allows the plugins.
    #[arg(long)]
    operator: PathBuf,
    /// Write the report as JSON to this file too.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Internal: run as this worker rank (set by rank 0 when it spawns).
    #[arg(long, hide = true, requires_all = ["world_size", "rendezvous"])]
    rank: Option<usize>,
    #[arg(long, hide = true)]
    world_size: Option<usize>,
    #[arg(long, hide = true)]
    rendezvous: Option<SocketAddr>,
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let host = host(Some(&args.operator))?;
    let bundle = JobBundle::load(&args.job)?;
    let role = match (args.rank, args.world_size, args.rendezvous) {
        (Some(rank), Some(world_size), Some(rendezvous)) => Some(WorkerRole {
            rank,
            world_size,
            rendezvous,
        }),
        _ => None,
    };
    let (program, first) = super::relaunch()?;
    let spawn = |role: WorkerRole| {
        let mut cmd = Command::new(&program);
        cmd.args(&first)
            .args(super::cache_args())
            .arg("run")
            .arg(&args.job)
            .arg("--operator")
            .arg(&args.operator)
            .arg("--rank")
            .arg(role.rank.to_string())
            .arg("--world-size")
            .arg(role.world_size.to_string())
            .arg("--rendezvous")
            .arg(role.rendezvous.to_string());
        cmd
    };
    let report = job::run(&bundle, &host, role, &spawn)?;
    if role.is_some() {
        // Workers report through rank 0's training; nothing to print.
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    if args.json {
        print_json(&report)?;
    } else {
        print(&human(&report)?)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn human(report: &JobReport) -> anyhow::Result<String> {
    let mut out = format!("job {}\n", report.job);
    if let Some(n) = &report.node {
        writeln!(
            out,
            "\nnode initialization{}",
            if n.skipped_default {
                " (replaced by a plugin)"
            } else {
                ""
            }
        )?;
        for (phase, time) in n.timings.iter() {
            writeln!(
                out,
                "  {phase:<22} {:>10.3} ms in plugins",
                time.plugins_us as f64 / 1e3
            )?;
        }
        if let Some(r) = n.data.get("download_result") {
            writeln!(
                out,
                "  downloaded {} bytes, {} cache hit(s) into {}",
                r["bytes_downloaded"],
                r["cache_hits"],
                clean(r["dir"].as_str().unwrap_or_default(), 512)
            )?;
        }
        if let Some(pg) = n.data.get("placement_group") {
            writeln!(out, "  placement group {}", clean(&pg.to_string(), 4096))?;
        }
        if let Some(e) = n.data.get("engine") {
            writeln!(
                out,
                "  engine pid {} ready in {} ms at {}",
                e["pid"], e["ready_ms"], e["url"]
            )?;
        }
    }
    if let Some(t) = &report.training {
        writeln!(out, "\ntraining: {:?} after {} steps", t.reason, t.steps)?;
        if let Some(from) = t.resumed_from {
            writeln!(out, "  resumed from step {from}")?;
        }
        if let (Some(a), Some(b)) = (t.first_loss, t.last_loss) {
            writeln!(out, "  loss        {a:.4} -> {b:.4}")?;
        }
        if let (Some(l), Some(a)) = (t.eval_loss, t.eval_accuracy) {
            writeln!(out, "  eval        loss {l:.4}, accuracy {:.1}%", a * 100.0)?;
        }
        for c in &t.checkpoints {
            writeln!(out, "  checkpoint  {}", c.display())?;
        }
        writeln!(
            out,
            "\n  {:<20} {:>8} {:>12}",
            "phase", "fired", "plugins ms"
        )?;
        for (phase, time) in t.timings.iter() {
            writeln!(
                out,
                "  {phase:<20} {:>8} {:>12.3}",
                time.count,
                time.plugins_us as f64 / 1e3
            )?;
        }
    }
    writeln!(
        out,
        "\n  {:<22} {:>7} {:>8} {:>14} {:>10} {:>9} {:>10}  changed",
        "plugin", "calls", "failed", "fuel", "ms", "peak KiB", "written"
    )?;
    for p in &report.plugins {
        let mut changed: Vec<String> = p.keys_changed.iter().map(|k| clean(k, 256)).collect();
        if p.more_keys_changed {
            changed.push("and more".into());
        }
        writeln!(
            out,
            "  {:<22} {:>7} {:>8} {:>14} {:>10.3} {:>9} {:>10}  {}",
            p.plugin,
            p.calls,
            p.failures,
            p.fuel,
            p.time.as_secs_f64() * 1e3,
            p.peak_memory / 1024,
            p.bytes_written,
            changed.join(", ")
        )?;
        if let Some(why) = &p.disabled {
            writeln!(out, "    disabled: {why}")?;
        }
    }
    Ok(out)
}
