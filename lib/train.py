"""One optimisation loop for every chapter.

`minimise` runs gradient steps on any objective: a function returning a dict of named
scalar terms, one of them ``"loss"``. `fit` is `minimise` with the objective "the
model's loss on a fresh minibatch": minibatches are drawn by indexing tensors that
already sit on the device, so there is no DataLoader, no per-batch copy and no host
synchronisation inside a step. The history (one value per step for every named term)
stays on the device until the end.
"""

import math
import os
import sys
from collections import defaultdict
from contextlib import contextmanager

import torch
from tqdm.auto import tqdm

from lib.checks import int_in, nonnegative_int, positive_int
from lib.device import seeded


PROGRESS_ENV = "DGM_PROGRESS"
_ON, _OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def interactive() -> bool:
    """Whether someone is watching: code runs in a Jupyter kernel (JupyterLab, Notebook,
    Colab, VS Code) or stderr is a terminal."""
    if "ipykernel" in sys.modules:
        try:
            from IPython import get_ipython

            if getattr(get_ipython(), "kernel", None) is not None:
                return True
        except Exception:  # a broken IPython install must not stop training
            pass
    return sys.stderr.isatty()


def show_progress(progress=None) -> bool:
    """Whether long work shows a tqdm bar: the ``progress`` argument when it is given,
    else the switch ``DGM_PROGRESS`` (``0``/``false``/``off`` hides the bars,
    ``1``/``true``/``on`` shows them), else `interactive`: bars in a notebook kernel or
    a terminal.

    Executed builds set ``DGM_PROGRESS=0`` explicitly (``make book``, the tests, the
    grading kernel, ``python -m course validate``): nbclient runs a real kernel, so bars
    would otherwise end up in the saved outputs as widgets.
    """
    if progress is not None:
        return bool(progress)
    setting = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if setting in _OFF:
        return False
    if setting in _ON:
        return True
    return interactive()


@contextmanager
def evaluating(model: torch.nn.Module):
    """``with evaluating(model):`` runs the block in eval mode (dropout off, batch norm on
    its running statistics), then puts the model back in the mode it was in, also when
    the block raises."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def minimise(
    objective,
    parameters,
    *,
    steps: int,
    lr: float = 1e-3,
    optimizer=None,
    schedule: str = "constant",
    progress=None,
    desc: str | None = None,
) -> dict[str, torch.Tensor]:
    """Take ``steps`` optimiser steps on ``objective(step) -> {"loss": scalar, ...}``.

    parameters: the tensors to optimise (ignored when ``optimizer`` is given; Adam
                otherwise).
    schedule: ``"constant"`` learning rate, or ``"cosine"`` decay to zero over the run,
              which removes most of the stochastic-gradient noise from the final
              parameters.
    Returns the history: every named term, as a 1-D CPU tensor with one entry per step.
    """
    nonnegative_int("steps", steps)
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule must be 'constant' or 'cosine', got {schedule!r}")
    if optimizer is None:
        optimizer = torch.optim.Adam(list(parameters), lr=lr)
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
        if schedule == "cosine"
        else None
    )
    records = defaultdict(list)
    bar = tqdm(range(steps), desc=desc, disable=not show_progress(progress), leave=False)
    for step in bar:
        terms = objective(step)
        if "loss" not in terms:
            raise ValueError(
                f"objective must return a dict with a 'loss' entry, got keys "
                f"{sorted(terms)}"
            )
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        for name, value in terms.items():
            records[name].append(value.detach())
        if not bar.disable and step % 50 == 0:
            bar.set_postfix(loss=f"{terms['loss'].item():.3f}")  # a sync, only when shown
    return {name: torch.stack(values).float().cpu() for name, values in records.items()}


def fit(
    model: torch.nn.Module,
    *data: torch.Tensor,
    steps: int,
    batch_size: int = 100,
    lr: float = 1e-3,
    loss=None,
    seed: int = 0,
    progress=None,
    desc: str | None = None,
    optimizer=None,
    autocast: bool = False,
    compiled: bool = False,
) -> dict[str, torch.Tensor]:
    """Train ``model`` on in-memory tensors with minibatches; return the loss history.

    data: one or more tensors with the same first dimension (e.g. ``x`` or ``x, y``), on
          the device the model lives on. Each epoch visits them in a fresh seeded order.
    seed: seeds the order and the model's own draws (dropout, a VAE's sampled z), which
          come from torch's global generators, seeded for the run and put back after it
          (`lib.device.seeded`): the same seed gives the same run, whatever was drawn
          before, and the caller's random state is left as it was.
    loss: ``loss(*batch) -> dict`` with a ``"loss"`` entry; defaults to ``model.loss``.
    autocast: compute the loss under bfloat16 autocast on the data's device (matrix
              products in bf16, reductions in float32; the backward pass follows). It
              pays on GPUs with bf16 tensor cores, and costs on CPUs without bf16 units:
              benchmarks/RESULTS.md.
    compiled: run the loss through ``torch.compile``; the first step pays for the
              compilation.
    """
    if not data:
        raise ValueError("fit needs at least one data tensor")
    n = len(data[0])
    for i, tensor in enumerate(data):
        if not isinstance(tensor, torch.Tensor) or len(tensor) != n:
            raise ValueError(
                f"data[{i}] must be a tensor with {n} rows like data[0], got "
                f"{type(tensor).__name__} of length "
                f"{len(tensor) if hasattr(tensor, '__len__') else '?'}"
            )
    int_in("batch_size", batch_size, 1, n)
    loss = model.loss if loss is None else loss
    if compiled:
        loss = torch.compile(loss)
    device = data[0].device
    generator = torch.Generator(device=device).manual_seed(seed)
    batches_per_epoch = n // batch_size
    order = None

    def objective(step):
        nonlocal order
        k = step % batches_per_epoch
        if k == 0:
            order = torch.randperm(n, device=device, generator=generator)
        index = order[k * batch_size : (k + 1) * batch_size]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            return loss(*(tensor[index] for tensor in data))

    model.train()
    with seeded(seed):  # the model's own draws: dropout, a VAE's z
        history = minimise(
            objective,
            model.parameters(),
            steps=steps,
            lr=lr,
            optimizer=optimizer,
            progress=progress,
            desc=desc,
        )
    model.eval()
    return history


class BestWeights:
    """A copy of ``model``'s weights from the round with the lowest score so far (early
    stopping by model selection): ``update(score)`` after each evaluation, ``restore()``
    at the end."""

    def __init__(self, model: torch.nn.Module):
        self.model, self.best, self.state = model, math.inf, None

    def update(self, score: float) -> bool:
        """Keep the weights if ``score`` is a new best; return whether it was."""
        if score >= self.best:
            return False
        self.best = score
        self.state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return True

    def restore(self) -> None:
        if self.state is not None:
            self.model.load_state_dict(self.state)


def fit_early_stopping(
    model: torch.nn.Module,
    train: tuple,
    val: tuple,
    score,
    *,
    steps: int,
    every: int = 100,
    patience: int | None = None,
    lr: float = 1e-3,
    batch_size: int = 100,
    optimizer=None,
    schedule: str = "constant",
    seed: int = 0,
    progress=None,
    desc: str | None = None,
) -> dict[str, torch.Tensor]:
    """`lib.train.fit` in rounds of ``every`` steps with one optimiser; after each round
    ``score(model, *val)`` (a 0-dim tensor, lower is better) is computed in eval mode
    without gradients, and the best weights so far are kept. Stops after ``steps``, or
    after ``patience`` rounds without a new best. The model ends with the best weights.

    optimizer: Adam with learning rate ``lr`` unless given (e.g. AdamW with weight decay).
    schedule: ``"constant"``, or ``"cosine"``: before round r of R, every parameter
              group's learning rate is set to its initial value times (1 + cos(pi r /
              R)) / 2.
    Returns the history, one entry per round: "step" (steps taken), "train" (mean
    training loss of the round), "val" (the score).
    """
    positive_int("steps", steps)
    positive_int("every", every)
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule must be 'constant' or 'cosine', got {schedule!r}")
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=lr)
    initial_lr = [group["lr"] for group in optimizer.param_groups]
    rounds = steps // every
    best, since_best = BestWeights(model), 0
    history = {"step": [], "train": [], "val": []}
    for round_ in tqdm(
        range(rounds), desc=desc, disable=not show_progress(progress), leave=False
    ):
        if schedule == "cosine":
            for group, lr0 in zip(optimizer.param_groups, initial_lr):
                group["lr"] = lr0 * 0.5 * (1 + math.cos(math.pi * round_ / rounds))
        losses = fit(
            model,
            *train,
            steps=every,
            batch_size=batch_size,
            optimizer=optimizer,
            seed=seed + round_,
            progress=False,
        )  # one bar for the run: the rounds
        with torch.no_grad():
            value = float(score(model, *val))  # a host sync, once per round
        history["step"].append((round_ + 1) * every)
        history["train"].append(losses["loss"].mean().item())
        history["val"].append(value)
        if best.update(value):
            since_best = 0
        else:
            since_best += 1
            if patience is not None and since_best >= patience:
                break
    best.restore()
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in history.items()}
