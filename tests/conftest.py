"""Shared fixtures: locate ../shared beside the repo, run the CLI in-process."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"


@pytest.fixture(scope="module")
def single_thread():
    """Tiny tensors: one intra-op thread is faster and immune to CPU contention; restore afterwards.

    Also checks that no test in the module leaked a change of torch's global default dtype.
    """
    n = torch.get_num_threads()
    dtype = torch.get_default_dtype()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
    assert torch.get_default_dtype() == dtype, "a test changed the global default dtype"


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """Run ``memgeo ARGS`` in-process; returns (exit_code, stdout, stderr)."""
    from memgeo.cli import main

    def _run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["memgeo", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out = capsys.readouterr()
        return code, out.out, out.err

    return _run
