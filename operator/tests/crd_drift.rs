//! The CRD under version control must be what the Rust types generate.

use std::path::Path;

#[test]
fn checked_in_crd_matches_the_types() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(stead_operator::CRD_PATH);
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = stead_operator::crd_yaml().expect("CRD serializes");
    assert!(
        checked_in == generated,
        "{} is out of date with core/src/crd.rs; regenerate it with\n\n    cargo run -p stead-operator --bin crdgen -- --write\n",
        stead_operator::CRD_PATH
    );
}

#[test]
fn the_crd_enforces_shards_slots_classes_and_durations() {
    let yaml = stead_operator::crd_yaml().expect("CRD serializes");
    assert!(yaml.contains("self == oldSelf"), "slots immutable");
    assert!(yaml.contains("^[A-Za-z][A-Za-z0-9_]{0,63}$"), "class names");
    assert!(yaml.contains("^[0-9]+(ms|s|m|h)$"), "durations");
    for column in ["Shards", "Ready", "Ring", "Epoch", "Moving", "Age"] {
        assert!(
            yaml.contains(&format!("name: {column}")),
            "printer column {column}"
        );
    }
}
