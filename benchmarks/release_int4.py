"""INT4 releases vs the unquantized model: size on disk and held-out perplexity of GPTQ and AWQ (ours)
against round-to-nearest INT4 (the baseline), same model, group size and checkpoint format. Runs the real compress
stage on a tiny trained Llama (head_dim 32). The stage's own report scores the calibration rows; this
also scores validation rows the calibration never saw, which is the fair comparison."""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO)]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

CALIBRATION_ROWS = 24
"""Validation rows used for calibration; the rest are the unseen held-out rows."""


def main() -> None:
    import torch
    from trainer.compress.world import make_world
    from transformers import AutoModelForCausalLM

    from lmforge.trainer.artifacts import fetch
    from lmforge.trainer.compress.data import Shards
    from lmforge.trainer.compress.report import nll_per_token

    root = Path(tempfile.mkdtemp(prefix="release-int4-"))
    os.environ["LMFORGE_WORK_DIR"] = str(root / "work")
    world = make_world(root / "world")
    unseen = Shards(world.shards_dir).rows("validation")[CALIBRATION_ROWS:]

    def ppl(model_dir: Path) -> float:
        return math.exp(nll_per_token(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), unseen))

    base = ppl(world.teacher_dir)
    print(f"unquantized fp32: perplexity on {len(unseen)} unseen rows {base:.4f}")
    for group in (32, 128):
        figures = {}
        for method in ("int4", "int4-gptq", "int4-awq"):
            arts, _ = world.compress(f"{method}-g{group}", {"quantization": {
                "method": method, "groupSize": group, "calibrationSamples": CALIBRATION_ROWS,
                "maxPerplexityIncrease": 10}})
            rep = json.loads((fetch(arts["report"]) / "report.json").read_text())
            figures[method] = after = ppl(fetch(arts["model"]))
            print(f"  g{group} {method:9s}: size {rep['size_before_bytes']} -> {rep['size_after_bytes']} bytes = "
                  f"{rep['ratio']:.3f}x; perplexity on calibration rows {rep['perplexity_before']:.4f} -> "
                  f"{rep['perplexity_after']:.4f} ({rep['perplexity_increase']:+.2%}); on unseen rows "
                  f"{after:.4f} = {after / base:.4f}x unquantized ({after / base - 1:+.2%})")
        rtn = figures["int4"] / base - 1
        for method in ("int4-gptq", "int4-awq"):
            ours = figures[method] / base - 1
            print(f"  g{group}: {method} perplexity increase {ours:+.2%} vs round-to-nearest {rtn:+.2%}"
                  + (f" = {ours / rtn:.3f}x the baseline's increase" if rtn > 0 else ""))


if __name__ == "__main__":
    main()
