"""The examples apply to a real API server as users would apply them, and bad manifests are
rejected by the CRD schema with a message naming the field."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from .controlplane import ControlPlane
from .test_crds_apply import applied_crds  # noqa: F401  (fixture: CRDs applied and Established)

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.usefixtures("applied_crds")
@pytest.mark.parametrize("example", ["tiny", "cluster"])
def test_examples_apply_and_list_by_category(control_plane: ControlPlane, namespace: str, example: str) -> None:
    control_plane.kubectl("apply", "-n", namespace, "-f", str(REPO / "examples" / example))
    listed = control_plane.kubectl_json("get", "lmforge", "-n", namespace)
    kinds = sorted(item["kind"] for item in listed["items"])
    expected = {
        "tiny": ["AlignmentJob", "AlignmentJob", "Dataset", "EvalSuite", "ModelRelease", "PretrainJob"],
        "cluster": ["AlignmentJob", "Dataset", "EvalSuite", "ModelRelease", "PretrainJob"],
    }[example]
    assert kinds == expected
    # Short names work, and the apiserver fills the schema defaults users would expect.
    job = control_plane.kubectl_json("get", "ptj", "-n", namespace)["items"][0]
    assert job["spec"]["deepspeed"]["offloadOptimizer"] == "none"
    dataset = control_plane.kubectl_json("get", "lmds", "-n", namespace)["items"][0]
    assert dataset["spec"]["validationFraction"] >= 0 and "workers" in dataset["spec"]
    table = control_plane.kubectl("get", "pretrainjobs", "-n", namespace).stdout
    assert table.split("\n")[0].split()[:4] == ["NAME", "PHASE", "PROGRESS", "LOSS"]


def _apply_rejected(control_plane: ControlPlane, namespace: str, manifest: str) -> str:
    proc = control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=manifest, check=False)
    assert proc.returncode != 0, f"apiserver accepted a bad manifest:\n{proc.stdout}"
    return proc.stderr


BAD: list[tuple[str, str, list[str]]] = [
    ("negative-size", "seqLength: -5", ["spec.seqLength", "greater than or equal to 8"]),
    (
        "unknown-enum",
        "sources: [{name: a, uri: x, license: MIT, format: csv}]",
        ["spec.sources[0].format", "Unsupported value"],
    ),
    ("unknown-field", "seqLenght: 64", ["seqLenght"]),
    ("wrong-type", "workers: two", ["spec.workers", "integer"]),
    ("missing-required", "", ["spec.sources", "Required value"]),
]


@pytest.mark.usefixtures("applied_crds")
@pytest.mark.parametrize(("case", "extra", "expected"), BAD, ids=[b[0] for b in BAD])
def test_malformed_manifest_is_rejected_naming_the_field(
    control_plane: ControlPlane, namespace: str, case: str, extra: str, expected: list[str]
) -> None:
    sources = "" if case in ("missing-required", "unknown-enum") else "  sources: [{name: a, uri: x, license: MIT}]\n"
    manifest = (
        "apiVersion: lmforge.io/v1alpha1\nkind: Dataset\nmetadata: {name: bad}\nspec:\n"
        + sources
        + (f"  {extra}\n" if extra else "  {}\n" if not sources else "")
    )
    if case == "missing-required":
        manifest = "apiVersion: lmforge.io/v1alpha1\nkind: Dataset\nmetadata: {name: bad}\nspec: {seqLength: 64}\n"
    err = _apply_rejected(control_plane, namespace, manifest)
    for fragment in expected:
        assert fragment in err, err


@pytest.mark.usefixtures("applied_crds")
def test_status_is_a_subresource(control_plane: ControlPlane, namespace: str) -> None:
    """Users cannot set status through the main resource (the operator owns it)."""
    control_plane.kubectl("apply", "-n", namespace, "-f", str(REPO / "examples" / "tiny" / "01-dataset.yaml"))
    control_plane.kubectl(
        "patch", "-n", namespace, "dataset", "tiny-corpus", "--type=merge", "-p", '{"status": {"phase": "Succeeded"}}'
    )
    got: dict[str, Any] = control_plane.kubectl_json("get", "dataset", "tiny-corpus", "-n", namespace)
    assert got.get("status", {}).get("phase") != "Succeeded"
    with pytest.raises(subprocess.CalledProcessError):
        control_plane.kubectl(
            "patch",
            "-n",
            namespace,
            "dataset",
            "tiny-corpus",
            "--subresource=status",
            "--type=merge",
            "-p",
            '{"status": {"phase": "Bogus"}}',
        )
