"""Fixtures shared by the test folders."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

FAKES = Path(__file__).with_name("fakes")


def _drop_vllm_modules(monkeypatch=None) -> None:
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        if monkeypatch is None:
            del sys.modules[name]
        else:
            monkeypatch.delitem(sys.modules, name)


@pytest.fixture
def fake_vllm(monkeypatch):
    """The CPU stand-in for vLLM of ``tests/fakes/vllm``, importable as ``vllm`` during the test (and
    found by ``importlib.util.find_spec``); removed again afterwards."""
    _drop_vllm_modules(monkeypatch)
    monkeypatch.syspath_prepend(str(FAKES))
    import vllm

    vllm.reset()
    yield vllm
    _drop_vllm_modules()
