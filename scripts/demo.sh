#!/usr/bin/env bash
# The demo: set-up, the host verdict, then a container in its own microVM.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# shellcheck source=/dev/null
source target/husk.env
export HUSK_STORE="${HUSK_STORE:-/var/lib/husk}"

husk check || true
archive=target/busybox.tar
husk-fixtures busybox --format docker --out "$archive" --tag busybox:latest
husk image import "$archive"
husk run --rm busybox echo hello from a microVM
