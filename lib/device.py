"""Where tensors live, and how runs are made repeatable.

Everything in `lib` works on whatever device its inputs are on; this module only picks a
sensible default for new tensors and models.
"""

import os
import random

import numpy as np
import torch

from lib.checks import nonnegative_int


def default_device() -> torch.device:
    """The fastest device present: CUDA, then Apple's MPS, then the CPU.

    Set the environment variable ``DGM_DEVICE`` (``cpu``, ``cuda``, ``cuda:1``, ``mps``)
    to choose one yourself; the book and the tests run on the CPU unless told otherwise.
    """
    chosen = os.environ.get("DGM_DEVICE")
    if chosen:
        return torch.device(chosen)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if (
        getattr(torch.backends, "mps", None) is not None
        and torch.backends.mps.is_available()
    ):
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and PyTorch (all devices); return a CPU generator with that
    seed.

    On the CPU the same seed gives the same numbers run after run, which is what lets the
    book and the tests agree.
    """
    nonnegative_int("seed", seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
