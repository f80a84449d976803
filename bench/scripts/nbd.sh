#!/bin/bash
# bench/scripts/nbd.sh: is our NBD server fast? fio's nbd engine, 4k
# random IO at queue depth 16, against our export and a reference server
# in the same run, alternated and repeated; each ratio is median(ours) /
# median(theirs) over the rounds:
#   mem   randread, randwrite: `rbd-nbd-graph export mem:` vs `nbdkit memory`
#                              (bar: ours >= 1.2x)
#   file  randread:            `rbd-nbd-graph export file:` vs
#                              `qemu-nbd --cache=none --aio=threads`, the
#                              same file on /dev/shm (bar: ours >= 1.0x)
# Prints every ratio and ends with the smallest; exits 1 if a bar is missed.
#
#   bench/scripts/nbd.sh [--rounds N] [--runtime SECS] [--size SIZE] [--out DIR]
#
# Environment: RBD_NBD_GRAPH_BIN (default bin/rbd-nbd-graph). Results:
# OUT/nbd.tsv (one line per measurement) and OUT/*.log (the tools' output).
#
# Why alternate: on a shared 2-core machine load drifts over minutes;
# interleaving the servers (and swapping who goes first each round)
# spreads that drift over both instead of biasing one. Every server is
# filled with data first, so reads hit allocated memory, not holes.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin=${RBD_NBD_GRAPH_BIN:-$repo/bin/rbd-nbd-graph}
rounds=5
runtime=5
size=512M
out=$repo/results/nbd
while [ $# -gt 0 ]; do
	case $1 in
	--rounds) rounds=$2; shift 2 ;;
	--runtime) runtime=$2; shift 2 ;;
	--size) size=$2; shift 2 ;;
	--out) out=$2; shift 2 ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "nbd.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
	esac
done
for tool in fio nbdkit qemu-nbd jq; do
	command -v $tool >/dev/null || { echo "nbd.sh: $tool not found (run make deps)" >&2; exit 1; }
done
[ -x "$bin" ] || { echo "nbd.sh: $bin not built (run make build)" >&2; exit 1; }

mkdir -p "$out"
: >"$out/nbd.tsv"
# Sockets and the shared file live on /dev/shm: the file backend test is
# about the server, not the disk.
work=$(mktemp -d /dev/shm/rbd-nbd-graph-bench.XXXXXX)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

# start NAME CMD...: runs a server in the background, waits for its
# socket $work/NAME.sock.
start() {
	local name=$1; shift
	"$@" >"$out/$name.log" 2>&1 &
	pids+=($!)
	for _ in $(seq 100); do
		[ -S "$work/$name.sock" ] && return 0
		kill -0 $! 2>/dev/null || break
		sleep 0.1
	done
	echo "nbd.sh: $name did not start; its log:" >&2
	cat "$out/$name.log" >&2
	exit 1
}

uri() { echo "nbd+unix:///?socket=$work/$1.sock"; }

# fill NAME: writes the whole export once (sequential 1M writes).
fill() {
	fio --name=fill --ioengine=nbd --uri="$(uri "$1")" --rw=write --bs=1M --iodepth=4 \
		--size="$size" --output="$out/fill-$1.log" >/dev/null
}

# measure NAME RW: one fio run; prints its IOPS.
measure() {
	local name=$1 rw=$2 json
	json=$out/fio-$name-$rw.json
	fio --name=t --ioengine=nbd --uri="$(uri "$name")" --rw="$rw" --bs=4k --iodepth=16 \
		--size="$size" --time_based --runtime="$runtime" --ramp_time=1 \
		--randrepeat=0 --norandommap --output-format=json --output="$json" >/dev/null
	local dir=read
	[ "$rw" = randwrite ] && dir=write
	jq ".jobs[0].$dir.iops | floor" "$json"
}

median() { sort -n | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }

# compare LABEL RW OURS THEIRS BAR: alternated rounds, then the ratio.
ratios=()
compare() {
	local label=$1 rw=$2 ours=$3 theirs=$4 bar=$5 r a b first second
	for r in $(seq "$rounds"); do
		first=$ours second=$theirs
		if [ $((r % 2)) -eq 0 ]; then first=$theirs second=$ours; fi
		for s in $first $second; do
			printf '%s\t%s\t%s\t%d\t%s\n' "$label" "$rw" "$s" "$r" "$(measure "$s" "$rw")" >>"$out/nbd.tsv"
		done
	done
	a=$(awk -F'\t' -v l="$label" -v w="$rw" -v s="$ours" '$1==l && $2==w && $3==s {print $5}' "$out/nbd.tsv" | median)
	b=$(awk -F'\t' -v l="$label" -v w="$rw" -v s="$theirs" '$1==l && $2==w && $3==s {print $5}' "$out/nbd.tsv" | median)
	local ratio
	ratio=$(awk -v a="$a" -v b="$b" 'BEGIN {printf "%.2f", (b > 0) ? a / b : 0}')
	local verdict=ok
	awk -v r="$ratio" -v bar="$bar" 'BEGIN {exit !(r >= bar)}' || verdict="BELOW BAR"
	printf '%-5s %-9s 4k qd16: %-6s %8.0f IOPS  %-8s %8.0f IOPS  ratio %s (bar %s) %s\n' \
		"$label" "$rw" "$ours" "$a" "$theirs" "$b" "$ratio" "$bar" "$verdict"
	ratios+=("$ratio $bar $label $rw vs $theirs")
}

echo "nbd.sh: $rounds rounds of ${runtime}s per server and workload, size $size, fio $(fio --version)"

start ours "$bin" export --socket "$work/ours.sock" "mem:$size"
start nbdkit nbdkit -U "$work/nbdkit.sock" -f --threads=16 memory "$size"
fill ours
fill nbdkit
compare mem randread ours nbdkit 1.2
compare mem randwrite ours nbdkit 1.2

img=$work/disk.img
fio --name=mkfile --filename="$img" --rw=write --bs=1M --size="$size" --output="$out/mkfile.log" >/dev/null
start oursfile "$bin" export --socket "$work/oursfile.sock" --read-only "file:$img"
start qemu-nbd qemu-nbd -f raw --socket="$work/qemu-nbd.sock" -t --cache=none --aio=threads --read-only "$img"
compare file randread oursfile qemu-nbd 1.0

smallest=$(printf '%s\n' "${ratios[@]}" | sort -n | head -1)
set -- $smallest
echo "smallest ratio: $1 (bar $2: $3 $4 $5 $6)"
below=0
for r in "${ratios[@]}"; do
	set -- $r
	awk -v r="$1" -v bar="$2" 'BEGIN {exit !(r >= bar)}' || below=1
done
if [ $below -ne 0 ]; then
	echo "nbd.sh: a ratio is below its bar (measurements: $out/nbd.tsv)" >&2
	exit 1
fi
