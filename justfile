# expiry-stream: `just` lists the recipes; `just verify` is exactly what CI runs.

set shell := ["bash", "-euo", "pipefail", "-c"]

# List the recipes.
default:
    @just --list --unsorted

# Everything CI runs, in order; ends by checking the tree is unchanged.
verify: fmt-check unit integration model loom sim-sweep differential chaos run-smoke full fuzz-smoke
    git diff --exit-code
    @echo "verify: all passed"

# Inner loop: unit tests and integration tests on a redis-server process.
quick:
    cargo test --lib --bins
    EXPIRY_STREAM_REDIS=process cargo test --test pipeline --test bad_input

# Formatting check (no changes made).
fmt-check:
    cargo fmt --check

# Unit tests of the pure core, store parsing and oracle arithmetic; the README and doc examples compile.
unit:
    cargo test --lib --bins
    cargo test --doc

# Integration tests against real Redis, on both backends (container, then process).
integration: integration-container integration-process

# Integration tests with Redis in a container (builds the local image if missing).
integration-container:
    scripts/build-redis-image.sh
    EXPIRY_STREAM_REDIS=container cargo test --test pipeline --test bad_input

# Integration tests with Redis as a local redis-server process.
integration-process:
    EXPIRY_STREAM_REDIS=process cargo test --test pipeline --test bad_input

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

# The seed's full run: 3,000,000 keys, 64 consumers, 5 ms work; report in reports/seed-3m.{json,md,html}.
full:
    cargo test --release --test full -- --ignored --nocapture

# Every fuzz target for a short fixed time (FUZZ_SECONDS, default 30) on the stable toolchain (no sanitizer: `-s none`).
fuzz-smoke:
    #!/usr/bin/env bash
    set -euo pipefail
    command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
    cd fuzz
    cargo fuzz build -s none -O
    for t in $(cargo fuzz list); do
        mkdir -p corpus/$t
        echo "fuzz $t for ${FUZZ_SECONDS:-30}s"
        if ! cargo fuzz run -s none -O $t corpus/$t seeds/$t -- -max_total_time=${FUZZ_SECONDS:-30} -timeout=10 > corpus/$t.log 2>&1; then
            tail -40 corpus/$t.log
            echo "fuzz target $t failed; the input is in fuzz/artifacts/$t: add it as a regression test"
            exit 1
        fi
        grep -E "^Done" corpus/$t.log
    done

# Property tests: the consumer/commit protocol on the model against a plain reference model (proptest-state-machine), and every encoding's round trip.
model:
    cargo test --test model

# loom models (two or three threads each): capture race, fence, ledger, in-flight/shutdown, and should_panic proofs (the seed's lock-only protocol, no fence, no ledger).
loom:
    LOOM_MAX_PREEMPTIONS=3 cargo test --no-default-features --features loom --test loom

# Deterministic simulation: its tests (snapshot, determinism), COUNT seeds that must all pass, then sweeps with the fence and with the ledger off that must find duplicates.
sim-sweep count="10000":
    cargo test --test sim
    cargo run --release -- sim sweep --from 0 --count {{count}}
    EXPIRY_STREAM_UNSAFE=no-fence cargo run --release -- sim sweep --from 0 --count 2000 --expect-failure --show 1
    EXPIRY_STREAM_UNSAFE=no-ledger cargo run --release -- sim sweep --from 0 --count 2000 --expect-failure --show 1

# Differential tests: generated operation sequences on the model and on a real redis-server process; replies and state (TTLs included) must agree after every step. 200 cases (~10 min on 2 cores); DIFFERENTIAL_CASES overrides.
differential:
    DIFFERENTIAL_CASES=${DIFFERENTIAL_CASES:-200} EXPIRY_STREAM_REDIS=process cargo test --test differential -- --nocapture

# Chaos scenarios (scenarios/*.toml) against real Redis, pipeline as separate processes; each report must match its snapshot.
chaos:
    cargo test --test chaos -- --test-threads=1

# Run the chaos scenarios and accept their reports as the new snapshots (review the diff before committing).
chaos-accept:
    INSTA_UPDATE=always cargo test --test chaos -- --test-threads=1 every_scenario
