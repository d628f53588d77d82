"""Manifest validation that explains itself: every problem names the file, the resource, the field
path on the wire, and what was expected. Used by `lmforge validate`, `lmforge run` and the operator
(which reports the same text in an `InvalidSpec` condition)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from lmforge.api.alignment import AdapterOutput, AdapterType, AlignmentJob, AlignmentMethod
from lmforge.api.evalsuite import EvalSuite
from lmforge.api.kinds import KINDS, Reference, Resource, gate_edge, key, references
from lmforge.api.meta import API_VERSION
from lmforge.api.release import ModelRelease

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the manifests."""

    source: str
    """`file.yaml#2` (document index from 1), or `-` when not from a file."""
    resource: str
    """`Kind/name`, or what is known of it."""
    field: str
    """Wire path of the offending field, e.g. `spec.sources[0].license`; empty for the whole doc."""
    message: str

    def __str__(self) -> str:
        where = f"{self.field}: " if self.field else ""
        return f"{self.source}: {self.resource}: {where}{self.message}"


@dataclass(frozen=True)
class Manifest:
    """A parsed resource and where it came from."""

    resource: Resource
    source: str
    base_dir: Path


def field_path(loc: Sequence[int | str]) -> str:
    """`("spec", "sources", 0, "license")` → `spec.sources[0].license`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _message(error: Any) -> str:
    kind = error["type"]
    msg = str(error["msg"])
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return "unknown field (check the spelling; fields are camelCase)"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if kind not in ("value_error", "assertion_error") and "input" in error:
        shown = repr(error["input"])
        if len(shown) <= 60:
            msg += f" (got {shown})"
    return msg


def problems_from_error(exc: ValidationError, source: str, resource: str) -> list[Problem]:
    """One Problem per pydantic error, with the wire path of the field."""
    return [Problem(source, resource, field_path(e["loc"]), _message(e)) for e in exc.errors()]


def parse_resource(doc: Any, source: str = "-") -> tuple[Resource | None, list[Problem]]:
    """Parse one manifest document into its model, or say precisely why not."""
    if not isinstance(doc, dict):
        return None, [Problem(source, "?", "", f"expected a mapping (a Kubernetes object), got {type(doc).__name__}")]
    kind = doc.get("kind")
    name = doc.get("metadata", {}).get("name", "?") if isinstance(doc.get("metadata"), dict) else "?"
    label = f"{kind or '?'}/{name}"
    if kind not in KINDS:
        return None, [Problem(source, label, "kind", f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")]
    if doc.get("apiVersion") != API_VERSION:
        return None, [Problem(source, label, "apiVersion", f"expected {API_VERSION!r}, got {doc.get('apiVersion')!r}")]
    try:
        return KINDS[kind].model.model_validate(doc), []
    except ValidationError as exc:
        return None, problems_from_error(exc, source, label)


def manifest_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files named, plus manifest files inside named directories (sorted, not recursive into hidden)."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            out += sorted(p for p in path.iterdir() if p.suffix in MANIFEST_SUFFIXES and p.is_file())
        else:
            out.append(path)
    return out


def load_documents(paths: Iterable[str | Path]) -> tuple[list[tuple[str, Path, Any]], list[Problem]]:
    """(source label, base dir, document) for every non-empty YAML document in the files."""
    docs: list[tuple[str, Path, Any]] = []
    problems: list[Problem] = []
    for path in manifest_files(paths):
        if not path.exists():
            problems.append(Problem(str(path), "-", "", "no such file or directory"))
            continue
        try:
            loaded = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            problems.append(Problem(str(path), "-", "", f"not valid YAML: {str(exc).splitlines()[0]}"))
            continue
        for index, doc in enumerate(loaded, start=1):
            if doc is not None:
                docs.append((f"{path}#{index}", path.parent.resolve(), doc))
    return docs, problems


def check_set(manifests: Sequence[Manifest]) -> list[Problem]:
    """Cross-resource checks: duplicates, dangling references, wrong targets, cycles."""
    problems: list[Problem] = []
    by_key: dict[str, Manifest] = {}
    for m in manifests:
        k = key(m.resource)
        if k in by_key:
            problems.append(Problem(m.source, k, "metadata.name", f"duplicate: also defined at {by_key[k].source}"))
        by_key[k] = m
    for m in manifests:
        for ref in references(m.resource):
            target = by_key.get(f"{ref.kind}/{ref.name}")
            if target is None:
                problems.append(
                    Problem(
                        m.source,
                        key(m.resource),
                        ref.field,
                        f"references {ref.kind}/{ref.name}, which is not defined in these manifests",
                    )
                )
                continue
            problems += _target_checks(m, ref.field, target.resource)
    problems += _cycles(manifests)
    return problems


def _target_checks(m: Manifest, field: str, target: Resource) -> list[Problem]:
    here = key(m.resource)
    reward_ref = field == "spec.ppo.rewardModelRef" or (
        field.startswith(("spec.grpo.rewards", "spec.rloo.rewards")) and field.endswith(".modelRef")
    )
    if reward_ref and isinstance(target, AlignmentJob) and target.spec.method is not AlignmentMethod.REWARD:
        return [
            Problem(
                m.source,
                here,
                field,
                f"{key(target)} trains method {target.spec.method.value}, not a reward model (method reward)",
            )
        ]
    if (
        field == "spec.evalSuiteRef"
        and isinstance(target, EvalSuite)
        and target.spec.endpoint is not None
        and target.spec.endpoint.release_ref is not None
        and target.spec.endpoint.release_ref.name == m.resource.metadata.name
    ):
        name = m.resource.metadata.name
        return [
            Problem(
                m.source,
                here,
                field,
                f"{key(target)} evaluates this release's endpoint, which serves only once its gate "
                f"has passed; to gate on what will be served, give that suite modelRef {{kind: "
                f"ModelRelease, name: {name}}} (the compressed candidate) instead of endpoint.releaseRef",
            )
        ]
    if field == "spec.serving.smokeEvalSuiteRef" and isinstance(target, EvalSuite):
        endpoint = target.spec.endpoint
        if endpoint is None or endpoint.release_ref is None or endpoint.release_ref.name != m.resource.metadata.name:
            return [
                Problem(
                    m.source,
                    here,
                    field,
                    f"{key(target)} does not evaluate this release's endpoint; a smoke suite needs "
                    f"endpoint.releaseRef {{name: {m.resource.metadata.name}}} (it is run against the "
                    "new server before that takes over)",
                )
            ]
    if (
        field.startswith("spec.serving.loraAdapters")
        and isinstance(m.resource, ModelRelease)
        and isinstance(target, AlignmentJob)
    ):
        adapter = target.spec.adapter
        if adapter.type is AdapterType.NONE or adapter.output is not AdapterOutput.ADAPTER:
            return [
                Problem(
                    m.source,
                    here,
                    field,
                    f"{key(target)} does not publish a LoRA adapter (needs adapter.type lora/qlora "
                    "and adapter.output adapter)",
                )
            ]
    return []


def _spec(resource: Resource | None) -> dict[str, Any] | None:
    return None if resource is None else resource.spec.model_dump(mode="json", by_alias=True, exclude_none=True)


def _waits_on(resource: Resource, by_key: dict[str, Resource]) -> list[Reference]:
    """The references that order `resource` after their target: those it waits for (Ready, or a
    release's compressed candidate), less a release's gate on a suite evaluating its own candidate
    (compress → evaluate the candidate → gate: that edge points back and waits for nothing)."""
    return [
        r
        for r in references(resource)
        if (r.needs_ready or r.candidate) and not gate_edge(resource, r, _spec(by_key.get(f"{r.kind}/{r.name}")))
    ]


def _cycles(manifests: Sequence[Manifest]) -> list[Problem]:
    by_key = {key(m.resource): m.resource for m in manifests}
    graph = {key(m.resource): [f"{r.kind}/{r.name}" for r in _waits_on(m.resource, by_key)] for m in manifests}
    source = {key(m.resource): m.source for m in manifests}
    state: dict[str, int] = {}
    stack: list[str] = []
    found: list[Problem] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in graph.get(node, []):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                found.append(Problem(source[nxt], nxt, "", "reference cycle: " + " -> ".join(cycle)))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node)
    return found


def dependency_order(resources: Sequence[Resource]) -> list[Resource]:
    """Resources ordered so every one comes after those it waits for (stable; assumes no cycles)."""
    by_key = {key(r): r for r in resources}
    done: list[str] = []
    seen: set[str] = set()

    def visit(k: str) -> None:
        if k in seen:
            return
        seen.add(k)
        for ref in _waits_on(by_key[k], by_key):
            target = f"{ref.kind}/{ref.name}"
            if target in by_key:
                visit(target)
        done.append(k)

    for r in resources:
        visit(key(r))
    return [by_key[k] for k in done]


def validate_paths(paths: Iterable[str | Path]) -> tuple[list[Manifest], list[Problem]]:
    """Load, parse and cross-check manifests; problems are empty when everything is valid."""
    docs, problems = load_documents(paths)
    manifests: list[Manifest] = []
    for source, base, doc in docs:
        resource, errs = parse_resource(doc, source)
        problems += errs
        if resource is not None:
            manifests.append(Manifest(resource, source, base))
    if not docs and not problems:
        problems.append(Problem("-", "-", "", "no manifests found"))
    problems += check_set(manifests)
    return manifests, problems
