# expiry-stream: `just` lists the recipes; `just verify` is exactly what CI runs.

set shell := ["bash", "-euo", "pipefail", "-c"]

# List the recipes.
default:
    @just --list --unsorted

# Everything CI runs, in order; ends by checking the tree is unchanged.
verify: fmt-check unit integration run-smoke chaos
    git diff --exit-code
    @echo "verify: all passed"

# Inner loop: unit tests and integration tests on a redis-server process.
quick:
    cargo test --lib --bins
    EXPIRY_STREAM_REDIS=process cargo test --test pipeline

# Formatting check (no changes made).
fmt-check:
    cargo fmt --check

# Unit tests of the pure core, store parsing and oracle arithmetic.
unit:
    cargo test --lib --bins

# Integration tests against real Redis, on both backends (container, then process).
integration: integration-container integration-process

# Integration tests with Redis in a container (builds the local image if missing).
integration-container:
    scripts/build-redis-image.sh
    EXPIRY_STREAM_REDIS=container cargo test --test pipeline

# Integration tests with Redis as a local redis-server process.
integration-process:
    EXPIRY_STREAM_REDIS=process cargo test --test pipeline

# The main job with its defaults (100,000 keys, 64 consumers); fails unless the oracle says 0 lost, 0 duplicates.
run-smoke:
    mkdir -p reports
    cargo run --release -- run --report reports/run-100k.json

# Throughput against the Redis server's own expire-and-notify rate, same server, same run.
bench keys="1000000":
    mkdir -p reports
    cargo run --release -- bench --keys {{keys}} --report reports/bench.json

# Lints (not part of verify: clippy is a second full compile on 2 cores).
lint:
    cargo clippy --all-targets -- -D warnings

# Chaos scenarios (scenarios/*.toml) against real Redis, pipeline as separate processes; each report must match its snapshot.
chaos:
    cargo test --test chaos -- --test-threads=1

# Run the chaos scenarios and accept their reports as the new snapshots (review the diff before committing).
chaos-accept:
    INSTA_UPDATE=always cargo test --test chaos -- --test-threads=1 every_scenario
