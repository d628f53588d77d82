"""GRPO and RLOO with trl's GRPOTrainer / RLOOTrainer: prompts in, groups of sampled completions,
verifiable rewards (see `rewards`), group-relative advantages.

The dataset holds the prompt as a chat (trl renders it with the job's chat template) and the row's
other columns, which trl hands to the reward functions. Completions stop at EOS or at the end of the
turn (`<|end|>` when the tokenizer has it), so a reward reads one answer, not what follows it.

Rollouts: trl's vLLM integration in colocate mode (the engine inside the training process, weights
pushed after each step) where vLLM is installed: on a GPU with `rollouts: auto` or `vllm`; on the CPU
(vLLM's CPU build) only with `rollouts: vllm`, in one process, and with a weight sync of our own
(`vllm_cpu`: trl 1.16's fails there). `auto` on the CPU uses transformers' `generate`, with a
warning that says why: on 2 cores a whole GRPO step measured slower with vLLM (0.58-0.98x,
`benchmarks/grpo_stage_rollouts.py`), and the engine's start costs ~25 s of graph compilation. trl's server mode
(`trl vllm-serve`) is not used on the CPU: its weight sync is vLLM's NCCL transfer engine, which
`init_communicator` refuses off CUDA (`NotImplementedError`), so the server would sample from stale
weights.

Before and after training the held-out prompts are answered greedily and scored with the same
rewards (`first_eval_mean_reward`, `eval_mean_reward`), so the result shows what training bought.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Any

from lmforge.api.alignment import AlignmentJobSpec, AlignmentMethod, GroupRlOptions, RewardType, RolloutEngine
from lmforge.trainer.align import rewards as rw
from lmforge.trainer.align import vllm_cpu
from lmforge.trainer.align.base import on_gpu
from lmforge.trainer.align.data import Example
from lmforge.trainer.errors import InvalidInput

EVAL_BATCH = 16
"""Prompts per greedy generation batch of the held-out reward."""

VLLM_SAMPLING: dict[str, Any] = {"detokenize": False}
"""vLLM sampling settings of our own, on top of trl's. trl reads only the token ids and their
log-probabilities from the engine's outputs and decodes the completions itself, so the engine's own
incremental detokenisation is wasted work. It is not small: GRPO asks for each token's
log-probability (`logprobs=0`, for the importance-sampling correction), and vLLM then decodes the text
of every log-probability entry too; on 2 cores that cost ~20 % of the rollout tokens/s of a 3.5M
model (4.7-4.8k vs 5.7-5.9k tok/s, `benchmarks/grpo_rollouts.py` shape). Stop strings would need the
text; the stage stops on token ids (`stop_ids`)."""


def options(spec: AlignmentJobSpec) -> tuple[str, GroupRlOptions]:
    """(field name, options) of the method."""
    name = spec.method.value
    opts = spec.grpo if spec.method is AlignmentMethod.GRPO else spec.rloo
    assert opts is not None
    return name, opts


def dataset_rows(examples: list[Example]) -> list[dict[str, Any]]:
    """trl rows: the prompt chat plus the row's columns."""
    return [{**ex.columns, "prompt": ex.prompt} for ex in examples]


def stop_ids(tokenizer: Any) -> list[int]:
    """EOS and, when the vocabulary has it, LMForge's end of turn."""
    out = [tokenizer.eos_token_id]
    end = tokenizer.convert_tokens_to_ids("<|end|>")
    if isinstance(end, int) and end >= 0 and end != tokenizer.unk_token_id:
        out.append(end)
    return [i for i in dict.fromkeys(out) if i is not None]


def use_vllm(spec: AlignmentJobSpec, engine: RolloutEngine) -> bool:
    """Whether rollouts go through vLLM; `auto` warns when it falls back to `generate`."""
    if engine is RolloutEngine.GENERATE:
        return False
    from trl.import_utils import is_vllm_available

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # trl warns about vLLM versions newer than it was tested on
        installed = is_vllm_available()
    field = f"spec.{spec.method.value}.rollouts"
    gpu = on_gpu(spec)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if installed and gpu:
        return True
    if installed and engine is RolloutEngine.VLLM:
        if world > 1:
            raise InvalidInput(
                f"{field}: vllm rollouts on the CPU run in one process, not {world}; "
                "use topology.gpusPerNode, or rollouts: generate"
            )
        return True
    why = (
        "vLLM is not installed"
        if not installed
        else "this run has no GPU; on the CPU a GRPO step measured slower with vLLM than with generate "
        "(docs/alignment.md), so auto uses generate (set rollouts: vllm for vLLM's CPU build, one "
        "process; trl's server mode syncs weights only over NCCL, on CUDA)"
    )
    if engine is RolloutEngine.VLLM:
        raise InvalidInput(f"{field}: vllm rollouts cannot run here: {why}; use auto or generate")
    print(f"warning: {field} auto: rollouts use transformers' generate, not vLLM: {why}", flush=True)
    return False


def check_batch(spec: AlignmentJobSpec, opts: GroupRlOptions) -> None:
    """trl's rule, named in our fields: the rollout batch holds whole groups."""
    t = spec.training
    world = int(os.environ.get("WORLD_SIZE", "1"))
    batch = t.micro_batch_size * t.gradient_accumulation_steps * world
    if batch % opts.num_generations:
        raise InvalidInput(
            f"spec.{spec.method.value}.numGenerations: the rollout batch (training.microBatchSize "
            f"{t.micro_batch_size} × gradientAccumulationSteps {t.gradient_accumulation_steps} × {world} "
            f"processes = {batch}) must be a multiple of numGenerations ({opts.num_generations})"
        )


def reward_functions(
    spec: AlignmentJobSpec, opts: GroupRlOptions, load_reward_model: Any
) -> tuple[list[Any], list[Any], list[float]]:
    """(reward funcs, their processing classes, weights); `load_reward_model(ref) -> (model, tok)`."""
    name = spec.method.value
    funcs, weights = rw.build(opts.rewards, f"spec.{name}.rewards")
    out: list[Any] = []
    tokenizers: list[Any] = []
    for i, (reward, fn) in enumerate(zip(opts.rewards, funcs, strict=True)):
        if reward.type is RewardType.MODEL:
            assert reward.model_ref is not None
            model, tok = load_reward_model(reward.model_ref, f"spec.{name}.rewards[{i}].modelRef")
            out.append(model)
            tokenizers.append(tok)
        else:
            out.append(fn)
            tokenizers.append(None)
    return out, tokenizers, weights


def build_trainer(
    spec: AlignmentJobSpec,
    model: Any,
    tokenizer: Any,
    train: list[Example],
    args: dict[str, Any],
    funcs: list[Any],
    reward_tokenizers: list[Any],
    weights: list[float],
) -> Any:
    """A GRPOTrainer or RLOOTrainer over the prompts."""
    from datasets import Dataset

    _, opts = options(spec)
    check_batch(spec, opts)
    vllm = use_vllm(spec, opts.rollouts)
    cpu_vllm = vllm and not on_gpu(spec)
    if cpu_vllm:
        vllm_cpu.prepare_process()
    model.generation_config.eos_token_id = stop_ids(tokenizer)
    common: dict[str, Any] = {
        **args,
        "num_generations": opts.num_generations,
        "max_completion_length": opts.max_completion_length,
        "temperature": opts.temperature,
        "beta": opts.beta,
        "reward_weights": weights,
        "use_vllm": vllm,
        "top_k": 0,
        "top_p": 1.0,
        "remove_unused_columns": False,  # the rewards read the other columns
    }
    if vllm:
        common.update(
            vllm_mode="colocate",
            vllm_gpu_memory_utilization=0.3,
            vllm_enable_sleep_mode=False,
            generation_kwargs={"stop_token_ids": stop_ids(tokenizer), **VLLM_SAMPLING},
        )
    common["eval_strategy"] = "no"  # the held-out reward is measured by `heldout_reward`
    if spec.method is AlignmentMethod.GRPO:
        from trl import GRPOConfig as Config
        from trl import GRPOTrainer as Trainer
    else:
        from trl import RLOOConfig as Config  # type: ignore[assignment]
        from trl import RLOOTrainer as Trainer  # type: ignore[assignment]
    config = Config(**common)
    # on the CPU the engine samples in the run's precision, not vLLM's bf16 default (vllm_cpu)
    with vllm_cpu.engine_dtype(spec.training.precision) if cpu_vllm else contextlib.nullcontext():
        trainer = Trainer(
            model=model,
            reward_funcs=funcs,
            args=config,
            train_dataset=Dataset.from_list(dataset_rows(train)),
            processing_class=tokenizer,
            reward_processing_classes=reward_tokenizers,
        )
    if cpu_vllm:
        vllm_cpu.use_reload_sync(trainer.vllm_generation)
    return trainer


def heldout_reward(
    model: Any, tokenizer: Any, examples: list[Example], funcs: list[Any], weights: list[float], max_new_tokens: int
) -> float | None:
    """Mean weighted reward of greedy answers to `examples` (None when there are none, or when a
    reward is a model: scoring those needs trl's batching, so they count only in training)."""
    import torch

    if not examples or any(not callable(f) or isinstance(f, torch.nn.Module) for f in funcs):
        return None
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, stops = 0.0, stop_ids(tokenizer)
    for start in range(0, len(examples), EVAL_BATCH):
        batch = examples[start : start + EVAL_BATCH]
        texts = [tokenizer.apply_chat_template(ex.prompt, tokenize=False, add_generation_prompt=True) for ex in batch]
        enc = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False).to(
            device
        )
        with torch.no_grad():
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=stops,
                pad_token_id=tokenizer.pad_token_id,
            )
        answers = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        completions = [[{"role": "assistant", "content": a}] for a in answers]
        prompts = [ex.prompt for ex in batch]
        columns = {k: [ex.columns.get(k) for ex in batch] for k in {k for ex in batch for k in ex.columns}}
        for fn, w in zip(funcs, weights, strict=True):
            total += w * sum(fn(prompts=prompts, completions=completions, **columns))
    model.train(was_training)
    return total / len(examples)
