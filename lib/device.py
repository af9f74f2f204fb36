"""Where tensors live, and how runs are made repeatable.

Everything in `lib` works on whatever device its inputs are on; this module picks a
sensible default for new tensors and models (`default_device`), and holds the one rule
for randomness (`seeded`).
"""

import os
from contextlib import contextmanager, nullcontext

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


@contextmanager
def seeded(seed: int, device=None):
    """The one rule for randomness in `lib`: a function that draws random numbers takes a
    ``seed`` (or a ``generator``) and leaves the global random state as it found it.

    Inside the block torch's global generators (the CPU's and every CUDA device's) are
    seeded with ``seed``, for what cannot take a generator (``nn.init``, dropout, the
    order of a shuffle inside a library); afterwards they are put back as they were.
    Yields a ``torch.Generator`` on ``device`` (default: the CPU) with the same seed,
    for the draws that can take one.
    """
    nonnegative_int("seed", seed)
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)  # the CPU and every CUDA device
        yield torch.Generator(device=device or "cpu").manual_seed(seed)


def drawing_from(generator: torch.Generator | None):
    """`seeded` with a seed drawn from ``generator``, for a function that takes a
    generator but calls code that cannot (``torch.distributions``' ``sample``); with
    None, nothing is seeded and the draws come from the global generators, as the
    caller asked."""
    if generator is None:
        return nullcontext()
    return seeded(int(torch.randint(2**62, (), generator=generator)))
