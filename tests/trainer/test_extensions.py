"""The image's prebuilt torch extensions are copied once into the writable extensions dir, with
their files' times kept (so ninja finds nothing to rebuild)."""

from __future__ import annotations

import os
from pathlib import Path

from lmforge.trainer.extensions import SEED_ENV, seed_torch_extensions


def _seed(root: Path) -> Path:
    op = root / "py311_cpu" / "deepspeed_shm_comm"
    op.mkdir(parents=True)
    (op / "deepspeed_shm_comm.so").write_bytes(b"\x7fELF")
    (op / "build.ninja").write_text("rule cxx\n")
    os.utime(op / "deepspeed_shm_comm.so", (1_000_000, 1_000_000))
    return root


def test_seed_is_copied_once_with_times_kept(tmp_path: Path) -> None:
    seed, target = _seed(tmp_path / "seed"), tmp_path / "scratch" / "torch_extensions"
    env = {SEED_ENV: str(seed), "TORCH_EXTENSIONS_DIR": str(target)}
    assert seed_torch_extensions(env) == target
    so = target / "py311_cpu" / "deepspeed_shm_comm" / "deepspeed_shm_comm.so"
    assert so.read_bytes() == b"\x7fELF" and so.stat().st_mtime == 1_000_000
    so.write_bytes(b"rebuilt")  # what the loader did afterwards is never overwritten
    assert seed_torch_extensions(env) is None and so.read_bytes() == b"rebuilt"
    assert [p.name for p in target.parent.iterdir()] == ["torch_extensions"]  # no temporary left


def test_no_seed_or_no_target_is_a_no_op(tmp_path: Path) -> None:
    assert seed_torch_extensions({"TORCH_EXTENSIONS_DIR": str(tmp_path / "t")}) is None
    assert (
        seed_torch_extensions({SEED_ENV: str(tmp_path / "absent"), "TORCH_EXTENSIONS_DIR": str(tmp_path / "t")}) is None
    )
    assert not (tmp_path / "t").exists()
