#!/bin/bash
# bench/scripts/sweep-vm.sh: `bench sweep --target device` (the kernel's
# NBD device, served by the bench process, librbd underneath) of 4k random
# read and write in the project's qemu VM, whose Debian kernel has NBD
# (the host's has none). This is the sweep that recommends driver options
# (nbd.connections, nbd.queuedepth); its charts (IOPS, p99, p99 against
# IOPS, CPU per IO) land in DIR/sweep as SVG and PNG.
#
#   bench/scripts/sweep-vm.sh [--out DIR] [sweep.sh arguments...]
#
# Builds nothing: run `make build` first. Under TCG everything is CPU-bound
# and slow: read the shapes and the recommendation, not the IOPS.
#
# Environment: RBD_NBD_GRAPH_BIN (default bin/rbd-nbd-graph),
# SWEEP_VM_TIMEOUT (seconds, default 2400).
set -euo pipefail
# shellcheck source=bench/scripts/vm-host.sh
. "$(dirname "${BASH_SOURCE[0]}")/vm-host.sh"
vm_host_init sweep-vm sweep-vm
if [ "${1:-}" = --out ]; then out=$2; shift 2; fi
vm_host_out
vm_host_run "${SWEEP_VM_TIMEOUT:-2400}" sweep-vm-guest.sh --env SWEEP_ARGS="$*"
if [ -d "$out/vm/sweep" ]; then
	rm -rf "$out/sweep"
	mv "$out/vm/sweep" "$out/sweep"
fi
if ls "$out"/sweep/sweep-device-*.svg >/dev/null 2>&1; then
	ls -l "$out"/sweep
else
	vm_host_no_results 30
fi
exit "$vm_rc"
