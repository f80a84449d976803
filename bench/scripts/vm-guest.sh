#!/bin/bash
# bench/scripts/vm-guest.sh: runs in the VM guest (bench/scripts/vm.sh
# starts it through test/vm/run). Maps one filled RBD image three ways, one
# after another (rbd-nbd-graph, Debian's rbd-nbd, krbd), runs the same fio
# workloads on each device (libaio, direct), alternating the order of the
# paths from round to round, and appends one JSON line per measurement to
# $VM_OUT/bench.jsonl:
#   {"round":1,"path":"ours","workload":"randread-4k-qd32","rw":"randread","bs":"4k","iodepth":32,
#    "iops":1234.5,"bw_bytes":5056512,"lat_us":25.1,"p50_us":20.1,"p99_us":80.3,
#    "ios":12345,"server_cpu_s":4.2,"cpu_us_per_io":340.2,"osd_cpu_us_per_io":410.3,
#    "fio_cpu_us_per_io":60.1,"threads":{"msgr-worker-0":{"us":80.2,"cs":1.9,"ics":0.1},...},
#    "seq":7,"mem_available_kib":2900000,"osd_rss_kib":800000}
# server_cpu_s is the CPU time (user + system, all threads) of the process
# serving the device during the measured fio run, read from /proc; krbd
# has no such process (its work is in the kernel's threads), so its CPU
# fields are null. osd_cpu_us_per_io is the same for the OSD (every path
# pays it) and fio_cpu_us_per_io fio's own (the client). threads splits
# the server's CPU and context switches (voluntary, involuntary) per IO
# by thread name (null for krbd). seq is the measurement's place in time within the boot, and
# mem_available_kib and osd_rss_kib the guest's state before it. Under
# TCG the guest's speed changes from one measurement to the next, and
# every process's CPU per IO with it (fio's and the OSD's too): these
# fields tell a slower guest from a slower server. Each workload runs
# 2 s unmeasured first (the warm-up fio's ramp_time would count CPU for
# IOs fio does not report).
# A path that fails to map gets {"path":...,"error":"..."} and the run goes on.
#
# Environment: RBD_NBD_GRAPH_BIN, VM_OUT; BENCH_ROUNDS (3: with the
# rotation each path runs once in each position), BENCH_RUNTIME
# (fio seconds per workload, 10), BENCH_SIZE (image size, 512M),
# BENCH_OURS_FLAGS (extra map flags for ours, e.g. "--connections 2"),
# BENCH_ALT_FLAGS (map flags for the path ours-alt: ours again with other
# settings, e.g. "--max-sectors-kb 128", compared in the same boot),
# BENCH_ALT_ENV (NAME=VALUE words in ours-alt's environment, e.g.
# "GOMAXPROCS=1"),
# BENCH_PATHS ("ours rbd-nbd krbd", may add ours-alt), BENCH_WORKLOADS
# (names from the list below to run, default all), BENCH_CEPH_CLUSTER (another cluster
# script with test/ceph/cluster's CLI), BENCH_CACHE_POLICY (librbd's cache
# for ours and rbd-nbd alike, so the ratio compares paths, not cache
# modes: none (default: rbd_cache=false, ours' default), writethrough,
# writeback or writearound; krbd has no such cache).
set -uo pipefail
: "${RBD_NBD_GRAPH_BIN:?}" "${VM_OUT:?}"
# shellcheck source=test/vm/guest.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../test/vm/guest.sh"
guest_init bench-vm /var/lib/rbd-nbd-graph-bench
rounds=${BENCH_ROUNDS:-3}
runtime=${BENCH_RUNTIME:-10}
size=${BENCH_SIZE:-512M}
paths=(${BENCH_PATHS:-ours rbd-nbd krbd})
out=$VM_OUT/bench.jsonl
: > "$out"
log() { echo "bench-vm: $*"; }

# The kernel-path workloads: name rw bs iodepth.
workloads=(
	"randread-4k-qd1 randread 4k 1"
	"randread-4k-qd32 randread 4k 32"
	"randwrite-4k-qd1 randwrite 4k 1"
	"randwrite-4k-qd32 randwrite 4k 32"
	"read-1m-qd4 read 1M 4"
	"write-1m-qd4 write 1M 4"
)
if [ -n "${BENCH_WORKLOADS:-}" ]; then
	picked=()
	for w in "${workloads[@]}"; do
		case " $BENCH_WORKLOADS " in *" ${w%% *} "*) picked+=("$w") ;; esac
	done
	[ ${#picked[@]} -gt 0 ] || { log "BENCH_WORKLOADS=$BENCH_WORKLOADS names none of: ${workloads[*]%% *}"; exit 1; }
	workloads=("${picked[@]}")
fi

guest_ceph_start $((2 << 30)) "${BENCH_CEPH_CLUSTER:-}" || exit 1
image=rbd/bench
guest_fill_image "$image" "$size" || { log "filling the image failed"; exit 1; }
# Warm the OSD and the guest's caches of librbd before anything is timed,
# with librbd directly so that no mapping path is favoured.
fio --name=warm --ioengine=rbd --clientname=admin --pool=rbd --rbdname=bench --rw=randread --bs=4k \
	--iodepth=16 --time_based --runtime=5 --size="$size" --eta=never --output=/dev/null

policy=${BENCH_CACHE_POLICY:-none}
case $policy in
none) rbd_nbd_cache=(--rbd_cache=false) ;;
writethrough | writeback | writearound)
	rbd_nbd_cache=(--rbd_cache=true "--rbd_cache_policy=$policy" --rbd_cache_writethrough_until_flush=false) ;;
*) log "BENCH_CACHE_POLICY=$policy: use none, writethrough, writeback or writearound"; exit 1 ;;
esac
log "librbd cache for ours and rbd-nbd: $policy"

map_path() { # path -> device on stdout
	case $1 in
	ours) timeout 300 "$RBD_NBD_GRAPH_BIN" map --rbd-cache-policy "$policy" ${BENCH_OURS_FLAGS:-} --log-file "$work/ours.log" "$image" ;;
	ours-alt) timeout 300 env ${BENCH_ALT_ENV:-} "$RBD_NBD_GRAPH_BIN" map --rbd-cache-policy "$policy" ${BENCH_ALT_FLAGS:-} --log-file "$work/ours-alt.log" "$image" ;;
	rbd-nbd) timeout 300 rbd-nbd map "${rbd_nbd_cache[@]}" "$image" ;;
	krbd) timeout 300 rbd device map -o noudev "$image" ;;
	esac
}
unmap_path() { # path device
	case $1 in
	ours | ours-alt) "$RBD_NBD_GRAPH_BIN" unmap "$2" ;;
	rbd-nbd) rbd-nbd unmap "$2" && while [ -e "/sys/block/${2#/dev/}/pid" ]; do sleep 0.2; done ;;
	krbd) rbd device unmap -o noudev "$2" ;;
	esac
}
# server_pid DEVICE: the process serving the device (sysfs names the
# thread that sent CONNECT), or nothing for krbd.
server_pid() {
	local tid
	tid=$(cat "/sys/block/${1#/dev/}/pid" 2>/dev/null) || return 0
	awk '/^Tgid:/ {print $2}' "/proc/$tid/status" 2>/dev/null
}
# cpu_ticks PID: user + system time of the process and all its threads,
# in clock ticks (fields 14 and 15 of /proc/PID/stat, after the command
# name, which has no spaces for our servers).
cpu_ticks() {
	[ -n "$1" ] || return 0
	awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$1/stat" 2>/dev/null
}
hz=$(getconf CLK_TCK)
# thread_ticks PID: "tid name ticks voluntary involuntary" for each
# thread of the process (the name with spaces made underscores; the
# context switches of each kind), for the split of the server's CPU by thread: librbd's
# threads (msgr-worker-N, io_context_pool, ...) are the same in ours and
# rbd-nbd, the rest is each server's own.
thread_ticks() {
	[ -n "$1" ] || return 0
	local t
	for t in /proc/"$1"/task/*; do
		awk -v tid="${t##*/}" 'FNR == NR {c = $0; sub(/^[^(]*\(/, "", c); sub(/\)[^)]*$/, "", c); gsub(/ /, "_", c)
			s = $0; sub(/^.*\) /, "", s); split(s, f, " "); ticks = f[12] + f[13]; next}
			/^voluntary_ctxt_switches:/ {v = $2} /^nonvoluntary_ctxt_switches:/ {n = $2}
			END {if (c != "") print tid, c, ticks, v + 0, n + 0}' "$t/stat" "$t/status" 2>/dev/null
	done
}
# per_thread BEFORE AFTER IOS: {"name": {"us": CPU µs per IO, "cs":
# voluntary context switches (sleeps) per IO, "ics": involuntary ones
# (preemptions)}, ...} summed over the threads of each name, or null
# without a server process.
per_thread() {
	[ -n "$2" ] && [ "$3" -gt 0 ] 2>/dev/null || { echo null; return; }
	# One stream, before and after split by a line "--": the guest has
	# no /dev/fd for process substitution.
	printf '%s\n--\n%s\n' "$1" "$2" | awk -v ios="$3" -v hz="$hz" '$1 == "--" {after = 1; next}
		!after {b[$1] = $3; v[$1] = $4; n[$1] = $5; next}
		{d[$2] += $3 - b[$1]; cs[$2] += $4 - v[$1]; ics[$2] += $5 - n[$1]}
		END {for (c in d) printf "%s %.1f %.2f %.2f\n", c, d[c] / hz * 1e6 / ios, cs[c] / ios, ics[c] / ios}' |
		jq -Rn '[inputs | split(" ") | {key: .[0], value: {us: (.[1] | tonumber), cs: (.[2] | tonumber), ics: (.[3] | tonumber)}}] | from_entries'
}
seq=0
json_error() { jq -cn --argjson r "$1" --arg p "$2" --arg e "$3" '{round:$r,path:$p,error:$e}' >> "$out"; }

for ((r = 1; r <= rounds; r++)); do
	# Rotate the order of the paths each round, so none always runs first
	# (a warm cluster, a fragmented memstore) or last.
	n=${#paths[@]}
	for ((k = 0; k < n; k++)); do
		p=${paths[$(( (k + r - 1) % n ))]}
		dev=$(map_path "$p" 2>"$work/map.err" | tail -n1)
		if [ -z "$dev" ] || [ ! -b "$dev" ]; then
			err=$(tr '\n' ' ' < "$work/map.err")
			log "round $r: mapping with $p failed: $err"
			json_error "$r" "$p" "map failed: $err"
			continue
		fi
		log "round $r: $p on $dev"
		for w in "${workloads[@]}"; do
			set -- $w
			name=$1 rw=$2 bs=$3 qd=$4
			fio_args=(--filename="$dev" --ioengine=libaio --direct=1 --rw="$rw" --bs="$bs"
				--iodepth="$qd" --time_based --size="$size" --randrepeat=0 --eta=never)
			fio --name=warm "${fio_args[@]}" --runtime=2 --output=/dev/null 2>/dev/null
			pid=$(server_pid "$dev")
			osd=$(pgrep -o -x ceph-osd)
			seq=$((seq + 1))
			mem=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)
			rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$osd/status" 2>/dev/null)
			cpu0=$(cpu_ticks "$pid")
			osd0=$(cpu_ticks "$osd")
			th0=$(thread_ticks "$pid")
			res=$(fio --name="$name" "${fio_args[@]}" --runtime="$runtime" --output-format=json 2>"$work/fio.err")
			rc=$?
			cpu1=$(cpu_ticks "$pid")
			osd1=$(cpu_ticks "$osd")
			th1=$(thread_ticks "$pid")
			if [ $rc -ne 0 ] || [ -z "$res" ]; then
				json_error "$r" "$p" "fio $name failed: $(tr '\n' ' ' < "$work/fio.err")"
				continue
			fi
			dir=read
			case $rw in *write) dir=write ;; esac
			cpu=null
			threads=$(per_thread "$th0" "$th1" "$(echo "$res" | jq ".jobs[0].$dir.total_ios")")
			[ -n "$cpu0" ] && [ -n "$cpu1" ] && cpu=$(awk -v a="$cpu0" -v b="$cpu1" -v hz="$hz" 'BEGIN {print (b - a) / hz}')
			echo "$res" | jq -c --argjson r "$r" --arg p "$p" --arg w "$name" --arg rw "$rw" --arg bs "$bs" \
				--argjson qd "$qd" --arg d "$dir" --argjson cpu "$cpu" --argjson seq "$seq" \
				--argjson mem "${mem:-null}" --argjson rss "${rss:-null}" --arg osd0 "$osd0" --arg osd1 "$osd1" --argjson hz "$hz" --argjson threads "${threads:-null}" \
				'.jobs[0] as $j | $j[$d] | {round:$r, path:$p, workload:$w, rw:$rw, bs:$bs, iodepth:$qd,
				iops:.iops, bw_bytes:.bw_bytes, lat_us:(.lat_ns.mean/1000),
				p50_us:(.clat_ns.percentile["50.000000"] / 1000), p99_us:(.clat_ns.percentile["99.000000"] / 1000),
				ios:.total_ios, server_cpu_s:$cpu,
				cpu_us_per_io:(if $cpu == null or .total_ios == 0 then null else $cpu * 1e6 / .total_ios end),
				osd_cpu_us_per_io:(if $osd0 == "" or $osd1 == "" or .total_ios == 0 then null
					else (($osd1 | tonumber) - ($osd0 | tonumber)) / $hz * 1e6 / .total_ios end),
				fio_cpu_us_per_io:(if .total_ios == 0 then null
					else ($j.usr_cpu + $j.sys_cpu) / 100 * $j.job_runtime * 1000 / .total_ios end),
				threads:$threads, seq:$seq, mem_available_kib:$mem, osd_rss_kib:$rss}' >> "$out"
			log "  $name: $(tail -n1 "$out" | jq -r '"\(.iops | floor) IOPS, \(.bw_bytes / 1048576 * 10 | floor / 10) MiB/s, p50 \(.p50_us | floor) us, server CPU \(.cpu_us_per_io // "-" | if type == "number" then floor else . end) us/IO, OSD \(.osd_cpu_us_per_io // "-" | if type == "number" then floor else . end) us/IO"')"
		done
		unmap_path "$p" "$dev" || json_error "$r" "$p" "unmap of $dev failed"
	done
done
dmesg > "$VM_OUT/dmesg.log" 2>&1
cp "$work/ours.log" "$VM_OUT/ours.log" 2>/dev/null
cp "$work/ours-alt.log" "$VM_OUT/ours-alt.log" 2>/dev/null
# Whole containers on the same cluster (vm.sh passes CONTAINERS_TEST_BIN
# unless BENCH_CONTAINERS=0): bench/scripts/containers-vm-guest.sh.
if [ -n "${CONTAINERS_TEST_BIN:-}" ]; then
	"$(dirname "${BASH_SOURCE[0]}")/containers-vm-guest.sh" || log "whole containers: failed (containers-bench.log)"
fi
exit 0
