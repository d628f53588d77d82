#!/usr/bin/env bash
# The test command: sets everything up (scripts/setup.sh), then lint, types, import layers and the
# whole pytest suite — cluster (real control plane), S3 (SeaweedFS), ML and slow tests included.
# Extra arguments go to pytest, e.g. `scripts/test.sh -m "not cluster and not slow"` for a fast loop.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
cache="${LMFORGE_CACHE:-$HOME/.cache/lmforge}"
venv="${LMFORGE_VENV:-$cache/venv}"
t0=$SECONDS
LMFORGE_SETUP_CLUSTER="${LMFORGE_SETUP_CLUSTER:-1}" "$here/scripts/setup.sh"
export PATH="$venv/bin:$PATH"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}" DO_NOT_TRACK=1 VLLM_NO_USAGE_STATS=1
echo "== ruff"; ruff check lmforge tests benchmarks examples
echo "== ruff format"; ruff format --check lmforge tests benchmarks examples scripts
echo "== mypy"; mypy
echo "== import layers"; lint-imports --no-cache
echo "== CRDs match the models"; lmforge crds --check
echo "== pytest"
set +e
python -m pytest -p no:cacheprovider --timeout=1800 --durations=40 "$@"
rc=$?
set -e
echo "== total $((SECONDS - t0)) s"
exit $rc
