#!/usr/bin/env bash
# What husk-vmm's jail costs a VM's start-to-exit: a guest that prints a
# line and resets at once (the worst case: nothing else to hide the jail's
# set-up behind), run N times (default 25) jailed (empty root, namespaces,
# the husk user, seccomp) and N times unjailed (--no-seccomp), interleaved;
# prints the medians. Needs root and a usable /dev/kvm; uses
# target/release/husk-vmm (cargo build --release -p husk-vmm).
set -euo pipefail
cd "$(dirname "$0")/.."
vmm=${HUSK_VMM_BIN:-target/release/husk-vmm}
runs=${1:-25}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# mov edx,0x3f8; mov esi,msg; lodsb; test al,al; jz +3; out dx,al; jmp -8;
# mov al,0xfe; out 0x64,al (i8042 reset); hlt; jmp -3; msg: "hi\n"
printf '\xba\xf8\x03\x00\x00\xbe\x19\x00\x10\x00\xac\x84\xc0\x74\x03\xee\xeb\xf8\xb0\xfe\xe6\x64\xf4\xeb\xfdhi\n\0' >"$work/payload"
uid=$(id -u husk 2>/dev/null || echo 65534)
gid=$(id -g husk 2>/dev/null || echo 65534)
for ((i = 0; i < runs; i++)); do
	for mode in jail plain; do
		rm -rf "$work/jail" && mkdir "$work/jail"
		args=(--raw-payload "$work/payload" --mem-mib 64 --serial-log "$work/serial.log")
		if [[ $mode == jail ]]; then
			args+=(--jail-root "$work/jail" --uid "$uid" --gid "$gid")
		else
			args+=(--no-seccomp)
		fi
		start=$(date +%s%N)
		"$vmm" "${args[@]}" 2>/dev/null
		echo "$mode $(($(date +%s%N) - start))" >>"$work/times"
	done
done
python3 - "$work/times" <<'PY'
import statistics, sys
times = {}
for line in open(sys.argv[1]):
    mode, ns = line.split()
    times.setdefault(mode, []).append(int(ns) / 1e6)
jail, plain = statistics.median(times["jail"]), statistics.median(times["plain"])
print(f"husk-vmm start to exit, median of {len(times['jail'])}: jailed {jail:.1f} ms, "
      f"unjailed {plain:.1f} ms, jail/unjailed {jail / plain:.3f}")
PY
