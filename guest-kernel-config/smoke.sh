#!/usr/bin/env bash
# Smoke test of the husk guest kernel under QEMU's microvm machine.
#
# Builds (in a temp dir) a busybox initramfs whose /init checks what a husk
# guest needs, an erofs layer disk and an ext4 scratch disk, then boots
#   qemu-system-x86_64 -M microvm,acpi=off -kernel vmlinux -initrd ... -no-reboot
# with both disks on virtio-blk (the layer read-only, with serials) and a
# virtio-console port on a Unix socket, and checks the serial log.
#
# Usage: smoke.sh [--kvm] [--nested-pvm] [--smp N] [--vmlinux PATH] [--timeout SECONDS]
#   default        QEMU TCG; full check: every guest check passes and the VM
#                  ends itself with `reboot -f` (reboot=k, the i8042 reset).
#   --kvm          -accel kvm instead of TCG.
#   --nested-pvm   add the nested-PVM kernel parameters (see README.md) and only
#                  require "Run /init as init process": no guest userspace
#                  runs under the kvm_pvm emulator. Implies --smp 1: secondary
#                  vCPUs never come up there.
#   --smp N        vCPUs (default 2).
#   --extra PARAMS more kernel parameters (to try variants).
# Needs: qemu-system-x86, busybox-static, erofs-utils, e2fsprogs, cpio, python3.
# Prints timings; exit status 0 on success.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
accel=tcg
nested_pvm=0
vmlinux=""
timeout_s=""
smp=""
extra=""
while (($#)); do
	case $1 in
	--kvm) accel=kvm ;;
	--nested-pvm) nested_pvm=1 ;;
	--vmlinux) vmlinux=$2; shift ;;
	--timeout) timeout_s=$2; shift ;;
	--smp) smp=$2; shift ;;
	--extra) extra=$2; shift ;;
	*) echo "usage: $0 [--kvm] [--nested-pvm] [--smp N] [--extra PARAMS] [--vmlinux PATH] [--timeout SECONDS]" >&2; exit 2 ;;
	esac
	shift
done
[[ -n $vmlinux ]] || vmlinux=$("$here/build.sh" | tail -n 1)
[[ -n $timeout_s ]] || { ((nested_pvm)) && timeout_s=300 || timeout_s=120; }
[[ -n $smp ]] || { ((nested_pvm)) && smp=1 || smp=2; }

# Kernel command line every husk VM uses; keep in sync with README.md.
cmdline="console=ttyS0 reboot=k panic=-1"
# Parameters for the nested PVM hypervisor (kvm_pvm): hide what it cannot
# emulate. Keep in sync with README.md.
nested_pvm_params="noxsave noint3selftest tsc=nowatchdog clearcpuid=141,151,308"
((nested_pvm)) && cmdline+=" $nested_pvm_params"
[[ -z $extra ]] || cmdline+=" $extra"

work=$(mktemp -d /tmp/husk-smoke.XXXXXX)
qemu_pid=""
reader_pid=""
cleanup() {
	if [[ -n $qemu_pid ]]; then kill "$qemu_pid" 2>/dev/null || true; fi
	if [[ -n $reader_pid ]]; then kill "$reader_pid" 2>/dev/null || true; fi
	rm -rf "$work"
}
trap cleanup EXIT

# --- initramfs -----------------------------------------------------------------
root=$work/initramfs
mkdir -p "$root"/{bin,dev,proc,sys,mnt,tmp}
cp /bin/busybox "$root/bin/busybox"
cat >"$root/init" <<'EOF'
#!/bin/busybox sh
# husk guest-kernel smoke checks; every line the host checks starts "SMOKE".
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fails=0
check() { # check NAME COMMAND...
	name=$1; shift
	if "$@" >/tmp/out 2>&1; then echo "SMOKE ok $name"; else echo "SMOKE FAIL $name: $(cat /tmp/out)"; fails=$((fails + 1)); fi
}
echo "SMOKE uptime $(cut -d' ' -f1 /proc/uptime)"
echo "SMOKE date $(date -u +%Y-%m-%dT%H:%M:%SZ)"
check wall_clock test "$(date -u +%Y)" -ge 2024
for d in /sys/block/vd*; do
	n=${d##*/}
	echo "SMOKE disk $n sectors=$(cat $d/size) ro=$(cat $d/ro) serial=$(cat $d/serial 2>/dev/null)"
done
check hvc0 test -c /dev/hvc0
echo "hello over hvc0" >/dev/hvc0
check vsock test -c /dev/vsock
check ptmx test -c /dev/ptmx
mkdir -p /dev/pts
check devpts mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
check seccomp grep -q '^Seccomp:' /proc/self/status
check seccomp_filter test -f /proc/sys/kernel/seccomp/actions_avail
# Layer disk: erofs with an overlay whiteout and an opaque directory.
mkdir -p /mnt/layer /mnt/base /mnt/up /mnt/merged /mnt/scratch
check erofs_mount mount -t erofs -o ro /dev/vda /mnt/layer
check erofs_read grep -q 'from the layer' /mnt/layer/hello
check erofs_big_file sh -c 'cd /mnt/layer && md5sum -c big.md5'
mount -t tmpfs tmpfs /mnt/base
mkdir -p /mnt/base/opaque /mnt/base/keep
echo base >/mnt/base/gone
echo base >/mnt/base/opaque/hidden
echo base >/mnt/base/keep/kept
mount -t tmpfs tmpfs /mnt/up
mkdir -p /mnt/up/upper /mnt/up/work
check overlay_mount mount -t overlay overlay -o lowerdir=/mnt/layer:/mnt/base,upperdir=/mnt/up/upper,workdir=/mnt/up/work /mnt/merged
check overlay_whiteout test ! -e /mnt/merged/gone
check overlay_opaque test ! -e /mnt/merged/opaque/hidden
check overlay_lower test -f /mnt/merged/keep/kept
check overlay_layer_file grep -q 'from the layer' /mnt/merged/hello
# Replacing a lower directory makes overlay set trusted.overlay.opaque on the
# tmpfs upper: this needs tmpfs xattrs.
check overlay_copy_up sh -c 'rm -rf /mnt/merged/keep && mkdir /mnt/merged/keep && test -z "$(ls /mnt/merged/keep)" && echo new >/mnt/merged/hello && grep -q new /mnt/merged/hello'
check ext4 sh -c 'mount -t ext4 /dev/vdb /mnt/scratch && echo data >/mnt/scratch/f && sync && umount /mnt/scratch'
mkdir -p /sys/fs/cgroup
check cgroup2_mount mount -t cgroup2 cgroup2 /sys/fs/cgroup
echo "SMOKE controllers $(cat /sys/fs/cgroup/cgroup.controllers)"
check cgroup_subtree sh -c 'echo "+memory +cpu +pids +io" >/sys/fs/cgroup/cgroup.subtree_control'
check cgroup_limits sh -c 'mkdir /sys/fs/cgroup/c1 && echo "50000 100000" >/sys/fs/cgroup/c1/cpu.max && echo 64M >/sys/fs/cgroup/c1/memory.max && echo 32 >/sys/fs/cgroup/c1/pids.max && test -f /sys/fs/cgroup/c1/io.max'
check namespaces sh -c 'test "$(unshare -m -u -i -n -p -U -f sh -c "echo \$\$")" = 1'
check loopback_v4 sh -c 'ip link set lo up && ping -c 1 -W 2 127.0.0.1'
check loopback_v6 ping6 -c 1 -W 2 ::1
echo "SMOKE uptime $(cut -d' ' -f1 /proc/uptime)"
if [ "$fails" = 0 ]; then echo "SMOKE PASS"; else echo "SMOKE FAILED $fails"; fi
reboot -f
EOF
chmod +x "$root/init"
(cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -9) >"$work/initramfs.cpio.gz"

# --- disks ---------------------------------------------------------------------
layer=$work/layer
mkdir -p "$layer/opaque"
echo "from the layer" >"$layer/hello"
head -c 3M /dev/urandom >"$layer/big"
(cd "$layer" && md5sum big >big.md5)
mknod "$layer/gone" c 0 0 # overlay whiteout
python3 -c 'import os, sys; os.setxattr(sys.argv[1], "trusted.overlay.opaque", b"y")' "$layer/opaque"
mkfs.erofs --quiet "$work/layer.erofs" "$layer" >/dev/null
truncate -s 16M "$work/scratch.ext4"
mkfs.ext4 -q -F "$work/scratch.ext4"
layer_sectors=$(($(stat -c %s "$work/layer.erofs") / 512))
scratch_sectors=$(($(stat -c %s "$work/scratch.ext4") / 512))

# --- host end of the virtio console: record what the guest writes ----------------
sock=$work/console.sock
python3 - "$sock" "$work/hvc0.out" <<'EOF' &
import socket, sys, time
path, out = sys.argv[1], sys.argv[2]
for _ in range(6000):
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        break
    except OSError:
        time.sleep(0.05)
else:
    sys.exit(1)
with open(out, "wb") as f:
    while True:
        data = s.recv(4096)
        if not data:
            break
        f.write(data)
        f.flush()
EOF
reader_pid=$!

# --- boot ------------------------------------------------------------------------
log=$work/serial.log
echo "smoke: accel=$accel smp=$smp cmdline: $cmdline" >&2
t0=$EPOCHREALTIME
t_init=""
timeout "$timeout_s" qemu-system-x86_64 -M microvm,acpi=off -accel "$accel" -cpu max -smp "$smp" -m 256 \
	-nodefaults -no-user-config -nographic -serial stdio -no-reboot \
	-kernel "$vmlinux" -initrd "$work/initramfs.cpio.gz" -append "$cmdline" \
	-drive "file=$work/layer.erofs,if=none,id=d0,format=raw,readonly=on" \
	-device virtio-blk-device,drive=d0,serial=layer0 \
	-drive "file=$work/scratch.ext4,if=none,id=d1,format=raw" \
	-device virtio-blk-device,drive=d1,serial=scratch0 \
	-chardev "socket,id=c0,path=$sock,server=on,wait=off" \
	-device virtio-serial-device -device virtconsole,chardev=c0 \
	</dev/null >"$work/qemu.out" 2>&1 &
qemu_pid=$!
# Follow the serial output as it arrives, to time "Run /init" from the host.
kvm_error=0
while kill -0 "$qemu_pid" 2>/dev/null; do
	# QEMU pauses the VM on an emulation failure instead of exiting.
	if grep -q 'KVM internal error' "$work/qemu.out"; then
		kvm_error=1
		kill "$qemu_pid" 2>/dev/null || true
		break
	fi
	if [[ -z $t_init ]] && grep -q 'Run /init as init process' "$work/qemu.out"; then
		t_init=$EPOCHREALTIME
		if ((nested_pvm)); then
			kill "$qemu_pid" 2>/dev/null || true
			break
		fi
	fi
	sleep 0.05
done
set +e
wait "$qemu_pid"
qemu_status=$?
set -e
qemu_pid=""
t_end=$EPOCHREALTIME
tr -d '\r' <"$work/qemu.out" >"$log"
cp "$log" /tmp/husk-smoke-last-serial.log

elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$2"; }
failures=()
if ((kvm_error)); then
	failures+=("KVM internal error: $(grep -m1 -A1 'KVM internal error' "$log" | tr '\n' ' '); $(grep -m1 -o 'RIP=[0-9a-f]*' "$log"); code: $(grep -m1 '^Code=' "$log")")
fi
[[ -n $t_init ]] || failures+=("never reached 'Run /init as init process'")
if ((nested_pvm)); then
	echo "smoke: Run /init after $( [[ -n $t_init ]] && elapsed "$t0" "$t_init" || echo never) s (host wall clock)" >&2
else
	[[ $qemu_status -eq 0 ]] || failures+=("qemu exited with status $qemu_status (timeout is 124): the guest did not reboot itself")
	grep -q '^SMOKE PASS' "$log" || failures+=("guest checks failed: $(grep '^SMOKE FAIL' "$log" | tr '\n' ';')")
	grep -q "^SMOKE disk vda sectors=$layer_sectors ro=1 serial=layer0\$" "$log" ||
		failures+=("vda is not the read-only ${layer_sectors}-sector layer disk")
	grep -q "^SMOKE disk vdb sectors=$scratch_sectors ro=0 serial=scratch0\$" "$log" ||
		failures+=("vdb is not the writable ${scratch_sectors}-sector scratch disk")
	for c in memory cpu pids io; do
		grep -Eq "^SMOKE controllers .*\\b$c\\b" "$log" || failures+=("cgroup controller $c missing")
	done
	sleep 0.2
	grep -q 'hello over hvc0' "$work/hvc0.out" 2>/dev/null || failures+=("nothing arrived from /dev/hvc0 on the console socket")
	echo "smoke: Run /init after $(elapsed "$t0" "$t_init") s, VM exited after $(elapsed "$t0" "$t_end") s (host wall clock)" >&2
	grep '^SMOKE' "$log" >&2
fi
if ((${#failures[@]})); then
	printf 'smoke: FAIL: %s\n' "${failures[@]}" >&2
	echo "smoke: serial log: /tmp/husk-smoke-last-serial.log" >&2
	exit 1
fi
echo "smoke: PASS (serial log: /tmp/husk-smoke-last-serial.log)" >&2
