#!/usr/bin/env bash
# Everything husk needs on a fresh Debian 12 machine, idempotent:
#   1. Debian packages (QEMU, erofs-utils, busybox-static, the kernel source and its build tools),
#   2. the guest kernel (guest-kernel-config/build.sh, cached by the hash of its inputs),
#   3. the static guest agent and the host binaries.
# Writes target/husk.env with HUSK_KERNEL, HUSK_AGENT and HUSK_VMM for the
# other scripts and the tests. Progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

step() { printf '==> %s\n' "$*" >&2; }

packages=(qemu-system-x86 erofs-utils busybox-static linux-source-6.1 flex bison bc
          libelf-dev libssl-dev cpio xz-utils make gcc runc crun e2fsprogs util-linux
          python3 kmod containerd docker-registry skopeo apache2-utils curl openssl
          iproute2 nftables iperf3)  # networking: ip/tc, the husk nft table, the benchmark
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    step "installing Debian packages: ${missing[*]}"
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

# The unprivileged user the VM programs run as once set up (husk-vmm's
# jail; without it they fall back to nobody).
if [ "$(id -u)" -eq 0 ] && ! getent passwd husk >/dev/null; then
    step "creating the system user husk (VM programs run as it)"
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin husk
fi

if ! command -v cargo >/dev/null; then
    echo "setup: cargo not found: install a Rust toolchain (rustup, Rust >= 1.80) first" >&2
    exit 1
fi

step "guest kernel (guest-kernel-config/build.sh)"
kernel=$(guest-kernel-config/build.sh | tail -n 1)
[ -f "$kernel" ] || { echo "setup: kernel build did not produce a vmlinux" >&2; exit 1; }

step "static guest agent"
agent_target=x86_64-unknown-linux-gnu
RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --quiet -p husk-agent --release --target "$agent_target"
agent="$root/target/$agent_target/release/husk-agent"

step "host binaries"
cargo build --quiet --workspace --bins

cat > target/husk.env <<ENV
export HUSK_KERNEL="$kernel"
export HUSK_AGENT="$agent"
export HUSK_VMM="$root/target/debug/husk-vmm"
export PATH="$root/target/debug:\$PATH"
ENV
step "ready: source target/husk.env to use husk from this checkout"
