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
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
out=$repo/results/crosscheck-vm
if [ "${1:-}" = --out ]; then out=$2; shift 2; fi
bin=${RBD_NBD_GRAPH_BIN:-$repo/bin/rbd-nbd-graph}
[ -x "$bin" ] || { echo "crosscheck-vm: $bin missing: run make build" >&2; exit 2; }
mkdir -p "$out"
out=$(cd "$out" && pwd)
rc=0
"$repo/test/vm/run" --out "$out/vm" --timeout "${XC_VM_TIMEOUT:-1800}" \
	--env RBD_NBD_GRAPH_BIN="$bin" --env XC_BACKEND="${XC_BACKEND:-rbd}" --env XC_ARGS="$*" \
	"$repo/bench/scripts/crosscheck-vm-guest.sh" || rc=$?
if [ -d "$out/vm/crosscheck" ]; then
	rm -rf "$out/crosscheck"
	mv "$out/vm/crosscheck" "$out/crosscheck"
	sed -i "s#/vmout/crosscheck#$out/crosscheck#" "$out/crosscheck/crosscheck.txt" 2>/dev/null || true
fi
if [ -s "$out/crosscheck/crosscheck.txt" ]; then
	cat "$out/crosscheck/crosscheck.txt"
else
	echo "crosscheck-vm: no results (exit $rc); the guest's console: $out/vm/console.log" >&2
	tail -n 30 "$out/vm/console.log" >&2 2>/dev/null || true
fi
exit "$rc"
