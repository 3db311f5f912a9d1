//! The key-value capability (contract 0.3.0's `kv`) through the real host,
//! with `plugins/token-budget`: state that outlives a call and a request,
//! one namespace per plugin shared by every instance a host makes, bounded
//! by the operator's `kv_quota_kib`; and plugins of the older contracts
//! still running beside it.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use wasmhooks::{DataMap, Error, Hooks, Host, KvSnapshotEntry, KvSnapshotValue};
use wasmhooks_tests as plugins;

use crate::support::{allow, data, host, job};

/// The operator's lines for token-budget: it writes `block`.
const GRANTS: &str = "write = [\"block\"]";

fn budget_host(extra: &str) -> Host {
    host(&allow(
        "token-budget",
        plugins::TOKEN_BUDGET,
        &format!("{GRANTS}\n{extra}"),
    ))
}

/// Token-budget's hooks on `host`, `n` tokens a minute.
fn budget(host: &Host, n: u64) -> Hooks {
    let plugin = host.load_file(plugins::TOKEN_BUDGET).unwrap();
    Hooks::builder(job())
        .plugin(plugin, json!({"tokens_per_minute": n}))
        .start()
        .unwrap()
}

fn minute() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 60
}

/// A request's map at `on_request`.
fn request(tenant: Option<&str>) -> DataMap {
    data(json!({
        "request_id": "r",
        "route": "chat",
        "model": "tiny-llm",
        "tenant": tenant,
        "messages": [{"role": "user", "content": "hi"}],
        "sampling": {"max_tokens": 50},
        "stream": false,
    }))
}

/// One request: `on_request`, then, unless it was blocked, `on_request_end`
/// with `tokens` used. Returns the block, if any.
fn serve(hooks: &mut Hooks, tenant: Option<&str>, tokens: u64) -> Option<Value> {
    let mut data = request(tenant);
    hooks.fire("on_request", &mut data).unwrap();
    let block = data.get("block").cloned();
    let (status, usage) = match &block {
        Some(_) => (429, Value::Null),
        None => (
            200,
            json!({"prompt_tokens": 1, "completion_tokens": tokens - 1, "total_tokens": tokens}),
        ),
    };
    data.insert("status_code".into(), json!(status));
    data.insert("usage".into(), usage);
    hooks.fire("on_request_end", &mut data).unwrap();
    block
}

/// Runs `f` (which serves requests) until it runs within one wall-clock
/// minute, as the plugin's windows are: a run that crosses into the next
/// minute is run again, with a fresh tenant.
fn within_a_minute<T>(mut f: impl FnMut(&str) -> T) -> T {
    for attempt in 0..3 {
        let before = minute();
        let out = f(&format!("acme-{attempt}"));
        if minute() == before {
            return out;
        }
    }
    panic!("three runs crossed a minute's end");
}

#[test]
fn token_budget_refuses_the_request_after_the_budget_is_spent() {
    let host = budget_host("");
    let mut hooks = budget(&host, 10);
    let (blocks, tenant, counted) = within_a_minute(|tenant| {
        let blocks: Vec<_> = (0..3).map(|_| serve(&mut hooks, Some(tenant), 6)).collect();
        let key = format!("tpm:{tenant}:{}", minute());
        (
            blocks,
            tenant.to_owned(),
            host.kv().get("token-budget", &key),
        )
    });
    // 6 used after the first, 12 after the second: the third is refused.
    assert_eq!(blocks[0], None);
    assert_eq!(blocks[1], None);
    let block = blocks[2].as_ref().expect("the third request is refused");
    assert_eq!(block["status"], 429);
    assert_eq!(block["rule"], "token-budget");
    assert_eq!(
        block["reason"],
        format!("tenant {tenant} used its 10 tokens this minute")
    );
    let retry = block["retry_after_s"].as_u64().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // The refused request spent nothing; the count is in the host's store,
    // under the plugin's namespace.
    assert_eq!(counted.as_deref(), Some(&b"12"[..]));
    // Other tenants have budgets of their own; no tenant is the default's.
    assert_eq!(serve(&mut hooks, Some("globex"), 6), None);
    assert_eq!(serve(&mut hooks, None, 6), None);
    assert!(
        host.kv()
            .get("token-budget", &format!("tpm:anonymous:{}", minute()))
            .is_some()
    );
}

#[test]
fn instances_made_through_one_host_share_the_plugins_namespace() {
    // A serving replica's pool: several instance sets of the plugin, any
    // of which takes a request.
    let host = budget_host("");
    let clone = host.clone();
    let mut pool = [budget(&host, 10), budget(&host, 10), budget(&clone, 10)];
    let blocks = within_a_minute(|tenant| {
        (0..3)
            .map(|i| serve(&mut pool[i], Some(tenant), 6))
            .collect::<Vec<_>>()
    });
    assert_eq!(blocks[..2], [None, None]);
    assert!(blocks[2].is_some(), "the third set sees the others' counts");
    // Another host keeps a store of its own.
    let other = budget_host("");
    let mut alone = budget(&other, 10);
    assert_eq!(serve(&mut alone, Some("acme-0"), 6), None);
}

#[test]
fn a_plugin_sees_only_its_own_namespace() {
    let host = budget_host("");
    let mut hooks = budget(&host, 10);
    let spent = |namespace: &str, tenant: &str| KvSnapshotEntry {
        namespace: namespace.into(),
        key: format!("tpm:{tenant}:{}", minute()),
        value: KvSnapshotValue::Counter(1_000),
        ttl_ms: Some(120_000),
    };
    // Another plugin's keys of the same name, and the plugin's own, as a
    // cluster sync would bring them.
    let blocks = within_a_minute(|tenant| {
        host.kv().apply_snapshot(vec![
            spent("another-plugin", tenant),
            spent("token-budget", "spent"),
        ]);
        [
            serve(&mut hooks, Some(tenant), 1),
            serve(&mut hooks, Some("spent"), 1),
        ]
    });
    assert_eq!(blocks[0], None, "another plugin's count is not this one's");
    assert!(blocks[1].is_some(), "its own count, from the cluster, is");
}

#[test]
fn a_write_past_the_quota_fails_the_call_naming_the_plugin() {
    let host = budget_host("kv_quota_kib = 0");
    assert_eq!(
        host.policy()
            .by_name("token-budget")
            .unwrap()
            .limits
            .kv_quota_bytes,
        0
    );
    let mut hooks = budget(&host, 10);
    let mut data = request(Some("acme"));
    // Reading a counter takes no room.
    hooks.fire("on_request", &mut data).unwrap();
    data.insert("status_code".into(), json!(200));
    data.insert("usage".into(), json!({"total_tokens": 6}));
    let err = hooks.fire("on_request_end", &mut data).unwrap_err();
    assert!(matches!(err, Error::Call(_)), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("plugin 'token-budget' failed in phase 'on_request_end'")
            && msg.contains("quota")
            && msg.contains("kv_quota_kib"),
        "{msg}"
    );
    // The default quota has room.
    assert_eq!(
        budget_host("")
            .policy()
            .by_name("token-budget")
            .unwrap()
            .limits
            .kv_quota_bytes,
        1 << 20
    );
}

#[test]
fn plugins_of_every_contract_run_beside_one_using_kv() {
    let newest = wasmhooks::WIT_VERSION;
    assert_eq!(newest, "0.3.0");
    // token-budget imports kv; log-phases, a Rust plugin built against
    // 0.3.0 too, uses none of it, so its component does not import it.
    let toml = [
        allow("token-budget", plugins::TOKEN_BUDGET, GRANTS),
        allow("log-phases", plugins::LOG_PHASES, ""),
        allow(
            "sampling-guard",
            plugins::SAMPLING_GUARD_JS,
            "write = [\"sampling\", \"block\"]",
        ),
    ]
    .concat();
    let host = host(&toml);
    let kv = format!("wasmhooks:plugin/kv@{newest}");
    let budget = host.inspect(plugins::TOKEN_BUDGET).unwrap();
    assert_eq!(budget.wit_version.as_deref(), Some(newest));
    assert!(budget.imports.contains(&kv), "{:?}", budget.imports);
    let log = host.inspect(plugins::LOG_PHASES).unwrap();
    assert_eq!(log.wit_version.as_deref(), Some(newest));
    assert!(!log.imports.contains(&kv), "{:?}", log.imports);
    // The JavaScript guard is built against 0.2.0, which has no kv.
    let guard = host.inspect(plugins::SAMPLING_GUARD_JS).unwrap();
    assert_eq!(guard.wit_version.as_deref(), Some("0.2.0"));

    let mut builder = Hooks::builder(job());
    for (path, config) in [
        (plugins::TOKEN_BUDGET, json!({"tokens_per_minute": 10})),
        (plugins::LOG_PHASES, Value::Null),
        (plugins::SAMPLING_GUARD_JS, json!({"max_tokens": 100})),
    ] {
        builder = builder.plugin(host.load_file(path).unwrap(), config);
    }
    let mut hooks = builder.start().unwrap();
    let mut data = request(Some("initech"));
    data.insert("sampling".into(), json!({"max_tokens": 4096}));
    let report = hooks.fire("on_request", &mut data).unwrap();
    assert_eq!(report.calls.len(), 3, "{report:?}");
    assert_eq!(data["sampling"]["max_tokens"], 100, "the 0.2.0 guard ran");
    assert!(!data.contains_key("block"));
}
