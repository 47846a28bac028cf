# s3snap: `make demo` runs the main job against local servers; `make test`
# runs every test (unit and integration) against them. Both start what they
# need through integration/env.sh.
GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X main.version=$(VERSION)
CACHEBIN := $(or $(S3SNAP_BIN),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/s3snap/bin)

.PHONY: build demo test unit lint fuzz env-up env-down bench clean

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/s3snap ./cmd/s3snap

demo:
	integration/env.sh up
	integration/demo.sh

env-up:
	integration/env.sh up

env-down:
	integration/env.sh down

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(CACHEBIN)/staticcheck ./...

# Unit tests only: no servers needed.
unit:
	$(GO) test -count=1 $$($(GO) list ./... | grep -v /integration)

# Tests never ask an EC2 instance metadata service (none exists here).
test bench: export AWS_EC2_METADATA_DISABLED := true

test: env-up lint
	$(GO) test -count=1 -timeout 30m ./...
	$(MAKE) --no-print-directory fuzz

# Each fuzz target of a parser of untrusted input (lazy indexes, layer
# tars, manifests, lifecycle policies read back from the bucket) runs
# briefly from its seed corpus; FUZZTIME=10m for a real hunt.
FUZZTIME ?= 15s
FUZZ_TARGETS := lazy:FuzzDecodeTOC lazy:FuzzTree lazy:FuzzBuild store:FuzzParseManifest lifecycle:FuzzPolicy internal/untar:FuzzApply
fuzz:
	@for t in $(FUZZ_TARGETS); do \
	  pkg=$${t%%:*}; f=$${t#*:}; \
	  echo "fuzz ./$$pkg $$f ($(FUZZTIME))"; \
	  $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 1x ./$$pkg/ || exit 1; \
	done

# Benchmarks print ratios against the SDK's plain GET and its downloader.
bench: env-up
	$(GO) test -count=1 -run '^$$' -bench . -benchtime 1x -timeout 30m ./integration/bench/...

clean:
	rm -rf bin
