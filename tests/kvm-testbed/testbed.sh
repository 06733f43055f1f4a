#!/usr/bin/env bash
# husk's KVM test bed: a real KVM inside a QEMU TCG virtual machine ("L1")
# that runs Debian's own kernel with kvm_amd on QEMU's emulated AMD SVM.
# The host's root is shared into L1 read-only, so this checkout's binaries
# run there unchanged, on a /dev/kvm with real VT semantics (see README.md).
#
#   testbed.sh prepare
#       Installs what is missing (QEMU, busybox-static, cpio, kmod, xz),
#       fetches the kernel package and builds the L1 kernel + initramfs,
#       cached under ${HUSK_CACHE:-~/.cache/husk}/testbed/<key>. Prints
#       that directory on the last line of stdout.
#
#   testbed.sh run [--timeout SECS] [--stall SECS] [--smp N] [--mem MIB] [--env NAME]... -- CMD [ARGS...]
#       Boots L1 (preparing first if needed) and runs CMD there, chrooted
#       into the host's root, in the current directory, with PATH, HOME, CI,
#       RUST_BACKTRACE, HUSK_* (not HUSK_TESTBED_*) and the --env variables
#       of the caller. CMD's stdout and stderr stream to ours. Exits with
#       CMD's status, 124 on the timeout (default 1800 s), 125 when the bed
#       itself failed (with a "testbed:" message saying why). With --stall,
#       a bed that prints nothing for SECS, or whose kernel reports a soft
#       lockup of a minute, is stopped (after printing where its CPUs are)
#       and the run exits 124 with the result "stalled REASON".
#
# Both need root. Messages of the bed itself start with "testbed:" on stderr.
# HUSK_TESTBED_APPEND adds to L1's kernel command line (e.g. loglevel=7 to
# see its boot); HUSK_TESTBED_RESULT names a file that gets how the run
# ended (see result() below).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache_root=${HUSK_CACHE:-${HUSK_CACHE_DIR:-$HOME/.cache/husk}}/testbed
packages=(qemu-system-x86 busybox-static cpio kmod xz-utils)
die_code=1
result_file=${HUSK_TESTBED_RESULT:-}

say() { printf 'testbed: %s\n' "$*" >&2; }
# For programs driving `run` (the Rust harness): one line in
# $HUSK_TESTBED_RESULT saying how the run ended, so a command's own 124 or
# 125 is not taken for the bed's: "exit N", "timeout", "bed-failed MESSAGE",
# "crashed REASON" (L1's kernel panicked)
# or "interrupted SIGNAL".
result() {
	[[ -z $result_file ]] || printf '%s\n' "$*" >"$result_file"
}
die() {
	say "$*"
	result "bed-failed $*"
	exit "$die_code"
}
usage() {
	sed -n '7,19s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
	result "bed-failed usage"
	exit 2
}

as_root() {
	if [[ $(id -u) -eq 0 ]]; then
		"$@"
	elif command -v sudo >/dev/null; then
		sudo "$@"
	else
		die "need root to run: $*"
	fi
}

ensure_packages() {
	local missing=() pkg
	for pkg in "${packages[@]}"; do
		dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
	done
	((${#missing[@]} == 0)) && return 0
	say "installing Debian packages: ${missing[*]}"
	as_root apt-get update -qq >&2
	DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# Sets kernel_pkg and kernel_ver: the kernel package the candidate
# linux-image-amd64 depends on, at the exact version it names (one apt-cache
# call: without apt's binary cache each call parses every package list), or
# HUSK_TESTBED_KERNEL_PACKAGE at its candidate version.
resolve_kernel() {
	local dep
	kernel_pkg=${HUSK_TESTBED_KERNEL_PACKAGE:-}
	if [[ -n $kernel_pkg ]]; then
		kernel_ver=$(apt-cache policy "$kernel_pkg" 2>/dev/null | sed -n 's/^ *Candidate: //p')
	else
		# "Depends: linux-image-6.1.0-57-amd64 (= 6.1.192-3)"
		dep=$(apt-cache show --no-all-versions linux-image-amd64 2>/dev/null |
			sed -n 's/^Depends: .*\(linux-image-[0-9][^ ,]*-amd64\(-unsigned\)\{0,1\}\) (= \([^)]*\)).*/\1 \3/p' |
			head -n 1)
		kernel_pkg=${dep%% *}
		kernel_ver=${dep#* }
	fi
	[[ -n $kernel_pkg && -n $kernel_ver && $kernel_ver != "(none)" ]]
}

# The cache key: what the output is made of.
compute_key() {
	local busybox_ver
	busybox_ver=$(dpkg-query -W -f='${Version}' busybox-static)
	{
		echo "kernel $kernel_pkg $kernel_ver"
		echo "busybox-static $busybox_ver"
		(cd "$here/l1" && sha256sum build.sh init modules)
	} | sha256sum | cut -d' ' -f1
}

# Fetches the kernel package into $cache_root/debs (kept for rebuilds, older
# ones dropped) and sets kernel_deb.
fetch_kernel() {
	local debs=$cache_root/debs dl
	kernel_deb=$debs/${kernel_pkg}_${kernel_ver}.deb
	[[ -f $kernel_deb ]] && return 0
	mkdir -p "$debs"
	dl=$(mktemp -d "$cache_root/.download.XXXXXX")
	say "downloading $kernel_pkg $kernel_ver"
	if ! (cd "$dl" && apt-get download -q -o APT::Sandbox::User=root "$kernel_pkg=$kernel_ver" >&2); then
		rm -rf "$dl"
		return 1
	fi
	rm -f "$debs"/*.deb
	mv "$dl"/*.deb "$kernel_deb"
	rm -rf "$dl"
}

cmd_prepare() {
	local key dir lock stage
	[[ $# -eq 0 ]] || usage
	ensure_packages
	mkdir -p "$cache_root"
	if ! resolve_kernel; then
		say "no Debian kernel package in the package lists: updating them"
		as_root apt-get update -qq >&2
		resolve_kernel || die "cannot resolve linux-image-amd64 to a kernel package (apt-cache depends linux-image-amd64)"
	fi
	key=$(compute_key)
	dir=$cache_root/$key
	if [[ ! -f $dir/manifest ]]; then
		# Serialise builds of one key; a second caller waits, then finds it.
		exec {lock}>"$cache_root/.lock-$key"
		flock "$lock"
		if [[ ! -f $dir/manifest ]]; then
			if ! fetch_kernel; then
				# A stale package list names a version the mirror dropped.
				say "download failed: updating the package lists and retrying"
				as_root apt-get update -qq >&2
				resolve_kernel || die "cannot resolve linux-image-amd64 after apt-get update"
				key=$(compute_key)
				dir=$cache_root/$key
				fetch_kernel || die "cannot download $kernel_pkg $kernel_ver"
			fi
			if [[ ! -f $dir/manifest ]]; then
				rm -rf "$cache_root/.build-$key".*
				stage=$(mktemp -d "$cache_root/.build-$key.XXXXXX")
				"$here/l1/build.sh" "$kernel_deb" "$stage" || {
					rm -rf "$stage"
					die "building the L1 kernel and initramfs failed"
				}
				chmod 0755 "$stage"
				# Renames are atomic: a reader sees all of it or nothing.
				mv -T "$stage" "$dir" 2>/dev/null || rm -rf "$stage"
			fi
		fi
		exec {lock}>&-
	fi
	[[ -f $dir/manifest ]] || die "no L1 build in $dir"
	echo "$dir"
}

# --- run ---------------------------------------------------------------------

# Single-quotes a word for POSIX sh.
sh_quote() {
	local s=${1//\'/\'\\\'\'}
	printf "'%s'" "$s"
}

now() { date +%s.%N; }
seconds_between() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

run_tmp=""
qemu_pid=""
cat_pids=()
watchdog_pid=""
cleanup() {
	if [[ -n $watchdog_pid ]]; then
		kill "$watchdog_pid" 2>/dev/null || true
		wait "$watchdog_pid" 2>/dev/null || true
	fi
	if [[ -n $qemu_pid ]] && kill -0 "$qemu_pid" 2>/dev/null; then
		kill -TERM "$qemu_pid" 2>/dev/null || true
		wait "$qemu_pid" 2>/dev/null || true
	fi
	release_fifos
	if ((${#cat_pids[@]})); then
		kill "${cat_pids[@]}" 2>/dev/null || true
		wait "${cat_pids[@]}" 2>/dev/null || true
	fi
	[[ -z $run_tmp ]] || rm -rf "$run_tmp"
}

# Lets the readers of our FIFOs see end-of-file even when QEMU never opened
# them (a read-write open never blocks, and counts as a writer).
release_fifos() {
	local fifo fd
	[[ -n $run_tmp ]] || return 0
	for fifo in "$run_tmp/stdout.fifo" "$run_tmp/console.fifo"; do
		if [[ -p $fifo ]]; then
			exec {fd}<>"$fifo"
			exec {fd}>&-
		fi
	done
}

# Copies a serial channel line by line, touching $run_tmp/alive for each
# line (the stall watchdog's clock) and flagging a long soft lockup that
# L1's kernel reports (L1 sometimes wedges under TCG; nothing progresses
# after that).
copy_serial() {
	local line
	while IFS= read -r line || [[ -n $line ]]; do
		printf '%s\n' "$line"
		: >"$run_tmp/alive"
		if [[ $line =~ soft\ lockup\ -\ CPU#[0-9]+\ stuck\ for\ ([0-9]+)s ]] &&
			((BASH_REMATCH[1] >= 60)); then
			printf 'L1 soft lockup (%s s)\n' "${BASH_REMATCH[1]}" >"$run_tmp/stall-reason"
		fi
		# L1's own kernel died (seen once under heavy nested exits: TCG's
		# emulated SVM left a wrong GS base, and L1 faulted in its fault
		# handler until the stack guard page).
		if [[ $line == *"Kernel panic - not syncing"* && ! -s $run_tmp/crashed ]]; then
			printf 'L1 kernel panic: %s\n' "${line#*not syncing: }" >"$run_tmp/crashed"
		fi
	done
}

# Asks QEMU's monitor one command and prints its answer.
monitor_ask() {
	python3 - "$run_tmp/monitor.sock" "$1" <<'PY' 2>&1 || true
import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
s.connect(sys.argv[1])
def until_prompt():
    data = b""
    while not data.endswith(b"(qemu) "):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace")
until_prompt()
s.sendall(sys.argv[2].encode() + b"\n")
out = until_prompt()
print("\n".join(l for l in out.splitlines()[1:] if not l.startswith("(qemu)")))
PY
}

# The stall watchdog: stops QEMU when L1 printed nothing for $1 seconds or
# reported a long soft lockup, after printing where each vCPU is (a wedge
# inside L2 shows as a guest-mode RIP; one in L1's kernel as a kernel one).
watch_stall() {
	local stall=$1 age reason
	while kill -0 "$qemu_pid" 2>/dev/null; do
		reason=""
		if [[ -s $run_tmp/stall-reason ]]; then
			reason=$(cat "$run_tmp/stall-reason")
		else
			age=$(($(date +%s) - $(stat -c %Y "$run_tmp/alive")))
			((age < stall)) || reason="no output from L1 for $age s"
		fi
		if [[ -n $reason ]]; then
			say "stalled: $reason; where L1's vCPUs are:"
			monitor_ask "info cpus" | sed 's/^/testbed:   /' >&2
			monitor_ask "info registers -a" |
				grep -E '^(CPU#|RIP|CS |CR0|EFER)' | sed 's/^/testbed:   /' >&2
			printf '%s\n' "$reason" >"$run_tmp/stalled"
			kill -TERM "$qemu_pid" 2>/dev/null || true
			return 0
		fi
		sleep 5
	done
}

cmd_run() {
	local timeout=1800 stall=0 smp=2 mem=4096 names=(PATH HOME CI RUST_BACKTRACE) name cwd io
	local start started_at ended_at rc status kind rest
	die_code=125
	while (($#)); do
		case $1 in
		--timeout) timeout=${2:?--timeout needs SECS}; shift 2 ;;
		--stall) stall=${2:?--stall needs SECS}; shift 2 ;;
		--smp) smp=${2:?--smp needs N}; shift 2 ;;
		--mem) mem=${2:?--mem needs MIB}; shift 2 ;;
		--env) names+=("${2:?--env needs NAME}"); shift 2 ;;
		--) shift; break ;;
		*) usage ;;
		esac
	done
	(($#)) || usage
	[[ $stall =~ ^[0-9]+$ ]] || die "--stall wants a number of seconds, not '$stall'"
	for name in timeout smp mem; do
		[[ ${!name} =~ ^[1-9][0-9]*$ ]] || die "--$name wants a positive integer, not '${!name}'"
	done
	for name in "${names[@]}"; do
		[[ $name =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "--env wants a variable name, not '$name'"
	done
	# HUSK_TESTBED_* configure this script, not the command.
	while IFS= read -r name; do
		[[ $name == HUSK_* && $name != HUSK_TESTBED_* ]] && names+=("$name")
	done < <(compgen -e)

	[[ $(id -u) -eq 0 ]] || die "run needs root (QEMU shares the whole host root into L1)"
	command -v qemu-system-x86_64 >/dev/null ||
		die "qemu-system-x86_64 is not installed (testbed.sh prepare installs qemu-system-x86)"
	cwd=$(pwd -P)
	case $cwd/ in
	/tmp/* | /run/* | /dev/shm/*)
		die "the current directory $cwd is not visible in L1 (a fresh tmpfs covers it there)" ;;
	esac
	local cache
	cache=$(cmd_prepare) || die "prepare failed"

	trap cleanup EXIT
	trap 'say "interrupted (SIGHUP)"; result "interrupted SIGHUP"; exit 129' HUP
	trap 'say "interrupted (SIGINT)"; result "interrupted SIGINT"; exit 130' INT
	trap 'say "interrupted (SIGTERM)"; result "interrupted SIGTERM"; exit 143' TERM
	run_tmp=$(mktemp -d "${TMPDIR:-/tmp}/husk-testbed.XXXXXX")
	[[ $run_tmp != *,* ]] || die "the temp dir $run_tmp has a comma, which QEMU's options cannot take"
	io=$run_tmp/io
	mkdir "$io"
	{
		echo "# written by testbed.sh run; executed by L1's /init in the chroot"
		local -A seen=()
		for name in "${names[@]}"; do
			[[ -z ${seen[$name]:-} ]] || continue
			seen[$name]=1
			if [[ -n ${caller_env[$name]+set} ]]; then
				printf 'export %s=%s\n' "$name" "$(sh_quote "${caller_env[$name]}")"
			fi
		done
		printf 'cd %s || { echo %s >/run/husk-testbed/setup-error; exit 125; }\n' \
			"$(sh_quote "$cwd")" "$(sh_quote "cannot enter $cwd inside L1")"
		echo ': >/run/husk-testbed/started'
		printf 'exec'
		for arg in "$@"; do printf ' %s' "$(sh_quote "$arg")"; done
		printf '\n'
	} >"$io/cmd.sh"

	mkfifo "$run_tmp/stdout.fifo" "$run_tmp/console.fifo"
	: >"$run_tmp/alive"
	copy_serial <"$run_tmp/stdout.fifo" &
	cat_pids+=($!)
	copy_serial <"$run_tmp/console.fifo" >&2 &
	cat_pids+=($!)

	local kernel=$cache/vmlinuz
	[[ ! -f $cache/vmlinux ]] || kernel=$cache/vmlinux
	local qemu=(
		qemu-system-x86_64 -accel tcg,thread=multi,tb-size=512 -cpu max -M q35
		-smp "$smp" -m "${mem}M" -nodefaults -no-user-config -display none -no-reboot
		-kernel "$kernel" -initrd "$cache/initramfs.cpio.gz"
		-append "console=ttyS0 quiet loglevel=3 panic=-1 mitigations=off ${HUSK_TESTBED_APPEND:-}"
		-chardev "file,id=console,path=$run_tmp/console.fifo" -serial chardev:console
		-chardev "file,id=stdout,path=$run_tmp/stdout.fifo" -serial chardev:stdout
		-fsdev "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap"
		-device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot
		-fsdev "local,id=io,path=$io,security_model=none"
		-device virtio-9p-pci,fsdev=io,mount_tag=io
		-monitor "unix:$run_tmp/monitor.sock,server=on,wait=off"
	)
	start=$(now)
	# --foreground keeps QEMU in our process group, so whoever kills that
	# group kills QEMU too; --kill-after covers a QEMU that ignores TERM.
	timeout --foreground --kill-after=10 "$timeout" "${qemu[@]}" </dev/null >&2 &
	qemu_pid=$!
	if ((stall > 0)); then
		watch_stall "$stall" &
		watchdog_pid=$!
	fi
	rc=0
	wait "$qemu_pid" || rc=$?
	qemu_pid=""
	if [[ -n $watchdog_pid ]]; then
		kill "$watchdog_pid" 2>/dev/null || true
		wait "$watchdog_pid" 2>/dev/null || true
		watchdog_pid=""
	fi
	ended_at=$(now)
	release_fifos
	wait "${cat_pids[@]}" 2>/dev/null || true
	cat_pids=()

	if [[ -f $io/started ]]; then
		started_at=$(stat -c %.9Y "$io/started")
		say "L1 boot to command start $(seconds_between "$start" "$started_at") s," \
			"command $(seconds_between "$started_at" "$ended_at") s, whole run $(seconds_between "$start" "$ended_at") s"
	fi
	if [[ -s $run_tmp/stalled ]]; then
		say "stopped the stalled bed ($(cat "$run_tmp/stalled"))"
		result "stalled $(cat "$run_tmp/stalled")"
		exit 124
	fi
	if [[ -s $run_tmp/crashed && ! -f $io/status ]]; then
		say "the bed's own kernel crashed ($(cat "$run_tmp/crashed"))"
		result "crashed $(cat "$run_tmp/crashed")"
		exit 125
	fi
	if ((rc == 124 || rc == 137)) && awk -v a="$start" -v b="$ended_at" -v t="$timeout" 'BEGIN { exit !(b - a >= t) }'; then
		[[ ! -f $io/status ]] || say "(the command had ended ($(cat "$io/status")), but something kept L1 up)"
		say "timed out after $timeout s"
		result timeout
		exit 124
	fi
	if [[ -f $io/status ]]; then
		status=$(cat "$io/status")
		kind=${status%% *}
		rest=${status#* }
		case $kind in
		exit)
			result "exit $rest"
			exit "$rest"
			;;
		setup) die "L1 could not run the command: $rest" ;;
		esac
		die "L1 wrote an unexpected status: $status"
	fi
	die "L1 ended without running the command (QEMU exit status $rc): it did not boot, or its" \
		"/init failed before the io share was mounted; see the messages above"
}

# The caller's environment, before this script sets anything.
declare -A caller_env=()
while IFS= read -r _name; do
	caller_env[$_name]=${!_name}
done < <(compgen -e)
unset _name

case ${1:-} in
prepare) shift; cmd_prepare "$@" ;;
run) shift; cmd_run "$@" ;;
*) usage ;;
esac
