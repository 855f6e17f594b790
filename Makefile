# ulpatch-rs — the entry points a fresh machine needs. See README.md.

CARGO ?= cargo

.PHONY: all build test demo lint

all: build

build:
	$(CARGO) build --workspace

# The test command: unit tests of every crate and the end-to-end tests in tests/.
test: build
	$(CARGO) test --workspace

# Patches a running program in front of you, then reverts it (about 10 seconds).
demo: build
	fixtures/demo/demo.sh

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
