"""Pure reconcilers: `(spec, status, inputs' state, observed stage runs) -> (stage runs, status, events)`.

Shared by the kopf operator and the embedded runner, so both make exactly the same decisions; only
the backends differ in *how* a stage run becomes real."""

from lmforge.operator.reconcile.reconciler import reconcile
from lmforge.operator.reconcile.types import (
    Decision,
    Event,
    InputState,
    Observed,
    ObservedRun,
    RunState,
    StageRun,
)

__all__ = ["Decision", "Event", "InputState", "Observed", "ObservedRun", "RunState", "StageRun", "reconcile"]
