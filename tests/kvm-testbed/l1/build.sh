#!/usr/bin/env bash
# Builds the L1 pieces of the test bed into an empty directory, from a Debian
# kernel package (unpacked, not installed) and busybox-static:
#   vmlinuz             the package's kernel
#   vmlinux             the same, uncompressed, when it has a PVH entry:
#                       QEMU then loads it directly, which skips the boot-time
#                       decompression (about 10 s of L1's boot under TCG)
#   initramfs.cpio.gz   busybox, ./init, and the modules of ./modules plus
#                       their dependencies, in load order
#   manifest            kernel release and module load order (for people)
#
# Usage: l1/build.sh KERNEL_DEB OUT_DIR
# Called by `testbed.sh prepare`, which owns caching; this file, ./init and
# ./modules are hashed into the cache key. Progress goes to stderr.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
deb=$1
out=$2
busybox=/bin/busybox

say() { printf 'testbed: %s\n' "$*" >&2; }
die() {
	say "error: $*"
	exit 1
}

work=$out/.work
mkdir -p "$work/pkg" "$work/ko"

say "unpacking $(basename "$deb")"
dpkg-deb -x "$deb" "$work/pkg"
kdirs=("$work"/pkg/lib/modules/*/)
((${#kdirs[@]} == 1)) && [[ -d ${kdirs[0]} ]] || die "expected one lib/modules/<release> in $deb"
kdir=${kdirs[0]%/}
release=$(basename "$kdir")
[[ -f $work/pkg/boot/vmlinuz-$release ]] || die "no boot/vmlinuz-$release in $deb"
cp "$work/pkg/boot/vmlinuz-$release" "$out/vmlinuz"

# The bzImage's payload: the first compressed stream found (by its magic
# bytes) that unpacks to an ELF file.
extract_vmlinux() {
	local magic tool offset
	for entry in '\xfd7zXZ\x00:xz -dcq --single-stream' '\x1f\x8b\x08:gzip -dcq' \
		'\x28\xb5\x2f\xfd:zstd -dcq'; do
		magic=${entry%%:*}
		tool=${entry#*:}
		command -v "${tool%% *}" >/dev/null || continue
		for offset in $(LC_ALL=C grep -obUaP "$magic" "$out/vmlinuz" | cut -d: -f1); do
			tail -c "+$((offset + 1))" "$out/vmlinuz" | $tool >"$work/vmlinux" 2>/dev/null || true
			if [[ $(head -c 4 "$work/vmlinux" | od -An -tx1 | tr -d ' ') == 7f454c46 ]]; then
				return 0
			fi
		done
	done
	return 1
}
# XEN_ELFNOTE_PHYS32_ENTRY: namesz 4, descsz 8, type 0x12, "Xen".
pvh_note='\x04\x00\x00\x00\x08\x00\x00\x00\x12\x00\x00\x00Xen\x00'
if extract_vmlinux && LC_ALL=C grep -qaP "$pvh_note" "$work/vmlinux"; then
	mv "$work/vmlinux" "$out/vmlinux"
else
	say "no uncompressed kernel with a PVH entry in vmlinuz: L1 boots the bzImage (slower)"
fi

# Module name (dashes as underscores, as the kernel names them) -> file.
declare -A module_file=()
while IFS= read -r -d '' file; do
	name=$(basename "$file")
	name=${name%%.ko*}
	module_file[${name//-/_}]=$file
done < <(find "$kdir/kernel" -name '*.ko*' -print0)
((${#module_file[@]})) || die "no modules under $kdir/kernel"
declare -A builtin=()
if [[ -f $kdir/modules.builtin ]]; then
	while IFS= read -r path; do
		name=$(basename "$path" .ko)
		builtin[${name//-/_}]=1
	done <"$kdir/modules.builtin"
fi

# Decompressed copy of a module in $work/ko (busybox insmod may not read
# .ko.xz or .ko.zst); prints its path.
plain_module() {
	local name=$1 src=${module_file[$1]} dst=$work/ko/$1.ko
	if [[ ! -f $dst ]]; then
		case $src in
		*.ko) cp "$src" "$dst" ;;
		*.ko.xz) xz -dc "$src" >"$dst" ;;
		*.ko.zst) zstd -qdc "$src" >"$dst" ;;
		*.ko.gz) gzip -dc "$src" >"$dst" ;;
		*) die "unknown module compression: $src" ;;
		esac
	fi
	printf '%s\n' "$dst"
}

# Depth-first over depends= (and softdep pre:), appending each module after
# the modules it needs.
order=()
declare -A state=() # visiting | done
visit() {
	local name=${1//-/_} ko dep deps softdeps
	[[ ${state[$name]:-} == done ]] && return 0
	[[ ${state[$name]:-} == visiting ]] && die "module dependency cycle through $name"
	if [[ -z ${module_file[$name]:-} ]]; then
		[[ -n ${builtin[$name]:-} ]] && return 0
		die "module $name is neither in $(basename "$deb") nor built into its kernel"
	fi
	state[$name]=visiting
	ko=$(plain_module "$name") || exit 1
	deps=$(modinfo -F depends "$ko") || die "modinfo $ko failed"
	softdeps=$(modinfo -F softdep "$ko" | sed -n 's/.*pre:\(.*\)/\1/p' | sed 's/post:.*//')
	for dep in ${deps//,/ }; do
		visit "$dep"
	done
	for dep in $softdeps; do
		# A soft dependency is optional: take it only if the package has it.
		dep=${dep//-/_}
		if [[ -n ${module_file[$dep]:-} ]]; then
			visit "$dep"
		fi
	done
	state[$name]=done
	order+=("$name")
}
while read -r name; do
	name=${name%%#*}
	name=${name//[[:space:]]/}
	if [[ -n $name ]]; then
		visit "$name"
	fi
done <"$here/modules"
say "kernel $release; modules in load order: ${order[*]}"

root=$work/root
mkdir -p "$root"/{bin,dev,etc/testbed,host,io,lib/modules,overlay,proc,sys,tmp}
cp "$busybox" "$root/bin/busybox"
"$root/bin/busybox" true 2>/dev/null || die "$busybox does not run"
if ldd "$busybox" >/dev/null 2>&1; then
	die "$busybox is dynamically linked: install busybox-static"
fi
install -m 0755 "$here/init" "$root/init"
for name in "${order[@]}"; do
	cp "$work/ko/$name.ko" "$root/lib/modules/$name.ko"
done
printf '%s\n' "${order[@]}" >"$root/etc/testbed/modules"
# The kernel opens /dev/console for init before anything is mounted.
mknod -m 0600 "$root/dev/console" c 5 1

(cd "$root" && find . -print0 | LC_ALL=C sort -z |
	cpio --null -o -H newc -R 0:0 --quiet) | gzip -9n >"$out/initramfs.cpio.gz"
{
	echo "kernel-release $release"
	echo "kernel-package $(dpkg-deb -f "$deb" Package) $(dpkg-deb -f "$deb" Version)"
	echo "busybox $("$busybox" 2>&1 | head -n 1)"
	echo "modules ${order[*]}"
} >"$out/manifest"
rm -rf "$work"
say "L1 initramfs: $(du -h "$out/initramfs.cpio.gz" | cut -f1), kernel: $(du -h "$out/vmlinuz" | cut -f1)" \
	"$([[ -f $out/vmlinux ]] && echo "($(du -h "$out/vmlinux" | cut -f1) uncompressed)")"
