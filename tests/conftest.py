"""Shared fixtures. Tests run on the CPU unless marked `gpu`."""

import os
from pathlib import Path

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
os.environ.setdefault("DGM_DEVICE", "cpu")
# no progress bars in the kernels tests start (nbclient, nbval)
os.environ.setdefault("DGM_PROGRESS", "0")
ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(
        reason="needs a CUDA device (run `pytest -m gpu` on a GPU machine)"
    )
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """The course's models are small: one thread is faster than two, and much faster on
    a shared 2-core machine (the pages and notebooks set the same)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def root() -> Path:
    return ROOT
