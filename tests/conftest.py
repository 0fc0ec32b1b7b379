"""Shared fixtures: every test session gets its own cache folder, never the user's ``cache/``."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory: pytest.TempPathFactory):
    """Point pai_core.cache at a throw-away folder shared by the session (so tests reuse features)."""
    old = os.environ.get("PAI_CACHE_DIR")
    os.environ["PAI_CACHE_DIR"] = str(tmp_path_factory.mktemp("pai-cache"))
    yield
    if old is None:
        os.environ.pop("PAI_CACHE_DIR", None)
    else:
        os.environ["PAI_CACHE_DIR"] = old


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """A cache folder of the test's own (for tests about the cache itself)."""
    monkeypatch.setenv("PAI_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"
