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
# ratios against the bars: >= 1.1x on the 1 MiB sequential runs, >= 1.0x
# on every other workload. Under TCG every path is CPU
# bound and slow, and the machine is shared: compare ratios from one run,
# never absolute IOPS.
#
# Beside IOPS, each server's CPU per IO (the serving process, all its
# threads, user + system, over the measured run) and the completion
# latency's p50 and p99, medians over the rounds.
#
# Environment: RBD_NBD_GRAPH_BIN (default bin/rbd-nbd-graph), BENCH_ROUNDS,
# BENCH_WORKLOADS, BENCH_RUNTIME, BENCH_SIZE, BENCH_OURS_FLAGS, BENCH_ALT_FLAGS, BENCH_ALT_ENV, BENCH_PATHS, BENCH_CACHE_POLICY (see
# vm-guest.sh), BENCH_VM_TIMEOUT (seconds, default 3600).
set -euo pipefail
# shellcheck source=bench/scripts/vm-host.sh
. "$(dirname "${BASH_SOURCE[0]}")/vm-host.sh"
vm_host_init bench-vm bench-vm
if [ "${1:-}" = --out ]; then out=$2; shift 2; fi
vm_host_out

envs=()
for v in BENCH_ROUNDS BENCH_WORKLOADS BENCH_RUNTIME BENCH_SIZE BENCH_OURS_FLAGS BENCH_ALT_FLAGS BENCH_ALT_ENV BENCH_PATHS BENCH_CEPH_CLUSTER BENCH_CACHE_POLICY; do
	[ -n "${!v:-}" ] && envs+=(--env "$v=${!v}")
done
vm_host_containers_env # whole containers in the same boot (BENCH_CONTAINERS=0: not)
vm_host_run $((${BENCH_VM_TIMEOUT:-3600} + containers_timeout)) vm-guest.sh --verbose "${envs[@]}" "${containers_envs[@]}"
raw=$out/vm/bench.jsonl
[ -s "$raw" ] || { vm_host_no_results 30; exit 1; }

# Medians per path and workload, ratios ours/rbd-nbd, bars.
jq -s '
	def median: map(select(. != null)) | sort | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor]
		else (.[length / 2 - 1] + .[length / 2]) / 2 end;
	def bar($w): if ($w | test("^(read|write)-1m-qd4$")) then 1.1 else 1.0 end;
	def ratio($a; $b): if $a != null and $b != null and $b > 0 then $a / $b else null end;
	(map(select(.error == null))) as $ok
	| ($ok | map(.workload) | unique) as $ws
	| ($ok | map(.path) | unique) as $ps
	| def med($w; $p; f): $ok | map(select(.workload == $w and .path == $p) | f) | median;
	# Per round, ours against rbd-nbd in the same round: f of each, divided.
	def per_round($w; f): [ $ok | map(select(.workload == $w)) | group_by(.round)[]
		| (map(select(.path == "ours"))[0] | f) as $a | (map(select(.path == "rbd-nbd"))[0] | f) as $b
		| ratio($a; $b) | select(. != null) ];
	{
		runs: .,
		errors: map(select(.error != null)),
		table: [ $ws[] as $w | {
			workload: $w,
			iops: ([ $ps[] as $p | {key: $p, value: med($w; $p; .iops)} ] | from_entries),
			cpu_us_per_io: ([ $ps[] as $p | {key: $p, value: med($w; $p; .cpu_us_per_io)} ] | from_entries),
			p50_us: ([ $ps[] as $p | {key: $p, value: med($w; $p; .p50_us)} ] | from_entries),
			p99_us: ([ $ps[] as $p | {key: $p, value: med($w; $p; .p99_us)} ] | from_entries),
			ours_mib_s: med($w; "ours"; .bw_bytes / 1048576),
			round_ratios: per_round($w; .iops),
			osd_norm_ratios: per_round($w; if .iops == null or .osd_cpu_us_per_io == null then null else .iops * .osd_cpu_us_per_io end),
			bar: bar($w)
		} | .ratio = ratio(.iops.ours; .iops["rbd-nbd"])
		  | .alt_ratio = ratio(.iops["ours-alt"]; .iops["rbd-nbd"])
		  | .cpu_ratio = ratio(.cpu_us_per_io.ours; .cpu_us_per_io["rbd-nbd"])
		  | .round_ratio = (.round_ratios | median)
		  | .osd_norm_ratio = (.osd_norm_ratios | median)
		  | .meets_bar = (if .bar == null or .ratio == null then null else .ratio >= .bar end) ]
	}' "$raw" > "$out/bench-vm.json"

{
	echo "# rbd-nbd-graph vs rbd-nbd vs krbd (qemu TCG guest, $(jq -r '[.runs[].round] | max' "$out/bench-vm.json") rounds, medians)"
	echo
	echo "IOPS; ours/rbd-nbd; server CPU per IO in µs (ours, rbd-nbd; krbd's is in the kernel); p50/p99 completion latency in µs."
	echo
	echo "| workload | ours | ours-alt | rbd-nbd | krbd | ours/rbd-nbd | alt/rbd-nbd | bar | met | CPU/IO ours | CPU/IO rbd-nbd | CPU ratio | p50 ours | p50 rbd-nbd | p99 ours | p99 rbd-nbd |"
	echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
	jq -r '
		def n: if type == "number" then floor | tostring else "-" end;
		def x: if type == "number" then (. * 100 | round / 100 | tostring) + "x" else "-" end;
		.table[] | "| \(.workload) | \(.iops.ours | n) | \(.iops["ours-alt"] | n) | \(.iops["rbd-nbd"] | n) | \(.iops.krbd | n) | \(.ratio | x) | \(.alt_ratio | x) | \(if .bar then (.bar | tostring) + "x" else "" end) | \(if .meets_bar == null then "" elif .meets_bar then "yes" else "NO" end) | \(.cpu_us_per_io.ours | n) | \(.cpu_us_per_io["rbd-nbd"] | n) | \(.cpu_ratio | x) | \(.p50_us.ours | n) | \(.p50_us["rbd-nbd"] | n) | \(.p99_us.ours | n) | \(.p99_us["rbd-nbd"] | n) |"' "$out/bench-vm.json"
	echo
	echo "Ours/rbd-nbd round by round (the two ran minutes apart in each round): the IOPS ratio of each round"
	echo "and their median; then the same with each side's IOPS multiplied by the OSD's CPU per IO in its run"
	echo "(the OSD's share of a CPU: it does the same work per IO on every path, so this cancels the guest's"
	echo "speed, which under TCG changes by tens of per cent between runs, but also any slowdown a path"
	echo "causes by using more CPU itself: a diagnostic of the path's latency, not a replacement for the ratio):"
	echo
	echo "| workload | IOPS ratio per round | median | rounds >= 1.0 | OSD-normalised per round | median |"
	echo "| --- | --- | ---: | ---: | --- | ---: |"
	jq -r '
		def x: if type == "number" then (. * 100 | round / 100 | tostring) + "x" else "-" end;
		def l: map(. * 100 | round / 100 | tostring) | join(", ");
		.table[] | select(.round_ratios | length > 0)
		| "| \(.workload) | \(.round_ratios | l) | \(.round_ratio | x) | \(.round_ratios | map(select(. >= 1)) | length) of \(.round_ratios | length) | \(.osd_norm_ratios | l) | \(.osd_norm_ratio | x) |"' "$out/bench-vm.json"
	echo
	echo "Per round (IOPS, CPU µs/IO):"
	echo
	jq -r '.runs | map(select(.error == null)) | sort_by(.workload, .round, .path)[] | "- \(.workload) round \(.round) \(.path): \(.iops | floor) IOPS, \(.cpu_us_per_io // "-" | if type == "number" then floor else . end) µs/IO, p50 \(.p50_us | floor) µs"' "$out/bench-vm.json"
	echo
	echo "Server CPU per IO by thread name (µs and context switches per IO, voluntary+involuntary, medians over the rounds; librbd's threads are the same in both servers, the rest is each server's own), then the OSD's and fio's CPU per IO:"
	echo
	jq -r '
		def median: sort | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor]
			else (.[length / 2 - 1] + .[length / 2]) / 2 end;
		def n: if type == "number" then floor | tostring else "-" end;
		.runs | map(select(.error == null)) | group_by(.workload, .path)[]
		| . as $g | ($g | map(.threads // {} | keys) | add | unique) as $names
		| [ $names[] as $t | {t: $t, us: ($g | map(.threads[$t].us // 0) | median), cs: ($g | map(.threads[$t].cs // 0) | median),
			ics: ($g | map(.threads[$t].ics // 0) | median)} ]
		| sort_by(-.us)
		| "- \($g[0].workload) \($g[0].path): "
		  + (if length == 0 then "" else (map(select(.us > 0 or .cs >= 0.05) | "\(.t) \(.us | n) (\(.cs * 100 | round / 100)+\(.ics * 100 | round / 100) cs)") | join(", ")) + "; " end)
		  + "OSD \($g | map(.osd_cpu_us_per_io // empty) | median | n), fio \($g | map(.fio_cpu_us_per_io // empty) | median | n)"' "$out/bench-vm.json"
	errs=$(jq -r '.errors[] | "- round \(.round) \(.path): \(.error)"' "$out/bench-vm.json")
	if [ -n "$errs" ]; then echo; echo "Errors:"; echo "$errs"; fi
} > "$out/bench-vm.md"
echo
cat "$out/bench-vm.md"
echo
echo "bench-vm: results in $out/bench-vm.json and $out/bench-vm.md"
vm_host_containers_report
if jq -e '[.table[] | select(.meets_bar == false)] | length > 0' "$out/bench-vm.json" >/dev/null; then
	echo "bench-vm: ours/rbd-nbd is below a bar (see 'met'); timings under TCG on a shared machine are noisy: rerun on a quiet one" >&2
fi
exit "$vm_rc"
