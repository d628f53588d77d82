"""What a stage gets (its parsed resource, the store, its output prefix, its inputs and a reporter)
and what it gives back (`StageOutcome`)."""

from __future__ import annotations

import hashlib
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from pydantic import ValidationError

from lmforge.api.contract import InputArtifacts, StageSpec
from lmforge.api.kinds import KINDS, Resource
from lmforge.api.validation import problems_from_error
from lmforge.store import Store, open_store
from lmforge.trainer.errors import InvalidInput
from lmforge.trainer.precision import effective_precision
from lmforge.trainer.progress import ProgressReporter

R = TypeVar("R")


def _cache_root() -> Path:
    return Path(os.environ.get("LMFORGE_CACHE", Path.home() / ".cache" / "lmforge"))


def work_dir_for(spec: StageSpec) -> Path:
    """The stage's local scratch directory: `<work>/<project>/<output prefix>/worker-<i>`.

    `<project>` is a hash of the store root and the manifests' directory: the output prefix alone
    (`datasets/default/d/<run id>`) is the same for the same resource and spec in two projects, and
    two `lmforge run` in different directories must not share (or clean up) each other's scratch."""
    work = Path(os.environ.get("LMFORGE_WORK_DIR") or _cache_root() / "work")
    project = hashlib.sha256(f"{spec.store}\n{spec.base_dir or ''}".encode()).hexdigest()[:12]
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{spec.output}")
    return work / project / safe / f"worker-{spec.worker.index}"


@dataclass
class StageOutcome:
    """What a stage run gives the entry point: the one channel from a stage back to `__main__`.

    The entry point writes `result.json` and the final record from it (`artifacts`, `metrics`) unless
    `writes_result` is False: a torchrun rank other than 0 (rank 0 reports for the whole run), or a
    stage that wrote its own result while it still runs (serve reports its endpoint, then serves)."""

    artifacts: dict[str, str]
    """Published artifact name → URI, each already manifest-committed; empty on ranks/workers that
    publish nothing."""
    metrics: dict[str, float] = field(default_factory=dict)
    """The result record's metrics."""
    writes_result: bool = True
    """Whether the entry point writes the result (see the class docstring)."""
    losses: dict[int, float] = field(default_factory=dict)
    """Pretraining only: training loss by optimizer step of this run (not in the result; tests compare
    resumed and uninterrupted runs with it)."""
    resumed_from: int | None = None
    """Pretraining only: the checkpoint step this run resumed from, None when it started fresh."""


@dataclass
class StageContext:
    """Everything one stage run needs, built once from the `--spec` file."""

    spec: StageSpec
    resource: Resource
    store: Store
    output: Store
    reporter: ProgressReporter
    work_dir: Path

    @classmethod
    def from_spec(cls, spec: StageSpec, reporter: ProgressReporter | None = None) -> StageContext:
        # In an Indexed Job every pod mounts the same spec; its index comes from the environment.
        index = os.environ.get("LMFORGE_WORKER_INDEX") or os.environ.get("JOB_COMPLETION_INDEX")
        if index is not None and spec.worker.count > 1:
            spec = spec.model_copy(update={"worker": spec.worker.model_copy(update={"index": int(index)})})
        kind = spec.resource.get("kind")
        if kind not in KINDS:
            raise InvalidInput(f"resource.kind: unknown kind {kind!r}")
        try:
            resource = KINDS[kind].model.model_validate(spec.resource)
        except ValidationError as exc:
            first = problems_from_error(exc, "spec", f"{kind}/{spec.resource.get('metadata', {}).get('name')}")
            raise InvalidInput("; ".join(f"{p.field}: {p.message}" for p in first)) from None
        resource, note = effective_precision(resource)
        if note:
            print(f"warning: {note}", file=sys.stderr, flush=True)
        store = open_store(spec.store)
        output = store.child(spec.output)
        reporter = reporter or ProgressReporter(spec.stage, spec.run_id, output, worker=spec.worker.index)
        if reporter.tracker is None:
            from lmforge.trainer.tracking import trackers_for

            reporter.tracker = trackers_for(spec)
        work_dir = work_dir_for(spec)
        work_dir.mkdir(parents=True, exist_ok=True)
        return cls(spec, resource, store, output, reporter, work_dir)

    def input(self, kind: str, name: str) -> InputArtifacts:
        """The resolved artifacts of a referenced resource, or a clear error if the runner gave none."""
        found = self.spec.inputs.get(f"{kind}/{name}")
        if found is None:
            raise InvalidInput(f"input {kind}/{name} was not resolved (is it Ready?)")
        return found

    def resolve(self, uri: str) -> str:
        """A user-written location made absolute: S3/file URIs unchanged, relative paths against the
        manifest's directory."""
        if "://" in uri or os.path.isabs(uri):
            return uri
        base = Path(self.spec.base_dir) if self.spec.base_dir else Path.cwd()
        return str((base / uri).resolve())

    def uri(self, key: str) -> str:
        """Absolute URI of a key under the output prefix."""
        return self.output.url(key)
