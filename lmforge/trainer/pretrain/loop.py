"""The training loop: micro-batches through the DeepSpeed engine, validation, checkpoints, progress.

A micro-batch whose loss is NaN/Inf on any rank is skipped before its backward pass (so it never
touches the weights or the optimizer state) and the next one is drawn instead; after more than
`training.maxBadSteps` consecutive skips the job stops with a clear reason, and `latest` still names
the last good checkpoint.

A stop request (SIGTERM/SIGINT, see `preempt`) is agreed across ranks after every optimizer step; the
loop then saves a checkpoint at that step (unless it just did) and fails with a retryable error, so
the retried job resumes there instead of at the last `checkpoint.everySteps` multiple.

With asynchronous checkpoints a periodic save returns once the state is in host memory; the last
step's save and the stop's save wait until `latest` names them (or the save failed).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lmforge.trainer.errors import StageError
from lmforge.trainer.pretrain.autocompile import AutoCompile
from lmforge.trainer.pretrain.checkpoint import Checkpoints
from lmforge.trainer.pretrain.config import RunShape
from lmforge.trainer.pretrain.data import BatchStream
from lmforge.trainer.pretrain.dist import World, all_sum, any_true
from lmforge.trainer.pretrain.metrics import Throughput
from lmforge.trainer.pretrain.preempt import StopRequest
from lmforge.trainer.progress import ProgressReporter


def micro_loss(engine: Any, input_ids: np.ndarray, labels: np.ndarray) -> Any:
    """Mean next-token cross-entropy of one micro-batch (a 0-d tensor with its graph)."""
    import torch

    device = engine.device
    out = engine(input_ids=torch.from_numpy(input_ids).to(device), labels=torch.from_numpy(labels).to(device))
    return out.loss


@dataclass
class LoopSettings:
    total_steps: int
    validate_every: int
    checkpoint_every: int
    max_bad_steps: int
    checkpoint_files: dict[str, bytes] = field(default_factory=dict)


@dataclass
class LoopState:
    step: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    losses: dict[int, float] = field(default_factory=dict)
    """Mean training loss of each step run by this process (tests compare resumed runs with it)."""
    last_checkpoint: int | None = None


class TrainLoop:
    """Runs optimizer steps from `state.step` to `settings.total_steps`."""

    def __init__(
        self,
        engine: Any,
        stream: BatchStream,
        val: list[tuple[np.ndarray, np.ndarray]],
        shape: RunShape,
        settings: LoopSettings,
        checkpoints: Checkpoints,
        world: World,
        reporter: ProgressReporter | None,
        throughput: Throughput,
        stop: StopRequest | None = None,
        compile_plan: AutoCompile | None = None,
    ) -> None:
        self.engine, self.stream, self.val = engine, stream, val
        self.shape, self.settings, self.checkpoints = shape, settings, checkpoints
        self.world, self.reporter, self.throughput = world, reporter, throughput
        self.stop = stop
        self.compile_plan = compile_plan
        """`training.compile`: compiles before the first step, or (auto) after timing a few."""

    def _finite_micro_loss(self, step: int, bad: list[int]) -> Any:
        """The next micro-batch's loss, skipping non-finite ones (agreed across ranks)."""
        import torch

        while True:
            x, y = self.stream.next()
            loss = micro_loss(self.engine, x, y)
            if not any_true(not bool(torch.isfinite(loss.detach()).item()), self.world):
                bad[0] = 0
                return loss
            bad[0] += 1
            if self.reporter is not None:
                self.reporter.progress(
                    step,
                    self.settings.total_steps,
                    force=True,
                    message=f"skipped a batch with non-finite loss ({bad[0]} in a row)",
                )
            if bad[0] > self.settings.max_bad_steps:
                self.checkpoints.finish()  # a save in flight lands first, so the message names it
                last = self.checkpoints.latest() if self.world.is_main else None
                where = f"the last good checkpoint is {last['tag']}" if last else "no checkpoint was saved yet"
                raise StageError(
                    f"loss was NaN/Inf on {bad[0]} consecutive batches at step {step + 1} "
                    f"(training.maxBadSteps is {self.settings.max_bad_steps}); {where}. Lower the learning "
                    "rate, raise warm-up or use bf16/fp32",
                    retryable=False,
                )

    def evaluate(self) -> tuple[float, float]:
        """(validation loss, perplexity) over the fixed held-out batches, token-weighted over ranks."""
        import torch

        self.engine.eval()
        total, count = 0.0, 0.0
        with torch.no_grad():
            for x, y in self.val:
                loss = micro_loss(self.engine, x, y)
                n = float((y[:, 1:] != -100).sum())
                total += float(loss.float().item()) * n
                count += n
        self.engine.train()
        total, count = all_sum([total, count], self.world)
        mean = total / max(count, 1.0)
        return mean, math.exp(min(mean, 50.0))

    def _client_state(self, step: int) -> dict[str, Any]:
        return {"step": step, "data": self.stream.state(), "tokens": step * self.shape.tokens_per_step}

    def run(self, state: LoopState) -> LoopState:
        s = self.settings
        bad = [0]
        self.throughput.start(state.step)
        if self.reporter is not None:
            self.reporter.count_from(state.step)  # ETA from this process's own steps, not from step 0
        started = time.monotonic()
        if self.compile_plan is not None:
            self.compile_plan.start(s.total_steps - state.step)
        while state.step < s.total_steps:
            step_started = time.perf_counter()
            losses = []
            for _ in range(self.shape.accumulation):
                loss = self._finite_micro_loss(state.step, bad)
                self.engine.backward(loss)
                self.engine.step()
                losses.append(float(loss.detach().float().item()))
            state.step += 1
            (loss_sum,) = all_sum([sum(losses) / len(losses)], self.world)
            mean_loss = loss_sum / self.world.size
            state.losses[state.step] = mean_loss
            self.throughput.step(state.step)
            if self.compile_plan is not None:  # the step's seconds, before validation and checkpoints
                self.compile_plan.after_step(time.perf_counter() - step_started, s.total_steps - state.step)
            grad_norm = self.engine.get_global_grad_norm()
            metrics = {
                "loss": mean_loss,
                "lr": float(self.engine.get_lr()[0]),
                "grad_norm": float(grad_norm) if grad_norm is not None else 0.0,
                "tokens_per_second": self.throughput.tokens_per_second(),
                "mfu": self.throughput.mfu(),
                "tokens": float(state.step * self.shape.tokens_per_step),
            }
            last = state.step == s.total_steps
            if self.val and (state.step % s.validate_every == 0 or last):
                metrics["val_loss"], metrics["val_perplexity"] = self.evaluate()
            elif "val_loss" in state.metrics:
                metrics["val_loss"] = state.metrics["val_loss"]
                metrics["val_perplexity"] = state.metrics["val_perplexity"]
            state.metrics = metrics
            if self.reporter is not None:
                self.reporter.progress(state.step, s.total_steps, metrics=metrics, unit="step")
            saved = state.step % s.checkpoint_every == 0 or last
            if saved:
                # A failed upload is not fatal: `latest` keeps naming the previous checkpoint and the
                # next save tries again (at the end, the exported model is what matters).
                self._save(state, wait=last)
            if self.stop is not None and not last and any_true(self.stop.requested, self.world):
                self._stop_now(state, already_saved=saved)
        self.checkpoints.finish()  # nothing is in flight after the last step's save; kept for safety
        state.last_checkpoint = self.checkpoints.last_committed
        state.metrics["train_seconds"] = time.monotonic() - started
        return state

    def _save(self, state: LoopState, *, wait: bool) -> None:
        self.checkpoints.save(
            self.engine, state.step, self._client_state(state.step), self.settings.checkpoint_files, wait=wait
        )
        state.last_checkpoint = self.checkpoints.last_committed

    def _stop_now(self, state: LoopState, already_saved: bool) -> None:
        """Checkpoint this step (collectively) and leave with a retryable error."""
        assert self.stop is not None
        if not already_saved:
            self._save(state, wait=True)
        else:  # the save of this very step may still be in flight: the retry should resume from it
            self.checkpoints.finish()
            state.last_checkpoint = self.checkpoints.last_committed
        why = f"stopped by {self.stop.name()} after step {state.step} of {self.settings.total_steps}"
        if state.last_checkpoint == state.step:
            where = f"saved checkpoint step-{state.step}; a retry resumes from it"
        else:
            last = self.checkpoints.latest() if self.world.is_main else None
            where = (
                f"the checkpoint could not be saved; a retry resumes from {last['tag']}"
                if last
                else "no checkpoint could be saved; a retry starts over"
            )
        if self.reporter is not None:
            self.reporter.progress(
                state.step, self.settings.total_steps, metrics=state.metrics, message=f"{why}; {where}", force=True
            )
        raise StageError(f"{why}; {where}", retryable=True)
