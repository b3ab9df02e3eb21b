# expiry-stream: `just` lists the recipes; `just verify` is exactly what CI runs.

set shell := ["bash", "-euo", "pipefail", "-c"]

# List the recipes.
default:
    @just --list --unsorted

# Everything CI runs, in order; ends by checking the tree is unchanged.
verify: fmt-check arch unit integration compat-smoke model loom sim-sweep differential chaos run-smoke full fuzz-smoke
    git diff --exit-code
    @echo "verify: all passed"

# Inner loop: unit tests and integration tests on a redis-server process.
quick:
    cargo test --lib --bins
    EXPIRY_STREAM_REDIS=process cargo test --test pipeline --test bad_input --test exactly_once

# Formatting check (no changes made).
fmt-check:
    cargo fmt --check

# The layering: each module imports only the modules below it, and only the store speaks Redis (reads the sources; no Redis needed).
arch:
    cargo test --test arch

# Unit tests of the pure core, store parsing and oracle arithmetic; the README and doc examples compile.
unit:
    cargo test --lib --bins
    cargo test --doc

# Integration tests against real Redis, on both backends (container, then process).
integration: integration-container integration-process

# Integration tests with Redis in a container (builds the local image if missing).
integration-container:
    scripts/build-redis-image.sh
    EXPIRY_STREAM_REDIS=container cargo test --test pipeline --test bad_input --test exactly_once

# Other servers (docs/COMPAT.md) inside verify: the refusal of Redis 6.2, the model's setting held to Redis 7.0, and the integration, bad-input and model-setting tests on Valkey 9.1 (servers fetched by scripts/get-servers.sh).
compat-smoke:
    scripts/get-servers.sh redis-6.2 valkey-9.1
    EXPIRY_STREAM_REDIS=process cargo test --test compat
    EXPIRY_STREAM_SERVER=valkey-9.1 EXPIRY_STREAM_REDIS=process cargo test --test pipeline --test bad_input --test exactly_once --test compat

# Every suite against every server of the matrix (Redis 6.2, 7.0, 8.2, Valkey 8.1, 9.1), then docs/COMPAT.md from the results (about 30 min on 2 cores). COMPAT_SERVERS="..." runs a subset.
compat:
    scripts/compat.sh

# Integration tests with Redis as a local redis-server process.
integration-process:
    EXPIRY_STREAM_REDIS=process cargo test --test pipeline --test bad_input --test exactly_once

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

# Every fuzz target replays its committed inputs (fuzz/seeds/<t>, fuzz/regressions/<t>) once, with a fixed seed and no random exploration: verify cannot pass or fail by luck. Random search is `fuzz-explore`.
fuzz-smoke:
    #!/usr/bin/env bash
    set -euo pipefail
    command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
    cd fuzz
    cargo fuzz build -s none -O
    for t in $(cargo fuzz list); do
        dirs=""
        for d in seeds/$t regressions/$t; do
            if [ -d "$d" ]; then dirs="$dirs $d"; fi
        done
        n=$(find $dirs /dev/null -type f 2>/dev/null | wc -l)
        echo "fuzz $t: replaying $n committed inputs"
        mkdir -p corpus
        # -runs=0: execute the given inputs and stop (nothing is mutated, nothing is written).
        if ! cargo fuzz run -s none -O $t $dirs -- -runs=0 -seed=1 -timeout=10 > corpus/$t.smoke.log 2>&1; then
            tail -40 corpus/$t.smoke.log
            echo "fuzz target $t fails on a committed input (see above): fix the code, keep the input"
            exit 1
        fi
    done

# Random fuzzing of every target (FUZZ_SECONDS each, default 300) from the committed inputs plus the local, uncommitted corpus in fuzz/corpus/<t>. A crash is not kept automatically: copy it into fuzz/regressions/<t>/ and commit it with the fix, so fuzz-smoke replays it from then on.
fuzz-explore:
    #!/usr/bin/env bash
    set -euo pipefail
    command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
    cd fuzz
    cargo fuzz build -s none -O
    failed=""
    for t in $(cargo fuzz list); do
        mkdir -p corpus/$t
        dirs="corpus/$t"
        for d in seeds/$t regressions/$t; do
            if [ -d "$d" ]; then dirs="$dirs $d"; fi
        done
        echo "fuzz $t for ${FUZZ_SECONDS:-300}s (random seed)"
        # The first directory receives new inputs: corpus/<t>, which git ignores.
        if cargo fuzz run -s none -O $t $dirs -- -max_total_time=${FUZZ_SECONDS:-300} -timeout=10 > corpus/$t.log 2>&1; then
            grep -E "^Done" corpus/$t.log || true
        else
            tail -40 corpus/$t.log
            echo "fuzz target $t crashed; the input is in fuzz/artifacts/$t/."
            echo "  keep it:   mkdir -p fuzz/regressions/$t && cp fuzz/artifacts/$t/<crash-file> fuzz/regressions/$t/<what-it-is>"
            echo "  replay it: cd fuzz && cargo fuzz run -s none -O $t fuzz/regressions/$t/<what-it-is>"
            echo "  then fix the code; fuzz-smoke (in verify) replays fuzz/regressions/ from then on"
            failed="$failed $t"
        fi
    done
    if [ -n "$failed" ]; then
        echo "fuzz-explore: crashes in:$failed"
        exit 1
    fi

# Mutation testing (not in verify: its own time budget, hours on 2 cores; docs/MUTANTS.md): the Lua catalogue, then cargo-mutants over core, consume, capture and store. Results in mutants.out/ (not committed); update docs/MUTANTS.md from them.
mutants:
    #!/usr/bin/env bash
    set -uo pipefail
    rc=0
    python3 scripts/mutants/lua.py || rc=$?
    scripts/mutants/rust.sh all || rc=$?
    echo "== mutants: summary"
    cat mutants.out/lua/summary.md mutants.out/rust-summary.txt
    exit $rc

# The Lua scripts' mutation catalogue (scripts/mutants/lua.toml) on the fast tier, no rebuild per mutant (about an hour on 2 busy cores). ARGS: --only ID,ID, --check.
mutants-lua *args:
    python3 scripts/mutants/lua.py {{args}}

# cargo-mutants (.cargo/mutants.toml) over PART: core, io (store, consume, capture) or all; ARGS go to cargo mutants (e.g. --shard 0/8).
mutants-rust part="all" *args:
    scripts/mutants/rust.sh {{part}} {{args}}

# Before a release: the checks too slow or too random for verify: random fuzzing and the server matrix (docs/COMPAT.md); mutation testing (`just mutants`, hours) is run on its own.
release: fuzz-explore compat

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
    rm -f ${CARGO_TARGET_DIR:-target}/tmp/chaos/FAILED.txt
    cargo test --test chaos -- --test-threads=1 || { echo "chaos: failed scenarios:"; cat ${CARGO_TARGET_DIR:-target}/tmp/chaos/FAILED.txt 2>/dev/null; exit 101; }

# Run the chaos scenarios and accept their reports as the new snapshots (review the diff before committing).
chaos-accept:
    INSTA_UPDATE=always cargo test --test chaos -- --test-threads=1 every_scenario
