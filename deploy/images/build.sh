#!/usr/bin/env bash
# `make images`: builds sio-cluster/sio-node and sio-cluster/sio-proxy with buildah, without an
# image registry: the base is a local debian:bookworm-slim (deploy/images/base.sh, debootstrap,
# cached), the binaries are built by cargo on this machine and copied in by the Dockerfiles'
# runtime stages (--build-arg BINARIES=prebuilt), the admin UI's files come from
# deploy/admin-ui/node_modules (npm ci). The Dockerfiles' multi-stage build stays the default
# for machines that can pull rust:1.95-bookworm and node:20-bookworm-slim.
#
#   IMAGES_PROFILE=release (default) | debug   which cargo profile's binaries go in
#   IMAGES_TAG=<version>   tag (default: the workspace version, the tag k8s/base names)
set -euo pipefail
cd "$(dirname "$0")/../.."

profile="${IMAGES_PROFILE:-release}"
# release: just the two binaries; debug: what `make build` / `make test` build (the same feature
# set, so their artifacts are reused and nothing is compiled twice).
case "$profile" in
  release) cargo_flags=(--release -p sio-node -p sio-proxy --bin sio-node --bin sio-proxy) ;;
  debug) cargo_flags=(--workspace --bins) ;;
  *) echo "images: IMAGES_PROFILE must be release or debug, not $profile" >&2; exit 1 ;;
esac
tag="${IMAGES_TAG:-$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)}"

deploy/images/deps.sh
deploy/images/base.sh

start=$(date +%s)
echo "images: cargo build --locked ${cargo_flags[*]}"
cargo build --locked "${cargo_flags[@]}"
ui=deploy/admin-ui
if [ ! -f "$ui/node_modules/@socket.io/admin-ui/ui/dist/index.html" ] || [ "$ui/package-lock.json" -nt "$ui/node_modules/.package-lock.json" ]; then
  echo "images: npm ci ($ui)"
  npm ci --prefix "$ui" --no-audit --no-fund --loglevel=error >/dev/null
fi
built=$(date +%s)

# The binaries' own build context: hard links, so nothing big is copied.
bin=target/images/bin
mkdir -p "$bin"
for b in sio-node sio-proxy; do ln -f "target/$profile/$b" "$bin/$b"; done

for b in sio-node sio-proxy; do
  image="sio-cluster/$b:$tag"
  old=$(buildah images --noheading --format '{{.ID}}' "localhost/$image" 2>/dev/null || true)
  extra=()
  [ "$b" = sio-node ] && extra=(--build-context "prebuilt-ui=$ui")
  echo "images: buildah bud -f deploy/Dockerfile.${b#sio-} -> $image"
  buildah bud --quiet --isolation chroot --pull=never --layers \
    --build-arg BINARIES=prebuilt --build-context "prebuilt-bin=$bin" "${extra[@]}" \
    --label "org.opencontainers.image.version=$tag" --label "sio-cluster.cargo-profile=$profile" \
    -f "deploy/Dockerfile.${b#sio-}" -t "$image" . >/dev/null
  new=$(buildah images --noheading --format '{{.ID}}' "localhost/$image")
  if [ -n "$old" ] && [ "$old" != "$new" ]; then buildah rmi "$old" >/dev/null 2>&1 || true; fi
done
# Superseded images of earlier builds (untagged, nothing built on them) only fill the disk.
podman image prune -f >/dev/null
echo "images: built in $(( $(date +%s) - built ))s after cargo ($(( built - start ))s), $profile binaries:"
podman images --format '  {{.Repository}}:{{.Tag}}  {{.Size}}' | grep 'sio-cluster/'
