"""Kubernetes backend: pure builders that turn a `StageRun` into child objects (ConfigMap, Job or
Indexed Job + headless Service, Deployment + Service), a pure observer that turns those children
back into `ObservedRun`s, and a thin REST client used by the kopf handlers."""

from lmforge.operator.kube.build import build_children
from lmforge.operator.kube.meta import Owner
from lmforge.operator.kube.observe import observe_child

__all__ = ["Owner", "build_children", "observe_child"]
