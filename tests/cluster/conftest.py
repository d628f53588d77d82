"""Fixtures for tests/cluster: one real control plane per test session.

Why session scope: a start costs ~10-20 s (etcd, API server, controllers, kwok); tests isolate
themselves with their own namespaces instead. Why fail instead of skip when it cannot start: CI
must not turn a broken build into a green run; only a developer may opt out with
LMFORGE_SKIP_CLUSTER=1.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .controlplane import ControlPlane, build

HERE = Path(__file__).resolve().parent
SKIP = os.environ.get("LMFORGE_SKIP_CLUSTER") == "1"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/cluster with ``cluster`` (before ``-m`` selection runs)."""
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.cluster)
            if SKIP:
                item.add_marker(pytest.mark.skip(reason="LMFORGE_SKIP_CLUSTER=1 (developer opt-out)"))


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """Build the binaries if needed (fast when warm), start the control plane, always stop it."""
    if SKIP:
        pytest.skip("LMFORGE_SKIP_CLUSTER=1")
    cp = ControlPlane(bin_dir=build())
    try:
        cp.start()  # raises ControlPlaneError (with component logs) -> the tests error, not skip
        yield cp
    finally:
        cp.stop()


@pytest.fixture
def namespace(control_plane: ControlPlane) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards (without waiting)."""
    name = control_plane.create_namespace(f"t-{uuid.uuid4().hex[:8]}")
    try:
        yield name
    finally:
        control_plane.delete_namespace(name)
