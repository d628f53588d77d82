"""A checkpoint in the store whose files were replaced by a pickle payload (with a manifest that
matches, as anyone with write access to the store could write) is refused on resume — for the
RNG file LMForge loads and for the files DeepSpeed's `load_checkpoint` loads — and the payload
never runs. Clean checkpoints of every ZeRO stage resume weights-only (the other checkpoint tests)."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from lmforge.store import LocalStore
from lmforge.trainer.safe_load import UnsafeCheckpoint

from ..test_safe_load import write_payload
from .conftest import World, module_world, pretrain_resource, run_in_process, stage_spec

pytestmark = pytest.mark.ml

CKPTS = "runs/pretrain/checkpoints"
RESOURCE = pretrain_resource(
    training={"maxSteps": 4}, checkpoint={"everySteps": 2, "keepLast": 2}, validation={"everySteps": 50, "batches": 1}
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Path) -> Iterator[World]:
    """A 4-step run: checkpoints step-2 and step-4, `latest` → step-4."""
    with module_world(tmp_path_factory.mktemp("pickle"), tiny_tokenizer) as w:
        run_in_process(stage_spec(w, RESOURCE))
        yield w


def _replace(step_dir: Path, name: str, marker: Path) -> None:
    """Overwrite one file with a payload and fix the manifest so the download verifies."""
    target = step_dir / name
    write_payload(target, marker)
    manifest = json.loads((step_dir / "MANIFEST.json").read_text())
    data = target.read_bytes()
    manifest["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    manifest["total_size"] = sum(f["size"] for f in manifest["files"].values())
    (step_dir / "MANIFEST.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    # The optimizer states' name starts with `bf16_` under bf16 (fp32 where the CPU lacks native bf16).
    "name",
    ["rng-rank0.pt", "mp_rank_00_model_states.pt", "*zero_pp_rank_0_mp_rank_00_optim_states.pt"],
)
def test_a_crafted_checkpoint_file_is_refused_on_resume(
    trained: World, tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(trained.tmp / "store" / "runs", tmp_path / "store" / "runs")
    w = World(LocalStore(tmp_path / "store"), f"file://{tmp_path / 'store'}", trained.dataset, tmp_path)
    monkeypatch.setenv("LMFORGE_WORK_DIR", str(tmp_path / "work"))
    step_dir = tmp_path / "store" / CKPTS / "step-4"
    [found] = step_dir.glob(name)
    name = found.name
    marker = tmp_path / "pwned"
    _replace(step_dir, name, marker)
    resource = pretrain_resource(
        training={"maxSteps": 6},
        checkpoint={"everySteps": 2, "keepLast": 2},
        validation={"everySteps": 50, "batches": 1},
    )
    with pytest.raises(UnsafeCheckpoint, match="refused to load"):
        run_in_process(stage_spec(w, resource))
    assert not marker.exists()


@pytest.mark.parametrize("zero", [0, 2, 3])
def test_every_zero_stage_resumes_weights_only(zero: int, world: World) -> None:
    """(Stage 1 resumes in the fallback and kill tests.)"""

    def resource(steps: int) -> dict[str, object]:
        return pretrain_resource(
            training={"maxSteps": steps},
            deepspeed={"zeroStage": zero},
            checkpoint={"everySteps": 2, "keepLast": 2},
            validation={"everySteps": 50, "batches": 1},
        )

    run_in_process(stage_spec(world, resource(2)))
    resumed = run_in_process(stage_spec(world, resource(4)))
    assert resumed.outcome.resumed_from == 2
    assert sorted(resumed.outcome.losses) == [3, 4]
