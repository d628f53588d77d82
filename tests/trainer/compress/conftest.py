from __future__ import annotations

from pathlib import Path

import pytest

from trainer.compress.world import World, make_world


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.getbasetemp() / "release-world"  # built once per session, shared
    return make_world(root)


@pytest.fixture(autouse=True)
def _work_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMFORGE_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path / "cache"))
