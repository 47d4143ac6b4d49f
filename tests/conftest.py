"""Shared fixtures: one model cache for the whole session, small real images."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from suite_rules import pytest_addoption, pytest_configure, reap_all_children, reap_children  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory) -> Path:
    """Exported models are cached per session, never in the user's ~/.cache."""
    cache = tmp_path_factory.mktemp("stylerun-cache")
    old = os.environ.get("STYLERUN_CACHE")
    os.environ["STYLERUN_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("STYLERUN_CACHE", None)
    else:
        os.environ["STYLERUN_CACHE"] = old


@pytest.fixture(scope="session")
def content_path() -> Path:
    return EXAMPLES / "chelsea.jpg"


@pytest.fixture(scope="session")
def shipwreck() -> Path:
    """A second painting, for blends and regions."""
    return EXAMPLES / "shipwreck.jpg"


@pytest.fixture(scope="session")
def style_path() -> Path:
    return EXAMPLES / "starry_night.jpg"


@pytest.fixture(scope="session")
def bundled_weights():
    from stylerun.weights.bundled import load_bundled

    return load_bundled()


@pytest.fixture(scope="session")
def shallow_model(tmp_path_factory, bundled_weights) -> Path:
    """A model exported once for the session for the shallow layers (`helpers.SHALLOW`), max pooling."""
    from helpers import shallow_layers

    from stylerun.network.export import export_vgg

    path = tmp_path_factory.mktemp("models") / "shallow.onnx"
    export_vgg(bundled_weights, shallow_layers(), path)
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)

