#!/usr/bin/env bash
# Tests dist/mkdeb (make deb) on the host: the package holds the binary,
# both units, the conffiles and a man page that renders without a groff
# warning and documents every command; its binary runs from the unpacked
# tree. (The VM test TestDebPackage installs it and runs dockerd on it.)
# Usage: test/dist/deb-test.sh BINARY. Prints "N passed, N failed".
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${1:?usage: test/dist/deb-test.sh BINARY}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passed=0 failed=0
pass() { echo "PASS: $1"; passed=$((passed + 1)); }
fail() { echo "FAIL: $1"; failed=$((failed + 1)); }

if ! deb=$("$root/dist/mkdeb" "$bin" 0.0.1~test "$tmp/out" 2>"$tmp/err"); then
	fail "mkdeb: $(cat "$tmp/err")"
	echo "$passed passed, $failed failed"; exit 1
fi
pass "mkdeb built $(basename "$deb")"
list=$(dpkg-deb -c "$deb" | awk '{print $1, $NF}')
for f in "-rwxr-xr-x ./usr/bin/rbd-nbd-graph" "-rw-r--r-- ./lib/systemd/system/rbd-nbd-graph.service" \
	"-rw-r--r-- ./lib/systemd/system/rbd-nbd-graph-snapshotter.service" \
	"-rw-r--r-- ./etc/rbd-nbd-graph/rbd-nbd-graph.conf" "-rw-r--r-- ./etc/default/rbd-nbd-graph" \
	"-rw-r--r-- ./usr/share/man/man8/rbd-nbd-graph.8.gz" "drwxr-xr-x ./" \
	"-rw-r--r-- ./usr/share/bash-completion/completions/rbd-nbd-graph"; do
	grep -qxF -- "$f" <<<"$list" && pass "holds $f" || fail "lacks $f"
done
if [[ $(dpkg-deb -f "$deb" Package Version | tr '\n' ' ') == "Package: rbd-nbd-graph Version: 0.0.1~test " ]]; then pass "control names package and version"; else fail "control: $(dpkg-deb -f "$deb")"; fi
dpkg-deb -e "$deb" "$tmp/ctl"
if [[ $(cat "$tmp/ctl/conffiles") == $'/etc/rbd-nbd-graph/rbd-nbd-graph.conf\n/etc/default/rbd-nbd-graph' ]]; then pass "conffiles"; else fail "conffiles: $(cat "$tmp/ctl/conffiles")"; fi
dpkg-deb -x "$deb" "$tmp/x"
# Output captured first: under pipefail, `BIN -h | grep -q` fails when
# grep exits before the binary has written all of its help (SIGPIPE).
help=$("$tmp/x/usr/bin/rbd-nbd-graph" -h 2>&1)
if grep -q '^usage: rbd-nbd-graph' <<<"$help"; then pass "the packaged binary runs"; else fail "the packaged binary does not run"; fi
comp="$tmp/x/usr/share/bash-completion/completions/rbd-nbd-graph"
if bash -c 'source "$1" && COMP_WORDS=(rbd-nbd-graph map --io-t) COMP_CWORD=2 && _rbd_nbd_graph && [[ ${COMPREPLY[*]} == --io-timeout ]]' _ "$comp"; then
	pass "bash completion completes map --io-t"
else
	fail "bash completion does not complete map --io-t"
fi
zcat "$tmp/x/usr/share/man/man8/rbd-nbd-graph.8.gz" >"$tmp/page.8"
warn=$(groff -man -ww -z "$tmp/page.8" 2>&1)
[[ -z $warn ]] && pass "man page renders without warnings" || fail "groff: $warn"
text=$(MANWIDTH=100 man -l "$tmp/page.8" 2>/dev/null)
missing=
for c in $("$bin" -h 2>&1 | sed -n '/^commands:/,/^$/{s/^  \([a-z][a-z-]*\)  .*/\1/p}'); do
	# each command's section and one of its own flags (from its -h)
	flag=$("$bin" "$c" -h 2>&1 | sed -n 's/^ *\(-[a-z], \)\{0,1\}\(--[a-z-]*\).*/\2/p' | head -1)
	grep -q "^   $c\$" <<<"$text" && { [[ -z $flag ]] || grep -qF -- "$flag" <<<"$text"; } || missing="$missing $c"
done
[[ -z $missing ]] && pass "man page documents every command with its flags" || fail "man page lacks:$missing"
echo "$passed passed, $failed failed"
((failed == 0))
