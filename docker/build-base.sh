#!/usr/bin/env bash
# Builds a Debian 12 (bookworm) base image with Python 3.11 from Debian packages (mmdebstrap, no
# registry) and imports it into podman as a local image, for machines that cannot pull
# python:3.11-slim. Skips the build when the image already exists with today's package list (its
# label epd-serve.base.packages; FORCE=1 rebuilds it anyway).
#
#   docker/build-base.sh [IMAGE]        (default localhost/epd-base:bookworm)
#
# Needs root, mmdebstrap and podman (apt-get install mmdebstrap podman runc). The Dockerfile uses
# it with --build-arg BASE_IMAGE=localhost/epd-base:bookworm (docker/compose-check.sh does).
set -euo pipefail

IMAGE=${1:-${EPD_BASE_IMAGE:-localhost/epd-base:bookworm}}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PODMAN=${PODMAN:-podman}
# minbase + what python:3.11-slim offers the Dockerfile: python3.11 with venv/pip, CA certificates,
# `python` on PATH; the libraries that Mooncake's Transfer Engine links (the image's mooncake extra,
# as `make deps`) and the compilers and Python headers the engine builds its CPU kernels with (C
# decode kernels, Inductor), here because an offline build cannot apt-get them in the Dockerfile.
PACKAGES=python3,python3-venv,python3-pip,python-is-python3,ca-certificates,libibverbs1,librdmacm1,libnuma1,libcurl4,gcc,g++,libc6-dev,python3-dev
LABEL=epd-serve.base.packages

if [[ -z ${FORCE:-} ]] && $PODMAN image exists "$IMAGE"; then
    built=$($PODMAN image inspect --format "{{index .Labels \"$LABEL\"}}" "$IMAGE" 2>/dev/null || true)
    if [[ $built == "$PACKAGES" ]]; then
        echo "build-base: $IMAGE exists (FORCE=1 to rebuild)"
        exit 0
    fi
    echo "build-base: $IMAGE has packages '${built:-?}', not '$PACKAGES': rebuilding"
fi
for tool in mmdebstrap "$PODMAN"; do
    command -v "$tool" >/dev/null || { echo "build-base: $tool not found (apt-get install mmdebstrap podman)" >&2; exit 1; }
done

work=$(mktemp -d /tmp/epd-base.XXXXXX)
trap 'rm -rf "$work"' EXIT

# Documentation and non-English locales are left out of the rootfs.
echo "build-base: mmdebstrap bookworm -> $IMAGE"
mmdebstrap --variant=minbase --mode=root --format=tar \
    --include="$PACKAGES" \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --customize-hook='chroot "$1" apt-get clean' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/*' \
    bookworm "$work/rootfs.tar" \
    "deb $MIRROR bookworm main" \
    "deb $MIRROR bookworm-updates main" \
    "deb ${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security} bookworm-security main"

$PODMAN import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --change "LABEL $LABEL=$PACKAGES" \
    --message "Debian 12 + python3.11 (docker/build-base.sh)" \
    "$work/rootfs.tar" "$IMAGE"
$PODMAN run --rm --runtime "${EPD_OCI_RUNTIME:-runc}" --cgroup-manager cgroupfs \
    --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 --network none \
    "$IMAGE" python3 -c 'import sys, venv, ensurepip; print("build-base: python", sys.version.split()[0])'
