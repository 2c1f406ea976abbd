# vigil — make targets. `make check` is what CI runs.
GO        ?= go
DATA_DIR  ?= ./vigil-data
PKGS      := ./...

.PHONY: run build test check bench bench-persistence bench-scale fmt vet tidy-check clean

## run: build and start `vigil serve` on 127.0.0.1:8484 with its data in ./vigil-data
run: build
	./bin/vigil serve --data-dir $(DATA_DIR) --log-format console

build:
	CGO_ENABLED=0 $(GO) build -o bin/vigil .

## test: vet, then every test with the race detector, then the scale test (no race detector)
test:
	$(GO) vet $(PKGS)
	$(GO) test -race -shuffle=on -count=1 $(PKGS)
	$(GO) test -count=1 -run 'TestHungTargetsDoNotDelayHealthyOnes' -v ./actors

## check: formatting, module tidiness, then the tests
check: tidy-check fmt-check test

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

tidy-check:
	$(GO) mod tidy -diff

## bench: micro-benchmarks of the health logic and the store
bench:
	$(GO) test -run '^$$' -bench . -benchmem -count 5 ./actors/health ./persistence

## bench-scale: the hung-target scale test with its measured lags
bench-scale:
	$(GO) test -count=1 -run 'TestHungTargetsDoNotDelayHealthyOnes' -v ./actors

clean:
	rm -rf bin
