"""One logger setup for every rstar process (rich on a terminal, JSON lines with RSTAR_LOG_JSON=1)."""

from __future__ import annotations

import json
import logging
import os
import sys
import time


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "t": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


_configured = False


def get_logger(name: str = "rstar") -> logging.Logger:
    """The project logger; configures the root handler once (level from RSTAR_LOG_LEVEL)."""
    global _configured
    if not _configured:
        _configured = True
        level = os.environ.get("RSTAR_LOG_LEVEL", "INFO").upper()
        root = logging.getLogger("rstar")
        root.setLevel(level)
        if os.environ.get("RSTAR_LOG_JSON") == "1":
            handler: logging.Handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(_JsonFormatter())
        else:
            from rich.console import Console
            from rich.logging import RichHandler

            # stderr, so logs never mix into a command's --json output on stdout
            handler = RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=False)
        root.addHandler(handler)
        root.propagate = False
    return logging.getLogger(name if name.startswith("rstar") else f"rstar.{name}")


class timed:
    """Context manager that logs a step slower than ``slow_s`` with its duration."""

    def __init__(self, log: logging.Logger, what: str, slow_s: float = 1.0):
        self.log, self.what, self.slow_s = log, what, slow_s

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.elapsed = time.perf_counter() - self.t0
        if self.elapsed >= self.slow_s:
            self.log.info("%s took %.2fs", self.what, self.elapsed)
        return False
