# vigil — make targets. `make check` is what CI runs.
GO        ?= go
DATA_DIR  ?= ./vigil-data
PKGS      := ./...

PROTOC_GEN_GO      := google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
PROTOC_GEN_GO_GRPC := google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2
OAPI_CODEGEN       := github.com/oapi-codegen/oapi-codegen/v2/cmd/oapi-codegen@v2.8.2
TOOLS              := $(CURDIR)/bin/tools

.PHONY: screenshots run build test check bench bench-persistence bench-scale bench-api bench-exec bench-smoke bench-fleet bench-fleet-nodes bench-notifiers bench-s bench-s-hog bench-tcp-100k bench-flood soak fmt vet tidy-check clean generate generate-client generate-proto generate-check tools fuzz

## run: build and start `vigil serve` on 127.0.0.1:8484 with its data in ./vigil-data
run: build
	./bin/vigil serve --data-dir $(DATA_DIR) --log-format console

build:
	CGO_ENABLED=0 $(GO) build -o bin/vigil .

## test: vet, then every test with the race detector, then the scale test (no race detector)
test:
	$(GO) vet $(PKGS)
	$(GO) test -race -shuffle=on -count=1 $(PKGS)
	$(GO) test -count=1 -run 'TestHungTargetsDoNotStarveHealthyOnes' -v ./actors

## screenshots: the dashboard's browser tests (they need Debian's chromium), writing the
## screenshots README shows into docs/screenshots
screenshots:
	$(GO) test -count=1 -run 'TestDashboard' ./ui/ -screenshots

## check: formatting, module tidiness, generated code, then the tests
check: tidy-check fmt-check generate-check test

## fuzz: every fuzz target, one after another, for FUZZTIME each (default 10s) or
## an equal share of FUZZBUDGET (seconds) each (.ci/fuzz); CI runs it with a
## budget. The corpora under testdata/fuzz run as tests in make test.
FUZZTIME ?= 10s
fuzz:
	FUZZTIME=$(FUZZTIME) FUZZBUDGET=$(FUZZBUDGET) ./.ci/fuzz

## tools: the pinned code generators, into bin/tools
tools:
	GOBIN=$(TOOLS) $(GO) install $(PROTOC_GEN_GO)
	GOBIN=$(TOOLS) $(GO) install $(PROTOC_GEN_GO_GRPC)
	GOBIN=$(TOOLS) $(GO) install $(OAPI_CODEGEN)

## generate: regenerate the Go client's types and calls from api/openapi.json, and
## probes/guest, fleet/peer and persistence/record from their .proto (that part needs protoc: Debian's protobuf-compiler)
generate: generate-client generate-proto

generate-client:
	GOBIN=$(TOOLS) $(GO) install $(OAPI_CODEGEN)
	cd client && $(TOOLS)/oapi-codegen -config oapi-codegen.yaml ../api/openapi.json

generate-proto: tools
	cd probes/guest && PATH="$(TOOLS):$$PATH" protoc --go_out=. --go_opt=paths=source_relative \
		--go-grpc_out=. --go-grpc_opt=paths=source_relative guest.proto
	cd fleet/peer && PATH="$(TOOLS):$$PATH" protoc --go_out=. --go_opt=paths=source_relative peer.proto
	cd persistence/record && PATH="$(TOOLS):$$PATH" protoc --go_out=. --go_opt=paths=source_relative record.proto

## generate-check: fail when checked-in generated code drifts from its source (the
## protobuf part is skipped without protoc)
generate-check:
	@$(MAKE) --no-print-directory generate-client >/dev/null && \
	if ! git diff --exit-code --stat -- client/gen.go; then echo "client/gen.go is out of date: run make generate and commit"; exit 1; fi
	@if ! command -v protoc >/dev/null; then echo "protoc not installed: skipping the protobuf drift check"; exit 0; fi; \
	$(MAKE) --no-print-directory generate-proto >/dev/null && \
	if ! git diff --exit-code --stat -- probes/guest fleet/peer persistence/record; then echo "generated protobuf code is out of date: run make generate and commit"; exit 1; fi

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

tidy-check:
	$(GO) mod tidy -diff

## bench: micro-benchmarks of the health logic and the store
bench:
	$(GO) test -run '^$$' -bench . -benchmem -count 5 ./health ./persistence

## bench-scale: the hung-target scale test with its measured lags
bench-scale:
	$(GO) test -count=1 -run 'TestHungTargetsDoNotStarveHealthyOnes' -v ./actors

## bench-api: summary and list latency with 100 000 probing instances
bench-api:
	$(GO) test -run '^$$' -bench ReadsAt100k -benchtime 2000x -count 3 ./api

## bench-exec: exec probes per second through the muxer and the real agent
bench-exec:
	$(GO) test -run '^$$' -bench ExecTrue -benchtime 3s -count 3 ./probes

## bench-smoke: a small mixed fleet through `vigil loadtest` (≤ 60 s), its targets in their own process:
## the report's "target" object is what they saw; CI runs it
bench-smoke: build
	./bin/vigil loadtest --instances 2000 --type mixed --interval 2s --timeout 1s --hung 0.01 --flip 0.05 --start-period 0 --duration 20s --json

## bench-fleet-nodes: 10 vigil serve nodes on one etcd, 10 000 TCP instances each at 10 s, beside a
## standalone node with the same load (≈ 6 minutes; needs etcd)
bench-fleet-nodes: build
	./bin/vigil loadtest --fleet-nodes 10 --instances 10000 --interval 10s --flip 0.01 --duration 60s --moves 100 --kills 3 --queries 200

## bench-notifiers: 100 000 TCP instances, 5 % flipping, without notifiers, with 3 (one down), and
## with 3 whose live ones deliver 4 instances' events at once, in turn, twice (≈ 18 minutes)
bench-notifiers: build
	for run in 1 2; do for n in "0 0" "3 1" "3 4"; do set -- $$n; \
		./bin/vigil loadtest --instances 100000 --type tcp --interval 10s --flip 0.05 --duration 120s --store badger --notifiers $$1 --notifier-parallel $$2 --json; \
	done; done

## soak: 60 minutes of vigil serve at 100 000 TCP instances, 5 % flipping, a SIGKILL and restart
## every 5 minutes, a SIGTERM at the end (VIGIL_SOAK, VIGIL_SOAK_INSTANCES, VIGIL_SOAK_EVERY change it)
soak:
	VIGIL_SOAK=$${VIGIL_SOAK:-60m} $(GO) test -count=1 -timeout 0 -run '^TestSoak$$' -v .

## bench-s: issue 19's scenario S, 3 runs (≈ 2 minutes each): 10 000 HTTP instances, 2 s interval,
## 1 s timeout, 1 % hung, through a vigil serve process (Badger, registered and read back over the
## API), the targets in their own process
bench-s: build
	for run in 1 2 3; do \
		./bin/vigil loadtest --serve --instances 10000 --type http --interval 2s --timeout 1s --hung 0.01 --duration 60s --json; \
	done

## bench-s-hog: scenario S with a CPU hog in another process taking 20 % of the machine (0.4 of a
## core on 2 cores, duty-cycled) through the window, 3 runs
bench-s-hog: build
	for run in 1 2 3; do \
		./bin/vigil loadtest --serve --instances 10000 --type http --interval 2s --timeout 1s --hung 0.01 --duration 60s --hog 0.2 --json; \
	done

## bench-tcp-100k: 100 000 TCP instances at 10 s through vigil serve, 3 runs (≈ 4 minutes each:
## registration over the API is most of it)
bench-tcp-100k: build
	for run in 1 2 3; do \
		./bin/vigil loadtest --serve --instances 100000 --type tcp --interval 10s --duration 60s --json; \
	done

## bench-flood: issue 18's API flood: 100 000 TCP instances at 10 s through vigil serve with 2 000
## concurrent API clients and without, in turn, twice (≈ 16 minutes)
bench-flood: build
	for run in 1 2; do for clients in 2000 0; do \
		./bin/vigil loadtest --serve --instances 100000 --type tcp --interval 10s --duration 60s --api-clients $$clients --json; \
	done; done

## bench-fleet: the issue-6 scenarios, as recorded in BENCHMARKS.md (≈ 5 minutes each run)
bench-fleet: build
	./bin/vigil loadtest --instances 100000 --type tcp --interval 10s --duration 30s
	./bin/vigil loadtest --instances 5000 --type http --interval 2s --timeout 1s --hung 0.01 --duration 30s
	./bin/vigil loadtest --instances 10000 --type http --interval 5s --timeout 1s --flip 0.05 --duration 60s
	./bin/vigil loadtest --instances 10000 --type http --interval 10s --timeout 2s --duration 20s

clean:
	rm -rf bin
