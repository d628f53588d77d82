"""Peak memory of the Dataset stage on a corpus and on one 10× larger: it streams documents (only
per-document hashes, ids and memory-mapped signatures grow with the corpus), so peak RSS should grow
far less than 10×. Baseline: the same corpus loaded whole into Python (`json.loads` of every row),
which is what a non-streaming pipeline holds at least.

Usage: python benchmarks/dataset_memory.py [--mb 4]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dataset_corpus import generate

REPO = Path(__file__).resolve().parents[1]

_LOAD_ALL = (
    "import json,sys,resource; d=[json.loads(l) for f in sys.argv[1:] for l in open(f)]; "
    "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
)


def peak_stage(data: Path, work: Path) -> tuple[float, float]:
    """(peak RSS in MB, seconds) of one full stage run in a child process."""
    res = {
        "apiVersion": "lmforge.io/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": "mem"},
        "spec": {
            "sources": [{"name": "s", "uri": str(data / "*.jsonl"), "license": "CC0-1.0"}],
            "tokenizer": {"vocabSize": 1024, "trainBytes": 2_000_000},
            "seqLength": 256,
        },
    }
    spec = {"stage": "dataset", "resource": res, "store": str(work / "store"), "output": "m", "runId": "m"}
    (work / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "LMFORGE_WORK_DIR": str(work / "w"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    start = time.monotonic()
    # /usr/bin/time is not always installed: measure the child's max RSS with a wrapper.
    wrapper = (
        "import resource,runpy,sys; sys.argv=['lmforge.trainer','dataset','--spec',sys.argv[1]]; "
        "code=0\ntry:\n    runpy.run_module('lmforge.trainer', run_name='__main__')\n"
        "except SystemExit as e:\n    code=e.code or 0\n"
        "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
        "sys.exit(code)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", wrapper, str(work / "spec.json")], env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    kb = int(next(line.split()[1] for line in proc.stderr.splitlines() if line.startswith("MAXRSS")))
    return kb / 1024, time.monotonic() - start


def peak_load_all(data: Path) -> float:
    out = subprocess.run(
        [sys.executable, "-c", _LOAD_ALL, *map(str, sorted(data.glob("*.jsonl")))],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.strip()) / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=4)
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for factor in (1, 10):
            root = Path(tmp) / f"x{factor}"
            info = generate(root / "data", args.mb * factor, files=4 * factor)
            rss, seconds = peak_stage(root / "data", root)
            base = peak_load_all(root / "data")
            results[factor] = (rss, base)
            print(
                f"{info['bytes'] / 1e6:.0f} MB corpus: stage peak RSS {rss:.0f} MB ({seconds:.0f} s); "  # type: ignore[operator]
                f"load-everything baseline {base:.0f} MB",
                flush=True,
            )
    (s1, b1), (s10, b10) = results[1], results[10]
    print(
        f"growth for 10x the data: stage {s10 / s1:.2f}x, load-everything baseline {b10 / b1:.2f}x; "
        f"stage growth / baseline growth = {(s10 / s1) / (b10 / b1):.2f}"
    )
    _ = resource  # the children report their own peaks


if __name__ == "__main__":
    main()
