#!/bin/bash
# bench/scripts/containerd-vm-guest.sh: runs as root in the VM guest
# (started by containerd-vm.sh through test/vm/run): a Ceph cluster, then
# TestBenchContainerdPull of test/e2e, which writes
# $VM_OUT/containerd-bench.txt.
#
# Environment: VM_OUT, RBD_NBD_GRAPH_BIN, CONTAINERD_TEST_BIN (go test -c
# output).
set -euo pipefail
: "${VM_OUT:?run me inside the VM: bench/scripts/containerd-vm.sh}" "${CONTAINERD_TEST_BIN:?}"
# shellcheck source=test/vm/guest.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../test/vm/guest.sh"
guest_init containerd-vm /var/lib/rbd-nbd-graph-containerd-bench
export E2E_WORKDIR=$work E2E_CONTAINERD_BENCH=1 RBD_NBD_GRAPH_REQUIRE=1
guest_ceph_start $((1536 << 20))
cd "$repo/test/e2e"
"$CONTAINERD_TEST_BIN" -test.run '^TestBenchContainerdPull$' -test.v -test.count=1 -test.timeout 25m 2>&1 |
	tee "$VM_OUT/bench-test.log"
