#!/usr/bin/env bash
# Build husk's guest kernel: an uncompressed, module-free vmlinux with a PVH
# entry point, from Debian's linux-source-6.1 + patches/ + husk.config.
#
# Usage: guest-kernel-config/build.sh
# Environment:
#   HUSK_CACHE_DIR       cache root (default ~/.cache/husk); the kernel lands in
#                        $HUSK_CACHE_DIR/kernel/<key>/vmlinux
#   HUSK_KERNEL_JOBS     parallel make jobs (default: nproc)
#   HUSK_KERNEL_KEEP_WORK=1  keep the extracted build tree (for debugging)
#
# Progress goes to stderr, make's output to a log file (its path and tail are
# printed on failure). The last line on stdout is the absolute vmlinux path.
# A cached build is reused at once; any change to the source package version,
# the fragment, the patches, the compiler or RECIPE_VERSION builds anew.
set -euo pipefail

# Bump when the build steps below change in a way that changes the output.
readonly RECIPE_VERSION=2
readonly SOURCE_PACKAGE=linux-source-6.1
readonly SOURCE_TARBALL=/usr/src/linux-source-6.1.tar.xz
readonly KARCH=x86_64
# XEN_ELFNOTE_PHYS32_ENTRY (include/xen/interface/elfnote.h): the PVH entry.
readonly PVH_NOTE_TYPE=0x00000012

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly fragment_source=$here/husk.config
readonly patch_source_dir=$here/patches
readonly cache_root=${HUSK_CACHE_DIR:-$HOME/.cache/husk}/kernel
readonly jobs=${HUSK_KERNEL_JOBS:-$(nproc)}
start_seconds=$SECONDS

step() { printf 'husk-kernel: [%3ds] %s\n' "$((SECONDS - start_seconds))" "$*" >&2; }
die() {
	printf 'husk-kernel: error: %s\n' "$*" >&2
	exit 1
}

# Runs apt-get as root (directly, or through sudo when available).
as_root() {
	if [[ $(id -u) -eq 0 ]]; then
		"$@"
	elif command -v sudo >/dev/null; then
		sudo "$@"
	else
		die "need root to run: $*"
	fi
}

package_installed() {
	[[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true) == "install ok installed" ]]
}

ensure_packages() {
	local missing=() pkg
	for pkg in "$@"; do
		package_installed "$pkg" || missing+=("$pkg")
	done
	((${#missing[@]} == 0)) && return 0
	step "installing ${missing[*]} (apt-get)"
	export DEBIAN_FRONTEND=noninteractive
	# A fresh machine may have empty package lists: update once and retry.
	if ! as_root apt-get install -y --no-install-recommends "${missing[@]}" >&2; then
		as_root apt-get update >&2
		as_root apt-get install -y --no-install-recommends "${missing[@]}" >&2
	fi
}

# Prints "KEY VALUE" lines naming every option the fragment sets: VALUE is the
# literal value for `CONFIG_X=...` and "n" for `# CONFIG_X is not set`.
fragment_options() {
	sed -n -E \
		-e 's/^(CONFIG_[A-Za-z0-9_]+)=(.*)$/\1 \2/p' \
		-e 's/^# (CONFIG_[A-Za-z0-9_]+) is not set$/\1 n/p' "$fragment"
}

# Fails listing every fragment option the final .config does not honour:
# options whose dependencies are missing are dropped silently by kconfig.
verify_config() {
	local config=$1 key want got dropped=()
	while read -r key want; do
		got=$(sed -n -E "s/^${key}=(.*)$/\\1/p" "$config")
		[[ -z $got ]] && got=n
		[[ $got == "$want" ]] || dropped+=("$key: wanted $want, got $got")
	done < <(fragment_options)
	if ((${#dropped[@]} > 0)); then
		printf 'husk-kernel: fragment options not honoured by kconfig:\n' >&2
		printf '  %s\n' "${dropped[@]}" >&2
		die "fix husk.config (usually a missing dependency) and rebuild"
	fi
}

verify_vmlinux() {
	local image=$1 header notes
	header=$(readelf -h "$image") || die "$image is not an ELF file"
	grep -q 'Class:[[:space:]]*ELF64' <<<"$header" || die "$image is not ELF64"
	grep -q 'Machine:.*X86-64' <<<"$header" || die "$image is not x86-64"
	notes=$(readelf -n "$image")
	# readelf prints the note as "Xen  0x00000008  Unknown note type: (0x00000012)".
	grep -Eq "^[[:space:]]*Xen[[:space:]].*\\(${PVH_NOTE_TYPE}\\)" <<<"$notes" ||
		die "$image has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)"
}

inputs=""
work_dir=""
make_pid=""
cleanup() {
	if [[ -n $make_pid ]]; then kill -- "-$make_pid" 2>/dev/null || true; fi
	if [[ -n $inputs ]]; then rm -rf "$inputs"; fi
	if [[ -n $work_dir ]]; then
		if [[ ${HUSK_KERNEL_KEEP_WORK:-0} == 1 ]]; then
			step "kept work dir $work_dir"
		else
			rm -rf "$work_dir"
		fi
	fi
}
trap cleanup EXIT
# bash skips the EXIT trap when a signal kills it: turn signals into exits.
trap 'exit 130' INT
trap 'exit 143' TERM HUP

# --- 1. prerequisites -------------------------------------------------------
step "checking packages"
ensure_packages "$SOURCE_PACKAGE" flex bison bc libelf-dev libssl-dev \
	gcc make patch xz-utils binutils
[[ -f $SOURCE_TARBALL ]] || die "$SOURCE_PACKAGE is installed but $SOURCE_TARBALL is missing"
[[ -f $fragment_source ]] || die "missing $fragment_source"

# --- 2. cache key ------------------------------------------------------------
# Hash and build from one snapshot of the inputs, so that editing husk.config
# or a patch during a build cannot put a kernel under the wrong key.
inputs=$(mktemp -d "${TMPDIR:-/tmp}/husk-kernel-inputs.XXXXXX")
cp "$fragment_source" "$inputs/husk.config"
fragment=$inputs/husk.config
mkdir "$inputs/patches"
if [[ -d $patch_source_dir ]]; then
	find "$patch_source_dir" -maxdepth 1 -name '*.patch' -exec cp -t "$inputs/patches" {} +
fi
source_version=$(dpkg-query -W -f='${Version}' "$SOURCE_PACKAGE")
compiler_version=$(gcc -dumpfullversion)
patches=()
while IFS= read -r p; do patches+=("$p"); done < <(find "$inputs/patches" -maxdepth 1 -name '*.patch' | LC_ALL=C sort)
key=$(
	{
		printf 'recipe %s\nsource %s %s\ngcc %s\narch %s\n' \
			"$RECIPE_VERSION" "$SOURCE_PACKAGE" "$source_version" "$compiler_version" "$KARCH"
		printf 'fragment %s\n' "$(sha256sum <"$fragment" | cut -d' ' -f1)"
		for p in ${patches[@]+"${patches[@]}"}; do
			printf 'patch %s %s\n' "$(basename "$p")" "$(sha256sum <"$p" | cut -d' ' -f1)"
		done
	} | sha256sum | cut -d' ' -f1
)
readonly result_dir=$cache_root/$key
readonly cached_vmlinux=$result_dir/vmlinux

if [[ -f $cached_vmlinux ]]; then
	step "cached: $result_dir"
	echo "$cached_vmlinux"
	exit 0
fi

mkdir -p "$cache_root/logs"
# Serialise builds of the same key: a second run waits, then finds the cache.
exec {lock_fd}>"$cache_root/.lock-$key"
if ! flock -n "$lock_fd"; then
	step "another build of $key is running; waiting for it"
	flock "$lock_fd"
fi
if [[ -f $cached_vmlinux ]]; then
	step "cached (built by a concurrent run): $result_dir"
	echo "$cached_vmlinux"
	exit 0
fi

# --- 3. build in a private work dir on the cache's filesystem ----------------
# We hold the key's lock, so any work dir of this key is left over from a run
# that was killed.
rm -rf "$cache_root/.build-$key".*
work_dir=$(mktemp -d "$cache_root/.build-$key.XXXXXX")
log=$cache_root/logs/build-$key-$(date -u +%Y%m%dT%H%M%SZ)-$$.log

fail_with_log() {
	printf 'husk-kernel: command failed: %s\nhusk-kernel: log: %s (last 40 lines below)\n' "$*" "$log" >&2
	tail -n 40 "$log" >&2
	exit 1
}

# Runs a build command with output to the log; on failure shows the log's tail.
run_logged() {
	echo "+ $*" >>"$log"
	"$@" >>"$log" 2>&1 || fail_with_log "$@"
}

step "building key $key (source $source_version, ${#patches[@]} patch(es)); log: $log"
step "extracting $SOURCE_TARBALL"
run_logged tar -xf "$SOURCE_TARBALL" -C "$work_dir"
src=$work_dir/linux-source-6.1
[[ -d $src ]] || die "unexpected tarball layout: no linux-source-6.1/ in $SOURCE_TARBALL"

for p in ${patches[@]+"${patches[@]}"}; do
	step "applying $(basename "$p")"
	run_logged patch -p1 --forward --batch -d "$src" -i "$p"
done

make_args=(-C "$src" ARCH="$KARCH" KBUILD_BUILD_USER=husk KBUILD_BUILD_HOST=husk)
make_kernel() {
	run_logged make "${make_args[@]}" "$@"
}

step "configuring: tinyconfig + husk.config + olddefconfig"
make_kernel tinyconfig
run_logged env -C "$src" ARCH="$KARCH" scripts/kconfig/merge_config.sh -m .config "$fragment"
make_kernel olddefconfig
verify_config "$src/.config"

step "compiling vmlinux with $jobs jobs (a few minutes)"
# In its own session so that an interrupted build can stop the whole make
# tree (cleanup kills the process group), while we report progress.
echo "+ make ${make_args[*]} -j$jobs vmlinux" >>"$log"
setsid make "${make_args[@]}" -j"$jobs" vmlinux >>"$log" 2>&1 &
make_pid=$!
ticks=0
while kill -0 "$make_pid" 2>/dev/null; do
	sleep 2
	ticks=$((ticks + 1))
	if ((ticks % 15 == 0)) && kill -0 "$make_pid" 2>/dev/null; then
		step "compiling: $(grep -c '^  CC ' "$log" || true) files compiled so far"
	fi
done
make_status=0
wait "$make_pid" || make_status=$?
make_pid=""
((make_status == 0)) || fail_with_log make -j"$jobs" vmlinux

verify_vmlinux "$src/vmlinux"

# --- 4. publish atomically -------------------------------------------------
stage=$work_dir/result
mkdir "$stage"
cp "$src/vmlinux" "$stage/vmlinux"
cp "$src/.config" "$stage/config"
cp "$src/System.map" "$stage/System.map"
cp "$log" "$stage/build.log"
if ! mv -T "$stage" "$result_dir" 2>/dev/null; then
	# Only a finished build can be there (renames are atomic): use it.
	[[ -f $cached_vmlinux ]] || die "could not move the build into $result_dir"
fi
rm -f "$log"
step "done in $((SECONDS - start_seconds)) s: $(du -h "$cached_vmlinux" | cut -f1) vmlinux"
echo "$cached_vmlinux"
