//! A plugin that misbehaves in every way we know: each time the host
//! survives, the error names the plugin, the phase and the cause, and the
//! data map is exactly as it was.

use serde_json::json;
use wasmhooks::{Cause, Error, Hooks, Outcome};
use wasmhooks_tests as plugins;

use crate::support::{allow, data, host};

/// The adversary under `limits` (TOML lines), allowed to write a few keys.
fn adversary(limits: &str) -> Hooks {
    crate::support::adversary(&format!(
        "write = [\"count\", \"result\", \"depth\", \"huge\"]\n{limits}"
    ))
}

/// The adversary allowed to write `result`, with `dir` as its read-write
/// folder `/out` under a quota of `quota_mib`, and `more` (TOML lines).
fn with_folder(dir: &std::path::Path, quota_mib: u64, more: &str) -> Hooks {
    crate::support::adversary(&format!(
        "write = [\"result\"]\nreadwrite_quota_mib = {quota_mib}\nreadwrite = [{{ host = {dir:?}, guest = \"/out\" }}]\n{more}"
    ))
}

/// Fires `phase` under the `fail` policy and checks the error and the data;
/// then shows the host still runs the plugin (restarted if it trapped).
fn fails(hooks: &mut Hooks, phase: &str) -> Cause {
    let mut data = data(json!({"count": 41, "model": {"id": "tiny"}, "path": "/etc/hostname"}));
    let before = data.clone();
    let err = hooks.fire(phase, &mut data).unwrap_err();
    assert_eq!(data, before, "a failed call must leave the data as it was");
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("plugin 'adversary' failed in phase '{phase}': ")),
        "{msg}"
    );
    let Error::Call(call) = err else {
        panic!("not a call error: {msg}")
    };
    hooks.fire("count", &mut data).unwrap();
    assert!(data["count"].is_u64(), "the host keeps running the plugin");
    call.cause
}

#[test]
fn an_infinite_loop_runs_out_of_fuel() {
    let mut hooks = adversary("fuel = 50_000_000");
    let cause = fails(&mut hooks, "loop");
    assert_eq!(cause, Cause::OutOfFuel { limit: 50_000_000 });
    assert!(cause.to_string().contains("loops forever"));
}

#[test]
fn a_call_past_its_deadline_is_interrupted() {
    // Fuel enough for minutes: only the wall clock can stop it.
    let mut hooks = adversary("fuel = 1_000_000_000_000_000\ntimeout_ms = 150");
    let cause = fails(&mut hooks, "sleep");
    assert!(matches!(cause, Cause::Timeout { .. }), "{cause}");
    assert!(cause.to_string().contains("150 ms"), "{cause}");
}

/// One thread ticks every host's deadlines and ends when the last host is
/// gone: hosts made after that, and several at once, still get theirs.
#[test]
fn deadlines_fire_for_every_host_and_after_the_last_one_went() {
    let limits = "fuel = 1_000_000_000_000_000\ntimeout_ms = 100";
    for _ in 0..2 {
        let mut several: Vec<_> = (0..3).map(|_| adversary(limits)).collect();
        for hooks in &mut several {
            let cause = fails(hooks, "sleep");
            assert!(matches!(cause, Cause::Timeout { .. }), "{cause}");
        }
        drop(several);
        // Past a tick: the ticker may have ended.
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_call_blocked_in_a_host_wait_still_ends_at_its_deadline() {
    let mut hooks = adversary("timeout_ms = 150");
    let cause = fails(&mut hooks, "block");
    assert!(matches!(cause, Cause::Timeout { .. }), "{cause}");
    // A wait that ends inside the deadline is not cut short.
    let mut data = data(json!({}));
    hooks.fire("nap", &mut data).unwrap();
    assert!(data["result"].as_u64().unwrap() >= 20, "{data:?}");
}

#[test]
fn unbounded_allocation_hits_the_memory_cap() {
    let mut hooks = adversary("memory_mib = 16");
    let cause = fails(&mut hooks, "alloc");
    match cause {
        Cause::MemoryLimit { limit, requested } => {
            assert_eq!(limit, 16 << 20);
            assert!(requested > limit);
        }
        other => panic!("{other}"),
    }
}

#[test]
fn runaway_recursion_overflows_the_stack() {
    let mut hooks = adversary("");
    assert_eq!(fails(&mut hooks, "recurse"), Cause::StackOverflow);
    // Big frames exhaust Rust's stack in linear memory first.
    let cause = fails(&mut hooks, "recurse_big_frames");
    assert!(
        cause.to_string().contains("usually a stack overflow"),
        "{cause}"
    );
}

#[test]
fn a_panic_is_reported_with_its_message() {
    let mut hooks = adversary("");
    let cause = fails(&mut hooks, "panic");
    let Cause::Crashed {
        message: Some(message),
    } = &cause
    else {
        panic!("{cause:?}")
    };
    assert!(message.contains("adversary panics on purpose"), "{message}");
}

#[test]
fn an_error_the_plugin_returns_is_reported() {
    let mut hooks = adversary("");
    let cause = fails(&mut hooks, "error");
    assert_eq!(
        cause,
        Cause::Returned("adversary returns an error on purpose".into())
    );
}

#[test]
fn huge_output_is_refused() {
    let mut hooks = adversary("");
    let cause = fails(&mut hooks, "huge");
    assert!(
        matches!(
            cause,
            Cause::TooLarge {
                limit: 1_048_576,
                ..
            }
        ),
        "{cause}"
    );
}

#[test]
fn invalid_json_is_refused() {
    let mut hooks = adversary("");
    let cause = fails(&mut hooks, "invalid_json");
    assert!(
        matches!(&cause, Cause::InvalidJson { key, .. } if key == "result"),
        "{cause}"
    );
}

#[test]
fn an_invalid_key_is_refused() {
    let mut hooks = adversary("");
    assert!(matches!(
        fails(&mut hooks, "bad_key"),
        Cause::InvalidKey { .. }
    ));
}

#[test]
fn writing_a_key_without_a_grant_refuses_the_whole_call() {
    let mut hooks = adversary("");
    // The call also sets `result`, which it may write: all or nothing.
    let cause = fails(&mut hooks, "partly_forbidden");
    let Cause::ForbiddenKey { key, allowed } = &cause else {
        panic!("{cause}")
    };
    assert_eq!(key, "skip_default");
    assert_eq!(allowed, "count, result, depth, huge");
}

#[test]
fn under_skip_a_trap_restarts_the_plugin_and_the_job_goes_on() {
    let mut hooks = adversary("on_error = \"skip\"\nfuel = 50_000_000");
    let mut data = data(json!({}));
    hooks.fire("count", &mut data).unwrap();
    hooks.fire("count", &mut data).unwrap();
    assert_eq!(data["count"], 2);

    // An error it returns keeps the instance and its state...
    let report = hooks.fire("error", &mut data).unwrap();
    assert_eq!(report.failures().count(), 1);
    hooks.fire("count", &mut data).unwrap();
    assert_eq!(data["count"], 3);

    // ...a trap throws the instance away; the next call gets a fresh one.
    let before = data.clone();
    let report = hooks.fire("loop", &mut data).unwrap();
    assert_eq!(data, before);
    let failure = report.failures().next().unwrap();
    assert!(matches!(failure.cause, Cause::OutOfFuel { .. }));
    hooks.fire("count", &mut data).unwrap();
    assert_eq!(data["count"], 1, "a fresh instance starts counting again");
    assert_eq!(hooks.stats()[0].failures, 2);
}

#[test]
fn under_disable_a_failing_plugin_is_not_called_again() {
    let mut hooks = adversary("on_error = \"disable\"");
    let mut data = data(json!({}));
    hooks.fire("panic", &mut data).unwrap();
    let report = hooks.fire("count", &mut data).unwrap();
    assert!(matches!(report.calls[0].outcome, Outcome::Disabled));
    assert!(!data.contains_key("count"));
    let stats = &hooks.stats()[0];
    assert_eq!(stats.calls, 1);
    assert!(
        stats.disabled.as_deref().unwrap().contains("crashed"),
        "{stats:?}"
    );
}

#[test]
fn a_failing_init_fails_the_job_or_disables_the_plugin() {
    let toml = allow("adversary", plugins::ADVERSARY, "");
    let host = host(&toml);
    let plugin = host.load_file(plugins::ADVERSARY).unwrap();
    let err = Hooks::builder(json!({}))
        .plugin(plugin.clone(), json!({"init": "panic"}))
        .start()
        .err()
        .unwrap();
    let msg = err.to_string();
    assert!(
        msg.contains("plugin 'adversary' failed in init: crashed"),
        "{msg}"
    );
    assert!(msg.contains("panic in init"), "{msg}");

    let toml = allow("adversary", plugins::ADVERSARY, "on_error = \"disable\"");
    let host = crate::support::host(&toml);
    let plugin = host.load_file(plugins::ADVERSARY).unwrap();
    let mut hooks = Hooks::builder(json!({}))
        .plugin(plugin, json!({"init": "fail"}))
        .start()
        .unwrap();
    assert!(hooks.subscribers("count").is_empty());
    let stats = &hooks.stats()[0];
    assert!(
        stats
            .disabled
            .as_deref()
            .unwrap()
            .contains("refusing to start"),
        "{stats:?}"
    );
}

#[test]
fn a_failure_under_fail_leaves_the_hooks_usable_for_a_final_phase() {
    let mut hooks = adversary("fuel = 50_000_000");
    let mut data = data(json!({}));
    assert!(hooks.fire("loop", &mut data).is_err());
    // Like `on_train_end` on an error path: the plugin is started afresh.
    hooks.fire("count", &mut data).unwrap();
    assert_eq!(data["count"], 1);
}

#[test]
fn exit_is_reported_as_an_exit_not_a_backtrace() {
    let mut hooks = adversary("");
    // It calls exit(3); WASI 0.2's exit carries only success or failure,
    // so any status but 0 arrives as 1.
    let cause = fails(&mut hooks, "exit");
    assert_eq!(cause, Cause::Exited(1));
    assert_eq!(cause.to_string(), "the plugin exited with status 1");
}

#[test]
fn plugin_text_is_cut_and_escaped_before_it_reaches_a_log_or_report() {
    let mut hooks = adversary("");
    let cause = fails(&mut hooks, "forge");
    let Cause::Returned(message) = &cause else {
        panic!("{cause:?}")
    };
    assert!(message.len() < 4096, "30 MB cut to {} bytes", message.len());
    assert!(
        message.starts_with("ok\\nERROR wasmhooks: forged line \\u{1b}[2J"),
        "{message}"
    );
    for c in ['\n', '\u{1b}', '\u{202e}'] {
        assert!(!message.contains(c), "{c:?} in {message:?}");
    }
    assert!(message.contains("more bytes cut"), "{message}");
}

#[test]
fn save_state_past_its_limit_is_refused() {
    let toml = allow("adversary", plugins::ADVERSARY, "max_state_kib = 64");
    let host = host(&toml);
    let plugin = host.load_file(plugins::ADVERSARY).unwrap();
    let mut hooks = Hooks::builder(json!({}))
        .plugin(plugin, json!({"state_bytes": 1 << 20}))
        .start()
        .unwrap();
    let err = hooks
        .save_states(wasmhooks::DEFAULT_FLUSH)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "failed in save-state: returned 1048578 bytes of state, over the limit of 65536"
        ),
        "{err}"
    );
}

#[test]
fn a_prefix_grant_cannot_grow_the_data_map_without_bound() {
    let toml = format!(
        "[job]\nmax_data_kib = 1024\n{}",
        allow("adversary", plugins::ADVERSARY, "write = [\"blob.*\"]")
    );
    let host = host(&toml);
    let plugin = host.load_file(plugins::ADVERSARY).unwrap();
    let mut hooks = Hooks::builder(json!({}))
        .plugin(plugin, json!(null))
        .start()
        .unwrap();
    let mut data = data(json!({}));
    for _ in 0..3 {
        hooks.fire("grow_data", &mut data).unwrap();
    }
    let before = data.clone();
    let err = hooks.fire("grow_data", &mut data).unwrap_err().to_string();
    assert!(
        err.contains("over the job's limit of 1048576 bytes"),
        "{err}"
    );
    assert_eq!(data, before, "nothing of the failed call was merged");
    // Removing what it set makes room again.
    assert_eq!(data.len(), 3);
}

#[test]
fn a_read_write_folder_has_a_quota() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let mut hooks = with_folder(dir.path(), 2, "");
    let mut d = data(json!({"path": "/out/a", "mib": 1}));
    hooks.fire("fill_disk", &mut d).unwrap();
    let mut d = data(json!({"path": "/out/b", "mib": 2}));
    // The write that would cross the quota is refused as it is made: the
    // plugin's write fails, and so does its call.
    let err = hooks.fire("fill_disk", &mut d).unwrap_err().to_string();
    assert!(err.contains("I/O"), "{err}");
    assert!(!d.contains_key("result"), "the call's updates were dropped");
    assert!(held(dir.path()) <= 2 << 20, "{}", held(dir.path()));
    assert!(hooks.stats()[0].bytes_written <= 2 << 20);
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
}

/// Bytes the files directly in `dir` hold.
fn held(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

#[test]
fn bytes_in_a_removed_file_still_held_open_count_against_the_quota() {
    // Written through a handle to a file it removed: on the disk, in no
    // folder a count walks.
    let dir = tempfile::tempdir().unwrap();
    let mut hooks = with_folder(dir.path(), 2, "");
    let mut d = data(json!({"path": "/out/ghost", "mib": 1}));
    hooks.fire("unlink_held", &mut d).unwrap();
    let mut refused = false;
    for _ in 0..4 {
        refused |= hooks.fire("unlink_held", &mut d).is_err();
    }
    assert!(refused, "4 MiB more went into a removed file");
    assert!(hooks.stats()[0].bytes_written <= 2 << 20);
}

#[test]
fn emptying_a_file_by_reopening_it_gives_no_room_to_handles_kept_on_it() {
    // Three 1 MiB files emptied by opening them with `truncate`, then
    // 1 MiB through a handle kept on each: 3 MiB under a 2 MiB quota.
    let dir = tempfile::tempdir().unwrap();
    let mut hooks = with_folder(dir.path(), 2, "");
    let mut d = data(json!({"path": "/out", "files": 3}));
    assert!(hooks.fire("truncate_reopen", &mut d).is_err());
    assert!(held(dir.path()) <= 2 << 20, "{}", held(dir.path()));
}

#[test]
fn one_call_cannot_write_past_a_quota_whatever_its_deadline() {
    // 64 MiB in one call, under a 2 MiB quota and a generous deadline:
    // refused at the write that would cross it, not counted after.
    let dir = tempfile::tempdir().unwrap();
    let mut hooks = with_folder(dir.path(), 2, "timeout_ms = 10_000");
    let mut d = data(json!({"path": "/out/big", "mib": 64}));
    assert!(hooks.fire("fill_disk", &mut d).is_err());
    assert!(held(dir.path()) <= 2 << 20, "{}", held(dir.path()));
    // Within the quota, writing goes on as before.
    let _ = std::fs::remove_file(dir.path().join("big"));
    let mut d = data(json!({"path": "/out/small", "mib": 1}));
    hooks.fire("fill_disk", &mut d).unwrap();
}

#[test]
fn every_way_of_growing_a_read_write_folder_counts_against_its_quota() {
    let quota = |dir: &std::path::Path| with_folder(dir, 2, "");
    // Each way is refused at the write, as a full disk: the folder never
    // holds more than its quota.
    let refused = |err: String, dir: &std::path::Path| {
        assert!(err.contains("I/O"), "{err}");
        assert!(held(dir) <= 2 << 20, "{}", held(dir));
    };
    // A file made longer, opened without `create`.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), "x").unwrap();
    let mut hooks = quota(dir.path());
    let mut d = data(json!({"path": "/out/f", "mib": 3}));
    refused(
        hooks.fire("grow_file", &mut d).unwrap_err().to_string(),
        dir.path(),
    );
    // One byte written 3 MiB past the end of a file.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), "x").unwrap();
    let mut hooks = quota(dir.path());
    let mut d = data(json!({"path": "/out/f", "mib": 3}));
    let err = hooks.fire("write_past_end", &mut d).unwrap_err();
    refused(err.to_string(), dir.path());
    // Appends through a handle kept open between calls, as a logger does.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("log"), "").unwrap();
    let mut hooks = quota(dir.path());
    let mut d = data(json!({"path": "/out/log", "mib": 1}));
    hooks.fire("append_held", &mut d).unwrap();
    hooks.fire("nap", &mut d).unwrap();
    hooks.fire("append_held", &mut d).unwrap();
    let err = hooks.fire("append_held", &mut d).unwrap_err();
    refused(err.to_string(), dir.path());
}

#[test]
fn a_plugin_that_traps_after_writing_cannot_reset_its_quota() {
    let dir = tempfile::tempdir().unwrap();
    let mut hooks = with_folder(dir.path(), 2, "on_error = \"skip\"");
    // Each call writes 1 MiB and traps; each restart must count from what
    // the folder held when the first instance started.
    for i in 0..4 {
        let mut d = data(json!({"path": format!("/out/{i}")}));
        let _ = hooks.fire("fill_then_panic", &mut d);
        if hooks.stats()[0].disabled.is_some() {
            break;
        }
    }
    // Past the quota every write is refused, restart or not.
    assert!(held(dir.path()) <= 2 << 20, "{} bytes", held(dir.path()));
    assert!(hooks.stats()[0].bytes_written <= 2 << 20);
}

/// What a plugin wrote before it trapped still counts as written once it is
/// restarted: the new instance counts from the first one's baseline.
#[test]
fn bytes_written_count_from_the_first_instance_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut hooks = with_folder(dir.path(), 8, "on_error = \"skip\"");
    let mut d = data(json!({"path": "/out/a"}));
    let _ = hooks.fire("fill_then_panic", &mut d);
    // Restarted here; the mebibyte the first instance wrote is still its.
    hooks.fire("nap", &mut d).unwrap();
    assert_eq!(hooks.stats()[0].bytes_written, 1 << 20);
}

#[test]
fn a_fifo_in_a_granted_folder_cannot_block_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let mut hooks = crate::support::adversary(&format!(
        "write = [\"result\"]\ntimeout_ms = 500\nread = [{{ host = {:?}, guest = \"/in\" }}]",
        dir.path()
    ));
    let mut d = data(json!({"path": "/in/fifo"}));
    let err = hooks.fire("read_file", &mut d).unwrap_err().to_string();
    assert!(
        err.contains("Permission denied") || err.contains("access"),
        "{err}"
    );
}

/// The keys a plugin names at `init` are held to the manifest's bounds: an
/// empty key, one with control characters, one past 256 bytes, or more
/// than 4,096 keys fail the start naming the plugin; good ones replace the
/// manifest's `reads`, and the plugin is given just those.
#[test]
fn keys_a_plugin_names_at_init_are_bounded_like_its_manifest() {
    let toml = allow("adversary", plugins::ADVERSARY, "write = [\"seen\"]");
    let host = host(&toml);
    let plugin = host.load_file(plugins::ADVERSARY).unwrap();
    let many: Vec<String> = (0..5000).map(|i| format!("k{i}")).collect();
    for bad in [
        json!([""]),
        json!(["a\nb"]),
        json!(["x".repeat(300)]),
        json!(many),
    ] {
        let err = Hooks::builder(json!({}))
            .plugin(plugin.clone(), json!({ "reads": bad }))
            .start()
            .err()
            .expect("refused");
        let msg = err.to_string();
        assert!(
            msg.contains("'adversary'") && msg.contains("at init"),
            "{msg}"
        );
        assert!(!msg.contains('\n'), "{msg}");
    }
    let mut hooks = Hooks::builder(json!({}))
        .plugin(plugin, json!({ "reads": ["b"] }))
        .start()
        .unwrap();
    let reads = hooks.manifests().next().unwrap().reads.clone();
    assert_eq!(reads, Some(vec!["b".to_owned()]));
    let mut data = data(json!({"a": 1, "b": 2}));
    hooks.fire("anything", &mut data).unwrap();
    assert_eq!(data["seen"], json!(["b"]));
}

/// A plugin restarted after a trap must describe itself as its first
/// instance did: the hooks route phases and pass values by that. One that
/// names other keys at its second `init` is stopped with a clear error, and
/// no call reaches it with values in the wrong places.
#[test]
fn a_restarted_plugin_that_names_other_keys_is_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("reads.json");
    std::fs::write(&list, r#"["a"]"#).unwrap();
    let extra = format!(
        "write = [\"seen\"]\non_error = \"skip\"\nread = [{{ host = {:?}, guest = \"/in\" }}]",
        dir.path()
    );
    let host = host(&allow("adversary", plugins::ADVERSARY, &extra));
    let plugin = host.load_file(plugins::ADVERSARY).unwrap();
    let mut hooks = Hooks::builder(json!({}))
        .plugin(plugin, json!({ "reads_file": "/in/reads.json" }))
        .start()
        .unwrap();
    let mut d = data(json!({"a": 1, "b": 2}));
    hooks.fire("anything", &mut d).unwrap();
    assert_eq!(d["seen"], json!(["a"]));
    // Traps, so the next call starts a new instance, which reads this.
    std::fs::write(&list, r#"["b"]"#).unwrap();
    let report = hooks.fire("panic", &mut d).unwrap();
    assert!(matches!(report.calls[0].outcome, Outcome::Failed { .. }));
    let mut d = data(json!({"a": 1, "b": 2}));
    let report = hooks.fire("anything", &mut d).unwrap();
    let Outcome::Failed { error } = &report.calls[0].outcome else {
        panic!("{report:?}");
    };
    assert!(matches!(error.cause, Cause::ChangedManifest), "{error}");
    let msg = error.to_string();
    assert!(
        msg.contains("'adversary'") && msg.contains("describes itself differently"),
        "{msg}"
    );
    assert!(!d.contains_key("seen"), "nothing of it was merged");
    let disabled = hooks.stats()[0].disabled.clone().unwrap_or_default();
    assert!(
        disabled.contains("describes itself differently"),
        "{disabled}"
    );
}

#[test]
fn a_whole_number_past_64_bits_in_a_list_or_map_is_refused_not_rounded() {
    let mut hooks = adversary("");
    for raw in [
        "[1, 18446744073709551616]",
        r#"{"a": {"b": -9223372036854775809}}"#,
    ] {
        let mut data = data(json!({"raw": raw}));
        let err = hooks.fire("raw_json", &mut data).unwrap_err().to_string();
        assert!(err.contains("does not fit in 64 bits"), "{err}");
        assert!(data.get("result").is_none(), "nothing of it is merged");
    }
    // At the edges, and floats, the values cross as written.
    let raw = "[18446744073709551615,-9223372036854775808,0.1,1.7976931348623157e+308,5e-324]";
    let mut data = data(json!({"raw": raw}));
    hooks.fire("raw_json", &mut data).unwrap();
    assert_eq!(data["result"].to_string(), raw);
}

#[test]
fn the_keys_a_plugin_changed_are_remembered_within_a_bound() {
    let mut hooks = adversary("");
    let mut data = data(json!({}));
    for _ in 0..50 {
        hooks.fire("churn_keys", &mut data).unwrap();
    }
    let stats = &hooks.stats()[0];
    assert_eq!(stats.keys_changed.len(), wasmhooks::MAX_KEYS_LISTED);
    assert!(stats.more_keys_changed);
    assert!(data.is_empty(), "{data:?}");
}
