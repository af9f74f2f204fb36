"""Chapter 07: the vector-quantised VAE (VQ-VAE), a learned codebook and a prior over
codes.

An encoder maps an image x to a grid of vectors z_e(x) of dimension D (here 8x8 digits
to a 4x4 grid). Each vector is replaced by its nearest entry of a codebook e_1, ..., e_K
(eq-vq-nearest in book/07-vq-vae.md),

    k(z) = argmin_k ||z - e_k||^2,     z_q = e_{k(z)},

and the decoder models p(x | z_q). The argmin has no useful gradient, so the encoder is
trained with the straight-through estimator (eq-vq-st): the forward pass uses z_q, the
backward pass copies the gradient at z_q to z_e. The loss per image (eq-vq-loss) is

    -log p(x | z_q) + ||sg[z_e] - e||^2 + beta ||z_e - sg[e]||^2,     beta = 0.25,

summed over the grid positions: the codebook term moves the codes towards the encoder
outputs, the commitment term keeps the encoder outputs near their codes. In
``mode="ema"`` the codebook term is replaced by exponential moving averages of the
assigned vectors (eq-vq-ema), with decay 0.99 and Laplace smoothing of the counts; the
codebook and its statistics are then buffers, not parameters. Codes that no vector
chooses (dead codes) can be restarted on encoder outputs.

`code_perplexity` measures how many codes are in use, exp of the entropy of the code
histogram. A `lib.pixelcnn.GatedPixelCNN` with K levels learns the prior over grids of
code indices: sample a grid, decode it, and the VQ-VAE is a generative model ("the VAE
as a tokenizer, the prior learned by an autoregressive model"). The book's models are
``lib.zoo.load("vq/<name>")`` and ``lib.zoo.load("vq/prior")``; their recipe is
lib/zoo/vq.py.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from lib.checks import float_tensor, one_of, positive_int, same_shape
from lib.data import IMAGE_SHAPE, LEVELS
from lib.pixelcnn import categorical_nll
from lib.train import evaluating
from lib.zoo import moved

# ----------------------------------------------------------------------------------------
# Nearest-code search, the straight-through estimator, the loss terms


def squared_distances(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """All squared distances ||z_i - e_k||^2, shape (m, K), for z (m, D) and codebook
    (K, D).

    Expanded as ||z||^2 - 2 z.e + ||e||^2 (eq-vq-distance): one matrix product, no loop
    over the codes and no (m, K, D) intermediate. Rounding can make an entry slightly
    negative.
    """
    float_tensor("z", z, dim=2, shape="(m, D)")
    float_tensor("codebook", codebook, dim=2, shape="(K, D)")
    if z.shape[1] != codebook.shape[1]:
        raise ValueError(
            f"z has vectors of dimension {z.shape[1]} but the codebook's are "
            f"{codebook.shape[1]}: "
            f"z must have shape (m, {codebook.shape[1]}), got {tuple(z.shape)}"
        )
    return z.pow(2).sum(1, keepdim=True) - 2 * z @ codebook.T + codebook.pow(2).sum(1)


def nearest_code(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest code for every row of z (eq-vq-nearest): a long tensor
    (m,)."""
    return squared_distances(z, codebook).argmin(1)


def straight_through(z_e: torch.Tensor, z_q: torch.Tensor) -> torch.Tensor:
    """z_e + sg[z_q - z_e] (eq-vq-st): equal to z_q in the forward pass; in the backward
    pass the gradient arriving at the output goes unchanged to z_e (and none to z_q)."""
    return z_e + (z_q - z_e).detach()


def vq_loss_terms(
    z_e: torch.Tensor, z_q: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The codebook and commitment terms of (eq-vq-loss), per image, shape (n,) each:

        codebook   = sum over positions and dimensions of (sg[z_e] - z_q)^2 (moves the
                   codes only)
        commitment = sum over positions and dimensions of (z_e - sg[z_q])^2   (moves the
                                                                              encoder
                                                                              only)

    z_e, z_q: (n, D, h, w), z_q the codes chosen for z_e. The two are equal in value; the
    stop-gradients decide which side each one trains. The loss weights commitment by beta.
    """
    float_tensor("z_e", z_e, dim=4, shape="(n, D, h, w)")
    same_shape("z_q", float_tensor("z_q", z_q), "z_e", z_e)
    codebook = (z_e.detach() - z_q).pow(2).flatten(1).sum(1)
    commitment = (z_e - z_q.detach()).pow(2).flatten(1).sum(1)
    return codebook, commitment


def code_histogram(indices: torch.Tensor, n_codes: int) -> torch.Tensor:
    """How often each code occurs in ``indices`` (any shape, values 0..K-1): float
    tensor (K,)."""
    positive_int("n_codes", n_codes)
    if (
        not isinstance(indices, torch.Tensor)
        or indices.is_floating_point()
        or indices.dtype == torch.bool
    ):
        raise TypeError(
            f"indices must be an integer torch.Tensor of code indices, got "
            f"{getattr(indices, 'dtype', type(indices).__name__)}"
        )
    if (
        indices.device.type == "cpu"
        and indices.numel()
        and (indices.min() < 0 or indices.max() >= n_codes)
    ):
        raise ValueError(
            f"indices must lie in 0..{n_codes - 1}, got values in "
            f"{indices.min().item()}..{indices.max().item()}"
        )
    # scatter_add, unlike bincount, needs no host sync on a GPU
    flat = indices.flatten().long()
    return torch.zeros(n_codes, device=flat.device).scatter_add_(
        0, flat, torch.ones(len(flat), device=flat.device)
    )


def code_perplexity(indices: torch.Tensor, n_codes: int) -> torch.Tensor:
    """exp of the entropy of the code histogram (eq-vq-perplexity), a 0-dim tensor in
    [1, K].

    K when every code is used equally often, 1 when one code takes everything: the
    effective number of codes in use. ``indices``: code indices of any shape (e.g. (n,
    h, w)).
    """
    counts = code_histogram(indices, n_codes)
    p = counts / counts.sum().clamp(min=1)
    return torch.exp(-torch.special.xlogy(p, p).sum())


def codes_used(indices: torch.Tensor, n_codes: int) -> torch.Tensor:
    """The fraction of the K codes that occur at least once in ``indices``, a 0-dim
    tensor."""
    return (code_histogram(indices, n_codes) > 0).float().mean()


# ----------------------------------------------------------------------------------------
# The quantiser


class Quantized(NamedTuple):
    """What `VectorQuantizer` returns for an encoder output z_e of shape (n, D, h, w)."""

    # (n, D, h, w): the codes, with the straight-through gradient to z_e
    z_q: torch.Tensor
    indices: torch.Tensor  # (n, h, w) long: the chosen codes
    # (n,): ||sg[z_e] - e||^2 per image (zero in EMA mode: no gradient)
    codebook: torch.Tensor
    # (n,): ||z_e - sg[e]||^2 per image (not yet multiplied by beta)
    commitment: torch.Tensor


class VectorQuantizer(nn.Module):
    """Replace every D-vector of a map (n, D, h, w) by its nearest of K codes
    (eq-vq-nearest).

    mode     "loss": the codebook is a parameter trained by the codebook term of
             (eq-vq-loss);
             "ema":  the codebook is a buffer, updated in training mode by exponential
                     moving averages (eq-vq-ema): counts N_k and sums m_k of the vectors
                     assigned to code k, decay ``decay``, Laplace smoothing ``eps`` of
                     the counts, e_k = m_k / N_k. The vectors are quantised with the
                     codebook *before* the update.
    restart  revive dead codes: in training mode, a running average (decay ``decay``) of
             how many vectors of a batch choose each code is kept; before quantising a
             batch, every code whose average is below ``restart_threshold`` is moved
             onto a random encoder output of the batch (its statistics reset), so that
             it gets chosen again.
    The initial codebook is uniform in (-1/K, 1/K), as in many VQ-VAE implementations;
    the EMA statistics start at N_k = 1, m_k = e_k. In eval mode nothing is updated.
    """

    def __init__(
        self,
        n_codes: int,
        code_dim: int,
        *,
        mode: str = "loss",
        decay: float = 0.99,
        eps: float = 1e-5,
        restart: bool = False,
        restart_threshold: float = 1.0,
    ):
        super().__init__()
        self.n_codes, self.code_dim = (
            positive_int("n_codes", n_codes),
            positive_int("code_dim", code_dim),
        )
        self.mode = one_of("mode", mode, ("loss", "ema"))
        if not 0 < decay < 1:
            raise ValueError(f"decay must be in (0, 1), got {decay!r}")
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps!r}")
        self.decay, self.eps, self.restart, self.restart_threshold = (
            decay,
            eps,
            bool(restart),
            restart_threshold,
        )
        init = torch.empty(n_codes, code_dim).uniform_(-1 / n_codes, 1 / n_codes)
        if mode == "loss":
            self.codebook = nn.Parameter(init)
        else:
            self.register_buffer("codebook", init)
            self.register_buffer("ema_count", torch.ones(n_codes))  # N_k
            self.register_buffer("ema_sum", init.clone())  # m_k
        # running vectors per batch; -1: not measured yet
        self.register_buffer("usage", torch.full((n_codes,), -1.0))

    def extra_repr(self) -> str:
        return (
            f"n_codes={self.n_codes}, code_dim={self.code_dim}, mode={self.mode!r}, "
            f"restart={self.restart}"
        )

    def forward(self, z_e: torch.Tensor) -> Quantized:
        float_tensor("z_e", z_e, dim=4, shape=f"(n, {self.code_dim}, h, w)")
        if z_e.shape[1] != self.code_dim:
            raise ValueError(
                f"z_e must have shape (n, {self.code_dim}, h, w), got {tuple(z_e.shape)}"
            )
        n, D, h, w = z_e.shape
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, D)  # (n*h*w, D)
        if self.training and self.restart:
            self.restart_dead_codes(flat.detach())
        indices = nearest_code(flat.detach(), self.codebook.detach())
        # gathered: the codebook term reaches e
        e = self.codebook[indices]
        z_q = e.reshape(n, h, w, D).permute(0, 3, 1, 2)
        codebook_term, commitment = vq_loss_terms(z_e, z_q)
        if self.training:
            # after quantising (eq-vq-ema)
            self.update_statistics(flat.detach(), indices)
        if self.mode == "ema":
            codebook_term = torch.zeros_like(commitment)
        return Quantized(
            straight_through(z_e, z_q),
            indices.reshape(n, h, w),
            codebook_term,
            commitment,
        )

    @torch.no_grad()
    def update_statistics(self, flat: torch.Tensor, indices: torch.Tensor) -> None:
        """The usage average, and in EMA mode the EMA step (eq-vq-ema) for vectors flat
        (m, D) assigned to codes ``indices`` (m,):

            N_k <- gamma N_k + (1 - gamma) n_k,     m_k <- gamma m_k + (1 - gamma)
                                                    sum_{i: k_i = k} z_i,
            e_k  = m_k / N~_k,   N~_k = (N_k + eps) / (sum_j N_j + K eps) * sum_j N_j.
        """
        counts = torch.zeros(
            self.n_codes, dtype=flat.dtype, device=flat.device
        ).index_add_(
            # n_k
            0,
            indices,
            torch.ones_like(indices, dtype=flat.dtype),
        )
        g = self.decay
        self.usage.copy_(
            torch.where(self.usage < 0, counts, g * self.usage + (1 - g) * counts)
        )
        if self.mode == "ema":
            self.ema_count.mul_(g).add_(counts, alpha=1 - g)
            # sum_{i: k_i = k} z_i
            sums = torch.zeros_like(self.ema_sum).index_add_(0, indices, flat)
            self.ema_sum.mul_(g).add_(sums, alpha=1 - g)
            total = self.ema_count.sum()
            smoothed = (
                (self.ema_count + self.eps) / (total + self.n_codes * self.eps) * total
            )
            self.codebook.copy_(self.ema_sum / smoothed[:, None])

    @torch.no_grad()
    def restart_dead_codes(self, flat: torch.Tensor) -> torch.Tensor:
        """Move the codes whose usage average is below ``restart_threshold`` onto
        encoder outputs drawn at random (without replacement where possible) from the
        batch flat (m, D). Their usage is reset to the threshold (a restarted code that
        is not chosen is restarted again at the next batch), and in EMA mode N_k = 1,
        m_k = e_k. Returns the bool mask (K,) of restarted codes (no host
        synchronisation)."""
        dead = (self.usage >= 0) & (self.usage < self.restart_threshold)
        pick = torch.randperm(len(flat), device=flat.device)
        pick = pick[torch.arange(self.n_codes, device=flat.device) % len(flat)]
        new = flat[pick]
        self.codebook.data.copy_(torch.where(dead[:, None], new, self.codebook.data))
        if self.mode == "ema":
            self.ema_count.copy_(
                torch.where(dead, torch.ones_like(self.ema_count), self.ema_count)
            )
            self.ema_sum.copy_(torch.where(dead[:, None], new, self.ema_sum))
        self.usage.copy_(
            torch.where(
                dead, torch.full_like(self.usage, self.restart_threshold), self.usage
            )
        )
        return dead


# ----------------------------------------------------------------------------------------
# The VQ-VAE


class VQVAE(nn.Module):
    """A VQ-VAE for 8x8 images with L grey levels: encoder to a 4x4 grid of D-vectors,
    `VectorQuantizer` with K codes, decoder to logits of a categorical over the L levels
    of every pixel (L = 2 is a Bernoulli). ``loss(x)`` is (eq-vq-loss) averaged over the
    batch.

    encoder  x / (L-1) -> conv3x3 -> ReLU -> conv4x4 stride 2 -> ReLU -> conv3x3 -> ReLU
             -> conv1x1 (D)
    decoder  conv3x3 -> ReLU -> transposed conv4x4 stride 2 -> ReLU -> conv3x3 -> ReLU
             -> conv1x1 (L)
    """

    def __init__(
        self,
        levels: int = LEVELS,
        n_codes: int = 128,
        code_dim: int = 8,
        channels: int = 32,
        *,
        beta: float = 0.25,
        mode: str = "ema",
        restart: bool = True,
        **quantizer,
    ):
        super().__init__()
        if positive_int("levels", levels) < 2:
            raise ValueError(f"levels must be at least 2, got {levels}")
        positive_int("channels", channels)
        self.levels, self.beta = levels, float(beta)
        C = channels
        self.encoder = nn.Sequential(
            nn.Conv2d(1, C, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(C, C, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(C, C, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(C, code_dim, 1),
        )
        self.quantizer = VectorQuantizer(
            n_codes, code_dim, mode=mode, restart=restart, **quantizer
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(code_dim, C, 3, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(C, C, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(C, C, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(C, levels, 1),
        )

    @property
    def n_codes(self) -> int:
        return self.quantizer.n_codes

    def _check(self, x):
        float_tensor("x", x, dim=4, shape="(n, 1, 8, 8)")
        if x.shape[1:] != IMAGE_SHAPE:
            raise ValueError(f"x must have shape (n, 1, 8, 8), got {tuple(x.shape)}")
        return x

    def encode_continuous(self, x: torch.Tensor) -> torch.Tensor:
        """z_e(x): the encoder's output before quantisation, (n, D, 4, 4)."""
        return self.encoder(self._check(x) / (self.levels - 1))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The grid of code indices of x, a long tensor (n, 4, 4) (nothing is updated)."""
        return nearest_code(
            self.encode_continuous(x)
            .permute(0, 2, 3, 1)
            .reshape(-1, self.quantizer.code_dim),
            self.quantizer.codebook,
        ).reshape(len(x), 4, 4)

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Logits (n, L, 8, 8) of p(x | z_q) for a grid of code indices (n, 4, 4) (or
        (n, 1, 4, 4))."""
        if indices.dim() == 4 and indices.shape[1] == 1:
            indices = indices[:, 0]
        return self.decoder(self.quantizer.codebook[indices].permute(0, 3, 1, 2))

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        """The decoder's expected grey level per pixel, (n, 1, 8, 8), from logits (n, L,
        8, 8)."""
        levels = torch.arange(self.levels, device=logits.device, dtype=logits.dtype)
        return (logits.softmax(1) * levels[:, None, None]).sum(1, keepdim=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Quantized]:
        """Logits (n, L, 8, 8) of p(x | z_q(x)) and the quantiser's output."""
        q = self.quantizer(self.encode_continuous(x))
        return self.decoder(q.z_q), q

    def loss(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(eq-vq-loss) averaged over the batch: "loss" = "rec" + "codebook" + beta *
        "commitment", with "rec" = -log p(x | z_q) in nats per image; also the batch's
        code "perplexity" and fraction of codes "used" (no host synchronisation)."""
        logits, q = self(x)
        rec = categorical_nll(logits, x).mean()
        codebook, commitment = q.codebook.mean(), q.commitment.mean()
        return {
            "loss": rec + codebook + self.beta * commitment,
            "rec": rec.detach(),
            "codebook": codebook.detach(),
            "commitment": commitment.detach(),
            "perplexity": code_perplexity(q.indices, self.n_codes),
            "used": codes_used(q.indices, self.n_codes),
        }

    @torch.no_grad()
    def sample(self, n: int, prior, *, seed: int | None = None) -> torch.Tensor:
        """n new images (n, 1, 8, 8), the decoder's mean grey levels, for grids of codes
        drawn from the ``prior`` (a `lib.pixelcnn` model with K levels over 4x4 grids);
        (eq-vq-generate)."""
        codes = prior.sample(n, (4, 4), seed=seed)
        return self.mean(self.decode_indices(codes))


@torch.no_grad()
def evaluate(model: VQVAE, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Quality of a VQ-VAE on images x (n, 1, 8, 8), in eval mode (no codebook updates):
    "rec" -log p(x | z_q) in nats per image, "mse" squared error of the decoder's mean
    in grey levels^2 per pixel, "perplexity" and fraction of codes "used" over all of x,
    "codes" (n, 4, 4)."""
    with evaluating(model):
        logits, q = model(x)
        result = {
            "rec": categorical_nll(logits, x).mean(),
            "mse": (model.mean(logits) - x).pow(2).mean(),
            "perplexity": code_perplexity(q.indices, model.n_codes),
            "used": codes_used(q.indices, model.n_codes),
            "codes": q.indices,
        }
    return result


# ----------------------------------------------------------------------------------------
# The book's trained models and their recipe: lib.zoo ("vq/<name>", "vq/prior",
# lib/zoo/vq.py).

__getattr__ = moved(
    "vq", ("CONFIGS", "RECIPE", "PRIOR", "train_vqvae", "make_prior", "train_prior")
)
