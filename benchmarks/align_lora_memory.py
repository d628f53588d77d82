"""Peak RSS of LoRA-SFT against full SFT on the same model and data, each in its own process.

A ~100M-parameter Llama (hidden 1024, 8 layers; big enough that weights, gradients and AdamW state
outweigh the ~1 GB the Python ML stack itself occupies) trains for a few steps through the align
stage, once with every weight trainable (AdamW keeps two fp32 moments per weight, plus gradients)
and once with LoRA r=16 on the attention and MLP projections. Each run is a fresh subprocess whose
own `ru_maxrss` is printed as it exits, so the figures are the processes' true peaks.
Goal: LoRA peak RSS ≤ 0.6× full.

Where the peaks come from (the runs use the default bf16 precision): full SFT peaks in training (fp32
weights, gradients, two AdamW moments, autocast's cached bf16 weight copies). LoRA trains on a bf16
copy of the frozen base (no fp32 weights, no per-matmul bf16 casts kept for backward); its peak is
either loading (the fp32 file's pages plus the bf16 copy) or the merged export, which reloads the
fp32 base after the trainer's memory is released and merges the adapter into it.

    ~/.cache/lmforge/venv/bin/python benchmarks/align_lora_memory.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import os, sys
sys.path[:0] = [{tests!r}, {root!r}]
from lmforge.api.contract import StageName, StageSpec
from lmforge.trainer.align.stage import run
from lmforge.trainer.context import StageContext
from lmforge.trainer.progress import ProgressReporter
spec = StageSpec.model_validate_json({spec!r})
run(StageContext.from_spec(spec, ProgressReporter(StageName.ALIGN, "bench", None, stream=open(os.devnull, "w"))))
import resource
print("PEAK_RSS_KIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_rss_mib(tmp: Path, model_dir: Path, adapter: dict[str, object], name: str) -> float:
    from lmforge.api.contract import StageName, StageSpec

    job = {
        "modelRef": {"uri": str(model_dir)},
        "method": "sft",
        "data": {"uri": str(tmp / "sft.jsonl"), "validationFraction": 0},
        "adapter": adapter,
        "training": {"maxSteps": 6, "microBatchSize": 8, "lr": 1e-4, "maxLength": 128},
        "checkpoint": {"everySteps": 1000},
    }
    spec = StageSpec(
        stage=StageName.ALIGN,
        store=str(tmp / "store"),
        output=f"runs/{name}",
        run_id=name,
        resource={"apiVersion": "lmforge.io/v1alpha1", "kind": "AlignmentJob", "metadata": {"name": name}, "spec": job},
    )
    code = CHILD.format(tests=str(ROOT / "tests"), root=str(ROOT), spec=spec.model_dump_json(by_alias=True))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LMFORGE_WORK_DIR": str(tmp / "work" / name)}
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True).stdout
    return int(next(line.split()[1] for line in out.splitlines() if line.startswith("PEAK_RSS_KIB"))) / 1024


def main() -> None:
    sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from support.tiny import make_model, make_tokenizer, sentences

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        tok = make_tokenizer(tmp / "tok", 512)
        model_dir = make_model(tmp / "base", hidden=1024, layers=8, heads=32, tokenizer_dir=tok)
        qs = sentences(200, seed=4)
        rows = [{"prompt": qs[i], "response": qs[i + 1]} for i in range(0, 200, 2)]
        (tmp / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(model_dir)
        n = cfg.vocab_size * cfg.hidden_size + cfg.num_hidden_layers * 12 * cfg.hidden_size**2
        print(f"model: ~{n / 1e6:.0f}M parameters (vocab {cfg.vocab_size})")
        full = peak_rss_mib(tmp, model_dir, {"type": "none"}, "full")
        print(f"full SFT peak RSS: {full:.0f} MiB")
        lora = peak_rss_mib(tmp, model_dir, {"type": "lora", "r": 16, "alpha": 32}, "lora")
        print(f"LoRA SFT peak RSS: {lora:.0f} MiB")
        print(f"ratio LoRA/full: {lora / full:.2f}x (goal <= 0.6x)")


if __name__ == "__main__":
    main()
