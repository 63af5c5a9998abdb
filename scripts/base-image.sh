#!/usr/bin/env bash
# Makes the image's base (Debian bookworm + Python 3.11 + venv) from Debian packages, for machines that
# reach a Debian mirror but no container-image registry:
#   scripts/base-image.sh ENGINE IMAGE      e.g. scripts/base-image.sh podman localhost/coded-invnet-base:bookworm-py3.11
# then: make image BASE_IMAGE=IMAGE (make image does both when BASE_IMAGE is left empty).
set -euo pipefail
engine=${1:?usage: $0 docker|podman IMAGE}
image=${2:?usage: $0 docker|podman IMAGE}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if ! command -v mmdebstrap >/dev/null; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    apt-get install -y -qq mmdebstrap >/dev/null || (apt-get update -qq && apt-get install -y -qq mmdebstrap)
  else
    echo "mmdebstrap is missing: apt-get install mmdebstrap" >&2
    exit 1
  fi
fi

# Certificate authorities this machine added (e.g. for an HTTPS-inspecting proxy in front of PyPI) are
# trusted inside the image too, so that pip in `docker build` reaches PyPI as pip here does.
extra_ca=/usr/local/share/ca-certificates
ca_hooks=()
if compgen -G "$extra_ca/*.crt" >/dev/null; then
  ca_hooks=(--customize-hook="sync-in $extra_ca $extra_ca" --customize-hook='chroot "$1" update-ca-certificates')
fi

# Documentation, manual pages and translations are never read in a container: leave them out.
# passwd provides groupadd/useradd for the Dockerfile's service user; ca-certificates lets pip reach PyPI.
mmdebstrap --variant=minbase --quiet \
  --include=python3,python3-venv,ca-certificates,passwd \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  "${ca_hooks[@]}" \
  bookworm - "deb $mirror bookworm main" "deb $mirror-security bookworm-security main" \
  | "$engine" import --change 'CMD ["python3"]' - "$image" >/dev/null
echo "made base image $image from Debian bookworm packages"
