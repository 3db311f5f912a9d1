//! Paths of the guest plugins in `plugins/`, built for wasm32-wasip2 by this
//! crate's build script, for the integration tests and benchmarks.

include!(concat!(env!("OUT_DIR"), "/plugins.rs"));

/// The metrics collector in every language, Rust first: (language, plugin
/// name, path). Each publishes the same figures; the tests check that and
/// the benchmarks compare their costs.
pub const METRICS_COLLECTORS: &[(&str, &str, &str)] = &[
    ("rust", "metrics-collector", METRICS_COLLECTOR),
    (
        "python",
        "metrics-collector-python",
        METRICS_COLLECTOR_PYTHON,
    ),
    ("js", "metrics-collector-js", METRICS_COLLECTOR_JS),
    ("zig", "metrics-collector-zig", METRICS_COLLECTOR_ZIG),
    ("go", "metrics-collector-go", METRICS_COLLECTOR_GO),
    (
        "zig, against wit 0.1.0",
        "metrics-collector-zig-wit-0-1-0",
        METRICS_COLLECTOR_ZIG_V0_1_0,
    ),
    (
        "go, against wit 0.1.0",
        "metrics-collector-go-wit-0-1-0",
        METRICS_COLLECTOR_GO_V0_1_0,
    ),
];
