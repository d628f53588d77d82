"""`python -m lmforge.operator.embedded.plot SERIES.json OUT.png`: one loss-curve PNG.

A separate process on purpose: matplotlib pulls in numpy, and the runner (like the operator) never
loads the ML stack. SERIES.json is `{"title": str, "xlabel": str, "series": {label: [[x, y], …]}}`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    for label, points in spec["series"].items():
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, label=label, marker="o" if len(points) < 12 else None, markersize=3)
    ax.set_title(spec["title"])
    ax.set_xlabel(spec.get("xlabel", "step"))
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(argv[1])
    plt.close(fig)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
