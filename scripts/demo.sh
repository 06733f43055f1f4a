#!/usr/bin/env bash
# The README's demo: set-up (packages, guest kernel, agent), then husk is
# installed (scripts/install.sh: release builds into $HUSK_PREFIX, default
# /usr/local, the kernel and agent into $HUSK_PREFIX/lib/husk) and the
# installed husk, with no HUSK_* variables, imports a busybox image and runs
# a container in a microVM.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source target/husk.env
prefix=${HUSK_PREFIX:-/usr/local}
scripts/install.sh --prefix "$prefix" --kernel "$HUSK_KERNEL" --agent "$HUSK_AGENT"

archive=target/busybox.tar
target/debug/husk-fixtures busybox --format docker --out "$archive" --tag busybox:latest
# The installed husk finds its kernel and agent itself.
run() { env -u HUSK_KERNEL -u HUSK_AGENT -u HUSK_VMM "$prefix/bin/husk" "$@"; }
run check || true
run image import "$archive"
run run --rm busybox echo hello from a microVM
