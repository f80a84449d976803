# rbd-nbd-graph. The two commands a fresh Debian 12 machine needs:
#   make demo   the whole story: Ceph, the driver, dockerd running a container
#   make test   every test (unit, real clients, real Ceph, the VM suite)
# Both install what they need first (make deps).

SHELL      := /bin/bash
BUILD      := $(CURDIR)/.build
# The go command: GO=... if given, else a go on PATH at least as new as
# go.mod asks, else the toolchain `make deps` fetched into .build/go
# (dist/go-toolchain; evaluated at each use, so it sees that fetch).
GO         ?= $(shell dist/go-toolchain which $(BUILD))
TAGS       ?= pacific
export CGO_ENABLED := 1
# What `rbd-nbd-graph version` prints (cmd/rbd-nbd-graph/version.go).
VERSION    ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo unknown)
COMMIT     ?= $(shell git rev-parse HEAD 2>/dev/null)
GOFLAGS_BUILD := -tags $(TAGS) -ldflags "-X main.version=$(VERSION) -X main.commit=$(COMMIT)"
BIN        := $(CURDIR)/bin/rbd-nbd-graph
STATICCHECK_VERSION := v0.7.0

# Every Debian package the build, tests, demo and benchmarks use
# (golang-go, Go 1.19, only downloads go.mod's toolchain: dist/go-toolchain).
DEBS := gcc pkg-config librbd-dev librados-dev \
	ceph-mon ceph-osd ceph-mgr ceph-common rbd-nbd \
	libnbd-bin nbdkit fio qemu-utils qemu-block-extra \
	qemu-system-x86 busybox-static cpio kmod \
	docker.io iproute2 e2fsprogs xfsprogs util-linux procps jq librsvg2-bin \
	python3-libnbd golang-go systemd docker-registry gdb

.PHONY: all build deb deps test test-dist test-vm-clone test-unit test-fuzz test-clients test-integration check bench demo demo-containerd cluster cluster-stop vmtest vmtest-containerd soak bench-vm bench-vm-containers bench-vm-crosscheck bench-sweep-vm bench-vm-containerd clean

all: build

build: $(BIN)

$(BIN): FORCE
	@mkdir -p $(dir $(BIN))
	$(GO) build $(GOFLAGS_BUILD) -o $(BIN) ./cmd/rbd-nbd-graph

FORCE:

# The Debian package, from the repo's own files (dist/mkdeb): the binary,
# the systemd units, /etc/rbd-nbd-graph/rbd-nbd-graph.conf and
# /etc/default/rbd-nbd-graph (conffiles), a man page made from the CLI
# help (dist/manpage). DEB_VERSION must start with a digit.
DEB_VERSION ?= 0.1.0~git$(shell git log -1 --format=%cd.%h --date=format:%Y%m%d 2>/dev/null || echo 0)
DEB_DIR     := $(BUILD)/deb
deb: build
	@rm -f $(DEB_DIR)/rbd-nbd-graph_*.deb
	dist/mkdeb $(BIN) '$(DEB_VERSION)' $(DEB_DIR)

# Idempotent: apt runs only when a package is missing, and the Go
# toolchain is fetched only when the machine's is missing or older than
# go.mod asks (Debian 12's is 1.19): see dist/go-toolchain.
deps:
	@missing=$$(for p in $(DEBS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "deps: installing $$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	else echo "deps: all Debian packages present"; fi
	@go=$$(dist/go-toolchain ensure $(BUILD)) && echo "$$go mod download" && "$$go" mod download

# Fast loop: no VM, and no Ceph unless CEPH_CONF names a running cluster
# (the tests that need one skip; test-integration runs them). The layer
# store's tests run again under the race detector: its timers (delayed
# unmounts), reaper and flattener share layers with requests.
test-unit: deps
	RBD_NBD_GRAPH_NO_CEPH=1 $(GO) test $(GOFLAGS_BUILD) -count=1 ./nbd/... ./graph/... ./bench/... ./cmd/... ./internal/...
	RBD_NBD_GRAPH_NO_CEPH=1 $(GO) test $(GOFLAGS_BUILD) -race -count=1 ./graph/

# The protocol parsers under the fuzzer, FUZZTIME each: the handshake
# and the transmission loop against a server, and the request and
# NBD_OPT_INFO decoders. One instrumented test binary runs them in turn
# (go test -fuzz would relink it per target); the corpus it grows stays
# in .build/fuzz, and a crasher lands in nbd/testdata/fuzz and fails the run.
# A target that fails with nothing but "context deadline exceeded" (Go
# 1.26's fuzz coordinator racing its own -fuzztime deadline, golang/go#75804)
# runs once more; any written input, panic or test error fails at once.
FUZZTIME     ?= 10s
FUZZ_TARGETS := FuzzHandshake FuzzTransmission FuzzDecodeRequest FuzzParseInfoRequest
test-fuzz: deps
	@mkdir -p $(BUILD)/fuzz
	$(GO) test $(GOFLAGS_BUILD) -c -fuzz=. -o $(BUILD)/nbd-fuzz.test ./nbd
	@set -eo pipefail; cd nbd; for f in $(FUZZ_TARGETS); do \
		for try in 1 2; do \
			echo "== $$f ($(FUZZTIME))"; \
			rc=0; RBD_NBD_GRAPH_NO_CEPH=1 $(BUILD)/nbd-fuzz.test -test.run '^$$' -test.fuzz "^$$f\$$" \
				-test.fuzztime $(FUZZTIME) -test.fuzzcachedir $(BUILD)/fuzz > $(BUILD)/fuzz/$$f.log 2>&1 || rc=$$?; \
			grep -v '^fuzz: elapsed' $(BUILD)/fuzz/$$f.log || true; \
			[ $$rc = 0 ] && break; \
			if [ $$try = 1 ] && grep -q 'context deadline exceeded' $(BUILD)/fuzz/$$f.log && \
				! grep -qE 'Failing input written|panic:|_test.go:[0-9]+:' $(BUILD)/fuzz/$$f.log; then \
				echo "== $$f: a bare 'context deadline exceeded' at the fuzztime's end, no input written: Go's coordinator race (golang/go#75804, fixed in Go 1.27); once more"; \
				continue; \
			fi; \
			exit $$rc; \
		done; \
	done

# Real NBD clients (nbdinfo, nbdcopy, qemu-img, fio) against the built
# binary's `export` command.
test-clients: deps build
	RBD_NBD_GRAPH_BIN=$(BIN) $(GO) test $(GOFLAGS_BUILD) -count=1 ./test/clients

# A one-node Ceph cluster for trying things by hand (test/ceph/README.md):
# eval "$$(test/ceph/cluster env .build/ceph)" afterwards.
CEPH_DIR ?= $(BUILD)/ceph
cluster: deps
	test/ceph/cluster start $(CEPH_DIR)
cluster-stop:
	test/ceph/cluster stop $(CEPH_DIR)

# Against a real Ceph cluster, started for the run in its own folder and
# removed afterwards, also when a test fails or make is interrupted:
# rbdio's integration tests and `export rbd:` with real clients
# (test/rbdexport), the driver's RBD store (graph/rbdstore), and rbdio's image close
# and async IO again under the race detector. Packages with more Ceph tests go in CEPH_TEST_PKGS.
CEPH_TEST_DIR  := $(BUILD)/ceph-test
CEPH_TEST_PKGS ?= ./rbdio/... ./test/rbdexport/... ./graph/rbdstore/... ./cmd/...
test-integration: deps build
	@trap 'test/ceph/cluster purge $(CEPH_TEST_DIR) >/dev/null 2>&1' EXIT; \
	test/ceph/cluster purge $(CEPH_TEST_DIR) >/dev/null 2>&1; \
	RBD_NBD_GRAPH_CEPH_MGR=1 test/ceph/cluster start $(CEPH_TEST_DIR) >/dev/null && \
	CEPH_CONF=$(CEPH_TEST_DIR)/ceph.conf RBD_NBD_GRAPH_BIN=$(BIN) \
		$(GO) test $(GOFLAGS_BUILD) -count=1 $(CEPH_TEST_PKGS) && \
	CEPH_CONF=$(CEPH_TEST_DIR)/ceph.conf \
		$(GO) test $(GOFLAGS_BUILD) -race -count=1 -run 'TestCloseUnderFUALoad|TestAsyncIO' ./rbdio

# Under the test targets a test that lacks a tool, root or a cluster fails
# instead of skipping (and prerequisites inherit this), so CI cannot pass
# by skipping.
test test-dist test-unit test-clients test-integration vmtest: export RBD_NBD_GRAPH_REQUIRE := 1

# check also verifies the systemd units (test/dist/units-test.sh:
# systemd-analyze verify, Type=notify, ordering, stop timeouts).
check:
	test/dist/units-test.sh
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt: files above need formatting"; exit 1; }
	$(GO) vet $(GOFLAGS_BUILD) ./...
	@mkdir -p $(BUILD)/bin
	GOBIN=$(BUILD)/bin $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	$(BUILD)/bin/staticcheck -tags $(TAGS) ./...

# The install and packaging steps: dist/go-toolchain finding or fetching
# go.mod's Go (with Debian's Go 1.19 first on PATH, with none, with the
# proxy off) and dist/mkdeb's package (contents, conffiles, man page).
test-dist: deps build
	test/dist/go-toolchain-test.sh
	test/dist/deb-test.sh $(BIN)

test: deps check build test-dist test-unit test-fuzz test-clients test-integration test-vm-clone vmtest

# The kernel path, for real: Debian's kernel under qemu (TCG), the host's
# root shared read-only, a Ceph cluster and the end-to-end tests (test/e2e,
# build tag vmtest) run as root inside; one boot for the whole suite.
# `make vmtest RUN=TestName` runs one test with its log on the terminal.
# Results: .build/vm/e2e/results.json (+ console.log, tests.jsonl, dmesg.log).
VM_TIMEOUT ?= 3600
VM_OUT     := $(BUILD)/vm/e2e
E2E_BIN    := $(BUILD)/e2e.test
vmtest: deps build deb
	@mkdir -p $(BUILD)
	$(GO) test -c -tags '$(TAGS) vmtest' -o $(E2E_BIN) ./test/e2e
	$(GO) build -o $(BUILD)/test2json cmd/test2json
	@set -o pipefail; rc=0; \
	test/vm/run --out $(VM_OUT) --timeout $(VM_TIMEOUT) $(if $(RUN),--verbose) \
		--env E2E_TEST_BIN=$(E2E_BIN) --env RBD_NBD_GRAPH_BIN=$(BIN) \
		--env TEST2JSON=$(BUILD)/test2json --env RBD_NBD_GRAPH_REQUIRE=1 \
		--env E2E_DEB=$$(ls $(DEB_DIR)/rbd-nbd-graph_*.deb) \
		--env RUN='$(RUN)' --env E2E_TIMEOUT=$$(( $(VM_TIMEOUT) - 120 ))s \
		--env E2E_CONTAINERD_BENCH=$(E2E_CONTAINERD_BENCH) \
		test/vm/e2e.sh || rc=$$?; \
	test/vm/summary $(VM_OUT); exit $$rc

# The containerd snapshotter's VM tests alone (make vmtest runs them too).
vmtest-containerd:
	$(MAKE) vmtest RUN='^TestContainerd'

# The VM harness from a copy of the tree under /tmp, which the guest's
# tmpfs on /tmp would hide: one boot, no Ceph (test/vm/clone-test.sh).
test-vm-clone: deps
	test/vm/clone-test.sh

# The soak (not part of `make test`): in one VM boot, three containers on
# the graph driver write and verify checksummed files while the plugin is
# restarted (SIGTERM, SIGKILL) and the OSDs are paused (40-100 s) over and
# over for SOAK_DURATION (Ns, Nm or Nh); prints containers, IOs, faults by
# kind, IO errors and data verified (.build/vm/soak/soak-summary.txt) and
# fails on any IO error or verify failure (test/e2e/soak_test.go).
SOAK_DURATION ?= 10m
SOAK_OUT      := $(BUILD)/vm/soak
soak: export RBD_NBD_GRAPH_REQUIRE := 1
soak: deps build
	@mkdir -p $(BUILD)
	$(GO) test -c -tags '$(TAGS) vmtest' -o $(E2E_BIN) ./test/e2e
	$(GO) build -o $(BUILD)/test2json cmd/test2json
	@set -o pipefail; d='$(SOAK_DURATION)'; \
	case $$d in \
	*h) secs=$$(( $${d%h} * 3600 )) ;; *m) secs=$$(( $${d%m} * 60 )) ;; *s) secs=$${d%s} ;; \
	*) echo "soak: SOAK_DURATION=$$d: want a whole number of seconds, minutes or hours (600s, 10m, 1h)"; exit 2 ;; \
	esac; rc=0; \
	test/vm/run --out $(SOAK_OUT) --timeout $$(( secs + 2700 )) --verbose \
		--env E2E_TEST_BIN=$(E2E_BIN) --env RBD_NBD_GRAPH_BIN=$(BIN) \
		--env TEST2JSON=$(BUILD)/test2json --env RBD_NBD_GRAPH_REQUIRE=1 \
		--env RUN='^TestSoak$$' --env E2E_SOAK_DURATION=$${secs}s --env E2E_TIMEOUT=$$(( secs + 2500 ))s \
		test/vm/e2e.sh || rc=$$?; \
	test/vm/summary $(SOAK_OUT); \
	cat $(SOAK_OUT)/soak-summary.txt 2>/dev/null || echo "soak: no summary (the run ended before it; see $(SOAK_OUT)/console.log)"; \
	exit $$rc

# Benchmarks, leaving their results under results/: our NBD server
# against nbdkit and qemu-nbd under fio (ratios, bars), a short `bench
# sweep` (SVG chart, JSON, recommended driver options), the cross-check
# of bench against fio (15 % tolerance), the last two on a throw-away
# local Ceph cluster (or $CEPH_CONF), and `export rbd:` against fio's rbd
# engine (raw librbd) and qemu-nbd on one image (bar 0.85). Every step
# runs; make fails at the end if one missed its bar or failed.
BENCH_STEPS := nbd sweep crosscheck rbd
bench: deps build
	@failed=""; for s in $(BENCH_STEPS); do \
		echo "== bench/scripts/$$s.sh --out results/$$s"; \
		RBD_NBD_GRAPH_BIN=$(BIN) bench/scripts/$$s.sh --out results/$$s || failed="$$failed $$s"; \
	done; \
	if [ -n "$$failed" ]; then echo "bench: missed a bar or failed:$$failed (results/)"; exit 1; fi

# The kernel path against the anchors, in one VM boot: the same RBD image
# mapped by rbd-nbd-graph, Debian's rbd-nbd and krbd, fio on each; prints
# the table and the ours/rbd-nbd ratios (results/bench-vm/).
bench-vm: deps build
	GO=$(GO) RBD_NBD_GRAPH_BIN=$(BIN) bench/scripts/vm.sh --out results/bench-vm
	GO=$(GO) RBD_NBD_GRAPH_BIN=$(BIN) bench/scripts/layers-vm.sh --out results/layers-vm

# Whole containers, in one VM boot: `docker run --rm busybox true`, a
# 10-step `docker build` and `docker import` of ~100 MiB on our driver,
# on overlay2 (ext4 on a loop device) and the seed's way with krbd
# (test/krbdplugin), CONTAINERS_ROUNDS rounds (3) in rotated order;
# medians, ratios and the driver's step timings (results/containers-vm/).
# make bench-vm runs it too, in its boot after fio, unless BENCH_CONTAINERS=0.
bench-vm-containers: deps build
	GO=$(GO) RBD_NBD_GRAPH_BIN=$(BIN) bench/scripts/containers-vm.sh --out results/containers-vm

# The sweep that recommends driver options: bench sweep --target device of
# an RBD image in the VM (the host kernel has no NBD); charts in
# results/sweep-vm/sweep (docs/sweep/ holds the run of docs/2026-12-05-device-sweep.md).
bench-sweep-vm: deps build
	RBD_NBD_GRAPH_BIN=$(BIN) bench/scripts/sweep-vm.sh --out results/sweep-vm

# The containerd snapshotter's pull benchmark, in one VM boot: pull and
# start an image of ~75 MiB on host A (cold), host B (layers shared in the
# cluster) and containerd's overlayfs on local disk; prints the ratios
# (results/containerd-vm/).
bench-vm-containerd: deps build
	GO=$(GO) RBD_NBD_GRAPH_BIN=$(BIN) bench/scripts/containerd-vm.sh --out results/containerd-vm

# The device target's cross-check against fio libaio, in the VM.
bench-vm-crosscheck: deps build
	RBD_NBD_GRAPH_BIN=$(BIN) bench/scripts/crosscheck-vm.sh --out results/crosscheck-vm

# The krbd graph driver's closing demo on this path (test/demo/run.sh): Ceph,
# `rbd-nbd-graph serve`, dockerd on it, docker info | grep -i rbd, busybox
# imported and run, each step timed; in the VM when this kernel lacks NBD.
demo: deps build
	RBD_NBD_GRAPH_BIN=$(BIN) test/demo/run.sh

# The containerd front end for a person (test/demo/containerd.sh): Ceph,
# `rbd-nbd-graph snapshotter`, Debian's containerd with a proxy_plugins
# entry for it, busybox imported and run on /dev/nbdN, ctr snapshots and
# rbd ls, a restart of the snapshotter under a running container, each
# step timed; in the VM when this kernel lacks NBD.
demo-containerd: deps build
	RBD_NBD_GRAPH_BIN=$(BIN) test/demo/run.sh containerd.sh

clean:
	rm -rf bin $(BUILD)
