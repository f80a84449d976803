#!/bin/bash
# bench/scripts/containers-vm-guest.sh: runs as root in the VM guest
# (started by containers-vm.sh through test/vm/run, or by vm-guest.sh at
# the end of make bench-vm): a Ceph cluster unless CEPH_CONF names one,
# then BenchmarkWholeContainers of test/e2e, which writes
# $VM_OUT/containers.jsonl and $VM_OUT/containers.md.
#
# Environment: VM_OUT, RBD_NBD_GRAPH_BIN, CONTAINERS_TEST_BIN (go test -c
# output), E2E_KRBD_PLUGIN_BIN, E2E_CONTAINERS_ROUNDS,
# E2E_CONTAINERS_SETUPS, E2E_CONTAINERS_IMPORT_MIB.
set -euo pipefail
: "${VM_OUT:?run me inside the VM: bench/scripts/containers-vm.sh}" "${CONTAINERS_TEST_BIN:?}"
# shellcheck source=test/vm/guest.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../test/vm/guest.sh"
guest_init containers-vm /var/lib/rbd-nbd-graph-containers
export E2E_WORKDIR=$work RBD_NBD_GRAPH_REQUIRE=1
[ -n "${CEPH_CONF:-}" ] || guest_ceph_start $((1536 << 20))
cd "$repo/test/e2e"
"$CONTAINERS_TEST_BIN" -test.run '^$' -test.bench '^BenchmarkWholeContainers$' -test.benchtime 1x \
	-test.v -test.timeout 85m 2>&1 | tee "$VM_OUT/containers-bench.log"
