"""INT4 releases vs the unquantized model: size on disk and held-out perplexity of GPTQ and AWQ (ours)
against round-to-nearest INT4 (the baseline), same model, group size and checkpoint format. Runs the real compress
stage on a tiny trained Llama (head_dim 32), and on the same model rewritten (exactly) to have outlier
input channels as real LLMs do, which is where plain rounding loses most. The stage's own report scores
the calibration rows; this scores validation rows the calibration never saw, the fair comparison, and
gives the KL divergence from the unquantized model too (this teacher sits at its grammar's entropy
floor, so perplexity moves little)."""

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
OUTLIER_CHANNELS, OUTLIER_GAIN = 4, 30.0
"""The second model: per layer, this many RMSNorm channels × gain and the Linear columns reading them
÷ gain, an exact rewrite that gives the tiny teacher the outlier input channels of real LLMs."""


def with_outlier_channels(src: Path, dst: Path) -> Path:
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in model.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            for norm, readers in (
                (layer.input_layernorm, (attn.q_proj, attn.k_proj, attn.v_proj)),
                (layer.post_attention_layernorm, (mlp.gate_proj, mlp.up_proj)),
            ):
                ch = torch.randperm(norm.weight.shape[0], generator=gen)[:OUTLIER_CHANNELS]
                norm.weight[ch] *= OUTLIER_GAIN
                for lin in readers:
                    lin.weight[:, ch] /= OUTLIER_GAIN
    shutil.copytree(src, dst)
    model.save_pretrained(dst, safe_serialization=True)
    return dst


def main() -> None:
    import torch
    from trainer.compress.world import make_world
    from transformers import AutoModelForCausalLM

    from lmforge.trainer.artifacts import fetch
    from lmforge.trainer.compress.report import nll_per_token
    from lmforge.trainer.compress.stage import run
    from lmforge.trainer.context import StageContext
    from lmforge.trainer.shards import Shards

    root = Path(tempfile.mkdtemp(prefix="release-int4-"))
    os.environ["LMFORGE_WORK_DIR"] = str(root / "work")
    world = make_world(root / "world")
    unseen = Shards(world.shards_dir).validation.head()[CALIBRATION_ROWS:]
    outliers = with_outlier_channels(world.teacher_dir, root / "outliers")

    def score(model_dir: Path) -> tuple[float, torch.Tensor]:
        """(perplexity on the unseen rows, their log-probs (N, L, V))."""
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.from_numpy(unseen)).logits, -1)
        return math.exp(nll_per_token(model, unseen)), logp

    for label, model_dir in (("tiny teacher", world.teacher_dir), ("with outlier channels", outliers)):
        base, ref = score(model_dir)
        print(f"{label} (fp32): perplexity on {len(unseen)} unseen rows {base:.4f}")
        for group in (32, 128):
            figures = {}
            for method in ("int4", "int4-gptq", "int4-awq"):
                name = f"{method}-g{group}-{'o' if model_dir == outliers else 't'}"
                spec = world.compress_spec(
                    name,
                    {
                        "quantization": {
                            "method": method,
                            "groupSize": group,
                            "calibrationSamples": CALIBRATION_ROWS,
                            "calibrationDatasetRef": {"name": "tiny"},
                            "maxPerplexityIncrease": 10,
                        }
                    },
                )
                spec.resource["spec"]["modelRef"] = {"uri": str(model_dir)}
                arts = run(StageContext.from_spec(spec)).artifacts
                rep = json.loads((fetch(arts["report"]) / "report.json").read_text())
                figures[method] = after = (out := score(fetch(arts["model"])))[0]
                kl = float((ref.exp() * (ref - out[1])).sum(-1).mean())  # nats/token from the unquantized model
                print(
                    f"  g{group} {method:9s}: size {rep['size_before_bytes']} -> {rep['size_after_bytes']} bytes = "
                    f"{rep['ratio']:.3f}x; on unseen rows perplexity {after:.4f} = {after / base:.5f}x "
                    f"unquantized ({after / base - 1:+.3%}), KL {kl:.2e} nats/token"
                )
            rtn = figures["int4"] / base - 1
            for method in ("int4-gptq", "int4-awq"):
                ours = figures[method] / base - 1
                print(
                    f"  g{group}: {method} perplexity increase {ours:+.3%} vs round-to-nearest {rtn:+.3%}"
                    + (f" = {ours / rtn:.3f}x the baseline's increase" if rtn > 0 else "")
                )


if __name__ == "__main__":
    main()
