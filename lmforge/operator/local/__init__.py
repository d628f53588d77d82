"""The local backend: turns the reconcilers' `StageRun`s into processes on this machine.

It knows *how* to run a stage (a subprocess of `python -m lmforge.trainer`, torchrun for several
processes, indexed workers, retries, clean stops); *what* runs is decided by the reconcilers.
"""

from lmforge.operator.local.backend import LocalBackend
from lmforge.operator.local.process import Attempt

__all__ = ["Attempt", "LocalBackend"]
