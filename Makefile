# ulpatch-rs — the entry points a fresh machine needs. See README.md.

CARGO ?= cargo

.PHONY: all build test demo lint man

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

# Man pages and bash/zsh/fish completions, generated from the tools' clap definitions.
man:
	$(CARGO) run -q -p ulp-build --example man -- target/man
	$(CARGO) run -q -p ulp-apply --example man -- target/man
	@echo "written to target/man (man -l target/man/ulp-apply.1)"
