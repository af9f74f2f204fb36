"""Chapter 04's trained VAEs (book/04-vae.md): "vae/<name>" for each name of
`REFERENCE_MODELS`.

One recipe (`RECIPE`) for all twelve: Adam, minibatches of 64, the validation -ELBO
every 100 steps, and the weights of the best one kept (early stopping with a patience of
20 rounds). The history has, per round, "step", "train" and "val".
"""

from __future__ import annotations

from functools import partial


from lib.checks import one_of
from lib.data import digits
from lib.device import seeded
from lib.train import fit_early_stopping
from lib.vae import CVAE, VAE, Autoencoder, validation_neg_elbo
from lib.zoo import Model

RECIPE = dict(steps=8000, every=100, patience=20, lr=1e-3, batch_size=64, seed=0)

REFERENCE_MODELS = {
    # name: (class, data, constructor arguments)
    "bernoulli": ("VAE", "binary", dict(likelihood="bernoulli", latent_dim=16)),
    "categorical": ("VAE", "levels", dict(likelihood="categorical", latent_dim=16)),
    "categorical-dense": (
        "VAE",
        "levels",
        dict(likelihood="categorical", latent_dim=16, pixel_features=0),
    ),
    "latent-2": ("VAE", "binary", dict(likelihood="bernoulli", latent_dim=2)),
    "latent-5": ("VAE", "binary", dict(likelihood="bernoulli", latent_dim=5)),
    "latent-10": ("VAE", "binary", dict(likelihood="bernoulli", latent_dim=10)),
    "latent-20": ("VAE", "binary", dict(likelihood="bernoulli", latent_dim=20)),
    "autoencoder-2": (
        "Autoencoder",
        "binary",
        dict(likelihood="bernoulli", latent_dim=2),
    ),
    "cvae": ("CVAE", "binary", dict(likelihood="bernoulli", latent_dim=2)),
    "gaussian-0.05": (
        "VAE",
        "scaled",
        dict(likelihood="gaussian", latent_dim=16, std=0.05),
    ),
    "gaussian-0.2": (
        "VAE",
        "scaled",
        dict(likelihood="gaussian", latent_dim=16, std=0.2),
    ),
    "gaussian-0.5": (
        "VAE",
        "scaled",
        dict(likelihood="gaussian", latent_dim=16, std=0.5),
    ),
}


def reference_data(kind: str, split: str, device=None):
    """The data a reference model sees: "binary" (pixels in {0, 1}), "levels" (0..16) or
    "scaled" (levels / 16, for the Gaussian decoder). Returns ``(x, y)``."""

    one_of("kind", kind, ("binary", "levels", "scaled"))
    x, y = digits(split, binarize=kind == "binary", device=device)
    return (x / 16 if kind == "scaled" else x), y


def build(name: str):
    """The untrained model ``name``."""
    cls, _, kwargs = REFERENCE_MODELS[one_of("name", name, REFERENCE_MODELS)]
    return {"VAE": VAE, "Autoencoder": Autoencoder, "CVAE": CVAE}[cls](**kwargs)


def train_reference(name: str, *, progress=None):
    """Train one of the book's models from scratch with `RECIPE`; returns ``(model,
    history)``."""
    one_of("name", name, REFERENCE_MODELS)
    cls, kind, _ = REFERENCE_MODELS[name]
    model = build(name)
    x, y = reference_data(kind, "train")
    x_val, y_val = reference_data(kind, "val")
    train, val = ((x, y), (x_val, y_val)) if cls == "CVAE" else ((x,), (x_val,))
    if cls == "Autoencoder":
        # noqa: E731  (no ELBO: the reconstruction error)
        score = lambda m, xv: m.loss(xv)["loss"]
    else:
        score = validation_neg_elbo
    history = fit_early_stopping(
        model, train, val, score, progress=progress, desc=name, **RECIPE
    )
    return model, history


def _train(name: str, progress=None):
    with seeded(0):  # dropout and the samples z draw from the global generator
        return train_reference(name, progress=progress)


MODELS = {
    name: Model(partial(build, name), partial(_train, name), half=True)
    for name in REFERENCE_MODELS
}
