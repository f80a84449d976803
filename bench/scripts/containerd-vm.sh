#!/bin/bash
# bench/scripts/containerd-vm.sh: the containerd snapshotter's pull
# benchmark, in the project's qemu VM, one boot, one Ceph cluster: the time
# to pull an image of three 24 MiB layers on busybox (~75 MiB) from a
# registry on loopback and start a container of it on
#
#   host A      our snapshotter, cold (fetch, unpack onto NBD, publish)
#   host B      our snapshotter on a second host: A's layers are found in
#               the cluster, nothing is fetched or unpacked
#   overlayfs   containerd's overlayfs snapshotter on local disk, cold
#
# The measurement is test/e2e/containerd_bench_test.go
# (TestBenchContainerdPull, build tag vmtest, opt-in); this script builds
# it, boots the VM, runs it and prints the figures and ratios. Under TCG
# everything is CPU bound and slow: compare the ratios, not the seconds.
#
#   bench/scripts/containerd-vm.sh [--out DIR]
#
# Results: DIR (default results/containerd-vm)/containerd-bench.txt, the
# VM console in DIR/vm. Environment: RBD_NBD_GRAPH_BIN (default
# bin/rbd-nbd-graph; run make build first), CONTAINERD_VM_TIMEOUT
# (seconds, default 1800).
set -euo pipefail
# shellcheck source=bench/scripts/vm-host.sh
. "$(dirname "${BASH_SOURCE[0]}")/vm-host.sh"
vm_host_init containerd-vm containerd-vm
while [ $# -gt 0 ]; do
	case $1 in
	--out) out=$2; shift 2 ;;
	*) echo "containerd-vm: unknown argument $1" >&2; exit 2 ;;
	esac
done
vm_host_out
testbin=$repo/.build/e2e-containerd-bench.test
(cd "$repo" && CGO_ENABLED=1 "${GO:-go}" test -c -tags 'pacific vmtest' -o "$testbin" ./test/e2e)
vm_host_run "${CONTAINERD_VM_TIMEOUT:-1800}" containerd-vm-guest.sh --env CONTAINERD_TEST_BIN="$testbin"
if [ ! -s "$out/vm/containerd-bench.txt" ]; then
	vm_host_no_results 60
	[ "$vm_rc" != 0 ] || vm_rc=1
	exit "$vm_rc"
fi
cp "$out/vm/containerd-bench.txt" "$out/containerd-bench.txt"
# One line of key=value pairs (TestBenchContainerdPull).
tr ' ' '\n' <"$out/containerd-bench.txt" | awk -F= '
	{ v[$1] = $2 }
	END {
		printf "pull+start of a %.0f MiB image of 4 layers, same VM boot (TCG: compare ratios)\n", v["image_mib"]
		printf "  host A, ours, cold          %7.2f s\n", v["a_cold_s"]
		printf "  host B, ours, shared layers %7.2f s   B/A %.2fx   B/overlayfs %.2fx\n", v["b_shared_s"], v["b_over_a"], v["b_over_overlayfs"]
		printf "  overlayfs, local, cold      %7.2f s   overlayfs/A %.2fx\n", v["overlayfs_cold_s"], v["overlayfs_over_a"]
		if (v["b_pull_s"] != "")
			printf "pull alone: A %.2f s, B %.2f s, overlayfs %.2f s; B/A %.2fx, B/overlayfs %.2fx\n", v["a_pull_s"], v["b_pull_s"], v["overlayfs_pull_s"], v["b_pull_s"] / v["a_pull_s"], v["b_pull_s"] / v["overlayfs_pull_s"]
	}' | tee "$out/containerd-bench-table.txt"
exit "$vm_rc"
