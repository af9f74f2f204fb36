"""lib.pixelcnn against independent oracles: brute-force masks, full Jacobians,
enumeration of every image, torch.distributions.Categorical."""

import itertools
import math

import pytest
import torch
from torch.autograd.functional import jacobian
from torch.distributions import Categorical

from lib.data import bits_per_dim
from lib.pixelcnn import (
    GatedPixelCNN,
    MaskedConv2d,
    PixelCNN,
    categorical_nll,
    causal_mask,
    dependency_matrix,
    nll,
    receptive_field,
    sample,
)
from lib.zoo import load

F64 = torch.float64


def raster_jacobian(f, x):
    """J[i, j] = sum |d f(x)[0, :, pixel i] / d x[0, :, pixel j]|, pixels in raster
    order (brute force)."""
    _, C, H, W = x.shape
    J = jacobian(lambda t: f(t).sum(1), x, vectorize=True)  # (1, H, W, 1, C, H, W)
    return J.abs().sum(4).reshape(H * W, H * W)


def model(kind, levels=5, channels=8, layers=3, seed=0, **kwargs):
    torch.manual_seed(seed)
    net = (
        (PixelCNN if kind == "plain" else GatedPixelCNN)(
            levels, channels, layers, **kwargs
        )
        .double()
        .eval()
    )
    # random weights, no biases: every conditional
    for name, p in net.named_parameters():
        # depends strongly on the pixels before it
        if name.endswith("bias"):
            p.data.zero_()
        else:
            p.data.normal_(0, 0.5)
    return net


# ----------------------------------------------------------------------------------------
# Masks


@pytest.mark.parametrize("k", [1, 3, 5, 7])
@pytest.mark.parametrize("mask_type", ["A", "B"])
def test_causal_mask_matches_the_raster_order_definition(k, mask_type):
    c = k // 2
    expected = torch.tensor(
        [
            [
                float(r * k + s < c * k + c or (mask_type == "B" and (r, s) == (c, c)))
                for s in range(k)
            ]
            for r in range(k)
        ]
    )
    assert torch.equal(causal_mask(k, mask_type), expected)
    assert causal_mask(k, mask_type)[c, c] == (mask_type == "B")


@pytest.mark.parametrize("mask_type", ["A", "B"])
def test_masked_convolution_is_causal_by_input_gradients(mask_type):
    torch.manual_seed(0)
    conv = MaskedConv2d(3, 4, 5, mask_type).double()
    conv.weight.data.normal_()
    H, W = 6, 7
    J = raster_jacobian(conv, torch.randn(1, 3, H, W, dtype=F64))
    i, j = torch.meshgrid(torch.arange(H * W), torch.arange(H * W), indexing="ij")
    future = j > i if mask_type == "B" else j >= i
    # exactly zero: no information from x_j, j >= i (A)
    assert J[future].abs().max() == 0
    # B sees its own position, A never does
    assert (J.diagonal() > 0).all() == (mask_type == "B")
    # and nothing allowed is masked away: pixels up to 2 rows above / 2 columns aside
    # all count
    ri, ci, rj, cj = i // W, i % W, j // W, j % W
    near = ((ri - rj).abs() <= 2) & ((ci - cj).abs() <= 2) & ~future
    assert (J[near] > 0).all()


# ----------------------------------------------------------------------------------------
# Whole models: causality, and the blind spot


@pytest.mark.parametrize("kind", ["plain", "gated"])
@pytest.mark.parametrize("conditioning", [None, "class", "map"])
def test_every_output_pixel_ignores_itself_and_the_future(kind, conditioning):
    H, W = 6, 5
    extra = {"class": {"n_classes": 3}, "map": {"cond_channels": 2}}.get(conditioning, {})
    net = model(kind, **extra)
    cond = {
        "class": torch.tensor([1]),
        "map": torch.randn(1, 2, 3, 3, dtype=F64),
        None: None,
    }[conditioning]
    x = torch.randint(5, (3, 1, H, W), generator=torch.Generator().manual_seed(2))
    J = sum(
        raster_jacobian(
            lambda t: net.features(t, net.cond_map(cond, 1, H, W)), net.embed(x[k])
        )
        for k in range(3)
    )
    assert J.triu().abs().max() == 0, "output pixel i depends on an input j >= i"
    assert (J.tril(-1) > 0).any(1)[1:].all(), (
        "every pixel but the first sees some of its past"
    )


def test_gated_model_has_no_blind_spot_and_the_plain_one_does():
    H, W = 6, 6
    gated, plain = model("gated", layers=6), model("plain", layers=5, first_kernel=3)
    e = torch.randn(1, 8, H, W, dtype=F64)
    past = torch.ones(H * W, H * W).tril(-1).bool()
    J_gated = raster_jacobian(gated.features, e)
    assert torch.equal(J_gated > 0, past), "the gated model sees every earlier pixel"
    J_plain = raster_jacobian(plain.features, e)
    assert not (J_plain > 0)[~past].any()
    # pixel (3, 2) never sees (2, 5): above-right, outside the cone of stacked 3x3
    # type-B masks
    assert J_plain[3 * W + 2, 2 * W + 5] == 0 and J_gated[3 * W + 2, 2 * W + 5] > 0
    blind = past & ~(J_plain > 0)
    assert blind.sum() > 20


def test_dependency_matrix_and_receptive_field_agree_with_the_jacobian():
    net = model("plain", layers=2)
    e = torch.randn(1, 8, 5, 6, dtype=F64)
    D = dependency_matrix(net.features, e)
    assert D.dtype == torch.bool and D.shape == (30, 30)
    assert torch.equal(D, raster_jacobian(net.features, e) > 0)
    rf = receptive_field(net, (3, 4), shape=(5, 6))
    x = torch.randint(5, (4, 5, 6), generator=torch.Generator().manual_seed(0))
    J = sum(raster_jacobian(net.features, net.embed(x[k : k + 1])) for k in range(4))
    assert torch.equal(rf.flatten(), J[3 * 6 + 4] > 0)
    leaky = MaskedConv2d(8, 5, 3, "B").double()
    # type B in the first layer leaks x_i into its own logits
    assert dependency_matrix(leaky, e).diagonal().all()


# ----------------------------------------------------------------------------------------
# Likelihood


def test_categorical_nll_matches_torch_distributions():
    g = torch.Generator().manual_seed(1)
    logits = 3 * torch.randn(7, 4, 5, 6, generator=g, dtype=F64)
    x = torch.randint(4, (7, 1, 5, 6), generator=g)
    expected = (
        -Categorical(logits=logits.permute(0, 2, 3, 1)).log_prob(x[:, 0]).sum((1, 2))
    )
    torch.testing.assert_close(categorical_nll(logits, x), expected)
    # whole floats, no channel
    torch.testing.assert_close(categorical_nll(logits, x[:, 0].double()), expected)
    assert bits_per_dim(torch.tensor(64 * math.log(2)), 64).item() == pytest.approx(1.0)


@pytest.mark.parametrize("kind", ["plain", "gated"])
def test_log_prob_is_normalised_over_every_image(kind):
    # 3 levels on a 2x2 image: 81 images, whose probabilities must sum to one
    net = model(kind, levels=3, n_classes=2)
    images = torch.tensor(list(itertools.product(range(3), repeat=4))).reshape(
        81, 1, 2, 2
    )
    for label in (0, 1):
        log_p = net.log_prob(images, torch.full((81,), label))
        assert torch.logsumexp(log_p, 0).item() == pytest.approx(0.0, abs=1e-10)
    zeros = torch.zeros(81, dtype=torch.long)
    nll_direct = (
        -Categorical(logits=net(images, zeros).permute(0, 2, 3, 1))
        .log_prob(images[:, 0])
        .sum((1, 2))
    )
    torch.testing.assert_close(-net.log_prob(images, zeros), nll_direct)
    loss = net.loss(images, zeros)
    assert loss["loss"].item() == pytest.approx(nll_direct.mean().item())
    assert loss["bits_per_dim"].item() == pytest.approx(
        nll_direct.mean().item() / (4 * math.log(2))
    )
    assert nll(net, images, zeros, batch_size=20).item() == pytest.approx(
        nll_direct.mean().item()
    )


# ----------------------------------------------------------------------------------------
# Sampling


@pytest.mark.parametrize("kind", ["plain", "gated"])
@pytest.mark.parametrize("naive", [False, True])
def test_argmax_samples_reproduce_the_models_own_argmax(kind, naive):
    net = model(kind, layers=2, cond_channels=2)
    cond = torch.randn(3, 2, 5, 4, dtype=F64)
    # the receptive field is smaller than the image
    x = sample(net, 3, (10, 8), cond, argmax=True, naive=naive)
    assert x.shape == (3, 1, 10, 8) and x.dtype == torch.long
    assert torch.equal(net(x, cond).argmax(1, keepdim=True), x)


def test_samples_follow_the_model_distribution():
    # every one of the 81 images of a 2x2, 3-level model: sampled frequencies vs exact
    # probabilities
    net = model("gated", levels=3, layers=2)
    images = torch.tensor(list(itertools.product(range(3), repeat=4))).reshape(
        81, 1, 2, 2
    )
    p = net.log_prob(images).exp().detach()
    x = sample(net, 20000, (2, 2), seed=3)
    index = (x.flatten(1) * torch.tensor([27, 9, 3, 1])).sum(1)
    freq = torch.bincount(index, minlength=81).double() / 20000
    # total variation distance
    assert 0.5 * (freq - p).abs().sum() < 0.03
    # seeded: the same draws
    assert torch.equal(sample(net, 500, (2, 2), seed=3), sample(net, 500, (2, 2), seed=3))
    assert not torch.equal(
        sample(net, 500, (2, 2), seed=3), sample(net, 500, (2, 2), seed=4)
    )


def test_class_conditioning_changes_the_model_and_the_samples():
    net = model("gated", n_classes=3)
    x = torch.randint(5, (4, 1, 4, 4))
    assert not torch.allclose(
        net.log_prob(x, torch.zeros(4, dtype=torch.long)),
        net.log_prob(x, torch.ones(4, dtype=torch.long)),
    )
    y = torch.tensor([0, 1, 2, 0])
    s = net.sample(4, (4, 4), y, argmax=True)
    assert torch.equal(s[0], s[3]) and torch.equal(net(s, y).argmax(1, keepdim=True), s)


# ----------------------------------------------------------------------------------------
# Bad input


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        causal_mask(4, "A")
    with pytest.raises(ValueError, match="mask_type must be one of"):
        MaskedConv2d(1, 1, 3, "C")
    net = PixelCNN(4, 8, 1)
    with pytest.raises(ValueError, match=r"levels in 0..3"):
        net.log_prob(torch.full((2, 1, 3, 3), 4))
    with pytest.raises(ValueError, match="whole numbers"):
        net.log_prob(torch.full((2, 1, 3, 3), 0.5))
    with pytest.raises(ValueError, match="no conditioning"):
        net.log_prob(torch.zeros(2, 1, 3, 3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="shape \\(n, H, W\\)"):
        net.log_prob(torch.zeros(2, 3, 3, 3))
    with pytest.raises(ValueError, match="not both"):
        GatedPixelCNN(4, 8, 2, n_classes=2, cond_channels=3)
    cond_net = GatedPixelCNN(4, 8, 2, n_classes=2)
    with pytest.raises(ValueError, match="pass cond"):
        cond_net.log_prob(torch.zeros(2, 1, 3, 3))
    with pytest.raises(ValueError, match="labels in 0..1"):
        cond_net.log_prob(torch.zeros(2, 1, 3, 3), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match=r"cond must have shape \(2, 3, h, w\)"):
        GatedPixelCNN(4, 8, 2, cond_channels=3).log_prob(
            torch.zeros(2, 1, 3, 3), torch.zeros(2, 1, 3, 3)
        )
    with pytest.raises(ValueError, match="x must have shape"):
        categorical_nll(
            torch.zeros(2, 4, 3, 3), torch.zeros(2, 1, 3, 4, dtype=torch.long)
        )
    with pytest.raises(ValueError, match="shape must be"):
        sample(net, 2, 8)
    with pytest.raises(ValueError, match="pixel must lie"):
        receptive_field(net, (8, 0), shape=(8, 8))


# ----------------------------------------------------------------------------------------
# The book's checkpoints


@pytest.mark.parametrize(
    "name, levels, goal", [("digits17", 17, 86.5), ("digits2", 2, None)]
)
def test_pretrained_digits_models_load_and_reach_their_goal(name, levels, goal):
    from lib.data import digits

    model_, history = load(f"pixelcnn/{name}")
    assert model_.levels == levels and not model_.training
    assert history["train"].dim() == 1 and len(history["train"]) == len(
        history["val"]
    ) == len(history["step"])
    x, _ = digits("test", binarize=levels == 2)
    test_nll = nll(model_, x).item()
    # beats intro_dgm's ARM / beats coin flips
    assert test_nll < (goal if goal else 64 * math.log(2))


# ----------------------------------------------------------------------------------------
# GPU


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["plain", "gated"])
def test_cuda_matches_cpu(kind, monkeypatch):
    # full float32 convolutions, like the CPU
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    cuda = torch.device("cuda")
    net = model(kind, layers=3, n_classes=3).float()
    x = torch.randint(5, (16, 1, 8, 8))
    y = torch.randint(3, (16,))
    cpu_loss = net.loss(x, y)["loss"]
    cpu_loss.backward()
    cpu_grads = [p.grad.clone() for p in net.parameters()]
    gpu = net.to(cuda)
    gpu.zero_grad()
    gpu_loss = gpu.loss(x.to(cuda), y.to(cuda))["loss"]
    gpu_loss.backward()
    assert gpu_loss.device.type == "cuda"
    torch.testing.assert_close(gpu_loss.cpu(), cpu_loss.detach(), rtol=1e-4, atol=1e-3)
    for p, g in zip(gpu.parameters(), cpu_grads):
        torch.testing.assert_close(p.grad.cpu(), g, rtol=1e-3, atol=1e-3)
    s = sample(gpu, 8, (6, 6), y[:8].to(cuda), argmax=True)
    assert s.device.type == "cuda" and torch.equal(
        gpu(s, y[:8].to(cuda)).argmax(1, keepdim=True), s
    )
    random_draw = sample(gpu, 8, (6, 6), y[:8].to(cuda), seed=0)
    assert torch.equal(random_draw, sample(gpu, 8, (6, 6), y[:8].to(cuda), seed=0))


@pytest.mark.gpu
def test_pretrained_model_on_cuda_matches_cpu(monkeypatch):
    from lib.data import digits

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    x, _ = digits("test")
    cpu_model, _ = load("pixelcnn/digits17")
    gpu_model, _ = load("pixelcnn/digits17", device=torch.device("cuda"))
    assert nll(gpu_model, x.cuda()).item() == pytest.approx(
        nll(cpu_model, x).item(), rel=1e-4
    )


def test_causal_mask_channels_orders_the_colours_at_the_centre_tap():
    from lib.pixelcnn import causal_mask, causal_mask_channels

    for kind in ("A", "B"):
        m = causal_mask_channels(3, kind, 6, 9)
        assert m.shape == (9, 6, 3, 3)
        off_centre = causal_mask(3, kind).clone()
        off_centre[1, 1] = 0
        centre_free = m.clone()
        centre_free[:, :, 1, 1] = 0
        # the spatial part is the 2-D mask
        assert (centre_free == off_centre).all()
        # (out colour, in colour)
        groups = m[:, :, 1, 1].reshape(3, 3, 3, 2).amax((1, 3))
        expected = torch.tril(torch.ones(3, 3), diagonal=-1 if kind == "A" else 0)
        assert (groups == expected).all()
    assert (causal_mask_channels(5, "B", 4, 4, colors=1) == causal_mask(5, "B")).all()
    with pytest.raises(ValueError, match="multiple of colors"):
        causal_mask_channels(3, "A", 4, 6)
