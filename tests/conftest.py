"""Fixtures shared by the whole suite. Area-specific fixtures live beside their tests."""

from __future__ import annotations

import pytest

from broker.server import start_server
from rstar.config import load_config


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A random 2-layer Llama with a small byte-level BPE tokenizer, built once per session."""
    from tiny_model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture
def nats_server(tmp_path):
    """A fresh nats-server with JetStream on a free port and a temp store dir."""
    srv = start_server(tmp_path / "nats")
    yield srv
    srv.stop()


@pytest.fixture
def broker_cfg(nats_server, tmp_path):
    return load_config(overrides=[f'broker.url="{nats_server.url}"', f'data_dir="{tmp_path}"'], env={})
