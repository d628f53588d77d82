"""What vLLM's CPU build needs in every process of a server (imported by Python at start-up):
AMX permission, and on small machines no core held back from the model.

AMX. On x86-64 CPUs with AMX (Sapphire Rapids and later), vLLM 0.32's CPU build chooses AMX kernels
for bf16 attention and GEMMs whenever CPUID reports AMX, but never asks Linux (≥ 5.16) for the
per-process permission to use AMX tile data (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`,
which torch does only in its own AMX paths). The first bf16 forward pass then dies with SIGILL
("Worker proc VllmWorker-0 died unexpectedly (exit code: -4)"). The permission is cleared on exec and
vLLM spawns its engine and workers as new interpreters, so it is asked for here, in every process
that has this directory on its path. Elsewhere (no AMX, not Linux/x86-64) this does nothing.

Reserved cores. vLLM binds its OpenMP workers to the cores this process may use minus one, which it
leaves to the API server and scheduler (`VLLM_CPU_NUM_OF_RESERVED_CPU`). On 2 cores that halves the
model's compute. With the core given back (`benchmarks/release_serving.py`, AVX2 EPYC, float32,
2 rounds each) a 109M-parameter Llama served 1.46-1.60x more tokens/s at 8 concurrent requests and
1.73-1.88x at 32; a 13.8M one was within the run-to-run noise; only a 0.5M toy, whose steps are
mostly scheduling, ran 10-30 % slower. So on at most `SMALL_MACHINE_CORES` usable cores (this
container's cpuset, where vLLM binds) none is reserved, unless the environment already says how
many. The API server sets it before it spawns
the engine, so every process of the server agrees.

After that, any other `sitecustomize` (a distribution's own) is still run.
"""

from __future__ import annotations

import sys


def request_amx() -> bool:
    """Ask the kernel for AMX tile-data permission; False where there is none to ask for."""
    import platform

    if sys.platform != "linux" or platform.machine() != "x86_64":
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        sys_arch_prctl, arch_req_xcomp_perm, xfeature_xtiledata = 158, 0x1023, 18
        return int(libc.syscall(sys_arch_prctl, arch_req_xcomp_perm, xfeature_xtiledata)) == 0
    except (OSError, AttributeError):
        return False


SMALL_MACHINE_CORES = 4
"""At most this many usable cores: vLLM reserves none of them (see the module docstring)."""
RESERVED_ENV = "VLLM_CPU_NUM_OF_RESERVED_CPU"


def reserved_cores(cores: int, environ: dict[str, str]) -> str | None:
    """The `VLLM_CPU_NUM_OF_RESERVED_CPU` to set for `cores` usable cores, or None to leave vLLM's."""
    if RESERVED_ENV in environ or cores > SMALL_MACHINE_CORES:
        return None
    return "0"


def give_back_reserved_core() -> None:
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    value = reserved_cores(cores, dict(os.environ))
    if value is not None:
        os.environ[RESERVED_ENV] = value


def _chain() -> None:
    """Import the `sitecustomize` this one shadows, if the interpreter has one."""
    import importlib.machinery
    import importlib.util
    import os

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None or spec.origin == os.path.abspath(__file__):
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


request_amx()
give_back_reserved_core()
_chain()
