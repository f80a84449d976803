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

# The whole-containers benchmark (containers-vm.sh) inside another
# benchmark's boot (make bench-vm: vm.sh and vm-guest.sh), unless
# BENCH_CONTAINERS=0:
#
#   vm_host_containers_env      build its test binary and the krbd plugin;
#                               containers_envs (test/vm/run options for
#                               the guest) and containers_timeout (seconds
#                               to add to the VM's)
#   vm_host_containers_report   copy and print its tables from $out/vm

vm_host_containers_env() {
	# shellcheck disable=SC2034 # both read by the sourcing script
	containers_envs=() containers_timeout=0
	[ "${BENCH_CONTAINERS:-1}" = 1 ] || return 0
	local testbin=$repo/.build/e2e-containers-bench.test krbdbin=$repo/.build/krbdplugin
	(cd "$repo" && CGO_ENABLED=1 "${GO:-go}" test -c -tags 'pacific vmtest' -o "$testbin" ./test/e2e &&
		CGO_ENABLED=1 "${GO:-go}" build -tags pacific -o "$krbdbin" ./test/krbdplugin)
	# shellcheck disable=SC2034
	containers_envs=(--env CONTAINERS_TEST_BIN="$testbin" --env E2E_KRBD_PLUGIN_BIN="$krbdbin"
		--env E2E_CONTAINERS_ROUNDS="${CONTAINERS_ROUNDS:-3}" --env E2E_CONTAINERS_SETUPS="${CONTAINERS_SETUPS:-}"
		--env E2E_CONTAINERS_IMPORT_MIB="${CONTAINERS_IMPORT_MIB:-100}")
	# shellcheck disable=SC2034
	containers_timeout=5400
}

vm_host_containers_report() {
	[ "${BENCH_CONTAINERS:-1}" = 1 ] || return 0
	if [ ! -s "$out/vm/containers.md" ]; then
		echo "$vm_name: no whole-containers results (see $out/vm/containers-bench.log)" >&2
		return 0
	fi
	cp "$out/vm/containers.md" "$out/vm/containers.jsonl" "$out/"
	echo
	cat "$out/containers.md"
}
