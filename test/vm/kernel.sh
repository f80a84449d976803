#!/bin/bash
# kernel.sh CACHE_DIR: make sure the current Debian kernel package is
# unpacked under CACHE_DIR and print the folder that holds it (boot/vmlinuz-*,
# lib/modules/RELEASE with modules.dep). Cached: apt is asked only which
# package is current; nothing is downloaded when that release is already there.
#
# Why a Debian kernel: the machines that build this project run a kernel with
# no NBD, no RBD and no loadable modules; the packaged kernel has nbd, rbd,
# 9p, virtio and overlay as modules, which is what the VM needs.
set -euo pipefail

cache=${1:?usage: kernel.sh CACHE_DIR}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)

# The metapackage linux-image-amd64 depends on the current linux-image-X.
pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [ -z "$pkg" ]; then
	# An apt without lists (fresh machine): update once and ask again.
	apt-get update -q >&2 || true
	pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
fi
if [ -z "$pkg" ]; then
	# Offline with no lists: reuse the newest kernel already unpacked.
	dir=$(ls -d "$cache"/linux-image-* 2>/dev/null | sort -V | tail -n1 || true)
	if [ -n "$dir" ] && [ -f "$dir/.complete" ]; then
		echo "kernel.sh: apt does not name a kernel package; reusing $dir" >&2
		echo "$dir"
		exit 0
	fi
	echo "kernel.sh: cannot find the Debian kernel package (apt-cache depends linux-image-amd64 names none; is apt configured?)" >&2
	exit 1
fi

dir=$cache/$pkg
if [ -f "$dir/.complete" ]; then
	echo "$dir"
	exit 0
fi

echo "kernel.sh: fetching $pkg" >&2
rm -rf "$dir" "$dir.tmp"
mkdir -p "$dir.tmp/deb"
# As root into a folder _apt cannot enter: no sandbox user, so apt does
# not warn that it downloads unsandboxed.
(cd "$dir.tmp/deb" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >&2)
deb=$(ls "$dir.tmp"/deb/*.deb)
dpkg -x "$deb" "$dir.tmp/root"
release=${pkg#linux-image-}
if [ ! -d "$dir.tmp/root/lib/modules/$release" ]; then
	echo "kernel.sh: $deb has no lib/modules/$release" >&2
	exit 1
fi
# modprobe (and pmorjan/kmod) need modules.dep, made for this tree.
depmod -b "$dir.tmp/root" "$release"
rm -rf "$dir.tmp/deb"
echo "$release" > "$dir.tmp/root/release"
touch "$dir.tmp/root/.complete"
mv "$dir.tmp/root" "$dir"
rm -rf "$dir.tmp"
echo "$dir"
