"""The final model as a plain Hugging Face directory: safetensors, config, generation config, the
Dataset's tokenizer (with its chat template) and a README.md model card with the data lineage."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.store import MANIFEST_NAME
from lmforge.trainer.turns import write_generation_config

TRAINING_FILE = "lmforge_training.json"
"""The generated DeepSpeed config and the job's spec, kept beside the weights for reproducibility."""


@dataclass
class Lineage:
    """Where the weights came from, for the card and the artifact metadata."""

    dataset: str
    dataset_card_sha256: str | None
    init_from: str | None = None
    replay_dataset: str | None = None
    upstream: list[str] = field(default_factory=list)

    def entries(self) -> list[str]:
        """Ordered, de-duplicated lineage (ancestors first)."""
        items = [*self.upstream]
        if self.init_from:
            items.append(self.init_from)
        if self.replay_dataset:
            items.append(f"Dataset/{self.replay_dataset}")
        items.append(f"Dataset/{self.dataset}")
        return list(dict.fromkeys(items))


def state_dict_for_export(engine: Any, zero_stage: int) -> dict[str, Any] | None:
    """The full 16-bit state dict on rank 0 (collective under ZeRO-3, where weights are partitioned);
    None on other ranks."""
    import torch.distributed as dist

    if zero_stage == 3:
        sd: dict[str, Any] | None = engine._zero3_consolidated_16bit_state_dict()
        return sd
    if dist.is_initialized() and dist.get_rank() != 0:
        return None
    return {k: v.detach().cpu() for k, v in engine.module.state_dict().items()}


def save_hf(module: Any, state_dict: dict[str, Any], tokenizer_dir: Path, out: Path) -> None:
    """Weights + config + tokenizer files + a generation config that stops at EOS and at the end of
    a chat turn into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    module.config.use_cache = True
    module.save_pretrained(out, state_dict=state_dict, safe_serialization=True)
    for f in sorted(tokenizer_dir.iterdir()):
        if f.is_file() and f.name != MANIFEST_NAME:
            shutil.copy2(f, out / f.name)
    write_generation_config(out)


def _table(rows: dict[str, Any]) -> str:
    lines = ["| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows.items()]
    return "\n".join(lines)


def model_card(
    *,
    name: str,
    lineage: Lineage,
    architecture: dict[str, Any],
    params: int,
    hyper: dict[str, Any],
    metrics: dict[str, float],
) -> str:
    """README.md: what the model is, what it was trained on (with the Dataset card's hash) and how."""
    data = [
        f"- Dataset `{lineage.dataset}`"
        + (f" (card sha256 `{lineage.dataset_card_sha256}`)" if lineage.dataset_card_sha256 else "")
    ]
    if lineage.init_from:
        data.append(f"- Continued from `{lineage.init_from}`")
    if lineage.replay_dataset:
        data.append(f"- Replay of Dataset `{lineage.replay_dataset}`")
    if lineage.upstream:
        data.append("- Upstream lineage: " + " → ".join(f"`{x}`" for x in lineage.upstream))
    return (
        "\n\n".join(
            [
                "---\nlibrary_name: transformers\npipeline_tag: text-generation\ntags: [lmforge, llama]\n---",
                f"# {name}",
                f"A {params / 1e6:.2f}M-parameter Llama-style decoder pretrained by an LMForge `PretrainJob`. "
                "It loads with `transformers.AutoModelForCausalLM` and serves with vLLM.",
                "## Data lineage\n\n" + "\n".join(data),
                "## Architecture\n\n" + _table(architecture),
                "## Training\n\n" + _table(hyper),
                "## Final metrics\n\n" + _table({k: f"{v:.4g}" for k, v in sorted(metrics.items())}),
            ]
        )
        + "\n"
    )


def write_training_file(out: Path, ds_config: dict[str, Any], spec: dict[str, Any]) -> None:
    (out / TRAINING_FILE).write_text(json.dumps({"deepspeed": ds_config, "spec": spec}, indent=2) + "\n")
