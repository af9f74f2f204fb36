"""lib.kl against independent oracles: torch.distributions, numerical integration, and the
analytic forward/reverse fits."""

import math

import pytest
import torch
from scipy import integrate
from torch.distributions import (
    Categorical,
    Independent,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
    kl_divergence,
)

from lib.kl import fit_gaussian, kl_categorical, kl_gaussian, kl_mc


def random_probs(g, *shape, zero_below=0.0):
    p = torch.rand(*shape, generator=g, dtype=torch.float64)
    p[p < zero_below] = 0
    p[..., 0] += 1e-3  # no all-zero rows
    return p / p.sum(-1, keepdim=True)


def random_spd(g, d, batch=()):
    A = torch.randn(*batch, d, d, generator=g, dtype=torch.float64)
    return A @ A.transpose(-1, -2) + 0.3 * torch.eye(d, dtype=torch.float64)


# ---------------------------------------------------------------------------- categorical


def test_categorical_matches_torch_distributions_with_zeros():
    g = torch.Generator().manual_seed(0)
    p = random_probs(g, 50, 6, zero_below=0.3)
    q = random_probs(g, 50, 6)
    expected = kl_divergence(Categorical(probs=p), Categorical(probs=q))
    torch.testing.assert_close(kl_categorical(p, q), expected)


def test_categorical_conventions():
    assert (
        kl_categorical(torch.tensor([0.5, 0.5, 0.0]), torch.tensor([0.5, 0.5, 0.0])) == 0
    )
    assert kl_categorical(torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0])) == math.inf
    p, q = torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.2, 0.3, 0.5])
    assert kl_categorical(p, q) > 0 and kl_categorical(q, p) > 0
    assert not torch.isclose(kl_categorical(p, q), kl_categorical(q, p))  # asymmetric


@pytest.mark.parametrize(
    "p, q, error, words",
    [
        (
            torch.tensor([0.5, 0.6]),
            torch.tensor([0.5, 0.5]),
            ValueError,
            "p must sum to 1",
        ),
        (
            torch.tensor([0.5, 0.5]),
            torch.tensor([1.5, -0.5]),
            ValueError,
            "q must have non-negative",
        ),
        (
            torch.tensor([0.5, 0.5]),
            torch.tensor([0.2, 0.3, 0.5]),
            ValueError,
            "q must have p.s shape",
        ),
        (
            [0.5, 0.5],
            torch.tensor([0.5, 0.5]),
            TypeError,
            "p must be a floating-point torch.Tensor",
        ),
        (torch.tensor([1, 0]), torch.tensor([1, 0]), TypeError, "floating-point"),
    ],
)
def test_categorical_bad_input(p, q, error, words):
    with pytest.raises(error, match=words):
        kl_categorical(p, q)


# ---------------------------------------------------------------------------- Gaussians


def test_univariate_gaussian_matches_numerical_integration():
    mu_p, var_p, mu_q, var_q = 0.3, 0.5, -1.0, 2.0
    p, q = Normal(mu_p, math.sqrt(var_p)), Normal(mu_q, math.sqrt(var_q))

    def integrand(x):
        lp, lq = p.log_prob(torch.tensor(x)).item(), q.log_prob(torch.tensor(x)).item()
        return math.exp(lp) * (lp - lq)

    exact, _ = integrate.quad(integrand, -30, 30)
    got = kl_gaussian(
        torch.tensor([mu_p]),
        torch.tensor([var_p]),
        torch.tensor([mu_q]),
        torch.tensor([var_q]),
    )
    assert got.item() == pytest.approx(exact, rel=1e-6)


def test_diagonal_gaussian_matches_torch_distributions():
    g = torch.Generator().manual_seed(1)
    mu_p, mu_q = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    var_p, var_q = (
        torch.rand(8, 5, generator=g) + 0.1,
        torch.rand(8, 5, generator=g) + 0.1,
    )
    expected = kl_divergence(
        Independent(Normal(mu_p, var_p.sqrt()), 1),
        Independent(Normal(mu_q, var_q.sqrt()), 1),
    )
    torch.testing.assert_close(kl_gaussian(mu_p, var_p, mu_q, var_q), expected)


def test_full_gaussian_matches_torch_distributions():
    g = torch.Generator().manual_seed(2)
    mu_p, mu_q = (
        torch.randn(4, 3, generator=g, dtype=torch.float64),
        torch.randn(4, 3, generator=g, dtype=torch.float64),
    )
    S_p, S_q = random_spd(g, 3, (4,)), random_spd(g, 3, (4,))
    expected = kl_divergence(MultivariateNormal(mu_p, S_p), MultivariateNormal(mu_q, S_q))
    torch.testing.assert_close(kl_gaussian(mu_p, S_p, mu_q, S_q), expected)


def test_mixed_diagonal_and_full_covariances():
    g = torch.Generator().manual_seed(3)
    mu_p, mu_q = (
        torch.randn(3, generator=g, dtype=torch.float64),
        torch.randn(3, generator=g, dtype=torch.float64),
    )
    var_p, S_q = torch.rand(3, generator=g, dtype=torch.float64) + 0.2, random_spd(g, 3)
    expected = kl_divergence(
        MultivariateNormal(mu_p, torch.diag(var_p)), MultivariateNormal(mu_q, S_q)
    )
    torch.testing.assert_close(kl_gaussian(mu_p, var_p, mu_q, S_q), expected)


@pytest.mark.parametrize(
    "cov_q, words",
    [
        (torch.tensor([[1.0, 2.0], [2.0, 1.0]]), "cov_q must be positive definite"),
        (torch.tensor([[1.0, 0.5], [0.0, 1.0]]), "cov_q must be a symmetric"),
        (torch.tensor([1.0, 0.0]), "cov_q holds variances, which must be positive"),
        (torch.ones(3), r"cov_q must have shape \(2,\) \(variances\) or \(2, 2\)"),
    ],
)
def test_gaussian_bad_covariance(cov_q, words):
    with pytest.raises(ValueError, match=words):
        kl_gaussian(torch.zeros(2), torch.ones(2), torch.zeros(2), cov_q)


def test_gaussian_mismatched_means():
    with pytest.raises(ValueError, match="mu_p and mu_q must have the same shape"):
        kl_gaussian(torch.zeros(2), torch.ones(2), torch.zeros(3), torch.ones(3))


# ---------------------------------------------------------------------------- Monte Carlo


def test_mc_estimate_is_within_its_standard_error():
    torch.manual_seed(4)
    p = MultivariateNormal(
        torch.tensor([0.0, 1.0]), torch.tensor([[1.0, 0.6], [0.6, 2.0]])
    )
    q = MultivariateNormal(
        torch.tensor([1.0, -0.5]), torch.tensor([[1.5, -0.3], [-0.3, 0.8]])
    )
    estimates = torch.stack([kl_mc(p, q, 2000) for _ in range(50)])
    exact = kl_divergence(p, q)
    stderr = estimates.std() / math.sqrt(len(estimates))
    assert abs(estimates.mean() - exact) < 4 * stderr
    assert estimates.std() > 0  # a random estimate, not a closed form


def test_mc_works_without_a_closed_form():
    torch.manual_seed(5)
    p = MixtureSameFamily(
        Categorical(torch.tensor([0.3, 0.7])),
        Normal(torch.tensor([-2.0, 1.5]), torch.tensor([0.5, 0.8])),
    )
    q = Normal(torch.tensor(0.3), torch.tensor(1.7))
    exact, _ = integrate.quad(
        lambda x: (
            math.exp(p.log_prob(torch.tensor(x)).item())
            * (p.log_prob(torch.tensor(x)).item() - q.log_prob(torch.tensor(x)).item())
        ),
        -15,
        15,
        limit=200,
    )
    assert kl_mc(p, q, 400_000).item() == pytest.approx(exact, abs=0.01)


@pytest.mark.parametrize("n", [0, -3, 2.5, True])
def test_mc_bad_sample_size(n):
    with pytest.raises(ValueError, match="n must be a positive int"):
        kl_mc(Normal(0.0, 1.0), Normal(1.0, 1.0), n)


def test_mc_bad_distribution():
    with pytest.raises(TypeError, match="q must be a torch.distributions.Distribution"):
        kl_mc(Normal(0.0, 1.0), "normal", 10)


# ---------------------------------------------------------------------------- forward
# vs reverse fits


def test_fits_of_a_correlated_gaussian_match_the_analytic_variances():
    Sigma = torch.tensor([[1.0, 0.9], [0.9, 1.0]])
    target = MultivariateNormal(torch.zeros(2), Sigma)
    q_forward, history = fit_gaussian(target, "forward", steps=1500, n=512, lr=0.02)
    q_reverse, _ = fit_gaussian(target, "reverse", steps=1500, n=512, lr=0.02)
    torch.testing.assert_close(q_forward.variance, Sigma.diagonal(), atol=0.05, rtol=0)
    torch.testing.assert_close(
        q_reverse.variance, 1 / torch.linalg.inv(Sigma).diagonal(), atol=0.01, rtol=0
    )
    torch.testing.assert_close(q_reverse.mean, torch.zeros(2), atol=0.05, rtol=0)
    assert len(history["loss"]) == 1500


def test_reverse_fit_of_a_bimodal_target_seeks_one_mode_and_forward_covers():
    mixture = MixtureSameFamily(
        Categorical(torch.tensor([0.5, 0.5])),
        Normal(torch.tensor([-2.0, 2.0]), torch.tensor([0.6, 0.6])),
    )
    q_reverse, _ = fit_gaussian(mixture, "reverse", steps=1500, n=512, lr=0.02, seed=1)
    q_forward, _ = fit_gaussian(mixture, "forward", steps=1500, n=512, lr=0.02)
    assert abs(q_reverse.mean.abs().item() - 2.0) < 0.1
    assert abs(q_reverse.stddev.item() - 0.6) < 0.1
    # the mixture's variance
    assert q_forward.variance.item() == pytest.approx(4 + 0.36, abs=0.25)


def test_fit_is_deterministic_given_a_seed():
    target = MultivariateNormal(torch.zeros(2), torch.tensor([[1.0, 0.5], [0.5, 1.0]]))
    a, _ = fit_gaussian(target, "reverse", steps=100, seed=7)
    b, _ = fit_gaussian(target, "reverse", steps=100, seed=7)
    assert torch.equal(a.mean, b.mean) and torch.equal(a.variance, b.variance)


def test_fit_bad_direction():
    with pytest.raises(ValueError, match="direction must be 'forward' or 'reverse'"):
        fit_gaussian(Normal(0.0, 1.0), "sideways")
