"""LoRA adapters of a serving ModelRelease: which should be served, and what to load into or unload
from its running server to get there.

The adapter set is not part of a release's identity (`run_id` leaves it out), so a changed
`serving.loraAdapters` — or a listed AlignmentJob that becomes Ready, publishes a new adapter, or is
deleted — keeps the same server. A backend that can change a running server (the local one, through
vLLM's `/v1/load_lora_adapter` and `/v1/unload_lora_adapter`) reports the adapters the server answers
to (`ObservedRun.adapters`, from its `/v1/models`); the decision here says what to change. A backend
that cannot (the operator's Deployments) reports None: its pods start with the set in their spec.
"""

from __future__ import annotations

from lmforge.api.contract import InputArtifacts, StageSpec
from lmforge.api.kinds import lora_adapters_of
from lmforge.api.meta import Reason
from lmforge.api.release import ModelRelease
from lmforge.operator.reconcile.builder import Builder
from lmforge.operator.reconcile.types import AdapterChange, Event, ObservedRun


def adapter_key(name: str) -> str:
    """The input key of a listed adapter's AlignmentJob."""
    return f"AlignmentJob/{name}"


def hot_keys(release: ModelRelease) -> set[str]:
    """Input keys that are adapters only (not also the release's model): left out of its identity."""
    model = release.spec.model_ref
    own = f"{model.kind.value}/{model.name}" if model.kind is not None and model.name else None
    return {adapter_key(r.name) for r in release.spec.serving.lora_adapters} - {own}


def wanted(release: ModelRelease, inputs: dict[str, InputArtifacts]) -> dict[str, str]:
    """The adapters the release should serve now (`lora_adapters_of`: the listed AlignmentJobs that
    are Ready and published one)."""
    return lora_adapters_of(release, inputs)


def of_spec(spec: StageSpec) -> dict[str, str]:
    """The adapters a serve stage's spec starts its server with (what `--lora-modules` gets)."""
    return wanted(ModelRelease.model_validate(spec.resource), spec.inputs)


def change(run: str, want: dict[str, str], seen: ObservedRun) -> AdapterChange | None:
    """What to unload and load so the server `seen` answers to exactly `want`. An adapter whose
    artifact changed is unloaded and loaded again; one that failed to load from the same artifact is
    not tried again (until the artifact changes)."""
    served = seen.adapters or {}
    failed = {n for n, (uri, _) in seen.adapter_errors.items() if want.get(n) == uri}
    load = {n: uri for n, uri in want.items() if served.get(n) != uri and n not in failed}
    unload = tuple(sorted(n for n in served if n not in want or n in load))
    if not load and not unload:
        return None
    return AdapterChange(run=run, load=load, unload=unload)


def serve_adapters(
    b: Builder, release: ModelRelease, run: str, seen: ObservedRun, inputs: dict[str, InputArtifacts]
) -> str:
    """Decide the adapter change for the Ready server `run`, record the served names in the status,
    and return what the Ready message should add ("" for a release without LoRA)."""
    serving = release.spec.serving
    if not serving.lora_enabled:
        b.status.adapters = []
        return ""
    want = wanted(release, inputs)
    if seen.adapters is None:  # pods started with the adapters of their spec
        b.status.adapters = sorted(want)
    else:
        b.status.adapters = sorted(seen.adapters)
        todo = change(run, want, seen)
        if todo is not None:
            b.adapters.append(todo)
            parts = [f"loading {', '.join(todo.load)}"] if todo.load else []
            parts += [f"unloading {', '.join(todo.unload)}"] if todo.unload else []
            b.events.append(Event("Normal", Reason.ADAPTERS_CHANGED.value, f"{run}: {'; '.join(parts)}"))
        for name, (_, why) in sorted(seen.adapter_errors.items()):
            before = b.obs.status.condition("Ready")
            if want.get(name) and (before is None or f"adapter {name} failed" not in before.message):
                b.events.append(Event("Warning", Reason.ADAPTER_FAILED.value, f"adapter {name}: {why}"))
    notes = [f"adapters {', '.join(b.status.adapters)}" if b.status.adapters else "no adapter loaded"]
    notes += [
        f"adapter {n} failed to load: {why}"
        for n, (uri, why) in sorted(seen.adapter_errors.items())
        if want.get(n) == uri
    ]
    waiting = [r.name for r in serving.lora_adapters if r.name not in want]
    if waiting:
        notes.append(f"not served until Ready with an adapter: {', '.join(f'AlignmentJob/{n}' for n in waiting)}")
    return "; " + "; ".join(notes)
