"""Data that needs no download.

`digits` is scikit-learn's bundled copy of the UCI handwritten digits: 1797 greyscale
images of 8x8 pixels with grey levels 0..16. Every chapter uses the same seeded split,
1000 train / 350 validation / 447 test, so likelihoods in nats per image (64 pixels) are
comparable across chapters.

`toy2d` generates the 2-D sets used to show mode-seeking, mode collapse and density fits.
"""

import math
from functools import lru_cache

import torch

from lib.checks import one_of, positive_int

SPLIT_SIZES = {"train": 1000, "val": 350, "test": 447}
SPLIT_SEED = 0
LEVELS = 17  # grey levels 0..16 in the digits data
IMAGE_SHAPE = (1, 8, 8)  # one channel, 8 x 8 pixels
PIXELS = 64


@lru_cache(maxsize=1)
def _digits_shuffled() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1)  # (1797, 1, 8, 8)
    y = torch.as_tensor(bunch.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(SPLIT_SEED))
    return x[order], y[order]


def digits(split: str = "train", *, binarize: bool = False, device=None):
    """Return ``(x, y)`` for one split of the digits.

    x: float32 tensor of shape (n, 1, 8, 8) holding grey levels 0..16, or 0/1 when
       ``binarize=True`` (a pixel is 1 when its level is at least 8, half of the range).
    y: long tensor of shape (n,) with the class labels 0..9.

    Use ``x.long()`` for a categorical (17-level) likelihood and ``x.flatten(1)`` for
    MLPs.
    """
    one_of("split", split, SPLIT_SIZES)
    x, y = _digits_shuffled()
    start = {"train": 0, "val": 1000, "test": 1350}[split]
    x, y = x[start : start + SPLIT_SIZES[split]], y[start : start + SPLIT_SIZES[split]]
    if binarize:
        x = (x >= LEVELS // 2).float()
    return x.to(device), y.to(device)


# ----------------------------------------------------------------------------------------
# Toy 2-D data


def toy2d_modes(name: str) -> torch.Tensor:
    """The centres of the Gaussian modes of a toy set: ``ring`` (8) or ``grid`` (25)."""
    if name == "ring":
        angle = torch.arange(8) * (2 * math.pi / 8)
        return torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    if name == "grid":
        axis = torch.tensor([-4.0, -2.0, 0.0, 2.0, 4.0])
        return torch.cartesian_prod(axis, axis)
    raise ValueError(f"name must be 'ring' or 'grid' to have modes, got {name!r}")


TOY2D_STD = {"ring": 0.01, "grid": 0.05}


def toy2d(name: str, n: int, *, seed: int = 0, device=None) -> torch.Tensor:
    """Draw ``n`` points of a toy 2-D set, as a float32 tensor of shape (n, 2).

    ring        8 Gaussians on the unit circle, std 0.01 (as in the PacGAN/VEEGAN studies)
    grid        25 Gaussians at {-4,-2,0,2,4}^2, std 0.05
    moons       scikit-learn's two moons, noise 0.05
    correlated  a zero-mean Gaussian with unit variances and correlation 0.9
    """
    positive_int("n", n)
    g = torch.Generator().manual_seed(seed)
    if name in TOY2D_STD:
        modes = toy2d_modes(name)
        which = torch.randint(len(modes), (n,), generator=g)
        x = modes[which] + TOY2D_STD[name] * torch.randn(n, 2, generator=g)
    elif name == "moons":
        from sklearn.datasets import make_moons

        points, _ = make_moons(n, noise=0.05, random_state=seed)
        x = torch.as_tensor(points, dtype=torch.float32)
    elif name == "correlated":
        cov = torch.tensor([[1.0, 0.9], [0.9, 1.0]])
        x = torch.randn(n, 2, generator=g) @ torch.linalg.cholesky(cov).T
    else:
        raise ValueError(
            f"name must be one of 'ring', 'grid', 'moons', 'correlated', got {name!r}"
        )
    return x.to(device)


def bits_per_dim(nats_per_image, dims: int = 64):
    """Convert a negative log-likelihood in nats per image to bits per dimension,
    nats / (dims * ln 2); ``dims`` defaults to the 64 pixels of a digit."""
    positive_int("dims", dims)
    return nats_per_image / (dims * math.log(2))
