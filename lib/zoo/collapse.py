"""Chapter 06's trained VAEs (book/06-posterior-collapse.md): "collapse/<name>" for
each of `VARIANTS`.

The book's comparison: one recipe (`RECIPE`: the same seed, the same number of optimiser
steps, AdamW) for every variant, trained by `train_variant` (about 4 minutes of one CPU
core for all six). The history has the training "loss" per step, "cpu_seconds", and per
round of ``RECIPE["every"]`` steps the validation "step", "val" (-ELBO), "val_kl",
"val_mi" and "val_au"; the aggressive variant also "mi" and "switch".
"""

from __future__ import annotations

import time
from functools import partial

import torch
from tqdm.auto import tqdm

from lib.checks import one_of, positive_int
from lib.collapse import (
    active_units,
    collapse_loss,
    fit_aggressive,
    kl_anneal,
    kl_per_dim,
    make_vae,
    mutual_information,
)
from lib.data import digits
from lib.device import seeded
from lib.train import BestWeights, fit, show_progress
from lib.vae import validation_neg_elbo
from lib.zoo import Model

RECIPE = dict(
    steps=3000,
    every=100,
    batch_size=100,
    lr=3e-3,
    weight_decay=0.1,
    seed=0,
    latent_dim=16,
)

VARIANTS = {
    # name: (decoder, remedy, settings)
    "factorised": ("factorised", "elbo", {}),
    "plain": ("autoregressive", "elbo", {}),
    "lambda": ("autoregressive", "lambda", {"weight": 0.5}),
    "anneal": ("autoregressive", "anneal", {"warmup": 1000, "start": 0.1}),
    "free-bits": ("autoregressive", "free-bits", {"floor": 0.25}),
    "aggressive": ("autoregressive", "aggressive", {}),
}


def build(name: str):
    """The untrained VAE of the variant ``name``."""
    decoder = VARIANTS[one_of("name", name, VARIANTS)][0]
    return make_vae(decoder, latent_dim=RECIPE["latent_dim"], seed=RECIPE["seed"])


class _Tracker:
    """Measures a model on validation images after each round of training and keeps the
    weights with the best validation -ELBO (early stopping by model selection, inside a
    fixed budget)."""

    def __init__(self, model, x_val, seed):
        self.model, self.x_val, self.seed = model, x_val, seed
        self.rows, self.best = [], BestWeights(model)

    def __call__(self, step):
        model = self.model
        model.eval()
        with torch.no_grad():
            generator = torch.Generator(device=self.x_val.device).manual_seed(self.seed)
            mu, logvar = model.encode(self.x_val)
            kl = kl_per_dim(mu, logvar).sum().item()
            mi = mutual_information(mu, logvar, generator=generator).item()
            val = validation_neg_elbo(model, self.x_val, samples=5, seed=self.seed).item()
        self.rows.append((step, val, kl, mi, active_units(mu)))
        self.best.update(val)
        model.train()

    def finish(self, history: dict) -> dict:
        self.best.restore()
        self.model.eval()
        rows = torch.tensor(self.rows, dtype=torch.float32).reshape(-1, 5)
        history = {k: v for k, v in history.items()}
        for k, name in enumerate(("step", "val", "val_kl", "val_mi", "val_au")):
            history[name] = rows[:, k]
        return history


def train_variant(
    name: str, *, steps: int | None = None, x=None, x_val=None, progress=None
):
    """Train one of the book's `VARIANTS` with `RECIPE` (``steps`` overrides its budget)
    on the binarised training digits. Every ``RECIPE["every"]`` steps the validation
    -ELBO, KL, MI and active units are recorded, and the model ends with the weights of
    its best validation -ELBO. The global random state (dropout, the samples z) is
    seeded with ``RECIPE["seed"]`` for the run and restored afterwards, so a run is
    repeatable on the CPU. Returns ``(model, history)``."""
    one_of("name", name, VARIANTS)
    with seeded(RECIPE["seed"]):
        return _train_variant(name, steps, x, x_val, progress)


def _train_variant(name, steps, x, x_val, progress):

    decoder, remedy, settings = VARIANTS[name]
    steps = RECIPE["steps"] if steps is None else positive_int("steps", steps)
    x = digits("train", binarize=True)[0] if x is None else x
    x_val = digits("val", binarize=True)[0] if x_val is None else x_val
    model = build(name)
    every, seed = RECIPE["every"], RECIPE["seed"]
    start = time.process_time()
    tracker = _Tracker(model, x_val, seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=RECIPE["lr"], weight_decay=RECIPE["weight_decay"]
    )
    if remedy == "aggressive":
        history = fit_aggressive(
            model,
            x,
            x_val,
            steps=steps,
            batch_size=RECIPE["batch_size"],
            optimizer=optimizer,
            seed=seed,
            every=every,
            on_round=tracker,
            progress=progress,
        )
        return model, tracker.finish(
            {**history, "cpu_seconds": torch.tensor(time.process_time() - start)}
        )
    step = 0

    def loss(xb):
        nonlocal step
        if remedy == "anneal":
            weight = kl_anneal(step, settings["warmup"], start=settings["start"])
        else:
            weight = settings.get("weight", 1.0)
        step += 1
        return collapse_loss(model, xb, weight=weight, floor=settings.get("floor"))

    losses = []
    for k in tqdm(
        range(steps // every), desc=name, disable=not show_progress(progress), leave=False
    ):
        losses.append(
            fit(
                model,
                x,
                steps=every,
                batch_size=RECIPE["batch_size"],
                loss=loss,
                optimizer=optimizer,
                seed=seed + k,
                progress=False,
            )["loss"]
        )
        tracker((k + 1) * every)
    return model, tracker.finish(
        {
            "loss": torch.cat(losses),
            "cpu_seconds": torch.tensor(time.process_time() - start),
        }
    )


MODELS = {
    name: Model(partial(build, name), partial(train_variant, name), half=True)
    for name in VARIANTS
}
