"""INT8 release vs the unquantized model: size on disk and held-out perplexity (goal: size ≤ 0.55×,
perplexity increase ≤ 5%). Runs the real compress stage on a tiny trained Llama (head_dim 32);
the baseline is the same model unquantized, as published by its training stage (fp32 safetensors)."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO)]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    from trainer.compress.world import make_world

    from lmforge.trainer.artifacts import fetch

    root = Path(tempfile.mkdtemp(prefix="release-int8-"))
    os.environ["LMFORGE_WORK_DIR"] = str(root / "work")
    world = make_world(root / "world")
    for method in ("int8-weight", "w8a8"):
        arts, _ = world.compress(method, {"quantization": {"method": method}})
        rep = json.loads((fetch(arts["report"]) / "report.json").read_text())
        print(
            f"{method}: size {rep['size_before_bytes']} -> {rep['size_after_bytes']} bytes = {rep['ratio']:.3f}x "
            f"(goal <= 0.55x); perplexity {rep['perplexity_before']:.4f} -> {rep['perplexity_after']:.4f} = "
            f"{rep['perplexity_increase']:+.3%} (goal <= +5%); vLLM CPU: {rep['vllm_cpu']}"
        )


if __name__ == "__main__":
    main()
