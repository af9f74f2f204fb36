"""Chapter 03: the evidence lower bound, EM, and importance-weighted bounds.

For any distribution q(z) over the latents of one observation x (eq-elbo-decomposition in
book/03-elbo.md),

    log p(x) = ELBO(q) + KL(q(z) || p(z | x)),   ELBO(q) = E_q[log p(x, z) - log q(z)],

so the ELBO is a lower bound, tight exactly when q is the posterior. Two latent variable
models with a tractable log p(x) make every term of this identity computable:

Gaussian mixture   z ~ Categorical(weights), x | z=k ~ N(means_k, covs_k). EM is
                   coordinate ascent on the ELBO: the E-step (`gmm_e_step`) sets q to
                   the posterior (responsibilities) and closes the gap, the M-step
                   (`gmm_m_step`) raises the ELBO in the parameters, so log p(x) never
                   decreases (`gmm_em`).
Probabilistic PCA  z ~ N(0, I), x | z ~ N(W z + b, sigma2 I), so p(x) = N(b, W W^T +
                   sigma2 I) (`ppca_log_marginal`) and p(z | x) is Gaussian
                   (`ppca_posterior`). With a factorised q the gap stays open
                   (`ppca_mean_field_posterior`, `ppca_em`); importance weighting
                   (`iwae_bound`) closes it as K grows.

Shapes: x is (n, d) (use ``x[:, None]`` for 1-D data), means (K, d), covs (K, d, d),
responsibilities (n, K); PPCA's W is (d, q_dim), b (d,), sigma2 a positive scalar.
"""

import math

import torch
from torch.distributions import (
    Distribution,
    Independent,
    MultivariateNormal,
    Normal,
    kl_divergence,
)

from lib.checks import float_tensor, int_in, nonnegative_int, positive_int
from lib.device import seeded

# ----------------------------------------------------------------------------------------
# Checking inputs


def _check_x(x) -> torch.Tensor:
    shape = "(n, d) with n >= 1 (use x[:, None] for 1-D data)"
    return float_tensor("x", x, dim=2, shape=shape, nonempty=True)


def _check_gmm(x, weights, means, covs) -> tuple[int, int]:
    n, d = _check_x(x).shape
    for name, value in (("weights", weights), ("means", means), ("covs", covs)):
        float_tensor(name, value)
    if weights.dim() != 1:
        raise ValueError(f"weights must have shape (K,), got {tuple(weights.shape)}")
    K = len(weights)
    if (weights < 0).any() or not torch.isclose(
        weights.sum(), weights.new_tensor(1.0), atol=1e-5
    ):
        raise ValueError(
            f"weights must be non-negative and sum to 1, got a sum of "
            f"{weights.sum().item():.6g}"
        )
    if means.shape != (K, d):
        raise ValueError(
            f"means must have shape (K, d) = ({K}, {d}), got {tuple(means.shape)}"
        )
    if covs.shape != (K, d, d):
        raise ValueError(
            f"covs must have shape (K, d, d) = ({K}, {d}, {d}), got {tuple(covs.shape)}"
        )
    return n, K


def _check_resp(resp, n: int, K: int) -> torch.Tensor:
    float_tensor("resp", resp)
    if resp.shape != (n, K):
        raise ValueError(
            f"resp must have shape (n, K) = ({n}, {K}), got {tuple(resp.shape)}"
        )
    if (resp < 0).any():
        raise ValueError(
            f"resp must be non-negative, got a minimum of {resp.min().item():.3g}"
        )
    total = resp.sum(1)
    if not torch.allclose(total, torch.ones_like(total), atol=1e-5):
        worst = total[(total - 1).abs().argmax()]
        raise ValueError(
            f"each row of resp is a distribution q(z_n) and must sum to 1, got a row "
            f"summing to {worst.item():.6g}"
        )
    return resp


# ----------------------------------------------------------------------------------------
# The Gaussian mixture


def gmm_log_joint(
    x: torch.Tensor, weights: torch.Tensor, means: torch.Tensor, covs: torch.Tensor
) -> torch.Tensor:
    """log p(x_n, z_n = k) = log weights_k + log N(x_n; means_k, covs_k), shape (n, K)."""
    _check_gmm(x, weights, means, covs)
    return weights.log() + MultivariateNormal(means, covariance_matrix=covs).log_prob(
        x[:, None, :]
    )


def gmm_log_likelihood(
    x: torch.Tensor, weights: torch.Tensor, means: torch.Tensor, covs: torch.Tensor
) -> torch.Tensor:
    """log p(x) = sum_n log sum_k weights_k N(x_n; means_k, covs_k), summed over the n
    points."""
    return torch.logsumexp(gmm_log_joint(x, weights, means, covs), 1).sum()


def gmm_e_step(
    x: torch.Tensor, weights: torch.Tensor, means: torch.Tensor, covs: torch.Tensor
) -> torch.Tensor:
    """Responsibilities r_nk = p(z_n = k | x_n), shape (n, K), each row summing to 1
    (eq-elbo-e-step):

    r_nk = weights_k N(x_n; means_k, covs_k) / sum_j weights_j N(x_n; means_j, covs_j).
    """
    return torch.softmax(gmm_log_joint(x, weights, means, covs), 1)


def gmm_elbo(
    x: torch.Tensor,
    weights: torch.Tensor,
    means: torch.Tensor,
    covs: torch.Tensor,
    resp: torch.Tensor,
) -> torch.Tensor:
    """ELBO(q, theta) with q(z_n = k) = resp_nk, summed over the points (eq-elbo-gmm):

        sum_n sum_k r_nk [log p(x_n, z_n = k) - log r_nk]
          = E_q[log p(x, z)]  +  H[q]        (the entropy term; 0 log 0 = 0).

    Equals `gmm_log_likelihood` when resp is `gmm_e_step` of the same parameters.
    """
    n, K = _check_gmm(x, weights, means, covs)
    return _elbo_from_log_joint(
        gmm_log_joint(x, weights, means, covs), _check_resp(resp, n, K)
    )


def _elbo_from_log_joint(log_joint: torch.Tensor, resp: torch.Tensor) -> torch.Tensor:
    # 0 * log 0 = 0 for empty components
    expected_log_joint = torch.where(resp > 0, resp * log_joint, 0.0)
    entropy = -torch.xlogy(resp, resp)
    return (expected_log_joint + entropy).sum()


def gmm_m_step(x: torch.Tensor, resp: torch.Tensor, *, reg: float = 1e-6):
    """The parameters that maximise the ELBO for fixed responsibilities (eq-elbo-m-step):

        N_k = sum_n r_nk,   weights_k = N_k / n,   means_k = sum_n r_nk x_n / N_k,
        covs_k = sum_n r_nk (x_n - means_k)(x_n - means_k)^T / N_k  (+ reg I, against
                                                                    collapse).

    Returns ``(weights, means, covs)``.
    """
    n, d = _check_x(x).shape
    if not isinstance(resp, torch.Tensor) or resp.dim() != 2:
        raise ValueError(
            f"resp must have shape (n, K), got "
            f"{getattr(resp, 'shape', type(resp).__name__)}"
        )
    resp = _check_resp(resp, n, resp.shape[1])
    if reg < 0:
        raise ValueError(f"reg must be non-negative, got {reg!r}")
    N_k = resp.sum(0)
    if (N_k <= 0).any():
        raise ValueError(
            f"every component needs some responsibility; component(s) "
            f"{(N_k <= 0).nonzero().flatten().tolist()} have none"
        )
    weights = N_k / n
    means = resp.T @ x / N_k[:, None]
    diff = x[None] - means[:, None]  # (K, n, d)
    covs = torch.einsum("nk,kni,knj->kij", resp, diff, diff) / N_k[:, None, None]
    covs = covs + reg * torch.eye(d, dtype=x.dtype, device=x.device)
    return weights, means, covs


def gmm_init(x: torch.Tensor, K: int, *, seed: int = 0):
    """A seeded start for EM: K distinct data points as means, the data covariance for
    every component, equal weights. Returns ``(weights, means, covs)``."""
    n, d = _check_x(x).shape
    int_in("K", K, 1, n, " (the number of points)")
    g = torch.Generator().manual_seed(seed)
    means = x[torch.randperm(n, generator=g)[:K].to(x.device)].clone()
    cov = (
        torch.atleast_2d(torch.cov(x.T))
        if n > 1
        else torch.eye(d, dtype=x.dtype, device=x.device)
    )
    covs = cov.expand(K, d, d).clone() + 1e-6 * torch.eye(
        d, dtype=x.dtype, device=x.device
    )
    return torch.full((K,), 1 / K, dtype=x.dtype, device=x.device), means, covs


def gmm_em(
    x: torch.Tensor,
    K: int | None = None,
    *,
    iterations: int = 50,
    init=None,
    seed: int = 0,
    hard: bool = False,
    reg: float = 1e-6,
):
    """EM for a Gaussian mixture, recording both sides of the bound at every half-step.

    Start from ``init = (weights, means, covs)`` or from `gmm_init(x, K, seed)`.
    Iteration t:
        E-step   q_t = p(z | x, theta_{t-1}): ELBO(q_t, theta_{t-1}) = log p(x |
                 theta_{t-1})
        M-step   theta_t = argmax ELBO(q_t, .): ELBO(q_t, theta_t) <= log p(x | theta_t)
    hard=True restricts q to one-hot assignments (the E-step picks argmax_k p(z_n = k |
    x_n)):
        a variational EM whose gap, -sum_n log p(z_n* | x_n), stays open.
    Returns ``((weights, means, covs), history)`` with history entries
        "log_likelihood"  log p(x | theta_t) for t = 0..iterations (length iterations +
                          1)
        "elbo_e_step"     ELBO(q_t, theta_{t-1})                    (length iterations)
        "elbo_m_step"     ELBO(q_t, theta_t)                        (length iterations)
    """
    x = _check_x(x)
    nonnegative_int("iterations", iterations)
    if init is None:
        if K is None:
            raise ValueError(
                "give K (the number of components) or init = (weights, means, covs)"
            )
        weights, means, covs = gmm_init(x, K, seed=seed)
    else:
        weights, means, covs = init
        _check_gmm(x, weights, means, covs)
    # One log-joint table per parameter setting serves the E-step, both ELBOs and log
    # p(x).
    log_joint = gmm_log_joint(x, weights, means, covs)
    history = {
        "log_likelihood": [torch.logsumexp(log_joint, 1).sum()],
        "elbo_e_step": [],
        "elbo_m_step": [],
    }
    for _ in range(iterations):
        # = gmm_e_step
        resp = torch.softmax(log_joint, 1)
        if hard:
            resp = torch.nn.functional.one_hot(resp.argmax(1), resp.shape[1]).to(x.dtype)
        history["elbo_e_step"].append(_elbo_from_log_joint(log_joint, resp))
        weights, means, covs = gmm_m_step(x, resp, reg=reg)
        log_joint = gmm_log_joint(x, weights, means, covs)
        history["elbo_m_step"].append(_elbo_from_log_joint(log_joint, resp))
        # = gmm_log_likelihood
        history["log_likelihood"].append(torch.logsumexp(log_joint, 1).sum())
    empty = x.new_zeros(0)
    return (weights, means, covs), {
        k: torch.stack(v) if v else empty for k, v in history.items()
    }


# ----------------------------------------------------------------------------------------
# Probabilistic PCA


def _check_ppca(x, W, b, sigma2):
    n, d = _check_x(x).shape
    if not isinstance(W, torch.Tensor) or W.dim() != 2 or W.shape[0] != d:
        raise ValueError(
            f"W must have shape (d, q_dim) with d = {d}, got "
            f"{getattr(W, 'shape', type(W).__name__)}"
        )
    if not isinstance(b, torch.Tensor) or b.shape != (d,):
        raise ValueError(
            f"b must have shape ({d},), got {getattr(b, 'shape', type(b).__name__)}"
        )
    sigma2 = torch.as_tensor(sigma2, dtype=x.dtype, device=x.device)
    if sigma2.dim() != 0 or not sigma2 > 0:
        raise ValueError(f"sigma2 must be a positive scalar, got {sigma2}")
    return sigma2


def ppca_marginal(W: torch.Tensor, b: torch.Tensor, sigma2) -> MultivariateNormal:
    """p(x) = N(b, W W^T + sigma2 I) as a torch.distributions object."""
    sigma2 = torch.as_tensor(sigma2, dtype=W.dtype, device=W.device)
    return MultivariateNormal(
        b,
        covariance_matrix=W @ W.T
        + sigma2 * torch.eye(len(W), dtype=W.dtype, device=W.device),
    )


def ppca_log_marginal(
    x: torch.Tensor, W: torch.Tensor, b: torch.Tensor, sigma2
) -> torch.Tensor:
    """log p(x_n) = log N(x_n; b, W W^T + sigma2 I) for each row, shape (n,)
    (eq-elbo-ppca-marginal)."""
    _check_ppca(x, W, b, sigma2)
    return ppca_marginal(W, b, sigma2).log_prob(x)


def ppca_log_joint(
    x: torch.Tensor, z: torch.Tensor, W: torch.Tensor, b: torch.Tensor, sigma2
) -> torch.Tensor:
    """log p(x_n, z) = log N(z; 0, I) + log N(x_n; W z + b, sigma2 I) for z of shape
    (..., n, q_dim)."""
    sigma2 = _check_ppca(x, W, b, sigma2)
    if z.shape[-2:] != (len(x), W.shape[1]):
        raise ValueError(
            f"z must have shape (..., n, q_dim) = (..., {len(x)}, {W.shape[1]}), got "
            f"{tuple(z.shape)}"
        )
    log_prior = Normal(0.0, 1.0).log_prob(z).sum(-1)
    log_lik = Normal(z @ W.T + b, sigma2.sqrt()).log_prob(x).sum(-1)
    return log_prior + log_lik


def ppca_posterior(
    x: torch.Tensor, W: torch.Tensor, b: torch.Tensor, sigma2
) -> MultivariateNormal:
    """The exact posterior p(z | x_n) = N(M^-1 W^T (x_n - b), sigma2 M^-1), M = W^T W +
    sigma2 I (eq-elbo-ppca-posterior); a MultivariateNormal with batch shape (n,)."""
    sigma2 = _check_ppca(x, W, b, sigma2)
    M = W.T @ W + sigma2 * torch.eye(W.shape[1], dtype=W.dtype, device=W.device)
    mean = torch.linalg.solve(M, W.T @ (x - b).T).T
    return MultivariateNormal(mean, covariance_matrix=sigma2 * torch.linalg.inv(M))


def ppca_mean_field_posterior(
    x: torch.Tensor, W: torch.Tensor, b: torch.Tensor, sigma2
) -> Independent:
    """The best factorised Gaussian q(z) = prod_j N(z_j; m_j, s_j^2) for each x_n, i.e.
    the argmin of KL(q || p(z | x_n)) (eq-elbo-mean-field): the posterior mean, and
    variances s_j^2 = 1 / Lambda_jj = sigma2 / M_jj from the posterior precision Lambda
    = M / sigma2. An ``Independent(Normal, 1)``: batch shape (n,), event shape
    (q_dim,)."""
    exact = ppca_posterior(x, W, b, sigma2)
    precision_diag = exact.precision_matrix.diagonal(dim1=-2, dim2=-1)
    return Independent(
        Normal(exact.mean, precision_diag.rsqrt().expand_as(exact.mean)), 1
    )


def ppca_elbo(
    x: torch.Tensor,
    W: torch.Tensor,
    b: torch.Tensor,
    sigma2,
    q_mean: torch.Tensor,
    q_cov: torch.Tensor,
) -> torch.Tensor:
    """ELBO of a Gaussian q(z_n) = N(q_mean_n, q_cov) for each point, shape (n,), in the
    reconstruction + regularisation form (eq-elbo-rec-reg):

        E_q[log p(x_n | z)] - KL(q(z_n) || N(0, I)),
        E_q[log p(x_n | z)] = -d/2 log(2 pi sigma2) - (||x_n - W m_n - b||^2 + tr(W^T W
        S)) / (2 sigma2).

    q_cov: (q_dim, q_dim) shared by every point, or (n, q_dim, q_dim).
    """
    sigma2 = _check_ppca(x, W, b, sigma2)
    n, d = x.shape
    q_dim = W.shape[1]
    if q_mean.shape != (n, q_dim):
        raise ValueError(
            f"q_mean must have shape (n, q_dim) = ({n}, {q_dim}), got "
            f"{tuple(q_mean.shape)}"
        )
    if q_cov.shape[-2:] != (q_dim, q_dim) or q_cov.dim() not in (2, 3):
        raise ValueError(
            f"q_cov must have shape ({q_dim}, {q_dim}) or ({n}, {q_dim}, {q_dim}), got "
            f"{tuple(q_cov.shape)}"
        )
    residual = ((x - q_mean @ W.T - b) ** 2).sum(-1)
    trace = (W.T @ W * q_cov).sum((-2, -1))
    reconstruction = -0.5 * d * torch.log(2 * math.pi * sigma2) - (residual + trace) / (
        2 * sigma2
    )
    prior = MultivariateNormal(
        torch.zeros_like(q_mean),
        covariance_matrix=torch.eye(q_dim, dtype=x.dtype, device=x.device),
    )
    return reconstruction - kl_divergence(
        MultivariateNormal(q_mean, covariance_matrix=q_cov), prior
    )


def ppca_m_step(x: torch.Tensor, q_mean: torch.Tensor, q_cov: torch.Tensor):
    """The (W, b, sigma2) that maximise sum_n ELBO for fixed Gaussian q(z_n) = N(m_n, S).

    With z~ = (z, 1), A = (W, b): A = (sum_n x_n E[z~_n]^T)(sum_n E[z~_n z~_n^T])^-1 and
    sigma2 = 1/(n d) sum_n E||x_n - A z~_n||^2. Exact EM uses the posterior covariance
    for S, variational EM the restricted one.
    """
    n, d = _check_x(x).shape
    q_dim = q_mean.shape[1]
    cov = q_cov.expand(n, q_dim, q_dim) if q_cov.dim() == 2 else q_cov
    ez = torch.cat([q_mean, q_mean.new_ones(n, 1)], 1)  # (n, q+1)
    ezz = ez[:, :, None] * ez[:, None, :]
    ezz[:, :q_dim, :q_dim] += cov
    sum_ezz = ezz.sum(0)
    A = torch.linalg.solve(sum_ezz, (x.T @ ez).T).T  # (d, q+1)
    sq = (x**2).sum() - 2 * (x * (ez @ A.T)).sum() + (A.T @ A * sum_ezz).sum()
    return A[:, :q_dim].contiguous(), A[:, q_dim].contiguous(), sq / (n * d)


def ppca_em(
    x: torch.Tensor,
    q_dim: int,
    *,
    iterations: int = 100,
    mean_field: bool = False,
    init=None,
    seed: int = 0,
):
    """EM for probabilistic PCA; with ``mean_field=True``, variational EM whose E-step
    is the best factorised q (`ppca_mean_field_posterior`) instead of the exact
    posterior.

    init: ``(W, b, sigma2)``, or None for a seeded random W, the data mean and unit
    sigma2. Returns ``((W, b, sigma2), history)``; history["elbo"] (after each E-step
    and M-step, in turn: length 2 * iterations) and history["log_likelihood"] (exact,
    after each M-step, with the start first: length iterations + 1), both summed over
    the points.
    """
    n, d = _check_x(x).shape
    int_in("q_dim", q_dim, 1, d)
    if init is None:
        g = torch.Generator().manual_seed(seed)
        W = torch.randn(d, q_dim, generator=g, dtype=x.dtype).to(x.device)
        b, sigma2 = x.mean(0), torch.ones((), dtype=x.dtype, device=x.device)
    else:
        W, b, sigma2 = init
        sigma2 = _check_ppca(x, W, b, sigma2)
    history = {"elbo": [], "log_likelihood": [ppca_log_marginal(x, W, b, sigma2).sum()]}
    for _ in range(iterations):
        if mean_field:
            q = ppca_mean_field_posterior(x, W, b, sigma2)
            q_mean, q_cov = q.mean, torch.diag_embed(q.variance[0])
        else:
            q = ppca_posterior(x, W, b, sigma2)
            q_mean, q_cov = q.mean, q.covariance_matrix[0]
        history["elbo"].append(ppca_elbo(x, W, b, sigma2, q_mean, q_cov).sum())
        W, b, sigma2 = ppca_m_step(x, q_mean, q_cov)
        history["elbo"].append(ppca_elbo(x, W, b, sigma2, q_mean, q_cov).sum())
        history["log_likelihood"].append(ppca_log_marginal(x, W, b, sigma2).sum())
    return (W, b, sigma2), {k: torch.stack(v) for k, v in history.items()}


# ----------------------------------------------------------------------------------------
# Importance-weighted bounds


def iwae_bound(log_weights: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """L_K = log (1/K) sum_k w_k from log w_k = log p(x, z_k) - log q(z_k), z_k ~ q,
    along ``dim`` (eq-elbo-iwae). E[L_K] <= E[L_{K+1}] <= log p(x) (Burda et al. 2016);
    K = 1 is the ELBO."""
    float_tensor("log_weights", log_weights)
    if log_weights.dim() == 0:
        raise ValueError(
            "log_weights must have a sample dimension of size K, got a 0-dim tensor"
        )
    K = log_weights.shape[dim]
    return torch.logsumexp(log_weights, dim) - math.log(K)


def importance_log_weights(
    log_joint, q: Distribution, K: int, *, repeats: int = 1, seed: int = 0
) -> torch.Tensor:
    """log w = log p(x, z) - log q(z) for z ~ q, shape (repeats, K, *q.batch_shape).

    q: a distribution whose event is one z (e.g. a MultivariateNormal, or
    ``Independent(Normal, 1)`` for a factorised Gaussian), with batch shape (n,) for n
    data points. ``log_joint(z)`` gets z of shape (repeats, K, *q.batch_shape,
    *q.event_shape).

    `iwae_bound(importance_log_weights(...), dim=1)` gives ``repeats`` independent
    estimates of L_K.
    """
    if not isinstance(q, Distribution):
        raise TypeError(
            f"q must be a torch.distributions.Distribution, got {type(q).__name__}"
        )
    positive_int("K", K)
    positive_int("repeats", repeats)
    with seeded(seed):
        z = q.sample((repeats, K))
    return log_joint(z) - q.log_prob(z)


# ----------------------------------------------------------------------------------------
# Amortised inference: one encoder for every x


class LinearGaussianVAE(torch.nn.Module):
    """PPCA's decoder p_theta(x | z) = N(W z + b, sigma2 I) with an amortised encoder
    q_phi(z | x) = N(A x + c, diag exp(logvar)) (eq-elbo-amortised): the smallest VAE.

    Both are trained together by stochastic gradients on a one-sample reparameterised
    ELBO, so neither the ELBO nor log p(x) is guaranteed to rise at every step. Because
    the decoder is linear, the exact log p(x) of the current model stays available
    (`log_marginal`).
    """

    def __init__(self, d: int, q_dim: int, *, seed: int = 0):
        super().__init__()
        int_in("q_dim", q_dim, 1, positive_int("d", d))
        g = torch.Generator().manual_seed(seed)
        self.W = torch.nn.Parameter(torch.randn(d, q_dim, generator=g))
        self.b = torch.nn.Parameter(torch.zeros(d))
        self.log_sigma2 = torch.nn.Parameter(torch.zeros(()))
        self.A = torch.nn.Parameter(0.1 * torch.randn(q_dim, d, generator=g))
        self.c = torch.nn.Parameter(torch.zeros(q_dim))
        self.logvar = torch.nn.Parameter(torch.zeros(q_dim))

    def encode(self, x: torch.Tensor) -> Independent:
        """q_phi(z | x_n) for every row: batch shape (n,), event shape (q_dim,)."""
        return Independent(
            Normal(x @ self.A.T + self.c, (0.5 * self.logvar).exp().expand(len(x), -1)), 1
        )

    def log_marginal(self, x: torch.Tensor) -> torch.Tensor:
        """The exact log p_theta(x_n), shape (n,)."""
        return ppca_log_marginal(x, self.W, self.b, self.log_sigma2.exp())

    def loss(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Minus the one-sample ELBO, averaged over the batch, and its named terms:
        rec = -E_q[log p(x | z)], kl = KL(q_phi(z | x) || N(0, I)), log_px = exact log
        p(x) (no gradient)."""
        q = self.encode(x)
        z = q.rsample()
        rec = (
            -Normal(z @ self.W.T + self.b, (0.5 * self.log_sigma2).exp())
            .log_prob(x)
            .sum(-1)
            .mean()
        )
        prior = Independent(Normal(torch.zeros_like(q.mean), torch.ones_like(q.mean)), 1)
        kl = kl_divergence(q, prior).mean()
        with torch.no_grad():
            log_px = self.log_marginal(x).mean()
        return {"loss": rec + kl, "rec": rec, "kl": kl, "log_px": log_px}
