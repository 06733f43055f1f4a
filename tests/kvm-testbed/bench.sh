#!/usr/bin/env bash
# The backend benchmark (bench/benches/run_backends.rs: `husk run --rm
# busybox true` on --backend husk vs --backend qemu) inside the KVM test bed,
# for hosts without a real KVM of their own.
#
#   tests/kvm-testbed/bench.sh [--timeout SECS] [-- BENCH-ARGS...]
#
# Builds everything first (L1 reads target/ over 9p, so nothing may be
# rebuilt while it runs): the guest kernel (cached), the static guest agent,
# release husk and husk-vmm, and the benchmark binary; then boots L1 and runs
# the benchmark there. BENCH-ARGS go to the benchmark (e.g. --runs 9). Its
# output is also kept in target/run_backends.txt. Fails when the benchmark
# skipped or failed. Needs root (the test bed does). Takes about ten
# minutes with the default 7 runs; --timeout (default 1800 s) bounds the
# test bed's run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
root=$(pwd -P)

timeout=1800
while (($#)); do
	case $1 in
	--timeout) timeout=${2:?--timeout needs SECS}; shift 2 ;;
	--) shift; break ;;
	*) sed -n '5,16s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2; exit 2 ;;
	esac
done

step() { printf 'bench.sh: %s\n' "$*" >&2; }

step "guest kernel (guest-kernel-config/build.sh)"
kernel=$(guest-kernel-config/build.sh | tail -n 1)
[[ -f $kernel ]] || { step "the kernel build printed no vmlinux"; exit 1; }

step "static guest agent"
agent_target=x86_64-unknown-linux-gnu
RUSTFLAGS="-C target-feature=+crt-static" \
	cargo build --quiet -p husk-agent --release --target "$agent_target"
agent=$root/target/$agent_target/release/husk-agent

step "release husk and husk-vmm"
cargo build --quiet --release -p husk -p husk-vmm --bins

step "benchmark binary (cargo bench --no-run -p husk-bench --bench run_backends)"
# The executable of the run_backends bench target, from cargo's JSON messages.
bench=$(cargo bench --quiet --no-run -p husk-bench --bench run_backends --message-format=json |
	grep '"name":"run_backends"' | grep -o '"executable":"[^"]*"' | tail -n 1 | cut -d'"' -f4)
[[ -n $bench && -x $bench ]] || { step "cannot find the run_backends executable"; exit 1; }

out=$root/target/run_backends.txt
step "running $bench in the test bed (output also in $out)"
status=0
HUSK_KERNEL=$kernel HUSK_AGENT=$agent HUSK_VMM=$root/target/release/husk-vmm \
	tests/kvm-testbed/testbed.sh run --timeout "$timeout" -- \
	"$bench" --husk "$root/target/release/husk" --husk-vmm "$root/target/release/husk-vmm" "$@" |
	tee "$out" || status=$?
((status == 0)) || { step "the benchmark failed (status $status)"; exit "$status"; }
if grep -q 'run_backends SKIPPED' "$out"; then
	step "the benchmark skipped inside the test bed: its KVM should be real"
	exit 1
fi
