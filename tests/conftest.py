"""Fixtures shared by the whole suite. Area-specific fixtures live beside their tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A random 2-layer Llama with a small byte-level BPE tokenizer, built once per session."""
    from rstar.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"))
