# batchgate developer commands. `make test` and `make demo` start local
# RabbitMQ and Redis first when they are installed but not running.

.PHONY: build test demo lint fmt

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
