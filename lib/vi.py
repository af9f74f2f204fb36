"""Chapter 02: variational inference with mean-field families and coordinate ascent
(CAVI).

Variational inference replaces an intractable posterior p(z | x) by the member of a
family q that maximises the evidence lower bound (eq-vi-elbo in book/02-vi.md)

    ELBO(q) = E_q[log p(x, z)] - E_q[log q(z)] = log p(x) - KL(q || p(z | x)).

With a mean-field family q(z) = prod_j q_j(z_j), holding every factor but one fixed, the
best remaining factor is (eq-vi-cavi)

    log q_j*(z_j) = E_{-j}[log p(x, z)] + const,

and cycling through the factors (CAVI) never lowers the ELBO. Two worked models:

Normal-Gamma     x_i ~ N(mu, 1/tau), mu | tau ~ N(mu0, 1/(lam0 tau)), tau ~ Gamma(a0,
                 rate b0). The exact posterior is Normal-Gamma again
                 (`normal_gamma_posterior`); CAVI with q(mu) q(tau)
                 (`cavi_normal_gamma`) has closed-form updates.
Ising model      p(s) = exp(J sum_<ij> s_i s_j + sum_i h_i s_i) / Z on an L x L grid
                 with free boundaries, s_i in {-1, +1}. Mean field gives a lower bound
                 on log Z (`ising_mean_field`); Gibbs sampling (`ising_gibbs`) and exact
                 enumeration (`ising_log_z_exact`, grids of at most 16 spins) are the
                 references.
"""

import math
from typing import NamedTuple

import torch
from torch.distributions import Gamma, Normal

from lib.checks import float_tensor, nonnegative_int, positive_int

# ----------------------------------------------------------------------------------------
# Checking inputs


def _check_data(x) -> torch.Tensor:
    shape = "(n,) with n >= 1 observations"
    return float_tensor("x", x, dim=1, shape=shape, nonempty=True)


def _positive_scalar(name: str, value, like: torch.Tensor) -> torch.Tensor:
    value = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if value.dim() != 0:
        raise ValueError(f"{name} must be a scalar, got shape {tuple(value.shape)}")
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value.item():.4g}")
    return value


# ----------------------------------------------------------------------------------------
# (a) The Bayesian Gaussian with unknown mean and precision


class NormalGamma(NamedTuple):
    """Normal-Gamma(mu, lam, a, b): tau ~ Gamma(a, rate b) and mu | tau ~ N(mu, 1 / (lam
    tau)).

    The prior of the chapter's model and, by conjugacy, its exact posterior
    (eq-vi-ng-posterior). Fields may be floats or 0-dim tensors.
    """

    mu: torch.Tensor
    lam: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor

    def log_prob(self, mu: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """log p(mu, tau) = log Gamma(tau; a, b) + log N(mu; mu, 1 / (lam tau))."""
        return Gamma(self.a, self.b).log_prob(tau) + Normal(
            self.mu, (self.lam * tau).rsqrt()
        ).log_prob(mu)

    def moments(self) -> dict[str, torch.Tensor]:
        """Marginal means and variances: mu is Student-t (needs a > 1 for its variance),
        tau Gamma."""
        return {
            "mean_mu": torch.as_tensor(self.mu),
            "var_mu": self.b / (self.lam * (self.a - 1)),
            "mean_tau": self.a / self.b,
            "var_tau": self.a / self.b**2,
        }


class MeanFieldNormalGamma(NamedTuple):
    """The mean-field family q(mu) q(tau) = N(mu; m, 1 / lam) Gamma(tau; a, rate b)."""

    m: torch.Tensor
    lam: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor

    def log_prob(self, mu: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        return Normal(self.m, self.lam.rsqrt()).log_prob(mu) + Gamma(
            self.a, self.b
        ).log_prob(tau)

    def moments(self) -> dict[str, torch.Tensor]:
        return {
            "mean_mu": self.m,
            "var_mu": 1 / self.lam,
            "mean_tau": self.a / self.b,
            "var_tau": self.a / self.b**2,
        }


def _prior_like(prior, x: torch.Tensor) -> NormalGamma:
    if not isinstance(prior, NormalGamma):
        raise TypeError(
            f"prior must be a NormalGamma(mu, lam, a, b), got {type(prior).__name__}"
        )
    mu = torch.as_tensor(prior.mu, dtype=x.dtype, device=x.device)
    if mu.dim() != 0:
        raise ValueError(f"prior.mu must be a scalar, got shape {tuple(mu.shape)}")
    return NormalGamma(
        mu,
        *(
            _positive_scalar(f"prior.{name}", getattr(prior, name), x)
            for name in ("lam", "a", "b")
        ),
    )


def normal_gamma_posterior(x: torch.Tensor, prior: NormalGamma) -> NormalGamma:
    """The exact posterior p(mu, tau | x) of the Normal-Gamma model (eq-vi-ng-posterior):

    lam_N = lam0 + n,   mu_N = (lam0 mu0 + n xbar) / lam_N,   a_N = a0 + n / 2,
    b_N = b0 + 1/2 sum_i (x_i - xbar)^2 + lam0 n (xbar - mu0)^2 / (2 lam_N).
    """
    x = _check_data(x)
    p = _prior_like(prior, x)
    n, xbar = len(x), x.mean()
    lam = p.lam + n
    return NormalGamma(
        mu=(p.lam * p.mu + n * xbar) / lam,
        lam=lam,
        a=p.a + n / 2,
        b=p.b
        + 0.5 * ((x - xbar) ** 2).sum()
        + p.lam * n * (xbar - p.mu) ** 2 / (2 * lam),
    )


def normal_gamma_log_evidence(x: torch.Tensor, prior: NormalGamma) -> torch.Tensor:
    """log p(x) of the Normal-Gamma model, the ratio of normalising constants
    (eq-vi-ng-evidence):

    log p(x) = lgamma(a_N) - lgamma(a0) + a0 log b0 - a_N log b_N + 1/2 log(lam0 /
    lam_N) - n/2 log(2 pi).
    """
    x = _check_data(x)
    p = _prior_like(prior, x)
    post = normal_gamma_posterior(x, p)
    return (
        torch.lgamma(post.a)
        - torch.lgamma(p.a)
        + p.a * p.b.log()
        - post.a * post.b.log()
        + 0.5 * (p.lam.log() - post.lam.log())
        - len(x) / 2 * math.log(2 * math.pi)
    )


def _expected_squares(
    x: torch.Tensor, q: MeanFieldNormalGamma, p: NormalGamma
) -> torch.Tensor:
    """E_q(mu)[ sum_i (x_i - mu)^2 + lam0 (mu - mu0)^2 ], using E[(c - mu)^2] = (c -
    m)^2 + 1/lam."""
    return (
        ((x - q.m) ** 2).sum() + len(x) / q.lam + p.lam * ((q.m - p.mu) ** 2 + 1 / q.lam)
    )


def cavi_update_mu(
    x: torch.Tensor, q: MeanFieldNormalGamma, prior: NormalGamma
) -> MeanFieldNormalGamma:
    """The optimal q(mu) given q(tau) (eq-vi-cavi-mu): log q*(mu) = E_tau[log p(x, mu,
    tau)] + const

    q*(mu) = N(m, 1/lam),   m = (lam0 mu0 + sum_i x_i) / (lam0 + n), lam = (lam0 + n)
                            E[tau].
    """
    x = _check_data(x)
    p = _prior_like(prior, x)
    e_tau = q.a / q.b
    return q._replace(
        m=(p.lam * p.mu + x.sum()) / (p.lam + len(x)), lam=(p.lam + len(x)) * e_tau
    )


def cavi_update_tau(
    x: torch.Tensor, q: MeanFieldNormalGamma, prior: NormalGamma
) -> MeanFieldNormalGamma:
    """The optimal q(tau) given q(mu) (eq-vi-cavi-tau): log q*(tau) = E_mu[log p(x, mu,
    tau)] + const

    q*(tau) = Gamma(a, b),   a = a0 + (n + 1) / 2,
    b = b0 + 1/2 E_mu[ sum_i (x_i - mu)^2 + lam0 (mu - mu0)^2 ].
    """
    x = _check_data(x)
    p = _prior_like(prior, x)
    return q._replace(a=p.a + (len(x) + 1) / 2, b=p.b + 0.5 * _expected_squares(x, q, p))


def normal_gamma_elbo(
    x: torch.Tensor, q: MeanFieldNormalGamma, prior: NormalGamma
) -> torch.Tensor:
    """ELBO(q) = E_q[log p(x | mu, tau) + log p(mu | tau) + log p(tau)] + H[q(mu)] +
    H[q(tau)] for the mean-field q (eq-vi-ng-elbo), in closed form with E[log tau] =
    digamma(a) - log b.
    """
    x = _check_data(x)
    p = _prior_like(prior, x)
    if not isinstance(q, MeanFieldNormalGamma):
        raise TypeError(
            f"q must be a MeanFieldNormalGamma(m, lam, a, b), got {type(q).__name__}"
        )
    n = len(x)
    e_tau, e_log_tau = q.a / q.b, torch.digamma(q.a) - q.b.log()
    log_2pi = math.log(2 * math.pi)
    e_log_lik_and_mu_prior = (
        0.5 * (n + 1) * (e_log_tau - log_2pi)
        + 0.5 * p.lam.log()
        - 0.5 * e_tau * _expected_squares(x, q, p)
    )
    e_log_tau_prior = (
        p.a * p.b.log() - torch.lgamma(p.a) + (p.a - 1) * e_log_tau - p.b * e_tau
    )
    entropy = Normal(q.m, q.lam.rsqrt()).entropy() + Gamma(q.a, q.b).entropy()
    return e_log_lik_and_mu_prior + e_log_tau_prior + entropy


def cavi_normal_gamma(
    x: torch.Tensor,
    prior: NormalGamma,
    *,
    sweeps: int = 20,
    init: MeanFieldNormalGamma | None = None,
):
    """Coordinate ascent VI for the Normal-Gamma model with q(mu, tau) = q(mu) q(tau).

    Each sweep applies `cavi_update_mu` then `cavi_update_tau` (Bishop 2006, section
    10.1.3). init: the starting q; by default q(mu) = N(mu0, 1/lam0) and q(tau) =
    Gamma(a0, b0). Returns ``(q, history)``: history["elbo"] holds the ELBO of the
    starting q and after every sweep (length sweeps + 1), history["elbo_half"] the ELBO
    after each single-factor update (length 2 sweeps + 1). Both never decrease.
    """
    x = _check_data(x)
    p = _prior_like(prior, x)
    nonnegative_int("sweeps", sweeps)
    if init is None:
        q = MeanFieldNormalGamma(m=p.mu, lam=p.lam, a=p.a, b=p.b)
    elif isinstance(init, MeanFieldNormalGamma):
        q = MeanFieldNormalGamma(
            torch.as_tensor(init.m, dtype=x.dtype, device=x.device),
            *(
                _positive_scalar(f"init.{k}", getattr(init, k), x)
                for k in ("lam", "a", "b")
            ),
        )
    else:
        raise TypeError(
            f"init must be None or a MeanFieldNormalGamma, got {type(init).__name__}"
        )
    elbo = [normal_gamma_elbo(x, q, p)]
    half = [elbo[0]]
    for _ in range(sweeps):
        q = cavi_update_mu(x, q, p)
        half.append(normal_gamma_elbo(x, q, p))
        q = cavi_update_tau(x, q, p)
        half.append(normal_gamma_elbo(x, q, p))
        elbo.append(half[-1])
    return q, {"elbo": torch.stack(elbo), "elbo_half": torch.stack(half)}


# ----------------------------------------------------------------------------------------
# (b) The Ising model on an L x L grid with free boundaries


MAX_EXACT_SPINS = 16  # 2^16 = 65536 configurations: a 4 x 4 grid


def _check_size(L) -> int:
    positive_int("L", L)  # the grid is L x L
    return L


def _field(h, L: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """h as an (L, L) tensor: a scalar field is the same at every site."""
    h = torch.as_tensor(h, dtype=dtype, device=device)
    if h.dim() == 0:
        return h.expand(L, L)
    if h.shape != (L, L):
        raise ValueError(
            f"h must be a scalar or have shape ({L}, {L}), got {tuple(h.shape)}"
        )
    return h


def _coupling(J) -> float:
    if isinstance(J, torch.Tensor):
        if J.dim() != 0:
            raise ValueError(f"J must be a scalar, got shape {tuple(J.shape)}")
        J = J.item()
    if not isinstance(J, (int, float)) or isinstance(J, bool) or not math.isfinite(J):
        raise TypeError(f"J must be a finite real number, got {J!r}")
    return float(J)


def neighbour_sum(s: torch.Tensor) -> torch.Tensor:
    """sum_{j in N(i)} s_j for every site of (..., L, L) spins (or magnetisations), free
    boundaries."""
    total = torch.zeros_like(s)
    total[..., 1:, :] += s[..., :-1, :]
    total[..., :-1, :] += s[..., 1:, :]
    total[..., :, 1:] += s[..., :, :-1]
    total[..., :, :-1] += s[..., :, 1:]
    return total


def ising_log_potential(s: torch.Tensor, J, h) -> torch.Tensor:
    """log p~(s) = J sum_<ij> s_i s_j + sum_i h_i s_i for spins s of shape (..., L, L)
    (eq-vi-ising).

    Each horizontal and vertical bond of the grid counts once. Returns shape (...).
    """
    if not isinstance(s, torch.Tensor) or s.dim() < 2 or s.shape[-1] != s.shape[-2]:
        raise ValueError(
            f"s must be a tensor of shape (..., L, L), got "
            f"{getattr(s, 'shape', type(s).__name__)}"
        )
    J = _coupling(J)
    h = _field(h, s.shape[-1], s.dtype, s.device)
    bonds = (s[..., 1:, :] * s[..., :-1, :]).sum((-2, -1)) + (
        s[..., :, 1:] * s[..., :, :-1]
    ).sum((-2, -1))
    return J * bonds + (h * s).sum((-2, -1))


def _binary_entropy(m: torch.Tensor) -> torch.Tensor:
    """Entropy of a +-1 spin with mean m: q(+1) = (1 + m) / 2."""
    p_up, p_down = (1 + m) / 2, (1 - m) / 2
    return -(torch.xlogy(p_up, p_up) + torch.xlogy(p_down, p_down))


def ising_mean_field_elbo(m: torch.Tensor, J, h) -> torch.Tensor:
    """The mean-field ELBO, a lower bound on log Z (eq-vi-ising-elbo):

        ELBO(m) = J sum_<ij> m_i m_j + sum_i h_i m_i + sum_i H((1 + m_i) / 2)   <= log
                                                                                Z,

    for q(s) = prod_i q_i(s_i) with magnetisations m_i = E_q[s_i] in [-1, 1], shape
    (..., L, L).
    """
    float_tensor("m", m)
    if (m.abs() > 1).any():
        raise ValueError(
            f"m holds magnetisations, which must lie in [-1, 1]; got max |m| = "
            f"{m.abs().max().item():.4g}"
        )
    return ising_log_potential(m, J, h) + _binary_entropy(m).sum((-2, -1))


def ising_mean_field(
    L: int,
    J,
    h,
    *,
    sweeps: int = 100,
    schedule: str = "checkerboard",
    damping: float = 0.5,
    init: torch.Tensor | None = None,
    seed: int = 0,
    dtype=torch.float64,
    device=None,
):
    """Mean-field magnetisations of the Ising model by coordinate ascent
    (eq-vi-ising-update):

        m_i <- tanh( J sum_{j in N(i)} m_j + h_i ).

    schedule="checkerboard": update the black sites, then the white ones. A site's
        neighbours all have the other colour, so this is exact CAVI (sequential updates,
        vectorised) and the ELBO never decreases.
    schedule="parallel": m <- (1 - damping) m + damping tanh(...) at every site at once;
        cheaper to reason about, but with no monotonicity guarantee (damping=1 can
        oscillate).
    init: starting magnetisations (L, L); by default uniform in (-0.5, 0.5) from ``seed``.
    Returns ``(m, history)`` with m of shape (L, L) and history["elbo"] the ELBO of the
    start and after each sweep (length sweeps + 1); its last entry is the lower bound on
    log Z.
    """
    L, J = _check_size(L), _coupling(J)
    h = _field(h, L, dtype, device)
    if schedule not in ("checkerboard", "parallel"):
        raise ValueError(
            f"schedule must be 'checkerboard' or 'parallel', got {schedule!r}"
        )
    if not 0 < damping <= 1:
        raise ValueError(f"damping must lie in (0, 1], got {damping!r}")
    nonnegative_int("sweeps", sweeps)
    if init is None:
        g = torch.Generator().manual_seed(seed)
        m = (torch.rand(L, L, generator=g, dtype=dtype) - 0.5).to(h.device)
    else:
        if not isinstance(init, torch.Tensor) or init.shape != (L, L):
            raise ValueError(
                f"init must be a tensor of shape ({L}, {L}), got "
                f"{getattr(init, 'shape', type(init).__name__)}"
            )
        if (init.abs() > 1).any():
            raise ValueError("init holds magnetisations, which must lie in [-1, 1]")
        m = init.to(h.device, dtype).clone()
    colour = (
        torch.arange(L, device=h.device)[:, None] + torch.arange(L, device=h.device)
    ) % 2
    elbo = [ising_mean_field_elbo(m, J, h)]
    for _ in range(sweeps):
        if schedule == "checkerboard":
            for c in (0, 1):
                m = torch.where(colour == c, torch.tanh(J * neighbour_sum(m) + h), m)
        else:
            m = (1 - damping) * m + damping * torch.tanh(J * neighbour_sum(m) + h)
        elbo.append(ising_mean_field_elbo(m, J, h))
    return m, {"elbo": torch.stack(elbo)}


def ising_gibbs(
    L: int,
    J,
    h,
    *,
    sweeps: int = 1000,
    burn_in: int = 100,
    chains: int = 64,
    seed: int = 0,
    dtype=torch.float64,
    device=None,
):
    """Gibbs sampling of the Ising model with checkerboard sweeps, ``chains`` chains in
    parallel.

    A site's conditional is p(s_i = +1 | s_-i) = sigmoid(2 (J sum_{j in N(i)} s_j +
    h_i)); all sites of one colour are conditionally independent given the other colour,
    so each half-sweep samples them at once. Chains start from uniformly random spins
    (seeded by ``seed``). Returns ``(m, history)``: m (L, L) is the average spin over
    the ``sweeps`` sweeps after ``burn_in`` and over chains; history["mean_spin"] the
    per-sweep average over sites and chains (length burn_in + sweeps) and
    history["samples"] the final states (chains, L, L).
    """
    L, J = _check_size(L), _coupling(J)
    h = _field(h, L, dtype, device)
    for name, value, low in (
        ("sweeps", sweeps, 1),
        ("burn_in", burn_in, 0),
        ("chains", chains, 1),
    ):
        (positive_int if low == 1 else nonnegative_int)(name, value)
    g = torch.Generator(device=h.device).manual_seed(seed)
    s = (
        torch.randint(0, 2, (chains, L, L), generator=g, device=h.device).to(dtype) * 2
        - 1
    )
    colour = (
        torch.arange(L, device=h.device)[:, None] + torch.arange(L, device=h.device)
    ) % 2
    total = torch.zeros(L, L, dtype=dtype, device=h.device)
    trace = []
    for sweep in range(burn_in + sweeps):
        for c in (0, 1):
            p_up = torch.sigmoid(2 * (J * neighbour_sum(s) + h))
            u = torch.rand(s.shape, generator=g, dtype=dtype, device=h.device)
            s = torch.where(colour == c, torch.where(u < p_up, 1.0, -1.0).to(dtype), s)
        trace.append(s.mean())
        if sweep >= burn_in:
            total += s.mean(0)
    return total / sweeps, {"mean_spin": torch.stack(trace), "samples": s}


def _all_configurations(L: int, dtype, device) -> torch.Tensor:
    """Every spin configuration of an L x L grid, shape (2^(L*L), L, L), values +-1."""
    n = L * L
    if n > MAX_EXACT_SPINS:
        raise ValueError(
            f"exact enumeration is limited to {MAX_EXACT_SPINS} spins (a 4 x 4 grid, "
            f"{2**MAX_EXACT_SPINS} states); L={L} gives {n} spins and 2^{n} states"
        )
    index = torch.arange(2**n, device=device)
    bits = (index[:, None] >> torch.arange(n, device=device)) & 1
    return (bits.to(dtype) * 2 - 1).reshape(-1, L, L)


def ising_log_z_exact(L: int, J, h, *, dtype=torch.float64, device=None) -> torch.Tensor:
    """log Z = log sum_s exp(J sum_<ij> s_i s_j + sum_i h_i s_i) by enumerating all
    2^(L^2) states.

    Vectorised over the states; raises ValueError for more than 16 spins (L > 4).
    """
    L, J = _check_size(L), _coupling(J)
    h = _field(h, L, dtype, device)
    s = _all_configurations(L, dtype, h.device)
    return torch.logsumexp(ising_log_potential(s, J, h), 0)


def ising_magnetisation_exact(
    L: int, J, h, *, dtype=torch.float64, device=None
) -> torch.Tensor:
    """The exact E_p[s_i] for every site, shape (L, L), by enumeration (at most 16
    spins)."""
    L, J = _check_size(L), _coupling(J)
    h = _field(h, L, dtype, device)
    s = _all_configurations(L, dtype, h.device)
    p = torch.softmax(ising_log_potential(s, J, h), 0)
    return torch.einsum("k,kij->ij", p, s)
