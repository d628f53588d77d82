"""A local Hugging Face model as a `Backend`, with lm-eval's `HFLM` as the engine.

`HFLM` does what we would otherwise hand-write: it encodes (context, continuation) pairs the way the
harness's published numbers do, sorts requests by length so a batch wastes little padding, and
batches generation with stop sequences. It shares a context's forward pass only for one-token
continuations, so multiple-choice log-likelihoods are scored by `shared_context` (one pass per
context, the choices batched behind it) on `HFLM`'s own encodings. We give it our model object and
our own rows; it never touches the hub or its task registry.
Token-id perplexity (a Dataset's packed validation shards) is a plain batched forward pass here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lmforge.trainer.errors import InvalidInput
from lmforge.trainer.evaluate.backend import GenerationRequest


class HFBackend:
    """Scores and samples a causal LM from a local Hugging Face directory on the CPU or a GPU."""

    def __init__(self, model_dir: Path, batch_size: int, device: str | None = None) -> None:
        import torch
        from lm_eval.models.huggingface import HFLM
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model_dir).to(self.device).eval()  # type: ignore[arg-type]
        self.batch_size = batch_size
        self.lm = HFLM(pretrained=self.model, tokenizer=self.tokenizer, batch_size=batch_size, device=self.device)
        self.description = f"hf:{model_dir}"

    @staticmethod
    def _instances(kind: str, args: list[tuple[Any, ...]]) -> list[Any]:
        from lm_eval.api.instance import Instance

        return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]

    def loglikelihood(self, pairs: list[tuple[str, str]]) -> list[tuple[float, bool]]:
        """Pairs that share a context are scored with one forward pass of it (`shared_context`),
        encoded by `HFLM`'s own `_encode_pair`; an empty context or one too long for the model goes
        through `HFLM` itself (its prefix token and left truncation)."""
        from lmforge.trainer.evaluate import shared_context

        limit = self.lm.max_length + 1
        encoded: dict[int, tuple[list[int], list[int]]] = {}
        for i, (ctx, cont) in enumerate(pairs):
            if ctx:
                pair = self.lm._encode_pair(ctx, cont)
                if pair[1] and len(pair[0]) + len(pair[1]) <= limit:
                    encoded[i] = (list(pair[0]), list(pair[1]))
        out: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
        fast = list(encoded)
        scored = shared_context.loglikelihoods(
            self.model, [encoded[i] for i in fast], self.batch_size, int(self.tokenizer.pad_token_id), self.device
        )
        for i, result in zip(fast, scored, strict=True):
            out[i] = result
        slow = [i for i in range(len(pairs)) if i not in encoded]
        if slow:
            rest = self.lm.loglikelihood(self._instances("loglikelihood", [pairs[i] for i in slow]), disable_tqdm=True)
            for i, (ll, greedy) in zip(slow, rest, strict=True):
                out[i] = (float(ll), bool(greedy))
        return out

    def text_nll(self, texts: list[str]) -> list[tuple[float, int]]:
        # Rolling windows of the model's context length, each token predicted once (BOS-prefixed).
        lls = self.lm.loglikelihood_rolling(
            self._instances("loglikelihood_rolling", [(t,) for t in texts]), disable_tqdm=True
        )
        return [(-float(ll), len(self.lm.tok_encode(t))) for ll, t in zip(lls, texts, strict=True)]

    def token_nll(self, sequences: np.ndarray) -> list[tuple[float, int]]:
        """Per packed row of `sequences` (N, L): its summed NLL (nats) predicting tokens 1..L-1, and L-1."""
        import torch

        vocab = self.model.get_input_embeddings().num_embeddings
        if sequences.size and int(sequences.max()) >= vocab:
            raise InvalidInput(
                f"token id {int(sequences.max())} in the shards is outside the model's vocabulary "
                f"of {vocab}: the model was not trained on this Dataset's tokenizer"
            )
        out: list[tuple[float, int]] = []
        with torch.inference_mode():
            for start in range(0, len(sequences), self.batch_size):
                ids = torch.as_tensor(sequences[start : start + self.batch_size].astype(np.int64), device=self.device)
                logits = self.model(ids).logits.float()  # (B, L, V)
                nll = torch.nn.functional.cross_entropy(
                    logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none"
                )
                per_row = nll.reshape(ids.shape[0], -1).sum(-1)  # (B,)
                out += [(float(v), ids.shape[1] - 1) for v in per_row]
        return out

    def _prompt(self, request: GenerationRequest) -> str:
        if request.chat and getattr(self.tokenizer, "chat_template", None):
            return str(
                self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": request.prompt}], tokenize=False, add_generation_prompt=True
                )
            )
        return request.prompt

    def generate(self, requests: list[GenerationRequest], seed: int) -> list[str]:
        import torch

        torch.manual_seed(seed)
        args = []
        for r in requests:
            kwargs: dict[str, Any] = {
                "until": list(r.stop),
                "max_gen_toks": r.max_new_tokens,
                "do_sample": r.temperature > 0,
            }
            if r.temperature > 0:
                kwargs["temperature"] = r.temperature
            args.append((self._prompt(r), kwargs))
        return [str(s) for s in self.lm.generate_until(self._instances("generate_until", args), disable_tqdm=True)]
