# batchgate developer commands. `make test` and `make demo` start local
# RabbitMQ and Redis first when they are installed but not running.

.PHONY: bench build test demo lint fmt

build:
	cargo build --workspace --bins

test:
	bash scripts/test.sh

demo:
	bash scripts/demo.sh

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all

# Throughput and peak memory of `batchgate cost` beside jq and Python on a
# seeded 1,000,000-line output file (about 1.2 GB, kept in target/bench).
# LINES=N runs a smaller file.
bench:
	cargo build --release -p batchgate-cli
	python3 scripts/bench/run.py --lines $(or $(LINES),1000000)
