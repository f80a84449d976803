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

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# The guest's root is a tmpfs overlay: everything here vanishes at poweroff.
work=/var/lib/rbd-nbd-graph-e2e
mkdir -p "$work"
export E2E_WORKDIR=$work

# Kernel warnings still reach the console; info chatter does not.
dmesg -n 4 2>/dev/null

if [ "${E2E_CEPH:-1}" != 0 ]; then
	start=$(date +%s)
	# memstore keeps data in the guest's RAM (4 GiB): leave room for tests.
	# Under TCG each ceph CLI call takes seconds: allow each step more time.
	if ! RBD_NBD_GRAPH_CEPH_TIMEOUT=${RBD_NBD_GRAPH_CEPH_TIMEOUT:-240} RBD_NBD_GRAPH_CEPH_STORE_BYTES=$((1536 << 20)) \
		"${E2E_CEPH_CLUSTER:-$repo/test/ceph/cluster}" start "$work/ceph"; then
		echo "e2e: the Ceph cluster did not start" >&2
		mkdir -p "$VM_OUT/ceph-logs"
		cp -r "$work"/ceph/log "$VM_OUT/ceph-logs/" 2>/dev/null
		exit 1
	fi
	export CEPH_CONF=$work/ceph/ceph.conf
	echo "e2e: Ceph cluster up in $(( $(date +%s) - start ))s"
fi

args=(-test.v=test2json -test.count=1 -test.timeout="${E2E_TIMEOUT:-20m}")
[ -n "${RUN:-}" ] && args+=(-test.run="$RUN")
cd "$repo/test/e2e"
"$TEST2JSON" -t -p e2e "$E2E_TEST_BIN" "${args[@]}" |
	tee "$VM_OUT/tests.jsonl" |
	jq --unbuffered -j 'select(.Action == "output") | .Output'
rc=${PIPESTATUS[0]}

dmesg > "$VM_OUT/dmesg.log" 2>&1
if [ "$rc" != 0 ] && [ -d "$work/ceph" ]; then
	mkdir -p "$VM_OUT/ceph-logs"
	cp -r "$work"/ceph/log "$VM_OUT/ceph-logs/" 2>/dev/null
fi
exit "$rc"
