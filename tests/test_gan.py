"""lib.gan against independent oracles: torch's binary cross-entropy, closed-form Gaussian
densities, numerical integration (scipy.integrate.quad), hand-built sample sets."""

import math

import pytest
import torch
import torch.nn.functional as F
from scipy import integrate, stats
from torch.distributions import Categorical, MixtureSameFamily, Normal

from lib.data import TOY2D_STD, digits, toy2d, toy2d_modes
from lib.gan import (
    GAN,
    digits_to_unit,
    discriminator_loss,
    gan_losses,
    generator_loss,
    js_divergence,
    mode_coverage,
    optimal_discriminator,
    Training,
    train_gan,
    unit_to_digits,
)
from lib.zoo import load
from lib.zoo.gan import TOY_EXPERIMENTS, TOY_SEEDS, toy_gan, toy_name

F64 = torch.float64
BIG = torch.tensor([-1000.0, -100.0, -30.0, -1.5, 0.0, 2.0, 30.0, 100.0, 1000.0])


# ----------------------------------------------------------------------------------------
# Losses from logits


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_discriminator_loss_is_binary_cross_entropy_with_large_logits(dtype):
    real, fake = BIG.to(dtype), BIG.flip(0).to(dtype) * 0.7
    expected = F.binary_cross_entropy_with_logits(
        real, torch.ones_like(real)
    ) + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
    got = discriminator_loss(real, fake)
    assert got.dtype == dtype and got.shape == ()
    assert torch.isfinite(got) and torch.allclose(got, expected, rtol=1e-6)
    # minus the value V(D, G) = E log D(x) + E log(1 - D(G(z))), in float64 where
    # sigmoid still works
    r, f = torch.tensor([-3.0, 0.5, 4.0], dtype=F64), torch.tensor([-2.0, 1.0], dtype=F64)
    value = torch.sigmoid(r).log().mean() + (1 - torch.sigmoid(f)).log().mean()
    assert torch.allclose(discriminator_loss(r, f), -value)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_generator_losses_with_large_logits(dtype):
    fake = BIG.to(dtype)
    # -E log D(G(z))
    non_saturating = F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
    # E log(1 - D(G(z)))
    saturating = -F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
    assert torch.allclose(generator_loss(fake), non_saturating, rtol=1e-6)
    assert torch.allclose(
        generator_loss(fake, "non-saturating"), non_saturating, rtol=1e-6
    )
    assert torch.allclose(generator_loss(fake, "saturating"), saturating, rtol=1e-6)
    losses = gan_losses(fake, fake, kind="saturating")
    assert set(losses) == {"d_loss", "g_loss"} and torch.allclose(
        losses["g_loss"], saturating, rtol=1e-6
    )


def test_gradients_stay_finite_and_show_saturation():
    fake = torch.tensor([-100.0, -10.0, 0.0, 10.0], requires_grad=True)
    for kind in ("saturating", "non-saturating"):
        (grad,) = torch.autograd.grad(generator_loss(fake, kind), fake)
        assert torch.isfinite(grad).all()
    # d/dl of the per-sample losses: saturating -sigmoid(l), non-saturating -(1 -
    # sigmoid(l))
    (sat,) = torch.autograd.grad(generator_loss(fake, "saturating") * 4, fake)
    (ns,) = torch.autograd.grad(generator_loss(fake, "non-saturating") * 4, fake)
    assert torch.allclose(sat, -torch.sigmoid(fake.detach()))
    assert torch.allclose(ns, -torch.sigmoid(-fake.detach()))
    # a rejected sample: only NS pushes
    assert sat[0].abs() < 1e-40 and ns[0].item() == pytest.approx(-1.0)


def test_loss_bad_inputs():
    with pytest.raises(TypeError, match="real_logits must be a floating-point"):
        discriminator_loss(torch.tensor([1, 2]), torch.zeros(2))
    with pytest.raises(ValueError, match=r"fake_logits must have shape \(n,\)"):
        discriminator_loss(torch.zeros(3), torch.zeros(3, 1))
    with pytest.raises(ValueError, match="kind must be one of"):
        generator_loss(torch.zeros(3), "minimax")


# ----------------------------------------------------------------------------------------
# The optimal discriminator and V(D*, G) = -log 4 + 2 JSD


def gaussian_pdf(x, mu, sigma):
    return math.exp(-0.5 * ((x - mu) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))


def test_optimal_discriminator_matches_the_closed_form():
    x = torch.linspace(-4, 5, 37, dtype=F64)
    got = optimal_discriminator(x, Normal(0.0, 1.0), Normal(1.0, 2.0))
    expected = torch.tensor(
        [
            gaussian_pdf(v, 0, 1) / (gaussian_pdf(v, 0, 1) + gaussian_pdf(v, 1, 2))
            for v in x.tolist()
        ],
        dtype=F64,
    )
    assert torch.allclose(got, expected, atol=1e-12)
    # equal densities give 1/2; a callable log density works too
    half = optimal_discriminator(x, Normal(0.0, 1.0).log_prob, Normal(0.0, 1.0))
    assert torch.allclose(half, torch.full_like(x, 0.5))


def test_optimal_discriminator_in_the_far_tails():
    # both densities underflow to 0 at |x| = 60, the log ratio is an exact quadratic
    x = torch.tensor([-60.0, 60.0])
    got = optimal_discriminator(x, Normal(0.0, 1.0), Normal(1.0, 2.0))
    log_ratio = math.log(2.0) - 0.5 * x.double() ** 2 + 0.5 * ((x.double() - 1) / 2) ** 2
    assert torch.isfinite(got).all()
    assert torch.allclose(got.double(), torch.sigmoid(log_ratio), atol=1e-30, rtol=1e-3)
    with pytest.raises(TypeError, match="p_g must be a torch.distributions.Distribution"):
        optimal_discriminator(x, Normal(0.0, 1.0), 3.0)


def test_optimal_discriminator_maximises_the_value():
    # V(D, G) = integral p_data log D + p_g log(1 - D), at D* and at perturbations of it
    p_data, p_g = stats.norm(0, 1), stats.norm(1.5, 0.7)

    def value(shift):
        def integrand(v):
            d = optimal_discriminator(
                torch.tensor([v], dtype=F64), Normal(0.0, 1.0), Normal(1.5, 0.7)
            ).item()
            d = min(max(d + shift, 1e-12), 1 - 1e-12)
            return p_data.pdf(v) * math.log(d) + p_g.pdf(v) * math.log(1 - d)

        return integrate.quad(integrand, -12, 12, limit=200)[0]

    best = value(0.0)
    assert value(0.02) < best and value(-0.02) < best


def test_value_at_the_optimal_discriminator_is_minus_log_4_plus_2_jsd():
    data = MixtureSameFamily(
        Categorical(torch.tensor([0.3, 0.7], dtype=F64)),
        Normal(torch.tensor([-2.0, 1.0], dtype=F64), torch.tensor([0.5, 0.8], dtype=F64)),
    )
    model = Normal(torch.tensor(0.3, dtype=F64), torch.tensor(1.5, dtype=F64))

    def V_star(v):
        x = torch.tensor([v], dtype=F64)
        d = optimal_discriminator(x, data, model)
        return (
            data.log_prob(x).exp() * d.log() + model.log_prob(x).exp() * (1 - d).log()
        ).item()

    def kl_to_mixture(p, v):
        x = torch.tensor([v], dtype=F64)
        log_p, log_m = (
            p.log_prob(x),
            torch.logaddexp(data.log_prob(x), model.log_prob(x)) - math.log(2),
        )
        return (log_p.exp() * (log_p - log_m)).item()

    value = integrate.quad(V_star, -15, 15, limit=200)[0]
    jsd_quad = (
        0.5 * integrate.quad(lambda v: kl_to_mixture(data, v), -15, 15, limit=200)[0]
        + 0.5 * integrate.quad(lambda v: kl_to_mixture(model, v), -15, 15, limit=200)[0]
    )
    grid = torch.linspace(-15, 15, 30001, dtype=F64)
    jsd_grid = js_divergence(
        data.log_prob(grid), model.log_prob(grid), dx=(grid[1] - grid[0]).item()
    )
    assert value == pytest.approx(-math.log(4) + 2 * jsd_quad, abs=1e-8)
    assert jsd_grid.item() == pytest.approx(jsd_quad, abs=1e-8)
    assert 0 < jsd_quad < math.log(2)
    # identical distributions: JSD = 0; disjoint ones: JSD = log 2
    assert js_divergence(model.log_prob(grid), model.log_prob(grid), 0.001).abs() < 1e-12
    far = Normal(torch.tensor(1e3, dtype=F64), torch.tensor(1.0, dtype=F64))
    wide = torch.linspace(-20, 1020, 400001, dtype=F64)
    assert js_divergence(
        model.log_prob(wide), far.log_prob(wide), (wide[1] - wide[0]).item()
    ).item() == pytest.approx(math.log(2), abs=1e-6)


def test_minimising_the_discriminator_loss_recovers_the_optimal_discriminator():
    # logistic regression on (x, x^2) can represent the log ratio of two Gaussians
    # exactly, so minimising discriminator_loss on many samples must recover D* up to
    # sampling error
    g = torch.Generator().manual_seed(0)
    real = 0.0 + 1.0 * torch.randn(20000, generator=g, dtype=F64)
    fake = 1.0 + 0.6 * torch.randn(20000, generator=g, dtype=F64)
    w = torch.zeros(3, dtype=F64, requires_grad=True)
    features = lambda x: torch.stack([torch.ones_like(x), x, x**2], 1)  # noqa: E731
    opt = torch.optim.LBFGS([w], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = discriminator_loss(features(real) @ w, features(fake) @ w)
        loss.backward()
        return loss

    opt.step(closure)
    x = torch.linspace(-1.5, 2.0, 15, dtype=F64)
    trained = torch.sigmoid(features(x) @ w.detach())
    assert torch.allclose(
        trained, optimal_discriminator(x, Normal(0.0, 1.0), Normal(1.0, 0.6)), atol=0.02
    )


# ----------------------------------------------------------------------------------------
# mode_coverage on hand-built sample sets


def test_mode_coverage_counts_covered_modes_and_high_quality_samples():
    modes = toy2d_modes("ring")
    std = TOY2D_STD["ring"]
    near = modes[[0, 0, 2, 5, 5, 5]] + torch.tensor([[2.9 * std, 0.0]] + [[0.0, 0.0]] * 5)
    # just outside 3 std
    beyond = modes[[1, 3]] + torch.tensor([[0.0, 3.1 * std], [-3.1 * std, 0.0]])
    # the centre of the ring
    between = torch.zeros(2, 2)
    result = mode_coverage(torch.cat([near, beyond, between]), "ring")
    assert result["modes"] == 3
    assert result["high_quality"] == pytest.approx(6 / 10)
    assert result["counts"].tolist() == [2, 0, 1, 0, 0, 3, 0, 0]
    assert mode_coverage(torch.cat([near, beyond]), "ring", min_count=2)["modes"] == 2


def test_mode_coverage_of_the_data_itself_and_of_a_collapsed_sampler():
    for name, n_modes in (("ring", 8), ("grid", 25)):
        data = toy2d(name, 2500, seed=5)
        result = mode_coverage(data, name)
        assert result["modes"] == n_modes and result["counts"].sum() == round(
            result["high_quality"] * 2500
        )
        collapsed = toy2d_modes(name)[:3].repeat(100, 1) + 0.5 * TOY2D_STD[
            name
        ] * torch.randn(300, 2)
        assert mode_coverage(collapsed, name)["modes"] == 3
    # 2-D Gaussian: P(|e| < 3 std) = 1 - exp(-9/2) for each mode
    data = toy2d("grid", 20000, seed=6)
    assert mode_coverage(data, "grid")["high_quality"] == pytest.approx(
        1 - math.exp(-4.5), abs=0.003
    )


def test_mode_coverage_bad_inputs():
    with pytest.raises(ValueError, match=r"samples must have shape \(n, 2\)"):
        mode_coverage(torch.zeros(5, 3), "ring")
    with pytest.raises(ValueError, match="name must be 'ring' or 'grid'"):
        mode_coverage(torch.zeros(5, 2), "moons")
    with pytest.raises(ValueError, match="min_count must be a positive int"):
        mode_coverage(torch.zeros(5, 2), "ring", min_count=0)


# ----------------------------------------------------------------------------------------
# The model and its training loop


def test_packing_concatenates_consecutive_samples():
    model = GAN(2, pack=3, hidden=16, seed=1)
    x = torch.randn(6, 2)
    logits = model.logits(x)
    assert logits.shape == (2,)
    manual = model.discriminator(torch.cat([x[0], x[1], x[2]])[None]).squeeze()
    assert torch.allclose(logits[0], manual)
    with pytest.raises(ValueError, match="multiple of pack = 3"):
        model.logits(torch.randn(5, 2))
    assert model.sample(7).shape == (7, 2)
    images = GAN(64, latent_dim=8, out="tanh", hidden=16)
    assert images.sample(4).abs().max() < 1


def test_same_seed_same_model_and_history():
    x = toy2d("ring", 2000, seed=0)
    runs = []
    for _ in range(2):
        model = GAN(2, hidden=16, pack=2, seed=3)
        history = train_gan(
            model,
            x,
            Training(steps=30, batch_size=20),
            seed=4,
            snapshots=(0, 30),
            n_snapshot=50,
        )
        runs.append((model, history))
    (a, ha), (b, hb) = runs
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert torch.equal(ha["d_loss"], hb["d_loss"]) and torch.equal(
        ha["g_loss"], hb["g_loss"]
    )
    assert set(ha) == {"d_loss", "g_loss", "d_real", "d_fake", "snapshots"}
    assert ha["d_loss"].shape == (30,) and sorted(ha["snapshots"]) == [0, 30]
    assert ha["snapshots"][0].shape == (50, 2)
    assert not torch.equal(ha["snapshots"][0], ha["snapshots"][30])


def test_train_gan_moves_a_1d_generator_to_the_data():
    # one dimension, 500 steps: the generated distribution moves from around 0 to the
    # data's N(2, 0.5^2)
    x = 2.0 + 0.5 * torch.randn(5000, 1, generator=torch.Generator().manual_seed(0))
    model = GAN(1, latent_dim=1, hidden=32, seed=0)

    # between equal-size 1-D samples: sort and match
    def wasserstein_1(samples):
        return (samples[:, 0].sort().values - x[:4000, 0].sort().values).abs().mean()

    start = wasserstein_1(model.sample(4000, generator=torch.Generator().manual_seed(1)))
    train_gan(
        model, x, Training(steps=500, batch_size=100, lr=2e-3, schedule="cosine"), seed=0
    )
    samples = model.sample(4000, generator=torch.Generator().manual_seed(1))
    assert samples.mean().item() == pytest.approx(2.0, abs=0.15)
    assert wasserstein_1(samples) < 0.2 * start


def test_batch_norm_generator_snapshots_and_samples_use_the_running_statistics():
    model = GAN(2, hidden=16, batch_norm=True, seed=0)
    assert [type(m).__name__ for m in model.generator] == [
        "Linear",
        "BatchNorm1d",
        "ReLU",
        "Linear",
        "BatchNorm1d",
        "ReLU",
        "Linear",
    ]
    history = train_gan(
        model,
        toy2d("ring", 2000, seed=0),
        Training(steps=20, batch_size=20),
        seed=0,
        snapshots=(20,),
        n_snapshot=50,
    )
    assert not model.training
    # train_gan's first draw
    z_fixed = torch.randn(50, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(history["snapshots"][20], model.generate(z_fixed))
        # batch statistics
        assert not torch.allclose(
            model.train().generate(z_fixed), history["snapshots"][20]
        )


def test_scale_is_a_change_of_units():
    small, big = GAN(2, hidden=8, seed=2), GAN(2, hidden=8, seed=2, scale=4.0)
    z, x = torch.randn(5, 2), torch.randn(6, 2)
    assert torch.allclose(big.generate(z), 4 * small.generate(z))
    assert torch.allclose(big.logits(4 * x), small.logits(x))
    with pytest.raises(ValueError, match="scale must be a positive number"):
        GAN(2, scale=0.0)


def test_more_discriminator_steps_and_rates():
    x = toy2d("grid", 2000, seed=0)
    model = toy_gan("grid", pack=2, seed=0)
    before = [p.clone() for p in model.generator.parameters()]
    history = train_gan(
        model, x, Training(steps=5, batch_size=16, lr=0.0, d_lr=1e-3, d_steps=3), seed=0
    )
    # lr = 0: G fixed
    assert all(torch.equal(a, b) for a, b in zip(before, model.generator.parameters()))
    assert history["d_loss"].shape == (5,) and (
        history["d_loss"][-1] < history["d_loss"][0]
    )
    with pytest.raises(ValueError, match="d_steps must be a positive int"):
        train_gan(model, x, Training(steps=1, d_steps=0))


def test_committed_toy_gans_reproduce_their_stored_coverage():
    mean_modes, mean_quality = {}, {}
    for name, experiment in TOY_EXPERIMENTS.items():
        for pack in (1, 2):
            modes, quality = [], []
            for seed in TOY_SEEDS:
                model, history = load(toy_name(name, pack, seed))
                assert not model.training and model.pack == pack
                samples = model.sample(
                    2500, generator=torch.Generator().manual_seed(seed)
                )
                cover = mode_coverage(samples, experiment["data"])
                # stored at training
                assert tuple(history["coverage"].tolist()) == (
                    cover["modes"],
                    pytest.approx(cover["high_quality"]),
                )
                assert (
                    sorted(history["snapshots"])[0] == 0
                    and history["d_loss"].dim() == 1
                    and history["step"].shape == history["d_loss"].shape
                )
                modes.append(cover["modes"])
                quality.append(cover["high_quality"])
            mean_modes[(name, pack)], mean_quality[(name, pack)] = (
                sum(modes) / 3,
                sum(quality) / 3,
            )
        # packing covers more modes
        assert mean_modes[(name, 2)] > mean_modes[(name, 1)]
    # the chapter's goals
    assert mean_modes[("ring", 2)] >= 7.5 and mean_quality[("ring", 2)] >= 0.8
    assert mean_modes[("grid-bn", 2)] >= 23 and mean_quality[("grid-bn", 2)] >= 0.8


def test_digits_scaling_round_trip_and_committed_digits_gans():
    x, _ = digits("val")
    unit = digits_to_unit(x)
    assert unit.shape == (350, 64) and unit.min() >= -1 and unit.max() <= 1
    assert torch.allclose(unit_to_digits(unit), x)
    for pack in (1, 2):
        model, _ = load(f"gan/digits-pack{pack}")
        samples = model.sample(100, generator=torch.Generator().manual_seed(0))
        assert (
            model.pack == pack and samples.shape == (100, 64) and samples.abs().max() <= 1
        )
        assert samples.std(0).mean() > 0.1  # not a single image


def test_train_gan_bad_inputs():
    model = GAN(2, hidden=8)
    with pytest.raises(ValueError, match=r"x must have shape \(n, 2\)"):
        train_gan(model, torch.zeros(10, 3), Training(steps=1))
    with pytest.raises(ValueError, match="kind must be one of"):
        train_gan(model, torch.zeros(10, 2), Training(steps=1, kind="wasserstein"))
    with pytest.raises(ValueError, match="pack must be a positive int"):
        GAN(2, pack=0)


# ----------------------------------------------------------------------------------------
# CUDA


@pytest.mark.gpu
def test_losses_model_and_training_on_cuda_match_cpu():
    cuda = torch.device("cuda")
    real, fake = BIG, BIG.flip(0)
    for kind in ("saturating", "non-saturating"):
        cpu_losses = gan_losses(real, fake, kind=kind)
        gpu_losses = gan_losses(real.to(cuda), fake.to(cuda), kind=kind)
        for key in cpu_losses:
            assert gpu_losses[key].device.type == "cuda"
            assert torch.allclose(gpu_losses[key].cpu(), cpu_losses[key], rtol=1e-5)
    x = torch.linspace(-3, 3, 11)
    d_cpu = optimal_discriminator(x, Normal(0.0, 1.0), Normal(1.0, 2.0))
    d_gpu = optimal_discriminator(
        x.to(cuda),
        Normal(torch.tensor(0.0, device=cuda), 1.0),
        Normal(torch.tensor(1.0, device=cuda), 2.0),
    )
    assert torch.allclose(d_gpu.cpu(), d_cpu, atol=1e-6)
    # the same weights give the same logits and losses on both devices
    model_cpu = GAN(2, hidden=32, pack=2, seed=0)
    model_gpu = GAN(2, hidden=32, pack=2, seed=0).to(cuda)
    data, z = toy2d("ring", 100, seed=0), torch.randn(100, 2)
    cpu = gan_losses(model_cpu.logits(data), model_cpu.logits(model_cpu.generate(z)))
    gpu = gan_losses(
        model_gpu.logits(data.to(cuda)), model_gpu.logits(model_gpu.generate(z.to(cuda)))
    )
    for key in cpu:
        assert torch.allclose(gpu[key].cpu(), cpu[key], rtol=1e-4, atol=1e-5)
    # training runs on the device the data live on; the history comes back on the CPU
    history = train_gan(
        model_gpu,
        toy2d("ring", 1000, seed=0, device=cuda),
        Training(steps=20, batch_size=50),
        seed=0,
        snapshots=(0, 20),
        n_snapshot=100,
    )
    assert (
        history["d_loss"].device.type == "cpu" and torch.isfinite(history["d_loss"]).all()
    )
    assert history["snapshots"][20].device.type == "cpu"
    samples = model_gpu.sample(2500)
    assert samples.device.type == "cuda"
    assert mode_coverage(samples, "ring")["counts"].device.type == "cuda"
