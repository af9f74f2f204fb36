"""Chapter 09's trained PixelCNNs (book/09-pixelcnn.md): "pixelcnn/digits17" (17 grey
levels) and "pixelcnn/digits2" (binarised digits), gated PixelCNNs trained by
`train_digits`. The history has, per round of 25 steps, "step", "train" (mean training
loss, nats/image) and "val" (validation NLL).
"""

from __future__ import annotations

from functools import partial

import torch

from lib.checks import one_of
from lib.data import digits
from lib.device import seeded
from lib.pixelcnn import GatedPixelCNN, nll
from lib.train import fit_early_stopping
from lib.zoo import Model

# GatedPixelCNN arguments and training settings (about 130,000 parameters; about 80 s
# each on one CPU thread). Wider models memorise the 1000 training digits sooner.
_DIGITS = dict(
    channels=32,
    layers=6,
    kernel_size=3,
    dropout=0.5,
    steps=400,
    lr=3e-3,
    batch_size=100,
    weight_decay=1e-4,
)
CONFIGS = {"digits17": dict(levels=17, **_DIGITS), "digits2": dict(levels=2, **_DIGITS)}


def gated(config: dict) -> GatedPixelCNN:
    """The GatedPixelCNN that ``config`` describes (its model arguments)."""
    return GatedPixelCNN(
        config["levels"],
        config["channels"],
        config["layers"],
        kernel_size=config["kernel_size"],
        dropout=config["dropout"],
    )


def fit_gated(config: dict, x, x_val, *, steps, eval_every, seed, progress, desc):
    """With torch seeded by ``seed`` (`lib.device.seeded`), build the GatedPixelCNN that
    ``config`` describes on x's device and fit it to x by maximum likelihood: AdamW
    (``config``'s lr and weight decay) with a cosine learning-rate decay, through
    `lib.train.fit_early_stopping`; the validation NLL is measured every ``eval_every``
    steps and the parameters with the best one are kept. Returns ``(model, history)``;
    history has, per round, "step", "train" (mean training loss) and "val" (validation
    NLL)."""
    with seeded(seed):
        model = gated(config).to(x.device)
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"]
        )
        history = fit_early_stopping(
            model,
            (x,),
            (x_val,),
            nll,
            steps=config["steps"] if steps is None else steps,
            every=eval_every,
            batch_size=config["batch_size"],
            optimizer=optimizer,
            schedule="cosine",
            seed=seed,
            progress=progress,
            desc=desc,
        )
        return model, history


def train_digits(
    name: str = "digits17",
    *,
    steps: int | None = None,
    seed: int = 0,
    eval_every: int = 25,
    device=None,
    progress=None,
):
    """Train a GatedPixelCNN on the digits (``digits17``: 17 grey levels, ``digits2``:
    binarised) with `fit_gated`; returns ``(model, history)``."""
    config = CONFIGS[one_of("name", name, CONFIGS)]
    binarize = config["levels"] == 2
    x_train, _ = digits("train", binarize=binarize, device=device)
    x_val, _ = digits("val", binarize=binarize, device=device)
    return fit_gated(
        config,
        x_train,
        x_val,
        steps=steps,
        eval_every=eval_every,
        seed=seed,
        progress=progress,
        desc=name,
    )


MODELS = {
    name: Model(partial(gated, CONFIGS[name]), partial(train_digits, name))
    for name in CONFIGS
}
