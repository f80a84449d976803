#!/bin/bash
# test/demo/run.sh: `make demo`. The krbd graph driver's closing demo on this
# project's path: a Ceph cluster, `rbd-nbd-graph serve` as dockerd's storage
# driver, `docker info | grep -i rbd`, a busybox image imported and
# `docker run busybox uname -a`, each step printed with its timing.
#
# Where the host kernel has NBD (the nbd module loads, or is built in) the
# story runs here; otherwise it runs in the project's qemu VM (test/vm/run:
# Debian's kernel, the host's / shared read-only), whose console is shown
# live. Needs root and the binary (make build).
#
# Usage: run.sh [STORY] (a script in test/demo; default story.sh, the
# graph driver's; containerd.sh is make demo-containerd's).
# Environment: RBD_NBD_GRAPH_BIN (default bin/rbd-nbd-graph),
# DEMO_VM=1 to use the VM even when the host has NBD, DEMO_VM=0 to refuse it.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bin=${RBD_NBD_GRAPH_BIN:-$repo/bin/rbd-nbd-graph}
story=$repo/test/demo/${1:-story.sh}
[ -x "$story" ] || { echo "demo: no story $story" >&2; exit 2; }
out=demo # the VM's results: .build/vm/demo, or demo-containerd
[ "${1:-story.sh}" = story.sh ] || out=demo-$(basename "$story" .sh)
[ -x "$bin" ] || { echo "demo: $bin is missing: run make build" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "demo: run as root (it mounts, and starts dockerd)" >&2; exit 2; }

host_has_nbd() {
	[ -d /sys/module/nbd ] || modprobe nbd 2>/dev/null
}

if [ "${DEMO_VM:-}" != 1 ] && host_has_nbd; then
	echo "demo: this kernel has NBD: running here"
	exec env RBD_NBD_GRAPH_BIN="$bin" "$story"
fi
if [ "${DEMO_VM:-}" = 0 ]; then
	echo "demo: this kernel has no NBD and DEMO_VM=0 forbids the VM" >&2
	exit 1
fi
echo "demo: this kernel ($(uname -r)) has no NBD: booting Debian's kernel in qemu for it"
echo "demo: (software emulation: expect every step to be several times slower than on hardware)"
exec "$repo/test/vm/run" --out "$repo/.build/vm/$out" --timeout 1200 --verbose \
	--env RBD_NBD_GRAPH_BIN="$bin" "$story"
