#!/bin/bash
# bench/scripts/layers-vm-guest.sh: runs as root in the VM guest (started by
# layers-vm.sh through test/vm/run): a Ceph cluster, then the layer
# benchmarks of test/e2e/docker_bench_test.go, output in $VM_OUT/bench.txt.
#
# Environment: VM_OUT, RBD_NBD_GRAPH_BIN, LAYERS_TEST_BIN (go test -c
# output), LAYERS_COUNT (iterations per benchmark).
set -euo pipefail
: "${VM_OUT:?run me inside the VM: bench/scripts/layers-vm.sh}" "${LAYERS_TEST_BIN:?}"
# shellcheck source=test/vm/guest.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../test/vm/guest.sh"
guest_init layers-vm /var/lib/rbd-nbd-graph-layers
export E2E_WORKDIR=$work
guest_ceph_start $((1536 << 20))
cd "$repo/test/e2e"
# -count runs each benchmark several times; layers-vm.sh reads ns/op.
"$LAYERS_TEST_BIN" -test.run '^$' -test.bench 'LayerLifecycle|ContainerLayers|DockerRunTrue' \
	-test.benchtime "${LAYERS_COUNT:-5}x" -test.timeout 25m 2>&1 | tee "$VM_OUT/bench.txt"
