"""lib.vae against independent oracles: torch.distributions, the closed-form
linear-Gaussian model of chapter 03 (lib.elbo's PPCA formulas), brute-force sums."""

import math

import pytest
import torch
from torch import nn
from torch.distributions import Bernoulli, Categorical, Independent, Normal, kl_divergence

from lib.data import digits
from lib.elbo import ppca_elbo, ppca_log_marginal
from lib.train import fit, fit_early_stopping
from lib.vae import (
    log_normal_diag,
    CVAE,
    VAE,
    Autoencoder,
    GaussianDecoder,
    elbo_terms,
    gaussian_kl_to_standard,
    log_likelihood_is,
    neg_elbo,
    reparameterize,
    validation_neg_elbo,
)
from lib.zoo import load
from lib.zoo.vae import reference_data

F64 = torch.float64


# ----------------------------------------------------------------------------------------
# The two formulas


def test_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu = 2 * torch.randn(5, 7, generator=g, dtype=F64)
    logvar = 3 * torch.randn(5, 7, generator=g, dtype=F64)
    expected = kl_divergence(
        Normal(mu, (0.5 * logvar).exp()),
        Normal(torch.zeros_like(mu), torch.ones_like(mu)),
    )
    got = gaussian_kl_to_standard(mu, logvar)
    assert got.shape == (5, 7)
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-12)
    assert gaussian_kl_to_standard(torch.zeros(3), torch.zeros(3)).abs().max() == 0


def test_reparameterize_moments_and_exact_gradients():
    g = torch.Generator().manual_seed(1)
    mu = torch.tensor([-1.0, 0.5, 3.0], dtype=F64, requires_grad=True)
    logvar = torch.tensor([-2.0, 0.0, 1.5], dtype=F64, requires_grad=True)
    z = reparameterize(mu, logvar, 200_000, generator=g)
    assert z.shape == (200_000, 3)
    var = logvar.detach().exp()
    assert torch.allclose(
        z.mean(0), mu.detach(), atol=4 * (var / 200_000).sqrt().max().item()
    )
    assert torch.allclose(z.var(0), var, rtol=0.02)
    # z is a differentiable function of (mu, logvar): dz/dmu = 1, dz/dlogvar = (z - mu)
    # / 2
    grad_mu, grad_logvar = torch.autograd.grad(z.sum(), (mu, logvar))
    assert torch.allclose(grad_mu, torch.full_like(grad_mu, 200_000.0))
    assert torch.allclose(grad_logvar, 0.5 * (z - mu).sum(0).detach())


def test_reparameterize_is_repeatable_with_a_generator():
    mu, logvar = torch.zeros(4, 2), torch.zeros(4, 2)
    a = reparameterize(mu, logvar, generator=torch.Generator().manual_seed(5))
    b = reparameterize(mu, logvar, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.shape == (4, 2)


# ----------------------------------------------------------------------------------------
# Decoders: log p(x | z) against torch.distributions, with sample dimensions


def test_decoders_log_prob_against_brute_force():
    x_bin = digits("test", binarize=True)[0][:6]
    x_lev = digits("test")[0][:6]
    # 3 samples for each of 6 images
    z = torch.randn(3, 6, 4, generator=torch.Generator().manual_seed(2))
    bern = VAE("bernoulli", latent_dim=4, hidden=32, seed=1)
    logits = bern.decoder.net(z.reshape(-1, 4)).reshape(3, 6, 64)
    expected = Bernoulli(logits=logits).log_prob(x_bin.flatten(1)).sum(-1)
    assert torch.allclose(bern.log_px_given_z(x_bin, z), expected, atol=1e-4)
    cat = VAE("categorical", latent_dim=4, hidden=32, seed=1)
    logits = cat.decoder.net(z.reshape(-1, 4)).reshape(3, 6, 64, 17)
    log_probs = logits.log_softmax(-1).gather(
        -1, x_lev.flatten(1).long().expand(3, 6, 64)[..., None]
    )[..., 0]
    assert torch.allclose(cat.log_px_given_z(x_lev, z), log_probs.sum(-1), atol=1e-4)
    by_distributions = Categorical(logits=logits).log_prob(x_lev.flatten(1)).sum(-1)
    assert torch.allclose(cat.log_px_given_z(x_lev, z), by_distributions, atol=1e-4)
    gauss = VAE("gaussian", latent_dim=4, hidden=32, std=0.3, seed=1)
    means = gauss.decoder.net(z.reshape(-1, 4)).reshape(3, 6, 64)
    y = x_lev.flatten(1) / 16
    expected = -((y - means) ** 2).sum(-1) / (2 * 0.3**2) - 64 * math.log(
        0.3 * math.sqrt(2 * math.pi)
    )
    assert torch.allclose(gauss.log_px_given_z(x_lev / 16, z), expected, atol=1e-3)


@pytest.mark.parametrize("likelihood", ["bernoulli", "categorical", "gaussian"])
@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_vae_loss_samples_and_gradients(likelihood, arch):
    x = digits("train", binarize=likelihood == "bernoulli")[0][:20]
    if likelihood == "gaussian":
        x = x / 16
    model = VAE(likelihood, arch=arch, latent_dim=3, hidden=32, channels=4, seed=0)
    terms = model.loss(x)
    assert set(terms) == {"loss", "rec", "kl"} and all(
        v.dim() == 0 for v in terms.values()
    )
    assert torch.isclose(terms["loss"], terms["rec"] + terms["kl"])
    terms["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    samples = model.sample(7, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (7, 1, 8, 8)
    if likelihood == "bernoulli":
        assert set(samples.unique().tolist()) <= {0.0, 1.0}
    if likelihood == "categorical":
        assert (
            samples.min() >= 0
            and samples.max() <= 16
            and torch.equal(samples, samples.round())
        )
        means = model.sample(7, mean=True)
        assert means.min() >= 0 and means.max() <= 16
    assert model.reconstruct(x).shape == x.shape


def test_kl_term_equals_torch_distributions_and_rec_is_one_sample():
    x = digits("train", binarize=True)[0][:10]
    model = VAE("bernoulli", latent_dim=5, hidden=32, seed=3)
    rec, kl = elbo_terms(model, x, samples=1, generator=torch.Generator().manual_seed(0))
    mu, logvar = model.encode(x)
    q = Independent(Normal(mu, (0.5 * logvar).exp()), 1)
    p = Independent(Normal(torch.zeros_like(mu), torch.ones_like(mu)), 1)
    assert kl.shape == (10, 5) and torch.allclose(
        kl.sum(-1), kl_divergence(q, p), atol=1e-5
    )
    z = mu + (0.5 * logvar).exp() * torch.randn(
        1, 10, 5, generator=torch.Generator().manual_seed(0)
    )
    logits = model.decoder.net(z[0])
    assert torch.allclose(
        rec, -Bernoulli(logits=logits).log_prob(x.flatten(1)).sum(-1), atol=1e-4
    )


# ----------------------------------------------------------------------------------------
# neg_elbo and log_likelihood_is against the closed forms of a linear-Gaussian VAE


class LinearEncoder(nn.Module):
    """q(z | x) = N(A x + c, diag exp(logvar)): the interface a custom encoder must
    follow."""

    def __init__(self, A, c, logvar):
        super().__init__()
        self.A, self.c, self.logvar = (
            nn.Parameter(A),
            nn.Parameter(c),
            nn.Parameter(logvar),
        )

    def forward(self, x, context=None):
        return x @ self.A.T + self.c, self.logvar.expand(len(x), -1)


def linear_gaussian_vae(d=5, q_dim=2, seed=0, sigma=0.7):
    """PPCA decoder N(W z + b, sigma^2 I) and a linear encoder near the exact
    posterior."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(d, q_dim, generator=g, dtype=F64)
    b = torch.randn(d, generator=g, dtype=F64)
    M = W.T @ W + sigma**2 * torch.eye(q_dim, dtype=F64)
    # posterior mean map
    A = torch.linalg.solve(M, W.T)
    post_var = (sigma**2 * torch.linalg.inv(M)).diagonal()
    # a slightly too wide q
    encoder = LinearEncoder(A, -A @ b, (1.3 * post_var).log())
    net = nn.Linear(q_dim, d).double()
    with torch.no_grad():
        net.weight.copy_(W)
        net.bias.copy_(b)
    decoder = GaussianDecoder(net, std=sigma, event_shape=(d,))
    model = VAE(encoder=encoder, decoder=decoder, latent_dim=q_dim)
    x = (
        torch.randn(40, q_dim, generator=g, dtype=F64) @ W.T
        + b
        + sigma * torch.randn(40, d, generator=g, dtype=F64)
    )
    return model, x, (W, b, sigma**2)


def test_neg_elbo_matches_the_closed_form_elbo_of_a_linear_gaussian_vae():
    model, x, (W, b, sigma2) = linear_gaussian_vae()
    with torch.no_grad():
        estimate = neg_elbo(
            model, x, samples=4000, generator=torch.Generator().manual_seed(0)
        )
        mu, logvar = model.encode(x)
    exact = -ppca_elbo(x, W, b, sigma2, mu, torch.diag(logvar[0].exp()))
    assert estimate.shape == (40,)
    assert torch.allclose(estimate, exact, atol=0.05)


def test_log_likelihood_is_matches_the_exact_log_marginal():
    model, x, (W, b, sigma2) = linear_gaussian_vae()
    exact = ppca_log_marginal(x, W, b, sigma2)
    estimate = log_likelihood_is(model, x, K=500, chunk=64, batch_size=16)
    assert estimate.shape == (40,)
    error = (estimate - exact).abs()
    assert error.max() < 0.1 and error.mean() < 0.02
    with torch.no_grad():
        mu, logvar = model.encode(x)
    elbo = ppca_elbo(x, W, b, sigma2, mu, torch.diag(logvar[0].exp()))
    # the bound has a gap, which IS closes
    assert (elbo < exact).all()
    assert error.mean() < 0.3 * (exact - elbo).mean()


def test_log_likelihood_is_tightens_with_K_and_is_repeatable():
    model, x, (W, b, sigma2) = linear_gaussian_vae(seed=3)
    with torch.no_grad():  # a poor encoder makes the IS gap visible
        model.encoder.logvar.fill_(-3.0)
    exact = ppca_log_marginal(x, W, b, sigma2).mean()
    lower = [
        log_likelihood_is(model, x, K=K, seed=s).mean()
        for K, s in ((1, 0), (10, 1), (1000, 2))
    ]
    assert lower[0] < lower[1] < lower[2] < exact + 0.01
    assert torch.equal(
        log_likelihood_is(model, x, K=20, seed=4),
        log_likelihood_is(model, x, K=20, seed=4),
    )


# ----------------------------------------------------------------------------------------
# CVAE, autoencoder, training


def test_cvae_conditions_on_labels():
    x, y = digits("train", binarize=True)[0][:30], digits("train")[1][:30]
    model = CVAE("bernoulli", latent_dim=3, hidden=32, seed=0)
    terms = model.loss(x, y)
    assert set(terms) == {"loss", "rec", "kl"}
    assert model.sample(4).shape == (40, 1, 8, 8)
    z = torch.zeros(2, 3)
    a, b = model.decode(z, torch.tensor([1, 7])), model.decode(z, torch.tensor([7, 7]))
    # the label changes the image
    assert not torch.allclose(a[0], b[0]) and torch.allclose(a[1], b[1])
    assert log_likelihood_is(model, x[:5], y[:5], K=10).shape == (5,)
    with pytest.raises(ValueError, match="labels must lie in 0..9"):
        model.loss(x[:2], torch.tensor([0, 10]))


def test_autoencoder_has_no_noise_and_no_kl():
    x = digits("train", binarize=True)[0][:10]
    ae = Autoencoder("bernoulli", latent_dim=2, hidden=32, seed=0)
    first, second = ae.loss(x), ae.loss(x)
    assert torch.equal(first["loss"], second["loss"])  # deterministic
    mu, _ = ae.encode(x)
    assert torch.allclose(first["loss"], -ae.log_px_given_z(x, mu).mean())


def test_training_is_deterministic_and_beats_independent_pixels():
    x_train, x_test = digits("train", binarize=True)[0], digits("test", binarize=True)[0]
    runs = []
    for _ in range(2):
        torch.manual_seed(0)  # the reparameterisation noise
        model = VAE("bernoulli", latent_dim=8, hidden=64, seed=0)
        runs.append(fit(model, x_train, steps=20, seed=0)["loss"])
    assert torch.equal(runs[0], runs[1])
    # the best model with independent pixels: Bernoulli marginals fitted on the training
    # set
    p = x_train.flatten(1).mean(0).clamp(1e-3, 1 - 1e-3)
    independent = -Bernoulli(probs=p).log_prob(x_test.flatten(1)).sum(-1).mean()
    fit(model, x_train, steps=250, lr=3e-3, seed=1)
    test = neg_elbo(model, x_test, generator=torch.Generator().manual_seed(0)).mean()
    assert test < independent - 3, (test, independent)


def test_early_stopping_keeps_the_best_weights():
    x_train, x_val = digits("train", binarize=True)[0], digits("val", binarize=True)[0]
    torch.manual_seed(0)
    model = VAE("bernoulli", latent_dim=4, hidden=32, seed=0)
    history = fit_early_stopping(
        model, (x_train,), (x_val,), validation_neg_elbo, steps=300, every=100, lr=3e-3
    )
    assert history["step"].tolist() == [100, 200, 300]
    with torch.no_grad():
        assert validation_neg_elbo(model, x_val).item() == pytest.approx(
            history["val"].min().item(), abs=1e-4
        )


# ----------------------------------------------------------------------------------------
# The committed models of the book


def test_committed_models_reach_the_books_numbers():
    # the categorical VAE beats intro_dgm's test -ELBO of 96.8 nats (Tomczak 2022), and a
    # 20-sample importance-weighted bound sits above the ELBO
    g = torch.Generator().manual_seed(0)
    for name, kind, below in (
        ("categorical", "levels", 92.0),
        ("bernoulli", "binary", 19.5),
    ):
        model, _ = load(f"vae/{name}")
        x = reference_data(kind, "test")[0]
        with torch.no_grad():
            elbo = neg_elbo(model, x, samples=2, generator=g).mean()
        nll = -log_likelihood_is(model, x, K=20).mean()
        assert elbo < below, (name, elbo)
        assert nll < elbo


# ----------------------------------------------------------------------------------------
# Bad inputs


def test_bad_inputs_get_clear_errors():
    with pytest.raises(ValueError, match="logvar must have mu.s shape"):
        gaussian_kl_to_standard(torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(TypeError, match="floating-point"):
        reparameterize(torch.zeros(3, dtype=torch.long), torch.zeros(3))
    with pytest.raises(ValueError, match="samples must be a positive int"):
        reparameterize(torch.zeros(3), torch.zeros(3), 0)
    with pytest.raises(ValueError, match="likelihood must be one of"):
        VAE("poisson")
    with pytest.raises(ValueError, match="arch must be one of"):
        VAE("bernoulli", arch="transformer")
    with pytest.raises(ValueError, match="K must be a positive int"):
        log_likelihood_is(VAE(hidden=8), torch.zeros(2, 1, 8, 8), K=0)
    with pytest.raises(TypeError, match="1-D long tensor"):
        CVAE(hidden=8).loss(torch.zeros(2, 1, 8, 8), torch.zeros(2))
    with pytest.raises(
        ValueError, match=r"x must have shape \(n, 1, 8, 8\), got \(2, 64\)"
    ):
        VAE(hidden=8).loss(torch.zeros(2, 64))
    with pytest.raises(ValueError, match="name must be one of"):
        load("vae/mnist")
    with pytest.raises(ValueError, match="CVAE supports arch='mlp' only"):
        CVAE(arch="conv")


# ----------------------------------------------------------------------------------------
# CUDA: the same numbers


@pytest.fixture
def full_precision():
    """cuDNN convolutions default to TF32 on recent GPUs; compare with the CPU in
    float32."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.gpu
@pytest.mark.parametrize("likelihood", ["bernoulli", "categorical"])
@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_cuda_matches_cpu(likelihood, arch, full_precision):
    cuda = torch.device("cuda")
    x = digits("test", binarize=likelihood == "bernoulli")[0][:64]
    model = VAE(likelihood, arch=arch, latent_dim=6, hidden=64, channels=8, seed=0)
    fit(model, digits("train", binarize=likelihood == "bernoulli")[0], steps=100)
    gpu = VAE(likelihood, arch=arch, latent_dim=6, hidden=64, channels=8).to(cuda)
    gpu.load_state_dict(model.state_dict())
    z = torch.randn(3, 64, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(
            gpu.log_px_given_z(x.to(cuda), z.to(cuda)).cpu(),
            model.log_px_given_z(x, z),
            atol=1e-3,
        )
        mu, logvar = model.encode(x)
        mu_gpu, logvar_gpu = gpu.encode(x.to(cuda))
        assert torch.allclose(mu_gpu.cpu(), mu, atol=1e-4) and torch.allclose(
            logvar_gpu.cpu(), logvar, atol=1e-4
        )
    # the estimators use device-side random numbers: equal up to Monte Carlo error
    cpu_ll = log_likelihood_is(model, x, K=500).mean()
    gpu_ll = log_likelihood_is(gpu, x.to(cuda), K=500)
    assert gpu_ll.device.type == "cuda"
    assert abs(gpu_ll.mean().item() - cpu_ll.item()) < 0.2
    cpu_elbo = neg_elbo(model, x, samples=200).mean().item()
    gpu_elbo = neg_elbo(gpu, x.to(cuda), samples=200).mean().item()
    assert abs(gpu_elbo - cpu_elbo) < 0.2
    # and it trains there
    history = fit(gpu, x.to(cuda), steps=20, batch_size=32)
    assert torch.isfinite(history["loss"]).all()


@pytest.mark.gpu
def test_cuda_cvae_and_linear_gaussian_oracle(full_precision):
    cuda = torch.device("cuda")
    model, x, (W, b, sigma2) = linear_gaussian_vae()
    model = model.to(cuda)
    error = (
        log_likelihood_is(model, x.to(cuda), K=500).cpu()
        - ppca_log_marginal(x, W, b, sigma2)
    ).abs()
    assert error.max() < 0.1 and error.mean() < 0.02
    xb, y = digits("train", binarize=True, device=cuda)
    cvae = CVAE(latent_dim=4, hidden=32).to(cuda)
    history = fit(cvae, xb, y, steps=20)
    assert torch.isfinite(history["loss"]).all() and cvae.sample(2).device.type == "cuda"


@pytest.mark.gpu
@pytest.mark.parametrize(
    "name, kind", [("bernoulli", "binary"), ("categorical", "levels")]
)
def test_cuda_reaches_the_books_numbers(name, kind, full_precision):
    """The page's headline numbers (test -ELBO, IS log-likelihood with K = 500) on CUDA
    and CPU."""
    cuda = torch.device("cuda")
    x = reference_data(kind, "test")[0]
    cpu_model, _ = load(f"vae/{name}")
    gpu_model, _ = load(f"vae/{name}", device=cuda)
    numbers = []
    for model, xs in ((cpu_model, x), (gpu_model, x.to(cuda))):
        with torch.no_grad():
            elbo = neg_elbo(
                model,
                xs,
                samples=10,
                generator=torch.Generator(device=xs.device).manual_seed(0),
            ).mean()
        numbers.append((elbo.item(), log_likelihood_is(model, xs, K=500).mean().item()))
    (cpu_elbo, cpu_ll), (gpu_elbo, gpu_ll) = numbers
    assert abs(cpu_elbo - gpu_elbo) < 0.1 and abs(cpu_ll - gpu_ll) < 0.1, numbers


def test_log_normal_diag_is_the_diagonal_gaussian_log_density():
    """Against torch.distributions, broadcast as in lib.collapse.mutual_information."""
    g = torch.Generator().manual_seed(0)
    z, mu, logvar = (
        torch.randn(5, 1, 3, generator=g, dtype=torch.float64) for _ in "abc"
    )
    mu, logvar = mu.transpose(0, 1), logvar.transpose(0, 1)  # (1, 5, 3): all pairs
    exact = Independent(Normal(mu, (0.5 * logvar).exp()), 1).log_prob(z)
    assert exact.shape == (5, 5)
    assert torch.allclose(log_normal_diag(z, mu, logvar), exact, rtol=1e-12, atol=0)
