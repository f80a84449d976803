#!/bin/bash
# bench/scripts/sweep.sh: the short sweep `make bench` runs on the local
# Ceph cluster: `bench sweep` of 4k random read and random write through
# the export target (our NBD server and client over a socket, librbd
# underneath) over queue depths 1..32 and 1, 2, 4 connections. Leaves
# sweep-TARGET-RW.svg, .json (and .png with rsvg-convert) in OUT and prints
# the tables and the recommendations; driver options are recommended only
# from --target device (a kernel with NBD: bench/scripts/sweep-vm.sh).
#
#   bench/scripts/sweep.sh [--out DIR] [--target export|raw|device] [--runtime 2s]
#                          [--ramp 1s] [--size 1G] [--p99-budget 10ms]
#
# The cluster: $CEPH_CONF if set, else the one in .build/bench/ceph
# (started, and stopped at the end, when not already running). The image
# is created, filled and removed at the end. Environment:
# RBD_NBD_GRAPH_BIN (default bin/rbd-nbd-graph).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin=${RBD_NBD_GRAPH_BIN:-$repo/bin/rbd-nbd-graph}
out=$repo/results/sweep
target=export
runtime=2s
ramp=1s
size=1G
budget=10ms
while [ $# -gt 0 ]; do
	case $1 in
	--out) out=$2; shift 2 ;;
	--target) target=$2; shift 2 ;;
	--runtime) runtime=$2; shift 2 ;;
	--ramp) ramp=$2; shift 2 ;;
	--size) size=$2; shift 2 ;;
	--p99-budget) budget=$2; shift 2 ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "sweep: unknown argument $1 (see --help)" >&2; exit 2 ;;
	esac
done
for tool in fio "$bin"; do
	command -v "$tool" >/dev/null || { echo "sweep: $tool is missing (make deps build)" >&2; exit 2; }
done
mkdir -p "$out"
out=$(cd "$out" && pwd)

# shellcheck source=bench/scripts/lib.sh
. "$here/lib.sh"
BENCH_LOG_PREFIX=sweep
bench_init "$repo"
bench_cluster
image=rbd/sweep-$$
bench_image "$image" "$size" "$out/fill.log"

conns=1,2,4
[ "$target" = raw ] && conns=1
for rw in randread randwrite; do
	echo "== $target, $rw, 4k =="
	"$bin" bench sweep --target "$target" --backend "rbd:$image" --ceph-conf "$CEPH_CONF" --rw "$rw" --bs 4k \
		--iodepth 1,2,4,8,16,32 --connections "$conns" --runtime "$runtime" --ramp "$ramp" \
		--p99-budget "$budget" --out "$out"
	# A PNG beside the SVG, for viewers without SVG support.
	if command -v rsvg-convert >/dev/null; then
		rsvg-convert -o "$out/sweep-$target-$rw.png" "$out/sweep-$target-$rw.svg"
	fi
	echo
done
