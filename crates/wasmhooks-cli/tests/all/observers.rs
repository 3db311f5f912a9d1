//! Observers: plugins that declare observe-only phases run on a background
//! worker, fire-and-forget, on a bounded queue with a snapshot of the data;
//! a flush waits for them within a bound, and no thread outlives the hooks.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wasmhooks::{Hooks, Outcome};
use wasmhooks_tests as plugins;

use crate::support::{adversary, allow, data, host};

/// Threads of this process named like the observer (names are cut to 15
/// bytes by the kernel).
fn observer_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).ok())
        .filter(|name| name.trim() == "wasmhooks-obser")
        .count()
}

/// Hooks with the metrics logger alone, writing `m.jsonl` in `dir`.
fn metrics_logger(dir: &std::path::Path) -> Hooks {
    let host = host(&allow(
        "metrics-logger",
        plugins::METRICS_LOGGER,
        &format!("readwrite = [{{ host = {dir:?}, guest = \"/logs\" }}]"),
    ));
    Hooks::builder(json!({}))
        .plugin(
            host.load_file(plugins::METRICS_LOGGER).unwrap(),
            json!({"path": "/logs/m.jsonl"}),
        )
        .start()
        .unwrap()
}

#[test]
fn observers_see_snapshots_in_order_and_a_flush_waits_for_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut hooks = metrics_logger(dir.path());
    let mut data = data(json!({}));
    for step in 0..50 {
        // The same map, changed after each fire: each observation must see
        // the value it was queued with.
        data.insert("logs".into(), json!({"step": step}));
        let report = hooks.fire("on_log", &mut data).unwrap();
        assert!(matches!(report.calls[0].outcome, Outcome::Queued));
    }
    assert_eq!(hooks.flush(Duration::from_secs(10)), 0);
    let text = std::fs::read_to_string(dir.path().join("m.jsonl")).unwrap();
    let steps: Vec<u64> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["logs"]["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, (0..50).collect::<Vec<_>>());
    // A phase it does not observe is a call in order, after the queue.
    data.insert("train_end_reason".into(), json!("completed"));
    hooks.fire("on_train_end", &mut data).unwrap();
    let last = std::fs::read_to_string(dir.path().join("m.jsonl")).unwrap();
    assert!(
        last.lines().last().unwrap().contains("\"lines\":50"),
        "{last}"
    );
    assert_eq!(hooks.stats()[0].calls, 51);
}

#[test]
fn a_flush_behind_a_backlog_waits_for_the_backlog_to_run_not_for_rests() {
    // The worker rests up to 50 ms between batches of 32 when it has run
    // all that was queued. 960 observations queued at once are 30 batches:
    // a flush behind them that rested after each would take 1.5 s.
    let dir = tempfile::tempdir().unwrap();
    let mut hooks = metrics_logger(dir.path());
    let mut data = data(json!({"logs": {"loss": 0.5}}));
    for _ in 0..960 {
        hooks.fire("on_log", &mut data).unwrap();
    }
    let start = Instant::now();
    assert_eq!(hooks.flush(Duration::from_secs(30)), 0);
    let waited = start.elapsed();
    let lines = std::fs::read_to_string(dir.path().join("m.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 960);
    assert!(
        waited < Duration::from_millis(750),
        "the flush waited {waited:?}"
    );
}

#[test]
fn a_full_queue_drops_observations_and_the_flush_is_bounded() {
    let mut hooks = adversary("write = [\"count\"]");
    let mut data = data(json!({}));
    let start = Instant::now();
    for _ in 0..1100 {
        hooks.fire("observe_nap", &mut data).unwrap();
    }
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "firing never waits for observers"
    );
    assert!(
        !data.contains_key("count"),
        "observers' updates are not merged"
    );
    let left = hooks.flush(Duration::from_millis(100));
    assert!(left > 0, "20 ms naps cannot all run in 100 ms");
    let stats = &hooks.stats()[0];
    // The queue holds 1,024, and the worker takes up to 32 off it at once.
    assert!(stats.dropped >= 1100 - 1024 - 32 - 1, "{stats:?}");

    // Dropping the hooks abandons what is queued and joins the worker.
    let start = Instant::now();
    drop(hooks);
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[test]
fn a_phase_is_only_observed_when_every_plugin_at_it_only_observes_it() {
    let mut hooks = adversary("write = [\"count\", \"result\"]");
    assert!(hooks.only_observed("observe_nap"));
    // The adversary observes two phases and is called at every other one.
    assert!(!hooks.only_observed("nap"));
    assert!(!hooks.only_observed("on_train_end"));
}

/// Counts threads, so it needs a process to itself: the test below runs it
/// in one.
#[test]
#[ignore = "run by no_observer_thread_outlives_its_hooks, alone in a process"]
fn leak_probe() {
    assert_eq!(observer_threads(), 0);
    let mut hooks = adversary("write = [\"count\"]");
    let mut data = data(json!({}));
    for _ in 0..50 {
        hooks.fire("observe_nap", &mut data).unwrap();
    }
    // A thread names itself once it runs, and until then it carries the name
    // of the thread that spawned it: the worker's own name shows late, and
    // threads the worker starts (wasmtime-wasi's tokio runtime, on the first
    // nap) show the worker's name for a moment. Wait for one to remain.
    let start = Instant::now();
    while observer_threads() != 1 && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(observer_threads(), 1);
    drop(hooks);
    assert_eq!(observer_threads(), 0, "the worker was joined");
}

#[test]
fn no_observer_thread_outlives_its_hooks() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "observers::leak_probe",
            "--ignored",
            "--test-threads=1",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("1 passed"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_crashing_observer_does_not_stop_the_job() {
    let mut hooks = adversary("write = [\"count\"]");
    let mut data = data(json!({}));
    hooks.fire("observe_panic", &mut data).unwrap();
    hooks.flush(Duration::from_secs(10));
    assert_eq!(hooks.stats()[0].failures, 1);
    hooks.fire("count", &mut data).unwrap();
    assert_eq!(data["count"], 1, "a fresh instance answers the next call");
}

#[test]
fn after_a_flush_runs_out_of_time_nothing_waits_for_the_backlog() {
    let mut hooks = adversary("write = [\"count\"]");
    let mut data = data(json!({}));
    // About 20 s of naps queued.
    for _ in 0..1000 {
        hooks.fire("observe_nap", &mut data).unwrap();
    }
    let left = hooks.flush(Duration::from_millis(100));
    assert!(left > 900, "{left}");
    // A call in order after the queue (as `on_train_end` is) waits at most
    // for the observation under way, not for the discarded backlog.
    let start = Instant::now();
    hooks.fire("count", &mut data).unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    let stats = &hooks.stats()[0];
    assert!(
        stats.dropped >= 900,
        "discarded observations are counted: {stats:?}"
    );
}

#[test]
fn the_observer_queue_is_bounded_in_bytes() {
    let toml = format!(
        "[job]\nobserver_queue_kib = 64\n{}",
        allow("adversary", plugins::ADVERSARY, "write = [\"count\"]")
    );
    let host = host(&toml);
    let mut hooks = crate::support::start(&[&host.load_file(plugins::ADVERSARY).unwrap()]);
    let mut data = data(json!({"blob": "x".repeat(40 << 10)}));
    for _ in 0..10 {
        hooks.fire("observe_nap", &mut data).unwrap();
    }
    let stats = &hooks.stats()[0];
    assert!(stats.dropped >= 7, "{stats:?}");
}

#[test]
fn saving_states_waits_for_the_backlog_only_within_its_bound() {
    let mut hooks = adversary("write = [\"count\"]");
    let mut data = data(json!({}));
    // About 20 s of naps queued before a checkpoint.
    for _ in 0..1000 {
        hooks.fire("observe_nap", &mut data).unwrap();
    }
    let start = Instant::now();
    let states = hooks.save_states(Duration::from_millis(200)).unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "saving waited behind the backlog: {:?}",
        start.elapsed()
    );
    // The state saved is the observer's, after what ran of the backlog.
    let count = states["adversary"].as_u64().unwrap();
    assert!(count < 900, "{count}");
    assert!(hooks.stats()[0].dropped >= 900, "{:?}", hooks.stats()[0]);
}
