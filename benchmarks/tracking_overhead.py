"""The cost of MLflow tracking on pretraining: the PretrainJob stage with tracking to a real local MLflow
server (SQLite backend, the tests' `mlflow server`, tests/support/mlflow.py) vs the same stage untracked.

Model, data and batch are pretrain_throughput.py's (the 5.3M-parameter Llama, seq 256, micro-batch 8,
bf16, one process). Each round runs both sides back to back (the order alternates between rounds, so
drift hits both), with the same number of torch threads, pinned and printed for each run. Throughput
is the steady state from the stage's own progress records (its `tokens` metric, each record's arrival
timed): the first `--warmup` steps and the last step (final validation, export) are left out. Both
sides see every record through the same recorder; the tracked side also hands them to the real
`MlflowTracker` (which enqueues; its thread sends batches over REST). The flush when the stage ends
(`close`) is timed apart: it is not training time. Prints tokens/s of each side per round, the ratio,
the slowest round, the spread, and the median overhead (goal: tracked within 2 % of untracked).

The server runs on this machine, so its own CPU use competes with training: a remote server costs the
stage less. `--uri` tracks to a server of your own instead (a closed port: the unreachable case).

    python benchmarks/tracking_overhead.py [--steps 300] [--rounds 3] [--threads N] [--uri URL] [--paired W]

Two runs of the same stage drift apart by several per cent on a small shared machine (7 % was seen
between back-to-back identical runs), more than the 2 % to be measured. `--paired W` compares within
one run instead: the MLflow tracker is handed the records of every other window of W steps only, and
the tracked windows' tokens/s is set against the untracked windows' of the same run (each window's
first 2 steps left out, while the previous window's last batch may still be sent).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks"), str(REPO / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pretrain_throughput import MICRO, SEQ, bench_spec, make_inputs  # noqa: E402

from lmforge.api.contract import ProgressRecord, RecordType  # noqa: E402


class Recorder:
    """A tracker that only keeps (arrival time, step, tokens) of each progress record."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, int, float]] = []

    def record(self, record: ProgressRecord) -> None:
        if record.type is RecordType.PROGRESS and "tokens" in record.metrics:
            self.marks.append((time.perf_counter(), record.step, record.metrics["tokens"]))

    def close(self, timeout: float = 0.0) -> None:
        pass

    def steady(self, warmup: int) -> float:
        """tokens/s from step `warmup` to the step before the last."""
        marks = [m for m in self.marks if m[1] >= warmup][:-1]
        if len(marks) < 2:
            raise RuntimeError(f"too few steps after the warm-up ({len(self.marks)} recorded)")
        (t0, _, n0), (t1, _, n1) = marks[0], marks[-1]
        return (n1 - n0) / (t1 - t0)


class Windowed:
    """Hands the MLflow tracker only the records of every other window of `window` steps (phase 0:
    the even windows), so one run has tracked and untracked stretches side by side."""

    def __init__(self, inner: Any, window: int, phase: int) -> None:
        self.inner, self.window, self.phase = inner, window, phase

    def tracked(self, step: int) -> bool:
        return (step // self.window) % 2 == self.phase

    def record(self, record: ProgressRecord) -> None:
        if record.type is not RecordType.PROGRESS or self.tracked(record.step):
            self.inner.record(record)

    def close(self, timeout: float = 30.0) -> None:
        self.inner.close(timeout)


def window_rates(marks: list[tuple[float, int, float]], window: int, warmup: int, skip: int) -> dict[int, float]:
    """tokens/s of each whole window after the warm-up, its first `skip` steps left out (the sender's
    last batch of the window before may still be in flight then)."""
    last = max(m[1] for m in marks)
    rates = {}
    for k in range(warmup // window + 1, last // window):
        inside = [m for m in marks if k * window + skip <= m[1] < (k + 1) * window]
        if len(inside) >= 2:
            (t0, _, n0), (t1, _, n1) = inside[0], inside[-1]
            rates[k] = (n1 - n0) / (t1 - t0)
    return rates


def stage_run(
    root: Path, steps: int, out: str, uri: str | None, window: int | None = None, phase: int = 0
) -> tuple[Recorder, Any, Any, float]:
    """One stage run whose records reach a Recorder and, with `uri`, an MlflowTracker (with `window`
    only in alternate windows, `Windowed`): the recorder, the tracker (None untracked), the stage's
    outcome, and the seconds of the flush at the end."""
    from lmforge.api.contract import StageName
    from lmforge.trainer.context import StageContext
    from lmforge.trainer.pretrain.stage import run
    from lmforge.trainer.progress import ProgressReporter
    from lmforge.trainer.tracking import Trackers, run_info
    from lmforge.trainer.tracking.mlflow import MlflowTracker

    spec = bench_spec(root, steps, False, out)
    recorder = Recorder()
    mlflow = MlflowTracker(uri, run_info(spec)) if uri else None
    sinks: list[Any] = [recorder]
    if mlflow is not None:
        sinks.append(mlflow if window is None else Windowed(mlflow, window, phase))
    trackers = Trackers(sinks)
    reporter = ProgressReporter(StageName.PRETRAIN, out, None, stream=io.StringIO(), tracker=trackers)
    outcome = run(StageContext.from_spec(spec, reporter))
    t0 = time.perf_counter()
    trackers.close(60.0)
    return recorder, mlflow, outcome, time.perf_counter() - t0


def paired_run(root: Path, steps: int, warmup: int, out: str, uri: str, window: int, phase: int) -> dict[str, Any]:
    """One tracked stage run whose tracked and untracked windows alternate: median tokens/s of each."""
    recorder, mlflow, _, _ = stage_run(root, steps, out, uri, window, phase)
    gate = Windowed(None, window, phase)
    rates = window_rates(recorder.marks, window, warmup, skip=2)
    on = [r for k, r in rates.items() if gate.tracked(k * window)]
    off = [r for k, r in rates.items() if not gate.tracked(k * window)]
    return {"on": on, "off": off, "failures": mlflow.failures, "dropped": mlflow.dropped}


def one_run(root: Path, steps: int, warmup: int, out: str, uri: str | None) -> dict[str, Any]:
    """One stage run (untracked when `uri` is None): steady tokens/s, threads, and the tracker's counts."""
    import torch

    threads = torch.get_num_threads()
    recorder, mlflow, outcome, flush_s = stage_run(root, steps, out, uri)
    return {
        "tokens_per_second": recorder.steady(warmup),
        "stage_tokens_per_second": float(outcome.metrics["tokens_per_second"]),
        "threads": threads,
        "threads_after": torch.get_num_threads(),
        "flush_s": flush_s,
        "failures": mlflow.failures if mlflow else 0,
        "dropped": mlflow.dropped if mlflow else 0,
        "steps": steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=20, help="first steps left out of the steady state")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of (untracked, tracked), order alternating")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads, both sides")
    parser.add_argument("--uri", help="an MLflow server of your own (default: start one here, SQLite)")
    parser.add_argument(
        "--paired",
        type=int,
        metavar="WINDOW",
        help="instead: one tracked run per round whose records reach MLflow only in every other window of "
        "WINDOW steps; tracked vs untracked windows of the same run (no run-to-run drift)",
    )
    args = parser.parse_args()
    import torch

    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    print(
        f"cores {len(os.sched_getaffinity(0))}, torch threads {torch.get_num_threads()} (pinned, both sides), "
        f"load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {args.steps} steps of {MICRO * SEQ} tokens per run, "
        f"first {args.warmup} left out"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["LMFORGE_CACHE"] = str(root / "cache")
        make_inputs(root, args.steps * MICRO + 64 + MICRO)
        server = None
        uri = args.uri
        if uri is None:
            from support.mlflow import MlflowServer, find_mlflow_python, free_port

            python = find_mlflow_python()
            if python is None:
                sys.exit("no MLflow server interpreter: see tests/support/mlflow.py")
            (root / "mlflow").mkdir()
            server = MlflowServer(python, root / "mlflow", free_port())
            server.start()
            uri = server.url
            print(f"MLflow server: {uri} (SQLite, on this machine)")
        try:
            one_run(root, min(args.steps, 2 * args.warmup + 5), args.warmup, "warm", None)  # caches, imports
            rounds = []
            if args.paired:
                for i in range(args.rounds):
                    got = paired_run(root, args.steps, args.warmup, f"paired-{i}", uri, args.paired, i % 2)
                    on, off = statistics.median(got["on"]), statistics.median(got["off"])
                    rounds.append(on / off)
                    print(
                        f"round {i + 1} ({'tracked' if i % 2 == 0 else 'untracked'} windows first, load "
                        f"{os.getloadavg()[0]:.2f}): {len(got['off'])} untracked windows median {off:7.0f} "
                        f"tokens/s ({min(got['off']):.0f}-{max(got['off']):.0f}), {len(got['on'])} tracked "
                        f"windows median {on:7.0f} ({min(got['on']):.0f}-{max(got['on']):.0f}), ratio "
                        f"{on / off:.4f}; {got['failures']} failed requests, {got['dropped']} dropped",
                        flush=True,
                    )
                    assert torch.get_num_threads() == args.threads
                if server is not None:  # the tracked windows' records are really there, and only they
                    runs = {r["name"]: r for r in server.query("runs")}
                    for i in range(args.rounds):
                        gate = Windowed(None, args.paired, i % 2)
                        want = [st for st in range(1, args.steps + 1) if gate.tracked(st)]
                        assert [st for st, _ in runs[f"paired-{i}"]["metrics"]["loss"]] == want, f"paired-{i}"
                    print(f"MLflow has the tracked windows' losses of the {args.rounds} runs, and no other step's")
            for i in range(0 if args.paired else args.rounds):
                order = [None, uri] if i % 2 == 0 else [uri, None]
                got = {}
                for side in order:
                    name = f"{'tracked' if side else 'plain'}-{i}"
                    got["tracked" if side else "plain"] = one_run(root, args.steps, args.warmup, name, side)
                p, t = got["plain"], got["tracked"]
                ratio = t["tokens_per_second"] / p["tokens_per_second"]
                rounds.append(ratio)
                first = "untracked" if order[0] is None else "tracked"
                print(
                    f"round {i + 1} ({first} first, load {os.getloadavg()[0]:.2f}): "
                    f"untracked {p['tokens_per_second']:7.0f} tokens/s ({p['threads']} threads), "
                    f"tracked {t['tokens_per_second']:7.0f} tokens/s ({t['threads']} threads), "
                    f"ratio {ratio:.4f}; flush at the end {t['flush_s']:.2f} s, "
                    f"{t['failures']} failed requests, {t['dropped']} dropped"
                )
                assert p["threads"] == t["threads"] == p["threads_after"] == t["threads_after"] == args.threads
            if server is not None and not args.paired:  # what was tracked is there: every step's loss
                runs = {r["name"]: r for r in server.query("runs")}
                for i in range(args.rounds):
                    losses = runs[f"tracked-{i}"]["metrics"]["loss"]
                    assert [st for st, _ in losses] == list(range(1, args.steps + 1)), f"tracked-{i}: {len(losses)}"
                print(f"MLflow has every step's loss of the {args.rounds} tracked runs (read back with MlflowClient)")
        finally:
            if server is not None:
                server.stop()
    overhead = [1 - r for r in rounds]
    print(
        f"tracking overhead: median {statistics.median(overhead):+.2%} of tokens/s; slowest round "
        f"{max(overhead):+.2%}; spread {min(overhead):+.2%} .. {max(overhead):+.2%} (goal <= 2%)"
    )


if __name__ == "__main__":
    main()
