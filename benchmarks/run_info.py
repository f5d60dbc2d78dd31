"""The header every benchmark result carries: the command that made it, when, and on what.

``run_info()`` returns ``{"command", "date", "machine"}``; the scripts put it first in their
JSON so a file under ``docs/bench/`` says how to reproduce it. ``machine`` includes the load
average at the time of the call, since the figures depend on what else shares the cores.
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
from datetime import UTC, datetime


def run_info() -> dict:
    script = os.path.relpath(os.path.abspath(sys.argv[0]), os.path.dirname(os.path.dirname(__file__)))
    return {
        "command": shlex.join(["python", script, *sys.argv[1:]]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "arch": platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_1m": round(os.getloadavg()[0], 2),
        },
    }
