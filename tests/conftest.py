"""Repo-wide test configuration: makes the session-scoped ``s3_server`` fixture available everywhere.

Tests that use it (directly or through another fixture) are marked ``s3`` automatically, so
``pytest -m "not s3"`` deselects them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:  # make ``support`` importable whatever pytest's import mode
    sys.path.insert(0, _TESTS)

from support.seaweed import s3_server  # noqa: E402

__all__ = ["s3_server"]

# Nothing may come from a hub: models and tokenizers are made by the tests themselves.
for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}.items():
    os.environ.setdefault(_key, _value)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "s3_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.s3)
