"""Measure which processes × threads layout trains fastest on this machine's CPU cores.

`python -m lmforge.trainer.pretrain.layout --cores N [--out FILE] [--compiled]` times a data-parallel
training step (forward, backward in bf16 — fp32 where the CPU lacks native bf16, as the stage then
trains —, gradients all-reduced over gloo as one flat buffer, the way DeepSpeed reduces them) of a
small Llama (hidden 256, 4 layers, seq 256, micro-batch 8: the benchmark model) for every layout
p × (N / p) with p dividing N, each as p real processes running side by side, and prints (and writes
to FILE) JSON: `{"cores", "processes", "threads", "tokens_per_second": {"PxT": tok/s}}`, with
`--compiled` also `"compiled_tokens_per_second": {"PxT": tok/s}`. The embedded runner runs it once per machine and uses
the winner when a PretrainJob leaves `compute.processes` and `compute.threads` unset: on a 2-vCPU Zen 4
it measured 1 × 2 ahead of 2 × 1, but that depends on the cores, caches and memory bandwidth, so it is
measured, not assumed.

With `training.compile: true` (or `auto` on a run long enough for it to compile) the runner asks for
and picks from the compiled rates, because compiling changes the step's balance: it fuses the
elementwise, memory-bound parts (norms, activations, residual adds), which weigh differently with one
wide process than with several narrow ones. Compiling every candidate would add a compile (tens of
seconds on a small CPU, and p processes compile side by side) per divisor of the core count, so only
the `COMPILED_CANDIDATES` fastest eager layouts are measured compiled: a layout far behind eagerly is
assumed not to overtake both of them through fusion alone. On 2 cores that is every layout; on 16
(5 layouts) the probe compiles twice instead of five times.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from typing import Any

from lmforge.trainer.precision import KEEP_ENV, cpu_has_native_bf16

HIDDEN, LAYERS, HEADS, VOCAB, SEQ, MICRO = 256, 4, 8, 4096, 256, 8
MODULE = "lmforge.trainer.pretrain.layout"
COMPILED_CANDIDATES = 2
"""The fastest eager layouts that are also measured with `torch.compile`."""


def candidates(cores: int) -> list[tuple[int, int]]:
    """(processes, threads per process) using all `cores`: every p dividing `cores`."""
    return [(p, cores // p) for p in range(1, cores + 1) if cores % p == 0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(seconds: float, compile_: bool) -> None:
    """One rank: time data-parallel steps; rank 0 prints `TOKENS_PER_SECOND <all ranks' tokens/s>`."""
    import torch
    import torch.distributed as dist
    from transformers import LlamaConfig, LlamaForCausalLM

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=3 * HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        head_dim=HIDDEN // HEADS,
        max_position_embeddings=SEQ,
        tie_word_embeddings=True,
        use_cache=False,
    )
    model: Any = LlamaForCausalLM(config)
    model.set_attn_implementation("eager")  # what the stage trains with on CPU at this length (speed.py)
    # In the precision the stage would train in: fp32 on a CPU without native bf16 (precision.py).
    model = model.to(
        torch.bfloat16 if cpu_has_native_bf16() or os.environ.get(KEEP_ENV) == "emulated" else torch.float32
    )
    if compile_:
        model.compile()  # as the stage's engine.compile(): the first warm-up step compiles
    params = [p for p in model.parameters() if p.requires_grad]
    x = torch.randint(0, VOCAB, (MICRO, SEQ))

    def step() -> None:
        model(input_ids=x, labels=x).loss.backward()
        if world > 1:
            flat = torch.cat([p.grad.reshape(-1) for p in params if p.grad is not None])  # (params,)
            dist.all_reduce(flat)
        for p in params:
            p.grad = None

    for _ in range(2):  # warm-up: allocator, kernels, gloo connections, compilation
        step()
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or n < 3:
        step()
        n += 1
    rate = torch.tensor([n * MICRO * SEQ / elapsed], dtype=torch.float64)  # this rank's tokens/s
    if world > 1:
        dist.all_reduce(rate)
        dist.destroy_process_group()
    if rank == 0:
        print(f"TOKENS_PER_SECOND {float(rate):.1f}", flush=True)


def measure(
    processes: int, threads: int, seconds: float, python: str = sys.executable, compile_: bool = False
) -> float:
    """Tokens/s of `processes` side-by-side ranks of `threads` threads each (summed over ranks)."""
    port = str(_free_port())
    procs = []
    for rank in range(processes):
        env = {
            **os.environ,
            "RANK": str(rank),
            "WORLD_SIZE": str(processes),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "OMP_NUM_THREADS": str(threads),
            "HF_HUB_OFFLINE": "1",
        }
        procs.append(
            subprocess.Popen(
                [python, "-m", MODULE, "--worker", "--seconds", str(seconds), *(["--compile"] if compile_ else [])],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (_out, err) in zip(procs, outputs, strict=True):
        if p.returncode != 0:
            raise RuntimeError(f"layout probe {processes}x{threads} failed: {err.strip()[-500:]}")
    for line in outputs[0][0].splitlines():
        if line.startswith("TOKENS_PER_SECOND"):
            return float(line.split()[1])
    raise RuntimeError(f"layout probe {processes}x{threads} printed no result")


def best_layout(
    cores: int, seconds: float = 3.0, python: str = sys.executable, compiled_too: bool = False
) -> dict[str, object]:
    """Measure every candidate layout of `cores` eagerly, with `compiled_too` the `COMPILED_CANDIDATES`
    fastest also compiled, and name the fastest eager one."""
    rates = {f"{p}x{t}": measure(p, t, seconds, python) for p, t in candidates(cores)}
    best = max(rates, key=lambda k: rates[k])
    processes, threads = (int(v) for v in best.split("x"))
    result = {"cores": cores, "processes": processes, "threads": threads, "tokens_per_second": rates}
    if not compiled_too:
        return result
    top = sorted(rates, key=lambda k: -rates[k])[:COMPILED_CANDIDATES]
    compiled = {}
    for key in top:
        processes, threads = (int(v) for v in key.split("x"))
        compiled[key] = measure(processes, threads, seconds, python, compile_=True)
    return {**result, "compiled_tokens_per_second": compiled}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per layout, after warm-up")
    parser.add_argument("--out", help="also write the JSON here (atomically)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--compiled", action="store_true", help="also time the fastest layouts compiled")
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args.seconds, args.compile)
        return
    result = json.dumps(best_layout(args.cores, args.seconds, compiled_too=args.compiled))
    if args.out:
        tmp = f"{args.out}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(result)
        os.replace(tmp, args.out)
    print(result, flush=True)


if __name__ == "__main__":
    main()
