"""lib.vi against independent oracles: conjugate formulas, brute-force enumeration,
quadrature."""

import itertools
import math

import pytest
import torch

from lib.vi import (
    MeanFieldNormalGamma,
    NormalGamma,
    cavi_normal_gamma,
    cavi_update_mu,
    cavi_update_tau,
    ising_gibbs,
    ising_log_potential,
    ising_log_z_exact,
    ising_magnetisation_exact,
    ising_mean_field,
    ising_mean_field_elbo,
    normal_gamma_elbo,
    normal_gamma_log_evidence,
    normal_gamma_posterior,
)

PRIOR = NormalGamma(0.5, 2.0, 3.0, 2.0)


@pytest.fixture
def x():
    return (
        torch.randn(15, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        * 0.7
        + 1.2
    )


# ----------------------------------------------------------------------------------------
# Normal-Gamma


def test_posterior_matches_sequential_conjugate_updates(x):
    # Oracle: Bayes' rule one observation at a time (a different route to the same
    # posterior).
    mu, lam, a, b = PRIOR
    for xi in x.tolist():
        mu, lam, a, b = (
            (lam * mu + xi) / (lam + 1),
            lam + 1,
            a + 0.5,
            b + lam * (xi - mu) ** 2 / (2 * (lam + 1)),
        )
    post = normal_gamma_posterior(x, PRIOR)
    assert torch.allclose(
        torch.stack(list(post)), torch.tensor([mu, lam, a, b], dtype=torch.float64)
    )


def test_log_evidence_matches_numerical_integration(x):
    # Oracle: integrate p(x | mu, tau) p(mu | tau) p(tau) over a fine (mu, tau) grid.
    x = x[:5]
    mu = torch.linspace(-4, 6, 2001, dtype=torch.float64)[:, None]
    tau = torch.linspace(1e-6, 12, 2001, dtype=torch.float64)[None, :]
    log_joint = (
        torch.distributions.Gamma(PRIOR.a, PRIOR.b).log_prob(tau)
        + torch.distributions.Normal(PRIOR.mu, (PRIOR.lam * tau).rsqrt()).log_prob(mu)
        + torch.distributions.Normal(mu[..., None], tau[..., None].rsqrt())
        .log_prob(x)
        .sum(-1)
    )
    evidence = torch.trapezoid(torch.trapezoid(log_joint.exp(), tau[0], dim=1), mu[:, 0])
    assert normal_gamma_log_evidence(x, PRIOR).item() == pytest.approx(
        evidence.log().item(), abs=1e-5
    )


def test_posterior_log_prob_is_bayes_rule(x):
    post = normal_gamma_posterior(x, PRIOR)
    mu, tau = (
        torch.tensor([0.3, 1.1, 2.0], dtype=torch.float64),
        torch.tensor([0.5, 2.0, 1.3], dtype=torch.float64),
    )
    log_lik = (
        torch.distributions.Normal(mu[:, None], tau[:, None].rsqrt()).log_prob(x).sum(1)
    )
    expected = (
        PRIOR_t(x).log_prob(mu, tau) + log_lik - normal_gamma_log_evidence(x, PRIOR)
    )
    assert torch.allclose(post.log_prob(mu, tau), expected)


def PRIOR_t(x):
    return NormalGamma(*(torch.tensor(float(v), dtype=x.dtype) for v in PRIOR))


def test_cavi_updates_match_closed_forms(x):
    n = len(x)
    q = MeanFieldNormalGamma(
        *(torch.tensor(v, dtype=torch.float64) for v in (0.0, 1.0, 2.0, 4.0))
    )
    q1 = cavi_update_mu(x, q, PRIOR)
    assert q1.m.item() == pytest.approx(
        (PRIOR.lam * PRIOR.mu + x.sum().item()) / (PRIOR.lam + n)
    )
    assert q1.lam.item() == pytest.approx((PRIOR.lam + n) * 2.0 / 4.0)
    q2 = cavi_update_tau(x, q1, PRIOR)
    e_sq = sum((xi - q1.m.item()) ** 2 + 1 / q1.lam.item() for xi in x.tolist())
    e_sq += PRIOR.lam * ((q1.m.item() - PRIOR.mu) ** 2 + 1 / q1.lam.item())
    assert q2.a.item() == pytest.approx(PRIOR.a + (n + 1) / 2)
    assert q2.b.item() == pytest.approx(PRIOR.b + e_sq / 2)


def test_elbo_matches_monte_carlo_and_bounds_the_evidence(x):
    q, history = cavi_normal_gamma(x, PRIOR, sweeps=5)
    g = torch.Generator().manual_seed(0)
    tau = torch.distributions.Gamma(q.a, q.b).sample((200_000,))
    mu = q.m + q.lam.rsqrt() * torch.randn(200_000, generator=g, dtype=torch.float64)
    log_lik = (
        torch.distributions.Normal(mu[:, None], tau[:, None].rsqrt()).log_prob(x).sum(1)
    )
    mc = (log_lik + PRIOR_t(x).log_prob(mu, tau) - q.log_prob(mu, tau)).mean()
    assert normal_gamma_elbo(x, q, PRIOR).item() == pytest.approx(mc.item(), abs=0.01)
    assert history["elbo"][-1] <= normal_gamma_log_evidence(x, PRIOR)


def test_cavi_elbo_never_decreases_and_converges(x):
    start = MeanFieldNormalGamma(-3.0, 0.1, 1.0, 20.0)
    q, history = cavi_normal_gamma(x, PRIOR, sweeps=30, init=start)
    assert history["elbo"].shape == (31,) and history["elbo_half"].shape == (61,)
    assert (history["elbo_half"].diff() >= -1e-10).all()
    assert history["elbo"][-1] - history["elbo"][-2] < 1e-10
    post = normal_gamma_posterior(x, PRIOR).moments()
    # mean field gets the mean right
    assert q.m.item() == pytest.approx(post["mean_mu"].item())
    # and under-estimates the spread
    assert q.moments()["var_mu"] < post["var_mu"]


def test_cavi_is_a_fixed_point_of_both_updates(x):
    q, _ = cavi_normal_gamma(x, PRIOR, sweeps=50)
    again = cavi_update_tau(x, cavi_update_mu(x, q, PRIOR), PRIOR)
    assert torch.allclose(torch.stack(list(again)), torch.stack(list(q)))


def test_normal_gamma_bad_inputs(x):
    with pytest.raises(ValueError, match="x must have shape"):
        normal_gamma_posterior(x[:, None], PRIOR)
    with pytest.raises(TypeError, match="x must be a floating-point"):
        normal_gamma_posterior(torch.arange(3), PRIOR)
    with pytest.raises(ValueError, match="prior.b must be positive"):
        normal_gamma_posterior(x, NormalGamma(0.0, 1.0, 1.0, -1.0))
    with pytest.raises(TypeError, match="prior must be a NormalGamma"):
        cavi_normal_gamma(x, (0.0, 1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="sweeps"):
        cavi_normal_gamma(x, PRIOR, sweeps=-1)


# ----------------------------------------------------------------------------------------
# Ising


def brute_force(L, J, h):
    """A plain Python loop over every configuration: log Z and the magnetisations."""
    h = torch.as_tensor(h, dtype=torch.float64).expand(L, L).tolist()
    weights, spins = [], []
    for config in itertools.product((-1, 1), repeat=L * L):
        s = [config[i * L : (i + 1) * L] for i in range(L)]
        energy = sum(h[i][j] * s[i][j] for i in range(L) for j in range(L))
        energy += J * sum(s[i][j] * s[i + 1][j] for i in range(L - 1) for j in range(L))
        energy += J * sum(s[i][j] * s[i][j + 1] for i in range(L) for j in range(L - 1))
        weights.append(math.exp(energy))
        spins.append(s)
    Z = sum(weights)
    m = [
        [sum(w * s[i][j] for w, s in zip(weights, spins)) / Z for j in range(L)]
        for i in range(L)
    ]
    return math.log(Z), torch.tensor(m, dtype=torch.float64)


@pytest.mark.parametrize(
    "L, J, h", [(1, 0.7, 0.3), (2, 0.4, 0.1), (3, -0.3, 0.2), (3, 0.5, "field")]
)
def test_exact_enumeration_matches_brute_force(L, J, h):
    if h == "field":
        h = torch.linspace(-0.5, 0.5, L * L, dtype=torch.float64).reshape(L, L)
    log_z, m = brute_force(L, J, h)
    assert ising_log_z_exact(L, J, h).item() == pytest.approx(log_z, abs=1e-10)
    assert torch.allclose(ising_magnetisation_exact(L, J, h), m, atol=1e-10)


def test_single_spin_and_free_spins_have_textbook_log_z():
    assert ising_log_z_exact(1, 0.3, 0.8).item() == pytest.approx(
        math.log(2 * math.cosh(0.8))
    )
    assert ising_log_z_exact(4, 0.0, 0.5).item() == pytest.approx(
        16 * math.log(2 * math.cosh(0.5))
    )


@pytest.mark.parametrize("J, h", [(0.2, 0.1), (0.5, 0.0), (-0.4, 0.3), (0.3, "field")])
def test_mean_field_elbo_is_below_log_z_and_never_decreases(J, h):
    if h == "field":
        h = (
            torch.randn(
                4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64
            )
            * 0.3
        )
    m, history = ising_mean_field(4, J, h, sweeps=60)
    assert (history["elbo"].diff() >= -1e-12).all()
    assert history["elbo"][-1] <= ising_log_z_exact(4, J, h)
    assert history["elbo"][-1].item() == pytest.approx(
        ising_mean_field_elbo(m, J, h).item()
    )
    # a fixed point of m_i = tanh(J sum_j m_j + h_i)
    from lib.vi import neighbour_sum

    assert torch.allclose(
        m,
        torch.tanh(J * neighbour_sum(m) + torch.as_tensor(h, dtype=torch.float64)),
        atol=1e-8,
    )


def test_mean_field_is_exact_without_coupling():
    h = torch.linspace(-1, 1, 9, dtype=torch.float64).reshape(3, 3)
    m, history = ising_mean_field(3, 0.0, h, sweeps=2)
    assert torch.allclose(m, torch.tanh(h))
    assert history["elbo"][-1].item() == pytest.approx(
        ising_log_z_exact(3, 0.0, h).item()
    )


def test_mean_field_elbo_matches_its_definition():
    # ELBO = E_q[log p~(s)] + H[q], computed by enumerating q on a 2 x 2 grid.
    m = torch.tensor([[0.3, -0.5], [0.8, 0.1]], dtype=torch.float64)
    s = torch.tensor(
        list(itertools.product((-1.0, 1.0), repeat=4)), dtype=torch.float64
    ).reshape(-1, 2, 2)
    log_q = torch.log((1 + s * m) / 2).sum((1, 2))
    expected = (log_q.exp() * (ising_log_potential(s, 0.7, 0.2) - log_q)).sum()
    assert ising_mean_field_elbo(m, 0.7, 0.2).item() == pytest.approx(expected.item())


def test_gibbs_matches_exact_magnetisation_and_is_seeded():
    h = torch.tensor(
        [[0.3, -0.2, 0.0], [0.1, 0.4, -0.3], [0.0, 0.2, 0.1]], dtype=torch.float64
    )
    m, history = ising_gibbs(3, 0.4, h, sweeps=1500, burn_in=50, chains=64, seed=5)
    exact = ising_magnetisation_exact(3, 0.4, h)
    assert (m - exact).abs().max() < 0.03
    again, _ = ising_gibbs(3, 0.4, h, sweeps=1500, burn_in=50, chains=64, seed=5)
    assert torch.equal(m, again)
    other, _ = ising_gibbs(3, 0.4, h, sweeps=1500, burn_in=50, chains=64, seed=6)
    assert not torch.equal(m, other)
    assert history["mean_spin"].shape == (1550,) and history["samples"].shape == (
        64,
        3,
        3,
    )
    assert set(history["samples"].unique().tolist()) <= {-1.0, 1.0}


def test_mean_field_is_seeded():
    a, _ = ising_mean_field(4, 0.5, 0.0, sweeps=5, seed=1)
    b, _ = ising_mean_field(4, 0.5, 0.0, sweeps=5, seed=1)
    assert torch.equal(a, b)


def test_ising_bad_inputs():
    with pytest.raises(ValueError, match="16 spins"):
        ising_log_z_exact(5, 0.1, 0.0)
    with pytest.raises(ValueError, match="L must be a positive int"):
        ising_log_z_exact(0, 0.1, 0.0)
    with pytest.raises(ValueError, match=r"h must be a scalar or have shape \(3, 3\)"):
        ising_mean_field(3, 0.1, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="schedule"):
        ising_mean_field(3, 0.1, 0.0, schedule="random")
    with pytest.raises(ValueError, match="m holds magnetisations"):
        ising_mean_field_elbo(torch.full((2, 2), 1.5, dtype=torch.float64), 0.1, 0.0)
    with pytest.raises(ValueError, match="chains"):
        ising_gibbs(3, 0.1, 0.0, chains=0)
    with pytest.raises(TypeError, match="J must be"):
        ising_mean_field(3, "strong", 0.0)
