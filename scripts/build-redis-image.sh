#!/usr/bin/env bash
# Builds a local server image, by default `expiry-stream/redis:local` from the host's
# redis-server; `build-redis-image.sh IMAGE BINARY` builds IMAGE from another server binary
# (the compatibility servers of scripts/get-servers.sh: provision builds `expiry-stream/redis:<name>`).
# There is no registry on this machine, so the image is a root filesystem made of the
# host binary and the shared libraries `ldd` lists, loaded with `docker import`.
# Debian's /usr/bin/redis-server is a symlink to redis-check-rdb: copy with -L and keep
# the name redis-server (the binary picks its mode from argv[0]).
set -euo pipefail
IMAGE="${1:-expiry-stream/redis:local}"
if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "image $IMAGE present"; exit 0
fi
SRV="${2:-$(command -v redis-server || true)}"
[ -n "$SRV" ] && [ -e "$SRV" ] || { echo "redis-server not found: apt-get install redis-server" >&2; exit 1; }
ROOT="$(mktemp -d)"
trap 'rm -rf "$ROOT"' EXIT
mkdir -p "$ROOT/usr/local/bin" "$ROOT/data" "$ROOT/tmp"
cp -L "$SRV" "$ROOT/usr/local/bin/redis-server"
for lib in $(ldd "$SRV" | grep -o '/[^ ]*'); do
  mkdir -p "$ROOT$(dirname "$lib")"
  cp -L "$lib" "$ROOT$lib"
done
chmod 1777 "$ROOT/tmp"
tar -C "$ROOT" -c . | docker import \
  -c 'WORKDIR /data' \
  -c 'EXPOSE 6379' \
  -c 'ENTRYPOINT ["/usr/local/bin/redis-server"]' \
  -c 'CMD ["--bind","0.0.0.0","--protected-mode","no","--save","","--dir","/data"]' \
  - "$IMAGE" >/dev/null
echo "built image $IMAGE from $SRV"
