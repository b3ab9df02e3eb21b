#!/usr/bin/env bash
# cargo-mutants over src/core, src/store (not the model), src/consume and src/capture
# (.cargo/mutants.toml), in two parts with their own fast tiers (docs/MUTANTS.md):
#   core: pure code; its unit tests and the model's property tests (--lib --test model);
#         the consumer's state machine (src/core/consumer.rs) with the unit tests (--lib).
#   io:   store, consume, capture; also the simulator (its safe sweep and snapshot) and the
#         integration tests on a redis-server process (exactly_once, pipeline, bad_input).
# Usage: scripts/mutants/rust.sh [core|io|all] [cargo-mutants options, e.g. --shard 0/8]
# Results in mutants.out/rust-<part>/mutants.out/ (caught.txt, missed.txt, timeout.txt,
# unviable.txt, outcomes.json); a one-line summary per part in mutants.out/rust-summary.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."
part=${1:-all}
shift || true
command -v cargo-mutants >/dev/null || nice -n 19 cargo install cargo-mutants --locked --version 27.1.0

# Mutated builds get a target directory of their own: never one another build (or another
# worktree) links from while a mutant is in it.
export CARGO_TARGET_DIR="$PWD/target/mutants"
# No debug info in these builds: a mutant's build is mostly linking test binaries, and the
# line tables are never read (a failing test is only counted, not debugged).
export CARGO_PROFILE_DEV_DEBUG=0 CARGO_PROFILE_TEST_DEBUG=0
export EXPIRY_STREAM_REDIS=process
# A failing snapshot or property test must not write into the tree, nor shrink for minutes.
export INSTA_UPDATE=no PROPTEST_DISABLE_FAILURE_PERSISTENCE=1 PROPTEST_MAX_SHRINK_ITERS=0
jobs=${MUTANTS_JOBS:-1}
mkdir -p mutants.out
rc=0

run() { # name, cargo-mutants args...
    local name=$1
    shift
    echo "== cargo mutants ($name): $*"
    nice -n 19 cargo mutants -j "$jobs" --output "mutants.out/rust-$name" "$@" || rc=$?
    local d="mutants.out/rust-$name/mutants.out"
    count() { if [ -f "$d/$1" ]; then wc -l <"$d/$1"; else echo 0; fi; }
    echo "rust $name: caught $(count caught.txt), missed $(count missed.txt), timeout $(count timeout.txt), unviable $(count unviable.txt)" |
        tee -a mutants.out/rust-summary.txt
}

: >mutants.out/rust-summary.txt
case $part in
core | all)
    run core -f 'src/core/**' -e src/core/consumer.rs "$@" -- --lib --test model
    # The consumer's state machine: its unit tests pin its decisions; `--lib` alone builds the
    # crate once per mutant instead of twice (tests/model's run of the production consumer on
    # the model reaches it too, and is in the io part's tier).
    run core-consumer -f src/core/consumer.rs "$@" -- --lib
    ;;&
io | all)
    # Everything after `--` goes to cargo test; after the second `--`, to the test binaries
    # (the sweeps that must find duplicates with a safety switch off test the checker, not the code).
    run io -f 'src/store/**' -f 'src/consume/**' -f 'src/capture/**' "$@" -- \
        --lib --test model --test sim --test exactly_once --test pipeline --test bad_input -- --skip sweep_finds_duplicates
    ;;
core) ;;
*)
    echo "usage: $0 [core|io|all] [cargo-mutants options]" >&2
    exit 64
    ;;
esac
cat mutants.out/rust-summary.txt
# cargo-mutants: 0 all caught, 2 some missed, 3 some timed out, 4 baseline failed.
exit $rc
