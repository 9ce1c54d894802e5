#!/usr/bin/env bash
# Makes the base image `localhost/debian:bookworm-slim` for machines that cannot pull images:
# a Debian bookworm root file system from the Debian mirror apt already uses (debootstrap
# --variant=minbase), trimmed like the official debian:bookworm-slim (no documentation, man
# pages or locales; dpkg told to keep them out), imported with podman. Cached: it does nothing
# when the image exists (IMAGES_REBUILD_BASE=1 rebuilds it). The root file system is made in a
# temporary directory and deleted after the import; nothing is written into the git tree.
set -euo pipefail

BASE_IMAGE="${BASE_IMAGE:-localhost/debian:bookworm-slim}"
if [ "${IMAGES_REBUILD_BASE:-0}" != 1 ] && podman image exists "$BASE_IMAGE"; then
  echo "images: base $BASE_IMAGE cached"
  exit 0
fi

# The mirror apt is configured with (deb822 sources or sources.list), else deb.debian.org.
mirror=$(grep -hs '^URIs:' /etc/apt/sources.list.d/debian.sources | awk '{print $2}' | grep -v security | head -1 || true)
[ -n "$mirror" ] || mirror=$(grep -hs '^deb .*debian.* bookworm ' /etc/apt/sources.list | awk '{print $2}' | head -1 || true)
mirror="${DEBIAN_MIRROR:-${mirror:-http://deb.debian.org/debian}}"

rootfs=$(mktemp -d "${TMPDIR:-/tmp}/sio-base.XXXXXX")
trap 'rm -rf "$rootfs"' EXIT
echo "images: debootstrap --variant=minbase bookworm from $mirror"
start=$(date +%s)
debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
  || { tail -20 "$rootfs.log" >&2; rm -f "$rootfs.log"; exit 1; }
rm -f "$rootfs.log"

# What debian:bookworm-slim does (its /etc/dpkg/dpkg.cfg.d/docker and apt settings): keep
# documentation out of later installs, clean apt's caches.
cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
CFG
cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'CFG'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CFG
echo 'Acquire::Languages "none";' >"$rootfs/etc/apt/apt.conf.d/docker-no-languages"
find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/groff/* \
  "$rootfs"/usr/share/lintian/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
  "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/* "$rootfs"/tmp/*
find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
# The official image has no hostname, hosts or resolv.conf of the build machine.
: >"$rootfs/etc/hostname"
rm -f "$rootfs/etc/resolv.conf"

tar --numeric-owner -C "$rootfs" -c . | podman import --quiet \
  --change 'CMD ["bash"]' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  - "$BASE_IMAGE" >/dev/null
echo "images: base $BASE_IMAGE made in $(( $(date +%s) - start ))s ($(podman image inspect --format '{{.Size}}' "$BASE_IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
