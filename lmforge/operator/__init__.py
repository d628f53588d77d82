"""The operator: pure reconcilers that decide, backends that act (Kubernetes, local processes), and
the kopf wiring. Nothing here imports torch."""
