"""Repo-wide test configuration: makes the session-scoped ``s3_server`` fixture available everywhere.

Tests that use it (directly or through another fixture) are marked ``s3`` automatically, so
``pytest -m "not s3"`` deselects them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:  # make ``support`` importable whatever pytest's import mode
    sys.path.insert(0, _TESTS)

from support.seaweed import s3_server  # noqa: E402

__all__ = ["s3_server"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "s3_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.s3)
