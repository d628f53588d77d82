"""Asynchronous checkpoints: the state is copied to host memory at the step boundary, and serialised
and uploaded by a background thread while training goes on.

What runs where:
- on the training thread, :class:`SnapshotEngine` stands in for DeepSpeed's checkpoint engine during
  `engine.save_checkpoint`: each `save(state_dict, path)` DeepSpeed makes is answered with a host copy
  of `state_dict` (:class:`HostStager`) instead of a file — a memory copy, not a serialisation;
- a :class:`BackgroundJob` thread then serialises those copies with torch.save straight into
  multipart uploads (the streaming path of `streaming.py`, so the bytes are exactly the files the
  synchronous save writes) while the next steps train.

The copy keeps what torch.save would see: every tensor of the same storage shares one host storage
(views stay views, so the file has the same layout), other containers are rebuilt, numpy arrays copied.
Host buffers are reused from the previous save when the same storage comes back (DeepSpeed's flat
optimizer partitions do), so after the first save the copy costs no page faults; reuse is safe
because at most one save is in flight — the next save waits for the previous one first.

Why not `torch.distributed.checkpoint.async_save`: it stages the same way (a host copy, then a thread
or process writes), but it writes DCP's own format (`.distcp` shards plus a `.metadata` plan, one
logical state dict resharded on load). LMForge checkpoints are DeepSpeed's files — restored by
`engine.load_checkpoint`, readable by DeepSpeed's `zero_to_fp32.py`, each file in the artifact
manifest — and a resumed job (or an older one) must read them unchanged. DeepSpeed's own
`DecoupledCheckpointEngine` writes in a helper process but to a local file system, with its own commit;
the store's manifest and `latest` protocol would still have to wait for the files. So we keep
DeepSpeed's format and take only the idea: stage to host memory, write in the background.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

__all__ = ["BackgroundJob", "HostStager", "SnapshotEngine"]

T = TypeVar("T")


class HostStager:
    """Copies nested state dicts to host memory, one host storage per source storage."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, int, int], Any] = {}
        """(device, data_ptr, nbytes) of a source storage → its uint8 host buffer of the last save."""
        self._memo: dict[tuple[str, int, int], Any] = {}
        self._cuda = False
        self.bytes = 0
        """Host bytes of the last snapshot."""

    def begin(self) -> None:
        """Start a snapshot (buffers of the previous one may be reused: it is written by now)."""
        self._memo = {}
        self._cuda = False
        self.bytes = 0

    def end(self) -> None:
        """Wait for device→host copies, and keep only the buffers this snapshot used."""
        import torch

        if self._cuda:
            torch.cuda.synchronize()
        self._cache = self._memo

    def stage(self, obj: Any) -> Any:
        """A host copy of `obj`: tensors copied (storage sharing kept), dicts/lists/tuples rebuilt,
        numpy arrays copied; anything else (numbers, strings, sizes, enums) is immutable and shared."""
        import numpy as np
        import torch

        if isinstance(obj, torch.Tensor):
            return self._tensor(obj)
        if isinstance(obj, dict):
            out = copy.copy(obj)  # same type (OrderedDict, defaultdict's factory), values replaced
            for k, v in obj.items():
                out[k] = self.stage(v)
            return out
        if isinstance(obj, list):
            return [self.stage(v) for v in obj]
        if type(obj) is tuple:
            return tuple(self.stage(v) for v in obj)
        if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a named tuple
            return type(obj)(*(self.stage(v) for v in obj))
        if isinstance(obj, np.ndarray):
            return obj.copy()
        return obj

    def _tensor(self, t_in: Any) -> Any:
        import torch

        t = t_in.detach()
        src = t.untyped_storage()
        key = (str(src.device), src.data_ptr(), src.nbytes())
        host = self._memo.get(key)
        if host is None:
            host = self._cache.get(key)
            if host is None:
                pin = src.device.type == "cuda"
                host = torch.empty(src.nbytes(), dtype=torch.uint8, pin_memory=pin)
            source = torch.empty(0, dtype=torch.uint8, device=src.device).set_(src)  # bytes of the storage
            host.copy_(source, non_blocking=src.device.type == "cuda")
            self._cuda = self._cuda or src.device.type == "cuda"
            self._memo[key] = host
            self.bytes += src.nbytes()
        out = torch.empty(0, dtype=t.dtype)
        out.set_(host.untyped_storage(), t.storage_offset(), t.size(), t.stride())
        if isinstance(t_in, torch.nn.Parameter):
            return torch.nn.Parameter(out, requires_grad=t_in.requires_grad)
        return out.requires_grad_(t_in.requires_grad) if t_in.requires_grad else out


class SnapshotEngine:
    """Stands in for DeepSpeed's checkpoint engine during one save: files below `local_dir` are
    captured as host copies (keyed by their path relative to `local_dir`) instead of written;
    everything else (makedirs, create, commit, loading) goes to the engine it wraps."""

    def __init__(self, inner: Any, local_dir: Path, stager: HostStager) -> None:
        self.inner = inner
        self.local_dir = local_dir
        self.stager = stager
        self.files: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def save(self, state_dict: Any, path: str) -> None:
        rel = Path(path).resolve().relative_to(self.local_dir.resolve()).as_posix()
        self.files[rel] = self.stager.stage(state_dict)


class BackgroundJob(Generic[T]):
    """`fn` on a daemon thread; :meth:`result` joins it and returns its value or raises its error.
    A daemon, so a process that fails for another reason is not held at exit by an upload whose
    checkpoint nobody will commit (an uncommitted prefix is ignored by every reader)."""

    def __init__(self, name: str, fn: Callable[[], T]) -> None:
        self._fn = fn
        self._value: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._fn()
        except BaseException as exc:  # handed to whoever waits for the result
            self._error = exc

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self) -> T:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value
