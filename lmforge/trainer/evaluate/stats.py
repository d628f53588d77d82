"""How sure a metric is: 95% intervals for every metric, and whether a difference from a baseline is
larger than the noise.

* Rates (accuracy, exact match, refusal rate, pass@1 with one sample — every item scores 0 or 1) get
  the Wilson score interval, which stays inside [0, 1] and is honest at small n and near 0 or 1
  (0.9 on 60 items is 0.80–0.95, not 0.9 ± 0.08 cut at 1).
* Everything else (F1, perplexity, NLL, pass@k over several samples) gets a percentile bootstrap
  over items with a fixed seed, so the same results give the same interval.
* A comparison with a baseline pairs the items both scored (same item ids): for rates an exact
  McNemar test on the items where exactly one of the two is right, otherwise a paired bootstrap of
  the difference. Without per-item scores on both sides it falls back to the two intervals as if
  independent (a normal approximation), and says it is unpaired.

A metric is Σ values / Σ weights over its items (weights 1 unless per-item token counts are given),
exponentiated for perplexity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

LEVEL = 0.95
"""Confidence level of every interval; a difference is significant at 1 − LEVEL."""
Z = 1.959963984540054
"""Standard normal quantile of (1 + LEVEL) / 2."""
RESAMPLES = 2000
"""Bootstrap resamples."""
SEED = 20260101
"""Bootstrap seed: fixed, so results are reproducible."""
_BLOCK = 250
"""Resamples drawn at once (bounds memory at _BLOCK × items)."""


@dataclass
class ItemScores:
    """Per-item scores behind one metric."""

    values: list[float]
    """One value per item: 0/1 for rates, the item's score (F1, summed NLL in nats) otherwise."""
    weights: list[float] | None = None
    """Per-item denominators (tokens, for NLL and perplexity); None means 1 each."""
    binary: bool = False
    """Whether the metric is a rate of 0/1 outcomes (Wilson interval, McNemar comparison)."""
    exp: bool = False
    """Whether the metric is exp(Σ values / Σ weights) (perplexity)."""
    ids: list[str] = field(default_factory=list)
    """Stable item keys for pairing with a baseline (same length as `values`)."""

    def value(self) -> float:
        return _finish(_ratio(np.asarray(self.values, float), self._w()), self.exp)

    def _w(self) -> np.ndarray:
        return np.ones(len(self.values)) if self.weights is None else np.asarray(self.weights, float)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ids": self.ids, "values": self.values, "binary": self.binary, "exp": self.exp}
        if self.weights is not None:
            out["weights"] = self.weights
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ItemScores:
        return cls(
            [float(v) for v in data["values"]],
            None if data.get("weights") is None else [float(w) for w in data["weights"]],
            bool(data.get("binary")),
            bool(data.get("exp")),
            [str(i) for i in data.get("ids", [])],
        )


def _ratio(values: np.ndarray, weights: np.ndarray) -> float:
    total = float(weights.sum())
    return float(values.sum()) / total if total else float("nan")


def _finish(x: float, exp: bool) -> float:
    return math.exp(x) if exp else x


@dataclass(frozen=True)
class Interval:
    """A 95% interval of one metric."""

    low: float
    high: float
    method: str
    """`wilson` or `bootstrap`."""
    n: int
    """Items it rests on."""

    def to_json(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "method": self.method, "n": self.n, "level": LEVEL}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Interval:
        return cls(float(data["low"]), float(data["high"]), str(data["method"]), int(data["n"]))


def wilson(successes: float, n: int, z: float = Z) -> tuple[float, float]:
    """Wilson score interval of a proportion `successes` / `n`."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _resampled_ratios(values: np.ndarray, weights: np.ndarray, seed: int) -> np.ndarray:
    """RESAMPLES bootstrap replicates of Σ values / Σ weights (items drawn with replacement)."""
    rng = np.random.default_rng(seed)
    n = len(values)
    out = np.empty(RESAMPLES)
    for start in range(0, RESAMPLES, _BLOCK):
        idx = rng.integers(0, n, size=(min(_BLOCK, RESAMPLES - start), n))
        out[start : start + len(idx)] = values[idx].sum(1) / np.maximum(weights[idx].sum(1), 1e-300)
    return out


def interval(scores: ItemScores, seed: int = SEED) -> Interval:
    """Wilson for rates, percentile bootstrap otherwise."""
    values, weights = np.asarray(scores.values, float), scores._w()
    n = len(values)
    if scores.binary:
        low, high = wilson(float(values.sum()), n)
        return Interval(low, high, "wilson", n)
    if n < 2:
        v = scores.value()
        return Interval(v, v, "bootstrap", n)
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(_resampled_ratios(values, weights, seed), [tail, 100 - tail])
    return Interval(_finish(float(low), scores.exp), _finish(float(high), scores.exp), "bootstrap", n)


@dataclass(frozen=True)
class Comparison:
    """Ours minus the baseline's, with its 95% interval and whether it is beyond the noise."""

    difference: float
    low: float
    high: float
    p_value: float | None
    significant: bool | None
    """None when nothing is known of the baseline's noise (no interval, no items)."""
    method: str
    """`mcnemar`, `paired-bootstrap`, `unpaired-normal` or `none`."""
    paired: int
    """Items scored by both (0 when unpaired)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "difference": self.difference,
            "low": self.low,
            "high": self.high,
            "p_value": self.p_value,
            "significant": self.significant,
            "method": self.method,
            "paired": self.paired,
            "level": LEVEL,
        }


def mcnemar_p(ours_only: int, base_only: int) -> float:
    """Exact two-sided McNemar p-value from the discordant pairs (a binomial test at 1/2)."""
    n = ours_only + base_only
    if n == 0:
        return 1.0
    k = min(ours_only, base_only)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def _pairs(ours: ItemScores, base: ItemScores) -> tuple[list[int], list[int]]:
    """Positions of the items both scored, matched by id (the k-th repeat of an id to the k-th)."""

    def keyed(s: ItemScores) -> dict[tuple[str, int], int]:
        seen: dict[str, int] = {}
        out = {}
        for pos, item in enumerate(s.ids):
            seen[item] = seen.get(item, -1) + 1
            out[(item, seen[item])] = pos
        return out

    a, b = keyed(ours), keyed(base)
    common = sorted(k for k in a if k in b)  # canonical order: the bootstrap does not depend on row order
    return [a[k] for k in common], [b[k] for k in common]


def compare(
    ours: ItemScores | None,
    base: ItemScores | None,
    ours_value: float,
    base_value: float,
    ours_interval: Interval | None = None,
    base_interval: Interval | None = None,
    seed: int = SEED,
) -> Comparison:
    """Ours − baseline, paired on common items when both sides have per-item scores."""
    diff = ours_value - base_value
    if ours is not None and base is not None and ours.ids and base.ids:
        ia, ib = _pairs(ours, base)
        if len(ia) >= 2:
            return _paired(ours, base, ia, ib, diff, seed)
    oi = ours_interval or (interval(ours, seed) if ours is not None else None)
    bi = base_interval or (interval(base, seed) if base is not None else None)
    if oi is None or bi is None:
        return Comparison(diff, diff, diff, None, None, "none", 0)
    se = math.hypot((oi.high - oi.low) / (2 * Z), (bi.high - bi.low) / (2 * Z))
    if se == 0:
        return Comparison(diff, diff, diff, None, diff != 0, "unpaired-normal", 0)
    p = math.erfc(abs(diff) / se / math.sqrt(2))
    return Comparison(diff, diff - Z * se, diff + Z * se, p, p < 1 - LEVEL, "unpaired-normal", 0)


def _paired(ours: ItemScores, base: ItemScores, ia: list[int], ib: list[int], diff: float, seed: int) -> Comparison:
    """Paired comparison on the matched items: the difference reported is on those items."""
    va, vb = np.asarray(ours.values, float)[ia], np.asarray(base.values, float)[ib]
    wa, wb = ours._w()[ia], base._w()[ib]
    n = len(ia)
    diff = _finish(_ratio(va, wa), ours.exp) - _finish(_ratio(vb, wb), base.exp)
    rng = np.random.default_rng(seed)
    reps = np.empty(RESAMPLES)
    for start in range(0, RESAMPLES, _BLOCK):
        idx = rng.integers(0, n, size=(min(_BLOCK, RESAMPLES - start), n))  # the same items on both sides
        ra = va[idx].sum(1) / np.maximum(wa[idx].sum(1), 1e-300)
        rb = vb[idx].sum(1) / np.maximum(wb[idx].sum(1), 1e-300)
        reps[start : start + len(idx)] = (np.exp(ra) - np.exp(rb)) if ours.exp else ra - rb
    tail = (1 - LEVEL) / 2 * 100
    low, high = (float(x) for x in np.percentile(reps, [tail, 100 - tail]))
    if ours.binary and base.binary:
        ours_only = int(((va == 1) & (vb == 0)).sum())
        base_only = int(((va == 0) & (vb == 1)).sum())
        p = mcnemar_p(ours_only, base_only)
        return Comparison(diff, low, high, p, p < 1 - LEVEL, "mcnemar", n)
    # two-sided bootstrap p-value: how often the resampled difference falls on the other side of 0
    p = min(1.0, 2 * min(float((reps <= 0).mean()), float((reps >= 0).mean())))
    return Comparison(diff, low, high, p, not (low <= 0 <= high), "paired-bootstrap", n)
