"""`python -m lmforge.trainer <stage> --spec FILE`: run one stage per the stage contract.

Exit 0 only after the stage's artifacts are committed and `result.json` is written; otherwise a
non-zero status and, as the last stderr line, `lmforge: error: <reason>` (see `lmforge.api.contract`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

import yaml
from pydantic import ValidationError

from lmforge.api.contract import ERROR_PREFIX, EXIT_FAILED, EXIT_INVALID_SPEC, EXIT_OK, StageName, StageSpec
from lmforge.store import StoreError
from lmforge.trainer.context import StageContext
from lmforge.trainer.errors import StageError
from lmforge.trainer.extensions import seed_torch_extensions
from lmforge.trainer.progress import ProgressReporter, start_metrics_server
from lmforge.trainer.registry import load

TRACKING_FLUSH_S = float(os.environ.get("LMFORGE_TRACKING_FLUSH_SECONDS", "30"))
"""Longest wait, once the stage is done, for tracking records still queued (then they are reported)."""


def _fail(message: str, code: int) -> int:
    print(ERROR_PREFIX + " ".join(message.split()), file=sys.stderr, flush=True)
    return code


def read_spec(path: Path) -> StageSpec:
    text = path.read_text(encoding="utf-8")
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    return StageSpec.model_validate(data)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmforge.trainer", description=__doc__)
    parser.add_argument("stage", choices=[s.value for s in StageName], help="stage to run")
    parser.add_argument("--spec", required=True, type=Path, help="StageSpec file (YAML or JSON)")
    args = parser.parse_args(argv)
    try:
        spec = read_spec(args.spec)
    except (OSError, yaml.YAMLError, ValueError) as exc:
        if isinstance(exc, ValidationError):
            first = exc.errors()[0]
            return _fail(f"--spec {args.spec}: {'.'.join(map(str, first['loc']))}: {first['msg']}", EXIT_INVALID_SPEC)
        return _fail(f"--spec {args.spec}: {exc}", EXIT_INVALID_SPEC)
    if spec.stage.value != args.stage:
        return _fail(f"--spec {args.spec} is for stage {spec.stage.value!r}, not {args.stage!r}", EXIT_INVALID_SPEC)
    try:
        seed_torch_extensions()
    except OSError as exc:  # an optimisation only: the op is then built just in time, as without a seed
        print(f"warning: prebuilt torch extensions not copied: {exc}", file=sys.stderr, flush=True)
    reporter: ProgressReporter | None = None

    def close_tracking() -> None:
        # Before the `lmforge: error:` line, which must stay the last line on stderr.
        if reporter is not None and reporter.tracker is not None:
            reporter.tracker.close(TRACKING_FLUSH_S)

    try:
        ctx = StageContext.from_spec(spec)
        reporter = ctx.reporter
        if spec.worker.index == 0 and os.environ.get("RANK", "0") == "0":
            # Under torchrun every rank shares worker index 0; only rank 0 may bind the port.
            start_metrics_server()
        run = load(spec.stage)
        artifacts = run(ctx)
        if "result" not in ctx.extra:
            reporter.result(artifacts, ctx.extra.get("metrics"))
        close_tracking()
        return EXIT_OK
    except StageError as exc:
        if reporter:
            reporter.error(str(exc), exc.retryable)
        close_tracking()
        return _fail(str(exc), EXIT_FAILED if exc.retryable else EXIT_INVALID_SPEC)
    except StoreError as exc:
        if reporter:
            reporter.error(str(exc), True)
        close_tracking()
        return _fail(f"store: {exc}", EXIT_FAILED)
    except KeyboardInterrupt:
        close_tracking()
        return _fail("interrupted", 130)
    except Exception as exc:
        traceback.print_exc()
        message = f"{type(exc).__name__}: {exc}"
        if reporter:
            reporter.error(message, True)
        close_tracking()
        return _fail(message, EXIT_FAILED)


def _exit(code: int) -> None:
    """Leave. A torchrun rank other than 0 has nothing left to write once `main` returns, and its
    interpreter shutdown (C++ destructors of gloo/DeepSpeed threads) occasionally aborts, which torchrun
    reports as the whole stage failing; such a rank skips that shutdown."""
    if os.environ.get("RANK", "0") != "0" and "TORCHELASTIC_RUN_ID" in os.environ:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    _exit(main())
