"""Which stage runs a resource needs, with their identity, topology and resolved inputs."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from lmforge.api.alignment import AlignmentJob, RewardType
from lmforge.api.contract import InputArtifacts, StageName, StageSpec, Worker
from lmforge.api.dataset import Dataset
from lmforge.api.evalsuite import CodeIsolation, EvalSuite, TaskType
from lmforge.api.kinds import KINDS, Resource
from lmforge.api.meta import SecretKeyRef
from lmforge.api.pretrain import PretrainJob
from lmforge.api.release import ModelRelease
from lmforge.operator.reconcile.adapters import hot_keys
from lmforge.operator.reconcile.types import StageRun

_MAX_NAME = 52
DEFAULT_NAMESPACE = "default"
"""The namespace of a resource whose manifest names none (the embedded runner's)."""


def run_id(resource: Resource, inputs: dict[str, InputArtifacts]) -> str:
    """A stable identity for the work a spec asks for: the same spec on the same inputs is the same
    run (so it is resumed or recognised as done, never redone); any change makes a new run —
    except to `spec.tracking`, which only says where the run is logged, and to a release's LoRA
    adapters (`serving.loraAdapters` and their AlignmentJobs' outputs): its running server loads and
    unloads those (adapters.py); only whether LoRA is on at all is part of the identity."""
    spec = resource.spec.model_dump(mode="json", by_alias=True, exclude={"tracking"})
    hot: set[str] = set()
    if isinstance(resource, ModelRelease):  # adapters are loaded into a running server, not restarted for
        hot = hot_keys(resource)
        spec["serving"]["loraAdapters"] = resource.spec.serving.lora_enabled
    payload = {
        "spec": spec,
        "inputs": {k: sorted(v.artifacts.items()) for k, v in sorted(inputs.items()) if k not in hot},
    }
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:10]
    return f"{resource.metadata.name}-{digest}"


def resource_prefix(kind: str, namespace: str | None, name: str) -> str:
    """Everything one resource publishes, relative to the store root: `<plural>/<namespace>/<name>`.

    The namespace is part of it so that resources of the same kind, name and spec in two namespaces
    never share a run's output, adopt each other's `result.json`, or delete each other's artifacts."""
    return f"{KINDS[kind].plural}/{namespace or DEFAULT_NAMESPACE}/{name}"


def output_prefix(resource: Resource, rid: str) -> str:
    """Where a run publishes, relative to the store root: `<plural>/<namespace>/<name>/<run id>`."""
    return f"{resource_prefix(resource.kind, resource.metadata.namespace, resource.metadata.name)}/{rid}"


def stage_output(resource: Resource, stage: StageName, rid: str) -> str:
    """Where one stage of a run publishes: the run's prefix, or `<prefix>/serve` for serving, so the
    server's `result.json` (its endpoint) never overwrites the compress stage's (the model)."""
    prefix = output_prefix(resource, rid)
    return f"{prefix}/{stage.value}" if stage is StageName.SERVE else prefix


def run_name(resource: Resource, stage: StageName, rid: str) -> str:
    """Child object name (also a label value): `<name>-<stage>-<hash6 of the spec>`, ≤ 52 characters
    so Indexed Job pod hostnames stay ≤ 63.

    A name too long for that keeps as much of itself as fits, and its hash covers the *whole* name
    as well as the spec (8 hex digits): two long names that share their first 30-odd characters
    (`team-a-llama-7b-pretrain-2026-11-run-1`, `...-run-2`) with the same spec must not map to the
    same Job. Names that fit keep the short form, so their children's names never change."""
    suffix = f"-{stage.value}-{rid.rsplit('-', 1)[-1][:6]}"
    name = resource.metadata.name
    if len(name) + len(suffix) <= _MAX_NAME:
        return name + suffix
    digest = hashlib.sha256(f"{name}/{rid}".encode()).hexdigest()[:8]
    suffix = f"-{stage.value}-{digest}"
    return name[: _MAX_NAME - len(suffix)].rstrip("-") + suffix


def _topology(resource: Resource) -> tuple[int, int, int]:
    """(nodes, processes per node, GPUs per node)."""
    if isinstance(resource, PretrainJob | AlignmentJob):
        topo = resource.spec.topology
        procs = topo.gpus_per_node or resource.spec.compute.processes or 1
        return topo.nodes, procs, topo.gpus_per_node
    if isinstance(resource, ModelRelease):
        return 1, 1, resource.spec.gpus
    return 1, 1, 0


SERVING_API_KEY_ENV = "LMFORGE_API_KEY"
"""Where the serve stage reads `spec.serving.apiKeySecret`."""
ENDPOINT_API_KEY_ENV = "LMFORGE_ENDPOINT_API_KEY"
"""Where the evaluate stage reads the evaluated endpoint's API key."""


def stage_secret_env(
    resource: Resource, stage: StageName, inputs: dict[str, InputArtifacts]
) -> dict[str, SecretKeyRef]:
    """The API keys a stage reads from the environment, as Secret references.

    An EvalSuite evaluating a release's endpoint (`endpoint.releaseRef`) without its own
    `apiKeySecret` uses the release's `serving.apiKeySecret`: the key the server demands."""
    if isinstance(resource, ModelRelease) and stage is StageName.SERVE and resource.spec.serving.api_key_secret:
        return {SERVING_API_KEY_ENV: resource.spec.serving.api_key_secret}
    if isinstance(resource, EvalSuite) and stage is StageName.EVALUATE and resource.spec.endpoint is not None:
        endpoint = resource.spec.endpoint
        if endpoint.api_key_secret is not None:
            return {ENDPOINT_API_KEY_ENV: endpoint.api_key_secret}
        if endpoint.release_ref is not None:
            release = inputs.get(f"ModelRelease/{endpoint.release_ref.name}")
            ref = ((release.spec or {}).get("serving") or {}).get("apiKeySecret") if release else None
            if ref:
                return {ENDPOINT_API_KEY_ENV: SecretKeyRef.model_validate(ref)}
    return {}


def stage_run(
    resource: Resource,
    stage: StageName,
    rid: str,
    store: str,
    inputs: dict[str, InputArtifacts],
    base_dir: str | None,
) -> StageRun:
    """The StageRun of one stage of a resource."""
    nodes, nproc, gpus = _topology(resource)
    workers = resource.spec.workers if isinstance(resource, Dataset) else 1
    manifest: dict[str, Any] = resource.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"status"})
    spec = StageSpec(
        stage=stage,
        resource=manifest,
        store=store,
        output=stage_output(resource, stage, rid),
        run_id=rid,
        inputs=inputs,
        worker=Worker(index=0, count=workers),
        base_dir=base_dir,
    )
    long_running = stage is StageName.SERVE
    port = replicas = None
    if isinstance(resource, ModelRelease) and long_running:
        port, replicas = resource.spec.serving.port, resource.spec.serving.replicas
    return StageRun(
        name=run_name(resource, stage, rid),
        stage=stage,
        resource_kind=resource.kind,
        resource_name=resource.metadata.name,
        run_id=rid,
        spec=spec,
        compute=resource.spec.compute,
        nodes=nodes if stage in (StageName.PRETRAIN, StageName.ALIGN) else 1,
        nproc_per_node=nproc if stage in (StageName.PRETRAIN, StageName.ALIGN) else 1,
        gpus_per_node=gpus,
        workers=workers,
        long_running=long_running,
        port=port,
        replicas=replicas if replicas is not None else 1,
        secret_env=stage_secret_env(resource, stage, inputs),
        metrics_port=resource.spec.metrics.port if isinstance(resource, PretrainJob) else None,
        user_namespaces=runs_model_written_code(resource),
    )


def runs_model_written_code(resource: Resource) -> bool:
    """Whether the stage runs model-written programs in its bubblewrap sandbox: an EvalSuite's
    sandboxed code tasks, or GRPO/RLOO rewards of `type: code` (always sandboxed)."""
    if isinstance(resource, EvalSuite):
        return any(t.type is TaskType.CODE and t.isolation is CodeIsolation.SANDBOX for t in resource.spec.tasks)
    if isinstance(resource, AlignmentJob):
        groups = (resource.spec.grpo, resource.spec.rloo)
        return any(r.type is RewardType.CODE for g in groups if g is not None for r in g.rewards)
    return False
