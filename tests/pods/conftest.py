"""Fixtures for tests/pods: a control plane with a real node, and LMForge's images on it.

Every test here carries the ``pods`` marker (``pytest -m pods`` runs them alone). They need root,
containerd, runc, the CNI plugins, buildah and debootstrap (scripts/setup.sh installs them for the
test command) and fail, never skip, when those are missing: CI must not turn a broken real node
into a green run. ``LMFORGE_SKIP_PODS=1`` lets a developer opt out.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster.local import NodeCluster, local_cluster

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SKIP = os.environ.get("LMFORGE_SKIP_PODS") == "1"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.pods)
            if SKIP:
                item.add_marker(pytest.mark.skip(reason="LMFORGE_SKIP_PODS=1 (developer opt-out)"))


@pytest.fixture(scope="session")
def node_cluster() -> Iterator[NodeCluster]:
    """Build (warm: seconds), start the control plane on the node address and the node, import
    the images; on the way out stop both and fail if anything of them is left on the host."""
    if SKIP:
        pytest.skip("LMFORGE_SKIP_PODS=1")
    with local_cluster() as nc:  # the same code as scripts/local-cluster
        yield nc


@pytest.fixture
def pod_namespace(node_cluster: NodeCluster) -> Iterator[str]:
    name = node_cluster.cp.create_namespace(f"p-{uuid.uuid4().hex[:8]}")
    try:
        yield name
    finally:
        node_cluster.cp.delete_namespace(name)
