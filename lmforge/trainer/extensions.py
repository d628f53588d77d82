"""Just-in-time C++ ops built once into the image, not in every pod.

DeepSpeed's CPU accelerator builds its shared-memory collective op (`deepspeed_shm_comm`) with
torch's JIT extension loader when a process group starts. In a pod that costs minutes of g++ per
start (3 min on a loaded 2-core node, and again on every retry), so the trainer image builds it
once (Dockerfile, `LMFORGE_TORCH_EXTENSIONS_SEED`). Torch's loader needs its build directory
writable (a lock file, ninja's log) and the image's root filesystem is read-only in a pod, so each
stage process copies the seed into `TORCH_EXTENSIONS_DIR` (on the pod's writable /tmp) with the
files' times kept: ninja then finds nothing to do and the op loads in milliseconds. Sources or flags
that differ from the seed's (another torch, another DeepSpeed) make ninja rebuild, as before.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

SEED_ENV = "LMFORGE_TORCH_EXTENSIONS_SEED"


def seed_torch_extensions(environ: os._Environ[str] | dict[str, str] = os.environ) -> Path | None:
    """Copy the image's prebuilt extensions into `TORCH_EXTENSIONS_DIR` once; returns the target
    when it was seeded now. Several ranks of one pod may race: each copies into its own temporary
    directory and renames it into place; the loser's copy is dropped."""
    seed, target = environ.get(SEED_ENV), environ.get("TORCH_EXTENSIONS_DIR")
    if not seed or not target or not Path(seed).is_dir() or Path(target).exists():
        return None
    dest = Path(target)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".seed-", dir=dest.parent))
    try:
        shutil.copytree(seed, tmp, dirs_exist_ok=True, copy_function=shutil.copy2)
        try:
            tmp.rename(dest)
        except OSError:  # another rank was first
            return None
        return dest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
