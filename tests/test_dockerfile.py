"""The Dockerfile builds what we ship (no Docker engine here, so the checks are static): both
targets exist, every COPY source exists and is not excluded by .dockerignore, the operator image
installs no ML stack, and both images end as a non-root user."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEXT = (REPO / "Dockerfile").read_text()
STAGES = {name: image for image, name in re.findall(r"^FROM\s+(\S+)\s+AS\s+(\S+)", TEXT, flags=re.M | re.I)}
"""Build target name → base image."""


def _stage_body(name: str) -> str:
    parts = re.split(r"^FROM\s+", TEXT, flags=re.M)
    return next(p for p in parts if re.match(rf"\S+\s+AS\s+{name}\b", p, flags=re.I))


def test_both_targets_exist() -> None:
    assert {"operator", "trainer"} <= set(STAGES), STAGES
    assert "cuda" in STAGES["trainer"]
    assert "slim" in STAGES["operator"]


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
    body = _stage_body("operator")
    assert "[operator]" in body
    for heavy in ("torch", "deepspeed", "[trainer]", "cuda"):
        assert heavy not in body.lower(), heavy
    trainer = _stage_body("trainer")
    assert "[trainer]" in trainer and "deepspeed" in trainer


def test_images_run_as_non_root() -> None:
    for name in ("operator", "trainer"):
        users = re.findall(r"^USER\s+(\S+)", _stage_body(name), flags=re.M)
        assert users and not users[-1].startswith(("0", "root")), (name, users)
