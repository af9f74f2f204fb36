"""lib.collapse against independent oracles: hand-built encoders with known answers,
torch.distributions densities summed by brute force, autograd, closed forms."""

import math

import pytest
import torch
from torch.distributions import Bernoulli, Independent, Normal, kl_divergence

from lib.collapse import (
    MaskedDecoder,
    active_units,
    collapse_loss,
    diagnostics,
    fit_aggressive,
    free_bits_kl,
    kl_anneal,
    kl_per_dim,
    make_vae,
    mutual_information,
    unit_activity,
)
from lib.vae import neg_elbo
from lib.zoo import load
from lib.zoo.collapse import VARIANTS, train_variant

F64 = torch.float64


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def brute_force_mi(mu, logvar, z):
    """1/n sum_i [E_q(z|x_i) log q(z | x_i) - log 1/n sum_j q(z_i | x_j)] with
    torch.distributions:
    the entropy from Normal.entropy, the mixture density by an explicit double loop."""
    n = len(mu)
    q = [Independent(Normal(mu[j], (0.5 * logvar[j]).exp()), 1) for j in range(n)]
    neg_entropy = -sum(q[i].entropy() for i in range(n)) / n
    log_aggregate = [
        torch.logsumexp(torch.stack([q[j].log_prob(z[i]) for j in range(n)]), 0)
        - math.log(n)
        for i in range(n)
    ]
    return neg_entropy - torch.stack(log_aggregate).mean()


# ----------------------------------------------------------------------------------------
# Diagnostics on encoders with known answers


def test_kl_per_dim_is_the_average_closed_form_kl():
    g = torch.Generator().manual_seed(0)
    mu, logvar = (
        torch.randn(30, 5, generator=g, dtype=F64),
        torch.randn(30, 5, generator=g, dtype=F64),
    )
    expected = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).mean(0)
    assert torch.allclose(kl_per_dim(mu, logvar), expected, rtol=1e-10)


def test_an_encoder_that_ignores_x_has_no_active_units_and_no_information():
    # q(z | x) = N(m, s^2) for every x: the posterior means do not vary, all z carry
    # nothing.
    n, L = 200, 6
    g = torch.Generator().manual_seed(1)
    mu = torch.randn(1, L, generator=g, dtype=F64).expand(n, L).clone()
    logvar = torch.randn(1, L, generator=g, dtype=F64).expand(n, L).clone()
    assert active_units(mu) == 0
    assert torch.equal(unit_activity(mu), torch.zeros(L, dtype=F64))
    mi = mutual_information(mu, logvar, generator=g)
    # all q(z | x_j) are equal, so log q(z_i) = log q(z_i | x_i) and I = E[log
    # q(z_i|x_i)] - log q(z_i): a Monte Carlo estimate of 0 with one sample per image.
    assert abs(mi.item()) < 4 * math.sqrt(L / 2 / n)
    # the wrong recipe: the variance of samples z counts every dimension (each has
    # variance exp(logvar))
    z = mu + (0.5 * logvar).exp() * torch.randn(n, L, generator=g, dtype=F64)
    assert (z.var(0) > 0.01).sum() == L


def test_a_deterministic_encoder_has_every_unit_active_and_mutual_information_log_n():
    # q(z | x) = N(W x, 1e-6): z determines x, so I_q(x; z) = H(x) = log n on n distinct
    # images. The estimate uses the closed-form entropy, so it is log n plus Monte Carlo
    # noise of standard deviation sqrt(L / 2n) (from the one sample z_i per image).
    n, L = 1000, 4
    g = torch.Generator().manual_seed(2)
    x = torch.randn(n, 10, generator=g, dtype=F64)
    mu = x @ torch.randn(10, L, generator=g, dtype=F64)
    logvar = torch.full_like(mu, math.log(1e-6))
    assert active_units(mu) == L
    assert abs(
        mutual_information(mu, logvar, generator=g).item() - math.log(n)
    ) < 4 * math.sqrt(L / 2 / n)


def test_active_units_counts_dimensions_above_the_threshold():
    g = torch.Generator().manual_seed(3)
    # variances 0, .0025, .04, 1, 9
    scales = torch.tensor([0.0, 0.05, 0.2, 1.0, 3.0], dtype=F64)
    mu = torch.randn(5000, 5, generator=g, dtype=F64) * scales
    assert active_units(mu) == 3
    assert active_units(mu, threshold=0.001) == 4
    assert torch.allclose(unit_activity(mu), torch.tensor(mu.numpy().var(0, ddof=1)))


def test_mutual_information_matches_a_brute_force_sum():
    g = torch.Generator().manual_seed(4)
    mu, logvar = (
        torch.randn(12, 3, generator=g, dtype=F64),
        torch.randn(12, 3, generator=g, dtype=F64),
    )
    z = torch.randn(12, 3, generator=g, dtype=F64)
    assert torch.allclose(
        mutual_information(mu, logvar, z), brute_force_mi(mu, logvar, z), rtol=1e-9
    )
    # with z drawn inside, the same generator seed gives the same number
    a = mutual_information(mu, logvar, generator=torch.Generator().manual_seed(9))
    b = mutual_information(mu, logvar, generator=torch.Generator().manual_seed(9))
    assert a == b


def test_mutual_information_is_close_to_the_exact_value_for_a_gaussian_channel():
    # x ~ N(0, 1) scalar, q(z | x) = N(a x, s^2): I = 1/2 log(1 + a^2 / s^2) in closed
    # form. The batch estimate (the aggregate posterior of n points) approaches it for n
    # large.
    g = torch.Generator().manual_seed(5)
    a, s, n = 1.0, 0.5, 4000
    x = torch.randn(n, 1, generator=g, dtype=F64)
    mu, logvar = a * x, torch.full((n, 1), 2 * math.log(s), dtype=F64)
    estimate = torch.stack(
        [mutual_information(mu, logvar, generator=g) for _ in range(5)]
    ).mean()
    assert abs(estimate.item() - 0.5 * math.log(1 + a**2 / s**2)) < 0.03


# ----------------------------------------------------------------------------------------
# Remedies


def test_kl_anneal_endpoints_and_linear_ramp():
    assert kl_anneal(0, 100) == 0.0
    assert kl_anneal(0, 100, start=0.1) == pytest.approx(0.1)
    assert kl_anneal(50, 100) == pytest.approx(0.5)
    assert kl_anneal(50, 100, start=0.1) == pytest.approx(0.55)
    assert kl_anneal(100, 100, start=0.1) == 1.0
    assert kl_anneal(10_000, 100) == 1.0
    ramp = [kl_anneal(s, 7) for s in range(8)]
    assert all(b - a == pytest.approx(1 / 7) for a, b in zip(ramp, ramp[1:]))


def test_free_bits_value_and_zero_gradient_below_the_floor():
    kl = torch.tensor(
        [[0.1, 2.0, 0.0, 0.9], [0.3, 1.0, 0.0, 1.3]], dtype=F64, requires_grad=True
    )
    # batch means 0.2, 1.5, 0.0, 1.1; floor 0.5 -> 0.5 + 1.5 + 0.5 + 1.1
    value = free_bits_kl(kl, 0.5)
    assert value.shape == () and value.item() == pytest.approx(3.6)
    (grad,) = torch.autograd.grad(value, kl)
    assert torch.equal(grad, torch.tensor([[0.0, 0.5, 0.0, 0.5]] * 2, dtype=F64))
    # a floor on the total KL, max(4 x 0.5, 2.8) = 2.8, would miss the floor of
    # dimensions 0 and 2
    assert kl.mean(0).sum().clamp(min=4 * 0.5).item() == pytest.approx(2.8)
    assert free_bits_kl(kl, 0.0).item() == pytest.approx(kl.mean(0).sum().item())


def test_collapse_loss_is_minus_the_elbo_and_its_lambda_and_free_bits_versions():
    torch.manual_seed(0)
    model = make_vae("autoregressive", latent_dim=3, hidden=16, decoder_hidden=32)
    x = (
        torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(1)) < 0.3
    ).float()
    torch.manual_seed(7)
    plain = collapse_loss(model, x)
    torch.manual_seed(7)
    assert torch.allclose(plain["loss"], neg_elbo(model, x).mean(), atol=1e-5)
    assert torch.allclose(plain["loss"], plain["rec"] + plain["kl"])
    torch.manual_seed(7)
    weighted = collapse_loss(model, x, weight=0.25)
    assert torch.allclose(weighted["loss"], plain["rec"] + 0.25 * plain["kl"])
    torch.manual_seed(7)
    floored = collapse_loss(model, x, floor=100.0)
    assert torch.allclose(floored["loss"], plain["rec"] + 300.0)


# ----------------------------------------------------------------------------------------
# The autoregressive decoder


def test_masked_decoder_is_autoregressive_by_input_gradients():
    torch.manual_seed(0)
    decoder = MaskedDecoder(4, hidden=40).eval()
    x = (torch.rand(1, 64) < 0.5).float().requires_grad_()
    z = torch.randn(1, 4)
    jacobian = torch.stack(
        [torch.autograd.grad(decoder.logits(x, z)[0, i], x)[0][0] for i in range(64)]
    )
    # logit i may depend on pixels j < i only: the upper triangle and the diagonal are
    # exactly 0
    assert torch.equal(jacobian.triu(), torch.zeros(64, 64))
    # and every earlier pixel matters
    assert (jacobian.tril(-1) != 0).sum() == 64 * 63 // 2
    # z reaches every logit
    z = z.requires_grad_()
    (grad_z,) = torch.autograd.grad(decoder.logits(x.detach(), z).sum(), z)
    assert (grad_z.abs() > 0).all()


def test_masked_decoder_log_prob_matches_bernoulli_with_sample_dimensions():
    torch.manual_seed(1)
    decoder = MaskedDecoder(3, hidden=32).eval()
    x = (torch.rand(5, 1, 8, 8) < 0.4).float()
    z = torch.randn(7, 5, 3)
    got = decoder.log_prob(x, z)
    assert got.shape == (7, 5)
    expected = Independent(Bernoulli(logits=decoder.logits(x, z)), 1).log_prob(
        x.reshape(5, 64).expand(7, 5, 64)
    )
    assert torch.allclose(got, expected, atol=1e-5)
    samples = decoder.sample(z[0], generator=torch.Generator().manual_seed(0))
    assert samples.shape == (5, 1, 8, 8) and set(samples.unique().tolist()) <= {0.0, 1.0}


def test_masked_decoder_sample_follows_the_chain_rule():
    # With 64 pixels, check one conditional by Monte Carlo: P(x_1 = 1 | z) =
    # sigmoid(logit_1).
    torch.manual_seed(2)
    decoder = MaskedDecoder(2, hidden=16).eval()
    z = torch.randn(1, 2).expand(4000, 2)
    x = decoder.sample(z, generator=torch.Generator().manual_seed(3))
    p1 = torch.sigmoid(decoder.logits(torch.zeros(1, 64), z[:1])[0, 0]).item()
    assert abs(x[:, 0, 0, 0].mean().item() - p1) < 4 * math.sqrt(p1 * (1 - p1) / 4000)


def test_an_autoregressive_decoder_has_no_mean_image_only_samples():
    model = make_vae("autoregressive", latent_dim=2, hidden=8, decoder_hidden=16).eval()
    z = torch.zeros(3, 2)
    with pytest.raises(NotImplementedError, match="no closed-form mean image"):
        model.decode(z)
    with pytest.raises(NotImplementedError, match="no closed-form mean image"):
        model.sample(3, mean=True)
    drawn = [model.decode(z, mean=False, generator=torch.Generator().manual_seed(4))]
    drawn.append(model.decode(z, mean=False, generator=torch.Generator().manual_seed(4)))
    assert torch.equal(*drawn) and drawn[0].shape == (3, 1, 8, 8)


# ----------------------------------------------------------------------------------------
# Training


def test_fit_aggressive_counts_steps_and_freezes_the_decoder_while_encoder_catches_up():
    torch.manual_seed(0)
    model = make_vae("autoregressive", latent_dim=2, hidden=16, decoder_hidden=16)
    x = (
        torch.rand(60, 1, 8, 8, generator=torch.Generator().manual_seed(1)) < 0.3
    ).float()
    before = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    enc_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    history = fit_aggressive(
        model, x, x[:20], steps=8, batch_size=10, inner_max=100, check_every=10
    )
    assert len(history["loss"]) == 8 and int(history["switch"]) == 8
    assert all(torch.equal(before[k], v) for k, v in model.decoder.state_dict().items())
    assert any(
        not torch.equal(enc_before[k], v) for k, v in model.encoder.state_dict().items()
    )
    history = fit_aggressive(
        model, x, x[:20], steps=60, batch_size=10, inner_max=3, check_every=3, mi_every=2
    )
    assert len(history["loss"]) == 60 and 0 < int(history["switch"]) <= 60
    assert any(
        not torch.equal(before[k], v) for k, v in model.decoder.state_dict().items()
    )
    assert all(p.requires_grad for p in model.parameters())


def test_train_variant_is_deterministic():
    a, history_a = train_variant("free-bits", steps=100)
    b, history_b = train_variant("free-bits", steps=100)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert torch.equal(history_a["val"], history_b["val"])


def test_the_book_models_show_collapse_and_its_cure():
    x = __import__("lib.data", fromlist=["digits"]).digits("val", binarize=True)[0]
    mu, logvar = load("collapse/plain")[0].encode(x)
    assert active_units(mu.detach()) <= 1 and kl_per_dim(mu, logvar).sum() < 0.5
    mu, logvar = load("collapse/free-bits")[0].encode(x)
    assert active_units(mu.detach()) >= 3
    assert set(VARIANTS) >= {
        "factorised",
        "plain",
        "lambda",
        "anneal",
        "free-bits",
        "aggressive",
    }


def test_diagnostics_of_a_collapsed_model():
    torch.manual_seed(0)
    model = make_vae("autoregressive", latent_dim=3, hidden=16, decoder_hidden=16)
    with torch.no_grad():  # make the encoder output the prior for every x
        last = model.encoder.net[-1]
        last.weight.zero_()
        last.bias.zero_()
    x = (
        torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(1)) < 0.3
    ).float()
    d = diagnostics(model, x, K=20)
    assert d["au"] == 0 and d["kl"].abs() < 1e-6 and d["mi"].abs() < 1.0
    # q = p(z) and a decoder that ignores nothing: -ELBO >= -log p(x) >= ... within
    # Monte Carlo noise
    assert d["nll"] <= d["neg_elbo"] + 0.5


# ----------------------------------------------------------------------------------------
# Bad input


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match=r"mu must have shape \(n, L\)"):
        active_units(torch.zeros(5))
    with pytest.raises(ValueError, match="at least 2 images"):
        unit_activity(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="threshold"):
        active_units(torch.zeros(4, 2), threshold=-1.0)
    with pytest.raises(TypeError, match="logvar must be a floating-point"):
        mutual_information(torch.zeros(4, 2), torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="z must have mu's shape"):
        mutual_information(torch.zeros(4, 2), torch.zeros(4, 2), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="floor"):
        free_bits_kl(torch.zeros(4, 2), -0.1)
    with pytest.raises(ValueError, match=r"kl must have shape \(n, L\)"):
        free_bits_kl(torch.zeros(4), 0.1)
    with pytest.raises(ValueError, match="warmup"):
        kl_anneal(3, 0)
    with pytest.raises(ValueError, match="step"):
        kl_anneal(-1, 10)
    with pytest.raises(ValueError, match="decoder"):
        make_vae("pixelcnn")
    with pytest.raises(ValueError, match="name"):
        train_variant("nope")


# ----------------------------------------------------------------------------------------
# GPU


@pytest.mark.gpu
def test_diagnostics_and_decoder_on_cuda_match_cpu():
    cuda = torch.device("cuda")
    g = torch.Generator().manual_seed(0)
    mu, logvar, z = (
        torch.randn(50, 4, generator=g),
        torch.randn(50, 4, generator=g),
        torch.randn(50, 4, generator=g),
    )
    assert torch.allclose(
        mutual_information(mu.to(cuda), logvar.to(cuda), z.to(cuda)).cpu(),
        mutual_information(mu, logvar, z),
        atol=1e-4,
    )
    assert active_units(mu.to(cuda)) == active_units(mu)
    assert torch.allclose(
        kl_per_dim(mu.to(cuda), logvar.to(cuda)).cpu(), kl_per_dim(mu, logvar), atol=1e-5
    )
    model, _ = load("collapse/plain")
    x = __import__("lib.data", fromlist=["digits"]).digits("test", binarize=True)[0][:100]
    zz = torch.randn(3, 100, model.latent_dim, generator=g)
    cpu = model.log_px_given_z(x, zz)
    gpu_model = load("collapse/plain", device=cuda)[0]
    assert torch.allclose(
        gpu_model.log_px_given_z(x.to(cuda), zz.to(cuda)).cpu(), cpu, atol=1e-3
    )


@pytest.mark.gpu
def test_remedies_train_on_cuda():
    cuda = torch.device("cuda")
    torch.manual_seed(0)
    model = make_vae("autoregressive", latent_dim=4, hidden=32, decoder_hidden=64).to(
        cuda
    )
    x = (torch.rand(200, 1, 8, 8, device=cuda) < 0.3).float()
    history = fit_aggressive(model, x, x[:50], steps=50, batch_size=20)
    assert len(history["loss"]) == 50 and torch.isfinite(history["loss"]).all()
    terms = collapse_loss(model, x[:20], floor=0.5)
    assert terms["loss"].device.type == "cuda"
    d = diagnostics(model, x[:50], K=10)
    assert math.isfinite(d["nll"].item()) and d["kl_per_dim"].device.type == "cuda"
