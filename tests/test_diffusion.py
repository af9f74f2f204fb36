"""lib.diffusion against independent oracles: one-step kernels composed by Monte Carlo,
Bayes' rule on a grid, torch.distributions, and the exact log-likelihood of a
linear-Gaussian reverse process on 1-D Gaussian data, where everything is tractable."""

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from lib.data import toy2d
from lib.diffusion import (
    Diffusion,
    alpha_bar_from_betas,
    ancestral_sample,
    beta_schedule,
    betas_from_alpha_bar,
    discretised_gaussian_log_prob,
    elbo_weight,
    gaussian_kl,
    levels_to_unit,
    neg_elbo_terms,
    p_mean,
    posterior_variance,
    predict_x0,
    q_mean_var,
    q_posterior,
    q_sample,
    q_step,
    respace,
    reverse_variance,
    simple_loss,
    train_diffusion,
    unit_to_levels,
)
from lib.gan import mode_coverage
from lib.zoo import load
from lib.zoo.diffusion import CONFIGS, TOY_SEEDS

F64 = torch.float64


def schedule(steps=20, name="linear"):
    return alpha_bar_from_betas(beta_schedule(name, steps))


# ----------------------------------------------------------------------------------------
# Schedules


def test_beta_schedules():
    betas = beta_schedule("linear", 1000)
    assert betas.shape == (1001,) and betas[0] == 0
    assert betas[1].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(
        0.02
    )
    alpha_bar = alpha_bar_from_betas(betas)
    assert alpha_bar[0] == 1 and (alpha_bar.diff() < 0).all() and alpha_bar[-1] < 1e-4
    assert torch.allclose(betas_from_alpha_bar(alpha_bar), betas, atol=1e-12)
    # the cosine schedule's abar_t = f(t) / f(0) (while no beta is capped)
    cosine = alpha_bar_from_betas(beta_schedule("cosine", 100))
    f = [math.cos((t / 100 + 0.008) / 1.008 * math.pi / 2) ** 2 for t in range(101)]
    assert torch.allclose(
        cosine[:90], torch.tensor([v / f[0] for v in f[:90]], dtype=F64), rtol=1e-10
    )
    # fewer steps, scaled ends: about the same total noise
    assert abs(math.log(schedule(100)[-1]) / math.log(alpha_bar[-1]) - 1) < 0.1


def test_respace_keeps_the_marginals():
    alpha_bar = schedule(1000)
    full, times = respace(alpha_bar, 1000)
    assert torch.equal(full, alpha_bar) and torch.equal(times, torch.arange(1001))
    short, times = respace(alpha_bar, 10)
    assert times.tolist()[:2] == [0, 1] and times[-1] == 1000 and len(short) == 11
    assert torch.equal(short, alpha_bar[times])
    betas = betas_from_alpha_bar(short)
    assert ((betas[1:] > 0) & (betas[1:] < 1)).all()
    assert torch.allclose(alpha_bar_from_betas(betas), short)
    with pytest.raises(ValueError, match="steps must be at most"):
        respace(alpha_bar, 1001)


# ----------------------------------------------------------------------------------------
# The forward process and the posterior


def test_marginal_matches_composed_one_step_kernels():
    alpha_bar = schedule(40).float()
    x0 = torch.tensor([[1.5, -0.5]]).repeat(200_000, 1)
    g = torch.Generator().manual_seed(0)
    x = x0
    for t in range(1, 41):
        x = q_step(x, t, alpha_bar, generator=g)
        if t in (1, 7, 40):
            mean, var = q_mean_var(x0[:1], t, alpha_bar)
            se_mean = (var[0] / len(x)).sqrt()
            assert ((x.mean(0) - mean[0]).abs() < 5 * se_mean).all()
            assert ((x.var(0) / var[0] - 1).abs() < 5 * math.sqrt(2 / len(x))).all()
            direct = q_sample(x0, t, alpha_bar, generator=g)
            assert ((direct.mean(0) - mean[0]).abs() < 5 * se_mean).all()


def test_posterior_matches_bayes_rule_on_a_grid():
    alpha_bar = schedule(30)
    betas = betas_from_alpha_bar(alpha_bar)
    grid = torch.linspace(-8, 8, 400_001, dtype=F64)  # values of x_{t-1}
    for t, x0, xt in ((2, 0.8, 0.3), (10, -1.2, 0.9), (30, 0.4, -2.0)):
        prior = Normal(
            math.sqrt(alpha_bar[t - 1]) * x0, math.sqrt(1 - alpha_bar[t - 1])
        )  # q(x_{t-1} | x_0)
        likelihood = Normal(
            torch.sqrt(1 - betas[t]) * grid, math.sqrt(betas[t])
        )  # q(x_t | x_{t-1})
        log_w = prior.log_prob(grid) + likelihood.log_prob(torch.tensor(xt, dtype=F64))
        w = torch.softmax(log_w, 0)
        mean_exact = (w * grid).sum()
        var_exact = (w * (grid - mean_exact) ** 2).sum()
        mean, var = q_posterior(
            torch.tensor([x0], dtype=F64), torch.tensor([xt], dtype=F64), t, alpha_bar
        )
        assert mean.item() == pytest.approx(mean_exact.item(), abs=1e-6)
        assert var.item() == pytest.approx(var_exact.item(), rel=1e-6)
        assert var.item() == pytest.approx(
            posterior_variance(alpha_bar)[t].item(), rel=1e-12
        )
    # at t = 1 the posterior is a point mass at x_0
    mean, var = q_posterior(
        torch.tensor([0.7], dtype=F64), torch.tensor([0.1], dtype=F64), 1, alpha_bar
    )
    assert mean.item() == pytest.approx(0.7) and var.item() == 0


def test_eps_parameterisation_inverts_the_forward_draw():
    alpha_bar = schedule(50)
    x0, eps = torch.randn(6, 3, dtype=F64), torch.randn(6, 3, dtype=F64)
    t = torch.tensor([1, 2, 5, 20, 49, 50])
    xt = q_sample(x0, t, alpha_bar, eps)
    assert torch.allclose(predict_x0(xt, eps, t, alpha_bar), x0)
    # with the true noise, the reverse mean is the posterior mean
    assert torch.allclose(
        p_mean(xt, eps, t, alpha_bar), q_posterior(x0, xt, t, alpha_bar)[0]
    )


# ----------------------------------------------------------------------------------------
# KL terms and the decoder


def test_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(1)
    m1, m2 = (
        torch.randn(50, generator=g, dtype=F64),
        torch.randn(50, generator=g, dtype=F64),
    )
    v1, v2 = (
        torch.rand(50, generator=g, dtype=F64) + 0.01,
        torch.rand(50, generator=g, dtype=F64) + 0.01,
    )
    expected = kl_divergence(Normal(m1, v1.sqrt()), Normal(m2, v2.sqrt()))
    assert torch.allclose(gaussian_kl(m1, v1, m2, v2), expected, atol=1e-12)


@pytest.mark.parametrize("variance", ["posterior", "beta"])
def test_kl_term_is_a_weighted_noise_error(variance):
    alpha_bar = schedule(50)
    g = torch.Generator().manual_seed(2)
    x0, eps, eps_hat = (torch.randn(40, 4, generator=g, dtype=F64) for _ in range(3))
    t = torch.randint(2, 51, (40,), generator=g)
    xt = q_sample(x0, t, alpha_bar, eps)
    sigma2 = reverse_variance(alpha_bar, variance)[t][:, None].expand_as(x0)
    mean_q, var_q = q_posterior(x0, xt, t, alpha_bar)
    kl = kl_divergence(
        Normal(mean_q, var_q.sqrt()),
        Normal(p_mean(xt, eps_hat, t, alpha_bar), sigma2.sqrt()),
    ).sum(1)
    floor = kl_divergence(
        Normal(mean_q, var_q.sqrt()), Normal(mean_q, sigma2.sqrt())
    ).sum(1)
    weighted = elbo_weight(alpha_bar, variance)[t] * (eps - eps_hat).pow(2).sum(1)
    assert torch.allclose(kl, weighted + floor, rtol=1e-9)
    if variance == "posterior":
        assert floor.abs().max() < 1e-12


def test_discretised_decoder():
    levels = 17
    x = levels_to_unit(torch.arange(levels, dtype=F64), levels)
    for mean, std in ((0.13, 0.05), (-0.9, 0.3), (1.4, 0.01), (0.0, 3.0)):
        mean_t, std_t = torch.full_like(x, mean), torch.full_like(x, std)
        log_p = discretised_gaussian_log_prob(x, mean_t, std_t, levels)
        assert torch.logsumexp(log_p, 0).item() == pytest.approx(0.0, abs=1e-9)
        cdf = Normal(mean_t, std_t).cdf
        edges_hi = torch.where(x > 1 - 1 / 16, torch.ones_like(x), cdf(x + 1 / 16))
        edges_lo = torch.where(x < -1 + 1 / 16, torch.zeros_like(x), cdf(x - 1 / 16))
        p = edges_hi - edges_lo
        big = p > 1e-12
        assert torch.allclose(log_p[big].exp(), p[big], rtol=1e-7, atol=1e-12)
    # far in a tail: finite, and equal to log Phi of the distance
    far = discretised_gaussian_log_prob(
        torch.tensor([1.0, 0.5], dtype=F64),
        torch.tensor([-1.0, -1.0], dtype=F64),
        torch.tensor([0.01, 0.01], dtype=F64),
        levels,
    )
    assert torch.isfinite(far).all()
    assert far[0].item() == pytest.approx(
        torch.special.log_ndtr(torch.tensor(-(2 - 1 / 16) / 0.01)).item(), rel=1e-6
    )
    assert torch.equal(unit_to_levels(x, levels), torch.arange(levels, dtype=F64))


# ----------------------------------------------------------------------------------------
# The ELBO on 1-D Gaussian data with a linear noise predictor: everything is tractable

M, S = 0.7, 0.5  # data x_0 ~ N(M, S^2)


def optimal_linear(alpha_bar):
    """E[eps | x_t] for Gaussian data: a linear function of x_t, and the exact reverse
    variances Var(x_{t-1} | x_t) (entry 1: Var(x_0 | x_1))."""
    v = alpha_bar * S**2 + 1 - alpha_bar  # Var(x_t), t = 0..T
    a = (1 - alpha_bar).sqrt() / v
    betas = betas_from_alpha_bar(alpha_bar)
    exact = torch.cat([v.new_zeros(1), v[:-1] * (1 - (1 - betas[1:]) * v[:-1] / v[1:])])

    def eps_fn(xt, t):
        return a[t].reshape(-1, 1) * (xt - alpha_bar[t].sqrt().reshape(-1, 1) * M)

    return eps_fn, exact


def exact_log_likelihood(eps_fn, x0, alpha_bar, sigma2):
    """log p_theta(x_0) of the linear-Gaussian reverse chain, by propagating its mean and
    variance from p(x_T) = N(0, 1) down to x_0 (x_{t-1} = A_t x_t + B_t + sigma_t z)."""
    T = len(alpha_bar) - 1
    mean, var = torch.zeros((), dtype=F64), torch.ones((), dtype=F64)
    for t in range(T, 0, -1):
        tt = torch.tensor([t])
        zero, one = torch.zeros(1, 1, dtype=F64), torch.ones(1, 1, dtype=F64)
        b = p_mean(zero, eps_fn(zero, tt), tt, alpha_bar)[0, 0]
        a = p_mean(one, eps_fn(one, tt), tt, alpha_bar)[0, 0] - b
        mean, var = a * mean + b, a**2 * var + sigma2[t]
    return Normal(mean, var.sqrt()).log_prob(x0)


def test_the_bound_is_tight_with_the_exact_reverse_process():
    alpha_bar = schedule(20)
    eps_fn, exact = optimal_linear(alpha_bar)
    x0 = torch.tensor([0.7, -0.4, 1.9], dtype=F64)
    log_p = exact_log_likelihood(eps_fn, x0, alpha_bar, exact)
    # the chain's marginal is the data's: abar_T is about 0, so p(x_T) = q(x_T)
    assert torch.allclose(log_p, Normal(M, S).log_prob(x0), atol=1e-4)
    reps = 20_000
    terms = neg_elbo_terms(
        eps_fn,
        x0.repeat_interleave(reps)[:, None],
        alpha_bar,
        variance=exact,
        generator=torch.Generator().manual_seed(3),
    )
    bound = -terms["total"].reshape(3, reps)
    assert torch.allclose(terms["total"], terms["prior"] + terms["kl"] + terms["decoder"])
    se = bound.std(1) / math.sqrt(reps)
    assert ((bound.mean(1) - log_p).abs() < 5 * se + 1e-3).all()


def test_the_bound_is_below_the_exact_log_likelihood():
    alpha_bar = schedule(20)
    eps_fn, _ = optimal_linear(alpha_bar)
    x0 = torch.tensor([0.7, -0.4, 1.9], dtype=F64)
    reps = 20_000
    for variance in ("posterior", "beta"):
        sigma2 = reverse_variance(alpha_bar, variance)
        log_p = exact_log_likelihood(eps_fn, x0, alpha_bar, sigma2)
        terms = neg_elbo_terms(
            eps_fn,
            x0.repeat_interleave(reps)[:, None],
            alpha_bar,
            variance=variance,
            generator=torch.Generator().manual_seed(4),
        )
        bound = -terms["total"].reshape(3, reps)
        se = bound.std(1) / math.sqrt(reps)
        assert (bound.mean(1) + 5 * se < log_p).all()


def test_the_kl_form_equals_the_trajectory_form():
    # E_q[log p(x_{0:T}) - log q(x_{1:T} | x_0)] by whole forward trajectories, with
    # densities from torch.distributions, and a deliberately wrong linear model
    alpha_bar = schedule(8)
    betas = betas_from_alpha_bar(alpha_bar)
    sigma2 = reverse_variance(alpha_bar, "posterior")

    def eps_fn(xt, t):
        return 0.6 * xt - 0.1 + 0.01 * t.reshape(-1, 1)

    x0 = torch.full((200_000, 1), 0.9, dtype=F64)
    g = torch.Generator().manual_seed(5)
    xs = [x0]
    for t in range(1, 9):
        xs.append(q_step(xs[-1], t, alpha_bar, generator=g))
    log_ratio = Normal(0.0, 1.0).log_prob(xs[8])
    for t in range(8, 0, -1):
        mean = p_mean(xs[t], eps_fn(xs[t], torch.full((len(x0),), t)), t, alpha_bar)
        log_ratio = log_ratio + Normal(mean, sigma2[t].sqrt()).log_prob(xs[t - 1])
        log_ratio = log_ratio - Normal(
            torch.sqrt(1 - betas[t]) * xs[t - 1], betas[t].sqrt()
        ).log_prob(xs[t])
    trajectory = log_ratio.mean()
    se = log_ratio.std() / math.sqrt(len(x0))
    kl_form = -neg_elbo_terms(eps_fn, x0[:20_000], alpha_bar, generator=g)["total"].mean()
    assert abs(trajectory - kl_form) < 5 * se + 5e-3


def test_weighted_simple_loss_estimates_the_kl_part():
    alpha_bar = schedule(20)
    eps_fn, _ = optimal_linear(alpha_bar)
    wrong = lambda xt, t: eps_fn(xt, t) + 0.3  # noqa: E731
    x0 = M + S * torch.randn(
        100_000, 1, dtype=F64, generator=torch.Generator().manual_seed(6)
    )
    weights = 20 * elbo_weight(alpha_bar)
    weights[1] = 0  # step 1 is the decoder, not a KL term
    estimate = simple_loss(
        wrong, x0, alpha_bar, weights=weights, generator=torch.Generator().manual_seed(7)
    )
    kl = neg_elbo_terms(
        wrong, x0[:20_000], alpha_bar, generator=torch.Generator().manual_seed(8)
    )["kl"]
    assert abs(estimate.mean() - kl.mean()) < 5 * (
        estimate.std() / math.sqrt(len(x0)) + kl.std() / math.sqrt(20_000)
    )


def test_ancestral_sampling_draws_from_the_model():
    alpha_bar = schedule(20)
    eps_fn, exact = optimal_linear(alpha_bar)
    x = ancestral_sample(
        eps_fn,
        (100_000, 1),
        alpha_bar,
        variance=exact.float(),
        generator=torch.Generator().manual_seed(9),
    )
    # x_0 is the decoder's mean: the data's variance minus the last step's
    assert x.mean().item() == pytest.approx(M, abs=0.01)
    assert x.var().item() == pytest.approx(S**2 - exact[1].item(), rel=0.02)
    x, kept = ancestral_sample(
        eps_fn,
        (1000, 1),
        alpha_bar,
        generator=torch.Generator().manual_seed(9),
        trajectory=(20, 5),
    )
    assert set(kept) == {20, 5} and kept[20].shape == (1000, 1)


# ----------------------------------------------------------------------------------------
# The model


def test_model_shapes_and_a_short_training_run():
    model = Diffusion((2,), scale=0.7, steps=50, hidden=32, depth=1)
    x = toy2d("ring", 2000, seed=0)
    before = model.loss(x, generator=torch.Generator().manual_seed(0))["loss"].item()
    history = train_diffusion(model, x, steps=300, batch_size=128, lr=3e-3)
    after = model.loss(x, generator=torch.Generator().manual_seed(0))["loss"].item()
    assert (
        after < 0.8 * before
        and history["loss"].shape == (300,)
        and history["cpu_seconds"] > 0
    )
    samples = model.sample(10, generator=torch.Generator().manual_seed(1))
    assert samples.shape == (10, 2)
    terms = model.neg_elbo(x[:20], steps=10)
    assert terms["total"].shape == (20,) and terms["per_step"].shape == (11, 20)
    digits_model = Diffusion((1, 8, 8), levels=17, steps=20, hidden=16, depth=1)
    images = digits_model.sample(3, generator=torch.Generator().manual_seed(0))
    assert images.shape == (3, 1, 8, 8) and set(images.unique().tolist()) <= set(
        range(17)
    )
    assert digits_model.neg_elbo(images)["total"].shape == (3,)


def test_seeded_and_the_global_generator_untouched():
    state = torch.get_rng_state()
    model = Diffusion((2,), steps=30, hidden=16, depth=1, seed=3)
    x = toy2d("grid", 500, seed=0)
    train_diffusion(model, x, steps=20, batch_size=50, seed=1)
    a = model.sample(5, generator=torch.Generator().manual_seed(2))
    b = model.sample(5, generator=torch.Generator().manual_seed(2))
    e1, e2 = (
        model.neg_elbo(x[:10], seed=4)["total"],
        model.neg_elbo(x[:10], seed=4)["total"],
    )
    assert torch.equal(a, b) and torch.equal(e1, e2)
    assert torch.equal(torch.get_rng_state(), state)
    again = Diffusion((2,), steps=30, hidden=16, depth=1, seed=3)
    train_diffusion(again, x, steps=20, batch_size=50, seed=1)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters()))


def test_bad_inputs():
    alpha_bar = schedule(10)
    with pytest.raises(ValueError, match="name must be one of"):
        beta_schedule("quadratic", 10)
    with pytest.raises(TypeError, match="x0 must be a floating-point"):
        q_mean_var(torch.tensor([1, 2]), 1, alpha_bar)
    with pytest.raises(TypeError, match="t must be an int or a long tensor of shape"):
        q_sample(torch.zeros(3, 2), torch.tensor([1.0, 2.0, 3.0]), alpha_bar)
    with pytest.raises(ValueError, match=r"alpha_bar must have shape \(T \+ 1,\)"):
        q_mean_var(torch.zeros(3), 1, alpha_bar[None])
    with pytest.raises(ValueError, match="t must lie in 1..T"):
        q_posterior(torch.zeros(2), torch.zeros(2), 0, alpha_bar)
    with pytest.raises(ValueError, match="xt must have x0's shape"):
        q_posterior(torch.zeros(2), torch.zeros(3), 1, alpha_bar)
    with pytest.raises(ValueError, match="variance must be one of"):
        reverse_variance(alpha_bar, "learned")
    with pytest.raises(ValueError, match=r"eps_fn\(x_t, t\) must return a tensor"):
        neg_elbo_terms(lambda x, t: x[:, :1], torch.zeros(4, 2, dtype=F64), alpha_bar)
    with pytest.raises(ValueError, match=r"x must have shape \(n, 2\)"):
        Diffusion((2,), steps=10, hidden=8, depth=1).loss(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="scale must be a positive number"):
        Diffusion((2,), scale=0)
    with pytest.raises(ValueError, match="name must be one of"):
        load("diffusion/moons")


# ----------------------------------------------------------------------------------------
# The book's checkpoints


@pytest.mark.parametrize("name", ["ring", "grid"])
def test_committed_toy_models_cover_the_modes(name):
    for seed in TOY_SEEDS:
        model, history = load(f"diffusion/{name}-seed{seed}")
        samples = model.sample(
            1000, steps=50, generator=torch.Generator().manual_seed(seed)
        )
        cover = mode_coverage(samples, name)
        assert (
            cover["modes"] >= (7 if name == "ring" else 22)
            and cover["high_quality"] > 0.3
        )
        assert history["cpu_seconds"] > 0


def test_committed_digits_model_has_a_finite_bound():
    model, history = load("diffusion/digits")
    from lib.data import digits

    x = digits("test")[0][:40]
    terms = model.neg_elbo(x, steps=100)
    assert torch.isfinite(terms["total"]).all() and (terms["total"] > 0).all()
    assert "val" in history and history["cpu_seconds"] > 0
    assert CONFIGS["digits"][0]["levels"] == 17


@pytest.mark.gpu
def test_runs_unchanged_on_cuda():
    cuda = torch.device("cuda")
    model = Diffusion((1, 8, 8), levels=17, steps=50, hidden=32, depth=1, seed=0)
    x = torch.randint(17, (64, 1, 8, 8)).float()
    t = torch.randint(1, 51, (64,))
    cpu_eps = model.eps(levels_to_unit(x, 17), t)
    model.to(cuda)
    gpu_eps = model.eps(levels_to_unit(x, 17).to(cuda), t.to(cuda))
    assert gpu_eps.device.type == "cuda" and torch.allclose(
        gpu_eps.cpu(), cpu_eps, atol=1e-5
    )
    history = train_diffusion(model, x.to(cuda), steps=20, batch_size=32)
    assert torch.isfinite(history["loss"]).all()
    terms = model.neg_elbo(x.to(cuda), steps=20)
    assert terms["total"].device.type == "cuda" and torch.isfinite(terms["total"]).all()
    samples = model.sample(
        16, steps=10, generator=torch.Generator(device=cuda).manual_seed(0)
    )
    assert samples.device.type == "cuda" and samples.shape == (16, 1, 8, 8)
    alpha_bar = schedule(20).to(cuda)
    mean, var = q_posterior(
        torch.zeros(3, device=cuda, dtype=F64),
        torch.ones(3, device=cuda, dtype=F64),
        5,
        alpha_bar,
    )
    assert mean.device.type == "cuda"
    ring, _ = load("diffusion/ring-seed0", device=cuda)
    assert mode_coverage(ring.sample(500, steps=50), "ring")["modes"] >= 7
