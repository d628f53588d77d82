"""The embedded runner's processes x threads default for CPU PretrainJobs: measured once per machine
by the trainer's probe, read back from the user's cache, the old default when probing fails."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from lmforge.api.kinds import Resource
from lmforge.operator.local import LocalBackend
from lmforge.operator.local.layout import (
    AUTO_MIN_EAGER_SECONDS,
    PROBE_MODEL,
    PROBE_SEQ,
    PROBE_VOCAB,
    Layout,
    LayoutProbe,
    choose,
    compiles,
    machine_cache_file,
    relative_cost,
)
from lmforge.store import open_store

from .helpers import pretrain, resource, run_of

REPO = Path(__file__).resolve().parents[2]


def test_choose_takes_the_fastest_and_needs_a_margin_for_more_processes() -> None:
    assert choose(2, {"1x2": 10_000.0, "2x1": 12_000.0}) == Layout(2, 1, "measured")
    assert choose(2, {"1x2": 10_000.0, "2x1": 10_200.0}) == Layout(1, 2, "measured")  # within 5%
    assert choose(4, {"1x4": 9_000.0, "2x2": 8_000.0, "4x1": 9_600.0}) == Layout(4, 1, "measured")
    assert choose(4, {"1x2": 9_000.0}) == Layout(1, 4, "default")  # measured for other cores


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test its own lmforge cache, so the machine's cached answer plays no part."""
    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_the_answer_is_kept_per_machine_in_the_users_cache(_cache: Path) -> None:
    path = machine_cache_file("py")
    assert path.parent == _cache and path.name.startswith("layout-") and path.name.endswith(".json")
    assert machine_cache_file("py") == path  # stable: every state directory on this machine shares it
    assert machine_cache_file("/other/venv/bin/python") != path  # another environment measures anew


PROBE_SHAPE = {"numLayers": 4, "hiddenSize": 256, "numHeads": 8, "headDim": 32, "intermediateSize": 768}
GRPO_EXAMPLE_SHAPE = {"numLayers": 2, "hiddenSize": 64, "numHeads": 2, "headDim": 32}


def _job(name: str, compile_: object, steps: int = 10, model: dict[str, int] = PROBE_SHAPE) -> Resource:
    spec = {"datasetRef": {"name": "d"}, "model": {**model, "tieEmbeddings": True}}
    return resource("PretrainJob", name, {**spec, "training": {"maxSteps": steps, "compile": compile_}})


@dataclass(frozen=True)
class CompilesCase:
    name: str
    compile_: bool | str
    tokens: int
    eager_rate: float | None
    compiled: bool


COMPILES_CASES = [
    CompilesCase("false never", False, 10**12, 10_000.0, False),
    CompilesCase("true always, even unmeasured", True, 1, None, True),
    CompilesCase("auto: a run of 159.9 s is short", "auto", 1_599_000, 10_000.0, False),
    CompilesCase("auto: a run of 160 s may compile", "auto", 1_600_000, 10_000.0, True),
    CompilesCase("auto: nothing measured (one core, failed probe)", "auto", 10**12, None, False),
]


def test_the_probe_model_is_the_trainers() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmforge.trainer.pretrain import layout as probe

    config = LlamaConfig(
        vocab_size=probe.VOCAB,
        hidden_size=probe.HIDDEN,
        intermediate_size=3 * probe.HIDDEN,
        num_hidden_layers=probe.LAYERS,
        num_attention_heads=probe.HEADS,
        head_dim=probe.HIDDEN // probe.HEADS,
        tie_word_embeddings=True,
    )
    params = sum(p.numel() for p in LlamaForCausalLM(config).parameters())
    assert PROBE_MODEL.parameter_count(PROBE_VOCAB) == params
    assert (PROBE_SEQ, PROBE_VOCAB) == (probe.SEQ, probe.VOCAB)
    assert relative_cost(PROBE_MODEL) == 1.0


@pytest.mark.parametrize("case", COMPILES_CASES, ids=[c.name for c in COMPILES_CASES])
def test_which_jobs_choose_by_compiled_rates(case: CompilesCase) -> None:
    assert compiles(case.compile_, case.tokens, case.eager_rate) is case.compiled


def test_the_operators_auto_threshold_is_the_trainers_best_case_floor() -> None:
    from lmforge.trainer.pretrain import autocompile

    assert AUTO_MIN_EAGER_SECONDS == pytest.approx(
        autocompile.MARGIN * autocompile.MIN_COMPILE_SECONDS / autocompile.MAX_SAVING
    )


def test_backend_uses_the_measured_layout_unless_compute_names_one(tmp_path: Path) -> None:
    """Eagerly 2 x 1 wins here, compiled 1 x 2 does: a job that compiles (`true`, or `auto` on a run
    long enough to) gets the compiled winner; `compile: false` and a short `auto` run the eager one."""
    machine_cache_file("py").parent.mkdir(parents=True)
    machine_cache_file("py").write_text(
        json.dumps(
            {
                "cores": 2,
                "processes": 2,
                "threads": 1,
                "tokens_per_second": {"1x2": 9000.0, "2x1": 11000.0},
                "compiled_tokens_per_second": {"1x2": 16000.0, "2x1": 12000.0},
            }
        )
    )
    backend = LocalBackend(open_store(str(tmp_path)), tmp_path, cores=2, python="py")
    # 11000 tokens/s eagerly: auto compiles from 160 s = 1.76M tokens = 860 steps of 8 x 256 on.
    for job, eager in [
        (_job("off", False), True),
        (pretrain("default"), True),  # auto, 10 steps
        (_job("short", "auto", 859), True),
        (_job("long", "auto", 860), False),
        (_job("forced", True), False),
        (_job("tiny-long", "auto", 860, GRPO_EXAMPLE_SHAPE), True),  # ~1/11 of the probe's FLOPs
        (_job("tiny-longer", "auto", 860 * 12, GRPO_EXAMPLE_SHAPE), False),
    ]:
        [cmd] = backend.commands(run_of(job, str(tmp_path)), "spec.json")
        if eager:
            assert cmd.argv[:3] == ["py", "-m", "torch.distributed.run"] and "--nproc-per-node=2" in cmd.argv, (
                job.metadata.name
            )
            assert cmd.env["OMP_NUM_THREADS"] == "1"
        else:
            assert cmd.argv == ["py", "-m", "lmforge.trainer", "pretrain", "--spec", "spec.json"], job.metadata.name
            assert cmd.env["OMP_NUM_THREADS"] == "2"
    [single] = backend.commands(run_of(pretrain("pinned", processes=1), str(tmp_path)), "s.json")
    assert single.argv == ["py", "-m", "lmforge.trainer", "pretrain", "--spec", "s.json"]
    assert single.env["OMP_NUM_THREADS"] == "2"


def test_a_failed_probe_leaves_one_process_with_every_core(tmp_path: Path) -> None:
    backend = LocalBackend(open_store(str(tmp_path)), tmp_path, cores=2, python=str(tmp_path / "no-python"))
    [cmd] = backend.commands(run_of(pretrain("auto"), str(tmp_path)), "spec.json")
    assert cmd.argv[1:3] == ["-m", "lmforge.trainer"] and cmd.env["OMP_NUM_THREADS"] == "2"
    assert backend.layouts.layout(2) == Layout(1, 2, "default")
    assert backend.layouts.layout(2, compiled=True) == Layout(1, 2, "default")
    assert not machine_cache_file(str(tmp_path / "no-python")).exists()
    assert LayoutProbe(tmp_path, "unused").layout(1) == Layout(1, 1, "default")


@pytest.mark.ml
@pytest.mark.slow
def test_probe_measures_every_layout_with_the_trainer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real probe: one data-parallel step loop per layout, the winner cached for the next call,
    and no compile paid while no job asked for compiled rates."""
    monkeypatch.setattr("lmforge.operator.local.layout.PROBE_SECONDS", 0.5)
    probe = LayoutProbe(tmp_path, sys.executable, cwd=REPO)
    layout = probe.layout(2)
    data = json.loads((tmp_path / "layout.json").read_text())
    rates = data["tokens_per_second"]
    assert set(rates) == {"1x2", "2x1"} and all(r > 100 for r in rates.values())
    assert layout == choose(2, rates) and layout.source == "measured"
    assert "compiled_tokens_per_second" not in data
    assert probe.eager_rate(2) == max(rates.values())
    assert LayoutProbe(tmp_path, "/nonexistent").layout(2) == layout  # read back, not re-measured


@pytest.mark.ml
@pytest.mark.slow
def test_the_probe_times_a_compiled_layout() -> None:
    """One real compiled layout (the probe compiles the model as the stage does, and times steps
    after the compiling warm-up); which layouts and when is the next test's."""
    from lmforge.trainer.pretrain.layout import measure

    assert measure(1, 2, 0.5, compile_=True) > 100


FAKE_PROBE = """#!/bin/sh
echo "$@" >> "{log}"
out=""; compiled=""
while [ $# -gt 0 ]; do case "$1" in --out) out="$2"; shift;; --compiled) compiled=1;; esac; shift; done
if [ -n "$compiled" ]; then
  echo '{{"cores": 2, "tokens_per_second": {{"1x2": 9000, "2x1": 11000}}, "compiled_tokens_per_second": {{"1x2": 16000, "2x1": 12000}}}}' > "$out"
else
  echo '{{"cores": 2, "tokens_per_second": {{"1x2": 9000, "2x1": 11000}}}}' > "$out"
fi
"""


def test_compiled_rates_are_measured_when_a_compiling_job_first_asks_then_kept(tmp_path: Path) -> None:
    """The probe is run with `--compiled` only for the first compiling job; its answer (eager and
    compiled rates) then serves both kinds of job without another run."""
    log = tmp_path / "argv.log"
    python = tmp_path / "python"
    python.write_text(FAKE_PROBE.format(log=log))
    python.chmod(0o755)
    probe = LayoutProbe(tmp_path, str(python))
    assert probe.layout(2) == Layout(2, 1, "measured") and probe.eager_rate(2) == 11000.0
    assert "--compiled" not in log.read_text()
    assert probe.layout(2, compiled=True) == Layout(1, 2, "measured")
    runs = log.read_text().splitlines()
    assert len(runs) == 2 and "--compiled" in runs[1]
    again = LayoutProbe(tmp_path, str(python))
    assert again.layout(2) == Layout(2, 1, "measured") and again.layout(2, compiled=True) == Layout(1, 2, "measured")
    assert len(log.read_text().splitlines()) == 2


def test_an_answer_without_compiled_rates_serves_eager_jobs_and_is_remeasured_for_compiling_ones(
    tmp_path: Path,
) -> None:
    """A cache file written before the probe measured compiled steps still answers `compile: false`;
    for a compiling job the probe runs again (here it cannot: the old default, nothing overwritten)."""
    path = tmp_path / "layout.json"
    path.write_text(json.dumps({"cores": 2, "tokens_per_second": {"1x2": 9000.0, "2x1": 11000.0}}))
    probe = LayoutProbe(tmp_path, str(tmp_path / "no-python"))
    assert probe.layout(2) == Layout(2, 1, "measured")
    assert probe.layout(2, compiled=True) == Layout(1, 2, "default")
    assert "compiled_tokens_per_second" not in json.loads(path.read_text())
