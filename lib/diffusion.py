"""Chapter 10: diffusion models as deep latent-variable models.

A diffusion model (book/10-diffusion.md) is a hierarchical VAE with T latent layers
x_1, ..., x_T of the data's own size and a *fixed* encoder, the forward process
(eq-diff-forward)

    q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I),   t = 1..T,

whose marginals have a closed form (eq-diff-marginal, `q_mean_var`, `q_sample`),

    q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I),  abar_t = prod_{s<=t} (1-beta_s).

The decoder is the learned reverse process p(x_T) = N(0, I), p(x_{t-1} | x_t) =
N(mu_theta(x_t, t), sigma_t^2 I), with the mean written through a noise predictor
eps_theta (eq-diff-eps-mean, `p_mean`). Its ELBO is a sum of Gaussian KL divergences
(eq-diff-elbo, `neg_elbo_terms`): the prior term KL(q(x_T | x_0) || p(x_T)), one term per
step against the closed-form posterior q(x_{t-1} | x_t, x_0) (eq-diff-posterior,
`q_posterior`), and a decoder term -log p(x_0 | x_1), discretised for images with L grey
levels (eq-diff-decoder, `discretised_gaussian_log_prob`). Each KL term is a weighted
squared error of the noise prediction (eq-diff-kl-eps, `elbo_weight`); dropping the
weights gives Ho et al.'s simple loss (eq-diff-simple, `Diffusion.loss`). `sample` runs
the reverse process step by step (ancestral sampling, eq-diff-sampling), on the full chain
or on a shorter one with the same abar at fewer times (`respace`).

Conventions: time runs t = 0..T; every schedule tensor has T + 1 entries, index t, with
abar[0] = 1 (t = 0 is the data). A schedule is described by ``alpha_bar`` alone:
beta_t = 1 - abar_t / abar_{t-1}. ``times`` maps a chain index to the time the network is
told (the identity, unless the chain was respaced). Every function works on the device and
dtype of its inputs; random draws take a ``generator``.

`Diffusion` holds an MLP noise predictor and a schedule, for 2-D points (``levels=None``)
or 8x8 digits with 17 grey levels (``levels=17``, pixels mapped to [-1, 1]). The book's
trained models are ``lib.zoo.load("diffusion/<name>")``; their recipe is
lib/zoo/diffusion.py.
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from lib.checks import float_tensor, one_of, positive_int, same_shape
from lib.device import seeded
from lib.train import BestWeights, evaluating, minimise
from lib.zoo import moved

SCHEDULES = ("linear", "cosine")
VARIANCES = ("posterior", "beta")

# ----------------------------------------------------------------------------------------
# Noise schedules


def beta_schedule(name: str, steps: int, *, dtype=torch.float64) -> torch.Tensor:
    """beta_1..beta_T as a tensor of T + 1 entries (index t; beta_0 = 0).

    "linear": Ho et al. (2020)'s beta_t from 1e-4 to 0.02 for T = 1000, the two ends
    scaled by
              1000 / T so that the total amount of noise does not depend on T.
    "cosine": Nichol and Dhariwal (2021)'s abar_t = f(t) / f(0), f(t) = cos^2(pi/2 (t/T +
    s) /
              (1 + s)), s = 0.008, with beta_t capped at 0.999.
    """
    one_of("name", name, SCHEDULES)
    positive_int("steps", steps)
    if name == "linear":
        scale = 1000 / steps
        betas = torch.linspace(
            1e-4 * scale, min(0.02 * scale, 0.999), steps, dtype=torch.float64
        )
    else:
        s = 0.008
        t = torch.arange(steps + 1, dtype=torch.float64) / steps
        f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    return torch.cat([torch.zeros(1, dtype=torch.float64), betas]).to(dtype)


def alpha_bar_from_betas(betas: torch.Tensor) -> torch.Tensor:
    """abar_t = prod_{s=1..t} (1 - beta_s), t = 0..T, from betas with T + 1 entries
    (beta_0 = 0)."""
    _schedule("betas", betas)
    if betas[0] != 0:
        raise ValueError(f"betas[0] must be 0 (t = 0 is the data), got {betas[0].item()}")
    if (betas[1:] <= 0).any() or (betas[1:] >= 1).any():
        raise ValueError("betas[1:] must lie in (0, 1)")
    return torch.cumprod(1 - betas, 0)


def betas_from_alpha_bar(alpha_bar: torch.Tensor) -> torch.Tensor:
    """beta_t = 1 - abar_t / abar_{t-1}, t = 0..T (beta_0 = 0): the inverse of
    `alpha_bar_from_betas`."""
    _schedule("alpha_bar", alpha_bar)
    return torch.cat([alpha_bar.new_zeros(1), 1 - alpha_bar[1:] / alpha_bar[:-1]])


def respace(alpha_bar: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A shorter chain with the same marginals q(x_t | x_0) at ``steps`` of the original
    times.

    The times tau_1 = 1 < ... < tau_K = T are evenly spaced (rounded); the new chain has
    abar'_k = abar_{tau_k}, hence its own betas beta'_k = 1 - abar'_k / abar'_{k-1}. A
    noise predictor trained on the full chain serves the short one: it is called at time
    tau_k (Nichol and Dhariwal 2021). Returns ``(alpha_bar', times)``, each with K + 1
    entries (times[0] = 0). ``steps = T`` gives the original chain back.
    """
    _schedule("alpha_bar", alpha_bar)
    T = len(alpha_bar) - 1
    positive_int("steps", steps)
    if steps > T:
        raise ValueError(f"steps must be at most the chain's length T = {T}, got {steps}")
    if steps == 1:
        taus = torch.tensor([T])
    else:
        taus = torch.linspace(1, T, steps, dtype=torch.float64).round().long()
    times = torch.cat([torch.zeros(1, dtype=torch.long), taus]).to(alpha_bar.device)
    return alpha_bar[times], times


def _schedule(name, value):
    float_tensor(name, value, dim=1, shape="(T + 1,) indexed by t = 0..T")
    if len(value) < 2:
        raise ValueError(
            f"{name} must have T + 1 >= 2 entries (t = 0..T), got {len(value)}"
        )
    return value


def _per_example(name: str, t, x: torch.Tensor, T: int) -> torch.Tensor:
    """t as a long tensor of shape (n,) with entries in 1..T."""
    if isinstance(t, int):
        t = torch.full((len(x),), t, dtype=torch.long, device=x.device)
    if not isinstance(t, torch.Tensor) or t.dtype != torch.long or t.shape != (len(x),):
        raise TypeError(
            f"{name} must be an int or a long tensor of shape ({len(x)},), got "
            f"{getattr(t, 'dtype', type(t).__name__)} {tuple(getattr(t, 'shape', ()))}"
        )
    return t


def _broadcast(values: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """values[t], one per example, shaped to broadcast against x (n, ...), in x's
    dtype."""
    return values.to(x.device)[t].to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))


# ----------------------------------------------------------------------------------------
# The forward process and its posterior


def q_mean_var(
    x0: torch.Tensor, t, alpha_bar: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I),
    eq-diff-marginal in book/10-diffusion.md. x0: (n, ...); t: int or long (n,) in 0..T.
    The variance has x0's shape."""
    float_tensor("x0", x0)
    _schedule("alpha_bar", alpha_bar)
    t = _per_example("t", t, x0, len(alpha_bar) - 1)
    a = _broadcast(alpha_bar, t, x0)
    return a.sqrt() * x0, (1 - a).expand_as(x0)


def q_sample(
    x0: torch.Tensor,
    t,
    alpha_bar: torch.Tensor,
    noise: torch.Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, eps ~ N(0, I): one draw of q(x_t |
    x_0) (eq-diff-marginal), with the given ``noise`` eps or a fresh one from
    ``generator``."""
    mean, var = q_mean_var(x0, t, alpha_bar)
    if noise is None:
        noise = torch.randn(
            x0.shape, device=x0.device, dtype=x0.dtype, generator=generator
        )
    else:
        same_shape("noise", noise, "x0", x0)
    return mean + var.sqrt() * noise


def q_step(
    x_prev: torch.Tensor,
    t,
    alpha_bar: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
):
    """One draw of the one-step kernel q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1},
    beta_t I), eq-diff-forward (the tests compose it T times and compare with
    `q_mean_var`)."""
    float_tensor("x_prev", x_prev)
    beta = _broadcast(
        betas_from_alpha_bar(alpha_bar),
        _per_example("t", t, x_prev, len(alpha_bar) - 1),
        x_prev,
    )
    noise = torch.randn(
        x_prev.shape, device=x_prev.device, dtype=x_prev.dtype, generator=generator
    )
    return (1 - beta).sqrt() * x_prev + beta.sqrt() * noise


def q_posterior(x0: torch.Tensor, xt: torch.Tensor, t, alpha_bar: torch.Tensor):
    """Mean and variance of q(x_{t-1} | x_t, x_0) = N(mu~_t, beta~_t I),
    eq-diff-posterior:

        mu~_t   = sqrt(abar_{t-1}) beta_t / (1 - abar_t) x_0
                  + sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) x_t,
        beta~_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t,

    for t in 1..T (beta~_1 = 0: x_0 is known). Returns ``(mean, variance)``, each of x0's
    shape.
    """
    float_tensor("x0", x0)
    same_shape("xt", float_tensor("xt", xt), "x0", x0)
    _schedule("alpha_bar", alpha_bar)
    t = _per_example("t", t, x0, len(alpha_bar) - 1)
    if (t < 1).any():
        raise ValueError("t must lie in 1..T for the posterior q(x_{t-1} | x_t, x_0)")
    betas = betas_from_alpha_bar(alpha_bar)
    a_t, a_prev, beta = (
        _broadcast(v, i, x0) for v, i in ((alpha_bar, t), (alpha_bar, t - 1), (betas, t))
    )
    mean = (a_prev.sqrt() * beta / (1 - a_t)) * x0 + (
        (1 - beta).sqrt() * (1 - a_prev) / (1 - a_t)
    ) * xt
    var = ((1 - a_prev) / (1 - a_t) * beta).expand_as(x0)
    return mean, var


def posterior_variance(alpha_bar: torch.Tensor) -> torch.Tensor:
    """beta~_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t for t = 1..T (entry 0 set to
    0)."""
    _schedule("alpha_bar", alpha_bar)
    betas = betas_from_alpha_bar(alpha_bar)
    out = (1 - alpha_bar[:-1]) / (1 - alpha_bar[1:]) * betas[1:]
    return torch.cat([alpha_bar.new_zeros(1), out])


def reverse_variance(alpha_bar: torch.Tensor, variance="posterior") -> torch.Tensor:
    """sigma_t^2 of the reverse steps, t = 0..T (entry 0 unused): "posterior" (beta~_t,
    the variance of q(x_{t-1} | x_t, x_0)), "beta" (beta_t), or a tensor of T + 1 values.
    Step 1, the decoder, gets beta_1 in both named choices (beta~_1 = 0)."""
    betas = betas_from_alpha_bar(alpha_bar)
    if isinstance(variance, torch.Tensor):
        _schedule("variance", variance)
        if variance.shape != alpha_bar.shape or (variance[1:] <= 0).any():
            raise ValueError(
                f"variance must have shape {tuple(alpha_bar.shape)} with entries 1..T > 0"
            )
        return variance.to(alpha_bar)
    one_of("variance", variance, VARIANCES)
    if variance == "beta":
        return betas
    out = posterior_variance(alpha_bar)
    out[1] = betas[1]
    return out


# ----------------------------------------------------------------------------------------
# The reverse process, parameterised by a noise predictor


def p_mean(
    xt: torch.Tensor, eps: torch.Tensor, t, alpha_bar: torch.Tensor
) -> torch.Tensor:
    """The reverse step's mean written through the predicted noise, eq-diff-eps-mean:

        mu_theta(x_t, t) = (x_t - beta_t / sqrt(1 - abar_t) eps_theta(x_t, t))
                           / sqrt(alpha_t),

    i.e. the posterior mean mu~_t with x_0 replaced by its estimate
    (x_t - sqrt(1 - abar_t) eps_theta) / sqrt(abar_t) (`predict_x0`)."""
    float_tensor("xt", xt)
    same_shape("eps", eps, "xt", xt)
    t = _per_example("t", t, xt, len(alpha_bar) - 1)
    beta = _broadcast(betas_from_alpha_bar(alpha_bar), t, xt)
    a_t = _broadcast(alpha_bar, t, xt)
    return (xt - beta / (1 - a_t).sqrt() * eps) / (1 - beta).sqrt()


def predict_x0(
    xt: torch.Tensor, eps: torch.Tensor, t, alpha_bar: torch.Tensor
) -> torch.Tensor:
    """x^_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t): x_0 from x_t and the noise in
    it."""
    float_tensor("xt", xt)
    a_t = _broadcast(alpha_bar, _per_example("t", t, xt, len(alpha_bar) - 1), xt)
    return (xt - (1 - a_t).sqrt() * eps) / a_t.sqrt()


def gaussian_kl(mean1, var1, mean2, var2) -> torch.Tensor:
    """KL(N(mean1, var1) || N(mean2, var2)) per coordinate (chapter 1's closed form,
    eq-kl-gauss):

        1/2 (log(var2 / var1) + (var1 + (mean1 - mean2)^2) / var2 - 1).
    """
    for name, value in (
        ("mean1", mean1),
        ("var1", var1),
        ("mean2", mean2),
        ("var2", var2),
    ):
        float_tensor(name, value)
    return 0.5 * (
        torch.log(var2) - torch.log(var1) + (var1 + (mean1 - mean2) ** 2) / var2 - 1
    )


def elbo_weight(alpha_bar: torch.Tensor, variance="posterior") -> torch.Tensor:
    """lambda_t = beta_t^2 / (2 sigma_t^2 alpha_t (1 - abar_t)), t = 0..T (entry 0
    unused): the weight that turns the KL term of step t into a squared error of the noise
    prediction,

        KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))
            = lambda_t ||eps - eps_theta(x_t, t)||^2 + KL(q || N(mu~_t, sigma_t^2 I)),

    eq-diff-kl-eps (the second term has no parameters: it vanishes when sigma_t^2 =
    beta~_t).
    """
    betas = betas_from_alpha_bar(alpha_bar)
    sigma2 = reverse_variance(alpha_bar, variance)
    out = betas[1:] ** 2 / (2 * sigma2[1:] * (1 - betas[1:]) * (1 - alpha_bar[1:]))
    return torch.cat([alpha_bar.new_zeros(1), out])


# ----------------------------------------------------------------------------------------
# The decoder p(x_0 | x_1) for images with L grey levels in [-1, 1]


def levels_to_unit(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Grey levels 0..L-1 -> the bin centres -1 + 2 k / (L - 1) in [-1, 1]."""
    return x * (2 / (levels - 1)) - 1


def unit_to_levels(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Values in R -> the nearest grey level 0..L-1 (floats), the inverse of
    `levels_to_unit`."""
    return ((x + 1) * ((levels - 1) / 2)).round().clamp(0, levels - 1)


def _log_normal_interval(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log(Phi(b) - Phi(a)) for a < b, without cancellation: on the right of zero it uses
    Phi(b) - Phi(a) = Phi(-a) - Phi(-b)."""
    flip = (a + b) > 0
    a, b = torch.where(flip, -b, a), torch.where(flip, -a, b)
    log_b, log_a = torch.special.log_ndtr(b), torch.special.log_ndtr(a)
    return log_b + torch.log1p(-torch.exp(log_a - log_b).clamp(max=1 - 1e-12))


def discretised_gaussian_log_prob(
    x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, levels: int
) -> torch.Tensor:
    """log p(x_0 | x_1) per coordinate for L grey levels, eq-diff-decoder (Ho et al.
    2020):

        p(x | mean, std) = Phi((x + delta - mean) / std) - Phi((x - delta - mean) / std),

    x at the bin centres -1 + 2 k / (L - 1), delta = 1 / (L - 1) half a bin, and the first
    and last bins stretched to -inf and +inf so that the L probabilities sum to one."""
    positive_int("levels", levels)
    float_tensor("x", x)
    same_shape("mean", mean, "x", x)
    delta = 1 / (levels - 1)
    upper = torch.where(
        x > 1 - delta, torch.full_like(x, math.inf), (x + delta - mean) / std
    )
    lower = torch.where(
        x < -1 + delta, torch.full_like(x, -math.inf), (x - delta - mean) / std
    )
    return _log_normal_interval(lower, upper)


# ----------------------------------------------------------------------------------------
# The ELBO as a sum of KL divergences


def _call(eps_fn, xt, t_network):
    eps = eps_fn(xt, t_network)
    if not isinstance(eps, torch.Tensor) or eps.shape != xt.shape:
        raise ValueError(
            f"eps_fn(x_t, t) must return a tensor of x_t's shape {tuple(xt.shape)}, got "
            f"{getattr(eps, 'shape', type(eps).__name__)}"
        )
    return eps


def neg_elbo_terms(
    eps_fn,
    x0: torch.Tensor,
    alpha_bar: torch.Tensor,
    *,
    variance="posterior",
    levels: int | None = None,
    times: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """The terms of minus the ELBO of every example, in nats, eq-diff-elbo in
    book/10-diffusion.md:

        -log p(x_0) <= KL(q(x_T | x_0) || N(0, I))                             "prior"
              + sum_{t=2..T} E_q KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))   "kl"
              - E_q log p(x_0 | x_1)                                           "decoder"

    Every KL is between Gaussians and computed in closed form (`gaussian_kl`); the
    expectation over x_t ~ q(x_t | x_0) is estimated with one draw per step t. eps_fn(x_t,
    t) is the noise predictor; t is a long tensor of shape (1,), the network's time
    ``times[t]`` for the whole batch (the identity unless the chain was `respace`d).
    ``levels=None``: continuous data, a Gaussian decoder N(mu_theta(x_1, 1), sigma_1^2);
    ``levels=L``: x0 at the bin centres of L levels in [-1, 1] and the discretised
    decoder (`discretised_gaussian_log_prob`), a bound on the discrete log-likelihood.
    Evaluated step by step, without gradients. Returns ``{"total", "prior", "kl",
    "decoder"}`` of shape (n,) and "per_step" (T + 1, n) (entry t holds step t's term:
    decoder at 1, KL at 2..T).
    """
    float_tensor("x0", x0)
    _schedule("alpha_bar", alpha_bar)
    T, n, dims = len(alpha_bar) - 1, len(x0), tuple(range(1, x0.dim()))
    if times is None:
        times = torch.arange(T + 1, device=x0.device)
    elif times.shape != alpha_bar.shape:
        raise ValueError(
            f"times must have alpha_bar's shape {tuple(alpha_bar.shape)}, "
            f"got {tuple(times.shape)}"
        )
    times = times.to(x0.device)
    sigma2 = reverse_variance(alpha_bar, variance)
    per_step = x0.new_zeros(T + 1, n)
    with torch.no_grad():
        for step in range(2, T + 1):
            t = torch.full((n,), step, dtype=torch.long, device=x0.device)
            xt = q_sample(x0, t, alpha_bar, generator=generator)
            mean_q, var_q = q_posterior(x0, xt, t, alpha_bar)
            mean_p = p_mean(xt, _call(eps_fn, xt, times[step : step + 1]), t, alpha_bar)
            kl = gaussian_kl(mean_q, var_q, mean_p, sigma2[step].to(x0).expand_as(x0))
            per_step[step] = kl.sum(dims)
        one = torch.ones(n, dtype=torch.long, device=x0.device)
        x1 = q_sample(x0, one, alpha_bar, generator=generator)
        mean_1 = p_mean(x1, _call(eps_fn, x1, times[1:2]), one, alpha_bar)
        std_1 = _broadcast(sigma2, one, x0).sqrt()
        if levels is None:
            log_p = torch.distributions.Normal(mean_1, std_1).log_prob(x0)
        else:
            log_p = discretised_gaussian_log_prob(x0, mean_1, std_1.expand_as(x0), levels)
        per_step[1] = -log_p.sum(dims)
        mean_T, var_T = q_mean_var(x0, T, alpha_bar)
        prior = gaussian_kl(mean_T, var_T, torch.zeros_like(x0), torch.ones_like(x0)).sum(
            dims
        )
    kl = per_step[2:].sum(0)
    return {
        "total": prior + kl + per_step[1],
        "prior": prior,
        "kl": kl,
        "decoder": per_step[1],
        "per_step": per_step,
    }


def simple_loss(
    eps_fn,
    x0: torch.Tensor,
    alpha_bar: torch.Tensor,
    *,
    weights: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Ho et al.'s simple loss, eq-diff-simple,

        E_{t ~ U{1..T}, eps} ||eps - eps_theta(x_t, t)||^2,  x_t = q_sample(x_0, t, eps),

    per example (shape (n,), summed over coordinates). With ``weights`` = T * elbo_weight
    (entry 1 set to 0) it is instead an unbiased estimate of the KL part of -ELBO."""
    float_tensor("x0", x0)
    T = len(_schedule("alpha_bar", alpha_bar)) - 1
    t = torch.randint(1, T + 1, (len(x0),), device=x0.device, generator=generator)
    noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
    error = (
        (noise - _call(eps_fn, q_sample(x0, t, alpha_bar, noise), t))
        .pow(2)
        .flatten(1)
        .sum(1)
    )
    return error if weights is None else weights.to(x0)[t] * error


# ----------------------------------------------------------------------------------------
# Ancestral sampling


@torch.no_grad()
def ancestral_sample(
    eps_fn,
    shape,
    alpha_bar: torch.Tensor,
    *,
    variance="posterior",
    times: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device=None,
    trajectory: tuple = (),
):
    """x_T ~ N(0, I), then x_{t-1} = mu_theta(x_t, t) + sigma_t z, z ~ N(0, I), for t =
    T..2, and x_0 = mu_theta(x_1, 1), the decoder's mean, eq-diff-sampling. One call of
    eps_fn per step: T sequential network passes for a batch of any size.

    shape: (n, ...) of the samples; ``times``: the network's times (after `respace`).
    trajectory: steps t at which to keep x_t as well; then returns ``(x_0, {t: x_t})``.
    """
    shape = tuple(shape)
    positive_int("shape[0]", shape[0] if shape else 0)
    _schedule("alpha_bar", alpha_bar)
    T = len(alpha_bar) - 1
    times = (
        list(range(T + 1)) if times is None else [int(v) for v in times.tolist()]
    )  # one host copy
    sigma = reverse_variance(alpha_bar, variance).sqrt().tolist()
    x = torch.randn(shape, device=device, generator=generator)
    kept = {T: x} if T in trajectory else {}
    for t in range(T, 0, -1):
        step = torch.full((shape[0],), t, dtype=torch.long, device=x.device)
        mean = p_mean(
            x,
            _call(eps_fn, x, torch.full((1,), times[t], device=x.device)),
            step,
            alpha_bar,
        )
        if t > 1:
            x = mean + sigma[t] * torch.randn(shape, device=x.device, generator=generator)
        else:
            x = mean
        if t - 1 in trajectory:
            kept[t - 1] = x
    return (x, kept) if trajectory else x


# ----------------------------------------------------------------------------------------
# The noise predictor and the model


def timestep_embedding(
    t: torch.Tensor, dim: int, *, max_period: float = 10_000.0
) -> torch.Tensor:
    """Sinusoidal features of the step t (Vaswani et al. 2017, as in Ho et al. 2020): (n,)
    -> (n, dim)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period)
        * torch.arange(half, device=t.device, dtype=torch.float32)
        / half
    )
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class NoisePredictor(nn.Module):
    """eps_theta(x_t, t) for flat inputs: an MLP with ``depth`` residual blocks of
    ``hidden`` SiLU units, the step's sinusoidal embedding added inside every block. The
    output layer starts at zero (eps_theta = 0: the model starts as "x_0 is the data
    mean")."""

    def __init__(self, dim: int, *, hidden: int = 128, depth: int = 2):
        super().__init__()
        positive_int("dim", dim)
        positive_int("hidden", hidden)
        positive_int("depth", depth)
        self.hidden = hidden
        self.inp = nn.Linear(dim, hidden)
        self.time = nn.Linear(hidden, hidden)
        self.blocks = nn.ModuleList(
            nn.ModuleList(
                [
                    nn.Linear(hidden, hidden),
                    nn.Linear(hidden, hidden),
                    nn.Linear(hidden, hidden),
                ]
            )
            for _ in range(depth)
        )
        self.out = nn.Linear(hidden, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x: (n, dim); t: long (n,), or (1,) for one step shared by the batch (the
        step's features are then computed once, as in sampling and in the bound)."""
        act = nn.functional.silu
        emb = act(self.time(timestep_embedding(t, self.hidden)))  # (n or 1, hidden)
        h = self.inp(x)
        for first, from_time, second in self.blocks:
            h = h + second(act(first(act(h)) + from_time(emb)))
        return self.out(act(h))


class Diffusion(nn.Module):
    """A diffusion model: a fixed forward process with T steps and a learned noise
    predictor.

    event_shape: the shape of one example, e.g. (2,) for points or (1, 8, 8) for digits.
    levels:   None for continuous data, divided by ``scale`` (so that it has about unit
              variance); L for images with grey levels 0..L-1, mapped to bin centres in
              [-1, 1] and scored with the discretised decoder.
    steps, schedule: T and the noise schedule (`beta_schedule`); ``hidden``, ``depth``:
    the
              `NoisePredictor`. Interface as every model of the book: ``loss(x) -> dict``
              (the simple loss, eq-diff-simple), ``sample(n)``, and ``neg_elbo(x)``
              (eq-diff-elbo), all in data units.
    """

    def __init__(
        self,
        event_shape=(2,),
        *,
        levels: int | None = None,
        scale: float = 1.0,
        steps: int = 1000,
        schedule: str = "linear",
        hidden: int = 128,
        depth: int = 2,
        seed: int = 0,
    ):
        super().__init__()
        self.event_shape = tuple(event_shape)
        for d in self.event_shape:
            positive_int("event_shape entries", d)
        if levels is not None:
            positive_int("levels", levels)
        if not (isinstance(scale, (int, float)) and scale > 0):
            raise ValueError(f"scale must be a positive number, got {scale!r}")
        self.levels, self.scale, self.steps, self.schedule = (
            levels,
            float(scale),
            positive_int("steps", steps),
            schedule,
        )
        self.register_buffer(
            "alpha_bar", alpha_bar_from_betas(beta_schedule(schedule, steps)).float()
        )
        with seeded(seed):
            self.net = NoisePredictor(
                math.prod(self.event_shape), hidden=hidden, depth=depth
            )

    @property
    def device(self) -> torch.device:
        return self.alpha_bar.device

    def eps(self, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """eps_theta(x_t, t) for x_t of shape (n, *event_shape) and t a long tensor
        (n,)."""
        return self.net(xt.flatten(1), t).reshape(xt.shape)

    def to_model(self, x: torch.Tensor) -> torch.Tensor:
        """Data units -> the model's units x_0 (bin centres in [-1, 1], or x / scale)."""
        float_tensor("x", x)
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(
                f"x must have shape (n, {', '.join(map(str, self.event_shape))}), "
                f"got {tuple(x.shape)}"
            )
        return levels_to_unit(x, self.levels) if self.levels else x / self.scale

    def from_model(self, x0: torch.Tensor) -> torch.Tensor:
        """The model's units -> data units (the nearest grey level for images)."""
        return unit_to_levels(x0, self.levels) if self.levels else x0 * self.scale

    def loss(
        self, x: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """``{"loss": the simple loss (eq-diff-simple) averaged over the batch}``."""
        return {
            "loss": simple_loss(
                self.eps, self.to_model(x), self.alpha_bar, generator=generator
            ).mean()
        }

    def neg_elbo(
        self,
        x: torch.Tensor,
        *,
        steps: int | None = None,
        variance="posterior",
        seed: int = 0,
    ) -> dict[str, torch.Tensor]:
        """`neg_elbo_terms` of x (data units) in nats per example, on the full chain or
        one `respace`d to ``steps``. For continuous data the terms are in the data's units
        (the log-Jacobian of the scaling, -D log scale, is added to the decoder term)."""
        alpha_bar, times = respace(self.alpha_bar, steps or self.steps)
        generator = torch.Generator(device=x.device).manual_seed(seed)
        terms = neg_elbo_terms(
            self.eps,
            self.to_model(x),
            alpha_bar,
            variance=variance,
            levels=self.levels,
            times=times,
            generator=generator,
        )
        if not self.levels:
            jacobian = math.prod(self.event_shape) * math.log(self.scale)
            terms["decoder"] = terms["decoder"] + jacobian
            terms["total"] = terms["total"] + jacobian
        return terms

    def sample(
        self,
        n: int,
        *,
        steps: int | None = None,
        variance="posterior",
        generator: torch.Generator | None = None,
        trajectory: tuple = (),
    ):
        """n samples in data units by ancestral sampling (eq-diff-sampling) on the full
        chain or on one `respace`d to ``steps``; with ``trajectory``, also ``{t: x_t}`` in
        model units.
        """
        positive_int("n", n)
        alpha_bar, times = respace(self.alpha_bar, steps or self.steps)
        with evaluating(self):
            out = ancestral_sample(
                self.eps,
                (n, *self.event_shape),
                alpha_bar,
                variance=variance,
                times=times,
                generator=generator,
                device=self.device,
                trajectory=trajectory,
            )
        if trajectory:
            return self.from_model(out[0]), out[1]
        return self.from_model(out)


def sampling_time(
    model: Diffusion, n: int, *, steps: int | None = None, repeats: int = 1
) -> float:
    """Wall-clock seconds of ``model.sample(n, steps=steps)`` (the best of ``repeats``;
    CUDA synchronised)."""
    best = math.inf
    for _ in range(positive_int("repeats", repeats)):
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        model.sample(
            n, steps=steps, generator=torch.Generator(device=model.device).manual_seed(0)
        )
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


# ----------------------------------------------------------------------------------------
# Training


def train_diffusion(
    model: Diffusion,
    x: torch.Tensor,
    *,
    steps: int,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    x_val: torch.Tensor | None = None,
    every: int = 500,
    progress=None,
    desc: str | None = None,
) -> dict[str, torch.Tensor]:
    """Minimise the simple loss (eq-diff-simple) with Adam and a cosine learning-rate
    decay.

    Minibatches, steps t and noise are drawn on x's device from one seeded generator (the
    global generators are left alone). With ``x_val``, training runs in rounds of
    ``every`` steps; after each round minus the ELBO of x_val on a 100-step `respace`d
    chain (fixed seed) is measured, and the model ends with the weights of the best round
    (early stopping by model selection). Returns the history: "loss" per step, and with
    x_val "step" and "val" per round; "cpu_seconds", the process CPU time the training
    took.
    """
    float_tensor("x", x)
    positive_int("steps", steps)
    positive_int("batch_size", batch_size)
    start = time.process_time()
    g = torch.Generator(device=x.device).manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    rounds = steps // every if x_val is not None else 1
    per_round = steps // rounds
    best, history, losses = BestWeights(model), {"step": [], "val": []}, []

    def objective(step):
        batch = x[torch.randint(len(x), (batch_size,), device=x.device, generator=g)]
        return model.loss(batch, generator=g)

    model.train()
    for round_ in range(rounds):
        for group in optimizer.param_groups:  # cosine decay over the whole run, in rounds
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * round_ / rounds))
        schedule = "cosine" if x_val is None else "constant"
        losses.append(
            minimise(
                objective,
                (),
                steps=per_round,
                optimizer=optimizer,
                schedule=schedule,
                progress=progress,
                desc=desc,
            )["loss"]
        )
        if x_val is not None:
            model.eval()
            value = model.neg_elbo(x_val)["total"].mean().item()
            model.train()
            history["step"].append((round_ + 1) * per_round)
            history["val"].append(value)
            best.update(value)
    best.restore()
    model.eval()
    out = {
        "loss": torch.cat(losses),
        "cpu_seconds": torch.tensor(time.process_time() - start),
    }
    if x_val is not None:
        out |= {k: torch.tensor(v, dtype=torch.float32) for k, v in history.items()}
    return out


# ----------------------------------------------------------------------------------------
# The book's trained models and their recipe: lib.zoo ("diffusion/<name>",
# lib/zoo/diffusion.py).

__getattr__ = moved(
    "diffusion", ("TOY_SEEDS", "TOY_SCALE", "CONFIGS", "build", "train_reference")
)
