"""Fixtures for tests against real services: a private nats-server per test."""

from __future__ import annotations

import pytest

from broker.server import start_server
from rstar.config import load_config


@pytest.fixture
def nats_server(tmp_path):
    """A fresh nats-server with JetStream on a free port and a temp store dir."""
    srv = start_server(tmp_path / "nats")
    yield srv
    srv.stop()


@pytest.fixture
def broker_cfg(nats_server, tmp_path):
    return load_config(overrides=[f'broker.url="{nats_server.url}"', f'data_dir="{tmp_path}"'], env={})
