"""lib.reparam against independent oracles: scipy.stats (KS tests), torch.distributions
(moments, CDFs for implicit gradients, relaxed categoricals), closed-form gradients and
variances."""

import math

import pytest
import torch
import torch.distributions as D
from scipy import stats

from lib.reparam import (
    gumbel_max,
    gumbel_softmax,
    pathwise_grad,
    sample_beta,
    sample_erlang,
    sample_exponential,
    sample_gumbel,
    sample_inverse_cdf,
    sample_laplace,
    sample_lognormal,
    sample_normal,
    sample_student_t,
    sample_weibull,
    score_function_grad,
    uniform,
)

F64 = torch.float64
N = 20_000


def t(*values, grad=True):
    return [torch.tensor(v, dtype=F64, requires_grad=grad) for v in values]


# name -> (parameters, sampler(*params, shape, generator=), torch.distributions,
# scipy.stats)
SAMPLERS = {
    "exponential": (
        (2.0,),
        sample_exponential,
        lambda r: D.Exponential(r),
        lambda r: stats.expon(scale=1 / r),
    ),
    "weibull": (
        (1.5, 0.8),
        sample_weibull,
        lambda scale, k: D.Weibull(scale, k),
        lambda scale, k: stats.weibull_min(k, scale=scale),
    ),
    "gumbel": (
        (0.5, 2.0),
        sample_gumbel,
        lambda m, b: D.Gumbel(m, b),
        lambda m, b: stats.gumbel_r(m, b),
    ),
    "normal": (
        (1.0, 0.5),
        sample_normal,
        lambda m, s: D.Normal(m, s),
        lambda m, s: stats.norm(m, s),
    ),
    "laplace": (
        (-1.0, 2.0),
        sample_laplace,
        lambda m, s: D.Laplace(m, s),
        lambda m, s: stats.laplace(m, s),
    ),
    "student_t": (
        (0.5, 1.5),
        lambda m, s, shape, generator=None: sample_student_t(
            m, s, 10, shape, generator=generator
        ),
        lambda m, s: D.StudentT(10.0, m, s),
        lambda m, s: stats.t(10, m, s),
    ),
    "lognormal": (
        (0.2, 0.4),
        sample_lognormal,
        lambda m, s: D.LogNormal(m, s),
        lambda m, s: stats.lognorm(s, scale=math.exp(m)),
    ),
    "erlang": (
        (2.0,),
        lambda r, shape, generator=None: sample_erlang(3, r, shape, generator=generator),
        lambda r: D.Gamma(3.0, r),
        lambda r: stats.gamma(3, scale=1 / r),
    ),
    "beta": (
        (2.5, 1.5),
        sample_beta,
        lambda a, b: D.Beta(a, b),
        lambda a, b: stats.beta(a, b),
    ),
}


# ----------------------------------------------------------------------------------------
# Samplers: distribution, moments, gradients


@pytest.mark.parametrize("name", SAMPLERS)
def test_sampler_matches_scipy_by_ks_and_torch_by_moments(name):
    values, sampler, torch_dist, scipy_dist = SAMPLERS[name]
    params = t(*values, grad=False)
    z = sampler(*params, (N,), generator=torch.Generator().manual_seed(1))
    assert z.shape == (N,) and z.dtype == F64
    assert stats.kstest(z.numpy(), scipy_dist(*values).cdf).pvalue > 1e-3
    exact = torch_dist(*params)
    se_mean = (exact.variance / N).sqrt()
    assert abs(z.mean() - exact.mean) < 5 * se_mean
    fourth = ((z - z.mean()) ** 4).mean()
    se_var = ((fourth - z.var() ** 2) / N).sqrt()
    assert abs(z.var() - exact.variance) < 5 * se_var


@pytest.mark.parametrize("name", SAMPLERS)
def test_pathwise_gradient_of_second_moment_matches_closed_form(name):
    values, sampler, torch_dist, _ = SAMPLERS[name]
    params = t(*values)
    estimates = pathwise_grad(
        lambda z: z**2, lambda *p: sampler(*p, ()), params, 40_000, seed=3
    )
    exact = torch_dist(*params)
    closed = torch.autograd.grad(
        exact.variance + exact.mean**2, params, allow_unused=True, materialize_grads=True
    )
    for g, c in zip(estimates, closed):
        assert g.shape == (40_000,)
        assert abs(g.mean() - c) < 5 * g.std() / math.sqrt(len(g)) + 1e-12


@pytest.mark.parametrize(
    "name", ["exponential", "weibull", "gumbel", "normal", "laplace", "lognormal"]
)
def test_per_sample_gradient_is_the_implicit_gradient_of_the_cdf(name):
    """A sampler z = F^{-1}(u; theta) satisfies F(z; theta) = u, so dz/dtheta = -dF(z;
    theta)/dtheta / q(z) (Figurnov et al. 2018), computed here from torch.distributions'
    CDF at the drawn z."""
    values, sampler, torch_dist, _ = SAMPLERS[name]
    # one copy per sample
    leaves = [torch.full((500,), v, dtype=F64, requires_grad=True) for v in values]
    z = sampler(*leaves, (), generator=torch.Generator().manual_seed(2))
    dz = torch.autograd.grad(z.sum(), leaves, allow_unused=True, materialize_grads=True)
    fixed = z.detach()
    dist = torch_dist(*leaves)
    dF = torch.autograd.grad(
        dist.cdf(fixed).sum(), leaves, allow_unused=True, materialize_grads=True
    )
    density = dist.log_prob(fixed).exp().detach()
    for i in range(len(leaves)):
        assert torch.allclose(dz[i], -dF[i] / density, rtol=1e-6, atol=1e-9), (name, i)


def test_location_scale_gradients_are_one_and_eps():
    loc, scale = t([0.5, -1.0], [2.0, 0.3])
    for sampler in (
        sample_normal,
        sample_laplace,
        lambda m, s, shape: sample_student_t(m, s, 4, shape),
    ):
        z = sampler(loc, scale, (1000,))
        d_loc, d_scale = torch.autograd.grad(z.sum(), (loc, scale))
        assert torch.allclose(d_loc, torch.full((2,), 1000.0, dtype=F64))
        assert torch.allclose(
            d_scale, ((z.detach() - loc.detach()) / scale.detach()).sum(0)
        )


def test_erlang_and_beta_gradients_reach_their_parameters():
    rate = t(2.0)[0]
    z = sample_erlang(4, rate, (100,))
    (d_rate,) = torch.autograd.grad(z.sum(), rate)
    assert torch.allclose(d_rate, -(z.detach() / rate.detach()).sum())
    # non-integer shapes: implicit gradients
    a, b = t(0.7, 3.2)
    (ga, gb) = pathwise_grad(
        lambda z: z, lambda a, b: sample_beta(a, b), (a, b), 100_000, seed=4
    )
    exact_a, exact_b = (
        b.item() / (a.item() + b.item()) ** 2,
        -a.item() / (a.item() + b.item()) ** 2,
    )
    assert abs(ga.mean() - exact_a) < 5 * ga.std() / math.sqrt(len(ga))
    assert abs(gb.mean() - exact_b) < 5 * gb.std() / math.sqrt(len(gb))


def test_shapes_broadcasting_and_dtype():
    rate = torch.tensor([1.0, 2.0, 3.0])
    z = sample_exponential(rate, (7, 5))
    assert z.shape == (7, 5, 3) and z.dtype == torch.float32
    z = sample_normal(torch.zeros(2, 1), torch.ones(4), 6)
    assert z.shape == (6, 2, 4)
    assert sample_weibull(torch.tensor(1.0), torch.tensor(2.0)).shape == ()
    u = uniform((10_000,), like=torch.zeros((), dtype=F64))
    assert (u > 0).all() and (u < 1).all()
    z = sample_inverse_cdf(
        lambda u: torch.tan(math.pi * (u - 0.5)),
        (N,),
        like=torch.zeros((), dtype=F64),
        # standard Cauchy
        generator=torch.Generator().manual_seed(5),
    )
    assert stats.kstest(z.numpy(), stats.cauchy().cdf).pvalue > 1e-3


def test_samplers_are_deterministic_with_a_generator():
    for name, (values, sampler, _, _) in SAMPLERS.items():
        params = t(*values, grad=False)
        a = sampler(*params, (50,), generator=torch.Generator().manual_seed(9))
        b = sampler(*params, (50,), generator=torch.Generator().manual_seed(9))
        assert torch.equal(a, b), name


# ----------------------------------------------------------------------------------------
# The two estimators

mu, sigma = 1.0, 1.0
VAR = {  # (eq-reparam-variance), derived by hand from Gaussian moments
    "pathwise": (4 * sigma**2, 4 * mu**2 + 8 * sigma**2),
    "score": (
        mu**4 / sigma**2 + 14 * mu**2 + 15 * sigma**2,
        2 * mu**4 / sigma**2 + 60 * mu**2 + 74 * sigma**2,
    ),
    "baseline": (8 * mu**2 + 10 * sigma**2, 40 * mu**2 + 56 * sigma**2),
}


@pytest.fixture(scope="module")
def square_estimates():
    params = t(mu, sigma, grad=False)
    n = 400_000
    return {
        "pathwise": pathwise_grad(
            lambda z: z**2, lambda m, s: sample_normal(m, s), params, n, seed=11
        ),
        "score": score_function_grad(
            lambda z: z**2, lambda m, s: D.Normal(m, s), params, n, seed=12
        ),
        "baseline": score_function_grad(
            lambda z: z**2,
            lambda m, s: D.Normal(m, s),
            params,
            n,
            seed=13,
            baseline=mu**2 + sigma**2,
        ),
    }


@pytest.mark.parametrize("estimator", ["pathwise", "score", "baseline"])
def test_estimators_are_unbiased_for_the_closed_form_gradient(
    square_estimates, estimator
):
    for g, exact in zip(square_estimates[estimator], (2 * mu, 2 * sigma)):
        assert g.shape == (400_000,)
        assert abs(g.mean().item() - exact) < 5 * g.std().item() / math.sqrt(len(g))


@pytest.mark.parametrize("estimator", ["pathwise", "score", "baseline"])
def test_estimator_variances_match_the_closed_form(square_estimates, estimator):
    for g, exact in zip(square_estimates[estimator], VAR[estimator]):
        assert g.var().item() == pytest.approx(exact, rel=0.08)
    ratio = square_estimates["score"][0].var() / square_estimates["pathwise"][0].var()
    assert ratio.item() == pytest.approx(VAR["score"][0] / VAR["pathwise"][0], rel=0.06)


def test_estimators_agree_with_each_other_in_expectation_on_a_vector():
    m, s = t([0.5, -1.0, 2.0], [1.0, 0.5, 0.8], grad=False)
    f = lambda z: torch.sin(z).sum(-1) + (z**2).prod(-1)  # noqa: E731
    n = 100_000
    path = pathwise_grad(f, lambda m, s: D.Normal(m, s).rsample(), (m, s), n, seed=1)
    score = score_function_grad(
        f,
        lambda m, s: D.Independent(D.Normal(m, s), 1),
        (m, s),
        n,
        seed=2,
        baseline=f(m[None]).item(),
    )
    for gp, gs in zip(path, score):
        assert gp.shape == gs.shape == (n, 3)
        se = (gp.var(0) / n + gs.var(0) / n).sqrt()
        assert ((gp.mean(0) - gs.mean(0)).abs() < 5 * se).all()
    # sin part has a closed form: d/dmu E[sin z] = cos(mu) exp(-s^2/2); E[prod z^2] =
    # prod (mu^2 + s^2)
    second = m**2 + s**2
    exact_mu = torch.cos(m) * torch.exp(-(s**2) / 2) + 2 * m * second.prod() / second
    assert ((path[0].mean(0) - exact_mu).abs() < 5 * (path[0].var(0) / n).sqrt()).all()


def test_estimators_reproduce_the_one_sample_formulas():
    """Re-draw the same noise and compare every estimate with its formula
    (eq-reparam-example)."""
    m, s, n = 0.7, 1.3, 1000
    params = t(m, s, grad=False)
    path = pathwise_grad(
        lambda z: z**2, lambda a, b: sample_normal(a, b), params, n, seed=21
    )
    torch.manual_seed(21)
    eps = torch.randn(n, dtype=F64)
    z = m + s * eps
    assert torch.allclose(path[0], 2 * z) and torch.allclose(path[1], 2 * z * eps)
    score = score_function_grad(
        lambda z: z**2, lambda a, b: D.Normal(a, b), params, n, seed=22, baseline=0.5
    )
    torch.manual_seed(22)
    z = D.Normal(torch.full((n,), m, dtype=F64), torch.full((n,), s, dtype=F64)).sample()
    eps = (z - m) / s
    assert torch.allclose(score[0], (z**2 - 0.5) * eps / s)
    assert torch.allclose(score[1], (z**2 - 0.5) * (eps**2 - 1) / s)


def test_score_function_handles_discrete_and_nondifferentiable_f():
    theta = t([1.0, 0.0, -0.5], grad=False)[0]
    c = torch.tensor([1.0, -2.0, 3.0], dtype=F64)
    (g,) = score_function_grad(
        lambda k: c[k], lambda th: D.Categorical(logits=th), (theta,), 100_000, seed=3
    )
    exact = torch.autograd.functional.jacobian(lambda th: c @ torch.softmax(th, 0), theta)
    assert ((g.mean(0) - exact).abs() < 5 * (g.var(0) / len(g)).sqrt()).all()
    step = lambda z: (z > 0).to(z.dtype)  # noqa: E731
    params = t(0.3, 0.8, grad=False)
    path = pathwise_grad(step, lambda a, b: sample_normal(a, b), params, 1000, seed=0)
    # the pathwise estimator cannot see a step
    assert all((g == 0).all() for g in path)
    (g_mu, _) = score_function_grad(
        step, lambda a, b: D.Normal(a, b), params, 100_000, seed=4
    )
    exact = stats.norm.pdf(0.3 / 0.8) / 0.8
    assert abs(g_mu.mean().item() - exact) < 5 * g_mu.std().item() / math.sqrt(len(g_mu))


def test_estimators_are_deterministic_with_a_seed_and_leave_the_global_rng_alone():
    params = t(0.0, 1.0, grad=False)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = pathwise_grad(
        lambda z: z**3, lambda m, s: sample_normal(m, s), params, 100, seed=7
    )
    b = pathwise_grad(
        lambda z: z**3, lambda m, s: sample_normal(m, s), params, 100, seed=7
    )
    c = score_function_grad(
        lambda z: z**3, lambda m, s: D.Normal(m, s), params, 100, seed=7
    )
    d = score_function_grad(
        lambda z: z**3, lambda m, s: D.Normal(m, s), params, 100, seed=7
    )
    assert all(torch.equal(x, y) for x, y in zip(a + c, b + d))
    assert torch.equal(torch.random.get_rng_state(), before)
    # the caller's tensors are not touched
    assert params[0].grad is None


# ----------------------------------------------------------------------------------------
# Gumbel-max and Gumbel-softmax


def test_gumbel_max_frequencies_match_the_probabilities():
    logits = torch.tensor(
        [[1.0, 0.0, -0.5, 2.0, 0.3], [0.0, 0.0, 0.0, 0.0, -3.0]], dtype=F64
    )
    k = gumbel_max(logits, (100_000,), generator=torch.Generator().manual_seed(0))
    assert k.shape == (100_000, 2) and k.dtype == torch.int64
    for row in range(2):
        counts = torch.bincount(k[:, row], minlength=5).numpy()
        expected = torch.softmax(logits[row], 0).numpy() * 100_000
        assert stats.chisquare(counts, expected).pvalue > 1e-3


def test_gumbel_softmax_is_on_the_simplex_and_tends_to_gumbel_max():
    logits = t([0.5, -1.0, 2.0, 0.0])[0]
    y = gumbel_softmax(logits, 0.5, (1000,), generator=torch.Generator().manual_seed(3))
    assert y.shape == (1000, 4) and (y >= 0).all()
    assert torch.allclose(y.sum(-1), torch.ones(1000, dtype=F64))
    (grad,) = torch.autograd.grad((y * torch.arange(4.0, dtype=F64)).sum(), logits)
    # the relaxation passes gradients
    assert grad.abs().sum() > 0
    # the same Gumbel noise at any temperature has the same argmax as Gumbel-max
    k = gumbel_max(logits, (1000,), generator=torch.Generator().manual_seed(3))
    assert torch.equal(y.argmax(-1), k)
    cold = gumbel_softmax(
        logits, 0.001, (1000,), generator=torch.Generator().manual_seed(3)
    )
    assert torch.equal(cold.argmax(-1), k)
    off = (cold.detach() - torch.nn.functional.one_hot(k, 4).to(F64)).abs().amax(-1)
    # one-hot, but for the rare near-ties
    assert (off < 1e-3).float().mean() > 0.99
    hot = gumbel_softmax(logits, 1e4, (1000,), generator=torch.Generator().manual_seed(3))
    assert torch.allclose(hot.detach(), torch.full_like(hot, 0.25), atol=1e-3)


def test_gumbel_softmax_matches_torch_relaxed_categorical():
    logits = torch.tensor([0.5, -1.0, 2.0], dtype=F64)
    ours = gumbel_softmax(logits, 0.7, (N,), generator=torch.Generator().manual_seed(4))
    torch.manual_seed(5)
    theirs = D.RelaxedOneHotCategorical(
        torch.tensor(0.7, dtype=F64), logits=logits
    ).sample((N,))
    for j in range(3):
        assert stats.ks_2samp(ours[:, j].numpy(), theirs[:, j].numpy()).pvalue > 1e-3


def test_straight_through_gumbel_softmax():
    logits = t([0.5, -1.0, 2.0])[0]
    hard = gumbel_softmax(
        logits, 0.5, (200,), hard=True, generator=torch.Generator().manual_seed(6)
    )
    soft = gumbel_softmax(logits, 0.5, (200,), generator=torch.Generator().manual_seed(6))
    assert set(hard.detach().unique().tolist()) == {0.0, 1.0} and torch.equal(
        hard.detach().sum(-1), torch.ones(200, dtype=F64)
    )
    w = torch.randn(200, 3, dtype=F64)
    (g_hard,) = torch.autograd.grad((hard * w).sum(), logits)
    (g_soft,) = torch.autograd.grad((soft * w).sum(), logits)
    assert torch.allclose(g_hard, g_soft)


# ----------------------------------------------------------------------------------------
# Bad inputs


def test_bad_inputs():
    one = torch.tensor(1.0)
    with pytest.raises(TypeError, match="rate must be a floating-point torch.Tensor"):
        sample_exponential(2.0)
    with pytest.raises(
        TypeError,
        match="rate must be a floating-point torch.Tensor, got dtype torch.int64",
    ):
        sample_exponential(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="scale must be positive, got a minimum of -1"):
        sample_normal(one, torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="concentration must be positive"):
        sample_weibull(one, torch.tensor(0.0))
    with pytest.raises(ValueError, match="parameters must broadcast together"):
        sample_laplace(torch.zeros(3), torch.ones(2))
    with pytest.raises(ValueError, match="shape must be a tuple of non-negative ints"):
        sample_gumbel(one, one, (2.5,))
    with pytest.raises(ValueError, match="df must be a positive int"):
        sample_student_t(one, one, 2.5)
    with pytest.raises(ValueError, match="k must be a positive int"):
        sample_erlang(0, one)
    with pytest.raises(ValueError, match="tau must be a positive finite number"):
        gumbel_softmax(torch.zeros(3), 0.0)
    with pytest.raises(
        ValueError, match="logits must have shape \\(..., K\\) with K >= 2"
    ):
        gumbel_max(torch.zeros(1))
    with pytest.raises(TypeError, match="icdf must be a function"):
        sample_inverse_cdf(None, (3,), like=one)
    params = (torch.tensor(0.0), torch.tensor(1.0))
    with pytest.raises(ValueError, match="no gradient path"):
        pathwise_grad(lambda z: z, lambda m, s: D.Normal(m, s).sample(), params, 10)
    with pytest.raises(
        ValueError, match="f must map the n = 10 samples to a tensor of shape \\(10,\\)"
    ):
        pathwise_grad(lambda z: z.sum(), lambda m, s: sample_normal(m, s), params, 10)
    with pytest.raises(TypeError, match="params must be a non-empty tuple or list"):
        pathwise_grad(lambda z: z, lambda m: m, torch.tensor(0.0), 10)
    with pytest.raises(ValueError, match="n must be a positive int"):
        score_function_grad(lambda z: z, lambda m, s: D.Normal(m, s), params, 0)
    with pytest.raises(
        TypeError, match="dist must return a torch.distributions.Distribution"
    ):
        score_function_grad(lambda z: z, lambda m, s: m + s, params, 10)


# ----------------------------------------------------------------------------------------
# CUDA


@pytest.mark.gpu
def test_cuda_matches_cpu():
    cuda = torch.device("cuda")
    for name, (values, sampler, torch_dist, scipy_dist) in SAMPLERS.items():
        params = [torch.tensor(v, dtype=F64, device=cuda) for v in values]
        z = sampler(*params, (N,), generator=torch.Generator(device=cuda).manual_seed(1))
        assert z.device.type == "cuda" and z.dtype == F64, name
        assert stats.kstest(z.cpu().numpy(), scipy_dist(*values).cdf).pvalue > 1e-3, name
    # the same uniforms through the same inverse CDF give the same samples on both devices
    u = uniform((1000,), like=torch.zeros((), dtype=F64))
    # noqa: E731
    weibull = lambda scale, k: lambda u: scale * (-torch.log1p(-u)) ** (1 / k)
    on_cpu = weibull(torch.tensor(1.5, dtype=F64), torch.tensor(0.8, dtype=F64))(u)
    on_gpu = weibull(
        torch.tensor(1.5, dtype=F64, device=cuda),
        torch.tensor(0.8, dtype=F64, device=cuda),
    )(u.to(cuda))
    assert torch.allclose(on_gpu.cpu(), on_cpu, rtol=1e-12)
    # estimators: the same expectations and variance ratio as the closed forms
    params = [torch.tensor(v, dtype=F64, device=cuda) for v in (mu, sigma)]
    path = pathwise_grad(
        lambda z: z**2, lambda m, s: sample_normal(m, s), params, 400_000, seed=1
    )
    score = score_function_grad(
        lambda z: z**2, lambda m, s: D.Normal(m, s), params, 400_000, seed=2
    )
    assert path[0].device.type == "cuda"
    for g, exact in zip(path + score, (2 * mu, 2 * sigma) * 2):
        assert abs(g.mean().item() - exact) < 5 * g.std().item() / math.sqrt(len(g))
    assert (score[0].var() / path[0].var()).item() == pytest.approx(
        VAR["score"][0] / VAR["pathwise"][0], rel=0.06
    )
    pathwise_cpu = pathwise_grad(
        lambda z: z**2,
        lambda m, s: sample_normal(m, s),
        t(mu, sigma, grad=False),
        400_000,
        seed=1,
    )
    assert path[0].var().item() == pytest.approx(pathwise_cpu[0].var().item(), rel=0.03)
    logits = torch.tensor([1.0, 0.0, -0.5, 2.0], dtype=F64, device=cuda)
    k = gumbel_max(
        logits, (100_000,), generator=torch.Generator(device=cuda).manual_seed(0)
    )
    counts = torch.bincount(k, minlength=4).cpu().numpy()
    assert (
        stats.chisquare(counts, torch.softmax(logits, 0).cpu().numpy() * 100_000).pvalue
        > 1e-3
    )
    y = gumbel_softmax(
        logits.requires_grad_(),
        0.5,
        (1000,),
        generator=torch.Generator(device=cuda).manual_seed(0),
    )
    (grad,) = torch.autograd.grad(y[:, 0].sum(), logits)
    assert grad.device.type == "cuda" and torch.isfinite(grad).all()
