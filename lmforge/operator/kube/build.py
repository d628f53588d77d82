"""Pure builders: `StageRun` → Kubernetes objects. No client, no I/O: table-tested in tests/kube.

Shapes:

* every run: a ConfigMap `<run>-spec` with the `--spec` file;
* a run-to-completion stage on one pod: a `batch/v1` Job;
* Dataset with `workers > 1`: an Indexed Job, completions = parallelism = workers (each pod reads
  its worker index from `JOB_COMPLETION_INDEX`);
* multi-node training: an Indexed Job, completions = parallelism = nodes, plus a headless Service
  of the same name; pods are `<job>-<index>.<service>`, rank 0 is the torch rendezvous master;
* serving: a Deployment, a Service of its own (named after the run) and one named after the release
  (see `serving`, and `traffic` for a canary's replicas and HTTPRoute);
* with `network_policies` set: a NetworkPolicy named after the run (see `network`).

Retry policy: `backoffLimit` from `compute.backoffLimit` (each retry resumes from the stage's
checkpoint); a pod failure policy fails the Job at once on exit code 2 (`EXIT_INVALID_SPEC`: retrying
cannot help, so no retry storm) and does not count pod disruptions (preemption, node drain).
"""

from __future__ import annotations

from typing import Any

from lmforge.api.contract import EXIT_INVALID_SPEC, distributed_command, stage_command
from lmforge.api.scheduling import GangScheduler
from lmforge.operator.kube.meta import Owner, metadata, stamp
from lmforge.operator.kube.network import network_policy
from lmforge.operator.kube.pods import (
    CONTAINER,
    SPEC_FILE,
    SPEC_PATH,
    config_map_name,
    container,
    pod_spec,
    spec_yaml,
)
from lmforge.operator.kube.serving import deployment, release_service
from lmforge.operator.kube.traffic import run_service
from lmforge.operator.reconcile.types import StageRun
from lmforge.operator.settings import Settings

KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
VOLCANO_GROUP_ANNOTATION = "scheduling.k8s.io/group-name"
COMPLETION_INDEX_PATH = "metadata.annotations['batch.kubernetes.io/job-completion-index']"


def config_map(run: StageRun, owner: Owner) -> dict[str, Any]:
    """The ConfigMap with the StageSpec."""
    return stamp(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": metadata(owner, config_map_name(run), run.name, "stage"),
            "data": {SPEC_FILE: spec_yaml(run)},
        }
    )


def headless_service(run: StageRun, owner: Owner, settings: Settings) -> dict[str, Any]:
    """Gives each Indexed Job pod a stable DNS name `<job>-<index>.<service>` for the rendezvous.
    `publishNotReadyAddresses`: ranks must resolve each other before any of them is Ready."""
    return stamp(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata(owner, run.name, run.name, "stage"),
            "spec": {
                "clusterIP": "None",
                "publishNotReadyAddresses": True,
                "selector": {"batch.kubernetes.io/job-name": run.name},
                "ports": [{"name": "rendezvous", "port": settings.master_port, "targetPort": settings.master_port}],
            },
        }
    )


def _launch(run: StageRun, settings: Settings) -> tuple[list[str], list[dict[str, Any]]]:
    """(command, launcher env). Multi-node: torchrun with `$(VAR)` expanded by the kubelet."""
    if run.nodes <= 1:
        cmd = distributed_command(run.stage, SPEC_PATH, nproc_per_node=run.nproc_per_node)
        return cmd, ([{"name": "NPROC_PER_NODE", "value": str(run.nproc_per_node)}] if run.distributed else [])
    env: list[dict[str, Any]] = [
        {"name": "MASTER_ADDR", "value": f"{run.name}-0.{run.name}"},
        {"name": "MASTER_PORT", "value": str(settings.master_port)},
        {"name": "NODE_RANK", "valueFrom": {"fieldRef": {"fieldPath": COMPLETION_INDEX_PATH}}},
        {"name": "NNODES", "value": str(run.nodes)},
        {"name": "NPROC_PER_NODE", "value": str(run.nproc_per_node)},
    ]
    cmd = distributed_command(
        run.stage,
        SPEC_PATH,
        nproc_per_node=run.nproc_per_node,
        nnodes=run.nodes,
        node_rank="$(NODE_RANK)",
        master_addr="$(MASTER_ADDR)",
        master_port=settings.master_port,
    )
    return cmd, env


def job(run: StageRun, owner: Owner, settings: Settings) -> dict[str, Any]:
    """The Job (Indexed when it has several pods)."""
    cmd, launch_env = (
        _launch(run, settings) if run.nodes > 1 or run.distributed else (stage_command(run.stage, SPEC_PATH), [])
    )
    pods = run.nodes if run.nodes > 1 else run.workers
    meta = metadata(owner, run.name, run.name, "stage")
    template_meta: dict[str, Any] = {"labels": dict(meta["labels"]), "annotations": {}}
    spec = pod_spec(run, settings, container(run, settings, cmd, launch_env), "Never")
    job_spec: dict[str, Any] = {
        "backoffLimit": run.compute.backoff_limit,
        "completions": pods,
        "parallelism": pods,
        "podFailurePolicy": {
            "rules": [
                {
                    "action": "FailJob",
                    "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [EXIT_INVALID_SPEC]},
                },
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            ]
        },
        "template": {"metadata": template_meta, "spec": spec},
    }
    if pods > 1:
        job_spec["completionMode"] = "Indexed"
    if run.compute.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = run.compute.active_deadline_seconds
    if run.nodes > 1:
        spec["subdomain"] = run.name
    sched = run.compute.scheduling
    if sched.gang is GangScheduler.KUEUE:
        # Kueue admits the whole Job at once by un-suspending it; the label picks the LocalQueue.
        meta["labels"][KUEUE_QUEUE_LABEL] = sched.queue_name or "default"
        job_spec["suspend"] = True
    elif sched.gang is GangScheduler.VOLCANO:
        template_meta["annotations"][VOLCANO_GROUP_ANNOTATION] = run.name
    return stamp({"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": job_spec})


def pod_group(run: StageRun, owner: Owner) -> dict[str, Any]:
    """Volcano PodGroup: schedule all `nodes` pods or none."""
    pods = run.nodes if run.nodes > 1 else run.workers
    spec: dict[str, Any] = {"minMember": pods}
    if run.compute.scheduling.queue_name:
        spec["queue"] = run.compute.scheduling.queue_name
    if run.compute.scheduling.priority_class_name:
        spec["priorityClassName"] = run.compute.scheduling.priority_class_name
    return stamp(
        {
            "apiVersion": "scheduling.volcano.sh/v1beta1",
            "kind": "PodGroup",
            "metadata": metadata(owner, run.name, run.name, "stage"),
            "spec": spec,
        }
    )


def build_children(
    run: StageRun, owner: Owner, settings: Settings, replicas: int | None = None, serving_only: str | None = None
) -> list[dict[str, Any]]:
    """Every object a run needs, in apply order (the ConfigMap before the pods that mount it; the
    NetworkPolicy, when configured, before the pods it confines). `replicas`: a serving run's share
    of a canary by replica ratio (default its own count); `serving_only`: the run the release's
    Service selects alone while only it may take traffic (traffic.service_pin; default every run)."""
    out = [config_map(run, owner)]
    if settings.network_policies:
        out.append(network_policy(run, owner, settings))
    if run.long_running:
        return [
            *out,
            deployment(run, owner, settings, replicas),
            release_service(run, owner, serving_only),
            run_service(run.name, run.port or 8000, owner),
        ]
    if run.compute.scheduling.gang is GangScheduler.VOLCANO:
        out.append(pod_group(run, owner))
    if run.nodes > 1:
        out.append(headless_service(run, owner, settings))
    out.append(job(run, owner, settings))
    return out
