//! The fuzz corpora of the VMM's device models (`fuzz/corpus/<target>`: seeds, and
//! `fuzz/regressions/<target>`: inputs that once failed, kept when fixed)
//! run through the same entry points as the fuzz targets, in `cargo test`.

use std::path::Path;

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
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
fn virtio_blk_corpus_runs_clean() {
    let inputs = inputs("virtio_blk");
    assert!(!inputs.is_empty(), "no seed corpus for virtio_blk");
    for (name, data) in inputs {
        eprintln!("{name}");
        husk_vmm::devices::virtio::block::fuzz_requests(&data);
    }
}

#[test]
fn virtio_console_corpus_runs_clean() {
    let inputs = inputs("virtio_console");
    assert!(!inputs.is_empty(), "no seed corpus for virtio_console");
    for (name, data) in inputs {
        eprintln!("{name}");
        husk_vmm::devices::virtio::console::fuzz_queues(&data);
    }
}

#[test]
fn virtio_mmio_corpus_runs_clean() {
    let inputs = inputs("virtio_mmio");
    assert!(!inputs.is_empty(), "no seed corpus for virtio_mmio");
    for (name, data) in inputs {
        eprintln!("{name}");
        husk_vmm::devices::virtio::mmio::fuzz_registers(&data);
    }
}
