#!/bin/bash
# bench/scripts/sweep-vm-guest.sh: the device sweep, run as root inside the
# project's VM guest (test/vm/run; started by sweep-vm.sh). Starts a Ceph
# cluster in the guest and runs sweep.sh --target device, leaving the
# results in $VM_OUT/sweep.
#
# Environment: VM_OUT (set by test/vm/run), RBD_NBD_GRAPH_BIN, SWEEP_ARGS
# (extra sweep.sh arguments, e.g. "--runtime 3s").
set -euo pipefail
: "${VM_OUT:?run me inside the VM: bench/scripts/sweep-vm.sh}"
# shellcheck source=test/vm/guest.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../test/vm/guest.sh"
guest_init sweep-vm /var/lib/rbd-nbd-graph-bench
# The guest's RAM is 4 GiB: the memstore OSD gets 1.5 GiB, the image 256 MiB.
[ -n "${CEPH_CONF:-}" ] || guest_ceph_start $((1536 << 20))
# shellcheck disable=SC2086 # SWEEP_ARGS is a list of arguments
exec "$repo/bench/scripts/sweep.sh" --target device --size 256M --out "$VM_OUT/sweep" ${SWEEP_ARGS:-}
