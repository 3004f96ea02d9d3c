"""Deterministic kill points for the crash-and-resume tests: ``MINILLAVA_FAULT=<point>:<n>``.

``fault_point(name)`` does nothing unless that variable names the point; then, the n-th time this process reaches
it, the process sends itself SIGKILL — no cleanup, no ``finally``, no flush, like a power cut or the OOM killer.
The points are placed where an interruption is most likely to lose or duplicate work (mid-step, mid-checkpoint,
mid-download ...); ``tests/test_kill_resume.py`` kills a run at each one and checks that resuming loses nothing.
"""

from __future__ import annotations

import os
import signal

_reached: dict[str, int] = {}


def fault_point(name: str) -> None:
    spec = os.environ.get("MINILLAVA_FAULT")
    if not spec or spec.partition(":")[0] != name:
        return
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] == int(spec.partition(":")[2] or 1):
        os.kill(os.getpid(), signal.SIGKILL)
