"""A stage's local scratch directory: two projects never share it, the same run always finds it."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmforge.api.contract import StageName, StageSpec, Worker
from lmforge.trainer.context import StageContext

MANIFEST = {
    "apiVersion": "lmforge.io/v1alpha1",
    "kind": "Dataset",
    "metadata": {"name": "d"},
    "spec": {"sources": [{"name": "s", "uri": "x.txt", "license": "MIT"}]},
}
OUTPUT = "datasets/default/d/d-0123456789"


def _spec(project: Path, index: int = 0) -> StageSpec:
    """What `lmforge run` in `project` hands the stage: the same resource gives the same output prefix
    everywhere; only the store root and the manifests' directory differ between projects."""
    return StageSpec(
        stage=StageName.DATASET,
        resource=MANIFEST,
        store=(project / ".lmforge" / "store").as_uri(),
        output=OUTPUT,
        run_id="d-0123456789",
        inputs={},
        worker=Worker(index=index, count=2),
        base_dir=str(project),
    )


def test_two_projects_with_the_same_resource_do_not_share_a_work_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LMFORGE_WORK_DIR", raising=False)
    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path / "cache"))  # the user's one cache, shared by both
    a, b = tmp_path / "project-a", tmp_path / "project-b"
    work_a = StageContext.from_spec(_spec(a)).work_dir
    work_b = StageContext.from_spec(_spec(b)).work_dir
    assert work_a != work_b and work_a.is_dir() and work_b.is_dir()
    assert not work_a.is_relative_to(work_b) and not work_b.is_relative_to(work_a)
    assert work_a.is_relative_to(tmp_path / "cache" / "work")
    assert StageContext.from_spec(_spec(a)).work_dir == work_a  # a resumed run finds its scratch again
    assert StageContext.from_spec(_spec(a, index=1)).work_dir.parent == work_a.parent  # workers side by side
