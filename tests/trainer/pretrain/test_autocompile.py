"""`training.compile: auto`: the decision as table cases, the measurement cached once per key and
reused, and the real stage staying eager (and saying so in its result) on a run too short to pay."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from lmforge.trainer.pretrain.autocompile import (
    COMPILED_STEPS,
    EAGER_STEPS,
    MARGIN,
    MIN_COMPILE_SECONDS,
    AutoCompile,
    CompileCost,
    CostCache,
    CostKey,
    Decision,
    decide,
)
from lmforge.trainer.pretrain.dist import World

from .conftest import World as TestWorld
from .conftest import pretrain_resource, run_in_process, stage_spec

ONE = World(rank=0, size=1, local_rank=0, local_size=1)
COST = CompileCost(compile_seconds=30.0, eager_step_seconds=0.2, compiled_step_seconds=0.12)
"""The benchmark model's figures on a 2-core CPU, rounded: 30 s to compile, steps 0.6× as long."""


@dataclass(frozen=True)
class Case:
    name: str
    remaining: int
    eager: float
    cost: CompileCost | None
    compile: bool
    reason: str


CASES = [
    Case("short run, measured cost: eager", 100, 0.2, COST, False, "does-not-pay"),
    Case("long run, measured cost: compile", 10_000, 0.2, COST, True, "pays"),
    # 0.08 s saved per step; 2 × 30 s cost needs 750 steps: 749 is one short, 750 pays.
    Case("one step short of twice the cost: eager", 749, 0.2, COST, False, "does-not-pay"),
    Case("exactly twice the cost: compile", 750, 0.2, COST, True, "pays"),
    Case("compiled steps no faster: never pays", 10**9, 0.2, CompileCost(30.0, 0.2, 0.2), False, "does-not-pay"),
    Case("short run, no cost yet: eager without measuring", 30, 0.01, None, False, "too-short"),
    Case("long run, no cost yet: compile and measure", 100_000, 0.2, None, True, "measure"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_decide(case: Case) -> None:
    decision = decide(case.remaining, case.eager, case.cost)
    assert (decision.compile, decision.reason) == (case.compile, case.reason)
    assert decision.remaining_steps == case.remaining and decision.eager_step_seconds == case.eager
    line = decision.line()
    assert line.startswith(f"training.compile auto: compile {'on' if case.compile else 'off'} ({case.reason})")
    assert f"{case.remaining} steps left" in line and "projected saving" in line


def test_best_case_bound_of_an_unmeasured_shape() -> None:
    """Unmeasured, a run compiles only when a 4x speed-up would repay the cheapest compile twice."""
    steps = int(MARGIN * MIN_COMPILE_SECONDS / (0.1 * 0.75))  # 0.1 s steps
    assert not decide(steps - 1, 0.1, None).compile
    assert decide(steps + 1, 0.1, None).compile


class Engine:
    """Stands in for `engine.compile` only: counts the calls."""

    def __init__(self) -> None:
        self.compiles = 0

    def compile(self) -> None:
        self.compiles += 1


def _run(plan: AutoCompile, total: int, eager: float, first_compiled: float, compiled: float) -> None:
    """Feed the plan `total` steps' seconds as the loop would: eager until it compiles, then one slow
    first compiled step and steady ones."""
    plan.start(total)
    compiled_steps = 0
    for step in range(1, total + 1):
        on = plan.decision is not None and plan.decision.compile
        seconds = eager if not on else (first_compiled if compiled_steps == 0 else compiled)
        compiled_steps += on
        plan.after_step(seconds, total - step)


def test_a_measured_cost_is_cached_and_reused_not_measured_again(tmp_path: Path) -> None:
    key = CostKey({"model": "tiny", "torch": "x"})
    cache = CostCache(tmp_path / "compile")
    lines: list[str] = []

    first, engine = AutoCompile("auto", (e := Engine()).compile, key, ONE, cache, lines.append), e
    _run(first, 20_000, eager=0.2, first_compiled=30.2, compiled=0.12)
    assert first.decision is not None and first.decision.reason == "measure" and engine.compiles == 1
    assert first.measured == CompileCost(pytest.approx(30.08), 0.2, pytest.approx(0.12))  # type: ignore[arg-type]
    stored = json.loads(cache.path(key).read_text())
    assert stored["key"] == key.fields and stored["compile_seconds"] == pytest.approx(30.08)
    assert first.metrics()["compile_measured"] == 1.0
    stamp = cache.path(key).stat().st_mtime_ns

    second, engine = AutoCompile("auto", (e := Engine()).compile, key, ONE, cache, lines.append), e
    _run(second, 20_000, eager=0.2, first_compiled=99.0, compiled=0.5)  # figures a remeasure would store
    assert second.decision is not None and second.decision.reason == "pays" and engine.compiles == 1
    assert second.measured is None and second.metrics()["compile_measured"] == 0.0
    assert second.metrics()["compile_seconds"] == pytest.approx(30.08)
    assert cache.path(key).stat().st_mtime_ns == stamp  # not rewritten
    assert json.loads(cache.path(key).read_text()) == stored

    short, engine = AutoCompile("auto", (e := Engine()).compile, key, ONE, cache, lines.append), e
    _run(short, 300, eager=0.2, first_compiled=30.2, compiled=0.12)  # 300 × 0.08 s < 2 × 30 s
    assert short.decision == Decision(
        False, "does-not-pay", 300 - EAGER_STEPS, 0.2, pytest.approx(23.68), stored_cost(stored)
    )
    assert engine.compiles == 0 and short.metrics()["compile"] == 0.0
    assert len(lines) == 4  # one line per decision, plus the measurement's


def stored_cost(stored: dict[str, float]) -> CompileCost:
    return CompileCost(stored["compile_seconds"], stored["eager_step_seconds"], stored["compiled_step_seconds"])


def test_an_unwritable_cache_costs_the_next_run_a_measurement_not_this_run_its_training(tmp_path: Path) -> None:
    (tmp_path / "home").write_text("a file where the cache directory would go")
    key, lines = CostKey({"k": 1}), []
    plan = AutoCompile("auto", Engine().compile, key, ONE, CostCache(tmp_path / "home" / "compile"), lines.append)
    _run(plan, 20_000, eager=0.2, first_compiled=30.2, compiled=0.12)
    assert plan.decision is not None and plan.decision.compile and plan.measured is not None
    assert "not cached:" in lines[-1] and "measured compile cost 30.1 s" in lines[-1]


def test_a_measurement_cut_short_by_the_end_of_the_run_stores_nothing(tmp_path: Path) -> None:
    key, cache = CostKey({"k": 1}), CostCache(tmp_path)
    plan = AutoCompile("auto", Engine().compile, key, ONE, cache, lambda _: None)
    plan.start(10**6)
    for _ in range(EAGER_STEPS):
        plan.after_step(0.2, 10**6)
    for _ in range(COMPILED_STEPS):  # one short of the first + COMPILED_STEPS
        plan.after_step(0.2, 10**6)
    assert plan.decision is not None and plan.decision.compile and plan.measured is None
    assert not cache.path(key).exists()


@pytest.mark.parametrize(
    ("mode", "total", "compiles", "reason"),
    [(True, 3, 1, "forced"), (False, 10**6, 0, "off"), ("auto", EAGER_STEPS, 0, "run-too-short-to-time")],
)
def test_forced_off_and_too_short_to_time_decide_before_the_first_step(
    tmp_path: Path, mode: bool | str, total: int, compiles: int, reason: str
) -> None:
    engine = Engine()
    plan = AutoCompile(mode, engine.compile, CostKey({}), ONE, CostCache(tmp_path), lambda _: None)  # type: ignore[arg-type]
    plan.start(total)
    assert plan.decision is not None and plan.decision.reason == reason and engine.compiles == compiles
    for step in range(1, total + 1):
        plan.after_step(0.2, total - step)
    assert engine.compiles == compiles and not list(tmp_path.iterdir())


@pytest.mark.ml
def test_the_stage_stays_eager_on_a_short_auto_run_and_says_so(
    world: TestWorld, capfd: pytest.CaptureFixture[str]
) -> None:
    resource = pretrain_resource(training={"maxSteps": 12, "compile": "auto"}, checkpoint={"everySteps": 100})
    run = run_in_process(stage_spec(world, resource))
    metrics = run.outcome.metrics
    assert metrics["compile"] == 0.0 and metrics["compile_measured"] == 0.0
    assert 0 < metrics["compile_eager_step_seconds"] < 5
    assert metrics["compile_projected_saving_seconds"] < MARGIN * MIN_COMPILE_SECONDS  # best case, too short
    err = capfd.readouterr().err
    assert "training.compile auto: compile off (too-short), 8 steps left" in err
    assert not (Path(world.tmp) / "cache" / "compile").exists()  # nothing measured, nothing cached


@pytest.mark.ml
@pytest.mark.slow
def test_the_stage_compiles_mid_run_and_caches_what_its_compile_cost(
    world: TestWorld, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """With the best-case floor lowered so a tiny model's run may pay, the real DeepSpeed engine is
    compiled after the timed eager steps, trains on, and the cost of that very compile is cached."""
    monkeypatch.setattr("lmforge.trainer.pretrain.autocompile.MIN_COMPILE_SECONDS", 1e-6)
    resource = pretrain_resource(training={"maxSteps": 12, "compile": "auto"}, checkpoint={"everySteps": 100})
    run = run_in_process(stage_spec(world, resource))
    metrics = run.outcome.metrics
    assert metrics["compile"] == 1.0 and metrics["compile_measured"] == 1.0
    [cached] = (Path(world.tmp) / "cache" / "compile").glob("*.json")
    stored = json.loads(cached.read_text())
    assert stored["compile_seconds"] == pytest.approx(metrics["compile_seconds"]) and stored["compile_seconds"] > 0
    assert stored["key"]["model"]["numLayers"] == 2 and stored["key"]["torch"]
    assert run.outcome.losses[12] < run.outcome.losses[1]  # compiled steps still train
    err = capfd.readouterr().err
    assert "compile on (measure)" in err and "measured compile cost" in err
