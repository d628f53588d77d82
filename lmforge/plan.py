"""`lmforge plan`: size a pretraining run before spending GPUs on it.

For an architecture and a token budget it prints the parameter count, training FLOPs, the
Chinchilla-optimal token count (≈ 20 tokens per parameter, Hoffmann et al. 2022), memory per GPU
under each ZeRO stage, and the wall-clock time on N GPUs at an assumed MFU. The architecture comes
from flags or from a PretrainJob manifest (`-f`), whose Dataset in the same file supplies the
vocabulary and sequence length. Only lmforge.api and the standard library are used, so this runs
where the ML stack is not installed.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from lmforge.api.dataset import Dataset
from lmforge.api.pretrain import Architecture, PretrainJob
from lmforge.api.training import PEAK_BF16_FLOPS, Precision, activation_bytes, train_state_bytes

CHINCHILLA_TOKENS_PER_PARAM = 20.0
_SUFFIX = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}


def parse_count(text: str) -> int:
    """`300M`, `1.5B`, `2e9`, `1T` → an integer."""
    m = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([kmbgt]?)\s*", text.lower())
    if m is None:
        raise argparse.ArgumentTypeError(f"not a count: {text!r} (e.g. 300M, 1.5B, 2e9)")
    return int(float(m.group(1)) * _SUFFIX[m.group(2)])


@dataclass
class Plan:
    parameters: int
    tokens: int
    chinchilla_tokens: int
    flops_per_token: float
    total_flops: float
    memory_gib_per_gpu: dict[str, float]
    gpus: int
    gpu: str
    mfu: float
    hours: float


def make_plan(
    arch: Architecture,
    *,
    vocab: int,
    seq: int,
    tokens: int,
    gpus: int,
    gpu: str,
    mfu: float,
    micro_batch: int,
    precision: Precision,
    checkpointing: bool,
) -> Plan:
    params = arch.parameter_count(vocab)
    per_token = arch.flops_per_token(vocab, seq)
    total = per_token * tokens
    acts = activation_bytes(
        layers=arch.num_layers,
        hidden=arch.hidden_size,
        seq_length=seq,
        micro_batch=micro_batch,
        checkpointing=checkpointing,
    )
    memory = {
        f"zero{z}": round((train_state_bytes(params, zero_stage=z, world=gpus, precision=precision) + acts) / 2**30, 2)
        for z in range(4)
    }
    peak = PEAK_BF16_FLOPS[gpu] / (2 if precision is Precision.FP32 else 1)
    hours = total / (gpus * peak * mfu) / 3600
    return Plan(
        params, tokens, int(CHINCHILLA_TOKENS_PER_PARAM * params), per_token, total, memory, gpus, gpu, mfu, hours
    )


def _human(n: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.3g}"


def render(plan: Plan) -> str:
    lines = [
        f"parameters            {_human(plan.parameters)} ({plan.parameters:,})",
        f"tokens                {_human(plan.tokens)}",
        f"chinchilla-optimal    {_human(plan.chinchilla_tokens)} tokens "
        f"({plan.tokens / max(plan.chinchilla_tokens, 1):.2f}× of it)",
        f"FLOPs per token       {plan.flops_per_token:.3e}",
        f"training FLOPs        {plan.total_flops:.3e}",
        "memory per GPU        "
        + ", ".join(f"{k}: {v:.2f} GiB" for k, v in plan.memory_gib_per_gpu.items())
        + "  (weights+grads+AdamW+activations)",
        f"time on {plan.gpus}× {plan.gpu}    {plan.hours:.2f} h at {plan.mfu:.0%} MFU",
    ]
    return "\n".join(lines)


def _from_manifest(path: Path) -> tuple[Architecture, dict[str, Any]]:
    """Architecture and defaults (vocab, seq, tokens, micro-batch, precision) from a manifest file."""
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    jobs = [PretrainJob.model_validate(d) for d in docs if d.get("kind") == "PretrainJob"]
    if not jobs:
        raise SystemExit(f"{path}: no PretrainJob in the file")
    job = jobs[0].spec
    found: dict[str, Any] = {
        "micro_batch": job.training.micro_batch_size,
        "precision": job.training.precision,
        "checkpointing": job.training.gradient_checkpointing,
    }
    for d in docs:
        if d.get("kind") == "Dataset" and d.get("metadata", {}).get("name") == job.dataset_ref.name:
            ds = Dataset.model_validate(d).spec
            found.update(vocab=ds.tokenizer.vocab_size, seq=ds.seq_length)
    seq = found.get("seq", job.model.max_position_embeddings or 2048)
    # One process per GPU, one per pod on the CPU: the world size ZeRO partitions over and the
    # global batch is multiplied by, whichever of `tokens` or `maxSteps` sets the duration.
    world = job.topology.nodes * max(job.topology.gpus_per_node, 1)
    found["gpus"] = world
    if job.training.tokens is not None:
        found["tokens"] = job.training.tokens
    elif job.training.max_steps is not None:
        found["tokens"] = (
            job.training.max_steps
            * job.training.micro_batch_size
            * job.training.gradient_accumulation_steps
            * world
            * seq
        )
    found["seq"] = seq
    return job.model, found


def cmd_plan(args: argparse.Namespace) -> int:
    """Print (or emit as JSON) the sizing of one pretraining run."""
    found: dict[str, Any] = {}
    if args.file:
        arch, found = _from_manifest(Path(args.file))
    else:
        arch = Architecture(
            num_layers=args.layers,
            hidden_size=args.hidden,
            num_heads=args.heads,
            num_kv_heads=args.kv_heads,
            head_dim=args.head_dim,
            intermediate_size=args.intermediate,
            tie_embeddings=args.tie_embeddings,
        )

    def pick(name: str, default: Any) -> Any:
        value = getattr(args, name)
        return value if value is not None else found.get(name, default)

    seq = pick("seq", 2048)
    plan = make_plan(
        arch,
        vocab=pick("vocab", 32000),
        seq=seq,
        tokens=pick("tokens", 0) or int(CHINCHILLA_TOKENS_PER_PARAM * arch.parameter_count(pick("vocab", 32000))),
        gpus=pick("gpus", 8),
        gpu=args.gpu,
        mfu=args.mfu,
        micro_batch=pick("micro_batch", 8),
        precision=Precision(pick("precision", Precision.BF16)),
        checkpointing=bool(pick("checkpointing", False)),
    )
    print(json.dumps(asdict(plan), indent=2) if args.json else render(plan))
    return 0


def register(sub: Any) -> None:
    """Add `lmforge plan` to the CLI's subcommands."""
    p = sub.add_parser(
        "plan",
        help="size a pretraining run: parameters, FLOPs, memory, time",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-f", "--file", help="a manifest with a PretrainJob (and optionally its Dataset)")
    p.add_argument("--layers", type=int, default=12, help="transformer blocks (default: %(default)s)")
    p.add_argument("--hidden", type=int, default=768, help="model width (default: %(default)s)")
    p.add_argument("--heads", type=int, default=12, help="attention heads (default: %(default)s)")
    p.add_argument("--kv-heads", type=int, default=None, help="key/value heads (default: heads)")
    p.add_argument("--head-dim", type=int, default=None, help="per-head width (default: hidden/heads)")
    p.add_argument("--intermediate", type=int, default=None, help="SwiGLU width (default: ≈8/3·hidden)")
    p.add_argument("--tie-embeddings", action="store_true", help="share input and output embeddings")
    p.add_argument("--vocab", type=int, default=None, help="vocabulary size (default: 32000)")
    p.add_argument("--seq", type=int, default=None, help="sequence length (default: 2048)")
    p.add_argument(
        "--tokens", type=parse_count, default=None, help="token budget, e.g. 10B (default: Chinchilla-optimal)"
    )
    p.add_argument("--micro-batch", type=int, default=None, help="sequences per GPU per pass (default: 8)")
    p.add_argument("--precision", choices=[x.value for x in Precision], default=None, help="default: bf16")
    p.add_argument("--checkpointing", action="store_true", default=None, help="activation checkpointing")
    p.add_argument("--gpus", type=int, default=None, help="GPU count (default: 8)")
    p.add_argument("--gpu", choices=sorted(PEAK_BF16_FLOPS), default="h100", help="GPU type (default: %(default)s)")
    p.add_argument("--mfu", type=float, default=0.4, help="assumed utilisation (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_plan)
