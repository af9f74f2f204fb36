"""Chapter 10's trained diffusion models (book/10-diffusion.md): "diffusion/ring-seed<k>"
and "diffusion/grid-seed<k>" for the seeds of `TOY_SEEDS` (100 000 points of the toy
set, seed 123, as chapter 8), and "diffusion/digits" (the training digits, early
stopping on the validation split). Each is trained by `train_reference` with its
`CONFIGS` recipe. History: "loss" per step and "cpu_seconds"; the digits model also
"step" and "val" (-ELBO on a 100-step chain) per round of 2000 steps.
"""

from __future__ import annotations

import math
from functools import partial

from lib.checks import one_of
from lib.data import digits, toy2d
from lib.diffusion import Diffusion, train_diffusion
from lib.zoo import Model

TOY_SEEDS = (0, 1, 2)
# the data's standard deviation per coordinate
TOY_SCALE = {"ring": 1 / math.sqrt(2), "grid": 2 * math.sqrt(2)}
CONFIGS = {
    # name: model arguments, training arguments
    **{
        name: (
            dict(
                event_shape=(2,),
                scale=scale,
                steps=1000,
                schedule="linear",
                hidden=128,
                depth=2,
            ),
            dict(steps=8000, batch_size=512, lr=2e-3),
        )
        for name, scale in TOY_SCALE.items()
    },
    "digits": (
        dict(
            event_shape=(1, 8, 8),
            levels=17,
            steps=1000,
            schedule="linear",
            hidden=256,
            depth=3,
        ),
        dict(steps=20_000, batch_size=128, lr=1e-3, every=2000),
    ),
}


def build(name: str, seed: int = 0) -> Diffusion:
    """An untrained model of the book's experiment ``name`` ("ring", "grid" or
    "digits")."""
    one_of("name", name, CONFIGS)
    return Diffusion(**CONFIGS[name][0], seed=seed)


def train_reference(name: str, seed: int = 0, *, progress=None) -> tuple[Diffusion, dict]:
    """Train one of the book's models with its `CONFIGS` recipe; returns ``(model,
    history)``."""
    model = build(name, seed)
    if name == "digits":
        x, x_val = digits("train")[0], digits("val")[0]
    else:
        x, x_val = toy2d(name, 100_000, seed=123), None
    history = train_diffusion(
        model,
        x,
        **CONFIGS[name][1],
        x_val=x_val,
        seed=seed,
        progress=progress,
        desc=f"{name} {seed}",
    )
    return model, history


MODELS = {
    f"{name}-seed{seed}": Model(
        partial(build, name, seed), partial(train_reference, name, seed)
    )
    for name in TOY_SCALE
    for seed in TOY_SEEDS
} | {
    "digits": Model(
        partial(build, "digits"), partial(train_reference, "digits"), half=True
    )
}
