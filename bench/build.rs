//! Compiles the LD_PRELOAD interposer (interposer/kvm_run_stamp.rs) into a
//! shared object in OUT_DIR with the same rustc, and hands its path to the
//! benchmark as KVM_RUN_STAMP_SO. A cdylib crate would need its own build
//! step before `cargo bench`; this keeps the benchmark a single command.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let source = PathBuf::from("interposer/kvm_run_stamp.rs");
    println!("cargo:rerun-if-changed={}", source.display());
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let rustc = env::var_os("RUSTC").expect("cargo sets RUSTC");
    let target = env::var("TARGET").expect("cargo sets TARGET");
    let output = out_dir.join("libkvm_run_stamp.so");
    let result = Command::new(rustc)
        .args(["--edition=2021", "--crate-type=cdylib", "-O"])
        .args(["--crate-name", "kvm_run_stamp", "--target", &target])
        .arg("-o")
        .arg(&output)
        .arg(&source)
        .output()
        .expect("run rustc");
    if !result.status.success() {
        panic!(
            "compiling {} failed:\n{}",
            source.display(),
            String::from_utf8_lossy(&result.stderr)
        );
    }
    println!("cargo:rustc-env=KVM_RUN_STAMP_SO={}", output.display());
}
