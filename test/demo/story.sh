#!/bin/bash
# test/demo/story.sh: the demo itself (test/demo/run.sh starts it, here or
# in the VM). Everything it starts it stops again, and it removes its images.
#
# Environment: RBD_NBD_GRAPH_BIN; CEPH_CONF to use a running cluster instead
# of starting one; DEMO_DIR (default .build/demo, or a folder in the VM).
set -uo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bin=${RBD_NBD_GRAPH_BIN:-$repo/bin/rbd-nbd-graph}
name=rbd-nbd
if [ -n "${VM_OUT:-}" ]; then
	dir=${DEMO_DIR:-/var/lib/rbd-nbd-graph-demo} # the guest's root is a tmpfs overlay
else
	dir=${DEMO_DIR:-$repo/.build/demo}
fi
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
docker=docker
[ -x /usr/bin/docker ] && docker=/usr/bin/docker # Debian's client, same version as dockerd
dock() { "$docker" -H "unix://$dir/docker.sock" "$@"; }

t0=$(date +%s.%N)
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
# step TITLE CMD...: print the title, run the command, print its time.
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

plugin_pid= dockerd_pid= containerd_pid= started_ceph=
cleanup() {
	set +e
	echo
	echo "==> cleaning up"
	if [ -n "$dockerd_pid" ]; then
		dock rm -f $(dock ps -aq) >/dev/null 2>&1
		dock rmi -f busybox >/dev/null 2>&1
		kill -TERM "$dockerd_pid"; wait "$dockerd_pid"
	fi
	[ -n "$plugin_pid" ] && { kill -TERM "$plugin_pid"; wait "$plugin_pid"; }
	[ -n "$containerd_pid" ] && { kill -TERM "$containerd_pid"; wait "$containerd_pid"; }
	for im in $(rbd ls -p rbd 2>/dev/null | grep '^demo-'); do
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
	# Under emulation on a busy machine the monitor can take minutes.
	RBD_NBD_GRAPH_CEPH_TIMEOUT=${RBD_NBD_GRAPH_CEPH_TIMEOUT:-300} RBD_NBD_GRAPH_CEPH_STORE_BYTES=$((1536 << 20)) \
		"$repo/test/ceph/cluster" start "$dir/ceph" || return
	started_ceph=1
	export CEPH_CONF=$dir/ceph/ceph.conf
	ceph --version
}

start_plugin() {
	"$bin" serve --name "$name" --state "$dir/plugin-state.json" \
		-o rbd.pool=rbd -o "rbd.configfile=$CEPH_CONF" \
		-o rbd.imageprefix=demo- -o rbd.basesize=2G \
		> "$dir/plugin.log" 2>&1 &
	plugin_pid=$!
	for _ in $(seq 100); do
		[ -S "/run/docker/plugins/$name.sock" ] && { echo "listening on /run/docker/plugins/$name.sock (pid $plugin_pid)"; return 0; }
		kill -0 "$plugin_pid" 2>/dev/null || break
		sleep 0.2
	done
	cat "$dir/plugin.log"; return 1
}

# dockerd would start containerd itself but gives up on it after a fixed
# time a slow (emulated) machine can exceed: start it here and wait.
start_containerd() {
	cat > "$dir/containerd.toml" <<-TOML
		version = 2
		root = "$dir/containerd-root"
		state = "$dir/containerd-state"
		disabled_plugins = ["io.containerd.grpc.v1.cri"]
		[grpc]
		  address = "$dir/containerd.sock"
	TOML
	containerd --config "$dir/containerd.toml" > "$dir/containerd.log" 2>&1 &
	containerd_pid=$!
	for _ in $(seq 300); do
		ctr --address "$dir/containerd.sock" version >/dev/null 2>&1 && return 0
		kill -0 "$containerd_pid" 2>/dev/null || break
		sleep 1
	done
	tail -n 20 "$dir/containerd.log"; return 1
}

start_dockerd() {
	start_containerd || return
	dockerd --experimental -s "$name" --data-root "$dir/docker" --exec-root "$dir/exec" \
		--pidfile "$dir/dockerd.pid" -H "unix://$dir/docker.sock" --containerd "$dir/containerd.sock" \
		--iptables=false --bridge=none > "$dir/dockerd.log" 2>&1 &
	dockerd_pid=$!
	for _ in $(seq 300); do
		dock version >/dev/null 2>&1 && { echo "dockerd $(dockerd --version | cut -d' ' -f3 | tr -d ,) is up (pid $dockerd_pid)"; return 0; }
		kill -0 "$dockerd_pid" 2>/dev/null || break
		sleep 1
	done
	tail -n 40 "$dir/dockerd.log"; return 1
}

docker_info() {
	dock info 2>/dev/null | grep -i rbd
}

import_busybox() {
	local root=$dir/busybox-rootfs
	rm -rf "$root"
	mkdir -p "$root"/{bin,etc,tmp,proc,sys,dev,root}
	cp /bin/busybox "$root/bin/busybox"
	for a in sh uname ls cat echo true; do ln -s busybox "$root/bin/$a"; done
	echo 'root:x:0:0:root:/root:/bin/sh' > "$root/etc/passwd"
	tar -C "$root" -c . | dock import - busybox
}

step "start a one-node Ceph cluster" start_ceph
step "start the graph driver plugin: rbd-nbd-graph serve --name $name" start_plugin
step "start dockerd --experimental -s $name" start_dockerd
step "docker info | grep -i rbd" docker_info
step "docker import a busybox rootfs (from this host's busybox-static)" import_busybox
step "docker run --rm busybox uname -a" dock run --rm busybox uname -a
step "the layers are RBD images: rbd ls -l -p rbd | grep demo-" sh -c 'rbd ls -l -p rbd | grep -E "^NAME|demo-"'
