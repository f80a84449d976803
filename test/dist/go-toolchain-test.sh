#!/usr/bin/env bash
# Tests dist/go-toolchain, which `make deps` uses to find or fetch the Go
# that go.mod asks for. Fetches for real through the Go module proxy (once,
# about 75 MB; the second fetch reads the first one's download cache as a
# file:// proxy). Needs Debian's golang-go (Go 1.19) as the "too old" Go.
# Prints "N passed, N failed" and exits 1 on any failure.
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
tool=$root/dist/go-toolchain
debian_go=/usr/lib/go-1.19/bin/go
wanted=$(sed -n 's/^toolchain go\([0-9][0-9.]*\)$/\1/p' "$root/go.mod")
[[ -n $wanted ]] || wanted=$(sed -n 's/^go \([0-9][0-9.]*\)$/\1/p' "$root/go.mod")
tmp=$(mktemp -d /tmp/go-toolchain-test.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
# Only the tools the script needs, no go: /usr/bin holds Debian's go.
mkdir -p "$tmp/nogo"
for t in bash sed awk uname mktemp rm mkdir ln chmod cat dirname env apt-get; do
	p=$(command -v $t) && ln -s "$p" "$tmp/nogo/$t"
done
nogo_path=$tmp/nogo

passed=0 failed=0
pass() { echo "PASS: $1"; passed=$((passed + 1)); }
fail() { echo "FAIL: $1"; sed 's/^/    /' "$tmp/err" 2>/dev/null; failed=$((failed + 1)); }

fake_go() { # fake_go DIR VERSION: a go that only reports its version
	mkdir -p "$1"
	printf '#!/bin/sh\n[ "$1" = version ] && echo "go version go%s linux/amd64"\n' "$2" >"$1/go"
	chmod +x "$1/go"
}

# 1. A go new enough on PATH is used as it is, and nothing is fetched.
fake_go "$tmp/new" 1.100.0 # numerically newer, lexically older than 1.25
got=$(PATH=$tmp/new:$nogo_path "$tool" ensure "$tmp/b1" 2>"$tmp/err")
if [[ $got == "$tmp/new/go" && ! -e $tmp/b1/go ]]; then pass "new-enough go on PATH used (go1.100.0)"; else fail "new-enough go: got '$got'"; fi

fake_go "$tmp/short" "${wanted%.0}" # "1.25" for go.mod's 1.25.0
got=$(PATH=$tmp/short:$nogo_path "$tool" which "$tmp/b1" 2>"$tmp/err")
if [[ $got == "$tmp/short/go" ]]; then pass "go${wanted%.0} counts as $wanted"; else fail "go${wanted%.0}: got '$got'"; fi

# 2. Too old: which names plain go (the go command's own error follows).
fake_go "$tmp/old" 1.24.9
got=$(PATH=$tmp/old:$nogo_path "$tool" which "$tmp/b2" 2>/dev/null)
if [[ $got == go ]]; then pass "which with only a too-old go names plain go"; else fail "which with too-old go: got '$got'"; fi

if [[ ! -x $debian_go ]]; then
	echo "Debian's golang-go (Go 1.19) is not installed: make deps installs it"
	[[ ${RBD_NBD_GRAPH_REQUIRE:-} == 1 ]] && failed=$((failed + 1))
	echo "$passed passed, $failed failed"
	((failed == 0))
	exit
fi

# 3. Debian's Go 1.19 and the proxy off: a clear error, non-zero exit,
# nothing left behind.
PATH=/usr/lib/go-1.19/bin:$nogo_path GOPROXY=off "$tool" ensure "$tmp/b2" >"$tmp/out" 2>"$tmp/err"
rc=$?
if [[ $rc != 0 && ! -e $tmp/b2/go ]] && grep -q "older than go.mod's $wanted" "$tmp/err" &&
	grep -q "could not fetch golang.org/toolchain@v0.0.1-go$wanted" "$tmp/err" &&
	grep -q "install Go $wanted or newer" "$tmp/err"; then
	pass "fetch failure reported (rc=$rc)"
else fail "fetch failure: rc=$rc"; fi

# 4. Debian 12's Go 1.19 first on PATH: the toolchain is fetched through
# the module proxy into BUILD/go and runs.
start=$(date +%s)
got=$(PATH=/usr/lib/go-1.19/bin:$nogo_path "$tool" ensure "$tmp/b3" 2>"$tmp/err")
rc=$?
if [[ $rc == 0 && $got == "$tmp/b3/go/bin/go" ]] && grep -q "go$wanted " <<<"$("$got" version)" &&
	grep -q "go 1.19.8 at /usr/lib/go-1.19/bin/go is older than go.mod's $wanted" "$tmp/err" &&
	grep -q "fetching go$wanted through the Go module proxy" "$tmp/err"; then
	pass "Go 1.19 on PATH: go$wanted fetched in $(($(date +%s) - start)) s"
else fail "Go 1.19 on PATH: rc=$rc got '$got'"; fi
# ... and it builds: the fetched go compiles a program in this module.
if (cd "$root" && GOTOOLCHAIN=local "$tmp/b3/go/bin/go" vet ./internal/... 2>"$tmp/err"); then
	pass "fetched go vets ./internal/..."
else fail "fetched go cannot vet ./internal/..."; fi
# Again: the fetched one is found, nothing is downloaded.
got=$(PATH=/usr/lib/go-1.19/bin:$nogo_path GOPROXY=off "$tool" ensure "$tmp/b3" 2>"$tmp/err")
if [[ $got == "$tmp/b3/go/bin/go" ]] && grep -q "fetched earlier" "$tmp/err"; then pass "second ensure reuses BUILD/go"; else fail "second ensure: got '$got'"; fi
# The Makefile picks it for every recipe.
out=$(cd "$root" && PATH=/usr/lib/go-1.19/bin:$PATH make --no-print-directory -n build BUILD="$tmp/b3" 2>"$tmp/err")
if grep -q "^$tmp/b3/go/bin/go build " <<<"$out"; then pass "make build uses BUILD/go"; else
	echo "$out" >"$tmp/err"; fail "make build does not use BUILD/go"; fi

# 5. No go at all (GO names none): Debian's go downloads it (here from the
# first fetch's cache as a file:// proxy, so offline and quick).
got=$(PATH=$nogo_path GO=/nonexistent/go GOPROXY=file://$tmp/b3/toolchain/cache/download GOSUMDB=off \
	"$tool" ensure "$tmp/b4" 2>"$tmp/err")
rc=$?
if [[ $rc == 0 && $got == "$tmp/b4/go/bin/go" ]] && grep -q "go$wanted " <<<"$("$got" version)" &&
	grep -q "no go command (/nonexistent/go)" "$tmp/err"; then
	pass "no go: fetched with Debian's go"
else fail "no go: rc=$rc got '$got'"; fi

echo "$passed passed, $failed failed"
((failed == 0))
