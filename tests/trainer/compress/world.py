"""A store with a tiny Dataset (packed shards) and a tiny *trained* teacher Llama (head_dim 32) that
names it in its manifest, plus a helper that runs the compress stage on it in-process. Shared by the
compress and serve tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from support.tiny import make_model, make_tokenizer, sentences

from lmforge.api.contract import InputArtifacts, StageName, StageSpec
from lmforge.store import ArtifactWriter, LocalStore
from lmforge.trainer.context import StageContext, StageOutcome
from lmforge.trainer.shards import FORMAT, INDEX, ShardEntry, ShardIndex

SEQ = 32
TEACHER_STEPS = 80


def write_shards(out: Path, tokenizer_dir: Path, n_sentences: int = 1500, val_rows: int = 48) -> Path:
    """Generated sentences packed into uint16 rows of SEQ tokens: index.json + train/val .bin."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids: list[int] = []
    for text in sentences(n_sentences, seed=1):
        ids += tok(text)["input_ids"] + [tok.eos_token_id]
    rows = np.asarray(ids[: len(ids) // SEQ * SEQ], dtype=np.uint16).reshape(-1, SEQ)
    out.mkdir(parents=True, exist_ok=True)
    index = ShardIndex(format=FORMAT, dtype="uint16", seq_length=SEQ, vocab_size=len(tok))
    for split, name, data in (
        ("validation", "val-00000.bin", rows[:val_rows]),
        ("train", "train-00000.bin", rows[val_rows:]),
    ):
        data.tofile(out / name)
        index.split(split).append(ShardEntry(file=name, sequences=len(data)))
    (out / INDEX).write_bytes(index.to_bytes())
    return out


def train_teacher(model_dir: Path, shards: Path, steps: int = TEACHER_STEPS) -> None:
    """A few dozen AdamW steps so the teacher knows the grammar (and quantization has something to lose)."""
    import torch
    from transformers import AutoModelForCausalLM

    from lmforge.trainer.shards import Shards

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    data, rng = Shards(shards), np.random.default_rng(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        ids = torch.from_numpy(data.train.sample(rng, 16))
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(model_dir, safe_serialization=True)


@dataclass
class World:
    root: Path
    store_uri: str
    teacher: InputArtifacts
    dataset: InputArtifacts
    teacher_dir: Path
    shards_dir: Path

    def compress_spec(
        self,
        name: str,
        compression: dict[str, Any],
        serving: dict[str, Any] | None = None,
    ) -> StageSpec:
        resource = {
            "apiVersion": "lmforge.io/v1alpha1",
            "kind": "ModelRelease",
            "metadata": {"name": name},
            "spec": {
                "modelRef": {"kind": "PretrainJob", "name": "teacher"},
                "compression": compression,
                "serving": serving or {},
            },
        }
        return StageSpec(
            stage=StageName.COMPRESS,
            resource=resource,
            store=self.store_uri,
            output=f"releases/{name}/compress",
            run_id=f"{name}-compress",
            inputs={"PretrainJob/teacher": self.teacher, "Dataset/tiny": self.dataset},
        )

    def compress(self, name: str, compression: dict[str, Any]) -> tuple[dict[str, str], StageOutcome]:
        from lmforge.trainer.compress.stage import run

        outcome = run(StageContext.from_spec(self.compress_spec(name, compression)))
        return outcome.artifacts, outcome


def make_world(root: Path) -> World:
    """Build the world under `root`, or reuse the one a previous module built there."""
    store = LocalStore(root / "store")
    if (root / "store/pretrain/teacher/model/MANIFEST.json").exists():
        arts = {k: store.url(f"datasets/tiny/{k}") for k in ("shards", "tokenizer")}
        return _world(root, store, arts)
    tok = make_tokenizer(root / "tokenizer")
    shards = write_shards(root / "shards", tok)
    teacher_dir = make_model(root / "teacher", hidden=128, layers=2, heads=4, tokenizer_dir=tok)
    train_teacher(teacher_dir, shards)
    arts = {}
    for key, local, kind in (("datasets/tiny/shards", shards, "shards"), ("datasets/tiny/tokenizer", tok, "tokenizer")):
        w = ArtifactWriter(store, key, clear_existing=True)
        w.add_dir(local)
        w.commit(kind)
        arts[kind] = store.url(key)
    w = ArtifactWriter(store, "pretrain/teacher/model", clear_existing=True)
    w.add_dir(teacher_dir)
    w.commit(
        "model", {"lineage": ["Dataset/tiny"], "dataset": {"shards": arts["shards"], "tokenizer": arts["tokenizer"]}}
    )
    return _world(root, store, arts)


def _world(root: Path, store: LocalStore, arts: dict[str, str]) -> World:
    teacher = InputArtifacts(
        kind="PretrainJob",
        name="teacher",
        artifacts={"model": store.url("pretrain/teacher/model")},
        lineage=["Dataset/tiny"],
    )
    dataset = InputArtifacts(kind="Dataset", name="tiny", artifacts=arts)
    return World(root, store.url(""), teacher, dataset, root / "teacher", root / "shards")
