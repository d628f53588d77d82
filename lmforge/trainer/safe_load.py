"""Loading `.pt` files read back from the store without pickle's code execution.

A checkpoint in the store is written by a stage, but anyone with write access to the store could
replace it; `torch.load(weights_only=False)` would then run whatever the file's pickle asks for.
Every load of a store file goes through this module instead: `load` for LMForge's own files, and
`weights_only_loads` around DeepSpeed's `load_checkpoint`, which calls `torch.load(...,
weights_only=False)` itself (its checkpoint engine and the ZeRO optimizers) — inside it,
`TORCH_FORCE_WEIGHTS_ONLY_LOAD` makes every such call weights-only.

Weights-only loading accepts tensors and plain containers; the few other types LMForge's checkpoints
hold are allow-listed by name (`allowed_globals`): numpy's array reconstruction (the numpy RNG
state) and, when DeepSpeed is loaded, its loss scaler, ZeRO stage enum and fragment address — types
whose construction runs no code chosen by the file; `getattr` only as `enum_member` (how Python
3.11.2 pickles an Enum member). Anything else is refused with `UnsafeCheckpoint`.
"""

from __future__ import annotations

import importlib
import os
import pickle
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lmforge.store.errors import StoreError

FORCE = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
_FORCE_NOT = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
_DEEPSPEED_TYPES = (
    ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
    ("deepspeed.runtime.fp16.loss_scaler", "DynamicLossScaler"),
    ("deepspeed.runtime.zero.config", "ZeroStageEnum"),
    ("deepspeed.utils.tensor_fragment", "fragment_address"),
)
"""Non-tensor types in DeepSpeed 0.19's ZeRO checkpoints (`get_unsafe_globals_in_checkpoint`)."""


def enum_member(cls: Any, name: Any) -> Any:
    """Stands in for `builtins.getattr` in weights-only loads. Python 3.11.0–3.11.4 (Debian
    bookworm's 3.11.2, so the images' Python) pickle an Enum member as `getattr(EnumClass, name)`;
    later versions as `EnumClass(value)`. A DeepSpeed checkpoint written by the former holds
    `ZeroStageEnum` that way. Allowing `getattr` itself would let a file reach any attribute of an
    allowed class (`__subclasses__`, `__globals__` …), so only this is allowed: a member of an Enum
    class the file could already name (the class comes from an allow-listed GLOBAL)."""
    import enum

    if isinstance(cls, type) and issubclass(cls, enum.Enum) and isinstance(name, str) and name in cls.__members__:
        return cls.__members__[name]
    raise pickle.UnpicklingError(f"GLOBAL builtins.getattr refused for ({cls!r}, {name!r}): only Enum members")


class UnsafeCheckpoint(StoreError):
    """A `.pt` file holds more than tensors and plain data; it was not loaded."""


def allowed_globals() -> list[Any]:
    """The non-tensor types a weights-only load may construct."""
    import numpy as np

    try:
        multiarray = importlib.import_module("numpy._core.multiarray")
    except ImportError:  # numpy < 2
        multiarray = importlib.import_module("numpy.core.multiarray")
    allowed: list[Any] = [
        multiarray._reconstruct,
        np.ndarray,
        np.dtype,
        type(np.dtype(np.uint32)),
        (enum_member, "builtins.getattr"),
    ]
    if "deepspeed" in sys.modules:  # only DeepSpeed's own load reads files that hold these
        for module, name in _DEEPSPEED_TYPES:
            found = getattr(importlib.import_module(module), name, None)
            if found is not None:
                allowed.append(found)
    return allowed


def _refused(what: str, exc: pickle.UnpicklingError) -> UnsafeCheckpoint:
    reason = str(exc).strip().splitlines()
    detail = next(
        (line.strip() for line in reason if "Unsupported global" in line or "GLOBAL" in line),
        reason[0] if reason else "",
    )
    return UnsafeCheckpoint(f"refused to load {what}: it holds more than tensors and plain data ({detail})")


def load(path: Path | str, map_location: Any = "cpu") -> Any:
    """`torch.load` of a store file, weights-only (see the module docstring)."""
    import torch

    try:
        with torch.serialization.safe_globals(allowed_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _refused(str(path), exc) from None


@contextmanager
def weights_only_loads(what: str) -> Iterator[None]:
    """Make every `torch.load` inside weights-only, even one that asks for `weights_only=False`
    (the process's environment is changed for the duration: resumes run before training starts)."""
    import torch

    saved = {k: os.environ.get(k) for k in (FORCE, _FORCE_NOT)}
    os.environ[FORCE] = "1"
    os.environ.pop(_FORCE_NOT, None)
    try:
        with torch.serialization.safe_globals(allowed_globals()):
            yield
    except pickle.UnpicklingError as exc:
        raise _refused(what, exc) from None
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
