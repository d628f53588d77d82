"""Shared by the embedded runner's tests: resources, stage runs and a wrapper "python" that runs
`stagescript.py` in place of `python -m lmforge.trainer`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from lmforge.api import KINDS
from lmforge.api.contract import STAGES_OF_KIND
from lmforge.api.kinds import Resource
from lmforge.operator.reconcile.runs import run_id, stage_run
from lmforge.operator.reconcile.types import StageRun

SCRIPT = Path(__file__).with_name("stagescript.py")


def wrapper_python(tmp: Path) -> str:
    """An executable that runs the test stage script with the arguments the backend gives python."""
    path = tmp / "python-stage"
    path.write_text(f'#!/bin/sh\nexec {sys.executable} {SCRIPT} "$@"\n')
    path.chmod(0o755)
    return str(path)


def resource(kind: str, name: str, spec: dict[str, Any], behaviour: str = "ok") -> Resource:
    return KINDS[kind].model.model_validate(
        {
            "apiVersion": "lmforge.io/v1alpha1",
            "kind": kind,
            "metadata": {"name": name, "annotations": {"test/behaviour": behaviour}},
            "spec": spec,
        }
    )


def pretrain(name: str, behaviour: str = "ok", **compute: Any) -> Resource:
    return resource(
        "PretrainJob", name, {"datasetRef": {"name": "d"}, "training": {"maxSteps": 10}, "compute": compute}, behaviour
    )


def run_of(res: Resource, store: str, stage_index: int = 0) -> StageRun:
    rid = run_id(res, {})
    return stage_run(res, STAGES_OF_KIND[res.kind][stage_index], rid, store, {}, None)
