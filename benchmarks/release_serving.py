"""Serving throughput of a released tiny model: vLLM's CPU server (our launcher) under 8 and 32
concurrent /v1/completions requests vs Hugging Face `generate` on the same model and prompts, batched
the same way (goal ≥ 5×). Output tokens per second, 64 new tokens per prompt, greedy, EOS ignored."""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO)]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
NEW_TOKENS = 64


def prompts(n: int) -> list[str]:
    from support.tiny import sentences

    return [s.rsplit(" ", 3)[0] for s in sentences(n, seed=7)]


def hf_tokens_per_s(model_dir: Path, batch: list[str]) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).eval()
    enc = tok(batch, return_tensors="pt", padding=True)
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    return (out.shape[1] - enc.input_ids.shape[1]) * len(batch) / (time.perf_counter() - start)


def vllm_tokens_per_s(server: object, batch: list[str]) -> float:
    def one(p: str) -> int:
        out = server.request(
            "/v1/completions",
            {
                "model": "tiny",
                "prompt": p,
                "max_tokens": NEW_TOKENS,  # type: ignore[attr-defined]
                "temperature": 0,
                "ignore_eos": True,
            },
            timeout=300,
        )
        return int(out["usage"]["completion_tokens"])

    start = time.perf_counter()
    with ThreadPoolExecutor(len(batch)) as pool:
        tokens = sum(pool.map(one, batch))
    return tokens / (time.perf_counter() - start)


def main() -> None:
    from trainer.compress.world import make_world

    from lmforge.api.release import Serving
    from lmforge.trainer.serve.launcher import VllmServer, server_command

    root = Path(tempfile.mkdtemp(prefix="release-serving-"))
    world = make_world(root / "world")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serving = Serving(served_model_name="tiny", max_model_len=128, port=port, dtype="bfloat16")
    server = VllmServer(
        server_command(world.teacher_dir, serving, "tiny", gpus=0), port, "tiny", env={"VLLM_CPU_KVCACHE_SPACE": "1"}
    )
    server.start()
    try:
        print(f"vLLM ready in {server.wait_ready(600):.0f} s")
        vllm_tokens_per_s(server, prompts(8))  # warm-up
        for n in (8, 32):
            batch = prompts(n)
            ours = vllm_tokens_per_s(server, batch)
            base = hf_tokens_per_s(world.teacher_dir, batch)
            print(
                f"{n} concurrent: vLLM {ours:.0f} tok/s, HF generate (batch {n}, bf16) {base:.0f} tok/s, "
                f"ratio {ours / base:.1f}x (goal >= 5x)"
            )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
