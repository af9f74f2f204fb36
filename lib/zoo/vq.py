"""Chapter 07's trained models (book/07-vq-vae.md): "vq/<name>" for the four VQ-VAEs of
`CONFIGS` (history: the per-step terms of `lib.vq.VQVAE.loss`, "rec", "perplexity",
"used", ...), and "vq/prior", the PixelCNN prior over the 4x4 code grids of
"vq/ema-restart" (history: "step", "train", "val" in nats per grid, per round of 50
steps). Retraining "vq/ema-restart" retrains the prior on its new codes.
"""

from __future__ import annotations

from functools import partial

from lib.checks import one_of
from lib.data import digits
from lib.device import seeded
from lib.train import fit
from lib.vq import VQVAE
from lib.zoo import Model, load
from lib.zoo.pixelcnn import fit_gated, gated

CONFIGS = {
    # name: VQVAE arguments. All: 17 grey levels, K = 128 codes of dimension 8 on a 4x4
    # grid.
    "ema-restart": dict(n_codes=128, mode="ema", restart=True),
    "ema": dict(n_codes=128, mode="ema", restart=False),
    "loss-restart": dict(n_codes=128, mode="loss", restart=True),
    "loss": dict(n_codes=128, mode="loss", restart=False),
}
RECIPE = dict(steps=1200, lr=1e-3, batch_size=100)
PRIOR = dict(
    channels=32,
    layers=4,
    kernel_size=3,
    dropout=0.3,
    steps=600,
    lr=3e-3,
    batch_size=100,
    weight_decay=1e-4,
)


def train_vqvae(
    name: str = "ema-restart",
    *,
    steps: int | None = None,
    seed: int = 0,
    device=None,
    progress=None,
):
    """Train one of the book's VQ-VAEs on the training digits with `lib.train.fit` (Adam).

    Returns ``(model, history)``: the per-step terms of `VQVAE.loss` ("rec", "perplexity",
    "used", ...), as fit records them.
    """

    one_of("name", name, CONFIGS)
    x, _ = digits("train", device=device)
    with seeded(seed):
        model = VQVAE(**CONFIGS[name]).to(x.device)
        history = fit(
            model,
            x,
            steps=RECIPE["steps"] if steps is None else steps,
            lr=RECIPE["lr"],
            batch_size=RECIPE["batch_size"],
            seed=seed,
            progress=progress,
            desc=f"vq-vae {name}",
        )
    return model, history


def make_prior(n_codes: int):
    """The unconditional `lib.pixelcnn.GatedPixelCNN` with K = ``n_codes`` levels used
    as the prior."""
    return gated(dict(PRIOR, levels=n_codes))


def train_prior(
    codes,
    val_codes,
    n_codes: int,
    *,
    steps: int | None = None,
    seed: int = 0,
    eval_every: int = 50,
    progress=None,
):
    """Fit the PixelCNN prior to grids of code indices (n, 4, 4) by maximum likelihood
    (eq-vq-prior), with `lib.zoo.pixelcnn.fit_gated` (AdamW, cosine decay, the weights
    with the best validation NLL kept). Returns ``(prior, history)``; history has, per
    round of ``eval_every`` steps, "step", "train" and "val" (nats per grid).
    """
    return fit_gated(
        dict(PRIOR, levels=n_codes),
        codes,
        val_codes,
        steps=steps,
        eval_every=eval_every,
        seed=seed,
        progress=progress,
        desc="prior",
    )


def _train_prior(progress=None):
    """The prior of "vq/ema-restart", on the codes of its committed checkpoint."""
    model, _ = load("vq/ema-restart")
    codes, val_codes = model.encode(digits("train")[0]), model.encode(digits("val")[0])
    return train_prior(codes, val_codes, model.n_codes, progress=progress)


MODELS = {
    name: Model(partial(VQVAE, **config), partial(train_vqvae, name), half=True)
    for name, config in CONFIGS.items()
} | {
    "prior": Model(
        partial(make_prior, CONFIGS["ema-restart"]["n_codes"]),
        _train_prior,
        half=True,
        needs=("vq/ema-restart",),
    )
}
