#!/bin/bash
# test/vm/clone-test.sh: the VM harness from a copy of the work tree under
# /tmp, which the guest's own tmpfs on /tmp would hide (test/vm/run shares
# the tree and test/vm/init mounts it back). Copies the tracked files (as
# they are in the work tree) to a fresh folder under /tmp, boots the VM
# from there with a guest script that must find the copy at its own path,
# read a token the host wrote into it and hand it back through VM_OUT.
# One boot, no Ceph. Prints "N passed, N failed"; exits 1 on failure.
set -uo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
clone=$(mktemp -d /tmp/rbd-nbd-graph-clone.XXXXXX)
trap 'rm -rf "$clone"' EXIT
(cd "$repo" && git ls-files -z | tar --null -T - -cf -) | tar -C "$clone" -xf -
# The kernel package cache, hard-linked when there is one (else fetched).
[ -d "$repo/.cache/vm" ] && mkdir -p "$clone/.cache" && cp -al "$repo/.cache/vm" "$clone/.cache/vm"
token=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
echo "$token" > "$clone/token"
cat > "$clone/guest.sh" <<'GUEST'
#!/bin/bash
here=$(cd "$(dirname "$0")" && pwd)
[ "$PWD" = "$here" ] || { echo "guest: PWD is $PWD, want $here"; exit 1; }
grep -q '^module ' go.mod || { echo "guest: go.mod not readable at $PWD"; exit 1; }
echo guest-write > written || { echo "guest: the tree is not writable (overlay)"; exit 1; }
cp token "$VM_OUT/token"
GUEST
chmod +x "$clone/guest.sh"

passed=0 failed=0
rc=0
(cd "$clone" && test/vm/run --out "$clone/.build/vm/clone" --timeout 600 ./guest.sh) || rc=$?
got=$(cat "$clone/.build/vm/clone/token" 2>/dev/null)
if [ "$rc" = 0 ] && [ "$got" = "$token" ]; then
	echo "PASS: the guest ran $clone/guest.sh from $clone and read the host's token"
	passed=1
else
	echo "FAIL: test/vm/run from $clone: exit $rc, token '$got' (want '$token')"
	failed=1
fi
if [ -e "$clone/written" ]; then
	echo "FAIL: the guest's write reached the host's tree (want a tmpfs overlay)"
	failed=$((failed + 1))
else
	echo "PASS: the guest's write stayed in the guest"
	passed=$((passed + 1))
fi
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
