#!/bin/bash
# bench/scripts/crosscheck.sh: are bench's figures trustworthy? Measures 4k
# random read and random write at queue depth 16 with bench and with fio,
# alternately in one run, and compares IOPS:
#   raw     bench --target raw on rbd:POOL/IMAGE   vs  fio --ioengine=rbd on the image
#   export  bench --target export on the image     vs  fio --ioengine=nbd against
#                                                      `rbd-nbd-graph export` of the image
#   device  bench --target device on the image     vs  fio --ioengine=libaio --direct=1
#                                                      on `rbd-nbd-graph map` of the image
#           (needs root and kernel NBD: run in the VM, crosscheck-vm.sh)
# Each pair must agree within the tolerance (15%), or the script exits 1.
#
#   bench/scripts/crosscheck.sh [--pairs raw,export] [--rounds N] [--runtime SECS]
#                               [--ramp SECS] [--size SIZE] [--out DIR] [--backend rbd|mem]
#
# The cluster: $CEPH_CONF if set, else a throw-away one from test/ceph/cluster
# in .build/bench/ceph (stopped again at the end). The image is created,
# filled (so reads hit real objects, not librbd's object-map shortcut for
# empty ones) and removed at the end.
# --backend mem (no Ceph needed) checks the plumbing only: on a backend
# that costs nothing the figures compare the clients (our Go client in
# bench against libnbd in fio, or the device paths) rather than bench's
# accounting, so its ratios are printed for information and never fail.
#
# Environment: RBD_NBD_GRAPH_BIN (default bin/rbd-nbd-graph), XC_TOLERANCE
# (default 0.15). Results: OUT/crosscheck.txt (the table), OUT/crosscheck.json,
# OUT/crosscheck.tsv (one line per measurement), OUT/*.log and OUT/*.json
# (each tool's own output).
#
# Why alternate: on a shared 2-core machine load drifts over minutes;
# interleaving bench and fio (and swapping who goes first each round)
# spreads that drift over both instead of biasing one.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin=${RBD_NBD_GRAPH_BIN:-$repo/bin/rbd-nbd-graph}
tol=${XC_TOLERANCE:-0.15}
rounds=3
runtime=8
ramp=2
size=1G
out=$repo/results/crosscheck
backend=rbd
pairs_arg=raw,export
while [ $# -gt 0 ]; do
	case $1 in
	--pairs) pairs_arg=$2; shift 2 ;;
	--rounds) rounds=$2; shift 2 ;;
	--runtime) runtime=$2; shift 2 ;;
	--ramp) ramp=$2; shift 2 ;;
	--size) size=$2; shift 2 ;;
	--out) out=$2; shift 2 ;;
	--backend) backend=$2; shift 2 ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "crosscheck: unknown argument $1 (see --help)" >&2; exit 2 ;;
	esac
done
case $backend in rbd | mem) ;; *) echo "crosscheck: --backend rbd or mem" >&2; exit 2 ;; esac
IFS=, read -r -a pairs <<<"$pairs_arg"
for p in "${pairs[@]}"; do
	case $p in
	raw) [ "$backend" = rbd ] || { echo "crosscheck: the raw pair needs --backend rbd (fio has no engine for mem:)" >&2; exit 2; } ;;
	export) ;;
	device) [ "$(id -u)" = 0 ] || { echo "crosscheck: the device pair needs root" >&2; exit 2; } ;;
	*) echo "crosscheck: unknown pair $p: use raw, export, device" >&2; exit 2 ;;
	esac
done
for tool in fio jq "$bin"; do
	command -v "$tool" >/dev/null || { echo "crosscheck: $tool is missing (make deps build)" >&2; exit 2; }
done
mkdir -p "$out"
out=$(cd "$out" && pwd)
rm -f "$out"/*.log "$out/crosscheck.tsv"

# shellcheck source=bench/scripts/lib.sh
. "$here/lib.sh"
BENCH_LOG_PREFIX=crosscheck
log() { bench_log "$@"; }
bench_init "$repo"

pool=rbd
image=crosscheck-$$
sock=$out/export.sock

if [ "$backend" = rbd ]; then
	bench_cluster
	bench_image "$pool/$image" "$size" "$out/fill.log"
	bench_backend=rbd:$pool/$image
	ceph_flags=(--ceph-conf "$CEPH_CONF")
	# fio's rbd engine gets librbd's settings as rbdio sets them
	# (rbdio/conn.go, default --rbd-cache-policy none), or the
	# raw pair would compare two cache modes rather than two
	# measurements.
	fio_conf=$out/fio-ceph.conf
	{ cat "$CEPH_CONF"; printf '\n[client]\n\trbd_cache = false\n\trbd_cache_writethrough_until_flush = false\n'; } >"$fio_conf"
else
	bench_backend=mem:$size
	ceph_flags=()
fi

common_bench=(--bs 4k --iodepth 16 --connections 1 --runtime "${runtime}s" --ramp "${ramp}s" --json)
common_fio=(--bs=4k --iodepth=16 --numjobs=1 --time_based --runtime="$runtime" --ramp_time="$ramp"
	--norandommap --randrepeat=0 --direct=1 --output-format=json)

# One measurement each; each prints the IOPS. fio writes its JSON with
# --output: the nbd engine prints a line of its own on stdout.
bench_iops() { # TARGET RW TAG
	"$bin" bench --target "$1" --backend "$bench_backend" "${ceph_flags[@]}" --rw "$2" "${common_bench[@]}" \
		>"$out/$3.json" 2>"$out/$3.log"
	jq -r '.results[0].total.iops' "$out/$3.json"
}
fio_rbd_iops() { # RW TAG
	CEPH_CONF=$fio_conf fio --name=xc --ioengine=rbd --clientname=admin --pool="$pool" --rbdname="$image" --rw="$1" \
		"${common_fio[@]}" --output="$out/$2.json" >"$out/$2.log" 2>&1
	jq -r '.jobs[0].read.iops + .jobs[0].write.iops' "$out/$2.json"
}
fio_nbd_iops() { # RW TAG: against a fresh `rbd-nbd-graph export` of the same backend
	rm -f "$sock"
	"$bin" export --socket "$sock" "${ceph_flags[@]}" "$bench_backend" >"$out/$2.export.log" 2>&1 &
	local pid=$!
	local i
	for i in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
	[ -S "$sock" ] || { kill "$pid" 2>/dev/null; wait "$pid" || true; log "export did not start: $(tail -3 "$out/$2.export.log")"; return 1; }
	local rc=0
	fio --name=xc --ioengine=nbd --uri="nbd+unix:///?socket=$sock" --rw="$1" --size="$size" \
		"${common_fio[@]}" --output="$out/$2.json" >"$out/$2.log" 2>&1 || rc=$?
	# The export must be gone before bench opens the image again (RBD's
	# exclusive lock would bounce between the two writers).
	kill -TERM "$pid" 2>/dev/null
	wait "$pid" || true
	[ $rc = 0 ] || { log "fio nbd failed: $(tail -3 "$out/$2.log")"; return 1; }
	jq -r '.jobs[0].read.iops + .jobs[0].write.iops' "$out/$2.json"
}
fio_dev_iops() { # RW TAG: fio libaio, direct IO, on a device mapped by `rbd-nbd-graph map`
	local dev rc=0
	dev=$("$bin" map --log-file "$out/$2.map.log" "${ceph_flags[@]}" "$bench_backend") ||
		{ log "map failed: $(tail -3 "$out/$2.map.log" 2>/dev/null)"; return 1; }
	fio --name=xc --ioengine=libaio --filename="$dev" --rw="$1" \
		"${common_fio[@]}" --output="$out/$2.json" >"$out/$2.log" 2>&1 || rc=$?
	"$bin" unmap "$dev" >>"$out/$2.map.log" 2>&1 || log "unmap $dev failed: see $out/$2.map.log"
	[ $rc = 0 ] || { log "fio libaio failed: $(tail -3 "$out/$2.log")"; return 1; }
	jq -r '.jobs[0].read.iops + .jobs[0].write.iops' "$out/$2.json"
}

measure() { # PAIR RW ROUND TOOL
	local tag="$3-$2-$1-$4" v
	case $1/$4 in
	raw/bench) v=$(bench_iops raw "$2" "$tag") ;;
	raw/fio) v=$(fio_rbd_iops "$2" "$tag") ;;
	export/bench) v=$(bench_iops export "$2" "$tag") ;;
	export/fio) v=$(fio_nbd_iops "$2" "$tag") ;;
	device/bench) v=$(bench_iops device "$2" "$tag") ;;
	device/fio) v=$(fio_dev_iops "$2" "$tag") ;;
	esac
	printf '%s\t%s\t%s\t%s\t%.0f\n' "$2" "$1" "$3" "$4" "$v" >>"$out/crosscheck.tsv"
	log "$(printf 'round %s %-9s %-6s %-5s %8.0f IOPS' "$3" "$2" "$1" "$4" "$v")"
}

for rw in randread randwrite; do
	for ((r = 1; r <= rounds; r++)); do
		for pair in "${pairs[@]}"; do
			# Swap who goes first every round.
			if ((r % 2)); then
				measure "$pair" "$rw" "$r" bench
				measure "$pair" "$rw" "$r" fio
			else
				measure "$pair" "$rw" "$r" fio
				measure "$pair" "$rw" "$r" bench
			fi
		done
	done
done

# Compare the medians over the rounds, per workload and pair (a median
# shrugs off one round disturbed by something else on the machine).
jq -R -s --argjson tol "$tol" --argjson enforce "$([ "$backend" = rbd ] && echo true || echo false)" --arg backend "$bench_backend" --argjson runtime "$runtime" --argjson rounds "$rounds" '
	def median: sort | if length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
	[split("\n")[] | select(length > 0) | split("\t") | {rw: .[0], pair: .[1], round: (.[2] | tonumber), tool: .[3], iops: (.[4] | tonumber)}] as $m
	| [$m | group_by([.rw, .pair])[] | {
		rw: .[0].rw, pair: .[0].pair,
		bench_iops: ([.[] | select(.tool == "bench") | .iops] | median),
		fio_iops: ([.[] | select(.tool == "fio") | .iops] | median),
		bench_rounds: [.[] | select(.tool == "bench") | .iops],
		fio_rounds: [.[] | select(.tool == "fio") | .iops]
	  } | .ratio = (.bench_iops / .fio_iops) | .within = ((.ratio - 1 | fabs) <= $tol)]
	| {schema: "rbd-nbd-graph.crosscheck/v1", backend: $backend, runtime_s: $runtime, rounds: $rounds,
	   tolerance: $tol, enforced: $enforce,
	   fio: {raw: "fio --ioengine=rbd", export: "fio --ioengine=nbd -> rbd-nbd-graph export",
	         device: "fio --ioengine=libaio --direct=1 -> rbd-nbd-graph map"},
	   comparisons: ., pass: ((all(.[]; .within)) or ($enforce | not))}' "$out/crosscheck.tsv" >"$out/crosscheck.json"

{
echo
printf '%-10s %-7s %12s %12s %8s  %s\n' workload pair bench fio ratio verdict
jq -r '.enforced as $enforced | .comparisons[] | [.rw, .pair, (.bench_iops | floor), (.fio_iops | floor), ((.ratio * 1000 | round) / 1000), (if .within then "ok" elif $enforced then "OUT OF TOLERANCE" else "outside (information only: mem)" end)] | @tsv' \
	"$out/crosscheck.json" | while IFS=$'\t' read -r rw pair b f ratio verdict; do
	printf '%-10s %-7s %12s %12s %8s  %s\n' "$rw" "$pair" "$b" "$f" "$ratio" "$verdict"
done
echo "(bench IOPS / fio IOPS, medians over the rounds; 4k, queue depth 16, ${runtime}s x $rounds rounds each, alternating; tolerance ±$(jq -r '.tolerance * 100' "$out/crosscheck.json")%; details in $out)"
} | tee "$out/crosscheck.txt"
jq -e '.pass' "$out/crosscheck.json" >/dev/null
