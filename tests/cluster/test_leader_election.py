"""Two operator replicas with leader election: one holds the Lease and reconciles, the other stands
by and does nothing; when the leader is killed (SIGKILL: no release of the Lease), the standby takes
the Lease once it expires and reconciles, and no child is made twice; a clean stop releases it."""

from __future__ import annotations

from typing import Any

from support.waiting import consistently

from .controlplane import ControlPlane, eventually
from .operator_harness import jobs, running_operator, wait_job

LEASE = "lmforge-operator"


def _dataset(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "lmforge.io/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": name},
        "spec": {"sources": [{"name": "s", "uri": "s3://b/x.jsonl", "license": "MIT"}]},
    }


def _holder(cp: ControlPlane, ns: str) -> str | None:
    status, body = cp.request("GET", f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{LEASE}")
    return (body.get("spec") or {}).get("holderIdentity") if status == 200 else None


def test_the_standby_takes_over_when_the_leader_dies(control_plane: ControlPlane, namespace: str) -> None:
    cp, ns = control_plane, namespace
    env = {
        "LMFORGE_LEADER_ELECTION": "1",
        "LMFORGE_LEADER_NAMESPACE": ns,
        "LMFORGE_LEADER_LEASE_SECONDS": "6",
        "LMFORGE_LEADER_RENEW_SECONDS": "2",
    }
    with running_operator(cp, ns, env={**env, "POD_NAME": "op-a"}) as a:
        eventually(lambda: _holder(cp, ns) == "op-a", timeout=60, what="op-a holds the Lease", abort=a.dead)
        with running_operator(cp, ns, store=a.store, env={**env, "POD_NAME": "op-b"}) as b:
            eventually(lambda: "held by op-a" in b.tail(), timeout=60, what="op-b stands by", abort=b.dead)
            cp.apply(_dataset("first"), namespace=ns)
            first = wait_job(cp, a, ns, "lmforge.io/dataset=first")
            # The standby stays standby: it never reconciles, so the Lease keeps its holder.
            consistently(lambda: _holder(cp, ns) == "op-a" and b.dead() is None, duration=5, what="op-a leads")

            assert a.proc is not None
            a.proc.kill()
            a.proc.wait()
            eventually(lambda: _holder(cp, ns) == "op-b", timeout=60, what="op-b takes the Lease", abort=b.dead)
            cp.apply(_dataset("second"), namespace=ns)
            wait_job(cp, b, ns, "lmforge.io/dataset=second")
            # The new leader re-reconciles `first` and finds its Job: nothing is created twice.
            consistently(
                lambda: (
                    [j["metadata"]["name"] for j in jobs(cp, ns, "lmforge.io/dataset=first")]
                    == [first["metadata"]["name"]]
                ),
                duration=5,
                what="one Job for `first`",
            )
            assert "leader: this replica (op-b)" in b.log.read_text(errors="replace")
            b.stop()  # SIGTERM: a clean stop gives the Lease up for the next replica at once
            assert _holder(cp, ns) is None
