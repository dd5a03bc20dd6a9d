#!/usr/bin/env bash
# A stand-in for python:3.11-slim-bookworm where no registry can be reached: Debian 12's minbase
# with its Python 3.11, made by debootstrap and imported into podman. Kept once made (podman
# keeps images), so only the first run pays for it.
set -euo pipefail
NAME=${1:-localhost/sidelight-base:bookworm}
if podman image exists "$NAME"; then
    echo "base image $NAME: present"
    exit 0
fi
# The mirror apt uses here (DEBIAN_MIRROR to choose another).
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
ROOT=$(mktemp -d /var/tmp/sidelight-base.XXXXXX)
trap 'rm -rf "$ROOT"' EXIT
echo "base image $NAME: debootstrap bookworm from $MIRROR"
debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
    bookworm "$ROOT" "$MIRROR" >/dev/null
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/*
tar -C "$ROOT" -c . | podman import --change 'CMD ["/bin/bash"]' - "$NAME" >/dev/null
echo "base image $NAME: made"
