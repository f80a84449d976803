#!/bin/bash
# bench/scripts/crosscheck-vm.sh: the device-target cross-check (bench
# --target device vs fio libaio on a mapped device, 4k random read and
# write at queue depth 16, alternately) in the project's qemu VM, whose
# Debian kernel has NBD. The host kernel here has none.
#
#   bench/scripts/crosscheck-vm.sh [--out DIR] [crosscheck.sh arguments...]
#
# Builds nothing: run `make build` first (or `make bench-vm`). Results in
# DIR (default results/crosscheck-vm): crosscheck.txt, crosscheck.json and
# the tools' output; the VM's console log in DIR/vm. Under TCG everything
# is CPU-bound and slow: compare the ratio, not the IOPS.
#
# Environment: RBD_NBD_GRAPH_BIN (default bin/rbd-nbd-graph), XC_BACKEND
# (rbd or mem), XC_VM_TIMEOUT (seconds, default 1800).
set -euo pipefail
# shellcheck source=bench/scripts/vm-host.sh
. "$(dirname "${BASH_SOURCE[0]}")/vm-host.sh"
vm_host_init crosscheck-vm crosscheck-vm
if [ "${1:-}" = --out ]; then out=$2; shift 2; fi
vm_host_out
vm_host_run "${XC_VM_TIMEOUT:-1800}" crosscheck-vm-guest.sh --env XC_BACKEND="${XC_BACKEND:-rbd}" --env XC_ARGS="$*"
if [ -d "$out/vm/crosscheck" ]; then
	rm -rf "$out/crosscheck"
	mv "$out/vm/crosscheck" "$out/crosscheck"
	sed -i "s#/vmout/crosscheck#$out/crosscheck#" "$out/crosscheck/crosscheck.txt" 2>/dev/null || true
fi
if [ -s "$out/crosscheck/crosscheck.txt" ]; then
	cat "$out/crosscheck/crosscheck.txt"
else
	vm_host_no_results 30
fi
exit "$vm_rc"
