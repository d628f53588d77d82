"""The embedded runner's processes x threads default for CPU PretrainJobs: measured once per machine
by the trainer's probe, read back from the user's cache, the old default when probing fails."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from lmforge.operator.local import LocalBackend
from lmforge.operator.local.layout import Layout, LayoutProbe, choose, machine_cache_file
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


def _eager(name: str) -> object:
    return resource("PretrainJob", name, {"datasetRef": {"name": "d"}, "training": {"maxSteps": 10, "compile": False}})


def test_backend_uses_the_measured_layout_unless_compute_names_one(tmp_path: Path) -> None:
    """Eagerly 2 x 1 wins here, compiled 1 x 2 does: a job that may compile (`auto`, the default, or
    `true`) gets the compiled winner, `compile: false` the eager one."""
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
    [cmd] = backend.commands(run_of(_eager("eager"), str(tmp_path)), "spec.json")  # type: ignore[arg-type]
    assert cmd.argv[:3] == ["py", "-m", "torch.distributed.run"] and "--nproc-per-node=2" in cmd.argv
    assert cmd.env["OMP_NUM_THREADS"] == "1"
    [compiling] = backend.commands(run_of(pretrain("auto"), str(tmp_path)), "spec.json")
    assert compiling.argv == ["py", "-m", "lmforge.trainer", "pretrain", "--spec", "spec.json"]
    assert compiling.env["OMP_NUM_THREADS"] == "2"
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
    """The real probe: one data-parallel step loop per layout, the winner cached for the next call."""
    monkeypatch.setattr("lmforge.operator.local.layout.PROBE_SECONDS", 0.5)
    monkeypatch.setattr(
        "lmforge.operator.local.layout.PROBE_TIMEOUT", 1800.0
    )  # 4 runs, 2 compiling: minutes on a busy 2-core machine
    probe = LayoutProbe(tmp_path, sys.executable, cwd=REPO)
    layout = probe.layout(2)
    data = json.loads((tmp_path / "layout.json").read_text())
    rates = data["tokens_per_second"]
    # Measured, not a floor of speed: a CPU without native bf16 (an AVX2-only EPYC) trains the probe's
    # bf16 model at ~60 tokens/s, one with AMX at thousands.
    assert set(rates) == {"1x2", "2x1"} and all(r > 0 for r in rates.values())
    assert layout == choose(2, rates) and layout.source == "measured"
    compiled = data["compiled_tokens_per_second"]  # 2 cores: both layouts are among the 2 fastest
    assert set(compiled) == {"1x2", "2x1"} and all(r > 100 for r in compiled.values())
    assert probe.layout(2, compiled=True) == choose(2, compiled)
    assert LayoutProbe(tmp_path, "/nonexistent").layout(2) == layout  # read back, not re-measured


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
