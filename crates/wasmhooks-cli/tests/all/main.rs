//! Integration tests: real plugins built from `plugins/`, run by the real
//! host under real operator configs.

#![allow(clippy::unwrap_used, missing_docs)]

mod adversarial;
mod cli;
mod dispatch;
mod examples;
mod grants;
mod kv;
mod languages;
mod loading;
mod node;
mod observers;
mod oci;
mod properties;
mod serving;
mod signing;
mod support;
mod training;
