"""Serving throughput of a released model: vLLM's CPU server, started by our launcher with its
defaults, under 8 and 32 concurrent /v1/completions requests vs Hugging Face `generate` on the same
model and prompts, batched the same way (goal ≥ 5× at both). Output tokens per second, 64 new tokens
per prompt, greedy, EOS ignored.

How the two sides are kept fair (the figures of earlier rounds, 2.3-5.1x, measured `generate` in
emulated bf16, unwarmed, in the process that had just trained the model, and came out 6-7x below a
fresh process's bf16 `generate`; that gap was not taken apart further):
- The server is stopped before `generate` runs, so nothing of it shares the cores (an idle server
  measured 0.01 cores busy, and `generate` beside it ran 5-6 % slower).
- Both run in the dtype the launcher serves in (`served_dtype`: float32 on a CPU without native
  bf16, where both sides' bf16 is emulated), and both are warmed up at each batch size first.
- Threads are pinned and printed: `generate` gets `--threads` torch threads (default: every core);
  vLLM keeps `VLLM_CPU_OMP_THREADS_BIND=auto` (`nobind` measured slower here)
  with the launcher's reservation rule (`cpu_site/sitecustomize.py`: no core held back on ≤ 4
  cores); the cores it bound and reserved are read from its log and printed.
- Rounds alternate which side goes first; each round is printed with its ratios, and the goal must
  hold on the slowest round.

`--hidden/--layers/--heads` serve a random Llama of that size instead of the tiny trained release,
to see how the ratio moves with the model.

Usage: python benchmarks/release_serving.py [--rounds 3] [--threads N] [--hidden H --layers L --heads A]
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import socket
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO)]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
NEW_TOKENS = 64
CONCURRENCY = (8, 32)
GOAL = 5.0


def prompts(n: int) -> list[str]:
    from support.tiny import sentences

    return [s.rsplit(" ", 3)[0] for s in sentences(n, seed=7)]


def torch_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "float16": torch.float16}.get(name, torch.bfloat16)  # vLLM's CPU auto: bf16


def hf_tokens_per_s(model_dir: Path, dtype: str) -> dict[int, float]:
    """`generate` tokens/s at each concurrency, after one untimed call at that batch size."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype(dtype)).eval()
    rates = {}
    for n in CONCURRENCY:
        enc = tok(prompts(n), return_tensors="pt", padding=True)
        for _warm_then_timed in range(2):
            start = time.perf_counter()
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
            seconds = time.perf_counter() - start
        rates[n] = (out.shape[1] - enc.input_ids.shape[1]) * n / seconds
    return rates


def vllm_batch(server: Any, batch: list[str]) -> float:
    def one(p: str) -> int:
        body = {"model": "m", "prompt": p, "max_tokens": NEW_TOKENS, "temperature": 0, "ignore_eos": True}
        out = server.request("/v1/completions", body, timeout=300)
        return int(out["usage"]["completion_tokens"])

    start = time.perf_counter()
    with ThreadPoolExecutor(len(batch)) as pool:
        tokens = sum(pool.map(one, batch))
    return tokens / (time.perf_counter() - start)


def vllm_tokens_per_s(model_dir: Path) -> tuple[dict[int, float], str, float]:
    """One server start: tokens/s at each concurrency (after one untimed batch of each), the cores
    vLLM bound, and its start-up seconds. The server is stopped before this returns."""
    from lmforge.api.release import Serving
    from lmforge.trainer.serve.launcher import VllmServer, server_command, server_env

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serving = Serving(served_model_name="m", max_model_len=128, port=port)
    server = VllmServer(server_command(model_dir, serving, "m", gpus=0), port, "m", env=server_env(serving, 0))
    server.log_tail = collections.deque(maxlen=5000)  # the binding lines come early in the log
    server.start()
    try:
        ready = server.wait_ready(600)
        rates = {}
        for n in CONCURRENCY:
            vllm_batch(server, prompts(n))
            rates[n] = vllm_batch(server, prompts(n))
    finally:
        server.stop()
    log = "\n".join(server.log_tail)
    bound = re.search(r"core ids=\[([^\]]*)\]", log)
    reserved = re.search(r"reserved_cpus=\[([^\]]*)\]", log)
    cores = f"OpenMP on cores [{bound.group(1) if bound else '?'}], reserved [{reserved.group(1) if reserved else '?'}]"
    return rates, cores, ready


def build_model(root: Path, args: argparse.Namespace) -> Path:
    if args.hidden:
        from support.tiny import make_model

        return make_model(root / "model", vocab_size=4096, hidden=args.hidden, layers=args.layers, heads=args.heads)
    from trainer.compress.world import make_world

    return make_world(root / "world").teacher_dir


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads for generate")
    ap.add_argument("--hidden", type=int, default=0, help="serve a random Llama of this width instead")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    args = ap.parse_args()

    import torch
    from safetensors.torch import load_file

    from lmforge.api.release import Serving
    from lmforge.trainer.serve.launcher import served_dtype

    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="release-serving-"))
    model_dir = build_model(root, args)
    params = sum(t.numel() for t in load_file(model_dir / "model.safetensors").values())
    dtype, note = served_dtype(model_dir, Serving(), gpus=0)
    print(
        f"model: {params / 1e6:.2f}M parameters; dtype both sides: {dtype} ({note or 'as asked'}); "
        f"generate: torch threads {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '<unset>')}; "
        f"vLLM: VLLM_CPU_OMP_THREADS_BIND={os.environ.get('VLLM_CPU_OMP_THREADS_BIND', 'auto')}; cpus={os.cpu_count()}",
        flush=True,
    )
    ratios: dict[int, list[float]] = {n: [] for n in CONCURRENCY}
    for rep in range(args.rounds):
        order = ("vllm", "hf") if rep % 2 == 0 else ("hf", "vllm")
        for side in order:
            if side == "vllm":
                ours, cores, ready = vllm_tokens_per_s(model_dir)
            else:
                base = hf_tokens_per_s(model_dir, dtype)
        parts = []
        for n in CONCURRENCY:
            ratios[n].append(ours[n] / base[n])
            parts.append(
                f"{n} concurrent: vLLM {ours[n]:.0f} tok/s, generate {base[n]:.0f} tok/s, {ratios[n][-1]:.2f}x"
            )
        print(
            f"round {rep} ({' then '.join(order)}; vLLM ready in {ready:.0f} s, {cores}): " + "; ".join(parts),
            flush=True,
        )
    for n in CONCURRENCY:
        low, high = min(ratios[n]), max(ratios[n])
        print(
            f"{n} concurrent: slowest round {low:.2f}x, best {high:.2f}x, spread {high - low:.2f}; "
            f"goal >= {GOAL:.0f}x on the slowest round: {'met' if low >= GOAL else 'NOT met'}"
        )


if __name__ == "__main__":
    main()
