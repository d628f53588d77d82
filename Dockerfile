# syntax=docker/dockerfile:1.7
# Two images from one file:
#   docker build --target operator -t lmforge/operator .   # kopf operator, no torch (~200 MB)
#   docker build --target trainer  -t lmforge/trainer  .   # stage pods: CUDA, torch, DeepSpeed
# Both run as the non-root user 1000 (the chart's and the stage pods' runAsUser).

ARG PYTHON_VERSION=3.11

# ---------------------------------------------------------------- wheel: build the project once
FROM python:${PYTHON_VERSION}-slim AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY lmforge ./lmforge
RUN pip wheel --no-deps --wheel-dir /wheels .

# ---------------------------------------------------------------- operator
FROM python:${PYTHON_VERSION}-slim AS operator
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY --from=wheel /wheels /wheels
RUN WHEEL="$(ls /wheels/lmforge-*.whl)" && pip install "${WHEEL}[operator]" && rm -rf /wheels \
 && python -c "import lmforge.operator.handlers" \
 && useradd --uid 1000 --user-group --no-create-home --home-dir /tmp lmforge
USER 1000:1000
EXPOSE 8080 8081
ENTRYPOINT ["python", "-m", "lmforge.operator"]
CMD ["--all-namespaces"]

# ---------------------------------------------------------------- trainer
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 AS trainer
ARG PYTHON_VERSION
ENV DEBIAN_FRONTEND=noninteractive PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH HF_HOME=/tmp/hf HOME=/tmp
RUN apt-get update && apt-get install -y --no-install-recommends \
        software-properties-common ca-certificates build-essential ninja-build numactl \
 && add-apt-repository -y ppa:deadsnakes/ppa && apt-get update \
 && apt-get install -y --no-install-recommends python${PYTHON_VERSION} python${PYTHON_VERSION}-venv python${PYTHON_VERSION}-dev \
 && rm -rf /var/lib/apt/lists/* \
 && python${PYTHON_VERSION} -m venv ${VIRTUAL_ENV}
COPY --from=wheel /wheels /wheels
# torch first (pinned by the trainer extra), then DeepSpeed, which compiles against it.
RUN WHEEL="$(ls /wheels/lmforge-*.whl)" && pip install "${WHEEL}[trainer]" \
 && pip install --no-build-isolation deepspeed \
 && rm -rf /wheels \
 && useradd --uid 1000 --user-group --create-home --home-dir /home/lmforge lmforge
USER 1000:1000
WORKDIR /home/lmforge
ENTRYPOINT ["python", "-m", "lmforge.trainer"]
