"""``rstar problems add`` as a real process, for the integration tests that drive it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

RSTAR = str(Path(sys.executable).parent / "rstar")


def problems_add(url: str, *args: str, timeout: float = 150) -> subprocess.CompletedProcess:
    """``rstar problems add ARGS`` against the broker at ``url``, with no RSTAR_* of the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RSTAR_")}
    return subprocess.run(
        [RSTAR, "problems", "add", *args, "--set", f'broker.url="{url}"'],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def last_json(proc: subprocess.CompletedProcess) -> dict:
    """The JSON object on the last line of a successful command's stdout."""
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
