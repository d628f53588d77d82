"""GRPO rollout tokens/s: vLLM's offline `LLM.generate` against transformers' `generate`, same model
and prompts. NOT through trl: trl 1.16's vLLM integration cannot run with vLLM's CPU build (colocate
fails syncing the trained weights into the engine; server mode refuses weight sync off CUDA; see
docs/alignment.md), so on this machine GRPO's rollouts use `generate` and this measures what vLLM
would buy where it runs.

Both sample the same GRPO-shaped batch (P prompts × G completions, temperature 1, a fixed number of
new tokens per completion: EOS ignored so both count the same tokens) from the same tiny Llama
(by default hidden 256, 4 layers, head_dim 32, fp32). Rounds alternate baseline / vLLM; each prints its
tokens/s; the ratio's goal (>= 3x) is met when the slowest round's ratio meets it. vLLM's engine
start is reported apart (paid once per run when colocated).

    flock /tmp/lmforge-bench.lock nice -n 5 python benchmarks/grpo_rollouts.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

THREADS = int(os.environ.get("LMFORGE_BENCH_THREADS", "2"))
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(THREADS)
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

from support.tiny import make_model  # noqa: E402

WORDS = ["cat", "dog", "bird", "fish", "tree", "river", "stone", "cloud"]


def prompts(tok: Any, n: int) -> list[str]:
    """Chat-rendered sum prompts, as the GRPO stage renders them."""
    out = []
    for i in range(n):
        text = f"{WORDS[i % len(WORDS)]} {WORDS[(3 * i) % len(WORDS)]} : {i % 5} + {1 + i % 4} ="
        out.append(
            tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
        )
    return out


def hf_round(model: Any, tok: Any, texts: list[str], group: int, new_tokens: int) -> float:
    """Tokens/s of one batch: every prompt repeated `group` times, as trl's generate path does."""
    import torch

    batch = [t for t in texts for _ in range(group)]
    enc = tok(batch, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            **enc,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            pad_token_id=tok.pad_token_id,
        )
    took = time.perf_counter() - start
    tokens = (out.shape[1] - enc["input_ids"].shape[1]) * out.shape[0]
    return tokens / took


def vllm_round(llm: Any, texts: list[str], group: int, new_tokens: int) -> float:
    from vllm import SamplingParams

    params = SamplingParams(
        n=group, temperature=1.0, top_k=0, top_p=1.0, max_tokens=new_tokens, ignore_eos=True, seed=0
    )
    start = time.perf_counter()
    outs = llm.generate(texts, params, use_tqdm=False)
    took = time.perf_counter() - start
    tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
    assert tokens == len(texts) * group * new_tokens, tokens
    return tokens / took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=256, help="model width (head_dim stays 32)")
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(THREADS)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_model(Path(tmp) / "base", hidden=args.hidden, layers=args.layers, heads=args.hidden // 32)
        tok = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        texts = prompts(tok, args.prompts)
        from vllm import LLM

        start = time.perf_counter()
        llm = LLM(model=str(model_dir), dtype="float32", max_model_len=256, enforce_eager=True, seed=0)
        engine_s = time.perf_counter() - start
        print(
            f"model: hidden {args.hidden}, {args.layers} layers; threads: torch {torch.get_num_threads()}, OMP_NUM_THREADS {os.environ['OMP_NUM_THREADS']}; "
            f"batch {args.prompts} prompts x {args.group} completions x {args.new_tokens} tokens; "
            f"vLLM engine start {engine_s:.1f} s (not in the figures)",
            flush=True,
        )
        hf_round(model, tok, texts[:2], 2, 4)  # warm both once
        vllm_round(llm, texts[:2], 2, 4)
        ratios = []
        for i in range(args.rounds):
            hf = hf_round(model, tok, texts, args.group, args.new_tokens)
            vl = vllm_round(llm, texts, args.group, args.new_tokens)
            ratios.append(vl / hf)
            print(
                f"round {i + 1}: HF generate {hf:.0f} tok/s, vLLM LLM.generate {vl:.0f} tok/s, ratio {vl / hf:.2f}x",
                flush=True,
            )
        spread = (max(ratios) - min(ratios)) / statistics.median(ratios)
        print(
            f"ratio vLLM/generate: slowest round {min(ratios):.2f}x, median {statistics.median(ratios):.2f}x, "
            f"spread {spread:.0%} (goal >= 3x on the slowest round: {'met' if min(ratios) >= 3 else 'NOT met'})"
        )


if __name__ == "__main__":
    main()
