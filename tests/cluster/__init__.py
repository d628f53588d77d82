"""Tests against a real local Kubernetes control plane with fake GPU nodes (see controlplane.py)."""
