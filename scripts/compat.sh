#!/usr/bin/env bash
# The compatibility matrix: every suite against every server, then docs/COMPAT.md from the
# results (`just compat`). Logs per cell in reports/compat/<server>.<suite>.log.
#   COMPAT_SERVERS="valkey-9.1 redis-8.2" scripts/compat.sh     a subset (docs/COMPAT.md is
#                                                               written only for all five)
set -uo pipefail
cd "$(dirname "$0")/.."
servers=(${COMPAT_SERVERS:-redis-6.2 redis-7.0 redis-8.2 valkey-8.1 valkey-9.1})
scripts/get-servers.sh "${servers[@]}" || exit 1
out=reports/compat
mkdir -p "$out"
: > "$out/results.tsv"
cargo build -q --release || exit 1
cargo test -q --no-run --test pipeline --test exactly_once --test bad_input --test differential --test compat --test chaos || exit 1

# suite name | command (EXPIRY_STREAM_SERVER is set per server)
suites=(
  "integration|EXPIRY_STREAM_REDIS=process cargo test -q --test pipeline --test exactly_once"
  "bad input|EXPIRY_STREAM_REDIS=process cargo test -q --test bad_input"
  "differential|DIFFERENTIAL_CASES=${COMPAT_DIFFERENTIAL_CASES:-40} EXPIRY_STREAM_REDIS=process cargo test -q --test differential"
  "model setting|EXPIRY_STREAM_REDIS=process cargo test -q --test compat"
  "chaos subset|CHAOS_ONLY=kill-consumers,pause-consumer,replay,redis-restart-aof-always EXPIRY_STREAM_REDIS=container cargo test -q --test chaos -- --test-threads=1 every_scenario"
  "run 100k|EXPIRY_STREAM_REDIS=process target/release/expiry-stream run --keys 100000"
)
for s in "${servers[@]}"; do
  # A server without what the pipeline needs is refused at connect: every suite would only
  # repeat that refusal, so it is recorded once per cell from one probe.
  probe="$(EXPIRY_STREAM_SERVER=$s EXPIRY_STREAM_REDIS=process target/release/expiry-stream run --keys 10 2>&1)"
  if grep -q "is not supported" <<<"$probe"; then
    for suite in "${suites[@]}"; do printf '%s\t%s\trefused\t0\n' "$s" "${suite%%|*}" >> "$out/results.tsv"; done
    grep "is not supported" <<<"$probe" | sed 's/^Error: //' > "$out/$s.refusal.txt"
    echo "compat $s: refused: $(cat "$out/$s.refusal.txt")"
    continue
  fi
  for suite in "${suites[@]}"; do
    name="${suite%%|*}"; cmd="${suite#*|}"
    log="$out/$s.${name// /-}.log"
    start=$(date +%s)
    if env EXPIRY_STREAM_SERVER="$s" bash -c "$cmd" > "$log" 2>&1; then r=passed; else r=failed; fi
    secs=$(( $(date +%s) - start ))
    printf '%s\t%s\t%s\t%s\n' "$s" "$name" "$r" "$secs" >> "$out/results.tsv"
    echo "compat $s / $name: $r (${secs} s)"
  done
done

if [ ${#servers[@]} -lt 5 ]; then
  echo "compat: results in $out/results.tsv (docs/COMPAT.md is written only for a run over all five servers)"
  exit 0
fi
python3 scripts/compat-report.py "$out" > docs/COMPAT.md
echo "compat: wrote docs/COMPAT.md"
! grep -q $'\tfailed\t' "$out/results.tsv"
