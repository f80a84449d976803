#!/bin/bash
# bench/scripts/crosscheck-vm-guest.sh: the device-target cross-check, run
# as root inside the project's VM guest (test/vm/run; started by
# crosscheck-vm.sh, or by anyone's VM harness) where the kernel has NBD.
# Compares bench --target device with fio libaio (direct IO) on a device
# mapped by `rbd-nbd-graph map`, through crosscheck.sh, and leaves the
# results in $VM_OUT/crosscheck.
#
# Environment: VM_OUT (set by test/vm/run), RBD_NBD_GRAPH_BIN, XC_ARGS
# (extra crosscheck.sh arguments, e.g. "--runtime 5 --rounds 1"),
# XC_BACKEND (rbd, default, with a Ceph cluster started in the guest; or
# mem: no Ceph).
set -euo pipefail
: "${VM_OUT:?run me inside the VM: bench/scripts/crosscheck-vm.sh}"
# shellcheck source=test/vm/guest.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../test/vm/guest.sh"
guest_init crosscheck-vm /var/lib/rbd-nbd-graph-bench
backend=${XC_BACKEND:-rbd}

# The guest's RAM is 4 GiB, so the memstore OSD gets 1.5 GiB and the
# image stays small.
if [ "$backend" = rbd ] && [ -z "${CEPH_CONF:-}" ]; then
	guest_ceph_start $((1536 << 20))
fi
# shellcheck disable=SC2086 # XC_ARGS is a list of arguments
# Three rounds: under TCG a single round swings by a factor of two.
exec "$repo/bench/scripts/crosscheck.sh" --pairs device --backend "$backend" --size 256M --rounds 3 \
	--out "$VM_OUT/crosscheck" ${XC_ARGS:-}
