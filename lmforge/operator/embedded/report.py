"""The run report: `report.md` and `report.html` in the store, with loss-curve PNGs under `report/`.

It is built only from what the run left behind — the resources' statuses, the stage records the
backend kept (for the curves), and the published artifacts (dataset card, compression report) —
so it can be rebuilt at any time and says nothing the artifacts do not.
"""

from __future__ import annotations

import html
import json
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.api.meta import now_rfc3339
from lmforge.operator.embedded.state import ResourceState, RunnerState, StateFile
from lmforge.store import Store, StoreError, open_store, split_uri

CURVE_KINDS = ("PretrainJob", "AlignmentJob")


@dataclass
class Section:
    """A titled part of the report: paragraphs, a table and images, rendered to both formats."""

    title: str
    text: list[str] = field(default_factory=list)
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    images: list[tuple[str, str]] = field(default_factory=list)
    """(alt text, path relative to the report)."""


def _artifact_json(uri: str, name: str) -> dict[str, Any] | None:
    """`name` inside the artifact at `uri`, parsed, or None when absent/unreadable."""
    root, leaf = split_uri(uri)
    try:
        data: dict[str, Any] = json.loads(open_store(root).get_bytes(f"{leaf}/{name}"))
        return data
    except (StoreError, ValueError, OSError):
        return None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)[:120]
    return str(value)


def overview(state: RunnerState) -> Section:
    s = Section("Resources", header=["resource", "phase", "key metric", "run", "completed", "message"])
    for k in state.order:
        st = state.resources[k].status
        ready = st.condition("Ready")
        s.rows.append(
            [
                k,
                st.phase.value,
                st.key_metric or "",
                st.run_id or "",
                st.completed_at or "",
                ready.message if ready else "",
            ]
        )
    return s


def dataset_cards(state: RunnerState) -> list[Section]:
    out = []
    for k in state.order:
        rs = state.resources[k]
        card_uri = rs.status.artifacts.get("card")
        if rs.kind != "Dataset" or not card_uri:
            continue
        card = _artifact_json(card_uri, "card.json") or {}
        s = Section(
            f"Dataset card: {rs.name}",
            text=[str(card.get("summary", "")), f"Full card: {card_uri}/card.md"],
            header=["source", "licence", "read docs", "kept docs", "tokens"],
        )
        for src in card.get("sources", []):
            s.rows.append(
                [
                    str(src.get("name")),
                    str(src.get("license")),
                    str(src.get("read", {}).get("documents", "")),
                    str(src.get("kept", {}).get("documents", "")),
                    str(src.get("kept", {}).get("tokens", "")),
                ]
            )
        dropped = card.get("totals", {}).get("dropped", {})
        if dropped:
            s.text.append("Dropped documents: " + ", ".join(f"{r} {n}" for r, n in sorted(dropped.items())))
        out.append(s)
    return out


def curves(rs: ResourceState, state_file: StateFile) -> dict[str, list[list[float]]]:
    """Loss series of a resource's current run from the recorded progress (`loss`, `val_loss`…)."""
    series: dict[str, list[list[float]]] = {}
    for name, ref in rs.runs.items():
        if rs.status.run_id and not ref.output.endswith(rs.status.run_id):
            continue
        path = state_file.records_path(name)
        if not path.exists():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("type") != "progress":
                continue
            for metric, value in rec.get("metrics", {}).items():
                if metric == "loss" or metric.endswith("_loss"):
                    points = series.setdefault(metric, [])
                    if metric != "loss" and points and points[-1][1] == value:
                        continue  # validation loss repeats between evaluations
                    points.append([float(rec.get("step", 0)), float(value)])
    for points in series.values():
        points.sort()
    return {k: v for k, v in series.items() if v}


def _plot(series: dict[str, list[list[float]]], title: str, out: Path) -> bool:
    """Render in a child process (matplotlib brings numpy; the runner never loads it)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"title": title, "series": series}, f)
    proc = subprocess.run(
        [sys.executable, "-m", "lmforge.operator.embedded.plot", f.name, str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    Path(f.name).unlink(missing_ok=True)
    return proc.returncode == 0 and out.exists()


def training(state: RunnerState, state_file: StateFile, store: Store, tmp: Path) -> list[Section]:
    out = []
    for k in state.order:
        rs = state.resources[k]
        if rs.kind not in CURVE_KINDS:
            continue
        s = Section(
            f"Training: {k}",
            header=["metric", "value"],
            rows=[[m, _fmt(v)] for m, v in sorted(rs.status.metrics.items())],
        )
        series = curves(rs, state_file)
        png = tmp / f"loss-{rs.name}.png"
        if series and _plot(series, f"{k} loss", png):
            key = f"report/loss-{rs.name}.png"
            store.put_file(key, png)
            s.images.append((f"{k} loss curve", key))
        elif series:
            s.text.append("(loss curve not drawn: matplotlib is not available)")
        out.append(s)
    return out


def evaluations(state: RunnerState) -> list[Section]:
    out = []
    for k in state.order:
        rs = state.resources[k]
        if rs.kind != "EvalSuite":
            continue
        gate = rs.status.condition("GatePassed")
        results_uri = rs.status.artifacts.get("results")
        results = (_artifact_json(results_uri, "results.json") if results_uri else None) or {}
        intervals = {f"{t}.{m}": i for t, ms in (results.get("intervals") or {}).items() for m, i in ms.items()}
        s = Section(
            f"Evaluation: {k}",
            header=["metric", "value", "95% interval"],
            rows=[[m, _fmt(v), _interval(intervals.get(m))] for m, v in sorted(rs.status.metrics.items())],
        )
        if gate is not None:
            s.text.append(f"Gate {'passed' if gate.status.value == 'True' else 'FAILED'}: {gate.message}")
        for row in results.get("thresholds") or []:
            c = row.get("comparison")
            if isinstance(c, dict):
                verdict = {True: "significant", False: "within the noise", None: "noise unknown"}[c.get("significant")]
                s.text.append(
                    f"{row['threshold']}: difference {c['difference']:+.4g} "
                    f"[{c['low']:+.4g}, {c['high']:+.4g}], {verdict} ({c['method']}, {c['paired']} paired items)"
                )
        out.append(s)
    return out


def _interval(data: Any) -> str:
    """`low–high (method, n)` of a results.json interval, or empty."""
    if not isinstance(data, dict):
        return ""
    return f"{data['low']:.4g}–{data['high']:.4g} ({data['method']}, n={data['n']})"


def compression(state: RunnerState) -> list[Section]:
    out = []
    for k in state.order:
        rs = state.resources[k]
        if rs.kind != "ModelRelease":
            continue
        s = Section(f"Release: {k}", header=["figure", "value"])
        report_uri = rs.status.artifacts.get("report")
        report = _artifact_json(report_uri, "report.json") if report_uri else None
        for name, value in sorted((report or {}).items()):
            s.rows.append([name, _fmt(value)])
        for name, value in sorted(rs.status.metrics.items()):
            s.rows.append([name, _fmt(value)])
        if rs.status.endpoint:
            s.text.append(f"Served at {rs.status.endpoint}")
        if rs.status.adapters:
            s.text.append(f"LoRA adapters served (model names): {', '.join(rs.status.adapters)}")
        out.append(s)
    return out


def lineage(state: RunnerState) -> Section:
    s = Section("Lineage", header=["resource", "made from", "artifacts"])
    for k in state.order:
        rs = state.resources[k]
        made_from = list(reversed(rs.status.lineage))
        if rs.kind == "Dataset":
            sources = rs.manifest.get("spec", {}).get("sources", [])
            made_from = [f"{x.get('name')} ({x.get('uri')}, {x.get('license')})" for x in sources]
        s.rows.append(
            [k, " → ".join(made_from), ", ".join(f"{n}: {u}" for n, u in sorted(rs.status.artifacts.items()))]
        )
    return s


def tracking(env: Mapping[str, str]) -> list[Section]:
    """Where the same runs' curves are: TensorBoard's event files and the MLflow server, when the
    runner gave its stages either (`env`: the tracking variables it set)."""
    s = Section("Tracking")
    board = env.get("LMFORGE_TENSORBOARD_DIR")
    if board:
        s.text.append(
            f"TensorBoard event files, one directory per run id: {Path(board).as_uri()} "
            f"(open with `tensorboard --logdir {board}`)."
        )
    uri = env.get("MLFLOW_TRACKING_URI")
    if uri:
        s.text.append(
            f"MLflow: {uri} — one run per stage run, named after its run id, tagged with the "
            "resource's kind, name and namespace; a served ModelRelease is the `champion` version "
            "of its registered model (a candidate being smoke-tested is `challenger`)."
        )
    return [s] if s.text else []


def render_markdown(title: str, sections: list[Section]) -> str:
    out = [f"# {title}", ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        out += [t + "\n" for t in s.text if t]
        if s.header:
            out += ["| " + " | ".join(s.header) + " |", "|" + "---|" * len(s.header)]
            out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in s.rows]
            out.append("")
        out += [f"![{alt}]({path})\n" for alt, path in s.images]
    return "\n".join(out)


def render_html(title: str, sections: list[Section]) -> str:
    e = html.escape
    out = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>"
        "body{font-family:sans-serif;max-width:70em;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left;font-size:.9em}</style></head><body>",
        f"<h1>{e(title)}</h1>",
    ]
    for s in sections:
        out.append(f"<h2>{e(s.title)}</h2>")
        out += [f"<p>{e(t)}</p>" for t in s.text if t]
        if s.header:
            out.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in s.header) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in s.rows]
            out.append("</table>")
        out += [f"<p><img src='{e(path)}' alt='{e(alt)}'></p>" for alt, path in s.images]
    out.append("</body></html>")
    return "\n".join(out)


def write_report(state: RunnerState, state_file: StateFile, tracking_env: Mapping[str, str] | None = None) -> str:
    """Write report.md, report.html and the plots into the store; returns the HTML's URI."""
    store = open_store(state.store)
    with tempfile.TemporaryDirectory() as tmp:
        sections = [
            overview(state),
            *dataset_cards(state),
            *training(state, state_file, store, Path(tmp)),
            *evaluations(state),
            *compression(state),
            lineage(state),
            *tracking(tracking_env or {}),
        ]
    title = f"LMForge run report ({now_rfc3339()})"
    store.put_bytes("report.md", render_markdown(title, sections).encode())
    store.put_bytes("report.html", render_html(title, sections).encode())
    return store.url("report.html")
