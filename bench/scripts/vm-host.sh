# shellcheck shell=bash
# bench/scripts/vm-host.sh: the host-side preamble of the VM benchmarks
# (bench/scripts/*-vm.sh). Source it, then:
#
#   vm_host_init NAME DEFAULT_OUT   repo (the checkout), bin (the binary
#                                   under test: RBD_NBD_GRAPH_BIN, else
#                                   bin/rbd-nbd-graph; it must exist), out
#                                   (DEFAULT_OUT under results/)
#   vm_host_out                     make $out (after --out) and absolute
#   vm_host_run TIMEOUT GUEST [test/vm/run options...]
#                                   boot the VM with GUEST as its script,
#                                   console and results in $out/vm, the
#                                   binary passed as RBD_NBD_GRAPH_BIN;
#                                   its exit status in vm_rc
#   vm_host_no_results LINES        say there are no results and show the
#                                   console's last LINES lines

vm_host_init() {
	vm_name=$1
	repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
	out=$repo/results/$2
	bin=${RBD_NBD_GRAPH_BIN:-$repo/bin/rbd-nbd-graph}
	[ -x "$bin" ] || { echo "$vm_name: $bin missing: run make build" >&2; exit 2; }
}

vm_host_out() {
	mkdir -p "$out"
	out=$(cd "$out" && pwd)
}

vm_host_run() {
	local timeout=$1 guest=$2
	shift 2
	vm_rc=0
	"$repo/test/vm/run" --out "$out/vm" --timeout "$timeout" --env RBD_NBD_GRAPH_BIN="$bin" "$@" \
		"$repo/bench/scripts/$guest" || vm_rc=$?
}

vm_host_no_results() {
	echo "$vm_name: no results (exit $vm_rc); the guest's console: $out/vm/console.log" >&2
	tail -n "$1" "$out/vm/console.log" >&2 2>/dev/null || true
}
