//! Makes `schema::phases` from `wit/keys.toml`: a module of phase-name
//! constants per lifecycle, so the host fires names the schema lists and a
//! phase renamed in the schema breaks the build where it fires, instead of
//! leaving a literal that no plugin's subscription matches any more.

use std::fmt::Write as _;
use std::path::PathBuf;

// The model the crate itself parses the schema with, so the constants come
// from the same parse and checks as the embedded schema. The build script
// needs only the lifecycles of it.
#[allow(dead_code)]
#[path = "src/schema/model.rs"]
mod model;

const KEYS: &str = "../../wit/keys.toml";

fn main() {
    println!("cargo:rerun-if-changed={KEYS}");
    println!("cargo:rerun-if-changed=src/schema/model.rs");
    let text = std::fs::read_to_string(KEYS).unwrap_or_else(|e| panic!("cannot read {KEYS}: {e}"));
    let schema = model::Schema::parse(&text).unwrap_or_else(|e| panic!("{KEYS}: {e}"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("phases.rs"), phases(&schema)).expect("OUT_DIR is writable");
}

/// The constants: per lifecycle, `pub mod <name>` with a `&str` per phase
/// (upper-cased) and `ALL` in the schema's order; then `LIFECYCLES`, every
/// lifecycle's name and `ALL`, for the test that checks them against the
/// embedded schema.
fn phases(schema: &model::Schema) -> String {
    let mut out = String::new();
    for (name, lifecycle) in &schema.lifecycles {
        let _ = writeln!(out, "#[doc = {:?}]\npub mod {name} {{", lifecycle.doc);
        let mut all = Vec::new();
        for phase in &lifecycle.phases {
            let upper = phase.name.to_uppercase();
            let _ = writeln!(
                out,
                "    #[doc = {:?}]\n    pub const {upper}: &str = {:?};",
                format!("`{}`: {}.", phase.name, phase.doc),
                phase.name
            );
            all.push(upper);
        }
        let _ = writeln!(
            out,
            "    /// Every phase of the lifecycle, in the schema's order.\n    \
             pub const ALL: [&str; {}] = [{}];\n}}\n",
            all.len(),
            all.join(", ")
        );
    }
    let names: Vec<String> = schema
        .lifecycles
        .keys()
        .map(|n| format!("({n:?}, &{n}::ALL)"))
        .collect();
    let _ = writeln!(
        out,
        "/// Every lifecycle: its name and its phases.\n\
         pub const LIFECYCLES: [(&str, &[&str]); {}] = [{}];",
        names.len(),
        names.join(", ")
    );
    out
}
