#!/bin/bash
# bench/scripts/containers-vm.sh: whole containers, in the project's qemu
# VM (the host kernel has neither NBD nor krbd), one boot, one Ceph
# cluster, one dockerd per storage setup:
#
#   ours      rbd-nbd-graph serve (RBD layers through our NBD)
#   overlay2  dockerd's overlay2 on ext4 on a loop device
#   krbd      the seed's way: the same layer store and plugin front end
#             mapping each layer with `rbd device map` (test/krbdplugin)
#
# and on each `docker run --rm busybox true`, a 10-step `docker build` and
# `docker import` of a ~100 MiB tarball, rounds with the order of the
# setups rotated. The measurement is BenchmarkWholeContainers
# (test/e2e/containers_bench_test.go, build tag vmtest, opt-in); this
# script builds it and the krbd plugin, boots the VM, runs it and prints
# the tables: per-round seconds, medians, ratios ours/overlay2 and
# ours/krbd (time ratios: > 1 means ours is slower) and the plugin's step
# timings. Under TCG everything is CPU bound and slow: compare ratios.
#
#   bench/scripts/containers-vm.sh [--out DIR] [--rounds N]
#
# Results: DIR (default results/containers-vm)/containers.md,
# containers.jsonl, the plugin logs and the VM console in DIR/vm.
# Environment: RBD_NBD_GRAPH_BIN (default bin/rbd-nbd-graph; run make
# build first), GO, CONTAINERS_SETUPS ("ours overlay2 krbd"; ours-nodelay
# adds ours with rbd.unmountdelay=0),
# CONTAINERS_IMPORT_MIB (100), CONTAINERS_VM_TIMEOUT (seconds, 5400).
set -euo pipefail
# shellcheck source=bench/scripts/vm-host.sh
. "$(dirname "${BASH_SOURCE[0]}")/vm-host.sh"
vm_host_init containers-vm containers-vm
rounds=${CONTAINERS_ROUNDS:-3}
while [ $# -gt 0 ]; do
	case $1 in
	--out) out=$2; shift 2 ;;
	--rounds) rounds=$2; shift 2 ;;
	*) echo "containers-vm: unknown argument $1" >&2; exit 2 ;;
	esac
done
vm_host_out
BENCH_CONTAINERS=1 CONTAINERS_ROUNDS=$rounds vm_host_containers_env
vm_host_run "${CONTAINERS_VM_TIMEOUT:-$containers_timeout}" containers-vm-guest.sh "${containers_envs[@]}"
if [ ! -s "$out/vm/containers.md" ]; then
	vm_host_no_results 60
	[ "$vm_rc" != 0 ] || vm_rc=1
	exit "$vm_rc"
fi
BENCH_CONTAINERS=1 vm_host_containers_report
echo
echo "containers-vm: results in $out/containers.md and $out/containers.jsonl"
exit "$vm_rc"
