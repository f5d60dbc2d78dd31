"""Helpers shared by the sandbox tests (tests/unit/test_sandbox.py, the escape suite in
tests/integration/test_sandbox_escape.py).

Import as ``from sandbox_helpers import start_pool``: pytest puts ``tests/`` on ``sys.path`` for
the root conftest.
"""

from __future__ import annotations

import pytest

from actors.sandbox import SandboxError, SandboxPool
from rstar.config import SandboxConfig


async def start_pool(cfg: SandboxConfig) -> SandboxPool:
    """A started pool; skips the test, with the reason, where strict isolation cannot be set up
    (not root, no CAP_SYS_ADMIN). Any other start failure is raised."""
    pool = SandboxPool(cfg)
    try:
        await pool.start()
    except SandboxError as e:
        if "isolation" in str(e):
            pytest.skip(f"strict sandbox isolation unavailable here: {e}")
        raise
    return pool
