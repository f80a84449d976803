#!/usr/bin/env bash
# Checks the systemd units in dist/systemd (make check): systemd-analyze
# verify must pass without a word (it exits 0 on settings it ignores, so
# any output fails), and each unit must keep what the handover needs:
# Type=notify, its ordering before the daemon it serves, and a
# TimeoutStopSec longer than the drains its ExecStart asks for.
# Prints "N passed, N failed"; exits 1 on failure.
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
command -v systemd-analyze >/dev/null || { echo "units-test: systemd-analyze is missing (package systemd)"; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passed=0 failed=0
pass() { echo "PASS: $1"; passed=$((passed + 1)); }
fail() { echo "FAIL: $1"; failed=$((failed + 1)); }

# verify wants ExecStart's binary to exist: point the copies at a stub.
printf '#!/bin/sh\n' >"$tmp/rbd-nbd-graph" && chmod +x "$tmp/rbd-nbd-graph"
for u in "$root"/dist/systemd/*.service; do
	sed "s|/usr/bin/rbd-nbd-graph|$tmp/rbd-nbd-graph|" "$u" >"$tmp/$(basename "$u")"
done
out=$(cd "$tmp" && systemd-analyze verify --man=no ./*.service 2>&1)
rc=$?
if [[ $rc == 0 && -z $out ]]; then pass "systemd-analyze verify dist/systemd/*.service"; else fail "systemd-analyze verify (exit $rc): $out"; fi

secs() { # a systemd or Go duration in whole seconds: 75s, 2m, 1m30s, 90
	local d=$1 total=0 n
	[[ $d =~ ^[0-9]+$ ]] && { echo "$d"; return; }
	while [[ $d =~ ^([0-9]+)(min|m|s)(.*)$ ]]; do
		n=${BASH_REMATCH[1]}
		case ${BASH_REMATCH[2]} in min | m) n=$((n * 60)) ;; esac
		total=$((total + n)); d=${BASH_REMATCH[3]}
	done
	[[ -z $d ]] && echo "$total"
}

check() { # check UNIT BEFORE
	local u=$root/dist/systemd/$1 before=$2 exec stop drain=0 v
	grep -qx 'Type=notify' "$u" && pass "$1: Type=notify" || fail "$1: not Type=notify"
	grep -q "^Before=.*\b$before\b" "$u" && pass "$1: Before=$before" || fail "$1: not ordered before $before"
	exec=$(sed -n 's/^ExecStart=//p' "$u")
	for f in grace shutdown-timeout; do
		v=$(sed -n "s/.*--$f[ =]\([0-9a-z]*\).*/\1/p" <<<"$exec")
		[[ -n $v ]] && drain=$((drain + $(secs "$v")))
	done
	stop=$(secs "$(sed -n 's/^TimeoutStopSec=//p' "$u")")
	if [[ $drain -gt 0 && -n $stop && $stop -gt $drain ]]; then
		pass "$1: TimeoutStopSec ${stop}s > the drains' ${drain}s"
	else fail "$1: TimeoutStopSec '${stop}' must exceed ExecStart's --grace + --shutdown-timeout (${drain}s)"; fi
	grep -q '^ExecStop=' "$u" && fail "$1: ExecStop would replace the SIGTERM handover" || pass "$1: stop is SIGTERM (no ExecStop)"
}
check rbd-nbd-graph.service docker.service
check rbd-nbd-graph-snapshotter.service containerd.service

echo "$passed passed, $failed failed"
((failed == 0))
