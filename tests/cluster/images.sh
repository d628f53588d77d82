#!/usr/bin/env bash
# Build LMForge's container images here, from the project's Dockerfile, for the real-node tests.
#
# Nothing can be pulled from a registry on these machines, so:
#   1. the base image is a Debian bookworm root made with debootstrap from Debian's packages
#      (python3.11 + venv), committed as lmforge.local/debian-python:bookworm;
#   2. buildah (Debian's) builds the Dockerfile's targets operator, trainer and serve with
#      BASE_IMAGE set to it, reusing its layer cache (dependencies change only with pyproject and
#      scripts/constraints.txt; a code change rebuilds only the last layer);
#   3. each image is tagged with a hash of its inputs (lmforge.local/<target>:<key>) and kept in
#      buildah's storage only: tests/cluster/node.py streams it into the node's containerd (no
#      archive on disk: the trainer and serve images are ~6-7 GB each). Older tags of a target are
#      removed once its new image exists.
# Prints one line per target: "<target> <image name>".
#
# Usage: tests/cluster/images.sh [TARGET...]     (default: operator trainer serve)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cache="${LMFORGE_CACHE:-$HOME/.cache/lmforge}/images"
mkdir -p "$cache"
base=lmforge.local/debian-python:bookworm
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
log() { echo "[images.sh $(date +%H:%M:%S)] $*" >&2; }
for tool in buildah debootstrap; do
  command -v "$tool" >/dev/null || { echo "images.sh: $tool missing (Debian package $tool)" >&2; exit 1; }
done
targets=("$@"); [ "${#targets[@]}" -gt 0 ] || targets=(operator trainer serve)

if ! buildah inspect --type image "$base" >/dev/null 2>&1; then
  t0=$SECONDS
  log "debootstrap bookworm -> $base"
  ctr="$(buildah from scratch)"
  mnt="$(buildah mount "$ctr")"
  debootstrap --variant=minbase --include=python3,python3.11,python3.11-venv,python3-distutils,python3-lib2to3,python3-pip-whl,python3-setuptools-whl,ca-certificates \
    bookworm "$mnt" "$mirror" >"$cache/debootstrap.log" 2>&1 \
    || { tail -20 "$cache/debootstrap.log" >&2; buildah rm "$ctr" >/dev/null; exit 1; }
  ln -sf python3.11 "$mnt/usr/bin/python3"
  rm -rf "$mnt"/var/lib/apt/lists/* "$mnt"/var/cache/apt/*.bin "$mnt"/var/cache/apt/archives/*.deb
  buildah umount "$ctr" >/dev/null
  buildah config --env LANG=C.UTF-8 --cmd /bin/bash "$ctr"
  buildah commit --rm "$ctr" "$base" >/dev/null
  log "base image in $((SECONDS - t0)) s"
fi
base_id="$(buildah inspect --type image --format '{{.FromImageID}}' "$base")"

# The inputs of every target: what the Dockerfile copies, plus the base image.
inputs_hash() {
  (
    cd "$here"
    printf '%s\n' "$base_id"
    cat Dockerfile .dockerignore pyproject.toml README.md scripts/constraints.txt scripts/requirements.py \
        scripts/vllm-requirements.txt
    git ls-files -co --exclude-standard -- lmforge | LC_ALL=C sort | xargs sha256sum
  ) | sha256sum | cut -c1-16
}
key="$(inputs_hash)"
ca_args=()
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  ca_args=(--volume /etc/ssl/certs/ca-certificates.crt:/run/lmforge-ca.crt:ro --build-arg PIP_CERT=/run/lmforge-ca.crt)
fi
for target in "${targets[@]}"; do
  name="lmforge.local/$target:$key"
  if ! buildah inspect --type image "$name" >/dev/null 2>&1; then
    t0=$SECONDS
    log "building $name"
    buildah bud --quiet --layers --isolation=chroot --target "$target" --build-arg "BASE_IMAGE=$base" \
      "${ca_args[@]}" -t "$name" -f "$here/Dockerfile" "$here" >"$cache/build-$target.log" 2>&1 \
      || { tail -40 "$cache/build-$target.log" >&2; exit 1; }
    log "$name in $((SECONDS - t0)) s"
    echo "$(date -u +%FT%TZ) $target $key: $((SECONDS - t0)) s" >> "$cache/build-times.txt"
    for old in $(buildah images --format '{{.Name}}:{{.Tag}}' | grep "^lmforge.local/$target:" | grep -v ":$key\$"); do
      buildah rmi "$old" >/dev/null 2>&1 || true
    done
  fi
  echo "$target $name"
done
