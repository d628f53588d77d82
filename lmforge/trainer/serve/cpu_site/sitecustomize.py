"""Lets a vLLM CPU server use the AMX tiles its kernels pick (imported by Python at start-up).

Why: on x86-64 CPUs with AMX (Sapphire Rapids and later), vLLM 0.32's CPU build chooses AMX kernels
for bf16 attention and GEMMs whenever CPUID reports AMX, but never asks Linux (≥ 5.16) for the
per-process permission to use AMX tile data (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`,
which torch does only in its own AMX paths). The first bf16 forward pass then dies with SIGILL
("Worker proc VllmWorker-0 died unexpectedly (exit code: -4)"). The permission is cleared on exec and
vLLM spawns its engine and workers as new interpreters, so it is asked for here, in every process
that has this directory on its path. Elsewhere (no AMX, not Linux/x86-64) this does nothing.

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
_chain()
