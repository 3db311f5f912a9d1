//! The `wasmhooks` command line.
fn main() {}
