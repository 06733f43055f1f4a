#!/usr/bin/env bash
# The project's test command: set-up, then formatting, lints and every test,
# tier by tier:
#   1. on this host: unit tests, KVM payloads, the VMM boot of the real
#      kernel, the image store, and `husk run` end to end (on QEMU with TCG
#      where this host's KVM cannot run guest userspace, e.g. nested PVM);
#   2. in the KVM test bed (tests/kvm-testbed: a real KVM inside a QEMU TCG
#      VM): every `husk run` test on husk-vmm, vmm_boot and the KVM payloads;
#   3. the fuzz targets, each for a bounded time (scripts/fuzz.sh).
# Tests that need a capability this host lacks print SKIPPED with the
# reason; under CI=true a missing prerequisite that set-up provides fails
# instead. The run ends with the count of skipped tests and their reasons.
# Arguments are passed to the test binaries of tier 1 (e.g. a name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# shellcheck source=/dev/null
source target/husk.env

skips=$(pwd)/target/skipped-tests.log
: >"$skips"
export HUSK_SKIP_LOG=$skips

summary() {
	local n
	n=$(grep -c . "$skips" || true)
	echo "==> skipped tests: $n" >&2
	[[ $n -eq 0 ]] || sed 's/^/    /' "$skips" >&2
}
trap summary EXIT

echo "==> cargo fmt --check" >&2
cargo fmt --all -- --check
echo "==> cargo clippy" >&2
cargo clippy --quiet --workspace --all-targets -- -D warnings

# A failing tier does not stop the later ones: one run shows every failure
# (CI takes as long either way, and a fix costs a whole CI run). The exit
# status says whether any failed, and the last line names them.
failed=""
echo "==> tier 1: cargo test on this host" >&2
cargo test --workspace --no-fail-fast -- --nocapture --test-threads=2 "$@" || failed+=" tier 1"

echo "==> tier 2: real KVM in the test bed (tests/kvm-testbed/suite.sh)" >&2
reason=""
[[ $(id -u) -eq 0 ]] || reason="needs root (QEMU shares the host's root into the bed)"
command -v qemu-system-x86_64 >/dev/null || reason="qemu-system-x86_64 is not installed"
if [[ -z $reason ]]; then
	tests/kvm-testbed/suite.sh || failed+=" tier 2"
elif [[ ${CI:-} == true ]]; then
	echo "test bed unavailable under CI=true: $reason" >&2
	exit 1
else
	echo "SKIPPED: KVM test bed: $reason" >&2
	echo "kvm test bed: $reason" >>"$skips"
fi

echo "==> tier 3: fuzzing, each target for \${HUSK_FUZZ_SECONDS:-30}s (scripts/fuzz.sh)" >&2
scripts/fuzz.sh || failed+=" tier 3"
if [[ -n $failed ]]; then
	echo "==> FAILED:$failed" >&2
	exit 1
fi

