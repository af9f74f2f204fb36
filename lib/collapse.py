"""Chapter 06: posterior collapse, how to see it and how to prevent it.

A VAE's objective (eq-collapse-elbo in book/06-posterior-collapse.md) is

    ELBO(x) = E_q[log p(x | z)] - sum_d KL(q(z_d | x) || N(0, 1)),

and it has a trivial optimum whenever the decoder can model x without z: set q(z | x) =
p(z) for every x (all KL terms 0) and let the decoder ignore z. That is posterior
collapse. It is rare with a factorised decoder p(x | z) = prod_i p(x_i | z), which needs
z to couple the pixels, and common with an autoregressive decoder p(x | z) = prod_i
p(x_i | x_<i, z), which does not (`MaskedDecoder` here, a MADE conditioned on z).

Diagnostics (all on the encoder's outputs mu, logvar of shape (n, L) for n images)
    kl_per_dim           E_x KL(q(z_d | x) || N(0, 1)) for each d (eq-collapse-kl-dim)
    unit_activity        Cov_x(E_q[z_d | x]) = the variance of mu_d over x
                         (eq-collapse-au)
    active_units         how many dimensions have an activity above 0.01
    mutual_information   I_q(x; z) with the aggregate posterior q(z) estimated on the
                         batch, as in He et al. (2019)  (eq-collapse-mi)
    diagnostics          all of the above plus the importance-sampled -log p(x) of lib.vae

Remedies (training objectives of a `VAE` built by `make_vae`)
    collapse_loss        rec + weight * KL, or rec + free-bits KL  (eq-collapse-lambda)
    kl_anneal            the linear KL weight schedule  (eq-collapse-anneal)
    free_bits_kl         sum_d max(floor, E_x KL_d): a floor per dimension
                         (eq-collapse-free-bits)
    fit_aggressive       He et al.'s aggressive inference-network training

The book's models are ``lib.zoo.load("collapse/<name>")``, one per variant; their
recipe (`VARIANTS`, `RECIPE`, `train_variant`) is lib/zoo/collapse.py.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from lib.checks import (
    float_tensor,
    gaussian_parameters,
    nonnegative_int,
    one_of,
    positive_int,
    same_shape,
)
from lib.data import IMAGE_SHAPE, PIXELS
from lib.device import seeded
from lib.train import evaluating, fit, minimise, show_progress
from lib.vae import (
    LOG_2PI,
    VAE,
    GaussianEncoder,
    elbo_terms,
    gaussian_kl_to_standard,
    log_normal_diag,
    log_likelihood_is,
    make_decoder,
    mlp_encoder_net,
    reparameterize,
)
from lib.zoo import moved


# ----------------------------------------------------------------------------------------
# Diagnostics


def kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """E_x KL(q(z_d | x) || N(0, 1)) for each latent dimension d, shape (L,)
    (eq-collapse-kl-dim):
    the closed-form KL of `lib.vae.gaussian_kl_to_standard` averaged over the n images.
    A dimension with a KL near 0 carries no information about x."""
    gaussian_parameters(mu, logvar, dim=2, shape="(n, L)")
    return gaussian_kl_to_standard(mu, logvar).mean(0)


def unit_activity(mu: torch.Tensor) -> torch.Tensor:
    """A_d = Cov_x(E_q[z_d | x]), the variance over the images of the posterior mean
    mu_d(x), shape (L,) (eq-collapse-au; Burda et al. 2016). Unbiased (n - 1) variance,
    as in He et al.'s code. It measures how much the code moves with x; the posterior
    variances do not enter."""
    gaussian_parameters(mu, dim=2, shape="(n, L)")
    if len(mu) < 2:
        raise ValueError(
            f"mu needs at least 2 images to have a variance, got shape {tuple(mu.shape)}"
        )
    return mu.var(0, correction=1)


def active_units(mu: torch.Tensor, threshold: float = 0.01) -> int:
    """The number of latent dimensions with `unit_activity` above ``threshold``
    (eq-collapse-au)."""
    if not threshold >= 0:
        raise ValueError(f"threshold must be a non-negative number, got {threshold!r}")
    return int((unit_activity(mu) > threshold).sum())


def mutual_information(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    z: torch.Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """I_q(x; z) under q(x, z) = p_data(x) q(z | x) on a batch of n images
    (eq-collapse-mi):

        I = 1/n sum_i ( E_q(z|x_i)[log q(z | x_i)] - log q(z_i) ),   z_i ~ q(z | x_i),
        q(z) ~ 1/n sum_j q(z | x_j)                         (the aggregate posterior on
                                                            the batch),

    with the first term in closed form, -L/2 (1 + log 2 pi) - 1/2 sum_d logvar_d, as in
    He et al. (2019). z: one sample per image, shape (n, L) (drawn with ``generator``
    when omitted). A 0-dim tensor in nats; the batch estimate lies between about 0 and
    log n.
    """
    gaussian_parameters(mu, logvar, dim=2, shape="(n, L)")
    n, L = mu.shape
    if z is None:
        z = reparameterize(mu, logvar, generator=generator)
    else:
        same_shape("z", z, "mu", mu)
    neg_entropy = (-0.5 * L * (1 + LOG_2PI) - 0.5 * logvar.sum(-1)).mean()
    # log q(z_i | x_j) for every pair: (n, n)
    log_q = log_normal_diag(z[:, None], mu[None], logvar[None])
    log_aggregate = torch.logsumexp(log_q, dim=1) - math.log(n)
    return neg_entropy - log_aggregate.mean()


def diagnostics(
    model, x: torch.Tensor, *, K: int = 100, seed: int = 0, threshold: float = 0.01
) -> dict:
    """Everything the chapter's table reports for one model on images x, in nats per
    image:
    "kl" (the KL term of the ELBO, summed over dimensions), "kl_per_dim" (L,), "au", "mi",
    "rec" (-E_q log p(x | z)), "neg_elbo" and "nll" (-log p(x) by importance sampling
    with K samples, `lib.vae.log_likelihood_is`; "nll_per_image" keeps the n values, for
    paired comparisons). Evaluated in eval mode (no dropout). Seeded: the same model and
    seed give the same numbers."""
    generator = torch.Generator(device=x.device).manual_seed(seed)
    with evaluating(model), torch.no_grad():
        mu, logvar = model.encode(x)
        kl = kl_per_dim(mu, logvar)
        z = reparameterize(mu, logvar, 10, generator=generator)
        rec = -model.log_px_given_z(x, z).mean()
        mi = mutual_information(mu, logvar, generator=generator)
        nll = -log_likelihood_is(model, x, K=K, seed=seed)
    return {
        "kl": kl.sum(),
        "kl_per_dim": kl,
        "au": active_units(mu, threshold),
        "mi": mi,
        "rec": rec,
        "neg_elbo": rec + kl.sum(),
        "nll": nll.mean(),
        "nll_per_image": nll,
    }


# ----------------------------------------------------------------------------------------
# Remedies: the objectives


def kl_anneal(step: int, warmup: int, *, start: float = 0.0) -> float:
    """The KL weight of linear KL annealing (eq-collapse-anneal; Bowman et al. 2016):
    beta = start + (1 - start) * min(1, step / warmup), so beta(0) = start and beta = 1
    from ``step = warmup`` on. He et al. (2019) use start = 0.1."""
    nonnegative_int("step", step)
    positive_int("warmup", warmup)
    if not 0 <= start <= 1:
        raise ValueError(f"start must lie in [0, 1], got {start!r}")
    return start + (1 - start) * min(1.0, step / warmup)


def free_bits_kl(kl: torch.Tensor, floor: float) -> torch.Tensor:
    """The free-bits KL term (eq-collapse-free-bits; Kingma et al. 2016), a 0-dim tensor:

        sum_d max(floor, 1/n sum_i KL_id),   kl: (n, L) per image and dimension.

    Each dimension's KL, averaged over the batch, is replaced by the floor when below
    it, so its gradient is zero there: the optimiser no longer pushes that dimension
    towards the prior until it carries ``floor`` nats. (A floor on the total KL would
    let a few dimensions carry all the information and still let the others
    collapse.)"""
    float_tensor("kl", kl, dim=2, shape="(n, L)")
    if not floor >= 0:
        raise ValueError(f"floor must be a non-negative number, got {floor!r}")
    return kl.mean(0).clamp(min=floor).sum()


def collapse_loss(
    model, x: torch.Tensor, *, weight: float = 1.0, floor: float | None = None
) -> dict:
    """The training objective of one minibatch, averaged over the images
    (eq-collapse-lambda):

        rec + weight * KL          (weight = 1: minus the ELBO; 0 < weight < 1: the
                                    lambda-weighted objective, which no longer bounds
                                    -log p(x))
        rec + free_bits_kl(KL, floor)   when ``floor`` is given.

    Returns {"loss", "rec", "kl"} with "kl" the plain KL (what the ELBO would charge)."""
    rec, kl = elbo_terms(model, x)
    total_kl = kl.sum(-1).mean()
    penalty = weight * total_kl if floor is None else free_bits_kl(kl, floor)
    return {"loss": rec.mean() + penalty, "rec": rec.mean(), "kl": total_kl}


# ----------------------------------------------------------------------------------------
# An autoregressive decoder conditioned on z: MADE (Germain et al. 2015)


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask (a non-persistent
    buffer)."""

    def __init__(self, mask: torch.Tensor):
        super().__init__(mask.shape[1], mask.shape[0])
        self.register_buffer("mask", mask.float(), persistent=False)

    def forward(self, h):
        return F.linear(h, self.weight * self.mask, self.bias)


class MaskedDecoder(nn.Module):
    """p(x | z) = prod_i Bernoulli(x_i | sigmoid(logit_i(x_<i, z))) over the 64 pixels
    in raster order (eq-collapse-ar): a MADE (Germain et al. 2015) whose masks let logit
    i see pixels 1..i-1 only. One pass computes all 64 logits of an image (training,
    `log_prob`); sampling takes 64 passes.

    hidden: units per masked hidden layer; layers: how many; direct: also a masked
    linear map from the pixels straight to the logits (a logistic regression on the
    past, which learns fast). z_everywhere: add z (through unmasked linear maps) to
    every hidden layer and to the logits; the default adds it to the first hidden layer
    only, a narrower path for z, like an RNN whose initial state is z (Bowman et al.
    2016). dropout: on the hidden units while training. It stops the 512-unit decoder
    from memorising the 1000 training images (which makes z very useful: naming one of
    1000 images costs at most log 1000 = 6.9 nats) and makes it a decoder that
    generalises well without z. The decoder of `lib.vae`'s interface: ``log_prob(x, z)``
    with z of shape (..., n, L) returns shape z.shape[:-1]."""

    event_shape = IMAGE_SHAPE

    def __init__(
        self,
        latent_dim: int,
        *,
        hidden: int = 512,
        layers: int = 2,
        direct: bool = True,
        z_everywhere: bool = False,
        dropout: float = 0.5,
    ):
        super().__init__()
        positive_int("latent_dim", latent_dim)
        positive_int("hidden", hidden)
        positive_int("layers", layers)
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
        # pixel i has degree i
        degree_in = torch.arange(1, PIXELS + 1)
        degrees = [degree_in] + [
            torch.arange(hidden) % (PIXELS - 1) + 1 for _ in range(layers)
        ]
        # unit k of a layer sees unit j of the layer below when degree(k) >= degree(j);
        # logit i sees hidden units of degree < i, so it depends on pixels 1..i-1 only
        self.hidden = nn.ModuleList(
            MaskedLinear(d_out[:, None] >= d_in[None])
            for d_in, d_out in zip(degrees[:-1], degrees[1:])
        )
        self.out = MaskedLinear(degree_in[:, None] > degrees[-1][None])
        self.direct = (
            MaskedLinear(degree_in[:, None] > degree_in[None]) if direct else None
        )
        self.from_z = nn.ModuleList(
            nn.Linear(latent_dim, hidden, bias=False)
            for _ in range(layers if z_everywhere else 1)
        )
        self.z_out = nn.Linear(latent_dim, PIXELS, bias=False) if z_everywhere else None
        self.drop = nn.Dropout(dropout)

    def logits(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The 64 logits of p(x_i = 1 | x_<i, z), shape (*z.shape[:-1], 64); x: (n, 1,
        8, 8) or (n, 64)."""
        h_x = x.reshape(len(x), PIXELS)
        h = h_x
        for k, layer in enumerate(self.hidden):
            h = layer(h)
            if k < len(self.from_z):
                h = h + self.from_z[k](z)
            h = self.drop(F.leaky_relu(h))
        out = self.out(h)
        if self.z_out is not None:
            out = out + self.z_out(z)
        if self.direct is not None:
            out = out + self.direct(h_x)
        return out

    def log_prob(self, x: torch.Tensor, z: torch.Tensor, context=None) -> torch.Tensor:
        """log p(x | z) summed over the pixels, shape z.shape[:-1]."""
        logits = self.logits(x, z)
        target = x.reshape(len(x), PIXELS).expand_as(logits)
        return -F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(
            -1
        )

    def sample(
        self, z: torch.Tensor, context=None, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """x ~ p(x | z), pixel by pixel, shape (len(z), 1, 8, 8); z: (n, L)."""
        x = torch.zeros(len(z), PIXELS, device=z.device, dtype=z.dtype)
        with torch.no_grad():
            for i in range(PIXELS):
                p = torch.sigmoid(self.logits(x, z)[:, i])
                x[:, i] = torch.bernoulli(p, generator=generator)
        return x.reshape(len(z), *self.event_shape)

    def mean(self, z: torch.Tensor, context=None) -> torch.Tensor:
        """E[x | z] has no closed form here: pixel i's mean depends on the pixels drawn
        before it. An error, not a sample passed off as a mean."""
        raise NotImplementedError(
            "an autoregressive decoder has no closed-form mean image E[x | z]: use "
            "decode(z, mean=False) or sample(n) for images drawn from p(x | z)"
        )


# ----------------------------------------------------------------------------------------
# The models and how each variant is trained

DECODERS = ("factorised", "autoregressive")


def make_vae(
    decoder: str = "autoregressive",
    *,
    latent_dim: int = 16,
    hidden: int = 128,
    decoder_hidden: int = 512,
    seed: int = 0,
) -> VAE:
    """A `lib.vae.VAE` for binarised digits: MLP encoder 64 -> hidden -> hidden -> 2L
    and either a factorised Bernoulli decoder (`lib.vae`'s MLP decoder) or the
    autoregressive `MaskedDecoder` with ``decoder_hidden`` units per layer. ``hidden=0``
    makes the encoder linear. ``seed`` seeds the initial weights (the global random
    state is left untouched)."""
    one_of("decoder", decoder, DECODERS)
    with seeded(seed):
        net = (
            mlp_encoder_net(PIXELS, latent_dim, hidden)
            if hidden
            else nn.Linear(PIXELS, 2 * latent_dim)
        )
        encoder = GaussianEncoder(net)
        if decoder == "factorised":
            dec = make_decoder("bernoulli", latent_dim, hidden=hidden)
        else:
            dec = MaskedDecoder(latent_dim, hidden=decoder_hidden)
    return VAE(encoder=encoder, decoder=dec, latent_dim=latent_dim)


def _batches(x: torch.Tensor, batch_size: int, generator: torch.Generator):
    """An endless stream of random minibatches (with replacement between batches)."""
    while True:
        yield x[
            torch.randint(len(x), (batch_size,), generator=generator, device=x.device)
        ]


def fit_aggressive(
    model,
    x: torch.Tensor,
    x_val: torch.Tensor,
    *,
    steps: int,
    batch_size: int = 100,
    lr: float = 1e-3,
    inner_max: int = 50,
    check_every: int = 5,
    mi_every: int = 10,
    patience: int = 1,
    optimizer=None,
    seed: int = 0,
    every: int | None = None,
    on_round=None,
    progress=None,
) -> dict:
    """Aggressive inference-network training (He et al. 2019), then ordinary training.

    While aggressive: repeat
      1. encoder-only steps on fresh minibatches, in chunks of ``check_every`` steps,
         until the mean loss of a chunk stops improving (or ``inner_max`` steps);
      2. one decoder-only step on a new minibatch;
      every ``mi_every`` decoder steps, I_q(x; z) is measured on ``x_val`` and
      aggressive training ends when it has not reached a new maximum for ``patience``
      checks in a row (1: the first time it does not increase, as in the paper). The
      remaining steps are ordinary joint steps (`lib.train.fit`). ``steps`` counts every
      optimiser step, encoder-only ones included, so a run costs about what ``steps``
      ordinary steps cost.

    One optimiser (Adam unless ``optimizer`` is given) holds all parameters; the half
    that must not move has requires_grad off, so its gradient is None and the optimiser
    leaves it (and its moment estimates) alone. So no second optimiser and no loop of
    its own are needed: everything goes through `lib.train.minimise` and `fit`.
    ``seed`` decides the minibatches, the MI checks and the model's own draws (the
    samples z, dropout), for which the global generators are seeded for the run and put
    back after it (`lib.device.seeded`). ``on_round(step)`` is called whenever another
    ``every`` steps have been taken.
    ``progress``: one tqdm bar over the ``steps`` (`lib.train.show_progress` decides by
    default). Returns the history: "loss" per step, the aggressive phase's "mi" checks
    as (step, MI) rows, and "switch" (the step at which it ended).
    """
    positive_int("steps", steps)
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=lr)
    run = _Steps(model, optimizer, steps, every, on_round, progress)
    with seeded(seed):
        batches = _batches(x, batch_size, torch.Generator(x.device).manual_seed(seed))
        mi_history = _aggressive_phase(
            run,
            lambda step: collapse_loss(model, next(batches)),
            x_val,
            seed=seed,
            inner_max=inner_max,
            check_every=check_every,
            mi_every=mi_every,
            patience=patience,
        )
        switch = run.taken
        _ordinary_phase(run, x, batch_size, seed)
    run.bar.close()
    model.eval()
    return {
        "loss": torch.cat(run.losses),
        "mi": torch.tensor(mi_history).reshape(-1, 2),
        "switch": torch.tensor(switch),
    }


class _Steps:
    """The optimiser steps of one `fit_aggressive` run: taken with one optimiser,
    counted against the budget, their losses kept, shown on one bar, and reported to
    ``on_round`` every ``every`` steps."""

    def __init__(self, model, optimizer, steps, every, on_round, progress):
        self.model, self.optimizer, self.steps = model, optimizer, steps
        self.every, self.on_round = (every, on_round) if every and on_round else (0, None)
        self.taken, self.rounds_done, self.losses = 0, 0, []
        self.bar = tqdm(
            total=steps,
            desc="aggressive",
            disable=not show_progress(progress),
            leave=False,
        )

    @property
    def left(self) -> int:
        return self.steps - self.taken

    def until_round(self) -> int:
        """Steps left before the next ``on_round`` (all of them without one)."""
        if not self.every:
            return self.left
        return min(self.left, (self.rounds_done + 1) * self.every - self.taken)

    def record(self, losses: torch.Tensor) -> None:
        self.losses.append(losses)
        self.taken += len(losses)
        self.bar.update(len(losses))
        while self.every and self.taken >= (self.rounds_done + 1) * self.every:
            self.rounds_done += 1
            self.on_round(self.taken)

    def only(self, trained: nn.Module, objective, n: int) -> float:
        """``n`` steps that move ``trained`` (the encoder or the decoder) alone; the
        mean loss."""
        model = self.model
        frozen = model.decoder if trained is model.encoder else model.encoder
        frozen.requires_grad_(False)
        model.train()
        history = minimise(
            objective, None, steps=n, optimizer=self.optimizer, progress=False
        )
        frozen.requires_grad_(True)
        self.record(history["loss"])
        return history["loss"].mean().item()


def _aggressive_phase(
    run: _Steps, objective, x_val, *, seed, inner_max, check_every, mi_every, patience
) -> list[tuple[int, float]]:
    """Rounds of 1. encoder steps until the encoder has caught up, 2. one decoder step,
    until I_q(x; z) stops rising (3.) or the budget is spent. Returns the MI checks,
    (step, MI)."""
    model, mi_history = run.model, []
    decoder_steps, best_mi, since_best, aggressive = 0, -math.inf, 0, True
    while aggressive and run.left:
        previous, inner = math.inf, 0  # 1. the encoder catches up
        while inner < inner_max and run.left:
            chunk = min(check_every, inner_max - inner, run.left)
            current = run.only(model.encoder, objective, chunk)
            inner += chunk
            if current >= previous:
                break
            previous = current
        if not run.left:
            break
        run.only(model.decoder, objective, 1)  # 2. one decoder step
        decoder_steps += 1
        if decoder_steps % mi_every == 0:  # 3. has I_q(x; z) stopped rising?
            with torch.no_grad():
                model.eval()
                mu, logvar = model.encode(x_val)
                generator = torch.Generator(device=x_val.device).manual_seed(seed)
                mi = mutual_information(mu, logvar, generator=generator).item()
            mi_history.append((run.taken, mi))
            since_best = 0 if mi > best_mi else since_best + 1
            best_mi = max(best_mi, mi)
            aggressive = since_best < patience
    return mi_history


def _ordinary_phase(run: _Steps, x, batch_size: int, seed: int) -> None:
    """The rest of the budget: ordinary joint steps (`lib.train.fit`), in pieces that
    end where ``on_round`` is due."""
    while run.left:
        run.model.train()
        history = fit(
            run.model,
            x,
            steps=run.until_round(),
            batch_size=batch_size,
            optimizer=run.optimizer,
            seed=seed + 1 + run.taken,
            progress=False,
        )
        run.record(history["loss"])


# ----------------------------------------------------------------------------------------
# The book's trained models and their recipe: lib.zoo ("collapse/<name>",
# lib/zoo/collapse.py).

__getattr__ = moved("collapse", ("RECIPE", "VARIANTS", "train_variant"))
