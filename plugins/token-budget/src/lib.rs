//! A per-tenant token budget for an LLM server: each tenant may use
//! `tokens_per_minute` tokens per wall-clock minute. Config:
//!
//! ```json
//! {"tokens_per_minute": 10000, "default_tenant": "anonymous"}
//! ```
//!
//! A request without a tenant (no `tenant` header) counts for
//! `default_tenant`. At `on_request` a tenant that has used its tokens this
//! minute is refused: `block` = `{status: 429, rule: "token-budget",
//! reason, retry_after_s}`, the seconds to the next minute. At
//! `on_request_end` what the request used is counted: `usage.total_tokens`,
//! or, with no usage (a stream cut short), the request's `max_tokens` as an
//! upper bound, or 0 for a request refused before inference (a status of
//! 400 or more).
//!
//! The counts are in the host's key-value store (`wasmhooks_sdk::kv`), not
//! in the plugin's fields: a replica calls any of its instances for a
//! request, and every one sees the same counter. One counter per tenant and
//! minute (`tpm:{tenant}:{minute}`), which expires two minutes after it is
//! made, so the store holds about two minutes of tenants. The check comes
//! before the count: a request admitted under the budget may take the
//! tenant past it, and the next one is refused. `on_request_end` is not
//! observe-only so that the count is in before the next request's check;
//! it is one increment.
//!
//! It writes only `block`, which the operator grants.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wasmhooks_sdk::{Data, Error, Manifest, Plugin, Updates, Value, json, keys, kv};

/// How long a minute's counter is kept: past its minute, and the next.
const WINDOW_TTL: Duration = Duration::from_secs(120);

/// Longest tenant name kept as is in a key (`kv::MAX_KEY` bounds keys).
const LONGEST_TENANT: usize = 200;

/// 64-bit FNV-1a: a long tenant name's stand-in.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[derive(Default)]
struct TokenBudget {
    tokens_per_minute: i64,
    default_tenant: String,
}

/// Seconds since the Unix epoch, by the wall clock.
fn now_s() -> Result<u64, Error> {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .map_err(|_| Error::new("token-budget: the wall clock is before 1970"))
}

impl TokenBudget {
    fn tenant<'a>(&'a self, data: &'a Data) -> &'a str {
        data.str(keys::TENANT)
            .filter(|t| !t.is_empty())
            .unwrap_or(&self.default_tenant)
    }

    /// The tenant's counter for the minute of `now_s`. A tenant name too
    /// long for a key (the header is the client's) is counted under its
    /// hash.
    fn counter_key(tenant: &str, now_s: u64) -> String {
        let minute = now_s / 60;
        if tenant.len() <= LONGEST_TENANT {
            format!("tpm:{tenant}:{minute}")
        } else {
            format!("tpm:#{:016x}:{minute}", fnv1a(tenant.as_bytes()))
        }
    }

    fn check(&self, data: &Data) -> Result<Updates, Error> {
        let tenant = self.tenant(data);
        let now = now_s()?;
        let used = kv::counter(&Self::counter_key(tenant, now))
            .map_err(|e| Error::new(format!("token-budget: tenant {tenant:?}'s count: {e}")))?;
        if used < self.tokens_per_minute {
            return Ok(Updates::new());
        }
        let n = self.tokens_per_minute;
        Ok(Updates::new().set(
            keys::BLOCK,
            json!({
                "status": 429,
                "rule": "token-budget",
                "reason": format!("tenant {tenant} used its {n} tokens this minute"),
                "retry_after_s": 60 - now % 60,
            }),
        ))
    }

    fn count(&self, data: &Data) -> Result<Updates, Error> {
        let tenant = self.tenant(data);
        let tokens = match data.get(keys::USAGE) {
            Some(usage) if !usage.is_null() => usage["total_tokens"].as_u64().unwrap_or(0),
            // Refused before inference: nothing was spent.
            _ if data.u64(keys::STATUS_CODE).is_some_and(|s| s >= 400) => 0,
            // No usage (a stream cut short): what it may have used.
            _ => data
                .get(keys::SAMPLING)
                .and_then(|s| s["max_tokens"].as_u64())
                .unwrap_or(0),
        };
        if tokens == 0 {
            return Ok(Updates::new());
        }
        let key = Self::counter_key(tenant, now_s()?);
        let tokens = i64::try_from(tokens).unwrap_or(i64::MAX);
        kv::increment(&key, tokens, Some(WINDOW_TTL)).map_err(|e| {
            Error::new(format!(
                "token-budget: cannot count tenant {tenant:?}'s {tokens} tokens: {e}"
            ))
        })?;
        Ok(Updates::new())
    }
}

impl Plugin for TokenBudget {
    fn manifest() -> Manifest {
        Manifest::new("token-budget", env!("CARGO_PKG_VERSION"))
            .phases([keys::phases::ON_REQUEST, keys::phases::ON_REQUEST_END])
            .order(-50)
            .reads([keys::TENANT, keys::SAMPLING, keys::USAGE, keys::STATUS_CODE])
    }

    fn init(&mut self, _job: &Value, config: &Value) -> Result<(), Error> {
        let n = config["tokens_per_minute"].as_u64().ok_or(
            "token-budget: the config needs `tokens_per_minute`, a whole number of tokens",
        )?;
        self.tokens_per_minute = i64::try_from(n).unwrap_or(i64::MAX);
        self.default_tenant = match &config["default_tenant"] {
            Value::Null => "anonymous".to_owned(),
            Value::String(t) if !t.is_empty() => t.clone(),
            _ => return Err("token-budget: `default_tenant` must be a non-empty string".into()),
        };
        Ok(())
    }

    fn on_phase(&mut self, phase: &str, data: &Data) -> Result<Updates, Error> {
        match phase {
            keys::phases::ON_REQUEST => self.check(data),
            keys::phases::ON_REQUEST_END => self.count(data),
            _ => Ok(Updates::new()),
        }
    }
}

wasmhooks_sdk::export_plugin!(TokenBudget);
