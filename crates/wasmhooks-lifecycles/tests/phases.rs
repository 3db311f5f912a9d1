//! The drivers' phase lists agree with the key schema: the constants they
//! are spelled with come from `wit/keys.toml`, and these say which of a
//! lifecycle's phases each driver fires, and in what order.

use wasmhooks::schema::phases;
use wasmhooks_lifecycles::{node, training};

/// Node initialization fires every node phase; `custom_initialization`
/// comes last in `PHASES` (the schema puts it second, where it fires),
/// because it fires only instead of the default steps and callers take
/// `PHASES[..8]` as the default path.
#[test]
fn node_initialization_fires_every_node_phase() {
    let mut listed = node::PHASES.to_vec();
    assert_eq!(listed.pop(), Some(phases::node::CUSTOM_INITIALIZATION));
    let default_path: Vec<&str> = phases::node::ALL
        .into_iter()
        .filter(|p| *p != phases::node::CUSTOM_INITIALIZATION)
        .collect();
    assert_eq!(listed, default_path);
}

/// The reference trainer fires the schema's training phases in their order,
/// all but those only the HF or Lightning adapters fire (the schema marks
/// each "; HF" or "; Lightning").
#[test]
fn the_reference_trainer_fires_the_training_phases_but_the_adapters_own() {
    use phases::training as t;
    let adapters_own = [
        t::ON_INIT_END,
        t::ON_FIT_START,
        t::ON_PRE_OPTIMIZER_STEP,
        t::ON_SUBSTEP_END,
        t::ON_PREDICTION_STEP,
        t::ON_PREDICT,
        t::ON_PUSH_BEGIN,
        t::ON_EXCEPTION,
    ];
    let schema = wasmhooks::schema::schema();
    for phase in &schema.lifecycles["training"].phases {
        let adapters = phase.doc.ends_with("; HF") || phase.doc.ends_with("; Lightning");
        assert_eq!(
            adapters,
            adapters_own.contains(&phase.name.as_str()),
            "{}",
            phase.name
        );
    }
    let expected: Vec<&str> = t::ALL
        .into_iter()
        .filter(|p| !adapters_own.contains(p))
        .collect();
    assert_eq!(training::PHASES.to_vec(), expected);
}
