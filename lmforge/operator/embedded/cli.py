"""`lmforge run`, `lmforge status`, `lmforge logs` and `lmforge chat`: the embedded runner's commands."""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from lmforge.api.release import Serving
from lmforge.operator.embedded.state import DEFAULT_STORE, Locked, RunnerState, StateFile, state_dir_for
from lmforge.operator.embedded.view import age, figures, ready_message

if TYPE_CHECKING:
    from lmforge.api.validation import Manifest
    from lmforge.operator.embedded.runner import Runner
    from lmforge.operator.embedded.state import ResourceState
    from lmforge.operator.embedded.view import View

EXIT_FAILED = 1
EXIT_LOCKED = 3
EXIT_INTERRUPTED = 130


def _state_file(store: str) -> tuple[StateFile, str, str | None]:
    from lmforge.store import open_store

    uri = open_store(store).uri
    directory, note = state_dir_for(uri)
    return StateFile(directory, uri), uri, note


def cmd_run(args: argparse.Namespace) -> int:
    """Validate, order, and drive the manifests to a served model."""
    from lmforge.api.validation import dependency_order, validate_paths

    manifests, problems = validate_paths(args.paths)
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_FAILED
    ordered_resources = dependency_order([m.resource for m in manifests])
    by_id = {id(m.resource): m for m in manifests}
    ordered: list[Manifest] = [by_id[id(r)] for r in ordered_resources]
    state_file, uri, note = _state_file(args.store)
    try:
        state_file.acquire()
    except Locked as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    try:
        return _run_locked(args, ordered, state_file, uri, note)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            print(
                f"error: the disk is full ({exc.filename or 'store'}): free some space, then `lmforge run` "
                "again; finished work is kept",
                file=sys.stderr,
            )
            return EXIT_FAILED
        raise
    finally:
        state_file.release()


def tracking_env(args: argparse.Namespace, state_dir: Path) -> dict[str, str]:
    """The stages' tracking variables: `--tracking-uri` over `$MLFLOW_TRACKING_URI`, and TensorBoard
    event files under `<store>/tensorboard` unless `$LMFORGE_TENSORBOARD_DIR` says elsewhere (or
    `--no-tensorboard`)."""
    out: dict[str, str] = {}
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        out["MLFLOW_TRACKING_URI"] = uri
    if not args.no_tensorboard:
        out["LMFORGE_TENSORBOARD_DIR"] = os.environ.get("LMFORGE_TENSORBOARD_DIR") or str(
            (state_dir.parent / "tensorboard").resolve()
        )
    return out


def _run_locked(
    args: argparse.Namespace, ordered: list[Manifest], state_file: StateFile, uri: str, note: str | None
) -> int:
    from lmforge.operator.aliases import AliasBackend
    from lmforge.operator.embedded.runner import Runner, RunOptions
    from lmforge.operator.embedded.view import JsonView, LiveView, QuietView
    from lmforge.operator.local import LocalBackend
    from lmforge.store import open_store

    view: View = JsonView() if args.output == "json" else QuietView() if args.quiet else LiveView()
    tracking = tracking_env(args, state_file.dir)
    runner: Runner | None = None
    backend = LocalBackend(
        open_store(uri),
        state_file.dir,
        max_parallel=args.parallel,
        on_change=lambda: runner.wake.set() if runner else None,
        env=tracking,
    )
    aliases = AliasBackend(tracking["MLFLOW_TRACKING_URI"]) if tracking.get("MLFLOW_TRACKING_URI") else None
    runner = Runner(
        ordered,
        uri,
        state_file,
        backend,
        RunOptions(serve=not args.no_serve),
        on_pass=view.update,
        on_event=view.event,
        aliases=aliases,
    )
    try:
        return _drive(args, runner, state_file, view, tracking, note)
    finally:
        if aliases is not None:
            aliases.close()


def _drive(
    args: argparse.Namespace,
    runner: Runner,
    state_file: StateFile,
    view: View,
    tracking: dict[str, str],
    note: str | None,
) -> int:
    from lmforge.operator.embedded.runner import Outcome

    uri = runner.store_uri
    if note:
        view.say(f"note: {note}")
    view.say(f"store: {uri}   logs: {state_file.dir / 'logs'}")
    if tracking.get("MLFLOW_TRACKING_URI"):
        view.say(f"tracking: MLflow at {tracking['MLFLOW_TRACKING_URI']}")
    if tracking.get("LMFORGE_TENSORBOARD_DIR"):
        view.say(f"tensorboard: tensorboard --logdir {tracking['LMFORGE_TENSORBOARD_DIR']}")
    view.start()
    try:
        outcome = runner.run()
    finally:
        view.stop()
    if outcome is Outcome.INTERRUPTED:
        view.say("interrupted: running stages were stopped; finished work is kept. `lmforge run` again resumes.")
        return EXIT_INTERRUPTED
    _write_report(runner.state, state_file, view, tracking)
    if outcome is Outcome.FAILED:
        for k in runner.state.order:
            rs = runner.state.resources[k]
            if rs.status.phase.value == "Failed":
                logs = [str(state_file.log_path(n)) for n in rs.runs if state_file.log_path(n).exists()]
                where = f"; log: {logs[-1]}" if logs else ""
                view.say(f"{k} failed: {ready_message(rs.status)}{where}", error=True)
        return EXIT_FAILED
    serving = [
        runner.state.resources[k]
        for k in runner.state.order
        if runner.state.resources[k].status.phase.value == "Serving"
    ]
    for rs in serving:
        endpoint = rs.status.endpoint or ""
        body = json.dumps(
            {"model": _served_name(rs), "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 32}
        )
        view.say(f"{rs.key} is serving at {endpoint}")
        view.say(f"  curl {endpoint}/chat/completions -H 'Content-Type: application/json' -d '{body}'")
        view.say(f"  or: lmforge chat {rs.name}" + ("" if args.store == DEFAULT_STORE else f" --store {args.store}"))
    if serving:
        view.say("serving until Ctrl-C")
        view.say(
            "edit the manifests to roll out a new version: the one serving keeps serving until the new "
            "one is Ready (and passed serving.smokeEvalSuiteRef, if set)"
        )
        runner.on_event = lambda k, e: (
            view.say(f"{k}: {e.reason}: {e.message}", error=e.type == "Warning")
            if e.reason in ROLLOUT_REASONS
            else view.event(k, e)
        )
        runner.serve_forever(manifest_watch(args.paths, view))
    else:
        runner.stop()
    return 0


ROLLOUT_REASONS = ("SmokeTesting", "Promoted", "RolledBack", "Deploying")
"""Events printed in every view while serving: which URL serves which version during a switch."""


def manifest_watch(paths: list[str], view: View) -> Callable[[], list[Manifest] | None]:
    """A function returning the manifests (in dependency order) once their files changed and still
    validate; None otherwise. A change that does not validate is reported once and ignored: what
    runs keeps running."""
    from lmforge.api.validation import dependency_order, manifest_files, validate_paths

    def stamp() -> dict[Path, int]:
        return {p: p.stat().st_mtime_ns for p in manifest_files(paths) if p.exists()}

    last = stamp()

    def changed() -> list[Manifest] | None:
        nonlocal last
        now = stamp()
        if now == last:
            return None
        last = now
        manifests, problems = validate_paths(paths)
        if problems:
            for problem in problems:
                view.say(f"error: {problem} (change ignored; what runs keeps running)", error=True)
            return None
        view.say("manifests changed: reconciling the new specs")
        by_id = {id(m.resource): m for m in manifests}
        return [by_id[id(r)] for r in dependency_order([m.resource for m in manifests])]

    return changed


def _served_name(rs: ResourceState) -> str:
    from lmforge.api.release import ModelRelease

    return ModelRelease.model_validate(rs.manifest).spec.serving.served_model_name or rs.name


def _write_report(state: RunnerState, state_file: StateFile, view: View, tracking: dict[str, str]) -> None:
    from lmforge.operator.embedded.report import write_report

    try:
        where = write_report(state, state_file, tracking)
        view.say(f"report: {where}")
    except Exception as exc:  # the report is a summary: never turn a finished run into a failure
        view.say(f"warning: could not write the report: {exc}", error=True)


def _load(store: str) -> tuple[StateFile, RunnerState | None]:
    state_file, _, _ = _state_file(store)
    return state_file, (state_file.load() if state_file.path.exists() else None)


def _find(state: RunnerState, name: str) -> str | None:
    if name in state.resources:
        return name
    found = [k for k, r in state.resources.items() if r.name == name or name in r.runs]
    return found[0] if found else None


def cmd_status(args: argparse.Namespace) -> int:
    """Every resource like `kubectl get`: phase, progress, key metric, age."""
    from rich.console import Console
    from rich.table import Table

    state_file, state = _load(args.store)
    if state is None:
        print(f"no runs recorded for the store {args.store} (state: {state_file.dir})", file=sys.stderr)
        return EXIT_FAILED
    active = state_file.active()
    if args.output == "json":
        print(
            json.dumps(
                {
                    "store": state.store,
                    "active": active,
                    "resources": {k: state.resources[k].status.wire() for k in state.order},
                },
                indent=2,
            )
        )
        return 0
    t = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("NAME", "PHASE", "PROGRESS", "LOSS", "KEY", "AGE", "MESSAGE"):
        t.add_column(col, no_wrap=col != "MESSAGE")
    for k in state.order:
        st = state.resources[k].status
        phase = st.phase.value
        if not active and phase in ("Running", "Serving"):
            phase = "Interrupted" if phase == "Running" else "Stopped"
        prog = st.progress
        percent = f"{prog.percent:.0f}%" if prog and prog.percent is not None else ""
        loss, _ = figures(st)
        message = st.endpoint if st.endpoint and phase == "Serving" else ready_message(st)
        t.add_row(k, phase, percent, loss, st.key_metric or "", age(state.resources[k].created), message)
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # a pipe: one line per resource, not wrapped columns
    console.print(t)
    if not active:
        print(f"(no `lmforge run` is active on {state.store})")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    """Print (and follow) the log of a resource's stage runs."""
    state_file, state = _load(args.store)
    found = _find(state, args.name) if state else None
    if state is None or found is None:
        print(f"error: no resource or run named {args.name!r} in the store {args.store}", file=sys.stderr)
        return EXIT_FAILED
    rs = state.resources[found]
    names = [args.name] if args.name in rs.runs else list(rs.runs)
    if args.stage:
        names = [n for n in names if rs.runs[n].stage == args.stage]
    paths = [state_file.log_path(n) for n in names if state_file.log_path(n).exists()]
    if not paths:
        print(f"{found} has no log yet", file=sys.stderr)
        return EXIT_FAILED
    for path in paths[:-1] if args.follow else paths:
        sys.stdout.write(path.read_text(encoding="utf-8", errors="replace"))
    if args.follow:
        _follow(paths[-1], state_file)
    return 0


def _follow(path: Path, state_file: StateFile) -> None:
    """`tail -f` until Ctrl-C or until no runner can write any more."""
    with path.open(encoding="utf-8", errors="replace") as f:
        idle = 0.0
        while True:
            line = f.readline()
            if line:
                sys.stdout.write(line)
                sys.stdout.flush()
                idle = 0.0
                continue
            if idle > 2.0 and not state_file.active():
                return
            time.sleep(0.25)
            idle += 0.25


def cmd_chat(args: argparse.Namespace) -> int:
    from lmforge.operator.embedded.chat import chat

    _, state = _load(args.store)
    found = _find(state, args.name) if state else None
    if state is None or found is None:
        print(f"error: no ModelRelease named {args.name!r} in the store {args.store}", file=sys.stderr)
        return EXIT_FAILED
    endpoint = state.resources[found].status.endpoint
    if not endpoint:
        print(f"error: {found} is not serving; run `lmforge run` on its manifests and keep it open", file=sys.stderr)
        return EXIT_FAILED
    # The key the runner gave the server: $LMFORGE_API_KEY, or the variable named after the Secret's key.
    serving = (state.resources[found].manifest.get("spec") or {}).get("serving") or {}
    ref = Serving.model_validate(serving).api_key_secret
    api_key = os.environ.get("LMFORGE_API_KEY") or (os.environ.get(ref.key) if ref is not None else None)
    if ref is not None and not api_key:
        print(f"error: {found} requires its API key: set ${ref.key} or $LMFORGE_API_KEY", file=sys.stderr)
        return EXIT_FAILED
    return chat(endpoint, max_tokens=args.max_tokens, api_key=api_key)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the embedded runner's subcommands to `lmforge`."""
    store_help = f"artifact store: a directory or s3://bucket/prefix (default: ./{DEFAULT_STORE})"
    p = sub.add_parser(
        "run",
        help="run manifests on this machine, from raw text to a served model",
        description="Validate the manifests, order them by their references and drive each "
        "through the operator's reconcilers, running every stage as a local "
        "process. Finished stages are never redone; an interrupted one resumes.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="manifest files or directories")
    p.add_argument("--store", default=DEFAULT_STORE, help=store_help)
    p.add_argument(
        "--no-serve", action="store_true", help="publish the release but do not start its server (it ends Succeeded)"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print only failures and the final lines")
    p.add_argument(
        "-o",
        "--output",
        choices=["text", "json"],
        default="text",
        help="json: one JSON object per line (status changes, events, messages)",
    )
    p.add_argument(
        "--tracking-uri",
        metavar="URI",
        default=None,
        help="MLflow tracking server of every stage run (default: $MLFLOW_TRACKING_URI)",
    )
    p.add_argument(
        "--no-tensorboard", action="store_true", help="do not write TensorBoard event files under <store>/tensorboard"
    )
    p.add_argument(
        "--parallel",
        type=int,
        default=1,
        metavar="N",
        help="stages that may run at once (default 1: stages share the cores)",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("status", help="show every resource of the last run (phase, progress, key metric, age)")
    p.add_argument("--store", default=DEFAULT_STORE, help=store_help)
    p.add_argument("-o", "--output", choices=["text", "json"], default="text", help="output format")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("logs", help="print a resource's stage log")
    p.add_argument("name", metavar="NAME", help="resource name (or Kind/name, or a run name)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing as the log grows")
    p.add_argument("--stage", help="only this stage's runs (e.g. compress or serve)")
    p.add_argument("--store", default=DEFAULT_STORE, help=store_help)
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("chat", help="chat with a served ModelRelease")
    p.add_argument("name", metavar="NAME", help="ModelRelease name")
    p.add_argument("--max-tokens", type=int, default=64, help="longest answer, in tokens")
    p.add_argument("--store", default=DEFAULT_STORE, help=store_help)
    p.set_defaults(func=cmd_chat)
