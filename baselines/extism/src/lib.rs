//! Nothing to link: this package exists for its benchmark,
//! `benches/extism.rs`, and the plugin it builds in `build.rs`.
