"""SFT: assistant-only loss that actually falls; LoRA adapters that save, merge and reload."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from support.tiny import assert_stops_at_turn_end

from lmforge.store import open_store, read_manifest
from lmforge.trainer.checkpoints import CheckpointLog
from lmforge.trainer.errors import InvalidInput

from .conftest import RunStage, records, sft_rows, write_jsonl

pytestmark = pytest.mark.ml

TRAINING = {"maxSteps": 30, "microBatchSize": 8, "lr": 3e-3, "maxLength": 64, "precision": "fp32"}


def assistant_loss(model_dir: Path, rows: list[dict[str, Any]]) -> float:
    """Mean cross-entropy on assistant tokens of `rows` under the model at `model_dir`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmforge.trainer.align.data import Example
    from lmforge.trainer.align.sft import encode
    from lmforge.trainer.chat import DEFAULT_CHAT_TEMPLATE

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    enc = encode([Example(r["messages"]) for r in rows], tok, DEFAULT_CHAT_TEMPLATE, 64, True)
    losses = []
    with torch.no_grad():
        for row in enc.rows:
            out = model(input_ids=torch.tensor([row["input_ids"]]), labels=torch.tensor([row["labels"]]))
            losses.append(float(out.loss))
    return sum(losses) / len(losses)


def test_prompt_tokens_carry_no_loss(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    from lmforge.trainer.align.data import Example
    from lmforge.trainer.align.sft import IGNORE, encode
    from lmforge.trainer.chat import DEFAULT_CHAT_TEMPLATE

    tok = AutoTokenizer.from_pretrained(tiny_model)
    row = sft_rows(1)[0]
    enc = encode([Example(row["messages"])], tok, DEFAULT_CHAT_TEMPLATE, 64, True)
    ids, labels = enc.rows[0]["input_ids"], enc.rows[0]["labels"]
    prompt_len = len(
        tok(
            tok.apply_chat_template(row["messages"][:2], tokenize=False, add_generation_prompt=True),
            add_special_tokens=False,
        )["input_ids"]
    )
    assert labels[:prompt_len] == [IGNORE] * prompt_len
    assert labels[prompt_len:] == ids[prompt_len:] and len(ids) > prompt_len
    # a row whose answer lies entirely past maxLength is counted, not silently lost
    short = encode([Example(row["messages"])], tok, DEFAULT_CHAT_TEMPLATE, prompt_len, True)
    assert short.rows == [] and short.dropped == 1


def test_full_sft_lowers_assistant_loss(run_stage: RunStage, tiny_model: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "data" / "sft.jsonl", sft_rows(96))
    ctx, outcome = run_stage(
        {
            "modelRef": {"uri": str(tiny_model)},
            "method": "sft",
            "data": {"uri": "sft.jsonl"},
            "training": TRAINING,
            "checkpoint": {"everySteps": 10},
        },
        base_dir=data.parent,
    )
    model_dir = Path(outcome.artifacts["model"].removeprefix("file://"))
    held = sft_rows(16, seed=99)
    before, after = assistant_loss(tiny_model, held), assistant_loss(model_dir, held)
    assert after < before - 1.0, (before, after)
    # model card and manifest carry lineage, method and metrics; the tokenizer keeps the template
    manifest = read_manifest(open_store(str(tmp_path / "store")), "runs/job/model")
    assert manifest is not None and manifest.metadata["method"] == "sft"
    assert manifest.metadata["lineage"][-1] == "AlignmentJob/job"
    assert manifest.metadata["metrics"]["loss"] < manifest.metadata["metrics"]["first_loss"]
    card = (model_dir / "README.md").read_text()
    assert str(tiny_model) in card and "sft.jsonl" in card and '"lr": 0.003' in card
    from transformers import AutoTokenizer

    assert "<|assistant|>" in AutoTokenizer.from_pretrained(model_dir).chat_template
    assert_stops_at_turn_end(model_dir)
    steps = [r.step for r in records(ctx) if r.total == 30]
    assert steps[-1] == 30 and steps == sorted(steps)
    assert (CheckpointLog(ctx.output, 1).pointer() or {}).get("tag") == "step-30"


def test_lora_adapter_saves_merges_and_reloads(run_stage: RunStage, tiny_model: Path, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(32))
    adapter = {"type": "lora", "r": 4, "alpha": 8, "targetModules": ["q_proj", "v_proj"], "output": "adapter"}
    _, outcome = run_stage(
        {
            "modelRef": {"uri": str(tiny_model)},
            "method": "sft",
            "data": {"uri": str(data)},
            "adapter": adapter,
            "training": {**TRAINING, "maxSteps": 8},
        }
    )
    assert set(outcome.artifacts) == {"adapter"}
    adir = Path(outcome.artifacts["adapter"].removeprefix("file://"))
    assert json.loads((adir / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_model)
    base = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    x = torch.tensor([[5, 6, 7, 8, 9]])
    base_logits = base(x).logits
    peft = PeftModel.from_pretrained(base, adir).eval()
    with torch.no_grad():
        adapted = peft(x).logits
        assert not torch.allclose(adapted, base_logits, atol=1e-5)  # the adapter learned something
        merged = peft.merge_and_unload()
        merged.save_pretrained(tmp_path / "merged")
        reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
        assert torch.allclose(reloaded(x).logits, adapted, atol=1e-4)


def test_lora_target_matching_nothing_is_an_error(run_stage: RunStage, tiny_model: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(8))
    with pytest.raises(InvalidInput, match=r"targetModules: qkv_proj match no module.*q_proj"):
        run_stage(
            {
                "modelRef": {"uri": str(tiny_model)},
                "method": "sft",
                "data": {"uri": str(data)},
                "adapter": {"type": "lora", "targetModules": ["q_proj", "qkv_proj"]},
            }
        )


def test_qlora_without_gpu_fails_clearly(run_stage: RunStage, tiny_model: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(8))
    with pytest.raises(InvalidInput, match="qlora needs a CUDA GPU"):
        run_stage(
            {
                "modelRef": {"uri": str(tiny_model)},
                "method": "sft",
                "data": {"uri": str(data)},
                "adapter": {"type": "qlora"},
                "topology": {"gpusPerNode": 1},
            }
        )


def test_packed_sft_trains(
    run_stage: RunStage, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lmforge.trainer.align import sft

    built: list[tuple[Any, Any]] = []

    def spy(spec: Any, model: Any, tokenizer: Any, train: Any, val: Any, args: dict[str, Any]) -> Any:
        trainer = build_trainer(spec, model, tokenizer, train, val, args)
        built.append((trainer, train))
        return trainer

    build_trainer = sft.build_trainer
    monkeypatch.setattr(sft, "build_trainer", spy)
    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(64))
    _, outcome = run_stage(
        {
            "modelRef": {"uri": str(tiny_model)},
            "method": "sft",
            "data": {"uri": str(data)},
            "sft": {"packing": True},
            "training": {**TRAINING, "maxSteps": 10, "maxLength": 256},
        }
    )
    metrics = outcome.metrics
    assert metrics["loss"] < metrics["first_loss"] and set(outcome.artifacts) == {"model"}
    # (The rows are ~40-60 tokens: at TRAINING's maxLength 64 no two fit together and packing is a no-op.)
    # Packing happened: the trainer saw fewer, longer rows, each several examples end to end, none
    # longer than maxLength, and no example's tokens lost.
    ((trainer, encoded),) = built
    packed = trainer.train_dataset
    lengths = [len(r["input_ids"]) for r in encoded.rows]
    assert "seq_lengths" in packed.column_names and len(packed) < len(encoded.rows)
    assert max(len(s) for s in packed["seq_lengths"]) >= 2
    assert all(len(ids) <= 256 for ids in packed["input_ids"])
    assert sorted(n for s in packed["seq_lengths"] for n in s) == sorted(lengths)


def test_bf16_lora_merges_into_the_stored_base(
    run_stage: RunStage, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under bf16 the frozen base trains as a bf16 copy; the merged model is still the fp32 base plus the
    update: untouched weights bit-identical to the base, adapted ones moved."""
    monkeypatch.setenv("LMFORGE_CPU_BF16", "emulated")  # bf16 even on a CPU without it (precision.py)
    import torch
    from transformers import AutoModelForCausalLM

    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(32))
    adapter = {"type": "lora", "r": 4, "alpha": 8, "targetModules": ["q_proj", "v_proj"]}
    _, outcome = run_stage(
        {
            "modelRef": {"uri": str(tiny_model)},
            "method": "sft",
            "data": {"uri": str(data)},
            "adapter": adapter,
            "training": {**TRAINING, "maxSteps": 8, "precision": "bf16"},
        }
    )
    assert outcome.metrics["loss"] < outcome.metrics["first_loss"]
    base = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    merged = AutoModelForCausalLM.from_pretrained(Path(outcome.artifacts["model"].removeprefix("file://"))).state_dict()
    assert all(t.dtype == torch.float32 for t in merged.values())
    for name, weight in base.items():
        if "q_proj" in name or "v_proj" in name:
            assert not torch.equal(merged[name], weight), name
        else:
            assert torch.equal(merged[name], weight), name
