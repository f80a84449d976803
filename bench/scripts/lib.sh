# shellcheck shell=bash
# bench/scripts/lib.sh: shared by the bench scripts (source it). A Ceph
# cluster to measure against and a filled test image, both cleaned up at
# exit through bench_cleanup (set as the EXIT trap by bench_init).

bench_log() { echo "${BENCH_LOG_PREFIX:-bench}: $*" >&2; }

bench_cleanup_steps=()
bench_cleanup() {
	local i
	for ((i = ${#bench_cleanup_steps[@]} - 1; i >= 0; i--)); do eval "${bench_cleanup_steps[i]}" || true; done
}

# bench_init REPO: sets the EXIT trap.
bench_init() {
	bench_repo=$1
	trap bench_cleanup EXIT
}

# bench_cluster: use $CEPH_CONF if set; else start (or reuse) the cluster
# in .build/bench/ceph, stopping it at exit if this script started it.
bench_cluster() {
	command -v rbd >/dev/null || { bench_log "rbd is missing (make deps)"; return 2; }
	[ -n "${CEPH_CONF:-}" ] && return 0
	local dir=$bench_repo/.build/bench/ceph
	if ! "$bench_repo/test/ceph/cluster" status "$dir" >/dev/null 2>&1; then
		bench_log "starting a Ceph cluster in $dir"
		RBD_NBD_GRAPH_CEPH_STORE_BYTES=${RBD_NBD_GRAPH_CEPH_STORE_BYTES:-$((3 << 30))} \
			"$bench_repo/test/ceph/cluster" start "$dir" >&2
		bench_cleanup_steps+=("'$bench_repo/test/ceph/cluster' stop '$dir' >&2")
	fi
	export CEPH_CONF=$dir/ceph.conf
}

# bench_image POOL/IMAGE SIZE LOGFILE: create the image and write it all,
# so reads hit real objects rather than librbd's object-map shortcut for
# objects that do not exist; removed at exit.
bench_image() {
	local spec=$1 size=$2 logf=$3
	bench_log "creating and filling $spec ($size)"
	rbd create --size "$size" "$spec"
	bench_cleanup_steps+=("rbd rm --no-progress '$spec' >/dev/null 2>&1")
	fio --name=fill --ioengine=rbd --clientname=admin --pool="${spec%%/*}" --rbdname="${spec#*/}" \
		--rw=write --bs=4M --iodepth=8 --size="$size" --output="$logf" >/dev/null
}
