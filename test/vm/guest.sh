# shellcheck shell=bash
# test/vm/guest.sh: the shell library of the scripts that run as root in
# the VM guest (test/vm/e2e.sh, bench/scripts/*-guest.sh). Source it, then
# call guest_init first. The guest's root is a tmpfs overlay over the
# host's /: everything these write vanishes at poweroff, except VM_OUT.
#
#   guest_init NAME WORK      repo (the checkout), work (WORK, made), the
#                             kernel's console chatter down to warnings
#   guest_log MSG...          "NAME: MSG" on stderr
#   guest_ceph_start BYTES [CLUSTER]
#                             a one-node cluster in $work/ceph (memstore of
#                             RBD_NBD_GRAPH_CEPH_STORE_BYTES, else BYTES:
#                             the guest has 4 GiB of RAM), CEPH_CONF
#                             exported; CLUSTER is another script with
#                             test/ceph/cluster's command line. On failure
#                             its logs go to $VM_OUT/ceph-logs.
#   guest_ceph_logs           copy the cluster's logs to $VM_OUT/ceph-logs
#   guest_fill_image POOL/IMAGE SIZE
#                             create the image and write all of it, so reads
#                             hit real objects, not the object map's "no
#                             such object" shortcut

guest_init() {
	guest_name=$1
	repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
	work=$2
	mkdir -p "$work"
	dmesg -n 4 2>/dev/null || true
}

guest_log() { echo "$guest_name: $*" >&2; }

guest_ceph_start() {
	local bytes=${RBD_NBD_GRAPH_CEPH_STORE_BYTES:-$1} cluster=${2:-$repo/test/ceph/cluster} start
	start=$(date +%s)
	# Under TCG on a loaded machine each ceph CLI call takes seconds and
	# the monitor minutes: allow each step more than the script's default.
	if ! RBD_NBD_GRAPH_CEPH_TIMEOUT=${RBD_NBD_GRAPH_CEPH_TIMEOUT:-300} RBD_NBD_GRAPH_CEPH_STORE_BYTES=$bytes \
		"$cluster" start "$work/ceph" >&2; then
		guest_log "the Ceph cluster did not start"
		guest_ceph_logs
		return 1
	fi
	export CEPH_CONF=$work/ceph/ceph.conf
	guest_log "Ceph cluster up in $(($(date +%s) - start))s"
}

guest_ceph_logs() {
	[ -d "$work/ceph/log" ] || return 0
	mkdir -p "$VM_OUT/ceph-logs"
	cp -r "$work/ceph/log" "$VM_OUT/ceph-logs/" 2>/dev/null || true
}

guest_fill_image() {
	local spec=$1 size=$2
	rbd create --size "$size" "$spec" || return 1
	fio --name=fill --ioengine=rbd --clientname=admin --pool="${spec%%/*}" --rbdname="${spec#*/}" \
		--rw=write --bs=4M --iodepth=8 --size="$size" --eta=never --output=/dev/null || return 1
	guest_log "image $spec ($size) filled"
}
