#!/bin/bash
# bench/scripts/vm.sh: the kernel-path benchmark, in one boot of
# the project's qemu VM: the same filled RBD image mapped three ways one
# after another -- rbd-nbd-graph, Debian's rbd-nbd, krbd -- and fio
# (libaio, direct) on each: 4 KiB random read and write at queue depth 1
# and 32, 1 MiB sequential read and write at queue depth 4, repeated with
# the order of the paths rotated each round.
#
#   bench/scripts/vm.sh [--out DIR]        (make bench-vm)
#
# Writes DIR/bench-vm.json (every measurement, the medians, the ratios)
# and DIR/bench-vm.md (the table), and prints the table with ours/rbd-nbd
# ratios against the bars: >= 1.2x on 4 KiB random read and write at queue
# depth 32, >= 1.0x on the sequential runs. Under TCG every path is CPU
# bound and slow, and the machine is shared: compare ratios from one run,
# never absolute IOPS.
#
# Environment: RBD_NBD_GRAPH_BIN (default bin/rbd-nbd-graph), BENCH_ROUNDS,
# BENCH_RUNTIME, BENCH_SIZE, BENCH_OURS_FLAGS, BENCH_PATHS, BENCH_CACHE_POLICY (see
# vm-guest.sh), BENCH_VM_TIMEOUT (seconds, default 3600).
set -euo pipefail
# shellcheck source=bench/scripts/vm-host.sh
. "$(dirname "${BASH_SOURCE[0]}")/vm-host.sh"
vm_host_init bench-vm bench-vm
if [ "${1:-}" = --out ]; then out=$2; shift 2; fi
vm_host_out

envs=()
for v in BENCH_ROUNDS BENCH_RUNTIME BENCH_SIZE BENCH_OURS_FLAGS BENCH_PATHS BENCH_CEPH_CLUSTER BENCH_CACHE_POLICY; do
	[ -n "${!v:-}" ] && envs+=(--env "$v=${!v}")
done
vm_host_run "${BENCH_VM_TIMEOUT:-3600}" vm-guest.sh --verbose "${envs[@]}"
raw=$out/vm/bench.jsonl
[ -s "$raw" ] || { vm_host_no_results 30; exit 1; }

# Medians per path and workload, ratios ours/rbd-nbd, bars.
jq -s '
	def median: sort | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor]
		else (.[length / 2 - 1] + .[length / 2]) / 2 end;
	def bar($w): if ($w | test("^rand(read|write)-4k-qd32$")) then 1.2
		elif ($w | test("^(read|write)-1m-qd4$")) then 1.0 else null end;
	(map(select(.error == null))) as $ok
	| ($ok | map(.workload) | unique) as $ws
	| {
		runs: .,
		errors: map(select(.error != null)),
		table: [ $ws[] as $w | {
			workload: $w,
			ours: ($ok | map(select(.workload == $w and .path == "ours") | .iops) | median),
			"rbd-nbd": ($ok | map(select(.workload == $w and .path == "rbd-nbd") | .iops) | median),
			krbd: ($ok | map(select(.workload == $w and .path == "krbd") | .iops) | median),
			ours_mib_s: ($ok | map(select(.workload == $w and .path == "ours") | .bw_bytes / 1048576) | median),
			bar: bar($w)
		} | .ratio = (if .ours != null and .["rbd-nbd"] != null and .["rbd-nbd"] > 0 then .ours / .["rbd-nbd"] else null end)
		  | .meets_bar = (if .bar == null or .ratio == null then null else .ratio >= .bar end) ]
	}' "$raw" > "$out/bench-vm.json"

{
	echo "# rbd-nbd-graph vs rbd-nbd vs krbd (qemu TCG guest, $(jq -r '[.runs[].round] | max' "$out/bench-vm.json") rounds, median IOPS)"
	echo
	echo "| workload | ours | rbd-nbd | krbd | ours/rbd-nbd | bar | met |"
	echo "| --- | ---: | ---: | ---: | ---: | ---: | --- |"
	jq -r '.table[] | "| \(.workload) | \(.ours // "-" | if type == "number" then floor else . end) | \(.["rbd-nbd"] // "-" | if type == "number" then floor else . end) | \(.krbd // "-" | if type == "number" then floor else . end) | \(if .ratio then (.ratio * 100 | round / 100 | tostring) + "x" else "-" end) | \(if .bar then (.bar | tostring) + "x" else "" end) | \(if .meets_bar == null then "" elif .meets_bar then "yes" else "NO" end) |"' "$out/bench-vm.json"
	errs=$(jq -r '.errors[] | "- round \(.round) \(.path): \(.error)"' "$out/bench-vm.json")
	if [ -n "$errs" ]; then echo; echo "Errors:"; echo "$errs"; fi
} > "$out/bench-vm.md"
echo
cat "$out/bench-vm.md"
echo
echo "bench-vm: results in $out/bench-vm.json and $out/bench-vm.md"
if jq -e '[.table[] | select(.meets_bar == false)] | length > 0' "$out/bench-vm.json" >/dev/null; then
	echo "bench-vm: ours/rbd-nbd is below a bar (see 'met'); timings under TCG on a shared machine are noisy: rerun on a quiet one" >&2
fi
exit "$vm_rc"
