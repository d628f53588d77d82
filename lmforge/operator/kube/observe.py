"""Pure observer: child objects (as listed or watched) → `ObservedRun`, then merged with what the
store says (`result.json`, `progress.json`). No client here; the handlers feed it."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from lmforge.api.contract import ERROR_PREFIX, EXIT_INVALID_SPEC, ProgressRecord, StageName
from lmforge.operator.kube.meta import RUN_LABEL
from lmforge.operator.reconcile.types import ObservedRun, RunState


def _conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c.get("type", ""): c for c in (obj.get("status") or {}).get("conditions") or []}


def _stage(name: str) -> StageName | None:
    """The stage from a run name `<resource>-<stage>-<hash6>`."""
    parts = name.rsplit("-", 2)
    try:
        return StageName(parts[-2]) if len(parts) == 3 else None
    except ValueError:
        return None


def observe_job(job: dict[str, Any]) -> ObservedRun:
    """Job conditions → run state. `Complete` means exit 0 (the reconciler then looks for the
    result); `Failed` means the Job controller gave up (backoff exhausted, or the exit-code-2 rule)."""
    name = job["metadata"]["name"]
    status = job.get("status") or {}
    conds = _conditions(job)
    failed_pods = int(status.get("failed") or 0)
    attempts = failed_pods + 1
    labels = job["metadata"].get("labels") or {}
    base = ObservedRun(
        name=name, run_id=labels.get(RUN_LABEL, name), state=RunState.PENDING, stage=_stage(name), attempts=attempts
    )
    if conds.get("Failed", {}).get("status") == "True":
        cond = conds["Failed"]
        invalid = cond.get("reason") == "PodFailurePolicy"
        message = f"Job {cond.get('reason', 'Failed')}: {cond.get('message', '')}".strip()
        return replace(
            base, state=RunState.FAILED, message=message, retryable=not invalid, attempts=max(failed_pods, 1)
        )
    if conds.get("Complete", {}).get("status") == "True":
        return replace(base, state=RunState.SUCCEEDED, attempts=max(attempts - 1, 1))
    if (job.get("spec") or {}).get("suspend"):
        return replace(base, message="waiting for admission (Job suspended by the gang scheduler)")
    active, ready = int(status.get("active") or 0), int(status.get("ready") or 0)
    note = f"retrying after {failed_pods} failed attempt(s)" if failed_pods else None
    state = RunState.RUNNING if ready > 0 else RunState.PENDING
    if active == 0 and not note:
        note = "pods not created yet"
    return replace(base, state=state, message=note)


def observe_deployment(dep: dict[str, Any], endpoint: str | None) -> ObservedRun:
    """A serving Deployment is READY once every wanted replica is available and up to date."""
    name = dep["metadata"]["name"]
    spec, status = dep.get("spec") or {}, dep.get("status") or {}
    wanted = int(spec.get("replicas", 1) or 0)
    available = int(status.get("availableReplicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    conds = _conditions(dep)
    base = ObservedRun(name=name, run_id=name, state=RunState.PENDING, stage=StageName.SERVE)
    progressing = conds.get("Progressing", {})
    if progressing.get("status") == "False" and progressing.get("reason") == "ProgressDeadlineExceeded":
        return replace(base, state=RunState.FAILED, message=progressing.get("message"))
    if (
        available >= wanted
        and updated >= wanted
        and status.get("observedGeneration", 0) >= dep["metadata"].get("generation", 0)
    ):
        return replace(base, state=RunState.READY, endpoint=endpoint)
    return replace(
        base,
        state=RunState.RUNNING if available else RunState.PENDING,
        message=f"{available}/{wanted} replicas available",
    )


def observe_child(child: dict[str, Any], endpoint: str | None = None) -> ObservedRun | None:
    """The ObservedRun of a Job or Deployment; None for the other children."""
    kind = child.get("kind")
    if kind == "Job":
        return observe_job(child)
    if kind == "Deployment":
        return observe_deployment(child, endpoint)
    return None


def pod_failure_reason(pods: list[dict[str, Any]]) -> str | None:
    """The stage's own `lmforge: error:` line from the newest failed pod's termination message
    (the container's last log lines, see `terminationMessagePolicy`), else its exit code."""
    failed = [p for p in pods if (p.get("status") or {}).get("phase") == "Failed"]
    failed.sort(key=lambda p: p["metadata"].get("creationTimestamp", ""))
    for pod in reversed(failed):
        limits = {
            c.get("name"): ((c.get("resources") or {}).get("limits") or {}).get("memory")
            for c in (pod.get("spec") or {}).get("containers") or []
        }
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated") or {}
            if term.get("reason") == "OOMKilled":
                limit = limits.get(cs.get("name"))
                bound = f"its memory limit {limit}" if limit else "the node's memory (no limit set)"
                return (
                    f"OOMKilled: container {cs.get('name')} ran out of {bound}; raise "
                    "spec.compute.resources.limits.memory (and requests) or shrink the batch"
                )
            message = str(term.get("message") or "")
            lines = [ln for ln in message.splitlines() if ln.startswith(ERROR_PREFIX)]
            if lines:
                return lines[-1][len(ERROR_PREFIX) :]
            if "exitCode" in term:
                code = int(term["exitCode"])
                hint = " (invalid input: not retried)" if code == EXIT_INVALID_SPEC else ""
                return f"container exited with code {code}{hint}"
    return None


def with_store(
    run: ObservedRun | None, name: str, stage: StageName, result: ProgressRecord | None, progress: ProgressRecord | None
) -> ObservedRun | None:
    """Merge the store's records into a backend observation. A result without a child (deleted
    Job, or a restart after completion) still counts: the run is done and is never redone. A Job
    that exited 0 without `result.json` broke the stage contract and is reported as failed."""
    if run is None:
        if result is None:
            return None
        return ObservedRun(name=name, run_id=name, state=RunState.SUCCEEDED, stage=stage, result=result)
    if run.state is RunState.SUCCEEDED and result is None:
        return replace(
            run,
            state=RunState.FAILED,
            retryable=False,
            message="the stage exited 0 but wrote no result.json (stage contract broken)",
        )
    return replace(run, stage=run.stage or stage, result=result, progress=progress)


STUCK_REASONS = frozenset(
    {
        "CreateContainerConfigError",
        "CreateContainerError",
        "ImagePullBackOff",
        "ErrImageNeverPull",
        "ErrImagePull",
        "InvalidImageName",
        "CrashLoopBackOff",
        "RunContainerError",
    }
)
"""Container waiting reasons that will not clear by themselves (unlike ContainerCreating)."""
PODS_LOOK_AFTER_SECONDS = 5.0
"""Look at a not-yet-running child's pods only once it is this old: a healthy pod is usually
running by then, so the common case costs no pod LIST at all."""


def pods_worth_a_look(child: dict[str, Any], run: ObservedRun, now: datetime) -> bool:
    """Whether a PENDING run's pods may explain why nothing runs: its Job has pods (`active`) or its
    Deployment wants replicas, none is ready, and the child is older than `PODS_LOOK_AFTER_SECONDS`."""
    if run.state is not RunState.PENDING or (child.get("spec") or {}).get("suspend"):
        return False
    created = (child.get("metadata") or {}).get("creationTimestamp")
    if not created:
        return False
    age = (now - datetime.fromisoformat(str(created).replace("Z", "+00:00"))).total_seconds()
    if age < PODS_LOOK_AFTER_SECONDS:
        return False
    status = child.get("status") or {}
    if child.get("kind") == "Job":
        return int(status.get("active") or 0) > 0
    return True


def pod_waiting_reason(pods: list[dict[str, Any]]) -> str | None:
    """Why a run's pods do not run: the first unschedulable pod's scheduler message, or the first
    container stuck in a waiting reason that does not clear by itself (`STUCK_REASONS`)."""
    for pod in sorted(pods, key=lambda p: p["metadata"].get("name", "")):
        name = pod["metadata"].get("name", "?")
        status = pod.get("status") or {}
        if status.get("phase") not in (None, "Pending", "Running"):
            continue
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                return f"pod {name}: {cond.get('reason') or 'Unschedulable'}: {cond.get('message', '')}".rstrip(": ")
        for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in STUCK_REASONS:
                detail = f": {waiting['message']}" if waiting.get("message") else ""
                return f"pod {name}: container {cs.get('name')}: {waiting['reason']}{detail}"
    return None
