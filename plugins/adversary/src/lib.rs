//! A plugin that misbehaves on purpose, in the way the phase names, so the
//! host's tests can show it survives each: loops, allocation without end,
//! runaway recursion, panics, huge or invalid output, forbidden keys and
//! reads of files it was not granted. Phase `count` behaves: it counts its
//! calls, which shows whether the instance kept or lost its state. Any phase
//! it has no behaviour for sets `seen` to the keys it was given.

use std::hint::black_box;
use std::io::Write;

use wasmhooks_sdk::{Data, Error, Manifest, Plugin, Updates, Value, serde_json};

#[derive(Default)]
struct Adversary {
    count: u64,
    /// The file `append_held` keeps open between calls.
    held: Option<std::fs::File>,
    hoard: Vec<Vec<u8>>,
    /// From config `updates`: keys to set at given phases, to steer a
    /// lifecycle (`{"on_step_end": {"should_log": true}}`).
    scripted: Value,
    /// From config `panic_on`: a phase to crash in.
    panic_on: Option<String>,
    /// From config `spin_on`: a phase to compute in until stopped (its
    /// deadline or its fuel).
    spin_on: Option<String>,
    /// From config `by_tenant`: in `panic_on`/`spin_on`'s phase, misbehave
    /// only for these serving tenants (`{"t": "panic" | "spin"}`), so one
    /// replica serves well-behaved requests while it fails others.
    by_tenant: Option<serde_json::Map<String, Value>>,
    /// From config `state_bytes`: how large a state `save-state` returns.
    state_bytes: Option<usize>,
    /// From config `only_rank`: act (script or panic) only where the data's
    /// `rank` (or, in node initialization, `node_rank`) is this one, so one
    /// rank of a distributed job can misbehave alone.
    only_rank: Option<u64>,
    /// From config `reads`: the keys to name at `init`, whatever they are
    /// (empty, huge, with control characters, too many).
    reads: Option<Vec<String>>,
}

impl Plugin for Adversary {
    fn manifest() -> Manifest {
        // Two phases only observe, so it runs on the host's observer
        // worker: every test of it exercises that path too.
        Manifest::new("adversary", env!("CARGO_PKG_VERSION"))
            .all_phases()
            .observe(["observe_nap", "observe_panic"])
    }

    fn init(&mut self, _job: &Value, config: &Value) -> Result<(), Error> {
        self.panic_on = config["panic_on"].as_str().map(str::to_owned);
        self.spin_on = config["spin_on"].as_str().map(str::to_owned);
        self.by_tenant = config["by_tenant"].as_object().cloned();
        self.state_bytes = config["state_bytes"].as_u64().map(|n| n as usize);
        self.only_rank = config["only_rank"].as_u64();
        // From config `reads_file` instead: the keys, read from a file at
        // every start, so a restart can name others than the first did.
        let listed = match config["reads_file"].as_str() {
            Some(path) => serde_json::from_str(&std::fs::read_to_string(path)?)?,
            None => config["reads"].clone(),
        };
        self.reads = listed.as_array().map(|keys| {
            keys.iter()
                .map(|k| k.as_str().unwrap_or_default().to_owned())
                .collect()
        });
        self.scripted = match &config["updates"] {
            // Crashing on cue is scripted too: quiet everywhere else.
            Value::Null if self.panic_on.is_some() || self.spin_on.is_some() => {
                Value::Object(Default::default())
            }
            updates => updates.clone(),
        };
        match config["init"].as_str() {
            Some("fail") => Err("refusing to start, as configured".into()),
            Some("panic") => panic!("panic in init, as configured"),
            _ => Ok(()),
        }
    }

    fn reads(&self) -> Option<Vec<String>> {
        self.reads.clone()
    }

    fn on_phase(&mut self, phase: &str, data: &Data) -> Result<Updates, Error> {
        if let Some(only) = self.only_rank {
            let rank = data.get("rank").or_else(|| data.get("node_rank"));
            if rank.and_then(Value::as_u64) != Some(only) {
                return Ok(Updates::new());
            }
        }
        if let Some(tenants) = &self.by_tenant
            && (self.panic_on.as_deref() == Some(phase) || self.spin_on.as_deref() == Some(phase))
        {
            let tenant = data
                .get("tenant")
                .and_then(Value::as_str)
                .unwrap_or_default();
            match tenants.get(tenant).and_then(Value::as_str) {
                Some("panic") => panic!("adversary panics for tenant {tenant}, as configured"),
                Some("spin") => spin(),
                _ => return Ok(Updates::new()),
            }
        }
        if self.panic_on.as_deref() == Some(phase) {
            panic!("adversary panics in {phase}, as configured");
        }
        if self.spin_on.as_deref() == Some(phase) {
            spin();
        }
        if let Some(Value::Object(keys)) = self.scripted.get(phase) {
            let mut updates = Updates::new();
            for (key, value) in keys {
                // A scripted `null` removes the key.
                updates = match value {
                    Value::Null => updates.remove(key.clone()),
                    value => updates.set(key.clone(), value),
                };
            }
            return Ok(updates);
        }
        if self.scripted.is_object() {
            // Scripted runs do nothing unscripted.
            return Ok(Updates::new());
        }
        match phase {
            "count" => {
                self.count += 1;
                Ok(Updates::new().set("count", self.count))
            }
            "loop" => {
                let mut x = 0u64;
                loop {
                    x = black_box(x.wrapping_add(1));
                }
            }
            "alloc" => loop {
                // Touch every page so the allocation is real.
                self.hoard.push(vec![1u8; 1 << 20]);
            },
            "recurse" => Ok(Updates::new().set("depth", recurse(black_box(1)))),
            "recurse_big_frames" => {
                Ok(Updates::new().set("depth", recurse_big_frames(black_box(1))))
            }
            "panic" => panic!("adversary panics on purpose"),
            "error" => Err("adversary returns an error on purpose".into()),
            "huge" => Ok(Updates::new().set("huge", "x".repeat(8 << 20))),
            "invalid_json" => Ok(Updates::new().set_raw("result", "{not json")),
            // JSON text of the caller's choosing, as `result`.
            "raw_json" => {
                let raw = data.str("raw").ok_or("data has no `raw`")?;
                Ok(Updates::new().set_raw("result", raw))
            }
            // Removes 1,000 keys of its own namespace never set before: no
            // grant needed, no data grows, and each call names new ones.
            "churn_keys" => {
                self.count += 1;
                let mut updates = Updates::new();
                for i in 0..1000 {
                    updates =
                        updates.remove(format!("adversary.{}-{i}-{}", self.count, "k".repeat(200)));
                }
                Ok(updates)
            }
            "partly_forbidden" => Ok(Updates::new()
                .set("result", "fine")
                .set("skip_default", true)),
            "bad_key" => Ok(Updates::new().set("", 1)),
            "read_file" => {
                let path = data.str("path").ok_or("data has no `path`")?;
                let text = std::fs::read_to_string(path)?;
                Ok(Updates::new().set("result", text))
            }
            "write_file" => {
                let path = data.str("path").ok_or("data has no `path`")?;
                std::fs::write(path, "written by a plugin")?;
                Ok(Updates::new().set("result", "written"))
            }
            "connect" => {
                let addr = data.str("addr").ok_or("data has no `addr`")?;
                std::net::TcpStream::connect(addr)?;
                Ok(Updates::new().set("result", "connected"))
            }
            "env" => {
                let vars: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
                Ok(Updates::new().set("result", vars))
            }
            "sleep" => {
                // Spin on the clock rather than sleep, so the deadline (not
                // fuel) is what stops it.
                let start = std::time::Instant::now();
                while start.elapsed().as_secs() < 60 {
                    black_box(());
                }
                Ok(Updates::new())
            }
            // Any other phase: report the keys it was given, to show what
            // earlier plugins of the phase wrote.
            "observe_nap" => {
                std::thread::sleep(std::time::Duration::from_millis(20));
                self.count += 1;
                Ok(Updates::new().set("count", self.count))
            }
            "observe_panic" => panic!("an observer panics"),
            "nap" => {
                let start = std::time::Instant::now();
                std::thread::sleep(std::time::Duration::from_millis(20));
                let slept = start.elapsed().as_millis() as u64;
                Ok(Updates::new().set("result", slept))
            }
            "symlink" => {
                // WASI refuses absolute targets, not ones that climb.
                let link = data.str("link").ok_or("data has no `link`")?;
                let target = data.str("target").ok_or("data has no `target`")?;
                // `soft_link` is the one stable way to make a link on WASI.
                #[allow(deprecated)]
                std::fs::soft_link(target, link)?;
                Ok(Updates::new().set("result", "linked"))
            }
            "leak_fds" => {
                let path = data.str("path").ok_or("data has no `path`")?;
                let mut opened = 0u64;
                for _ in 0..100_000 {
                    match std::fs::File::open(path) {
                        Ok(f) => {
                            std::mem::forget(f);
                            opened += 1;
                        }
                        Err(_) => break,
                    }
                }
                Ok(Updates::new().set("count", opened))
            }
            "fill_disk" => {
                let path = data.str("path").ok_or("data has no `path`")?;
                let mib = data.get("mib").and_then(Value::as_u64).unwrap_or(1);
                std::fs::write(path, vec![7u8; (mib << 20) as usize])?;
                Ok(Updates::new().set("result", "written"))
            }
            "grow_file" => {
                // An existing file made longer without writing a byte of it
                // (opened without `create`: a sparse file counts whole).
                let path = data.str("path").ok_or("data has no `path`")?;
                let mib = data.get("mib").and_then(Value::as_u64).unwrap_or(1);
                let file = std::fs::OpenOptions::new().write(true).open(path)?;
                file.set_len(mib << 20)?;
                Ok(Updates::new().set("result", "grown"))
            }
            "write_past_end" => {
                // One byte written far past the end of an existing file.
                let path = data.str("path").ok_or("data has no `path`")?;
                let mib = data.get("mib").and_then(Value::as_u64).unwrap_or(1);
                let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
                std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(mib << 20))?;
                file.write_all(b"x")?;
                Ok(Updates::new().set("result", "written"))
            }
            "unlink_held" => {
                // Removes the file it holds open (the first call makes it),
                // then writes through the handle: bytes no folder lists.
                let path = data.str("path").ok_or("data has no `path`")?;
                let mib = data.get("mib").and_then(Value::as_u64).unwrap_or(1);
                if self.held.is_none() {
                    self.held = Some(std::fs::File::create(path)?);
                    std::fs::remove_file(path)?;
                }
                let file = self.held.as_mut().ok_or("no file held")?;
                file.write_all(&vec![7u8; (mib << 20) as usize])?;
                Ok(Updates::new().set("result", "written"))
            }
            "truncate_reopen" => {
                // For each of `files` files: 1 MiB written, a handle kept
                // past its first byte, the file emptied by opening it with
                // `truncate`; then 1 MiB through each kept handle.
                let dir = data.str("path").ok_or("data has no `path`")?;
                let files = data.get("files").and_then(Value::as_u64).unwrap_or(1);
                let mut kept = Vec::new();
                for i in 0..files {
                    let path = format!("{dir}/t{i}");
                    std::fs::write(&path, vec![1u8; 1 << 20])?;
                    let mut old = std::fs::OpenOptions::new().write(true).open(&path)?;
                    old.write_all(b"x")?;
                    std::fs::OpenOptions::new()
                        .write(true)
                        .truncate(true)
                        .open(&path)?;
                    kept.push(old);
                }
                for old in &mut kept {
                    old.write_all(&vec![2u8; 1 << 20])?;
                }
                Ok(Updates::new().set("result", "written"))
            }
            "append_held" => {
                // Opens the file once, then appends through the handle it
                // keeps, as a logger does.
                let path = data.str("path").ok_or("data has no `path`")?;
                let mib = data.get("mib").and_then(Value::as_u64).unwrap_or(1);
                if self.held.is_none() {
                    self.held = Some(std::fs::OpenOptions::new().append(true).open(path)?);
                }
                let file = self.held.as_mut().ok_or("no file held")?;
                file.write_all(&vec![7u8; (mib << 20) as usize])?;
                Ok(Updates::new().set("result", "appended"))
            }
            "fill_then_panic" => {
                // Writes, then traps: the restarted instance must not count
                // from what this one left.
                let path = data.str("path").ok_or("data has no `path`")?;
                std::fs::write(path, vec![7u8; 1 << 20])?;
                panic!("adversary traps after writing");
            }
            "grow_data" => {
                // Each call adds a new 256 KiB key under a `prefix.*` grant.
                self.count += 1;
                Ok(Updates::new().set(format!("blob.{}", self.count), "x".repeat(256 << 10)))
            }
            "exit" => std::process::exit(3),
            "forge" => {
                // Text that would forge a log line and drive a terminal.
                let forged = "ok\nERROR wasmhooks: forged line \u{1b}[2J\u{1b}[31m\u{202e}";
                println!("{forged}");
                wasmhooks_sdk::log::warn(forged);
                Err(format!("{forged}{}", "x".repeat(30 << 20)).into())
            }
            "block" => {
                // Blocks in the host, where no wasm runs to interrupt.
                std::thread::sleep(std::time::Duration::from_secs(60));
                Ok(Updates::new())
            }
            _ => {
                let keys: Vec<&str> = data.iter().map(|(k, _)| k).collect();
                Ok(Updates::new().set("seen", keys))
            }
        }
    }

    fn save_state(&self) -> Option<Value> {
        match self.state_bytes {
            Some(n) => Some(Value::from("s".repeat(n))),
            None => Some(Value::from(self.count)),
        }
    }

    fn load_state(&mut self, state: Value) -> Result<(), Error> {
        self.count = state.as_u64().ok_or("state is not a count")?;
        Ok(())
    }
}

/// Computes until the host stops it (its deadline, or its fuel).
fn spin() -> ! {
    let mut n = 0u64;
    loop {
        n = black_box(n.wrapping_add(1));
    }
}

/// Recursion on the wasm stack: the engine's stack limit stops it.
fn recurse(n: u64) -> u64 {
    if black_box(n) == 0 {
        return 0;
    }
    recurse(n + 1).wrapping_add(1)
}

/// Recursion with arrays on the stack Rust keeps in linear memory: that
/// stack runs out first, and the access past it traps.
fn recurse_big_frames(n: u64) -> u64 {
    let buf = black_box([n; 64]);
    if black_box(n) == 0 {
        return buf[0];
    }
    recurse_big_frames(n + 1).wrapping_add(buf[(n % 64) as usize])
}

wasmhooks_sdk::export_plugin!(Adversary);
