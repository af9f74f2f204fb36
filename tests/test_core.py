"""lib.device, lib.data, lib.train and lib.plot."""

import math

import matplotlib.pyplot as plt
import pytest
import torch

from lib.data import IMAGE_SHAPE, LEVELS, PIXELS, digits, toy2d, toy2d_modes
from lib.device import default_device, seeded
from lib.plot import (
    curves,
    density_2d,
    image_grid,
    latent_manifold,
    page_setup,
    results_table,
    scatter_2d,
)
from lib.checks import int_in, nonnegative_int
from lib.train import evaluating, fit, fit_early_stopping, minimise


# ---------------------------------------------------------------------------- device


def test_default_device_honours_the_environment(monkeypatch):
    monkeypatch.setenv("DGM_DEVICE", "cpu")
    assert default_device() == torch.device("cpu")
    monkeypatch.delenv("DGM_DEVICE")
    assert default_device().type in ("cpu", "cuda", "mps")


def test_seeded_repeats_draws_and_leaves_the_global_state_as_it_was():
    torch.manual_seed(11)
    before = torch.random.get_rng_state()
    with seeded(3) as generator:
        a, b = torch.randn(4), torch.randn(4, generator=generator)
    assert torch.equal(torch.random.get_rng_state(), before)
    with seeded(3) as generator:
        assert torch.equal(torch.randn(4), a)
        assert torch.equal(torch.randn(4, generator=generator), b)
    torch.manual_seed(3)  # the same numbers as seeding by hand
    assert torch.equal(torch.randn(4), a)
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        with seeded(-1):
            pass


@pytest.mark.gpu
def test_seeded_leaves_every_cuda_generator_as_it_was():
    states = torch.cuda.get_rng_state_all()
    with seeded(3, "cuda") as generator:
        assert generator.device.type == "cuda"
        torch.randn(4, device="cuda")
    assert all(map(torch.equal, torch.cuda.get_rng_state_all(), states))


# ---------------------------------------------------------------------------- data


def test_digits_split_is_fixed_and_disjoint():
    parts = {s: digits(s) for s in ("train", "val", "test")}
    assert [len(parts[s][0]) for s in parts] == [1000, 350, 447]
    x_train, _ = parts["train"]
    assert x_train.shape[1:] == (1, 8, 8) and x_train.dtype == torch.float32
    assert (
        x_train.min() == 0
        and x_train.max() == 16
        and torch.equal(x_train, x_train.round())
    )
    from sklearn.datasets import load_digits

    raw = torch.as_tensor(load_digits().images, dtype=torch.float32)
    # a permutation of all 1797
    assert torch.cat([parts[s][0][:, 0] for s in parts]).sum() == raw.sum()
    assert torch.equal(digits("test")[0], parts["test"][0])  # the same split every call
    assert (IMAGE_SHAPE, PIXELS, LEVELS) == ((1, 8, 8), 64, 17)  # the constants say so


def test_digits_binarised():
    x, y = digits("val", binarize=True)
    assert set(x.unique().tolist()) == {0.0, 1.0}
    assert y.dtype == torch.long and set(y.unique().tolist()) == set(range(10))
    with pytest.raises(ValueError, match="split must be one of"):
        digits("training")


@pytest.mark.parametrize("name, count, std", [("ring", 8, 0.01), ("grid", 25, 0.05)])
def test_toy_mixtures_have_their_modes_and_spread(name, count, std):
    x = toy2d(name, 20_000, seed=1)
    modes = toy2d_modes(name)
    assert modes.shape == (count, 2)
    distance, nearest = torch.cdist(x, modes).min(1)
    assert len(nearest.unique()) == count
    assert (x - modes[nearest]).std().item() == pytest.approx(std, rel=0.05)
    assert torch.equal(x, toy2d(name, 20_000, seed=1))


def test_other_toy_sets():
    assert toy2d("moons", 100).shape == (100, 2)
    c = toy2d("correlated", 50_000)
    assert torch.corrcoef(c.T)[0, 1].item() == pytest.approx(0.9, abs=0.01)
    with pytest.raises(ValueError, match="name must be one of"):
        toy2d("spiral", 10)
    with pytest.raises(ValueError, match="n must be a positive int"):
        toy2d("ring", 0)


# ---------------------------------------------------------------------------- train


class Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(3))

    def loss(self, x, y):
        residual = x @ self.w - y
        return {"loss": residual.pow(2).mean(), "max_residual": residual.abs().max()}


def regression_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 3, generator=g)
    return x, x @ torch.tensor([1.0, -2.0, 0.5])


def test_fit_learns_and_records_every_term():
    model = Linear()
    history = fit(model, *regression_data(), steps=600, batch_size=50, lr=0.05)
    assert set(history) == {"loss", "max_residual"} and history["loss"].shape == (600,)
    assert history["loss"][-20:].mean() < 1e-3 * history["loss"][:5].mean()
    torch.testing.assert_close(
        model.w.detach(), torch.tensor([1.0, -2.0, 0.5]), atol=1e-2, rtol=0
    )


def test_fit_is_deterministic():
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = Linear()
        runs.append(
            fit(model, *regression_data(), steps=50, batch_size=32, seed=3)["loss"]
        )
    assert torch.equal(*runs)


def test_fit_and_minimise_bad_input():
    x, y = regression_data()
    with pytest.raises(ValueError, match=r"data\[1\] must be a tensor with 500 rows"):
        fit(Linear(), x, y[:10], steps=1)
    with pytest.raises(ValueError, match="batch_size must be an int in 1..500"):
        fit(Linear(), x, y, steps=1, batch_size=1000)
    w = torch.zeros(1, requires_grad=True)
    with pytest.raises(
        ValueError, match="objective must return a dict with a 'loss' entry"
    ):
        minimise(lambda step: {"nll": w.sum()}, [w], steps=1)
    with pytest.raises(ValueError, match="schedule must be"):
        minimise(lambda step: {"loss": w.sum()}, [w], steps=1, schedule="linear")


def test_cosine_schedule_settles_a_noisy_objective():
    torch.manual_seed(0)
    w = torch.zeros(1, requires_grad=True)
    # noqa: E731
    noisy = lambda step: {"loss": (w - 3 - torch.randn(64).mean()).pow(2).sum()}
    minimise(noisy, [w], steps=800, lr=0.1, schedule="cosine")
    assert abs(w.item() - 3) < 0.03


def test_early_stopping_follows_the_cosine_schedule_and_stops_with_patience():
    x, y = regression_data()
    model = Linear()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.08)
    seen_lr, weights = [], []
    # best after round 3, then two worse rounds
    scores = iter([5.0, 3.0, 1.0, 2.0, 4.0, 0.5, 0.1])

    def score(model_, *val):
        seen_lr.append(optimizer.param_groups[0]["lr"])
        weights.append(model_.w.detach().clone())
        return torch.tensor(next(scores))

    history = fit_early_stopping(
        model,
        (x, y),
        (x, y),
        score,
        steps=70,
        every=10,
        patience=2,
        optimizer=optimizer,
        schedule="cosine",
        batch_size=50,
    )
    # patience 2 after the best round
    assert history["step"].tolist() == [10, 20, 30, 40, 50]
    assert (
        history["val"].tolist() == [5.0, 3.0, 1.0, 2.0, 4.0]
        and len(history["train"]) == 5
    )
    expected = [0.08 * (1 + math.cos(math.pi * r / 7)) / 2 for r in range(5)]
    assert seen_lr == pytest.approx(expected)
    # the best round's weights
    assert torch.equal(model.w.detach(), weights[2])
    with pytest.raises(ValueError, match="schedule must be"):
        fit_early_stopping(
            model, (x, y), (x, y), score, steps=10, every=10, schedule="step"
        )


def test_fit_bf16_autocast_runs_the_products_in_bf16_and_matches_float32():
    x, y = regression_data()
    histories, dtypes = {}, []
    for autocast in (False, True):
        model = Linear()

        def loss(x_, y_):
            prediction = x_ @ model.w
            dtypes.append(prediction.dtype)
            return {"loss": (prediction.float() - y_).pow(2).mean()}

        histories[autocast] = fit(
            model, x, y, steps=300, batch_size=50, lr=0.05, loss=loss, autocast=autocast
        )
        torch.testing.assert_close(
            model.w.detach(), torch.tensor([1.0, -2.0, 0.5]), atol=2e-2, rtol=0
        )
    assert set(dtypes[:300]) == {torch.float32} and set(dtypes[300:]) == {torch.bfloat16}
    torch.testing.assert_close(
        histories[True]["loss"][:5], histories[False]["loss"][:5], rtol=2e-2, atol=0
    )


def test_fit_compiled_gives_the_eager_numbers():
    from torch._dynamo.utils import counters

    x, y = regression_data()
    histories = []
    counters.clear()
    for compiled in (False, True):
        model = Linear()
        histories.append(
            fit(model, x, y, steps=30, batch_size=50, lr=0.05, compiled=compiled)["loss"]
        )
    # the loss really went through torch.compile
    assert counters["stats"]["unique_graphs"] >= 1
    torch.testing.assert_close(histories[1], histories[0], rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_fit_makes_no_host_sync_per_step_on_cuda():
    """Syncs (reported by CUDA's sync debug mode) must not grow with the number of
    steps: the only ones allowed are at the end, when the history is copied to the CPU.
    A loss that logs with .item() shows that the count does see per-step syncs."""
    import warnings

    x, y = (t.cuda() for t in regression_data())

    def syncs(steps, log_every_step=False):
        model = Linear().cuda()

        def logged(*batch):
            terms = model.loss(*batch)
            terms["loss"].item()
            return terms

        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                fit(
                    model,
                    x,
                    y,
                    steps=steps,
                    batch_size=50,
                    loss=logged if log_every_step else None,
                )
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)

    assert syncs(5) == syncs(50)
    assert syncs(50, log_every_step=True) >= syncs(5, log_every_step=True) + 45


# ---------------------------------------------------------------------------- plot


def test_plots_draw_and_reject_bad_shapes():
    fig, axes = plt.subplots(1, 5)
    image_grid(torch.rand(10, 1, 8, 8), nrow=5, ax=axes[0])
    scatter_2d(torch.randn(20, 2), ax=axes[1])
    density_2d(lambda z: -(z**2).sum(1), ax=axes[2])
    curves({"loss": torch.rand(30)}, ax=axes[3], smooth=5)
    latent_manifold(
        lambda z: z.sum(1).reshape(-1, 1, 1, 1).expand(-1, 1, 4, 4), n=4, ax=axes[4]
    )
    plt.close(fig)
    with pytest.raises(ValueError, match="one channel"):
        image_grid(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        scatter_2d(torch.rand(5, 3))
    table = results_table([{"a": 1.23456, "b": "x"}]).data
    assert table.splitlines()[0] == "| a | b |" and "1.235" in table


# lib.checks: one message style for every module's bad input


def test_checks_name_the_argument_and_the_expectation():
    from lib.checks import float_tensor, one_of, positive_int

    x = torch.zeros(3, 2)
    assert float_tensor("x", x, dim=2) is x
    with pytest.raises(
        TypeError, match="z must be a floating-point torch.Tensor, got list"
    ):
        float_tensor("z", [1.0])
    with pytest.raises(
        TypeError, match="z must be a floating-point torch.Tensor, got dtype torch.int64"
    ):
        float_tensor("z", torch.tensor([1]))
    with pytest.raises(ValueError, match=r"z must have shape \(n, d\), got \(3,\)"):
        float_tensor("z", torch.zeros(3), dim=2, shape="(n, d)")
    with pytest.raises(ValueError, match=r"z must have shape \(n, d\), got \(0, 2\)"):
        float_tensor("z", torch.zeros(0, 2), dim=2, shape="(n, d)", nonempty=True)
    assert float_tensor("z", torch.zeros(0, 2), dim=2) is not None  # empty is allowed
    with pytest.raises(ValueError, match=r"z must have at least one row, got \(\)"):
        float_tensor("z", torch.tensor(1.0), nonempty=True)
    for bad in (0, -1, 2.0, True, "3"):
        with pytest.raises(ValueError, match="K must be a positive int"):
            positive_int("K", bad)
    with pytest.raises(ValueError, match=r"mode must be one of \['a', 'b'\], got 'c'"):
        one_of("mode", "c", ("a", "b"))
    assert nonnegative_int("steps", 0) == 0 and int_in("K", 5, 1, 5) == 5
    for bad in (-1, 2.0, True, False, "3"):
        with pytest.raises(ValueError, match="steps must be a non-negative int"):
            nonnegative_int("steps", bad)
    for bad in (0, 6, True, 2.0):
        with pytest.raises(ValueError, match=r"K must be an int in 1\.\.5 \(of 5\), got"):
            int_in("K", bad, 1, 5, " (of 5)")


def test_true_is_not_a_step_count():
    from lib.gan import GAN, Training, train_gan

    x = torch.zeros(10, 2)
    model = torch.nn.Linear(2, 1)
    for train in (
        lambda: fit(model, x, steps=True, batch_size=5, loss=lambda b: {"loss": b.sum()}),
        lambda: train_gan(
            GAN(data_dim=2, latent_dim=2, hidden=4), x, Training(steps=True)
        ),
    ):
        with pytest.raises(
            ValueError, match="steps must be a non-negative int, got True"
        ):
            train()


def test_evaluating_restores_the_mode_the_model_was_in_even_after_an_error():
    model = torch.nn.Sequential(torch.nn.Dropout(0.5))
    for mode in (True, False):
        model.train(mode)
        with evaluating(model):
            assert not model.training
        assert model.training is mode
    model.train()
    with pytest.raises(RuntimeError, match="inside"):
        with evaluating(model):
            raise RuntimeError("inside")
    assert model.training


def test_page_setup_seeds_one_thread_and_an_empty_results_list():
    threads = torch.get_num_threads()
    try:
        results = page_setup(seed=7)
        assert results == [] and torch.get_num_threads() == 1
        drawn = torch.randn(3)
        torch.manual_seed(7)
        assert torch.equal(drawn, torch.randn(3))
        assert plt.rcParams["axes.spines.top"] is False  # the course style
    finally:
        torch.set_num_threads(threads)


def test_empty_data_is_refused_by_name():
    from lib.elbo import gmm_init
    from lib.gan import discriminator_loss
    from lib.vi import NormalGamma, normal_gamma_posterior

    with pytest.raises(ValueError, match=r"x must have shape \(n, d\) with n >= 1"):
        gmm_init(torch.zeros(0, 2), 2)
    with pytest.raises(
        ValueError, match=r"real_logits must have shape \(n,\) with n >= 1"
    ):
        discriminator_loss(torch.zeros(0), torch.zeros(3))
    prior = NormalGamma(*torch.ones(4))
    with pytest.raises(ValueError, match=r"x must have shape \(n,\) with n >= 1"):
        normal_gamma_posterior(torch.zeros(0), prior)
