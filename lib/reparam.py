"""Chapter 05: the reparameterization trick, and gradients through sampling.

The objective is an expectation under a distribution with parameters phi,
L(phi) = E_{q_phi(z)}[f(z)], and we want its gradient from samples
(book/05-reparameterization.md).

Score function (REINFORCE)   grad L = E_q[(f(z) - b) grad_phi log q_phi(z)]
                             (eq-reparam-score): needs only samples and log q; works
                             for discrete z and any f; `score_function_grad`.
Pathwise (reparameterised)   z = g(eps, phi), eps ~ p(eps) free of phi:
                             grad L = E_eps[grad_phi f(g(eps, phi))]
                             (eq-reparam-pathwise): needs a differentiable f and sampler;
                             `pathwise_grad`.

Samplers written as z = g(eps, phi), so that gradients reach the parameters, in the three
families of Kingma & Welling (2014):

inverse CDF      z = F^{-1}(u; phi), u ~ U(0, 1)  (eq-reparam-inverse-cdf)
                 `sample_inverse_cdf`, `sample_exponential`, `sample_weibull`,
                 `sample_gumbel`
location-scale   z = loc + scale * eps, eps ~ the standard member
                 (eq-reparam-location-scale)
                 `sample_normal`, `sample_laplace`, `sample_student_t`
composition      z = h(eps_1, ..., eps_m) of simpler variates  (eq-reparam-composition)
                 `sample_lognormal`, `sample_erlang`, `sample_beta`

Discrete z has no such g; the Gumbel-max trick samples it exactly (`gumbel_max`) and the
Gumbel-softmax / Concrete relaxation replaces the argmax by a tempered softmax that
gradients can pass (`gumbel_softmax`).

Every sampler takes tensors of parameters (broadcast together) and a sample ``shape``
that is prepended, like ``torch.distributions``' ``rsample(sample_shape)``; its result
has shape ``shape + broadcast(parameters).shape`` and lives on the parameters' device,
with their dtype. ``generator`` (optional) is a ``torch.Generator`` on that device, for
repeatable draws. Value checks (a positive scale, ...) run on CPU tensors only, so that
a CUDA training step never waits for the host.
"""

import math
from contextlib import nullcontext

import torch

from lib.checks import float_tensor, is_int, positive_int
from lib.device import seeded

# ----------------------------------------------------------------------------------------
# Checking inputs


def _params(**named) -> list[torch.Tensor]:
    """Check floating-point tensors on one device; broadcast them; return them in
    order."""
    tensors = [float_tensor(name, value) for name, value in named.items()]
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        raise ValueError(
            f"{', '.join(named)} must be on one device, got {sorted(map(str, devices))}"
        )
    try:
        return list(torch.broadcast_tensors(*tensors))
    except RuntimeError:
        shapes = ", ".join(f"{n} {tuple(t.shape)}" for n, t in zip(named, tensors))
        raise ValueError(f"parameters must broadcast together, got {shapes}") from None


def _positive(name: str, value: torch.Tensor) -> None:
    if value.device.type == "cpu" and not bool((value > 0).all()):
        raise ValueError(
            f"{name} must be positive, got a minimum of {value.detach().min().item():.4g}"
        )


def _shape(shape) -> tuple[int, ...]:
    if is_int(shape):
        shape = (shape,)
    if not isinstance(shape, (tuple, list, torch.Size)) or not all(
        is_int(s) and s >= 0 for s in shape
    ):
        raise ValueError(
            f"shape must be a tuple of non-negative ints (the sample shape), got "
            f"{shape!r}"
        )
    return tuple(shape)


# ----------------------------------------------------------------------------------------
# Noise that does not depend on the parameters


def uniform(
    shape, *, like: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """u ~ U(0, 1) in the open interval (0 < u < 1), with the dtype and device of
    ``like``."""
    u = torch.rand(
        _shape(shape), dtype=like.dtype, device=like.device, generator=generator
    )
    return u.clamp(min=torch.finfo(like.dtype).tiny)  # torch.rand can return exactly 0


def _normal(shape, like, generator):
    return torch.randn(
        _shape(shape), dtype=like.dtype, device=like.device, generator=generator
    )


# ----------------------------------------------------------------------------------------
# Family 1: a tractable inverse CDF, z = F^{-1}(u; phi) with u ~ U(0, 1)


def sample_inverse_cdf(
    icdf, shape, *, like: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """z = icdf(u), u ~ U(0, 1) of the given shape (eq-reparam-inverse-cdf).

    ``icdf(u)`` is the quantile function F^{-1}(u; phi) written with differentiable torch
    operations on the parameters phi, so the result carries their gradient. Because
    P(F^{-1}(U) <= z) = P(U <= F(z)) = F(z), z has CDF F. ``like`` gives dtype and device.
    """
    if not callable(icdf):
        raise TypeError(f"icdf must be a function of u, got {type(icdf).__name__}")
    float_tensor("like", like)
    return icdf(uniform(shape, like=like, generator=generator))


def sample_exponential(rate: torch.Tensor, shape=(), *, generator=None) -> torch.Tensor:
    """Exponential(rate): F(z) = 1 - exp(-rate z), so z = -log(1 - u) / rate
    (eq-reparam-inverse-cdf-examples)."""
    (rate,) = _params(rate=rate)
    _positive("rate", rate)
    return sample_inverse_cdf(
        lambda u: -torch.log1p(-u) / rate,
        _shape(shape) + rate.shape,
        like=rate,
        generator=generator,
    )


def sample_weibull(
    scale: torch.Tensor, concentration: torch.Tensor, shape=(), *, generator=None
) -> torch.Tensor:
    """Weibull(scale lambda, concentration k): F(z) = 1 - exp(-(z / lambda)^k), so
    z = lambda (-log(1 - u))^{1/k} (eq-reparam-inverse-cdf-examples). k = 1 is the
    exponential with rate 1/lambda."""
    scale, concentration = _params(scale=scale, concentration=concentration)
    _positive("scale", scale)
    _positive("concentration", concentration)
    return sample_inverse_cdf(
        lambda u: scale * (-torch.log1p(-u)) ** (1 / concentration),
        _shape(shape) + scale.shape,
        like=scale,
        generator=generator,
    )


def sample_gumbel(
    loc: torch.Tensor, scale: torch.Tensor, shape=(), *, generator=None
) -> torch.Tensor:
    """Gumbel(loc, scale): F(z) = exp(-exp(-(z - loc) / scale)), so z = loc - scale
    log(-log u) (eq-reparam-inverse-cdf-examples). The standard Gumbel (0, 1) is the
    noise of `gumbel_max` and `gumbel_softmax`."""
    loc, scale = _params(loc=loc, scale=scale)
    _positive("scale", scale)
    return sample_inverse_cdf(
        lambda u: loc - scale * torch.log(-torch.log(u)),
        _shape(shape) + loc.shape,
        like=loc,
        generator=generator,
    )


# ----------------------------------------------------------------------------------------
# Family 2: location-scale, z = loc + scale * eps with eps from the standard member


def sample_normal(
    loc: torch.Tensor, scale: torch.Tensor, shape=(), *, generator=None
) -> torch.Tensor:
    """N(loc, scale^2): z = loc + scale * eps, eps ~ N(0, 1) (eq-reparam-gaussian); the
    VAE's sampler."""
    loc, scale = _params(loc=loc, scale=scale)
    _positive("scale", scale)
    return loc + scale * _normal(_shape(shape) + loc.shape, loc, generator)


def sample_laplace(
    loc: torch.Tensor, scale: torch.Tensor, shape=(), *, generator=None
) -> torch.Tensor:
    """Laplace(loc, scale): z = loc + scale * eps with eps ~ Laplace(0, 1)
    (eq-reparam-location-scale), eps = -sign(v) log(1 - 2|v|), v = u - 1/2 (the standard
    Laplace's own inverse CDF)."""
    loc, scale = _params(loc=loc, scale=scale)
    _positive("scale", scale)
    v = uniform(_shape(shape) + loc.shape, like=loc, generator=generator) - 0.5
    eps = -torch.sign(v) * torch.log1p(-2 * v.abs())
    return loc + scale * eps


def sample_student_t(
    loc: torch.Tensor, scale: torch.Tensor, df: int, shape=(), *, generator=None
) -> torch.Tensor:
    """Student's t with ``df`` degrees of freedom: z = loc + scale * eps
    (eq-reparam-location-scale), eps = n / sqrt(c / df) with n ~ N(0, 1) and c ~
    chi^2_df a sum of df squared normals.

    df is fixed (an int): the trick reparameterises loc and scale, not the degrees of
    freedom.
    """
    loc, scale = _params(loc=loc, scale=scale)
    positive_int("df", df)
    _positive("scale", scale)
    shape = _shape(shape) + loc.shape
    n = _normal(shape, loc, generator)
    chi2 = _normal(shape + (df,), loc, generator).square().sum(-1)
    return loc + scale * n / (chi2 / df).sqrt()


# ----------------------------------------------------------------------------------------
# Family 3: composition of simpler variates


def sample_lognormal(
    mu: torch.Tensor, sigma: torch.Tensor, shape=(), *, generator=None
) -> torch.Tensor:
    """LogNormal(mu, sigma): z = exp(mu + sigma * eps), eps ~ N(0, 1)
    (eq-reparam-composition)."""
    return torch.exp(sample_normal(mu, sigma, shape, generator=generator))


def sample_erlang(
    k: int, rate: torch.Tensor, shape=(), *, generator=None
) -> torch.Tensor:
    """Gamma(k, rate) for an integer shape k (the Erlang distribution): the sum of k
    independent Exponential(rate) variates, z = -sum_{i=1}^k log(1 - u_i) / rate
    (eq-reparam-composition).

    Gradients reach the rate; a non-integer shape needs implicit reparameterisation
    (`sample_beta`).
    """
    positive_int("k", k)
    (rate,) = _params(rate=rate)
    _positive("rate", rate)
    u = uniform(_shape(shape) + rate.shape + (k,), like=rate, generator=generator)
    return -torch.log1p(-u).sum(-1) / rate


def sample_beta(
    a: torch.Tensor, b: torch.Tensor, shape=(), *, generator=None
) -> torch.Tensor:
    """Beta(a, b) as a ratio of Gammas: z = x / (x + y), x ~ Gamma(a, 1), y ~ Gamma(b, 1)
    (eq-reparam-composition).

    The Gamma variates come from ``torch._standard_gamma`` (the sampler behind
    ``torch.distributions.Gamma.rsample``), whose gradient with respect to the shape is
    the implicit reparameterisation gradient dz/da = -(dF(z; a)/da) / q(z; a) of
    Figurnov et al. (2018): no closed-form g exists, but the derivative of z along its
    CDF level set does.
    """
    a, b = _params(a=a, b=b)
    _positive("a", a)
    _positive("b", b)
    shape = _shape(shape) + a.shape
    x = torch._standard_gamma(a.expand(shape), generator=generator)
    y = torch._standard_gamma(b.expand(shape), generator=generator)
    return x / (x + y)


# ----------------------------------------------------------------------------------------
# Discrete latents: Gumbel-max and its relaxation


def _check_logits(logits) -> torch.Tensor:
    float_tensor("logits", logits)
    if logits.dim() == 0 or logits.shape[-1] < 2:
        raise ValueError(
            f"logits must have shape (..., K) with K >= 2 categories, got "
            f"{tuple(logits.shape)}"
        )
    return logits


def gumbel_max(logits: torch.Tensor, shape=(), *, generator=None) -> torch.Tensor:
    """Exact samples of Categorical(softmax(logits)) by the Gumbel-max trick
    (eq-reparam-gumbel-max):
    k = argmax_j (logits_j + g_j), g_j ~ Gumbel(0, 1) independent.

    Returns int64 indices of shape ``shape + logits.shape[:-1]``. The argmax is piecewise
    constant in the logits: a sample, but no gradient.
    """
    logits = _check_logits(logits)
    g = sample_gumbel(
        torch.zeros_like(logits), torch.ones_like(logits), shape, generator=generator
    )
    return (logits.detach() + g).argmax(-1)


def gumbel_softmax(
    logits: torch.Tensor, tau: float, shape=(), *, hard: bool = False, generator=None
) -> torch.Tensor:
    """A Gumbel-softmax (Concrete) sample y = softmax((logits + g) / tau), g ~ Gumbel(0,
    1) (eq-reparam-gumbel-softmax), of shape ``shape + logits.shape``: a point of the
    simplex that tends to the one-hot Gumbel-max sample as tau -> 0 and to the uniform
    vector as tau -> inf.

    hard=True returns the one-hot argmax in the forward pass and the relaxed sample's
    gradient in the backward pass (the straight-through variant of Jang et al. 2017).
    """
    logits = _check_logits(logits)
    if (
        isinstance(tau, bool)
        or not isinstance(tau, (int, float))
        or not tau > 0
        or math.isinf(tau)
    ):
        raise ValueError(
            f"tau must be a positive finite number (the temperature), got {tau!r}"
        )
    g = sample_gumbel(
        torch.zeros_like(logits.detach()),
        torch.ones_like(logits.detach()),
        shape,
        generator=generator,
    )
    y = torch.softmax((logits + g) / tau, -1)
    if not hard:
        return y
    one_hot = torch.nn.functional.one_hot(y.argmax(-1), y.shape[-1]).to(y.dtype)
    return one_hot - y.detach() + y


# ----------------------------------------------------------------------------------------
# Two estimators of grad_phi E_{q_phi}[f(z)]


def _per_sample_leaves(params, n: int) -> list[torch.Tensor]:
    """One detached copy of every parameter per sample, shape (n, *param.shape),
    requiring grad.

    Sample i then depends only on copy i, so the gradient of sum_i f(z_i) with respect
    to the copies holds the n one-sample gradient estimates, without a loop."""
    if (
        isinstance(params, torch.Tensor)
        or not isinstance(params, (tuple, list))
        or not params
    ):
        raise TypeError(
            "params must be a non-empty tuple or list of tensors, e.g. (mu, sigma)"
        )
    for i, p in enumerate(params):
        float_tensor(f"params[{i}]", p)
    positive_int("n", n)
    return [
        p.detach().unsqueeze(0).expand(n, *p.shape).clone().requires_grad_(True)
        for p in params
    ]


def _values(f, z: torch.Tensor, n: int) -> torch.Tensor:
    values = f(z)
    if not isinstance(values, torch.Tensor) or values.shape != (n,):
        got = (
            tuple(values.shape)
            if isinstance(values, torch.Tensor)
            else type(values).__name__
        )
        raise ValueError(
            f"f must map the n = {n} samples to a tensor of shape ({n},), got {got}"
        )
    return values


def _zeros_for_unused(grads, leaves):
    return tuple(
        torch.zeros_like(leaf) if g is None else g for g, leaf in zip(grads, leaves)
    )


def pathwise_grad(
    f, rsample, params, n: int, *, seed: int | None = None
) -> tuple[torch.Tensor, ...]:
    """n independent one-sample pathwise estimates of grad_params E[f(z)]
    (eq-reparam-pathwise):

        grad_phi f(g(eps_i, phi)) = f'(z_i) dg(eps_i, phi)/dphi,  eps_i independent of
                                                                  phi.

    rsample: ``rsample(*params) -> z`` draws one sample per row: it gets every parameter
             with a leading sample dimension of size n and returns z with leading
             dimension n, with the gradient path intact (e.g. ``lambda m, s:
             sample_normal(m, s)`` or ``lambda m, s: Normal(m, s).rsample()``).
    f:       maps z to one value per sample, shape (n,), without mixing samples. Where
             autograd sees no dependence of f(z) on z (a step function), the estimates
             are zeros: the pathwise estimator cannot see through a piecewise constant
             f.
    Returns one tensor per parameter, of shape (n, *param.shape); their mean over dim 0
    is the n-sample estimate, their variance the per-sample variance of the estimator.
    """
    if not callable(rsample) or not callable(f):
        raise TypeError("f and rsample must be functions")
    leaves = _per_sample_leaves(params, n)
    with nullcontext() if seed is None else seeded(seed):
        z = rsample(*leaves)
    if not isinstance(z, torch.Tensor) or z.dim() == 0 or len(z) != n:
        raise ValueError(
            f"rsample must return a tensor with leading dimension n = {n}, got "
            f"{tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__}"
        )
    if not z.requires_grad:
        raise ValueError(
            "rsample returned samples with no gradient path to the parameters "
            "(use a reparameterised sampler, e.g. rsample() rather than sample())"
        )
    total = _values(f, z, n).sum()
    # f is piecewise constant (a comparison, an argmax): its derivative is 0
    if not total.requires_grad:
        return tuple(torch.zeros_like(leaf) for leaf in leaves)
    grads = torch.autograd.grad(total, leaves, allow_unused=True)
    return _zeros_for_unused(grads, leaves)


def score_function_grad(
    f, dist, params, n: int, *, baseline=0.0, seed: int | None = None
) -> tuple[torch.Tensor, ...]:
    """n independent one-sample score-function (REINFORCE) estimates of grad_params
    E[f(z)] (eq-reparam-score, with a baseline as in eq-reparam-baseline):

        (f(z_i) - b) grad_phi log q_phi(z_i),  z_i ~ q_phi, no gradient through z_i or f.

    dist:     ``dist(*params) -> torch.distributions.Distribution`` with batch shape
              starting with n (it gets every parameter with a leading sample dimension
              of size n); one sample per row is drawn with ``sample()`` and scored with
              ``log_prob``, summed over the other dimensions. Works for discrete
              distributions too.
    baseline: b, a float or a tensor broadcastable to (n,) that does not depend on z_i
              (e.g. an estimate of E[f] from other samples): subtracting it keeps the
              estimator unbiased, because E_q[grad log q] = 0, and can shrink its
              variance.
    Returns one tensor per parameter, of shape (n, *param.shape).
    """
    if not callable(dist) or not callable(f):
        raise TypeError("f and dist must be functions")
    leaves = _per_sample_leaves(params, n)
    q = dist(*leaves)
    if not isinstance(q, torch.distributions.Distribution):
        raise TypeError(
            f"dist must return a torch.distributions.Distribution, got {type(q).__name__}"
        )
    with nullcontext() if seed is None else seeded(seed):
        z = q.sample()
    if z.dim() == 0 or len(z) != n:
        raise ValueError(
            f"dist(*params) must have batch shape starting with n = {n}, its samples "
            f"have shape {tuple(z.shape)}"
        )
    with torch.no_grad():
        weight = _values(f, z, n) - torch.as_tensor(
            baseline, dtype=leaves[0].dtype, device=z.device
        )
    if weight.shape != (n,):
        raise ValueError(
            f"baseline must broadcast to shape ({n},), got "
            f"{tuple(torch.as_tensor(baseline).shape)}"
        )
    log_q = q.log_prob(z).reshape(n, -1).sum(1)
    grads = torch.autograd.grad((weight * log_q).sum(), leaves, allow_unused=True)
    return _zeros_for_unused(grads, leaves)
