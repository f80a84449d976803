#!/bin/bash
# bench/scripts/layers-vm.sh: the graph driver's layer lifecycle against the
# krbd graph driver's way with krbd, in the project's qemu VM (the host kernel has
# neither NBD nor krbd), same boot, same Ceph cluster:
#
#   layer lifecycle   ours: Create + Get + Put of a child layer through the
#                     plugin socket; seed: rbd clone, rbd device map (krbd),
#                     mount, umount, rbd device unmap, each a CLI process
#   container layers  the driver work of one `docker run --rm`: init layer and
#                     container layer created, mounted, released, removed
#   docker run        `docker run --rm IMAGE true` on our driver (the seed
#                     driver cannot run on dockerd 20.10)
#
# The measurements are Go benchmarks (test/e2e/docker_bench_test.go, build
# tag vmtest); this script builds them, boots the VM, runs them and prints
# each figure with the ratio seed/ours. Under TCG everything is CPU bound
# and slow: compare the ratios, not the seconds.
#
#   bench/scripts/layers-vm.sh [--out DIR] [--count N]
#
# Results: DIR (default results/layers-vm)/layers.txt, bench.txt (go test
# -bench output), the VM console in DIR/vm. Environment: RBD_NBD_GRAPH_BIN
# (default bin/rbd-nbd-graph; run make build first), LAYERS_VM_TIMEOUT
# (seconds, default 1800).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
out=$repo/results/layers-vm
count=5
while [ $# -gt 0 ]; do
	case $1 in
	--out) out=$2; shift 2 ;;
	--count) count=$2; shift 2 ;;
	*) echo "layers-vm: unknown argument $1" >&2; exit 2 ;;
	esac
done
bin=${RBD_NBD_GRAPH_BIN:-$repo/bin/rbd-nbd-graph}
[ -x "$bin" ] || { echo "layers-vm: $bin missing: run make build" >&2; exit 2; }
mkdir -p "$out"
out=$(cd "$out" && pwd)
testbin=$repo/.build/e2e-bench.test
(cd "$repo" && CGO_ENABLED=1 "${GO:-go}" test -c -tags 'pacific vmtest' -o "$testbin" ./test/e2e)
rc=0
"$repo/test/vm/run" --out "$out/vm" --timeout "${LAYERS_VM_TIMEOUT:-1800}" \
	--env RBD_NBD_GRAPH_BIN="$bin" --env LAYERS_TEST_BIN="$testbin" --env LAYERS_COUNT="$count" \
	"$repo/bench/scripts/layers-vm-guest.sh" || rc=$?
if [ ! -s "$out/vm/bench.txt" ]; then
	echo "layers-vm: no results (exit $rc); the guest's console: $out/vm/console.log" >&2
	tail -n 40 "$out/vm/console.log" >&2 2>/dev/null || true
	[ "$rc" != 0 ] || rc=1
	exit "$rc"
fi
cp "$out/vm/bench.txt" "$out/bench.txt"
# Benchmark lines: "BenchmarkX/sub-2   5   1234567 ns/op".
awk '
	/^Benchmark/ && / ns\/op/ {
		name = $1; sub(/-[0-9]+$/, "", name); sub(/^Benchmark/, "", name)
		for (i = 2; i <= NF; i++) if ($(i+1) == "ns/op") ns[name] = $i
	}
	function s(x) { return sprintf("%8.2f s", x / 1e9) }
	function row(what, group) {
		o = ns[group "/ours"]; d = ns[group "/seed-krbd"]
		if (o == "" || d == "") { printf "%-38s missing (see bench.txt)\n", what; return }
		printf "%-38s ours %s   seed (krbd CLI) %s   seed/ours %.1fx\n", what, s(o), s(d), d / o
	}
	END {
		print "Layer lifecycle, ours vs the krbd graph driver'"'"'s way, same VM boot (mean per run; TCG: compare ratios)"
		row("Create+Get+Put of a child layer", "LayerLifecycle")
		row("driver work of one docker run --rm", "ContainerLayers")
		if (ns["DockerRunTrue"] != "") printf "%-38s ours %s\n", "docker run --rm busybox true", s(ns["DockerRunTrue"])
	}' "$out/bench.txt" | tee "$out/layers.txt"
exit "$rc"
