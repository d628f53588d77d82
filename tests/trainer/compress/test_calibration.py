"""Where compression's held-out rows come from when no calibration Dataset is named: a
`calibrationUri` of rows, else the AlignmentJob's own training rows, else an error naming every
choice."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from support.tiny import sentences

from lmforge.api.contract import InputArtifacts, StageName, StageSpec
from lmforge.api.release import Quantization
from lmforge.store import ArtifactWriter, LocalStore
from lmforge.trainer.artifacts import fetch
from lmforge.trainer.compress.calibration import pack_rows
from lmforge.trainer.context import StageContext
from lmforge.trainer.errors import InvalidInput
from trainer.compress.world import World

pytestmark = pytest.mark.ml


def chat_file(path: Path, n: int = 40) -> Path:
    rows = [
        {"messages": [{"role": "user", "content": "say a sentence"}, {"role": "assistant", "content": s}]}
        for s in sentences(n, seed=5)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def compress(
    world: World,
    name: str,
    model_ref: dict[str, Any],
    quantization: dict[str, Any],
    inputs: dict[str, InputArtifacts] | None = None,
) -> dict[str, str]:
    from lmforge.trainer.compress.stage import run

    resource = {
        "apiVersion": "lmforge.io/v1alpha1",
        "kind": "ModelRelease",
        "metadata": {"name": name},
        "spec": {"modelRef": model_ref, "compression": {"quantization": quantization}},
    }
    spec = StageSpec(
        stage=StageName.COMPRESS,
        resource=resource,
        store=world.store_uri,
        output=f"releases/{name}/compress",
        run_id=f"{name}-compress",
        inputs=inputs or {},
    )
    return run(StageContext.from_spec(spec)).artifacts


def _report(arts: dict[str, str]) -> dict[str, Any]:
    return json.loads((fetch(arts["report"]) / "report.json").read_text())


def test_calibration_uri_calibrates_an_external_model(world: World, tmp_path: Path) -> None:
    rows = tmp_path / "calib.jsonl"
    rows.write_text("".join(json.dumps({"text": s}) + "\n" for s in sentences(200, seed=7)))
    arts = compress(
        world,
        "ext",
        {"uri": str(world.teacher_dir)},
        {"method": "w8a8", "calibrationUri": str(rows), "calibrationSamples": 8},
    )
    rep = _report(arts)
    # the teacher knows this grammar: a low perplexity shows the rows were tokenized as it reads them
    assert rep["passed"] and 1 < rep["perplexity_before"] < 30, rep


def test_an_alignment_jobs_own_rows_are_the_fallback(world: World, tmp_path: Path) -> None:
    data = chat_file(tmp_path / "train.jsonl")
    store = LocalStore(Path(world.store_uri.removeprefix("file://")))
    w = ArtifactWriter(store, "align/chatty/model", clear_existing=True)
    w.add_dir(world.teacher_dir)
    w.commit("model", {"method": "sft", "data": str(data), "lineage": ["AlignmentJob/chatty"]})
    job = InputArtifacts(kind="AlignmentJob", name="chatty", artifacts={"model": store.url("align/chatty/model")})
    arts = compress(
        world,
        "aligned",
        {"kind": "AlignmentJob", "name": "chatty"},
        {"method": "w8a8", "calibrationSamples": 8},
        {"AlignmentJob/chatty": job},
    )
    assert _report(arts)["perplexity_after"] is not None


def test_no_calibration_data_names_all_three_choices(world: World) -> None:
    with pytest.raises(InvalidInput) as err:
        compress(world, "none", {"uri": str(world.teacher_dir)}, {"method": "w8a8"})
    message = str(err.value)
    for choice in ("calibrationDatasetRef", "calibrationUri", "AlignmentJob's spec.data.uri"):
        assert choice in message, message


def test_rows_pack_into_sequences_and_one_source_at_most(world: World, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    text = tmp_path / "text.jsonl"
    text.write_text("".join(json.dumps({"text": s}) + "\n" for s in sentences(200)))
    packed = pack_rows(str(text), world.teacher_dir, 4)
    tok = AutoTokenizer.from_pretrained(world.teacher_dir)
    assert packed.shape == (4, 256) and packed[0, :3].tolist() == tok(sentences(1)[0])["input_ids"][:3]
    chats = pack_rows(str(chat_file(tmp_path / "chat.jsonl", 2)), world.teacher_dir, 4)
    assert chats.shape[0] == 1 and tok.convert_tokens_to_ids("<|assistant|>") in chats[0].tolist()
    with pytest.raises(ValidationError, match="at most one of calibrationDatasetRef and calibrationUri"):
        Quantization.model_validate({"calibrationDatasetRef": {"name": "d"}, "calibrationUri": "x.jsonl"})
