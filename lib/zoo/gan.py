"""Chapter 08's trained GANs (book/08-gan.md), their generators stored (the
discriminators are not kept).

The ring and grid experiments (`TOY_EXPERIMENTS`): a GAN (pack 1) and a PacGAN2 (pack
2) per experiment and seed, "gan/<experiment>-pack<pack>-seed<seed>" (`toy_name`), 18
runs in all (`TOY_RUNS`). History: the losses and mean discriminator outputs "d_loss",
"g_loss", "d_real", "d_fake" as means over blocks of `TOY_HISTORY_EVERY` steps with
their "step" (the block's centre), "coverage" (modes covered, high-quality fraction) of
2500 samples right after training, and "snapshots", ``{step: 500 samples}`` on a fixed
noise batch during training.

The digits: "gan/digits-pack1" (GAN) and "gan/digits-pack2" (PacGAN2) on the digits
scaled to [-1, 1] (`lib.gan.digits_to_unit`). History: "d_loss" and "g_loss", means
over blocks of 100 steps.
"""

from __future__ import annotations

import math
from functools import partial

import torch

from lib.checks import one_of
from lib.data import PIXELS, digits, toy2d
from lib.gan import GAN, Training, digits_to_unit, mode_coverage, train_gan
from lib.zoo import Model

TOY_SEEDS = (0, 1, 2)
TOY_PACKS = (1, 2)  # 1: the plain GAN, 2: PacGAN2
# the data's standard deviation per coordinate
TOY_SCALE = {"ring": 1.0, "grid": 2.0 * math.sqrt(2.0)}
_MLPS = dict(latent_dim=2, hidden=128, depth=3, d_hidden=128, d_depth=2)
_GRID_TRAINING = Training(
    steps=20_000, batch_size=256, lr=1e-3, d_lr=2e-3, d_steps=2, schedule="cosine"
)
# name -> data set, model and training, the same for GAN and PacGAN2
TOY_EXPERIMENTS = {
    "ring": dict(
        data="ring",
        model=_MLPS,
        training=Training(steps=15_000, batch_size=256, lr=5e-4, schedule="cosine"),
    ),
    # a stronger discriminator than the ring's
    "grid": dict(data="grid", model=_MLPS, training=_GRID_TRAINING),
    "grid-bn": dict(
        data="grid", model=_MLPS | dict(batch_norm=True), training=_GRID_TRAINING
    ),
}
TOY_RUNS = [(e, p, s) for e in TOY_EXPERIMENTS for p in TOY_PACKS for s in TOY_SEEDS]
TOY_SNAPSHOTS = (0, 500, 1000, 2500, 5000)  # and the last step
# loss histories are stored as means over blocks of 100 steps
TOY_HISTORY_EVERY = 100


def toy_name(experiment: str, pack: int, seed: int) -> str:
    """The registry name of a toy run: ``"gan/<experiment>-pack<pack>-seed<seed>"``."""
    return f"gan/{experiment}-pack{pack}-seed{seed}"


def toy_gan(name: str, pack: int, seed: int) -> GAN:
    """The GAN (pack = 1) or PacGAN2 (pack = 2) of the experiment ``name`` in
    book/08-gan.md:
    "ring", "grid" or "grid-bn" (the grid with a batch-normalised generator)."""
    one_of("name", name, TOY_EXPERIMENTS)
    experiment = TOY_EXPERIMENTS[name]
    return GAN(
        2,
        **experiment["model"],
        pack=pack,
        scale=TOY_SCALE[experiment["data"]],
        seed=seed,
    )


def _block_means(history: dict, keys) -> dict:
    return {k: history[k].reshape(-1, TOY_HISTORY_EVERY).mean(1) for k in keys}


def train_toy_gan(name: str, pack: int, seed: int, *, progress=None):
    """Train one run of a toy experiment (a key of TOY_EXPERIMENTS) on 100 000 points
    (seed 123). Returns ``(model, history)``, the history as described above."""
    one_of("name", name, TOY_EXPERIMENTS)
    data, training = TOY_EXPERIMENTS[name]["data"], TOY_EXPERIMENTS[name]["training"]
    x = toy2d(data, 100_000, seed=123)
    model = toy_gan(name, pack, seed)
    history = train_gan(
        model,
        x,
        training,
        seed=seed,
        progress=progress,
        desc=f"{name} {pack}/{seed}",
        snapshots=(*TOY_SNAPSHOTS, training.steps),
    )
    cover = mode_coverage(
        model.sample(2500, generator=torch.Generator().manual_seed(seed)), data
    )
    record = _block_means(history, ("d_loss", "g_loss", "d_real", "d_fake"))
    record["step"] = (torch.arange(len(record["d_loss"])) + 0.5) * TOY_HISTORY_EVERY
    record["coverage"] = torch.tensor([cover["modes"], cover["high_quality"]])
    record["snapshots"] = history["snapshots"]
    return model, record


DIGITS_MODEL = dict(latent_dim=16, hidden=256, depth=2, out="tanh")
DIGITS_TRAINING = Training(steps=10_000, batch_size=64, lr=5e-4, schedule="cosine")


def digits_gan(pack: int = 1, seed: int = 0) -> GAN:
    """A GAN for the 8x8 digits, flattened to 64 values in [-1, 1] (`digits_to_unit`)."""
    return GAN(PIXELS, **DIGITS_MODEL, pack=pack, seed=seed)


def train_digits_gan(pack: int, *, progress=None):
    """Train a GAN (pack 1) or a PacGAN2 (pack 2) on the training digits; returns
    ``(model, history)``."""
    x = digits_to_unit(digits("train")[0])
    model = digits_gan(pack)
    history = train_gan(
        model, x, DIGITS_TRAINING, seed=0, progress=progress, desc=f"digits {pack}"
    )
    return model, _block_means(history, ("d_loss", "g_loss"))


MODELS = {
    toy_name(*run).removeprefix("gan/"): Model(
        partial(toy_gan, *run), partial(train_toy_gan, *run), part="generator"
    )
    for run in TOY_RUNS
} | {
    f"digits-pack{pack}": Model(
        partial(digits_gan, pack), partial(train_digits_gan, pack), part="generator"
    )
    for pack in TOY_PACKS
}
