"""The serve tests use the same tiny release world and per-test work dirs as the compress tests."""

from __future__ import annotations

from trainer.compress.conftest import _work_dir, world

__all__ = ["_work_dir", "world"]
