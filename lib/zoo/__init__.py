"""The book's trained models: one way to name, store, load and retrain them.

    model, history = load("vq/ema-restart")           # in eval mode, on the CPU
    model, history = load("vq/ema-restart", device)   # or moved to a device
    save("vq/ema-restart", model, history)            # what `--retrain` does
    names("gan/ring-*")                               # the registry, or part of it

    python -m lib.zoo --list [names]
    python -m lib.zoo --retrain [names]     # a name, a chapter ("vq") or a pattern

Names. ``"<chapter>/<model>"``: the chapter is the `lib` module whose classes the model
is made of (vae, collapse, vq, gan, pixelcnn, diffusion), the model is the book's name
for it, lower case, words joined by "-" (``"vae/latent-2"``, ``"collapse/free-bits"``,
``"gan/ring-pack2-seed1"``, ``"diffusion/digits"``). Runs the book repeats over seeds or
variants are models of their own (``-seed<k>``, ``-pack<k>``). The checkpoint of a
name is the file ``lib/zoo/checkpoints/<name>.pt``.

Recipes. Each chapter's recipe is the module ``lib.zoo.<chapter>``: its configurations,
the ``train_*`` functions that produced the checkpoints, and ``MODELS``, a `Model` per
name: how to build the untrained model and how to train it. The chapter modules
(`lib.vae`, ...) hold only the math and the models.

File layout. A checkpoint is ``{"state": state_dict, "history": dict}`` read with
``torch.load(weights_only=True)``: the state_dict of the model (of ``Model.part``, the
generator, for a GAN) and the record of its training run (loss curves and what the
recipe measured while training). `load` returns ``(model, history)``, always.

Precision. In memory every model is float32. On disk a floating-point tensor is stored
as float16 when float16 holds it exactly, else as float32, so `load` gives back the
float32 values `save` was given, bit for bit. A recipe with ``Model.half`` (vae,
collapse, vq and diffusion/digits) rounds the trained parameters to float16 when it
saves them (half the file, and the precision the book measured them at); buffers
(noise schedules, codebook statistics, masks) are kept exactly. The GANs, the PixelCNNs
and the toy diffusion models were measured in float32 and are stored so.

A missing checkpoint is an error (`FileNotFoundError`) that names the command which
trains it; nothing is trained behind a reader's back.
"""

from __future__ import annotations

import fnmatch
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from lib.checks import one_of

CHAPTERS = ("vae", "collapse", "vq", "gan", "pixelcnn", "diffusion")
CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"


@dataclass(frozen=True)
class Model:
    """One entry of a recipe's ``MODELS``.

    build  ``build() -> nn.Module``: the untrained model, made as the recipe makes it
    train  ``train(progress=None) -> (model, history)``: the recipe, from scratch
    half   store the trained parameters in float16 (see Precision above)
    part   the submodule whose state is stored, None for the whole model
    needs  the names whose checkpoints ``train`` reads; retraining one of them retrains
           this model after it (`after`)
    """

    build: Callable[[], nn.Module]
    train: Callable[..., tuple[nn.Module, dict]]
    half: bool = False
    part: str | None = None
    needs: tuple[str, ...] = ()


def _recipe(chapter: str) -> dict[str, Model]:
    one_of("chapter", chapter, CHAPTERS)
    return importlib.import_module(f"lib.zoo.{chapter}").MODELS


def entry(name: str) -> Model:
    """The registry's `Model` for ``name``; a ValueError names the choices."""
    if not isinstance(name, str) or "/" not in name:
        raise ValueError(
            f"name must be '<chapter>/<model>' with a chapter of {list(CHAPTERS)}, got "
            f"{name!r}"
        )
    chapter, model = name.split("/", 1)
    models = _recipe(chapter)
    if model not in models:
        raise ValueError(
            f"name must be one of {[f'{chapter}/{m}' for m in models]}, got {name!r}"
        )
    return models[model]


def names(*patterns: str) -> list[str]:
    """Every name in the registry, in the book's order; with patterns, those matching
    one of them (a name, a chapter such as ``"vq"`` for all of its models, or a shell
    pattern such as ``"gan/ring-*"``). A pattern that matches nothing is a
    ValueError."""
    every = [f"{c}/{m}" for c in CHAPTERS for m in _recipe(c)]
    if not patterns:
        return every
    chosen = set()
    for pattern in patterns:
        pattern = f"{pattern}/*" if pattern in CHAPTERS else pattern
        matched = fnmatch.filter(every, pattern)
        if not matched:
            raise ValueError(f"no model is named {pattern!r}; `python -m lib.zoo --list`")
        chosen.update(matched)
    return [name for name in every if name in chosen]


def after(chosen) -> list[str]:
    """``chosen`` and every model whose recipe needs one of them (the VQ-VAE's prior is
    trained on its codes), in the order to train them."""
    chosen = set(chosen)
    for name in names():  # the registry lists a model after the ones it needs
        if chosen.intersection(entry(name).needs):
            chosen.add(name)
    return [name for name in names() if name in chosen]


def path(name: str) -> Path:
    """The checkpoint file of ``name``: lib/zoo/checkpoints/<chapter>/<model>.pt."""
    entry(name)
    return CHECKPOINTS / f"{name}.pt"


def _exact(t: torch.Tensor) -> torch.Tensor:
    """t as float16 if that holds it exactly, else t (float32, integers, bools)."""
    if t.dtype == torch.float32 and torch.equal(t.half().float(), t):
        return t.half()
    return t.clone()


def save(name: str, model: nn.Module, history: dict) -> Path:
    """Write the checkpoint of ``name``: the model's state (``Model.part`` of it) and
    the training history, in the layout and precision described above. Returns the
    file."""
    spec = entry(name)
    module = model if spec.part is None else getattr(model, spec.part)
    parameters = {key for key, _ in module.named_parameters()}
    state = {}
    for key, value in module.state_dict().items():
        value = value.detach().cpu()
        if spec.half and key in parameters:
            value = value.half().float()
        state[key] = _exact(value)
    file = path(name)
    file.parent.mkdir(parents=True, exist_ok=True)
    partial = file.with_suffix(".pt.partial")
    torch.save({"state": state, "history": _to_cpu(history)}, partial)
    partial.replace(file)  # a retrain that stops half-way leaves the old file whole
    return file


def _to_cpu(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    return value


def load(name: str, device=None) -> tuple[nn.Module, dict]:
    """The book's trained model ``name`` and the history of its training run:
    ``(model, history)``. The model is float32, in eval mode, on ``device`` (default:
    the CPU); history is a dict of tensors (see the recipe, ``lib.zoo.<chapter>``).

    A missing checkpoint raises FileNotFoundError naming the command that trains it.
    """
    spec = entry(name)
    file = path(name)
    if not file.exists():
        raise FileNotFoundError(
            f"no checkpoint for {name!r} ({file} is missing): train it with "
            f"`python -m lib.zoo --retrain {name}`"
        )
    stored = torch.load(file, map_location="cpu", weights_only=True)
    model = spec.build()
    module = model if spec.part is None else getattr(model, spec.part)
    module.load_state_dict(stored["state"])
    model.eval()
    return (model if device is None else model.to(device)), stored["history"]


def retrain(name: str, *, progress=None) -> Path:
    """Train ``name`` from scratch with its recipe and overwrite its checkpoint (the
    models it `needs` are read from their checkpoints). Returns the file."""
    model, history = entry(name).train(progress=progress)
    return save(name, model, history)


def moved(chapter: str, moved_names: tuple[str, ...]):
    """The module ``__getattr__`` of a chapter module whose recipe names moved to
    ``lib.zoo.<chapter>``: ``lib.<chapter>.<name>`` still resolves to them (imported on
    first use, as lib.zoo.<chapter> imports lib.<chapter>), so older code and the
    exercises' dotted paths keep working."""

    def __getattr__(name: str):
        if name in moved_names:
            return getattr(importlib.import_module(f"lib.zoo.{chapter}"), name)
        raise AttributeError(f"module 'lib.{chapter}' has no attribute {name!r}")

    return __getattr__
