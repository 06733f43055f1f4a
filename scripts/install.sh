#!/usr/bin/env bash
# Installs husk: release builds of husk, husk-runc, husk-vmm (and
# containerd-shim-husk-v2 when the workspace has it) into PREFIX/bin, the
# guest kernel and the static guest agent into PREFIX/lib/husk/ (where husk
# finds them without HUSK_* variables), shell completions and man pages.
# Every file and directory it creates is listed in
# PREFIX/lib/husk/install-manifest; --uninstall removes exactly those.
#
#   scripts/install.sh [--prefix /usr/local] [--uninstall]
#                      [--debug] [--kernel VMLINUX] [--agent HUSK_AGENT]
#
# --debug installs the debug builds (for tests: no release build);
# --kernel/--agent take those files instead of building them (the kernel
# build is cached under ~/.cache/husk/kernel). Run scripts/setup.sh once
# first on a fresh machine (packages and toolchain pieces).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

prefix=/usr/local
uninstall=false
profile=release
kernel=""
agent=""
while (($#)); do
	case $1 in
	--prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
	--prefix=*) prefix=${1#--prefix=}; shift ;;
	--uninstall) uninstall=true; shift ;;
	--debug) profile=debug; shift ;;
	--kernel) kernel=${2:?--kernel needs a file}; shift 2 ;;
	--agent) agent=${2:?--agent needs a file}; shift 2 ;;
	-h | --help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
	esac
done
$uninstall || mkdir -p "$prefix"
prefix=$(cd "$prefix" && pwd)
manifest=$prefix/lib/husk/install-manifest

step() { printf '==> %s\n' "$*" >&2; }

if $uninstall; then
	[[ -f $manifest ]] || { echo "install.sh: no husk install in $prefix ($manifest missing)" >&2; exit 1; }
	step "removing husk from $prefix"
	# Files first, then the directories the install made, deepest first
	# (each only if nothing else was put in it since).
	grep '^f ' "$manifest" | cut -c3- | while IFS= read -r path; do rm -f -- "$path"; done
	rm -f -- "$manifest"
	dirs=$(cat "$manifest.dirs" 2>/dev/null || true)
	rm -f -- "$manifest.dirs"
	grep '^d ' <<<"$dirs" | cut -c3- | sort -r | while IFS= read -r dir; do
		rmdir -- "$dir" 2>/dev/null || echo "install.sh: kept $dir (not empty)" >&2
	done
	exit 0
fi

# What cargo would build: the shim binary only if a workspace member has it.
bins=(husk husk-runc husk-vmm)
if cargo metadata --no-deps --format-version 1 2>/dev/null |
	python3 -c 'import json,sys; m=json.load(sys.stdin); sys.exit(0 if any(t["name"]=="containerd-shim-husk-v2" and "bin" in t["kind"] for p in m["packages"] for t in p["targets"]) else 1)'; then
	bins+=(containerd-shim-husk-v2)
fi

cargo_flags=()
[[ $profile == release ]] && cargo_flags+=(--release)
step "building ${bins[*]} ($profile)"
build_args=()
for b in "${bins[@]}"; do build_args+=(--bin "$b"); done
cargo build --quiet "${cargo_flags[@]}" "${build_args[@]}"
target=$root/target/$profile

if [[ -z $kernel ]]; then
	step "guest kernel (guest-kernel-config/build.sh, cached)"
	kernel=$(guest-kernel-config/build.sh | tail -n 1)
fi
if [[ -z $agent ]]; then
	step "static guest agent"
	RUSTFLAGS="-C target-feature=+crt-static" \
		cargo build --quiet -p husk-agent --release --target x86_64-unknown-linux-gnu
	agent=$root/target/x86_64-unknown-linux-gnu/release/husk-agent
fi
[[ -f $kernel ]] || { echo "install.sh: guest kernel $kernel not found" >&2; exit 1; }
[[ -f $agent ]] || { echo "install.sh: guest agent $agent not found" >&2; exit 1; }

# Directories this install creates (absent before), recorded for --uninstall.
dirs_file=$(mktemp)
files_file=$(mktemp)
trap 'rm -f "$dirs_file" "$files_file"' EXIT
make_dir() {
	local dir=$1 missing=()
	while [[ ! -d $dir ]]; do missing+=("$dir"); dir=$(dirname "$dir"); done
	for ((i = ${#missing[@]} - 1; i >= 0; i--)); do
		mkdir -- "${missing[i]}"
		echo "d ${missing[i]}" >>"$dirs_file"
	done
}
put() { # put MODE SOURCE DEST
	make_dir "$(dirname "$3")"
	install -m "$1" -- "$2" "$3"
	echo "f $3" >>"$files_file"
}

step "installing into $prefix"
for b in "${bins[@]}"; do put 0755 "$target/$b" "$prefix/bin/$b"; done
put 0644 "$kernel" "$prefix/lib/husk/vmlinux"
put 0755 "$agent" "$prefix/lib/husk/husk-agent"

gen=$(mktemp -d)
trap 'rm -rf "$gen" "$dirs_file" "$files_file"' EXIT
husk=$prefix/bin/husk
"$husk" completions bash >"$gen/husk.bash"
"$husk" completions zsh >"$gen/_husk"
"$husk" completions fish >"$gen/husk.fish"
put 0644 "$gen/husk.bash" "$prefix/share/bash-completion/completions/husk"
put 0644 "$gen/_husk" "$prefix/share/zsh/site-functions/_husk"
put 0644 "$gen/husk.fish" "$prefix/share/fish/vendor_completions.d/husk.fish"
mkdir "$gen/man"
"$husk" man "$gen/man"
for page in "$gen"/man/*.1; do
	put 0644 "$page" "$prefix/share/man/man1/$(basename "$page")"
done

# A reinstall keeps the first install's directory list (those are the
# directories that were not there before husk).
if [[ -f $manifest.dirs ]]; then cat "$manifest.dirs" >>"$dirs_file"; fi
sort -u "$dirs_file" >"$manifest.dirs"
if [[ -f $manifest ]]; then cat "$manifest" >>"$files_file"; fi
sort -u "$files_file" >"$manifest"
step "installed: $husk ($("$husk" --version)); guest kernel and agent in $prefix/lib/husk"
