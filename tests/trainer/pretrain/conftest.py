"""Fixtures for the PretrainJob tests: a tiny Dataset published in the stage's input format (shards
written with numpy and `lmforge.trainer.shards.ShardIndex`, a BPE tokenizer, a card), and helpers
that build a stage spec and run the stage in-process or as `python -m lmforge.trainer pretrain`."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.tiny import make_tokenizer, sentences

from lmforge.api.contract import RECORD_PREFIX, InputArtifacts, ProgressRecord, StageName, StageSpec
from lmforge.store import ArtifactWriter, LocalStore, Store
from lmforge.trainer.context import StageOutcome
from lmforge.trainer.shards import FORMAT, INDEX, ShardEntry, ShardIndex

SEQ = 32
REPO = Path(__file__).resolve().parents[3]


def write_shards(
    out: Path,
    tokenizer_dir: Path,
    *,
    seq: int = SEQ,
    n_sentences: int = 1200,
    seed: int = 0,
    val_rows: int = 16,
    vocab_size: int | None = None,
) -> Path:
    """Encode generated sentences, pack into rows of `seq` tokens and write index.json + .bin files."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids: list[int] = []
    for text in sentences(n_sentences, seed):
        ids += tok(text)["input_ids"] + [tok.eos_token_id]
    rows = np.asarray(ids[: len(ids) // seq * seq], dtype=np.uint16).reshape(-1, seq)
    out.mkdir(parents=True, exist_ok=True)
    splits = {"validation": rows[:val_rows], "train": rows[val_rows:]}
    index = ShardIndex(
        format=FORMAT,
        dtype="uint16",
        seq_length=seq,
        vocab_size=vocab_size or len(tok),
        bos_id=tok.bos_token_id,
        eos_id=tok.eos_token_id,
        pad_id=tok.pad_token_id,
        tokens={k: int(v.size) for k, v in splits.items()},
        seed=seed,
    )
    for split, data in splits.items():
        name = f"{'val' if split == 'validation' else 'train'}-00000.bin"
        data.tofile(out / name)
        index.split(split).append(
            ShardEntry(file=name, sequences=len(data), sha256=hashlib.sha256((out / name).read_bytes()).hexdigest())
        )
    (out / INDEX).write_bytes(index.to_bytes())
    return out


@dataclass
class World:
    """A store holding a published tiny Dataset, and what a stage spec needs to reference it."""

    store: Store
    store_uri: str
    dataset: InputArtifacts
    tmp: Path
    extra_inputs: dict[str, InputArtifacts] = field(default_factory=dict)


def publish_dataset(store: Store, name: str, tmp: Path, tokenizer_dir: Path, **shard_kwargs: Any) -> InputArtifacts:
    shards = write_shards(tmp / f"{name}-shards", tokenizer_dir, **shard_kwargs)
    card = tmp / f"{name}-card"
    card.mkdir(parents=True, exist_ok=True)
    (card / "card.json").write_text(json.dumps({"name": name, "sources": ["generated"]}))
    (card / "card.md").write_text(f"# {name}\n")
    artifacts = {}
    for art, local in (("shards", shards), ("tokenizer", tokenizer_dir), ("card", card)):
        w = ArtifactWriter(store, f"datasets/{name}/{art}", clear_existing=True)
        w.add_dir(local)
        w.commit(art)
        artifacts[art] = store.url(f"datasets/{name}/{art}")
    return InputArtifacts(kind="Dataset", name=name, artifacts=artifacts, lineage=[])


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer", vocab_size=300)


@contextmanager
def module_world(tmp: Path, tokenizer: Path) -> Iterator[World]:
    """A world that lives as long as a module-scoped fixture (its own cache and work dir, offline)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("LMFORGE_CACHE", str(tmp / "cache"))
        mp.setenv("LMFORGE_WORK_DIR", str(tmp / "work"))
        store = LocalStore(tmp / "store")
        yield World(store, f"file://{tmp / 'store'}", publish_dataset(store, "tiny-corpus", tmp, tokenizer), tmp)


@pytest.fixture
def world(tmp_path: Path, tiny_tokenizer: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path / "cache"))
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    store = LocalStore(tmp_path / "store")
    ds = publish_dataset(store, "tiny-corpus", tmp_path, tiny_tokenizer)
    return World(store, f"file://{tmp_path / 'store'}", ds, tmp_path)


def pretrain_resource(name: str = "tiny-base", **spec: Any) -> dict[str, Any]:
    """A PretrainJob manifest for a tiny model; keyword arguments override spec sections (camelCase)."""
    base: dict[str, Any] = {
        "datasetRef": {"name": "tiny-corpus"},
        "model": {"numLayers": 2, "hiddenSize": 64, "numHeads": 2, "headDim": 32, "tieEmbeddings": True},
        "training": {"maxSteps": 30, "microBatchSize": 8, "precision": "bf16", "seed": 7},
        "optimizer": {"lr": 0.01, "minLr": 0.001, "warmupSteps": 3},
        "deepspeed": {"zeroStage": 1},
        "checkpoint": {"everySteps": 10, "keepLast": 2},
        "validation": {"everySteps": 10, "batches": 2},
        "compute": {"threads": 2},
    }
    for key, value in spec.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return {"apiVersion": "lmforge.io/v1alpha1", "kind": "PretrainJob", "metadata": {"name": name}, "spec": base}


def stage_spec(w: World, resource: dict[str, Any], *, output: str = "runs/pretrain", run_id: str = "r1") -> StageSpec:
    inputs = {"Dataset/tiny-corpus": w.dataset, **w.extra_inputs}
    return StageSpec(
        stage=StageName.PRETRAIN, resource=resource, store=w.store_uri, output=output, run_id=run_id, inputs=inputs
    )


@dataclass
class Run:
    artifacts: dict[str, str]
    outcome: StageOutcome
    records: list[ProgressRecord]


def run_in_process(spec: StageSpec) -> Run:
    """Run the stage in this process (one rank), collecting its progress records."""
    from lmforge.trainer.context import StageContext
    from lmforge.trainer.pretrain.stage import run
    from lmforge.trainer.progress import ProgressReporter

    buf = io.StringIO()
    reporter = ProgressReporter(spec.stage, spec.run_id, None, stream=buf, line_interval=0.0)
    ctx = StageContext.from_spec(spec, reporter=reporter)
    ctx.reporter.output = ctx.output
    outcome = run(ctx)
    return Run(outcome.artifacts, outcome, records_of(buf.getvalue()))


def run_subprocess(
    spec: StageSpec, tmp: Path, *, nproc: int = 1, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """`python -m lmforge.trainer pretrain --spec FILE`, under torchrun when `nproc` > 1."""
    from lmforge.api.contract import distributed_command

    path = tmp / f"spec-{spec.run_id}.json"
    path.write_text(json.dumps(spec.wire()))
    from support.seaweed import _free_ports

    cmd = distributed_command(
        StageName.PRETRAIN, str(path), nproc_per_node=nproc, python=sys.executable, master_port=_free_ports(1)[0]
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def records_of(stdout: str) -> list[ProgressRecord]:
    return [
        ProgressRecord.model_validate_json(line[len(RECORD_PREFIX) :])
        for line in stdout.splitlines()
        if line.startswith(RECORD_PREFIX)
    ]
