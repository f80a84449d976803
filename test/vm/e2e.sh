#!/bin/bash
# test/vm/e2e.sh: runs inside the VM guest (test/vm/run starts it as root).
# Starts the project's Ceph cluster, then the end-to-end test binary, with
# go test's JSON events in $VM_OUT/tests.jsonl and a readable log on the
# console.
#
# Environment (set by `make vmtest`): E2E_TEST_BIN (go test -c output),
# RBD_NBD_GRAPH_BIN, TEST2JSON (go build cmd/test2json), RUN (a -test.run pattern,
# optional), E2E_TIMEOUT (go test -timeout, default 20m), E2E_CEPH=0 to
# skip the cluster, E2E_CEPH_CLUSTER (another cluster script, same CLI).
set -uo pipefail
: "${E2E_TEST_BIN:?}" "${RBD_NBD_GRAPH_BIN:?}" "${TEST2JSON:?}" "${VM_OUT:?}"

# shellcheck source=test/vm/guest.sh
. "$(dirname "${BASH_SOURCE[0]}")/guest.sh"
guest_init e2e /var/lib/rbd-nbd-graph-e2e
export E2E_WORKDIR=$work

# memstore keeps data in the guest's RAM: leave room for the tests.
if [ "${E2E_CEPH:-1}" != 0 ]; then
	guest_ceph_start $((1536 << 20)) "${E2E_CEPH_CLUSTER:-}" || exit 1
fi

# The pool's use over time, for a failure that fills the cluster (memstore
# answers "full" once its RAM cap is reached, and every write then waits).
# From the OSD's own counters: `ceph df` needs a mgr, which this cluster
# runs only for quota tests.
#
# memstore's count of used bytes can drift below zero (a CI run: 2^64 -
# 691616 bytes used with no image in the pool; the OSD then reports the
# cluster full and every test after it waits on a full pool). The sampler
# restarts the OSD when its used bytes exceed its size, which no real use
# can do: the restart counts the objects again
# (docs/2026-12-07-memstore-used-bytes.md). Said on the console too.
if [ "${E2E_CEPH:-1}" != 0 ]; then
	(
		say() { echo "$1"; echo "$1" >&3; } # the log and the console
		while sleep 20; do
			osd=$(timeout 20 ceph tell osd.0 perf dump osd 2>/dev/null)
			printf '%s used=%s images=%s trash=%s\n' "$(date +%T)" \
				"$(jq -r '.osd.stat_bytes_used' <<<"$osd" 2>/dev/null)" \
				"$(timeout 20 rbd ls -p rbd 2>/dev/null | wc -l)" \
				"$(timeout 20 rbd trash ls -a -p rbd 2>/dev/null | wc -l)"
			if [ "$(jq '.osd.stat_bytes_used > .osd.stat_bytes' <<<"$osd" 2>/dev/null)" = true ]; then
				say "e2e: osd.0 counts $(jq -r '.osd.stat_bytes_used' <<<"$osd") bytes used of $(jq -r '.osd.stat_bytes' <<<"$osd"): memstore's count went below zero; restarting the OSD to count again"
				if RBD_NBD_GRAPH_CEPH_TIMEOUT=300 "${E2E_CEPH_CLUSTER:-$repo/test/ceph/cluster}" restart-osd "$work/ceph"; then
					say "e2e: osd.0 restarted; it counts $(timeout 20 ceph tell osd.0 perf dump osd 2>/dev/null | jq -r '.osd.stat_bytes_used') bytes used"
				else
					say "e2e: restarting osd.0 failed"
				fi
			fi
		done
	) 3>&2 >"$VM_OUT/pool-usage.log" 2>&1 & # 3: the console, for this loop only
	sampler=$!
fi

# A process the tests start that dies of a signal (a C library's abort
# on a librados thread prints one line and no Go traceback) leaves a core
# file; after the run each one is turned into every thread's backtrace
# (gdb) in $VM_OUT/cores, and the core is deleted (they are large).
# %E is the executable's path with / written as !.
mkdir -p "$VM_OUT/cores"
ulimit -c unlimited
echo "$VM_OUT/cores/core.%p.%E" >/proc/sys/kernel/core_pattern

args=(-test.v=test2json -test.count=1 -test.timeout="${E2E_TIMEOUT:-20m}")
[ -n "${RUN:-}" ] && args+=(-test.run="$RUN")
cd "$repo/test/e2e" || exit 1
"$TEST2JSON" -t -p e2e "$E2E_TEST_BIN" "${args[@]}" |
	tee "$VM_OUT/tests.jsonl" |
	jq --unbuffered -j 'select(.Action == "output") | .Output'
rc=${PIPESTATUS[0]}

[ -n "${sampler:-}" ] && kill "$sampler" 2>/dev/null
for core in "$VM_OUT"/cores/core.*; do
	case $core in *.txt) continue ;; esac
	[ -e "$core" ] || continue
	exe=${core#*/core.*.}
	exe=${exe//!//}
	timeout 300 gdb -batch -nx -ex 'echo ==== the thread that died\n' -ex 'bt 40' \
		-ex 'echo ==== all threads\n' -ex 'info threads' -ex 'thread apply all bt 40' \
		"$exe" "$core" >"$core.txt" 2>&1
	echo "e2e: $exe dumped core; backtraces in $core.txt (the summary prints the thread that died)" >&2
	rm -f "$core"
done
dmesg > "$VM_OUT/dmesg.log" 2>&1
[ "$rc" = 0 ] || guest_ceph_logs
exit "$rc"
