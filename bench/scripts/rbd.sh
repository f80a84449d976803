#!/bin/bash
# bench/scripts/rbd.sh: how close does `rbd-nbd-graph export rbd:` get to
# raw librbd? 4k random read and random write at queue depth 16 on one
# RBD image (--iodepth sets another depth), three ways, alternated and
# repeated in one run:
#   raw       fio --ioengine=rbd (librbd straight from fio: the ceiling)
#   ours      fio --ioengine=nbd -> `rbd-nbd-graph export rbd:POOL/IMG`
#   qemu-nbd  fio --ioengine=nbd -> qemu-nbd exporting the same image
#             (-f raw -t --cache=none --aio=threads rbd:POOL/IMG:conf=CONF)
# Each ratio is median(ours) / median(raw) over the rounds (bar: 0.85);
# qemu-nbd / raw is reported beside it, and the latency each path adds to
# raw's (median of the rounds' fio completion latency p50 and p99, in µs:
# at --iodepth 1 this is the export's cost per request as an application
# feels it). Prints every ratio and ends with the smallest ours/raw; exits
# 1 if it is below the bar.
#
#   bench/scripts/rbd.sh [--rounds N] [--runtime SECS] [--size SIZE] [--iodepth N] [--cache-policy P] [--out DIR]
#
# Environment: RBD_NBD_GRAPH_BIN (default bin/rbd-nbd-graph); CEPH_CONF
# (a running cluster; without it one is started in .build/bench/ceph and
# stopped at exit). Results: OUT/rbd.tsv (one line per measurement),
# OUT/*.json and *.log (the tools' output).
#
# librbd settings are the same for all three, so the ratios compare the
# paths, not two cache modes: the export runs with --rbd-cache-policy
# POLICY (default none: librbd's cache off, a write acknowledged once the
# OSDs have it, the driver's default; writethrough keeps the cache for
# reads; writeback or writearound acknowledge from the cache) and
# rbd_non_blocking_aio=false (rbdio/conn.go, rbdio/doc.go); fio's rbd
# engine and qemu-nbd get a ceph.conf with the same [client] settings,
# and qemu-nbd runs with --cache=none for POLICY none and
# --cache=writeback otherwise (qemu sets rbd_cache from its cache mode).
# The load average is printed at the start, after each round and at the
# end: on a shared machine read the ratios with it.
#
# Only one client holds the image at a time: every export (ours, then
# qemu-nbd) is started for its measurement and stopped before the next,
# so fio's rbd engine never competes with an export for the exclusive
# lock, and each measurement starts from the same state. The order of
# the three rotates every round, so load drifting on a shared machine
# spreads over all of them. The image is written in full first, so reads
# hit real objects.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin=${RBD_NBD_GRAPH_BIN:-$repo/bin/rbd-nbd-graph}
rounds=5
runtime=5
size=512M
out=$repo/results/rbd
bar=0.85
policy=none
iodepth=16
while [ $# -gt 0 ]; do
	case $1 in
	--rounds) rounds=$2; shift 2 ;;
	--runtime) runtime=$2; shift 2 ;;
	--size) size=$2; shift 2 ;;
	--iodepth) iodepth=$2; shift 2 ;;
	--cache-policy) policy=$2; shift 2 ;;
	--out) out=$2; shift 2 ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "rbd.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
	esac
done
for tool in fio qemu-nbd jq rbd; do
	command -v $tool >/dev/null || { echo "rbd.sh: $tool not found (run make deps)" >&2; exit 1; }
done
fio --enghelp=rbd >/dev/null 2>&1 || { echo "rbd.sh: this fio has no rbd engine" >&2; exit 1; }
[ -x "$bin" ] || { echo "rbd.sh: $bin not built (run make build)" >&2; exit 1; }

BENCH_LOG_PREFIX=rbd.sh
# shellcheck source=bench/scripts/lib.sh
. "$here/lib.sh"
bench_init "$repo"
mkdir -p "$out"
: >"$out/rbd.tsv"
work=$(mktemp -d /dev/shm/rbd-nbd-graph-rbd.XXXXXX)
bench_cleanup_steps+=("rm -rf '$work'")
server=""
stop_server() {
	if [ -n "$server" ]; then
		kill -TERM "$server" 2>/dev/null || true
		wait "$server" 2>/dev/null || true
		server=""
	fi
}
bench_cleanup_steps+=("stop_server")

bench_cluster
# The [client] settings rbdio applies (rbdio/conn.go), for fio's rbd
# engine and qemu-nbd.
client_conf=$work/client.conf
case $policy in
none) cache_conf='rbd_cache = false' qemu_cache=none ;;
writethrough | writeback | writearound) cache_conf="rbd_cache_policy = $policy" qemu_cache=writeback ;;
*) echo "rbd.sh: --cache-policy $policy: use none, writethrough, writeback or writearound" >&2; exit 2 ;;
esac
{ cat "$CEPH_CONF"; printf '\n[client]\n\t%s\n\trbd_cache_writethrough_until_flush = false\n\trbd_non_blocking_aio = false\n' "$cache_conf"; } >"$client_conf"
pool=rbd
img=rbd-sh-$$-$RANDOM
bench_image "$pool/$img" "$size" "$out/fill.log"

# start_server NAME CMD...: runs an export in the background and waits
# for its socket $work/NAME.sock.
start_server() {
	local name=$1
	shift
	rm -f "$work/$name.sock"
	"$@" >>"$out/$name.log" 2>&1 &
	server=$!
	for _ in $(seq 300); do
		[ -S "$work/$name.sock" ] && return 0
		kill -0 "$server" 2>/dev/null || break
		sleep 0.1
	done
	echo "rbd.sh: $name did not start; its log:" >&2
	cat "$out/$name.log" >&2
	exit 1
}

# run_fio NAME RW ENGINE-ARGS...: one fio run; sets iops, p50 and p99
# (completion latency, µs). (No command
# substitution here or in measure: a server started in a subshell would
# escape the cleanup.)
iops=0 p50=0 p99=0
run_fio() {
	local name=$1 rw=$2 json dir=read
	shift 2
	json=$out/fio-$name-$rw-$round.json
	fio --name=t "$@" --rw="$rw" --bs=4k --iodepth="$iodepth" \
		--size="$size" --time_based --runtime="$runtime" --ramp_time=1 \
		--randrepeat=0 --norandommap --output-format=json --output="$json" >/dev/null
	[ "$rw" = randwrite ] && dir=write
	iops=$(jq ".jobs[0].$dir.iops | floor" "$json")
	p50=$(jq ".jobs[0].$dir.clat_ns.percentile[\"50.000000\"] / 1000 | floor" "$json")
	p99=$(jq ".jobs[0].$dir.clat_ns.percentile[\"99.000000\"] / 1000 | floor" "$json")
}

# measure WHO RW: one measurement of raw, ours or qemu-nbd; sets iops.
measure() {
	local who=$1 rw=$2
	case $who in
	raw)
		CEPH_CONF=$client_conf run_fio raw "$rw" --ioengine=rbd --clientname=admin --pool="$pool" --rbdname="$img"
		;;
	ours)
		start_server ours "$bin" export --socket "$work/ours.sock" --rbd-cache-policy "$policy" "rbd:$pool/$img"
		run_fio ours "$rw" --ioengine=nbd --uri="nbd+unix:///?socket=$work/ours.sock"
		stop_server
		;;
	qemu-nbd)
		start_server qemu-nbd qemu-nbd -f raw --socket="$work/qemu-nbd.sock" -t --cache="$qemu_cache" --aio=threads \
			"rbd:$pool/$img:conf=$client_conf"
		run_fio qemu-nbd "$rw" --ioengine=nbd --uri="nbd+unix:///?socket=$work/qemu-nbd.sock"
		stop_server
		;;
	esac
}

median() { sort -n | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
# med RW WHO [COLUMN]: the median of a tsv column (4 IOPS, 5 p50, 6 p99).
med() { awk -F'\t' -v w="$1" -v s="$2" -v c="${3:-4}" '$1==w && $2==s {print $c}' "$out/rbd.tsv" | median; }

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
echo "rbd.sh: $rounds rounds of ${runtime}s per path and workload, image $pool/$img ($size), rbd_cache_policy $policy, $(fio --version), $(rbd --version | cut -d' ' -f1-3), $(nproc) CPUs, load average $(loadavg)"
order=(raw ours qemu-nbd)
for round in $(seq "$rounds"); do
	for rw in randread randwrite; do
		for who in "${order[@]}"; do
			measure "$who" "$rw"
			printf '%s\t%s\t%d\t%s\t%s\t%s\n' "$rw" "$who" "$round" "$iops" "$p50" "$p99" >>"$out/rbd.tsv"
		done
	done
	order=("${order[@]:1}" "${order[0]}")
	echo "rbd.sh: round $round of $rounds done, load average $(loadavg)"
done

smallest=""
for rw in randread randwrite; do
	raw=$(med "$rw" raw)
	ours=$(med "$rw" ours)
	qemu=$(med "$rw" qemu-nbd)
	r_ours=$(awk -v a="$ours" -v b="$raw" 'BEGIN {printf "%.2f", (b > 0) ? a / b : 0}')
	r_qemu=$(awk -v a="$qemu" -v b="$raw" 'BEGIN {printf "%.2f", (b > 0) ? a / b : 0}')
	verdict=ok
	awk -v r="$r_ours" -v bar="$bar" 'BEGIN {exit !(r >= bar)}' || verdict="BELOW BAR"
	printf '%-9s 4k qd%s: raw %7.0f IOPS  ours %7.0f (%s of raw, bar %s) %s  qemu-nbd %7.0f (%s of raw)\n' \
		"$rw" "$iodepth" "$raw" "$ours" "$r_ours" "$bar" "$verdict" "$qemu" "$r_qemu"
	for q in 5:p50 6:p99; do
		col=${q%%:*}
		l_raw=$(med "$rw" raw "$col") l_ours=$(med "$rw" ours "$col") l_qemu=$(med "$rw" qemu-nbd "$col")
		printf '%-9s 4k qd%s %s latency: raw %6.0f us, ours %6.0f (%+.0f), qemu-nbd %6.0f (%+.0f)\n' "$rw" "$iodepth" "${q#*:}" \
			"$l_raw" "$l_ours" "$(awk -v a="$l_ours" -v b="$l_raw" 'BEGIN {print a - b}')" \
			"$l_qemu" "$(awk -v a="$l_qemu" -v b="$l_raw" 'BEGIN {print a - b}')"
	done
	if [ -z "$smallest" ] || awk -v a="$r_ours" -v b="${smallest%% *}" 'BEGIN {exit !(a < b)}'; then
		smallest="$r_ours $rw"
	fi
done
echo "load average at the end: $(loadavg)"
echo "smallest ours/raw ratio: ${smallest%% *} (${smallest#* }, bar $bar)"
if ! awk -v r="${smallest%% *}" -v bar="$bar" 'BEGIN {exit !(r >= bar)}'; then
	echo "rbd.sh: below the bar (measurements: $out/rbd.tsv)" >&2
	exit 1
fi
