#!/usr/bin/env bash
# The project's test command: set-up, then formatting, lints and every test
# (unit, KVM payload, VMM boot of the real kernel, image store, husk run
# through QEMU). Tests that need a capability this host lacks print SKIPPED
# with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# shellcheck source=/dev/null
source target/husk.env

echo "==> cargo fmt --check" >&2
cargo fmt --all -- --check
echo "==> cargo clippy" >&2
cargo clippy --quiet --workspace --all-targets -- -D warnings
echo "==> cargo test" >&2
cargo test --workspace -- --nocapture --test-threads=2 "$@"
