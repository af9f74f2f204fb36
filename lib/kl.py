"""Chapter 01: the Kullback-Leibler divergence.

Every function takes its arguments in the order of
``torch.distributions.kl_divergence(p, q)``
and returns KL(p || q) = E_p[log p(x) - log q(x)]   (eq-kl-def in book/01-kl.md).
"""

import torch
from torch.distributions import Distribution, Independent, Normal

from lib.checks import float_tensor, positive_int, same_shape
from lib.device import seeded
from lib.train import minimise


# ----------------------------------------------------------------------------------------
# Checking inputs


def _check_probabilities(name: str, p: torch.Tensor, atol: float = 1e-4) -> None:
    if (p < 0).any():
        raise ValueError(
            f"{name} must have non-negative entries, got a minimum of "
            f"{p.min().item():.3g}"
        )
    total = p.sum(-1)
    if not torch.allclose(total, torch.ones_like(total), atol=atol):
        worst = total[(total - 1).abs().argmax()] if total.dim() else total
        raise ValueError(
            f"{name} must sum to 1 along its last dimension, got a sum of "
            f"{worst.item():.6g}"
        )


# ----------------------------------------------------------------------------------------
# Categorical distributions


def kl_categorical(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) = sum_k p_k log(p_k / q_k) for probability vectors along the last
    dimension.

    Conventions (eq-kl-categorical): 0 log(0/q) = 0, and p_k > 0 with q_k = 0 gives +inf.
    Returns a tensor with the batch shape of p and q (the last dimension summed out).
    """
    p, q = float_tensor("p", p), float_tensor("q", q)
    same_shape("q", q, "p", p)
    if p.dim() == 0:
        raise ValueError("p and q must have at least one dimension (the outcomes)")
    _check_probabilities("p", p)
    _check_probabilities("q", q)
    return (torch.xlogy(p, p) - torch.xlogy(p, q)).sum(-1)


# ----------------------------------------------------------------------------------------
# Gaussian distributions


def kl_gaussian(
    mu_p: torch.Tensor, cov_p: torch.Tensor, mu_q: torch.Tensor, cov_q: torch.Tensor
) -> torch.Tensor:
    """KL(N(mu_p, cov_p) || N(mu_q, cov_q)) in closed form (eq-kl-gauss).

    mu_p, mu_q: means of shape (..., d). Use d = 1 for univariate Gaussians.
    cov_p, cov_q: either variances of shape (..., d) (diagonal covariances) or full
    covariance matrices of shape (..., d, d). With one diagonal and one full, the
    diagonal one is expanded.

        KL = 1/2 [ tr(S_q^-1 S_p) + (mu_q - mu_p)^T S_q^-1 (mu_q - mu_p) - d + log det
        S_q - log det S_p ]
    """
    mu_p, mu_q = float_tensor("mu_p", mu_p), float_tensor("mu_q", mu_q)
    cov_p, cov_q = float_tensor("cov_p", cov_p), float_tensor("cov_q", cov_q)
    if mu_p.dim() == 0 or mu_p.shape != mu_q.shape:
        raise ValueError(
            f"mu_p and mu_q must have the same shape (..., d), got {tuple(mu_p.shape)} "
            f"and {tuple(mu_q.shape)}"
        )
    d = mu_p.shape[-1]
    kinds = []
    for name, cov in (("cov_p", cov_p), ("cov_q", cov_q)):
        if cov.shape == mu_p.shape:
            if (cov <= 0).any():
                raise ValueError(
                    f"{name} holds variances, which must be positive; got a minimum of "
                    f"{cov.min().item():.3g}"
                )
            kinds.append("diag")
        elif cov.shape == mu_p.shape + (d,):
            kinds.append("full")
        else:
            raise ValueError(
                f"{name} must have shape {tuple(mu_p.shape)} (variances) or "
                f"{tuple(mu_p.shape) + (d,)} (covariance matrix), got {tuple(cov.shape)}"
            )
    if kinds == ["diag", "diag"]:
        return 0.5 * (
            cov_p / cov_q + (mu_q - mu_p) ** 2 / cov_q - 1 + cov_q.log() - cov_p.log()
        ).sum(-1)
    cov_p = torch.diag_embed(cov_p) if kinds[0] == "diag" else cov_p
    cov_q = torch.diag_embed(cov_q) if kinds[1] == "diag" else cov_q
    L_p, L_q = _cholesky("cov_p", cov_p), _cholesky("cov_q", cov_q)
    diff = (mu_q - mu_p).unsqueeze(-1)
    trace = torch.cholesky_solve(cov_p, L_q).diagonal(dim1=-2, dim2=-1).sum(-1)
    mahalanobis = (
        torch.linalg.solve_triangular(L_q, diff, upper=False).pow(2).sum((-2, -1))
    )
    log_det_q = 2 * L_q.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    log_det_p = 2 * L_p.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return 0.5 * (trace + mahalanobis - d + log_det_q - log_det_p)


def _cholesky(name: str, cov: torch.Tensor) -> torch.Tensor:
    if not torch.allclose(cov, cov.transpose(-2, -1), atol=1e-6):
        raise ValueError(f"{name} must be a symmetric matrix")
    L, info = torch.linalg.cholesky_ex(cov)
    if (info != 0).any():
        raise ValueError(
            f"{name} must be positive definite (its Cholesky factorisation failed)"
        )
    return L


# ----------------------------------------------------------------------------------------
# Monte Carlo


def _check_distribution(name: str, value) -> None:
    if not isinstance(value, Distribution):
        raise TypeError(
            f"{name} must be a torch.distributions.Distribution, got "
            f"{type(value).__name__}"
        )


def kl_mc(p: Distribution, q: Distribution, n: int) -> torch.Tensor:
    """Monte Carlo estimate of KL(p || q) from n samples of p (eq-kl-mc):

        KL ~= 1/n sum_i [log p(x_i) - log q(x_i)],   x_i ~ p.

    Unbiased, with standard error std(log p - log q) / sqrt(n). Works for any pair of
    distributions with ``sample`` and ``log_prob``, closed form or not.
    """
    _check_distribution("p", p)
    _check_distribution("q", q)
    positive_int("n", n)
    x = p.sample((n,))
    return (p.log_prob(x) - q.log_prob(x)).mean(0)


# ----------------------------------------------------------------------------------------
# Fitting a factorised Gaussian: forward and reverse KL


def fit_gaussian(
    target: Distribution,
    direction: str,
    *,
    steps: int = 1500,
    n: int = 256,
    lr: float = 0.05,
    seed: int = 0,
    progress=None,
):
    """Fit a factorised Gaussian q to ``target`` by stochastic gradient descent on a KL.

    direction="forward":  minimise KL(target || q) = -E_target[log q(x)] + const, with
                          samples of the target (mass-covering; optimum: the target's
                          mean and marginal variances Sigma_ii).
    direction="reverse":  minimise KL(q || target) = E_q[log q(z) - log target(z)], with
                          reparameterised samples of q (mode-seeking; for a Gaussian
                          target the optimum has variances 1 / Lambda_ii, Lambda =
                          Sigma^-1).

    Returns ``(q, history)``: q is a ``torch.distributions`` Normal (factorised over the
    target's event dimensions) and history the per-step loss.
    """
    _check_distribution("target", target)
    if direction not in ("forward", "reverse"):
        raise ValueError(f"direction must be 'forward' or 'reverse', got {direction!r}")
    with seeded(seed):
        event_dims = len(target.event_shape)
        # start at a draw of the target
        loc = target.sample().detach().clone().requires_grad_(True)
        log_scale = torch.zeros_like(loc, requires_grad=True)

        def q_now():
            return Independent(Normal(loc, log_scale.exp()), event_dims)

        def objective(step):
            q = q_now()
            if direction == "forward":
                x = target.sample((n,))
                return {"loss": -q.log_prob(x).mean()}
            z = q.rsample((n,))
            return {"loss": (q.log_prob(z) - target.log_prob(z)).mean()}

        history = minimise(
            objective,
            [loc, log_scale],
            steps=steps,
            lr=lr,
            schedule="cosine",
            progress=progress,
            desc=f"{direction} KL fit",
        )
    return Independent(
        Normal(loc.detach(), log_scale.detach().exp()), event_dims
    ), history
