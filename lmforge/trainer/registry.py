"""Stage name → the function that runs it. Modules are imported only when their stage runs, so a
Dataset pod never imports torch and `--help` is instant."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from lmforge.api.contract import StageName
from lmforge.trainer.context import StageContext, StageOutcome

StageFn = Callable[[StageContext], StageOutcome]
"""Runs the stage; returns its outcome (the published artifacts, each already manifest-committed, and
the result's metrics)."""

STAGES: dict[StageName, str] = {
    StageName.DATASET: "lmforge.trainer.dataset.stage:run",
    StageName.PRETRAIN: "lmforge.trainer.pretrain.stage:run",
    StageName.ALIGN: "lmforge.trainer.align.stage:run",
    StageName.EVALUATE: "lmforge.trainer.evaluate.stage:run",
    StageName.COMPRESS: "lmforge.trainer.compress.stage:run",
    StageName.SERVE: "lmforge.trainer.serve.stage:run",
}


def available() -> list[StageName]:
    """Stages whose module is present in this build."""
    out = []
    for name, target in STAGES.items():
        module = target.split(":")[0]
        if importlib.util.find_spec(module.rsplit(".", 1)[0]) is not None:
            out.append(name)
    return out


def load(stage: StageName) -> StageFn:
    """Import and return a stage's entry function."""
    module, func = STAGES[stage].split(":")
    fn: StageFn = getattr(importlib.import_module(module), func)
    return fn
