"""PPO (RLHF), a compact loop of our own: trl 1.16 no longer ships a PPO trainer (only GRPO/RLOO and
experimental online methods), so this follows its former design with the parts we need.

One step: sample `rolloutBatchSize` prompts; generate `responseLength` tokens with the policy (stopping
at EOS/`<|end|>`); score each completion (a reward model or a `module:function(prompt, completion)`);
per-token reward = −klCoef·(log π − log π_ref), plus the score on the last token; advantages by GAE
(γ = 1, λ = 0.95) on a value head over the policy's last hidden state; then `PPO_EPOCHS` passes of
clipped policy loss + clipped value loss over micro-batches. With LoRA the reference is the base with
adapters disabled; otherwise a frozen copy.

Checkpoints hold the trainable parameters, the value head, the optimizer, the warm-up schedule and the
step (`state.pt`). The loop runs in one process on the device it is given (CUDA when the spec asks for
a GPU and torch sees one, else the CPU); the spec refuses multi-process topologies, DeepSpeed and
gradient accumulation for PPO, and the stage refuses a multi-process launch. `warmupRatio` warms the
learning rate up linearly over that fraction of all optimizer steps, then holds it.
"""

from __future__ import annotations

import copy
import importlib
import math
import random
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.api.alignment import AlignmentJobSpec, PpoOptions
from lmforge.trainer import safe_load
from lmforge.trainer.align.checkpoints import CheckpointStore
from lmforge.trainer.align.data import Example
from lmforge.trainer.chat import encode_chat, generation_prompt_ids
from lmforge.trainer.context import StageContext
from lmforge.trainer.errors import InvalidInput

PPO_EPOCHS = 2
"""Optimisation passes over each rollout batch."""
GAE_LAMBDA = 0.95
VF_COEF = 0.1
"""Weight of the value loss."""

Scorer = Callable[[list[Example], list[str], list[list[int]]], torch.Tensor]
"""(examples, completion texts, completion ids) → one score per completion, shape [B]."""


def reward_function(spec: str) -> Callable[[str, str], float]:
    """Import `module:function`."""
    module, name = spec.split(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise InvalidInput(f"spec.ppo.rewardFunction: cannot import {spec}: {exc}") from None
    return fn


def function_scorer(fn: Callable[[str, str], float]) -> Scorer:
    """Scores with fn(prompt, completion); the prompt is the last turn's content."""

    def score(examples: list[Example], texts: list[str], ids: list[list[int]]) -> torch.Tensor:
        return torch.tensor([float(fn(ex.prompt[-1]["content"], t)) for ex, t in zip(examples, texts, strict=True)])

    return score


def model_scorer(reward_model: Any, tokenizer: Any, template: str) -> Scorer:
    """Scores with a sequence-classification reward model over the rendered prompt + completion."""
    reward_model.eval()

    @torch.no_grad()
    def score(examples: list[Example], texts: list[str], ids: list[list[int]]) -> torch.Tensor:
        rows = [
            encode_chat(tokenizer, [*ex.prompt, {"role": "assistant", "content": t}], template)[0]
            for ex, t in zip(examples, texts, strict=True)
        ]
        batch = tokenizer.pad({"input_ids": rows}, return_tensors="pt", padding_side="right")
        device = next(reward_model.parameters()).device
        return reward_model(**{k: v.to(device) for k, v in batch.items()}).logits[:, 0].float()

    return score


def _logprobs_values(
    policy: Any, value_head: nn.Module | None, seq: torch.Tensor, attn: torch.Tensor, n_resp: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of the last `n_resp` tokens of `seq` [B, T] and their values, each [B, n_resp]."""
    out = policy(input_ids=seq, attention_mask=attn, output_hidden_states=value_head is not None)
    logits = out.logits[:, -n_resp - 1 : -1].float()  # [B, n_resp, V]: logits predicting each response token
    logp = torch.gather(F.log_softmax(logits, -1), 2, seq[:, -n_resp:, None]).squeeze(-1)
    values = None
    if value_head is not None:
        values = value_head(out.hidden_states[-1][:, -n_resp - 1 : -1].float()).squeeze(-1)
    return logp, values


def _gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns [B, n] by generalised advantage estimation, γ = 1."""
    adv = torch.zeros_like(rewards)
    last = torch.zeros(rewards.shape[0], device=rewards.device)
    n = rewards.shape[1]
    for t in reversed(range(n)):
        nxt = values[:, t + 1] * mask[:, t + 1] if t + 1 < n else torch.zeros_like(last)
        delta = rewards[:, t] + nxt - values[:, t]
        last = (delta + GAE_LAMBDA * last) * mask[:, t]
        adv[:, t] = last
    return adv, adv + values


class PpoLoop:
    """State of one PPO run: policy, value head, reference, optimizer, prompts."""

    def __init__(
        self,
        spec: AlignmentJobSpec,
        policy: Any,
        tokenizer: Any,
        template: str,
        prompts: list[Example],
        scorer: Scorer,
        device: torch.device | str = "cpu",
    ) -> None:
        assert spec.ppo is not None
        self.device = torch.device(device)
        policy.to(self.device)
        self.spec, self.opts, self.policy, self.tok, self.scorer = spec, spec.ppo, policy, tokenizer, scorer
        self.prompts = [(ex, generation_prompt_ids(tokenizer, ex.prompt, template)) for ex in prompts]
        width = policy.config.hidden_size if hasattr(policy.config, "hidden_size") else policy.config.n_embd
        torch.manual_seed(spec.training.seed)
        self.value_head = nn.Linear(width, 1, device=self.device)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)
        self.adapter = hasattr(policy, "disable_adapter")
        self.ref = None if self.adapter else copy.deepcopy(policy).eval().requires_grad_(False)
        params = [p for p in policy.parameters() if p.requires_grad] + list(self.value_head.parameters())
        self.optim = torch.optim.AdamW(params, lr=spec.training.lr)
        warmup = math.ceil(
            spec.training.warmup_ratio
            * self.total_steps()
            * PPO_EPOCHS
            * math.ceil(self.opts.rollout_batch_size / spec.training.micro_batch_size)
        )
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.optim, lambda i: min(1.0, (i + 1) / warmup) if warmup else 1.0
        )
        self.rng = random.Random(spec.training.seed)
        self.order: list[int] = []
        self.step = 0
        stops = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|end|>")}
        self.stops = {s for s in stops if isinstance(s, int) and s >= 0 and s != tokenizer.unk_token_id}
        self.autocast = spec.training.precision.value == "bf16"
        self.stop_tensor = torch.tensor(sorted(self.stops), device=self.device)

    def total_steps(self) -> int:
        t = self.spec.training
        return t.max_steps or max(1, math.ceil(t.epochs * len(self.prompts) / self.opts.rollout_batch_size))

    def _batch(self) -> list[tuple[Example, list[int]]]:
        out = []
        for _ in range(self.opts.rollout_batch_size):
            if not self.order:
                self.order = list(range(len(self.prompts)))
                self.rng.shuffle(self.order)
            out.append(self.prompts[self.order.pop()])
        return out

    def _amp(self) -> AbstractContextManager[Any]:
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.autocast else nullcontext()

    def _ref_logp(self, seq: torch.Tensor, attn: torch.Tensor, n: int) -> torch.Tensor:
        if self.ref is not None:
            return _logprobs_values(self.ref, None, seq, attn, n)[0]
        with self.policy.disable_adapter():
            return _logprobs_values(self.policy, None, seq, attn, n)[0]

    @torch.no_grad()
    def rollout(self) -> dict[str, torch.Tensor]:
        """Generate, score and compute advantages for one batch of prompts."""
        batch = self._batch()
        self.policy.eval()
        enc = self.tok.pad({"input_ids": [ids for _, ids in batch]}, return_tensors="pt", padding_side="left")
        enc = {k: v.to(self.device) for k, v in enc.items()}
        opts: PpoOptions = self.opts
        with self._amp():
            gen = self.policy.generate(
                **enc,
                max_new_tokens=opts.response_length,
                do_sample=True,
                top_k=0,
                top_p=1.0,
                temperature=1.0,
                pad_token_id=self.tok.pad_token_id,
                eos_token_id=sorted(self.stops) or None,
            )
        resp = gen[:, enc["input_ids"].shape[1] :]  # [B, n]
        n = resp.shape[1]
        # mask: 1 up to and including the first stop token
        is_stop = torch.isin(resp, self.stop_tensor) if self.stops else torch.zeros_like(resp).bool()
        after = (torch.cumsum(is_stop.long(), 1) - is_stop.long()) > 0
        mask = (~after).float()
        attn = torch.cat([enc["attention_mask"], mask.long()], 1)
        ids = [r[: int(m.sum())].tolist() for r, m in zip(resp, mask, strict=True)]
        texts = self.tok.batch_decode(ids, skip_special_tokens=True)
        scores = self.scorer([ex for ex, _ in batch], texts, ids).float().to(self.device)  # [B]
        with self._amp():
            logp, values = _logprobs_values(self.policy, self.value_head, gen, attn, n)
            ref_logp = self._ref_logp(gen, attn, n)
        assert values is not None
        kl = (logp - ref_logp) * mask  # [B, n]
        rewards = -opts.kl_coef * kl
        last = (mask.sum(1).long() - 1).clamp(min=0)
        rewards[torch.arange(len(batch)), last] += scores
        adv, returns = _gae(rewards, values * mask, mask)
        valid = adv[mask.bool()]
        adv = (adv - valid.mean()) / (valid.std() + 1e-8) * mask
        return {
            "seq": gen,
            "attn": attn,
            "mask": mask,
            "logp": logp,
            "values": values,
            "adv": adv,
            "returns": returns,
            "scores": scores,
            "kl": kl.sum(1),
        }

    def optimise(self, roll: dict[str, torch.Tensor]) -> float:
        """PPO_EPOCHS passes of clipped losses over micro-batches; returns the mean loss."""
        self.policy.train()
        n = roll["mask"].shape[1]
        size, mb = roll["seq"].shape[0], self.spec.training.micro_batch_size
        clip = self.opts.clip_range
        losses = []
        for _ in range(PPO_EPOCHS):
            perm = torch.randperm(size).to(self.device)
            for i in range(0, size, mb):
                idx = perm[i : i + mb]
                m = roll["mask"][idx]
                with self._amp():
                    logp, values = _logprobs_values(
                        self.policy, self.value_head, roll["seq"][idx], roll["attn"][idx], n
                    )
                assert values is not None
                ratio = torch.exp(logp - roll["logp"][idx])
                adv = roll["adv"][idx]
                pg = torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip))
                old_v = roll["values"][idx]
                v_clip = old_v + (values - old_v).clamp(-clip, clip)
                vf = torch.max((values - roll["returns"][idx]) ** 2, (v_clip - roll["returns"][idx]) ** 2)
                loss = ((pg + VF_COEF * 0.5 * vf) * m).sum() / m.sum().clamp(min=1)
                self.optim.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_([p for g in self.optim.param_groups for p in g["params"]], 1.0)
                self.optim.step()
                self.sched.step()
                losses.append(float(loss))
        return sum(losses) / len(losses)

    def state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "value_head": self.value_head.state_dict(),
            "optim": self.optim.state_dict(),
            "sched": self.sched.state_dict(),
            "policy": {k: v for k, v in self.policy.named_parameters() if v.requires_grad},
            "rng": self.rng.getstate(),
            "order": self.order,
            "torch_rng": torch.get_rng_state(),
        }

    def load(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            params = dict(self.policy.named_parameters())
            for k, v in state["policy"].items():
                params[k].copy_(v)
        self.value_head.load_state_dict(state["value_head"])
        self.optim.load_state_dict(state["optim"])
        if "sched" in state:  # checkpoints written before the warm-up schedule have none
            self.sched.load_state_dict(state["sched"])
        self.step, self.order = state["step"], state["order"]
        self.rng.setstate(state["rng"])
        torch.set_rng_state(state["torch_rng"])


def train(
    ctx: StageContext, loop: PpoLoop, checkpoints: CheckpointStore, out_dir: Path
) -> tuple[dict[str, float], int | None]:
    """Run the loop to the end, resuming from and saving to the store. Returns the last step's metrics
    (with `first_mean_reward`, the first step's of this run) and the step it resumed from (None: fresh)."""
    restored = checkpoints.restore(out_dir) if loop.spec.checkpoint.resume else None
    resumed_from: int | None = None
    if restored is not None:
        loop.load(safe_load.load(restored[0] / "state.pt"))  # weights-only: the store is not trusted code
        resumed_from = loop.step
        print(f"resuming from checkpoint at step {loop.step}", flush=True)
    total, every = loop.total_steps(), loop.spec.checkpoint.every_steps
    metrics: dict[str, float] = {}
    first_reward: float | None = None
    while loop.step < total:
        roll = loop.rollout()
        loss = loop.optimise(roll)
        loop.step += 1
        metrics = {"loss": loss, "mean_reward": float(roll["scores"].mean()), "kl": float(roll["kl"].mean())}
        first_reward = metrics["mean_reward"] if first_reward is None else first_reward
        ctx.reporter.progress(loop.step, total, metrics=metrics)
        if loop.step % every == 0 or loop.step == total:
            local = out_dir / f"checkpoint-{loop.step}"
            local.mkdir(parents=True, exist_ok=True)
            torch.save(loop.state(), local / "state.pt")
            checkpoints.save(local, loop.step)
    if first_reward is not None:
        metrics["first_mean_reward"] = first_reward
    return metrics, resumed_from
