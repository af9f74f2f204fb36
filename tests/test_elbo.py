"""lib.elbo against independent oracles: torch.distributions, scikit-learn, brute-force
sums."""

import math

import numpy as np
import pytest
import torch
from sklearn.mixture import GaussianMixture
from torch.distributions import (
    Categorical,
    Independent,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
)

from lib.elbo import (
    LinearGaussianVAE,
    gmm_e_step,
    gmm_elbo,
    gmm_em,
    gmm_log_likelihood,
    gmm_m_step,
    importance_log_weights,
    iwae_bound,
    ppca_elbo,
    ppca_em,
    ppca_log_joint,
    ppca_log_marginal,
    ppca_mean_field_posterior,
    ppca_posterior,
)

F64 = torch.float64


def mixture_data(d=2, n=240, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[-2.0, 0.0], [1.5, 1.0], [0.5, -2.0]], dtype=F64)[:, :d]
    which = torch.randint(3, (n,), generator=g)
    return centres[which] + 0.7 * torch.randn(n, d, generator=g, dtype=F64)


def random_params(d, K, seed=1):
    g = torch.Generator().manual_seed(seed)
    weights = torch.softmax(torch.randn(K, generator=g, dtype=F64), 0)
    means = torch.randn(K, d, generator=g, dtype=F64)
    A = torch.randn(K, d, d, generator=g, dtype=F64)
    covs = A @ A.transpose(1, 2) + 0.5 * torch.eye(d, dtype=F64)
    return weights, means, covs


# ----------------------------------------------------------------------------------------
# Gaussian mixture


@pytest.mark.parametrize("d", [1, 2])
def test_gmm_log_likelihood_matches_torch_and_sklearn(d):
    x = mixture_data(d)
    weights, means, covs = random_params(d, 3)
    mixture = MixtureSameFamily(Categorical(weights), MultivariateNormal(means, covs))
    assert gmm_log_likelihood(x, weights, means, covs).item() == pytest.approx(
        mixture.log_prob(x).sum().item()
    )
    sk = GaussianMixture(3, covariance_type="full")
    sk.weights_, sk.means_, sk.covariances_ = weights.numpy(), means.numpy(), covs.numpy()
    sk.precisions_cholesky_ = np.linalg.cholesky(np.linalg.inv(covs.numpy()))
    assert gmm_log_likelihood(x, weights, means, covs).item() == pytest.approx(
        sk.score_samples(x.numpy()).sum()
    )
    resp = gmm_e_step(x, weights, means, covs)
    assert np.allclose(resp.numpy(), sk.predict_proba(x.numpy()))


def test_elbo_equals_log_likelihood_at_the_posterior_and_is_below_it_elsewhere():
    x = mixture_data()
    params = random_params(2, 3)
    resp = gmm_e_step(x, *params)
    assert gmm_elbo(x, *params, resp).item() == pytest.approx(
        gmm_log_likelihood(x, *params).item(), abs=1e-6
    )
    other = torch.softmax(
        torch.randn(len(x), 3, generator=torch.Generator().manual_seed(2), dtype=F64), 1
    )
    gap = gmm_log_likelihood(x, *params) - gmm_elbo(x, *params, other)
    # the gap is sum_n KL(q_n || p(z_n | x_n)), computed independently
    kl = (other * (other.log() - resp.log())).sum()
    assert gap.item() == pytest.approx(kl.item(), rel=1e-8) and gap > 0


def test_elbo_with_brute_force_sum_and_zero_responsibilities():
    x = mixture_data(n=20)
    weights, means, covs = random_params(2, 3)
    resp = torch.softmax(
        torch.randn(20, 3, generator=torch.Generator().manual_seed(4), dtype=F64), 1
    )
    # hard assignments contribute no entropy
    resp[:5] = torch.tensor([1.0, 0.0, 0.0], dtype=F64)
    expected = 0.0
    for n in range(20):
        for k in range(3):
            r = resp[n, k].item()
            if r > 0:
                log_joint = (
                    math.log(weights[k])
                    + MultivariateNormal(means[k], covs[k]).log_prob(x[n]).item()
                )
                expected += r * (log_joint - math.log(r))
    assert gmm_elbo(x, weights, means, covs, resp).item() == pytest.approx(expected)


def test_m_step_matches_weighted_moments_and_raises_the_elbo():
    x = mixture_data()
    params = random_params(2, 3)
    resp = gmm_e_step(x, *params)
    weights, means, covs = gmm_m_step(x, resp, reg=0.0)
    for k in range(3):
        r = resp[:, k].numpy()
        assert means[k].numpy() == pytest.approx(np.average(x.numpy(), axis=0, weights=r))
        assert covs[k].numpy() == pytest.approx(
            np.cov(x.numpy().T, aweights=r, bias=True)
        )
    assert weights.numpy() == pytest.approx(resp.mean(0).numpy())
    assert gmm_elbo(x, weights, means, covs, resp) >= gmm_elbo(x, *params, resp)
    # the M-step is a maximum: nudging the parameters lowers the ELBO
    best = gmm_elbo(x, weights, means, covs, resp)
    assert gmm_elbo(x, weights, means + 0.01, covs, resp) < best
    assert gmm_elbo(x, weights, means, covs * 1.01, resp) < best


@pytest.mark.parametrize("d", [1, 2])
def test_em_tight_after_e_step_and_monotone(d):
    x = mixture_data(d)
    params, history = gmm_em(x, 3, iterations=25, seed=0)
    ll, e, m = history["log_likelihood"], history["elbo_e_step"], history["elbo_m_step"]
    assert ll.shape == (26,) and e.shape == m.shape == (25,)
    # E-step makes the bound tight
    assert torch.allclose(e, ll[:-1], atol=1e-6, rtol=0)
    # M-step raises it; log p(x) above it
    assert (m >= e - 1e-9).all() and (ll[1:] >= m - 1e-9).all()
    # so log p(x) never decreases
    assert (ll.diff() >= -1e-9).all()
    assert ll[-1].item() == pytest.approx(gmm_log_likelihood(x, *params).item())


def test_em_reaches_sklearn_optimum():
    x = mixture_data()
    params, history = gmm_em(x, 3, iterations=300, seed=0, reg=0.0)
    sk = GaussianMixture(
        3,
        covariance_type="full",
        reg_covar=0.0,
        tol=1e-10,
        max_iter=1000,
        n_init=5,
        random_state=0,
    ).fit(x.numpy())
    assert history["log_likelihood"][-1].item() == pytest.approx(
        sk.score(x.numpy()) * len(x), abs=1e-3
    )


def test_hard_em_gap_stays_open():
    x = mixture_data()
    params, history = gmm_em(x, 3, iterations=30, hard=True)
    gaps = history["log_likelihood"][1:] - history["elbo_m_step"]
    assert (gaps > 1.0).all()
    assert (history["elbo_m_step"].diff() >= -1e-9).all()


def test_em_is_deterministic_with_a_seed():
    x = mixture_data()
    a, _ = gmm_em(x, 3, iterations=5, seed=7)
    b, _ = gmm_em(x, 3, iterations=5, seed=7)
    assert all(torch.equal(u, v) for u, v in zip(a, b))


def test_gmm_bad_inputs():
    x = mixture_data()
    weights, means, covs = random_params(2, 3)
    with pytest.raises(ValueError, match="x must have shape \\(n, d\\)"):
        gmm_e_step(x[:, 0], weights, means, covs)
    with pytest.raises(ValueError, match="weights must be non-negative and sum to 1"):
        gmm_e_step(x, weights * 2, means, covs)
    with pytest.raises(
        ValueError, match=r"means must have shape \(K, d\) = \(3, 2\), got \(2, 2\)"
    ):
        gmm_e_step(x, weights, means[:2], covs)
    with pytest.raises(ValueError, match="covs must have shape"):
        gmm_e_step(x, weights, means, covs[:, 0])
    with pytest.raises(ValueError, match="each row of resp .* must sum to 1"):
        gmm_elbo(x, weights, means, covs, torch.full((len(x), 3), 0.5, dtype=F64))
    with pytest.raises(ValueError, match=r"resp must have shape \(n, K\)"):
        gmm_elbo(x, weights, means, covs, torch.full((len(x), 2), 0.5, dtype=F64))
    with pytest.raises(ValueError, match="K must be an int"):
        gmm_em(x, 0)
    with pytest.raises(TypeError, match="x must be a floating-point"):
        gmm_em(torch.ones(4, 2, dtype=torch.long), 2)


# ----------------------------------------------------------------------------------------
# Probabilistic PCA


@pytest.fixture
def ppca():
    g = torch.Generator().manual_seed(11)
    W = torch.tensor([[1.0, 0.8], [0.9, 1.0], [0.2, -0.5], [0.0, 0.4]], dtype=F64)
    b = torch.randn(4, generator=g, dtype=F64)
    sigma2 = 0.5
    z = torch.randn(30, 2, generator=g, dtype=F64)
    x = z @ W.T + b + math.sqrt(sigma2) * torch.randn(30, 4, generator=g, dtype=F64)
    return x, W, b, sigma2


def test_ppca_marginal_matches_multivariate_normal(ppca):
    x, W, b, sigma2 = ppca
    oracle = MultivariateNormal(b, W @ W.T + sigma2 * torch.eye(4, dtype=F64)).log_prob(x)
    assert torch.allclose(ppca_log_marginal(x, W, b, sigma2), oracle)


def test_ppca_posterior_is_bayes_rule(ppca):
    # log p(z | x) = log p(x, z) - log p(x) at arbitrary z
    x, W, b, sigma2 = ppca
    z = torch.randn(3, 30, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    expected = ppca_log_joint(x, z, W, b, sigma2) - ppca_log_marginal(x, W, b, sigma2)
    assert torch.allclose(ppca_posterior(x, W, b, sigma2).log_prob(z), expected)


def test_ppca_elbo_decomposition(ppca):
    x, W, b, sigma2 = ppca
    exact = ppca_posterior(x, W, b, sigma2)
    log_px = ppca_log_marginal(x, W, b, sigma2)
    assert torch.allclose(
        ppca_elbo(x, W, b, sigma2, exact.mean, exact.covariance_matrix),
        log_px,
        atol=1e-10,
    )
    q = ppca_mean_field_posterior(x, W, b, sigma2)
    elbo = ppca_elbo(x, W, b, sigma2, q.mean, torch.diag_embed(q.variance))
    kl = torch.distributions.kl_divergence(
        MultivariateNormal(q.mean, torch.diag_embed(q.variance)), exact
    )
    # log p(x) = ELBO + KL(q || p(z | x))
    assert torch.allclose(log_px - elbo, kl)
    # W's columns overlap: the posterior is correlated
    assert (kl > 1e-3).all()
    # Monte Carlo with the joint density agrees with the closed form
    lw = importance_log_weights(
        lambda z: ppca_log_joint(x, z, W, b, sigma2), q, 1, repeats=40_000, seed=1
    )
    assert torch.allclose(lw.mean((0, 1)), elbo, atol=0.03)


def test_mean_field_is_the_best_factorised_gaussian(ppca):
    x, W, b, sigma2 = ppca
    q = ppca_mean_field_posterior(x, W, b, sigma2)
    best = ppca_elbo(x, W, b, sigma2, q.mean, torch.diag_embed(q.variance))
    for scale in (0.9, 1.1):
        assert (
            ppca_elbo(x, W, b, sigma2, q.mean, torch.diag_embed(q.variance * scale))
            < best
        ).all()
    assert (
        ppca_elbo(x, W, b, sigma2, q.mean + 0.05, torch.diag_embed(q.variance)) < best
    ).all()


def test_iwae_bound_tightens_with_k_and_stays_below_log_px(ppca):
    x, W, b, sigma2 = ppca
    log_px = ppca_log_marginal(x, W, b, sigma2).sum()
    # the prior: a poor q
    q = Independent(
        Normal(torch.zeros(30, 2, dtype=F64), torch.ones(30, 2, dtype=F64)), 1
    )
    bounds = []
    for K in (1, 5, 50):
        estimates = iwae_bound(
            importance_log_weights(
                lambda z: ppca_log_joint(x, z, W, b, sigma2), q, K, repeats=200, seed=K
            ),
            dim=1,
        ).sum(-1)
        mean, se = estimates.mean(), estimates.std() / math.sqrt(len(estimates))
        assert mean + 3 * se < log_px
        bounds.append(mean)
    assert bounds[0] < bounds[1] < bounds[2]


def test_iwae_with_the_exact_posterior_is_exact(ppca):
    x, W, b, sigma2 = ppca
    q = ppca_posterior(x, W, b, sigma2)
    lw = importance_log_weights(
        lambda z: ppca_log_joint(x, z, W, b, sigma2), q, 5, repeats=3
    )
    assert torch.allclose(
        iwae_bound(lw, dim=1), ppca_log_marginal(x, W, b, sigma2).expand(3, -1)
    )


def test_iwae_bound_is_log_mean_exp():
    lw = torch.tensor([[0.0, math.log(3.0)], [math.log(2.0), math.log(5.0)]], dtype=F64)
    assert torch.allclose(
        iwae_bound(lw, dim=1), torch.tensor([math.log(2.0), math.log(3.5)], dtype=F64)
    )
    with pytest.raises(TypeError, match="log_weights"):
        iwae_bound([0.0, 1.0])
    with pytest.raises(ValueError, match="sample dimension"):
        iwae_bound(torch.tensor(0.0))


def test_importance_weights_are_seeded(ppca):
    x, W, b, sigma2 = ppca
    q = ppca_mean_field_posterior(x, W, b, sigma2)
    f = lambda z: ppca_log_joint(x, z, W, b, sigma2)  # noqa: E731
    assert torch.equal(
        importance_log_weights(f, q, 4, seed=3), importance_log_weights(f, q, 4, seed=3)
    )
    assert importance_log_weights(f, q, 4, repeats=2).shape == (2, 4, 30)
    with pytest.raises(ValueError, match="K must be a positive int"):
        importance_log_weights(f, q, 0)


def test_exact_and_variational_em(ppca):
    x, W, b, sigma2 = ppca
    _, exact = ppca_em(x, 2, iterations=30)
    assert (exact["log_likelihood"].diff() >= -1e-9).all()
    # tight after each E-step
    assert torch.allclose(exact["elbo"][0::2], exact["log_likelihood"][:-1])
    _, mean_field = ppca_em(x, 2, iterations=30, mean_field=True)
    # the ELBO still never falls
    assert (mean_field["elbo"].diff() >= -1e-9).all()
    # but the bound is not tight
    assert (mean_field["elbo"][0::2] < mean_field["log_likelihood"][:-1]).all()


def test_ppca_bad_inputs(ppca):
    x, W, b, sigma2 = ppca
    with pytest.raises(ValueError, match=r"W must have shape \(d, q_dim\) with d = 4"):
        ppca_log_marginal(x, W.T, b, sigma2)
    with pytest.raises(ValueError, match=r"b must have shape \(4,\)"):
        ppca_log_marginal(x, W, b[:2], sigma2)
    with pytest.raises(ValueError, match="sigma2 must be a positive scalar"):
        ppca_log_marginal(x, W, b, -1.0)
    with pytest.raises(ValueError, match="q_mean must have shape"):
        ppca_elbo(x, W, b, sigma2, torch.zeros(30, 3, dtype=F64), torch.eye(2, dtype=F64))


def test_linear_vae_terms(ppca):
    x, W, b, sigma2 = ppca
    model = LinearGaussianVAE(4, 2).double()
    terms = model.loss(x)
    assert set(terms) == {"loss", "rec", "kl", "log_px"}
    assert torch.allclose(terms["loss"], terms["rec"] + terms["kl"])
    # the one-sample ELBO is unbiased for the closed form ppca_elbo of the encoder's q
    q = model.encode(x)
    with torch.no_grad():
        closed = ppca_elbo(
            x,
            model.W,
            model.b,
            model.log_sigma2.exp(),
            q.mean,
            torch.diag_embed(q.variance),
        ).mean()
        torch.manual_seed(0)
        mc = -model.loss(x.repeat(2000, 1))["loss"]
    assert mc.item() == pytest.approx(closed.item(), abs=0.05)
    assert terms["log_px"].item() == pytest.approx(model.log_marginal(x).mean().item())
