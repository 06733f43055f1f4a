#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo fuzz, libFuzzer) of the guest-facing
# parsers, each target for a bounded time: HUSK_FUZZ_SECONDS (default 30).
# Arguments: target names (default: all of fuzz/fuzz_targets).
#
# cargo fuzz needs nightly rustc flags; on a stable toolchain
# RUSTC_BOOTSTRAP=1 unlocks them, which is how this machine (Rust 1.95
# stable) runs it. Without AddressSanitizer (-s none): the code is Rust,
# and instrumenting every dependency for ASan makes the build too long for
# CI on two cores; libFuzzer still finds panics, overflows (debug
# assertions are on), hangs and runaway memory. A finding stops the run with the crashing input in
# fuzz/artifacts/<target>/: fix it, then keep the input in
# fuzz/regressions/<target>/ (the corpus tests run it in `cargo test`).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${HUSK_FUZZ_SECONDS:-30}
if ! cargo fuzz --version >/dev/null 2>&1; then
	echo "==> installing cargo-fuzz" >&2
	cargo install --quiet --locked cargo-fuzz
fi
export RUSTC_BOOTSTRAP=1
targets=("$@")
if ((${#targets[@]} == 0)); then
	mapfile -t targets < <(cargo fuzz list)
fi
echo "==> fuzz: building ${targets[*]}" >&2
cargo fuzz build -O -s none
for target in "${targets[@]}"; do
	echo "==> fuzz: $target for ${seconds}s" >&2
	# A scratch corpus: new inputs found here are not committed.
	work=$(mktemp -d)
	cp -r "corpus/$target/." "$work/"
	log="$work.log"
	status=0
	cargo fuzz run -O -s none "$target" "$work" -- -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 >"$log" 2>&1 || status=$?
	grep -E '^(#[0-9]+.*DONE|Done [0-9]+ runs|SUMMARY|==[0-9]+==ERROR|artifact_prefix|Test unit written)' "$log" >&2 || true
	((status == 0)) || tail -n 40 "$log" >&2
	rm -f "$log"
	rm -rf "$work"
	if ((status != 0)); then
		echo "fuzz: $target found a failing input (see fuzz/artifacts/$target/)" >&2
		exit 1
	fi
done
echo "==> fuzz: ${#targets[@]} targets ran ${seconds}s each without a finding" >&2
