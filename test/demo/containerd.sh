#!/bin/bash
# test/demo/containerd.sh: `make demo-containerd` (test/demo/run.sh starts
# it, here or in the VM). The containerd front end for a person: a Ceph
# cluster, `rbd-nbd-graph snapshotter`, Debian's containerd with a
# proxy_plugins entry for it, a busybox image imported into it and run,
# the snapshots as ctr and rbd see them, a restart of the snapshotter
# under a running container, each step timed. Everything it starts it
# stops again, and it removes its images.
#
# Environment: RBD_NBD_GRAPH_BIN; CEPH_CONF to use a running cluster instead
# of starting one; DEMO_DIR (default .build/demo-containerd, or a folder in
# the VM).
set -uo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bin=${RBD_NBD_GRAPH_BIN:-$repo/bin/rbd-nbd-graph}
sn_name=rbd-nbd
prefix=democtr-
if [ -n "${VM_OUT:-}" ]; then
	dir=${DEMO_DIR:-/var/lib/rbd-nbd-graph-demo-containerd} # the guest's root is a tmpfs overlay
else
	dir=${DEMO_DIR:-$repo/.build/demo-containerd}
fi
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
sock=$dir/snapshotter.sock
ctrd() { ctr --address "$dir/containerd.sock" --namespace demo "$@"; }

t0=$(date +%s.%N)
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
step() {
	local title=$1; shift
	local s; s=$(date +%s.%N)
	printf '\n\033[1m==> %s\033[0m\n' "$title"
	"$@"
	local rc=$?
	printf '    (%ss)\n' "$(since "$s")"
	if [ $rc != 0 ]; then
		echo "demo: step failed (exit $rc): $title" >&2
		exit $rc
	fi
}

sn_pid= containerd_pid= started_ceph=
cleanup() {
	set +e
	echo
	echo "==> cleaning up"
	if [ -n "$containerd_pid" ]; then
		ctrd task kill -s SIGKILL live >/dev/null 2>&1
		sleep 1
		ctrd task rm live >/dev/null 2>&1
		ctrd containers rm live >/dev/null 2>&1
		ctrd images rm --sync docker.io/library/busybox:demo >/dev/null 2>&1
		kill -TERM "$containerd_pid"; wait "$containerd_pid"
	fi
	[ -n "$sn_pid" ] && { kill -TERM "$sn_pid"; wait "$sn_pid"; }
	for im in $(rbd ls -p rbd 2>/dev/null | grep "^$prefix"); do
		rbd snap unprotect "rbd/$im@layer" 2>/dev/null
		rbd snap purge --no-progress "rbd/$im" >/dev/null 2>&1
		rbd rm --no-progress "rbd/$im" >/dev/null 2>&1
	done
	[ -n "$started_ceph" ] && "$repo/test/ceph/cluster" stop "$dir/ceph" >/dev/null 2>&1
	echo "demo: done in $(since "$t0")s; logs in $dir"
}
trap cleanup EXIT

start_ceph() {
	if [ -n "${CEPH_CONF:-}" ]; then
		echo "using the cluster of CEPH_CONF=$CEPH_CONF"
		return
	fi
	RBD_NBD_GRAPH_CEPH_TIMEOUT=${RBD_NBD_GRAPH_CEPH_TIMEOUT:-300} RBD_NBD_GRAPH_CEPH_STORE_BYTES=$((1536 << 20)) \
		"$repo/test/ceph/cluster" start "$dir/ceph" || return
	started_ceph=1
	export CEPH_CONF=$dir/ceph/ceph.conf
	ceph --version
}

start_snapshotter() {
	rm -f "$sock"
	# This start's lines only: the log is appended across restarts. No
	# <(...): the VM guest has no /dev/fd.
	local from
	from=1
	[ -f "$dir/snapshotter.log" ] && from=$(( $(wc -l < "$dir/snapshotter.log") + 1 ))
	"$bin" snapshotter --socket "$sock" --root "$dir/sn" \
		-o rbd.pool=rbd -o "rbd.configfile=$CEPH_CONF" \
		-o rbd.imageprefix=$prefix -o rbd.basesize=2G \
		>> "$dir/snapshotter.log" 2>&1 &
	sn_pid=$!
	for _ in $(seq 600); do
		tail -n "+$from" "$dir/snapshotter.log" | grep "serving containerd's snapshots API" >/dev/null &&
			{ echo "serving on $sock (pid $sn_pid, mode $(stat -c %a "$sock"))"; return 0; }
		kill -0 "$sn_pid" 2>/dev/null || break
		sleep 0.2
	done
	tail -n 20 "$dir/snapshotter.log"; return 1
}

start_containerd() {
	cat > "$dir/containerd.toml" <<-TOML
		version = 2
		root = "$dir/containerd-root"
		state = "$dir/containerd-state"
		disabled_plugins = ["io.containerd.grpc.v1.cri"]
		[grpc]
		  address = "$dir/containerd.sock"
		[proxy_plugins]
		  [proxy_plugins.$sn_name]
		    type = "snapshot"
		    address = "$sock"
	TOML
	sed -n '/proxy_plugins/,$p' "$dir/containerd.toml"
	containerd --config "$dir/containerd.toml" > "$dir/containerd.log" 2>&1 &
	containerd_pid=$!
	for _ in $(seq 300); do
		ctrd version >/dev/null 2>&1 && { ctrd plugins ls | grep -E "^TYPE|$sn_name"; return 0; }
		kill -0 "$containerd_pid" 2>/dev/null || break
		sleep 1
	done
	tail -n 20 "$dir/containerd.log"; return 1
}

# oci_archive OUT: an OCI image layout tar of a busybox rootfs (this
# host's busybox-static), what `ctr images import` reads.
oci_archive() {
	local out=$1 w=$dir/oci
	rm -rf "$w"; mkdir -p "$w/rootfs"/{bin,etc,tmp,proc,sys,dev,root} "$w/blobs/sha256"
	cp /bin/busybox "$w/rootfs/bin/busybox"
	for a in sh uname ls cat echo true sleep mount grep df sync; do ln -s busybox "$w/rootfs/bin/$a"; done
	echo 'root:x:0:0:root:/root:/bin/sh' > "$w/rootfs/etc/passwd"
	tar -C "$w/rootfs" -cf "$w/layer.tar" .
	local ld ls cd cs md ms
	ld=$(sha256sum < "$w/layer.tar" | cut -d' ' -f1); ls=$(stat -c %s "$w/layer.tar")
	mv "$w/layer.tar" "$w/blobs/sha256/$ld"
	printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":["/bin/sh"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "$ld" > "$w/config"
	cd=$(sha256sum < "$w/config" | cut -d' ' -f1); cs=$(stat -c %s "$w/config"); mv "$w/config" "$w/blobs/sha256/$cd"
	printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' "$cd" "$cs" "$ld" "$ls" > "$w/manifest"
	md=$(sha256sum < "$w/manifest" | cut -d' ' -f1); ms=$(stat -c %s "$w/manifest"); mv "$w/manifest" "$w/blobs/sha256/$md"
	printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":"docker.io/library/busybox:demo","org.opencontainers.image.ref.name":"demo"}}]}' "$md" "$ms" > "$w/index.json"
	echo '{"imageLayoutVersion":"1.0.0"}' > "$w/oci-layout"
	tar -C "$w" -cf "$out" oci-layout index.json blobs
}

import_busybox() {
	oci_archive "$dir/busybox-oci.tar" &&
		ctrd images import --snapshotter "$sn_name" "$dir/busybox-oci.tar"
}

live_log() { ctrd task exec --exec-id "x$RANDOM" live sh -c 'sync; wc -l < /log'; }

restart_snapshotter() {
	local before after
	before=$(live_log)
	kill -TERM "$sn_pid"; wait "$sn_pid"; sn_pid=
	echo "snapshotter stopped (the container's device stays attached); the container wrote $before lines so far"
	start_snapshotter || return
	sleep 2
	after=$(live_log)
	echo "the container goes on writing: $after lines now"
	[ "$after" -gt "$before" ]
}

# remove_all: the container and the image go; containerd's garbage
# collector removes our snapshots through the proxy, and the snapshotter's
# reaper then deletes their RBD images in the background (the base image
# stays: it is the snapshotter's).
remove_all() {
	ctrd task kill -s SIGKILL live
	for _ in $(seq 60); do ctrd task ls | grep -q RUNNING || break; sleep 1; done
	ctrd task rm live && ctrd containers rm live && ctrd images rm --sync docker.io/library/busybox:demo || return
	local n
	for _ in $(seq 120); do
		n=$(ctrd snapshots --snapshotter "$sn_name" ls | tail -n +2 | wc -l)
		[ "$n" = 0 ] && break
		sleep 1
	done
	echo "snapshots left: $n"
	[ "$n" = 0 ] || return
	local left start=$SECONDS
	for _ in $(seq 120); do
		left=$(rbd ls -p rbd | grep "^$prefix" | grep -vc "^${prefix}base")
		[ "$left" = 0 ] && break
		sleep 1
	done
	echo "layer images deleted in the background within $((SECONDS - start)) s; our RBD images now:"
	rbd ls -p rbd | grep "^$prefix"
	[ "$left" = 0 ]
}

step "start a one-node Ceph cluster" start_ceph
step "start the snapshotter: rbd-nbd-graph snapshotter --socket $sock" start_snapshotter
step "start containerd with a proxy_plugins entry for it" start_containerd
step "ctr images import --snapshotter $sn_name busybox (from this host's busybox-static)" import_busybox
step "ctr run --snapshotter $sn_name: / is an ext4 on /dev/nbdN" \
	ctrd run --rm --snapshotter "$sn_name" docker.io/library/busybox:demo probe sh -c 'grep " / " /proc/mounts; uname -a'
step "ctr snapshots ls / usage" sh -c "ctr --address '$dir/containerd.sock' --namespace demo snapshots --snapshotter $sn_name ls &&
	ctr --address '$dir/containerd.sock' --namespace demo snapshots --snapshotter $sn_name usage"
step "the snapshots are RBD images: rbd ls -l -p rbd | grep $prefix" sh -c "rbd ls -l -p rbd | grep -E '^NAME|$prefix'"
step "ctr run -d a container writing a line every 0.2 s" \
	ctrd run -d --snapshotter "$sn_name" docker.io/library/busybox:demo live sh -c 'i=0; while true; do echo $i >> /log; i=$((i+1)); sleep 0.2; done'
sleep 2
step "restart the snapshotter under the running container" restart_snapshotter
step "remove the container and the image: containerd's GC removes our snapshots and their RBD images" remove_all
