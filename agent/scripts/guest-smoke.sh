#!/usr/bin/env bash
# Boots the static agent as /init under QEMU TCG with two busybox erofs layer
# disks and checks what it does, scenario by scenario, through the debugging
# client (agent/examples/client.rs). Independent of `husk run`.
#
# Usage: agent/scripts/guest-smoke.sh [VMLINUX]
#   VMLINUX defaults to the last line of guest-kernel-config/build.sh.
# Needs: qemu-system-x86_64, mkfs.erofs, mkfs.ext4, debugfs, cpio, busybox (static), root (mknod).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
vmlinux=${1:-$("$repo/guest-kernel-config/build.sh" | tail -n 1)}
work=$(mktemp -d /tmp/husk-agent-smoke.XXXXXX)
qemu_pid=
cleanup() {
	[ -n "$qemu_pid" ] && kill "$qemu_pid" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

echo "building the static agent and the client" >&2
(cd "$repo" && RUSTFLAGS="-C target-feature=+crt-static" \
	cargo build -q -p husk-agent --release --target x86_64-unknown-linux-gnu)
(cd "$repo" && cargo build -q -p husk-agent --example client)
agent=$repo/target/x86_64-unknown-linux-gnu/release/husk-agent
client=$repo/target/debug/examples/client

# Layers: busybox at the bottom; the top one overrides /etc/who and whites
# out /etc/deleteme.
mkdir -p "$work"/l0/{bin,etc,proc,sys,dev,tmp,root} "$work"/l1/etc
cp "$(command -v busybox)" "$work/l0/bin/busybox"
for applet in sh echo cat ls id hostname pwd true sleep head tr wc grep readlink mount tty stty mkdir; do
	ln -s busybox "$work/l0/bin/$applet"
done
echo lower >"$work/l0/etc/who"
echo gone >"$work/l0/etc/deleteme"
echo keep >"$work/l0/etc/keep"
echo top >"$work/l1/etc/who"
mknod "$work/l1/etc/deleteme" c 0 0
mkfs.erofs --quiet --all-root "$work/l0.erofs" "$work/l0"
mkfs.erofs --quiet --all-root "$work/l1.erofs" "$work/l1"
truncate -s 64M "$work/scratch.ext4"
mkfs.ext4 -q "$work/scratch.ext4"

# Seccomp: an allow-list whose per-action rule (mkdir → EACCES) must beat
# the default action (EPERM), and which blocks pipe(2) by default.
cat >"$work/seccomp.json" <<'JSON'
{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
 {"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":13},
 {"names":["read","write","open","openat","close","fstat","newfstatat","stat","lstat","mmap",
  "munmap","mprotect","brk","rt_sigaction","rt_sigprocmask","rt_sigreturn","ioctl","execve",
  "exit","exit_group","getpid","getppid","getuid","geteuid","getgid","getegid","arch_prctl",
  "set_tid_address","uname","fcntl","dup2","dup3","wait4","clone","fork","vfork","prctl",
  "capset","capget","setgroups","setresuid","setresgid","chdir","access","faccessat",
  "faccessat2","readlink","getcwd","prlimit64","futex","set_robust_list","rseq","getrandom",
  "poll","ppoll","lseek","writev","sigaltstack","statx","getdents64","umask","setsid","kill",
  "getpgrp","setpgid","getpgid"],"action":"SCMP_ACT_ALLOW"}]}
JSON

mkdir -p "$work/initrd/dev"
cp "$agent" "$work/initrd/init"
mknod "$work/initrd/dev/console" c 5 1
(cd "$work/initrd" && find . | cpio -o -H newc --quiet) >"$work/initrd.cpio"

# run_vm CLIENT_ARGS... : boots a VM, runs the client; prints its stdout
# (stderr in $work/client.err), returns the client's exit status.
run_vm() {
	rm -f "$work/a.sock"
	qemu-system-x86_64 -M microvm,acpi=off -accel tcg -nodefaults -no-user-config -nographic \
		-no-reboot -m 512 -serial "file:$work/serial.log" -kernel "$vmlinux" -initrd "$work/initrd.cpio" \
		-append "console=ttyS0 reboot=k panic=-1 quiet" \
		-chardev "socket,id=agent,path=$work/a.sock,server=on,wait=on" \
		-device virtio-serial-device -device virtconsole,chardev=agent \
		-drive "file=$work/l0.erofs,if=none,id=l0,format=raw,readonly=on" \
		-device virtio-blk-device,drive=l0,serial=husk-l0 \
		-drive "file=$work/l1.erofs,if=none,id=l1,format=raw,readonly=on" \
		-device virtio-blk-device,drive=l1,serial=husk-l1 \
		-drive "file=$work/scratch.ext4,if=none,id=s0,format=raw" \
		-device virtio-blk-device,drive=s0,serial=husk-scratch 2>"$work/qemu.err" &
	qemu_pid=$!
	for _ in $(seq 100); do [ -S "$work/a.sock" ] && break; sleep 0.1; done
	local status=0
	timeout 180 "$client" "$work/a.sock" "${LAYERS:-husk-l0,husk-l1}" "$@" 2>"$work/client.err" || status=$?
	# The VM powers itself off after Shutdown; kill it if it did not.
	for _ in $(seq 100); do kill -0 "$qemu_pid" 2>/dev/null || break; sleep 0.1; done
	kill "$qemu_pid" 2>/dev/null || true
	wait "$qemu_pid" 2>/dev/null || true
	qemu_pid=
	return "$status"
}

failures=0
check() { # NAME EXPECTED_STATUS EXPECTED_STDOUT_REGEX CLIENT_ARGS...
	local name=$1 want_status=$2 want_out=$3 out status=0
	shift 3
	out=$(run_vm "$@") || status=$?
	if [ "$status" = "$want_status" ] && grep -Eq -- "$want_out" <<<"$(printf '%s\n%s' "$out" "$(cat "$work/client.err")")"; then
		echo "ok   $name"
	else
		echo "FAIL $name: status $status (want $want_status), output:" >&2
		echo "$out" >&2
		tail -n 5 "$work/client.err" >&2
		failures=$((failures + 1))
	fi
}

check "exit code and stdout" 42 "^hello$" -- sh -c 'echo hello; exit 42'
check "stderr apart" 0 "to-stderr" -- sh -c 'echo to-stderr >&2'
check "pid 1, hostname" 0 "^1 husk-test$" -- sh -c 'echo $$ $(hostname)'
check "overlay order and whiteout" 0 "^top keep who$" -- sh -c 'echo $(cat /etc/who) $(ls /etc)'
check "stdin piped" 0 "^got:abc$" --stdin -- sh -c 'read x; echo got:$x' <<<"abc"
check "user" 0 "^uid=1000 gid=1000" --user 1000:1000 -- id
check "memory limit kills (137)" 137 "signal: Some\(9\)" --memory 33554432 -- \
	sh -c 'x=$(head -c 60000000 /dev/zero | tr "\0" a); echo survived'
check "pids limit" 2 "can't fork" --pids 4 -- sh -c 'for i in 1 2 3 4 5 6; do sleep 3 & done; wait'
check "signal 9 (137)" 137 "signal: Some\(9\)" --signal 9 -- sleep 30
check "tty" 0 "^/dev/(console|pts/[0-9]+)" --tty -- tty
check "tty resize" 0 "^40 100" --tty -- sh -c 'sleep 1; stty size'
# mkdir gets the rule's EACCES; the pipe for $(...) the default EPERM (sh: 2).
check "seccomp profile" 2 "/x': Permission denied" --seccomp "$work/seccomp.json" -- \
	sh -c 'mkdir /x; x=$(echo y)'
check "exec joins the container" 0 "\[exec\] 2" --exec -- sh -c 'echo $$; sleep 2'
check "command not found" 1 "exec nope: executable file not found" -- nope
check "missing binary path" 1 "exec /bin/nope: No such file or directory" -- /bin/nope
LAYERS=husk-l0,husk-missing check "missing layer disk" 1 'no virtio disk with serial "husk-missing"' -- true
check "scratch disk upper" 0 "^ok$" --scratch husk-scratch -- sh -c 'echo persisted >/file; echo ok'
if debugfs -R "cat /upper/file" "$work/scratch.ext4" 2>/dev/null | grep -q persisted; then
	echo "ok   scratch disk keeps the upper after shutdown"
else
	echo "FAIL scratch disk keeps the upper after shutdown" >&2
	failures=$((failures + 1))
fi

echo "$failures failure(s)"
[ "$failures" = 0 ]
