"""Log-likelihoods of many continuations of few contexts: one forward pass per shared context.

lm-eval's `HFLM` shares a context's forward pass only when every continuation is a single token (its
logits cache); a multiple-choice row with multi-token answers costs it one full (context + choice)
sequence per choice, so the question is computed four times. Here each distinct context runs once,
its KV cache is repeated for the choices behind it, and only the choices' own tokens run again.
Contexts are sorted by length and batched (right-padded, so no query row is fully masked and no
NaN reaches the cache), so a batch wastes little padding and keeps every core busy.

Token ids come from the caller (the HF backend encodes with `HFLM`'s own `_encode_pair`), so the
scores are `HFLM`'s up to float rounding.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch


def batches(
    contexts: Sequence[tuple[int, ...]], choices: dict[tuple[int, ...], list[int]], rows: int
) -> list[list[tuple[int, ...]]]:
    """Distinct contexts, longest first, cut into batches of at most `rows` continuations (a
    context with more choices than `rows` gets a batch of its own)."""
    out: list[list[tuple[int, ...]]] = []
    current: list[tuple[int, ...]] = []
    count = 0
    for ctx in sorted(contexts, key=lambda c: (-len(c), c)):
        n = len(choices[ctx])
        if current and count + n > rows:
            out.append(current)
            current, count = [], 0
        current.append(ctx)
        count += n
    if current:
        out.append(current)
    return out


def _cache_kwarg(model: Any) -> str:
    """`cache` in newer transformers 5.x, `past_key_values` (deprecated there) before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.inference_mode()
def loglikelihoods(
    model: Any, encoded: Sequence[tuple[list[int], list[int]]], rows: int, pad_id: int, device: str
) -> list[tuple[float, bool]]:
    """Per (context ids, continuation ids) pair, non-empty both: (summed log-probability of the
    continuation, whether every continuation token is the greedy pick). `rows` bounds the
    continuations scored in one forward pass."""
    choices: dict[tuple[int, ...], list[int]] = {}
    for i, (context_ids, _) in enumerate(encoded):
        choices.setdefault(tuple(context_ids), []).append(i)
    results: list[tuple[float, bool]] = [(0.0, False)] * len(encoded)
    for batch in batches(list(choices), choices, rows):
        lengths = torch.tensor([len(c) for c in batch])
        width = int(lengths.max())
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        for b, ctx in enumerate(batch):
            ids[b, : len(ctx)] = torch.tensor(ctx)
        ctx_mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
        positions = torch.arange(width)[None, :].expand(len(batch), -1)
        out = model(
            input_ids=ids.to(device),
            attention_mask=ctx_mask.to(device),
            position_ids=positions.to(device),
            use_cache=True,
        )
        # (B, V): the distribution after each context's last real token, predicting the first choice token
        first = out.logits[torch.arange(len(batch)), (lengths - 1).to(out.logits.device)].float().log_softmax(-1)
        members = [i for ctx in batch for i in choices[ctx]]
        owner = torch.tensor([b for b, ctx in enumerate(batch) for _ in choices[ctx]])
        conts = [encoded[i][1] for i in members]
        rest = max(len(c) for c in conts) - 1  # tokens fed after the context: all but each choice's last
        logp: torch.Tensor | None = None
        if rest > 0:
            cache = out.cache if hasattr(out, "cache") else out.past_key_values  # renamed in transformers 5.x
            cache.batch_select_indices(owner.to(device))  # (R, heads, width, d): each choice gets its context
            feed = torch.full((len(members), rest), pad_id, dtype=torch.long)
            feed_mask = torch.zeros((len(members), rest), dtype=torch.long)
            for r, cont in enumerate(conts):
                feed[r, : len(cont) - 1] = torch.tensor(cont[:-1], dtype=torch.long)
                feed_mask[r, : len(cont) - 1] = 1
            mask = torch.cat([ctx_mask[owner], feed_mask], dim=1)
            pos = lengths[owner][:, None] + torch.arange(rest)[None, :]
            logp = (
                model(
                    input_ids=feed.to(device),
                    attention_mask=mask.to(device),
                    position_ids=pos.to(device),
                    use_cache=False,
                    **{_cache_kwarg(model): cache},
                )
                .logits.float()
                .log_softmax(-1)
            )  # (R, rest, V)
        for r, (i, cont) in enumerate(zip(members, conts, strict=True)):
            dist = first[int(owner[r])]
            ll = float(dist[cont[0]])
            greedy = int(dist.argmax()) == cont[0]
            if len(cont) > 1:
                assert logp is not None
                target = torch.tensor(cont[1:], device=logp.device)
                steps = logp[r, : len(cont) - 1]  # (n-1, V)
                ll += float(steps.gather(1, target[:, None]).sum())
                greedy = greedy and bool((steps.argmax(-1) == target).all())
            results[i] = (ll, greedy)
    return results
