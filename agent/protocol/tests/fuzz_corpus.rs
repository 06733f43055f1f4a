//! The fuzz corpora of the agent frame decoders (`fuzz/corpus/<target>`: seeds, and
//! `fuzz/regressions/<target>`: inputs that once failed, kept when fixed)
//! run through the same entry points as the fuzz targets, in `cargo test`.

use std::path::Path;

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut found = Vec::new();
    for kind in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(kind).join(target)) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            found.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
    found.sort();
    found
}

#[test]
fn agent_frames_corpus_runs_clean() {
    let inputs = inputs("agent_frames");
    assert!(!inputs.is_empty(), "no seed corpus for agent_frames");
    for (name, data) in inputs {
        eprintln!("{name}");
        husk_protocol::fuzzing::frames(&data);
    }
}
