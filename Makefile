# rbd-nbd-graph. The two commands a fresh Debian 12 machine needs:
#   make demo   the whole story: Ceph, the driver, dockerd running a container
#   make test   every test (unit, real clients, real Ceph, the VM suite)
# Both install what they need first (make deps).

SHELL      := /bin/bash
GO         ?= go
TAGS       ?= pacific
export CGO_ENABLED := 1
GOFLAGS_BUILD := -tags $(TAGS)
BUILD      := $(CURDIR)/.build
BIN        := $(CURDIR)/bin/rbd-nbd-graph
STATICCHECK_VERSION := v0.7.0

# Every Debian package the build, tests, demo and benchmarks use.
DEBS := gcc pkg-config librbd-dev librados-dev \
	ceph-mon ceph-osd ceph-common rbd-nbd \
	libnbd-bin nbdkit fio qemu-utils qemu-block-extra \
	qemu-system-x86 busybox-static cpio kmod \
	docker.io iproute2 e2fsprogs xfsprogs util-linux procps

.PHONY: all build deps test test-unit test-integration check bench demo cluster cluster-stop vmtest bench-vm clean

all: build

build: $(BIN)

$(BIN): FORCE
	@mkdir -p $(dir $(BIN))
	$(GO) build $(GOFLAGS_BUILD) -o $(BIN) ./cmd/rbd-nbd-graph

FORCE:

# Idempotent: apt runs only when a package is missing.
deps:
	@missing=$$(for p in $(DEBS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "deps: installing $$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	else echo "deps: all Debian packages present"; fi
	$(GO) mod download

# Fast loop: no Ceph, no VM, no root needed beyond what the tests skip.
test-unit: deps
	$(GO) test $(GOFLAGS_BUILD) -count=1 ./nbd/... ./graph/... ./bench/... ./cmd/...

check:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt: files above need formatting"; exit 1; }
	$(GO) vet $(GOFLAGS_BUILD) ./...
	@mkdir -p $(BUILD)/bin
	GOBIN=$(BUILD)/bin $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	$(BUILD)/bin/staticcheck -tags $(TAGS) ./...

test: deps check build test-unit

clean:
	rm -rf bin $(BUILD)
