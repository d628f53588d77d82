"""`training.compile: auto`: compile the model only when the run's remaining steps pay for it.

`torch.compile` costs one slow step (the graph is traced and its kernels generated: seconds for a
tiny model, tens of seconds for the benchmark Llama on a 2-core CPU) and then saves a fraction of
every step (the benchmark measured 1.69–1.96× against the fastest HF Trainer with compile, 1.13–1.51×
without). Whether that pays depends on how many steps are left, so the stage decides per run:

1. The first `EAGER_STEPS` optimizer steps run eagerly and are timed (the first left out: allocator
   and kernel warm-up). They are real training steps, so this measurement costs nothing.
2. With a cached `CompileCost` for this model shape, batch, precision, layout, device and torch
   version (`$LMFORGE_CACHE/compile/<key>.json`), the projected saving is
   remaining steps × eager step × (1 − compiled/eager); the stage compiles when it is at least
   `MARGIN` × the compile seconds (the margin absorbs the cost's spread between a cold and a warm
   inductor cache and the recompilation for validation's `no_grad` graph, which is not measured).
3. Without one it compiles only when even the best case could pay — `MAX_SAVING` of every remaining
   step against the cheapest compile, `MIN_COMPILE_SECONDS` — and then times this run's own compile
   (the first compiled step minus a steady compiled step, and the median of the next
   `COMPILED_STEPS`) and caches it. The measurement is the run's own compilation, not an extra one:
   it adds no steps, and a run that passes the best-case test but turns out not to pay loses at most
   one compile, once per key on a machine.

Rank 0 times, decides and broadcasts, so every rank compiles or none does. `decide` is pure and
tested as table cases; `AutoCompile` is the loop's side of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from lmforge.trainer.pretrain.dist import World, broadcast

EAGER_STEPS = 4
"""Eager steps before deciding: the first (warm-up) is dropped, the median of the rest is the eager
step time."""
COMPILED_STEPS = 3
"""Compiled steps after the first whose median is the compiled step time of a measurement."""
MARGIN = 2.0
"""The projected saving must be this many times the compile cost."""
MAX_SAVING = 0.75
"""Best case for an unmeasured shape: compiling removes this fraction of a step (a 4× speed-up, above
anything measured here), used only to rule out runs too short for any compile to pay."""
MIN_COMPILE_SECONDS = 60.0
"""Best case for an unmeasured shape: no compile is cheaper than this, so a run must have at least
MARGIN × 60 s / MAX_SAVING = 160 s of eager steps left before it tries one. The smallest model here
(the tests' 2-layer, 64-wide Llama) took 116 s to compile on a 2-core CPU under a load of ~9 (its eager
step 1.4 s). Load slows compile and steps alike, so a floor in seconds set this high keeps short runs —
every test's, the tiny examples' on a quiet machine — eager, at the price of not trying to compile a
run with less than ~3 minutes of eager steps left."""

Mode = bool | Literal["auto"]


@dataclass(frozen=True)
class CompileCost:
    """What compiling one shape costs and gains on one machine (seconds, per optimizer step)."""

    compile_seconds: float
    """Extra seconds of the first compiled step over a steady compiled step."""
    eager_step_seconds: float
    compiled_step_seconds: float

    @property
    def ratio(self) -> float:
        """Compiled step time as a fraction of the eager one (below 1 when compiling speeds steps up)."""
        return self.compiled_step_seconds / max(self.eager_step_seconds, 1e-12)


@dataclass(frozen=True)
class Decision:
    """Whether this run compiles, and the figures behind it."""

    compile: bool
    reason: str
    """`forced`, `off`, `pays`, `does-not-pay`, `too-short` (no compile could pay), `measure`
    (might pay: compile and measure), `run-too-short-to-time`."""
    remaining_steps: int
    eager_step_seconds: float | None = None
    saving_seconds: float | None = None
    """Projected saving over the remaining steps (for `measure`: the best case)."""
    cost: CompileCost | None = None

    def line(self) -> str:
        """The one log line of the decision."""
        parts = [f"compile {'on' if self.compile else 'off'} ({self.reason})", f"{self.remaining_steps} steps left"]
        if self.eager_step_seconds is not None:
            parts.append(f"eager step {self.eager_step_seconds * 1e3:.1f} ms")
        if self.cost is not None:
            parts.append(f"compiled step {self.cost.compiled_step_seconds * 1e3:.1f} ms (cached)")
            parts.append(f"compile cost {self.cost.compile_seconds:.1f} s")
        if self.saving_seconds is not None:
            best = "best-case " if self.cost is None else ""
            parts.append(f"{best}projected saving {self.saving_seconds:.1f} s (needs {MARGIN:g}x the cost)")
        return "training.compile auto: " + ", ".join(parts)


def decide(remaining_steps: int, eager_step_seconds: float, cost: CompileCost | None) -> Decision:
    """Compile when the projected saving over `remaining_steps` is at least `MARGIN` × the cost; with
    no measured cost, compile (and measure) unless even the best case could not pay."""
    if cost is None:
        best = remaining_steps * eager_step_seconds * MAX_SAVING
        pays = best >= MARGIN * MIN_COMPILE_SECONDS
        return Decision(pays, "measure" if pays else "too-short", remaining_steps, eager_step_seconds, best)
    saving = remaining_steps * eager_step_seconds * (1.0 - cost.ratio)
    pays = saving >= MARGIN * cost.compile_seconds
    return Decision(pays, "pays" if pays else "does-not-pay", remaining_steps, eager_step_seconds, saving, cost)


def cache_root() -> Path:
    return Path(os.environ.get("LMFORGE_CACHE", Path.home() / ".cache" / "lmforge")) / "compile"


@dataclass(frozen=True)
class CostKey:
    """What a compile cost depends on: the graph (model shape, micro-batch, sequence, precision,
    checkpointing), the step around it (ZeRO stage, processes, threads), the device and torch."""

    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.fields, sort_keys=True).encode()).hexdigest()[:16]


def device_name() -> str:
    """The GPU's name, else the CPU model and the cores this process may use."""
    import torch

    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name()}"
    model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return f"cpu:{model}:{len(os.sched_getaffinity(0))}"


class CostCache:
    """One JSON file per key under `root`, written atomically (several stages may share a machine)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or cache_root()

    def path(self, key: CostKey) -> Path:
        return self.root / f"{key.digest}.json"

    def get(self, key: CostKey) -> CompileCost | None:
        try:
            data = json.loads(self.path(key).read_text(encoding="utf-8"))
            return CompileCost(
                float(data["compile_seconds"]), float(data["eager_step_seconds"]), float(data["compiled_step_seconds"])
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def put(self, key: CostKey, cost: CompileCost) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**asdict(cost), "key": key.fields}, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)


class AutoCompile:
    """The loop's side of the decision: `after_step` after every optimizer step, with its seconds.

    `compile_model` compiles the engine in place (`engine.compile()`); it is called at most once.
    """

    def __init__(
        self,
        mode: Mode,
        compile_model: Callable[[], None],
        key: CostKey,
        world: World,
        cache: CostCache | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.mode, self.compile_model, self.key, self.world = mode, compile_model, key, world
        self.cache = cache or CostCache()
        self.log = log or (lambda line: print(f"lmforge: {line}", file=sys.stderr, flush=True))
        self.decision: Decision | None = None
        self.measured: CompileCost | None = None
        """The cost this run measured (and cached), when it had none."""
        self._eager: list[float] = []
        self._compiled: list[float] = []

    def start(self, remaining_steps: int) -> None:
        """Before the first step: `true` compiles now, `false` never; `auto` waits for timed steps
        unless the run is too short to time them."""
        if self.mode is True:
            self.compile_model()
            self._decided(Decision(True, "forced", remaining_steps))
        elif self.mode is False:
            self.decision = Decision(False, "off", remaining_steps)
        elif remaining_steps <= EAGER_STEPS:
            self._decided(Decision(False, "run-too-short-to-time", remaining_steps))

    def after_step(self, seconds: float, remaining_steps: int) -> None:
        """Time one optimizer step; decide once `EAGER_STEPS` are timed; then time a measurement."""
        if self.decision is None:
            self._eager.append(seconds)
            if len(self._eager) >= EAGER_STEPS:
                self._decide(remaining_steps)
        elif self.decision.reason == "measure" and self.measured is None:
            self._compiled.append(seconds)
            if len(self._compiled) == COMPILED_STEPS + 1:
                self._record()

    def _decide(self, remaining_steps: int) -> None:
        decision = None
        if self.world.is_main:
            eager = statistics.median(self._eager[1:])
            decision = decide(remaining_steps, eager, self.cache.get(self.key))
        decision = broadcast(decision, self.world)
        assert decision is not None
        if decision.compile:
            self.compile_model()
        self._decided(decision)

    def _decided(self, decision: Decision) -> None:
        self.decision = decision
        if self.world.is_main:
            self.log(decision.line())

    def _record(self) -> None:
        """The first compiled step's excess over the median of the next ones is the compile cost."""
        assert self.decision is not None and self.decision.eager_step_seconds is not None
        steady = statistics.median(self._compiled[1:])
        self.measured = CompileCost(max(self._compiled[0] - steady, 0.0), self.decision.eager_step_seconds, steady)
        if self.world.is_main:
            try:
                self.cache.put(self.key, self.measured)
                where = f"cached in {self.cache.path(self.key)}"
            except OSError as exc:  # a read-only home must not stop training: the next run measures again
                where = f"not cached: {exc}"
            self.log(
                f"training.compile auto: measured compile cost {self.measured.compile_seconds:.1f} s, "
                f"compiled step {steady * 1e3:.1f} ms vs eager {self.measured.eager_step_seconds * 1e3:.1f} ms "
                f"({where})"
            )

    def metrics(self) -> dict[str, float]:
        """The decision in the result's metrics (`compile` 1/0, and the figures it used)."""
        d = self.decision
        if d is None:  # auto, and the run ended (or stopped) before the decision
            return {"compile": 0.0}
        out = {"compile": 1.0 if d.compile else 0.0}
        cost = self.measured or d.cost
        if d.eager_step_seconds is not None:
            out["compile_eager_step_seconds"] = d.eager_step_seconds
        if d.saving_seconds is not None:
            out["compile_projected_saving_seconds"] = d.saving_seconds
        if cost is not None:
            out["compile_seconds"] = cost.compile_seconds
            out["compile_step_ratio"] = cost.ratio
        out["compile_measured"] = 1.0 if self.measured is not None else 0.0
        return out
