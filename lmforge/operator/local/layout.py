"""The measured processes × threads layout the embedded runner gives a CPU PretrainJob by default.

How to split the cores between data-parallel processes and intra-op threads depends on the machine
(cores, caches, memory bandwidth, gloo's all-reduce cost), so the runner does not assume one process
per core: once per machine it runs the trainer's probe (`python -m lmforge.trainer.pretrain.layout`,
~20 s on 2 cores, a real data-parallel step of a small Llama per candidate layout) and keeps its answer
in the user's cache (`$LMFORGE_CACHE`, default `~/.cache/lmforge`), in a file named after the CPU model,
the core count and the Python that runs the stages (another environment may carry another torch), so a
new state directory (every new project, every test) does not pay the probe again.
A probe that fails or times out leaves the old default, one process with every core as a thread; so
does a single core.

A job that compiles gets the fastest of the probe's compiled rates. Measuring them compiles the probe
model once per layout (a minute or more on a small CPU), so the probe does it only when a job asks:
`training.compile: true`, or `auto` on a run long enough for auto to try compiling (`compiles`). An
answer without compiled rates still serves every other job, and is measured again (with them) for the
first one that asks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from lmforge.api.pretrain import Architecture

PROBE_MODULE = "lmforge.trainer.pretrain.layout"
PROBE_VERSION = 2
"""Part of the cache key: 2 measures in the precision the stage trains in (fp32 without native bf16)."""
PROBE_TIMEOUT = 600.0
"""Seconds the probe may take (it measures each layout ~3 s after importing torch, and when asked
compiles the two fastest)."""
PROBE_MODEL = Architecture(
    num_layers=4, hidden_size=256, num_heads=8, head_dim=32, intermediate_size=768, tie_embeddings=True
)
"""The probe's Llama (the trainer's layout.py; a test holds them equal)."""
PROBE_VOCAB, PROBE_SEQ = 4096, 256
AUTO_MIN_EAGER_SECONDS = 160.0
"""The shortest projected eager run for which `training.compile: auto` tries to compile an unmeasured
shape: MARGIN × MIN_COMPILE_SECONDS / MAX_SAVING of the trainer's autocompile (a test holds the two
equal; the operator does not import the trainer)."""
PROBE_SECONDS = 3.0
"""Timed seconds per candidate layout, after warm-up."""
MULTI_PROCESS_MARGIN = 1.05
"""A layout with more processes must be this much faster to be chosen: each process holds its own
weights and pays its own start-up (imports, compilation), which the probe's steady state leaves out."""

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Layout:
    processes: int
    threads: int
    source: str
    """"measured" (from the probe) or "default" (one process, every core a thread)."""


def choose(cores: int, tokens_per_second: dict[str, float]) -> Layout:
    """The fastest of the probe's `{"PxT": tokens/s}`, fewer processes winning within the margin."""
    best = Layout(1, cores, "default")
    best_rate = 0.0
    for key, rate in sorted(tokens_per_second.items(), key=lambda kv: int(kv[0].split("x")[0])):
        processes, threads = (int(v) for v in key.split("x"))
        if processes * threads != cores:
            continue
        margin = MULTI_PROCESS_MARGIN if processes > best.processes and best_rate > 0 else 1.0
        if rate > best_rate * margin:
            best, best_rate = Layout(processes, threads, "measured"), rate
    return best


def machine_cache_file(python: str) -> Path:
    """Where this machine's probe answer for `python` is kept: the user's lmforge cache, keyed by CPU
    model, cores and interpreter."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        model = next(
            (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "unknown"
        )
    except OSError:
        model = "unknown"
    key = hashlib.sha256(f"{PROBE_VERSION}|{model}|{os.cpu_count()}|{python}".encode()).hexdigest()[:12]
    root = Path(os.environ.get("LMFORGE_CACHE", Path.home() / ".cache" / "lmforge"))
    return root / f"layout-{key}.json"


class LayoutProbe:
    """Runs the probe at most once per cache file and remembers its answer."""

    def __init__(self, directory: Path, python: str, cwd: Path | None = None, name: str = "layout.json") -> None:
        self.path = directory / name
        self.python = python
        self.cwd = cwd
        self._lock = threading.Lock()
        self._cached: dict[tuple[int, bool], Layout] = {}

    def layout(self, cores: int, compiled: bool = False) -> Layout:
        """The layout for `cores` cores (by the compiled rates when the job compiles): from the
        cache file, else measured now (blocking), else default."""
        if cores <= 1:
            return Layout(1, 1, "default")
        with self._lock:
            if (cores, compiled) not in self._cached:
                self._cached[cores, compiled] = self._read(cores, compiled) or self._measure(cores, compiled)
            return self._cached[cores, compiled]

    def eager_rate(self, cores: int) -> float | None:
        """Tokens/s of the probe model in the fastest eager layout (measured now if not yet), or None
        where nothing was measured (a single core, a failed probe)."""
        if self.layout(cores).source != "measured":
            return None
        rates = self._rates(cores, compiled=False)
        return max(rates.values()) if rates else None

    def _rates(self, cores: int, compiled: bool) -> dict[str, float] | None:
        """The cache file's `{"PxT": tokens/s}` (compiled or eager) for `cores`, or None."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if int(data["cores"]) != cores:
                return None
            rates = data["compiled_tokens_per_second" if compiled else "tokens_per_second"]
            return {str(k): float(v) for k, v in rates.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def _read(self, cores: int, compiled: bool) -> Layout | None:
        rates = self._rates(cores, compiled)
        return None if rates is None else choose(cores, rates)

    def _measure(self, cores: int, compiled: bool) -> Layout:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        argv = [
            self.python,
            "-m",
            PROBE_MODULE,
            "--cores",
            str(cores),
            "--seconds",
            str(PROBE_SECONDS),
            "--out",
            str(self.path),
            *(["--compiled"] if compiled else []),
        ]
        env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
        try:
            subprocess.run(argv, cwd=self.cwd, env=env, capture_output=True, timeout=PROBE_TIMEOUT, check=True)
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("layout probe failed (%s); using 1 process x %d threads", exc, cores)
            return Layout(1, cores, "default")
        return self._read(cores, compiled) or Layout(1, cores, "default")


def relative_cost(model: Architecture) -> float:
    """A model's training FLOPs per token over the probe model's, both at the probe's vocabulary and
    length (the Dataset's own are known only to the stage)."""
    return model.flops_per_token(PROBE_VOCAB, PROBE_SEQ) / PROBE_MODEL.flops_per_token(PROBE_VOCAB, PROBE_SEQ)


def compiles(compile_: bool | str, tokens: int, eager_rate: float | None, cost: float = 1.0) -> bool:
    """Whether a PretrainJob's layout is chosen by compiled rates: `true` always, `false` never, and
    `auto` when its `tokens`, at the probe model's eager speed scaled by the job model's relative
    `cost` in FLOPs, take at least AUTO_MIN_EAGER_SECONDS — the runs on which auto may compile at
    all. The projection is rough (the probe's length stands in for the Dataset's); a misjudged run
    costs one compiled probe or an eager-chosen layout, never a wrong result."""
    if compile_ is True:
        return True
    if compile_ != "auto" or eager_rate is None:
        return False
    return tokens * cost / eager_rate >= AUTO_MIN_EAGER_SECONDS
