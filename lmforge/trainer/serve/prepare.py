"""`python -m lmforge.trainer.serve.prepare --spec FILE --dest DIR`: a serving pod's init container.

The way KServe's storage initializer works: before the server container starts, the model (and any
LoRA adapters) is pulled from the store into a volume, every file checked against its manifest's
sha256 (files already there with the right hash are kept, so a restarted init container resumes),
and vLLM's options are written next to it as `DIR/vllm.yaml`. The server container then runs
vLLM's own image with `--config DIR/vllm.yaml --host 0.0.0.0 --port PORT`: the server image needs
nothing of LMForge, and the options come from the same `server_options` as `lmforge run`'s server.

Exit codes follow the stage contract: 2 when the input can never work (no model, failed hash
check, a model this vLLM cannot serve), 1 otherwise (the kubelet restarts the init container).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from lmforge.api.contract import (
    ERROR_PREFIX,
    EXIT_FAILED,
    EXIT_INVALID_SPEC,
    EXIT_OK,
    VLLM_CONFIG_FILE,
    VLLM_SITE_DIR,
    StageSpec,
)
from lmforge.api.kinds import lora_adapters_of
from lmforge.api.release import ModelRelease
from lmforge.store import StoreError
from lmforge.trainer.errors import InvalidInput, StageError
from lmforge.trainer.serve.launcher import CPU_SITE, check_servable, fetch_verified, server_options


def model_uri(spec: StageSpec, release: ModelRelease) -> str:
    """The compress stage's `model`, passed as the input keyed by the release itself; else any input
    that carries a `model` artifact."""
    own = spec.inputs.get(f"ModelRelease/{release.metadata.name}")
    if own is not None and "model" in own.artifacts:
        return own.artifacts["model"]
    for found in spec.inputs.values():
        if "model" in found.artifacts:
            return found.artifacts["model"]
    raise InvalidInput(
        f"no model to serve: input ModelRelease/{release.metadata.name} (the compress stage's result) was not given"
    )


def adapter_uris(spec: StageSpec, release: ModelRelease) -> dict[str, str]:
    """`serving.loraAdapters` → the adapters their AlignmentJobs published, for those the reconciler
    resolved (Ready): the server starts without one not Ready yet (`lora_adapters_of`)."""
    return lora_adapters_of(release, spec.inputs)


def prepare(spec: StageSpec, dest: Path) -> Path:
    """Download and verify the model and adapters into `dest`; write and return `dest/vllm.yaml`."""
    release = ModelRelease.model_validate(spec.resource)
    serving, gpus = release.spec.serving, release.spec.gpus
    model_dir = fetch_verified(model_uri(spec, release), dest / "model")
    check_servable(model_dir, gpus)
    lora = {name: fetch_verified(uri, dest / "adapters" / name) for name, uri in adapter_uris(spec, release).items()}
    opts = server_options(model_dir, serving, serving.served_model_name or release.metadata.name, gpus=gpus, lora=lora)
    site = dest / VLLM_SITE_DIR
    site.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(CPU_SITE / "sitecustomize.py", site / "sitecustomize.py")
    config = dest / VLLM_CONFIG_FILE
    tmp = config.with_suffix(".part")
    tmp.write_text(yaml.safe_dump(opts, sort_keys=False))
    tmp.replace(config)  # the server container never sees a half-written file
    return config


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmforge.trainer.serve.prepare", description=__doc__)
    parser.add_argument("--spec", required=True, type=Path, help="the serve stage's StageSpec (YAML)")
    parser.add_argument("--dest", required=True, type=Path, help="the model volume")
    args = parser.parse_args(argv)
    try:
        spec = StageSpec.model_validate(yaml.safe_load(args.spec.read_text(encoding="utf-8")))
        config = prepare(spec, args.dest)
    except (InvalidInput, ValueError) as exc:  # ValueError: pydantic's ValidationError
        print(ERROR_PREFIX + " ".join(str(exc).split()), file=sys.stderr, flush=True)
        return EXIT_INVALID_SPEC
    except (StoreError, StageError, OSError) as exc:
        print(ERROR_PREFIX + " ".join(str(exc).split()), file=sys.stderr, flush=True)
        return EXIT_FAILED
    print(f"model ready: {config}", flush=True)
    register(spec)
    return EXIT_OK


def register(spec: StageSpec) -> None:
    """In the cluster no `serve` stage process runs, so the init container reports the serving model
    to experiment tracking (its registered model version; the operator moves the aliases) once it is in
    place. Never fails."""
    from lmforge.api.contract import ProgressRecord, RecordType
    from lmforge.trainer.tracking import trackers_for

    trackers = trackers_for(spec)
    release = ModelRelease.model_validate(spec.resource)
    trackers.record(
        ProgressRecord(
            type=RecordType.RESULT, stage=spec.stage, run_id=spec.run_id, artifacts={"model": model_uri(spec, release)}
        )
    )
    trackers.close(30.0)


if __name__ == "__main__":
    sys.exit(main())
