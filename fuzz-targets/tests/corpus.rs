//! Replays every committed input of every fuzz target on stable Rust: the
//! corpus `cargo fuzz` grew (`fuzz/corpus/<target>/`) and every crash it
//! ever found (`fuzz/artifacts/<target>/`, kept as regressions).

#![allow(clippy::unwrap_used)] // a broken fixture should fail the test loudly

use std::path::Path;

#[test]
fn every_committed_input_of_every_target_passes() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    for (name, target) in rtc_fuzz_targets::TARGETS {
        let mut replayed = 0;
        for kind in ["corpus", "artifacts"] {
            let Ok(dir) = std::fs::read_dir(fuzz.join(kind).join(name)) else { continue };
            for entry in dir {
                let path = entry.unwrap().path();
                let input = std::fs::read(&path).unwrap();
                if std::panic::catch_unwind(|| target(&input)).is_err() {
                    panic!("{name}: {} fails", path.display());
                }
                replayed += 1;
            }
        }
        assert!(replayed >= 10, "{name}: only {replayed} inputs committed");
    }
}
