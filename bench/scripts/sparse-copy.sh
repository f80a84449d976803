#!/bin/bash
# bench/scripts/sparse-copy.sh: does a sparse-aware client copy only what
# is allocated? A 10 GiB RBD image with 100 MiB written (25 random 4 MiB
# objects) is copied by nbdcopy to a sparse file on /dev/shm, from
#   ours      `rbd-nbd-graph export --read-only rbd:POOL/IMG`
#   qemu-nbd  `qemu-nbd -r -f raw rbd:POOL/IMG:conf=CONF`
# alternated, ROUNDS rounds (default 3). Both answer NBD_CMD_BLOCK_STATUS
# (base:allocation) from librbd's diff iteration, so nbdcopy reads only
# the allocated objects. Reports per server the median seconds of the
# copy, the bytes the server sent (counted by a relay between nbdcopy
# and the server, in one more copy per server and round, not timed:
# qemu-nbd's sendmsg escapes /proc/PID/io) and the ratios ours/qemu-nbd;
# each copy is compared with the image (cmp against `rbd export`).
#
#   bench/scripts/sparse-copy.sh [--rounds N] [--size SIZE] [--written MiB] [--out DIR]
#
# Environment: RBD_NBD_GRAPH_BIN (default bin/rbd-nbd-graph); CEPH_CONF
# (a running cluster; without it one is started in .build/bench/ceph and
# stopped at exit). memstore holds only what is written, so the default
# 3 GiB store is plenty. nbdcopy uses one connection and the same request
# settings for both.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin=${RBD_NBD_GRAPH_BIN:-$repo/bin/rbd-nbd-graph}
rounds=3
size=10G
written=100
out=$repo/results/sparse-copy
while [ $# -gt 0 ]; do
	case $1 in
	--rounds) rounds=$2; shift 2 ;;
	--size) size=$2; shift 2 ;;
	--written) written=$2; shift 2 ;;
	--out) out=$2; shift 2 ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "sparse-copy.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
	esac
done
for tool in fio qemu-nbd nbdcopy rbd python3; do
	command -v $tool >/dev/null || { echo "sparse-copy.sh: $tool not found (run make deps)" >&2; exit 1; }
done
[ -x "$bin" ] || { echo "sparse-copy.sh: $bin not built (run make build)" >&2; exit 1; }

BENCH_LOG_PREFIX=sparse-copy.sh
# shellcheck source=bench/scripts/lib.sh
. "$here/lib.sh"
bench_init "$repo"
mkdir -p "$out"
: >"$out/sparse-copy.tsv"
work=$(mktemp -d /dev/shm/rbd-nbd-graph-sparse.XXXXXX)
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
bench_cleanup_steps+=('[ -z "$relay_pid" ] || kill "$relay_pid" 2>/dev/null')

bench_cluster
pool=rbd
img=sparse-sh-$$-$RANDOM
bench_log "creating $pool/$img ($size) and writing $written MiB in random 4 MiB objects"
rbd create --size "$size" "$pool/$img"
bench_cleanup_steps+=("rbd rm --no-progress '$pool/$img' >/dev/null 2>&1")
fio --name=fill --ioengine=rbd --clientname=admin --pool="$pool" --rbdname="$img" \
	--rw=randwrite --bs=4M --iodepth=8 --size="$size" --io_size="${written}M" \
	--output="$out/fill.log" >/dev/null
rbd export --no-progress "$pool/$img" "$work/reference.img" >/dev/null
ref_alloc=$(($(stat -c %b "$work/reference.img") * 512))

# start_server NAME CMD...: runs a server in the background and waits
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
	echo "sparse-copy.sh: $name did not start; its log:" >&2
	cat "$out/$name.log" >&2
	exit 1
}

# relay LISTEN TARGET COUNTFILE: forwards one connection from the unix
# socket LISTEN to TARGET and writes the bytes TARGET sent to COUNTFILE.
relay() {
	python3 - "$@" <<'PY' &
import os, socket, sys, threading
listen, target, countfile = sys.argv[1:4]
ls = socket.socket(socket.AF_UNIX)
ls.bind(listen)
ls.listen(1)
c, _ = ls.accept()
s = socket.socket(socket.AF_UNIX)
s.connect(target)
sent = [0]
def pump(a, b, count):
    while True:
        d = a.recv(1 << 20)
        if not d:
            break
        b.sendall(d)
        if count:
            sent[0] += len(d)
    try:
        b.shutdown(socket.SHUT_WR)
    except OSError:
        pass
t = threading.Thread(target=pump, args=(s, c, True))
t.start()
pump(c, s, False)
t.join()
with open(countfile, "w") as f:
    f.write(str(sent[0]))
PY
	relay_pid=$!
	for _ in $(seq 100); do
		[ -S "$1" ] && return 0
		sleep 0.05
	done
	echo "sparse-copy.sh: relay did not start" >&2
	exit 1
}

# measure WHO: one timed copy, then one through the relay; sets secs,
# bytes and alloc (the copy's allocated bytes).
secs=0 bytes=0 relay_pid=""
measure() {
	local who=$1 t0 t1
	case $who in
	ours) start_server ours "$bin" export --read-only --socket "$work/ours.sock" "rbd:$pool/$img" ;;
	qemu-nbd) start_server qemu-nbd qemu-nbd -t -r -f raw --socket="$work/qemu-nbd.sock" "rbd:$pool/$img:conf=$CEPH_CONF" ;;
	esac
	rm -f "$work/copy.img"
	t0=$(date +%s.%N)
	nbdcopy --connections=1 "nbd+unix:///?socket=$work/$who.sock" "$work/copy.img"
	t1=$(date +%s.%N)
	secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}')
	cmp -s "$work/copy.img" "$work/reference.img" || { echo "sparse-copy.sh: the copy from $who differs from the image" >&2; exit 1; }
	alloc=$(($(stat -c %b "$work/copy.img") * 512))
	rm -f "$work/copy.img" "$work/relay.sock"
	relay "$work/relay.sock" "$work/$who.sock" "$work/relay.count"
	nbdcopy --connections=1 "nbd+unix:///?socket=$work/relay.sock" "$work/copy.img"
	wait "$relay_pid"
	relay_pid=""
	bytes=$(cat "$work/relay.count")
	stop_server
}

median() { sort -n | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
med() { awk -F'\t' -v w="$1" -v c="$2" '$1==w {print $c}' "$out/sparse-copy.tsv" | median; }

echo "sparse-copy.sh: $rounds rounds, image $pool/$img ($size, $written MiB written, $ref_alloc bytes in rbd export's sparse file), $(nbdcopy --version | head -1), $(qemu-nbd --version | head -1), $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
order=(ours qemu-nbd)
alloc=0
for round in $(seq "$rounds"); do
	for who in "${order[@]}"; do
		measure "$who"
		printf '%s\t%d\t%s\t%d\t%d\n' "$who" "$round" "$secs" "$bytes" "$alloc" | tee -a "$out/sparse-copy.tsv"
	done
	order=("${order[@]:1}" "${order[0]}")
done
o_s=$(med ours 3) q_s=$(med qemu-nbd 3) o_b=$(med ours 4) q_b=$(med qemu-nbd 4)
printf 'ours:     %.3f s, %.0f bytes sent\nqemu-nbd: %.3f s, %.0f bytes sent\n' "$o_s" "$o_b" "$q_s" "$q_b"
awk -v a="$o_s" -v b="$q_s" -v c="$o_b" -v d="$q_b" 'BEGIN {printf "ratio ours/qemu-nbd: time %.2f, bytes %.2f\n", a / b, c / d}'
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
