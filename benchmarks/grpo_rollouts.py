"""GRPO rollout tokens/s: vLLM's offline `LLM.generate` against transformers' `generate`, same model
and prompts: the two rollout engines of the GRPO/RLOO stage (`rollouts: vllm` / `generate`), measured
alone, without the training step around them (docs/alignment.md).

vLLM runs as trl colocates it: inside the benchmark's process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`,
one in-process worker), with vLLM's default compiled graphs (`--eager` turns them off), and with the
serve launcher's CPU rule for reserved cores (`lmforge/trainer/serve/cpu_site`): on <= 4 cores none
is held back from the model. Why: with vLLM's defaults on 2 cores (engine core and worker as two more
processes, one of the two cores reserved for the scheduler) it ran a flat ~220 tok/s, 0.05x of
`generate`; the worker also spins a core for about a second after each batch, which slowed a
`generate` run straight after it.

Both sample GRPO-shaped batches (P prompts x G completions, temperature 1) from the same tiny Llama
(by default hidden 256, 4 layers, head_dim 32, fp32), in two shapes, each round:
- `varied`: completion i ends (EOS) after L_i tokens, L_i drawn once (seed 0) uniformly from
  [N/8, N], as GRPO's completions end at different lengths. `generate` is made to emit EOS exactly
  there (a logits processor) and, like trl's `generate` path, keeps stepping the finished rows until
  the longest ends; vLLM gets each completion as a request of L_i tokens. Both count sum(L_i) tokens.
- `equal`: every completion N tokens, EOS ignored: no padding to waste, the lower bound of vLLM's
  gain (continuous batching has nothing to do).
vLLM samples with the stage's settings: each token's log-probability (`logprobs=0`, which trl's GRPO
asks for its importance-sampling correction) and no text (`group_rl.VLLM_SAMPLING`: trl decodes the
ids itself). Rounds alternate baseline / vLLM; the goal (>= 3x) is judged on the slowest round of the `varied`
shape, and the `equal` figures are printed beside it. vLLM's engine start (with its compilation) is
reported apart: paid once per run when colocated.

    flock /tmp/lmforge-bench.lock nice -n 5 python benchmarks/grpo_rollouts.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import random
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
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

from support.tiny import make_model  # noqa: E402

import lmforge.trainer.serve.cpu_site.sitecustomize  # noqa: E402, F401  (the launcher's CPU rules, applied here)

WORDS = ["cat", "dog", "bird", "fish", "tree", "river", "stone", "cloud"]
MAX_MODEL_LEN = 256
"""make_model's position limit."""


def prompts(tok: Any, n: int) -> list[str]:
    """Chat-rendered sum prompts, as the GRPO stage renders them."""
    out = []
    for i in range(n):
        text = f"{WORDS[i % len(WORDS)]} {WORDS[(3 * i) % len(WORDS)]} : {i % 5} + {1 + i % 4} ="
        out.append(
            tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
        )
    return out


def lengths(count: int, new_tokens: int, varied: bool) -> list[int]:
    """Each completion's length: all `new_tokens`, or drawn once from [new_tokens/8, new_tokens]."""
    if not varied:
        return [new_tokens] * count
    rng = random.Random(0)
    return [rng.randint(max(1, new_tokens // 8), new_tokens) for _ in range(count)]


class EndAt:
    """A logits processor: row b ends with EOS after exactly `ends[b]` new tokens, never before."""

    def __init__(self, ends: list[int], prompt_len: int, eos: int, stops: list[int]) -> None:
        import torch

        self.ends = torch.tensor(ends)
        self.prompt_len, self.eos, self.stops = prompt_len, eos, stops

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        made = input_ids.shape[1] - self.prompt_len
        scores[:, self.stops] = float("-inf")
        last = (self.ends - 1) == made
        scores[last] = float("-inf")
        scores[last, self.eos] = 0.0
        return scores


def hf_round(model: Any, tok: Any, texts: list[str], group: int, ends: list[int]) -> float:
    """Tokens/s of one batch: every prompt repeated `group` times, as trl's generate path does."""
    import torch
    from transformers import LogitsProcessorList

    batch = [t for t in texts for _ in range(group)]
    enc = tok(batch, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    prompt_len = enc["input_ids"].shape[1]
    eos = model.generation_config.eos_token_id
    stops = [i for i in (eos if isinstance(eos, list) else [eos]) if i is not None]
    varied = len(set(ends)) > 1
    extra: dict[str, Any] = (
        {"logits_processor": LogitsProcessorList([EndAt(ends, prompt_len, tok.eos_token_id, stops)])}
        if varied
        else {"min_new_tokens": ends[0]}
    )
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            **enc,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max(ends),
            pad_token_id=tok.pad_token_id,
            **extra,
        )
    took = time.perf_counter() - start
    made = out[:, prompt_len:]
    assert made.shape[1] == max(ends), made.shape
    if varied:
        got = [int((row == tok.eos_token_id).nonzero()[0]) + 1 for row in made]
        assert got == ends, "generate did not end each completion where asked"
    return sum(ends) / took


def vllm_round(llm: Any, texts: list[str], group: int, ends: list[int]) -> float:
    from vllm import SamplingParams

    from lmforge.trainer.align.group_rl import VLLM_SAMPLING

    stage = {"logprobs": 0, **VLLM_SAMPLING}  # what the GRPO stage asks of the engine

    if len(set(ends)) == 1:  # one request per prompt, `group` samples of it (trl's colocate call)
        reqs: list[str] = texts
        params: Any = SamplingParams(
            n=group, temperature=1.0, top_k=0, top_p=1.0, max_tokens=ends[0], ignore_eos=True, seed=0, **stage
        )
    else:  # one request per completion, each with its own length
        reqs = [t for t in texts for _ in range(group)]
        params = [
            SamplingParams(n=1, temperature=1.0, top_k=0, top_p=1.0, max_tokens=n, ignore_eos=True, seed=i, **stage)
            for i, n in enumerate(ends)
        ]
    start = time.perf_counter()
    outs = llm.generate(reqs, params, use_tqdm=False)
    took = time.perf_counter() - start
    tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
    assert tokens == sum(ends), tokens
    return tokens / took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=192, help="N: the longest completion")
    parser.add_argument("--hidden", type=int, default=256, help="model width (head_dim stays 32)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--eager", action="store_true", help="vLLM without its compiled graphs")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(THREADS)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_model(Path(tmp) / "base", hidden=args.hidden, layers=args.layers, heads=args.hidden // 32)
        tok = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        texts = prompts(tok, args.prompts)
        longest_prompt = max(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)
        if longest_prompt + args.new_tokens > MAX_MODEL_LEN:
            parser.error(
                f"--new-tokens: prompts of up to {longest_prompt} tokens leave {MAX_MODEL_LEN - longest_prompt}"
            )
        from vllm import LLM

        start = time.perf_counter()
        llm = LLM(
            model=str(model_dir),
            dtype="float32",
            max_model_len=MAX_MODEL_LEN,
            enforce_eager=args.eager,
            distributed_executor_backend="uni",
            seed=0,
        )
        engine_s = time.perf_counter() - start
        count = args.prompts * args.group
        shapes = {"varied": lengths(count, args.new_tokens, True), "equal": lengths(count, args.new_tokens, False)}
        varied = shapes["varied"]
        print(
            f"model: hidden {args.hidden}, {args.layers} layers, "
            f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, fp32; threads: torch {torch.get_num_threads()}, "
            f"OMP_NUM_THREADS {os.environ['OMP_NUM_THREADS']}, cores {len(os.sched_getaffinity(0))}, "
            f"VLLM_CPU_NUM_OF_RESERVED_CPU {os.environ.get('VLLM_CPU_NUM_OF_RESERVED_CPU', 'unset (vLLM: 1)')}; "
            f"vLLM {'eager' if args.eager else 'compiled'}, in-process; "
            f"batch {args.prompts} prompts x {args.group} completions; varied lengths {min(varied)}-{max(varied)} "
            f"(mean {statistics.mean(varied):.0f}: generate steps {1 - sum(varied) / (count * max(varied)):.0%} "
            f"of its rows past their end), equal {args.new_tokens}; "
            f"vLLM engine start {engine_s:.1f} s (not in the figures)",
            flush=True,
        )
        for ends in shapes.values():  # warm both on the measured shapes
            hf_round(model, tok, texts, args.group, ends)
            vllm_round(llm, texts, args.group, ends)
        ratios: dict[str, list[float]] = {name: [] for name in shapes}
        for i in range(args.rounds):
            for name, ends in shapes.items():
                hf = hf_round(model, tok, texts, args.group, ends)
                vl = vllm_round(llm, texts, args.group, ends)
                ratios[name].append(vl / hf)
                print(
                    f"round {i + 1} {name}: HF generate {hf:.0f} tok/s, vLLM LLM.generate {vl:.0f} tok/s, "
                    f"ratio {vl / hf:.2f}x",
                    flush=True,
                )
        for name, got in ratios.items():
            spread = (max(got) - min(got)) / statistics.median(got)
            verdict = f"goal >= 3x on the slowest round: {'met' if min(got) >= 3 else 'NOT met'}"
            print(
                f"ratio vLLM/generate, {name} lengths: slowest round {min(got):.2f}x, median "
                f"{statistics.median(got):.2f}x, spread {spread:.0%}"
                + (f" ({verdict})" if name == "varied" else " (no padding to save: the lower bound)")
            )


if __name__ == "__main__":
    main()
