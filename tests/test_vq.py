"""lib.vq against independent oracles: brute-force nearest codes, autograd identities,
an EMA step computed by hand, torch.distributions.Categorical for the entropy and the
likelihood."""

import math

import pytest
import torch
from torch.distributions import Categorical

from lib.vq import (
    VQVAE,
    VectorQuantizer,
    code_perplexity,
    codes_used,
    evaluate,
    nearest_code,
    squared_distances,
    straight_through,
    vq_loss_terms,
)
from lib.zoo import load
from lib.zoo.vq import train_vqvae

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def brute_force_nearest(z, codebook):
    """argmin over k of ||z - e_k||^2, code by code, with the difference formed
    explicitly."""
    best = torch.full((len(z),), math.inf, dtype=z.dtype)
    index = torch.zeros(len(z), dtype=torch.long)
    for k in range(len(codebook)):
        d = ((z - codebook[k]) ** 2).sum(1)
        better = d < best
        best, index = torch.where(better, d, best), torch.where(better, k, index)
    return index


# ----------------------------------------------------------------------------------------
# Nearest codes


@pytest.mark.parametrize("m, K, D", [(1, 1, 1), (50, 7, 3), (400, 64, 16)])
def test_nearest_code_matches_brute_force(m, K, D):
    g = torch.Generator().manual_seed(m + K + D)
    z, codebook = (
        torch.randn(m, D, generator=g, dtype=F64),
        torch.randn(K, D, generator=g, dtype=F64),
    )
    assert torch.equal(nearest_code(z, codebook), brute_force_nearest(z, codebook))
    explicit = ((z[:, None, :] - codebook[None]) ** 2).sum(-1)
    torch.testing.assert_close(squared_distances(z, codebook), explicit)


def test_quantizer_picks_the_brute_force_codes_and_returns_them():
    torch.manual_seed(0)
    vq = VectorQuantizer(10, 4, mode="loss").double().eval()
    vq.codebook.data = torch.randn(10, 4, dtype=F64)
    z_e = torch.randn(3, 4, 5, 2, dtype=F64)
    q = vq(z_e)
    flat = z_e.permute(0, 2, 3, 1).reshape(-1, 4)
    expected = brute_force_nearest(flat, vq.codebook.detach())
    assert q.indices.shape == (3, 5, 2) and q.indices.dtype == torch.long
    assert torch.equal(q.indices.flatten(), expected)
    torch.testing.assert_close(
        q.z_q.permute(0, 2, 3, 1).reshape(-1, 4), vq.codebook.detach()[expected]
    )
    # both terms are the squared distance to the chosen code, summed per image
    distance = ((flat - vq.codebook.detach()[expected]) ** 2).sum(1).reshape(3, 10).sum(1)
    torch.testing.assert_close(q.codebook, distance)
    torch.testing.assert_close(q.commitment, distance)


# ----------------------------------------------------------------------------------------
# Gradients: straight-through, and where the two loss terms send theirs


def test_straight_through_passes_the_gradient_unchanged():
    g = torch.Generator().manual_seed(1)
    z_e = torch.randn(2, 3, 4, 4, generator=g, dtype=F64, requires_grad=True)
    z_q = torch.randn(2, 3, 4, 4, generator=g, dtype=F64, requires_grad=True)
    upstream = torch.randn(2, 3, 4, 4, generator=g, dtype=F64)
    out = straight_through(z_e, z_q)
    torch.testing.assert_close(out, z_q.detach())
    (out * upstream).sum().backward()
    assert torch.equal(z_e.grad, upstream)  # identity Jacobian
    assert z_q.grad is None or torch.all(z_q.grad == 0)


def test_quantizer_output_gradient_reaches_the_encoder_output_unchanged():
    torch.manual_seed(2)
    vq = VectorQuantizer(6, 3, mode="loss").double().eval()
    z_e = torch.randn(2, 3, 4, 4, dtype=F64, requires_grad=True)
    upstream = torch.randn(2, 3, 4, 4, dtype=F64)
    (vq(z_e).z_q * upstream).sum().backward()
    assert torch.equal(z_e.grad, upstream)
    # the decoder path never trains the codes
    assert vq.codebook.grad is None or torch.all(vq.codebook.grad == 0)


def test_codebook_term_trains_the_codes_and_commitment_the_encoder():
    g = torch.Generator().manual_seed(3)
    z_e = torch.randn(2, 3, 2, 2, generator=g, dtype=F64, requires_grad=True)
    z_q = torch.randn(2, 3, 2, 2, generator=g, dtype=F64, requires_grad=True)
    codebook, commitment = vq_loss_terms(z_e, z_q)
    grad_e, grad_q = torch.autograd.grad(codebook.sum(), (z_e, z_q), allow_unused=True)
    assert grad_e is None or torch.all(grad_e == 0)
    torch.testing.assert_close(grad_q, 2 * (z_q - z_e).detach())
    grad_e, grad_q = torch.autograd.grad(commitment.sum(), (z_e, z_q), allow_unused=True)
    torch.testing.assert_close(grad_e, 2 * (z_e - z_q).detach())
    assert grad_q is None or torch.all(grad_q == 0)


def test_ema_mode_has_no_codebook_gradient_and_no_codebook_parameter():
    vq = VectorQuantizer(8, 2, mode="ema")
    assert list(vq.parameters()) == []
    assert {"codebook", "ema_count", "ema_sum", "usage"} <= set(dict(vq.named_buffers()))
    q = vq(torch.randn(2, 2, 3, 3))
    assert torch.all(q.codebook == 0)


# ----------------------------------------------------------------------------------------
# EMA updates and dead-code restarts


def test_ema_step_matches_a_hand_computed_update():
    decay, eps = 0.9, 0.1
    vq = VectorQuantizer(3, 2, mode="ema", decay=decay, eps=eps).double()
    e = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]], dtype=F64)
    vq.codebook.copy_(e)
    # N_k = 1, m_k = e_k at the start
    vq.ema_sum.copy_(e)
    # codes 0, 0, 1; code 2 unused
    z = torch.tensor([[0.5, 0.0], [-0.5, 1.0], [3.0, 1.0]], dtype=F64)
    q = vq.train()(z.T.reshape(1, 2, 1, 3))
    assert q.indices.flatten().tolist() == [0, 0, 1]
    # quantised before the update
    torch.testing.assert_close(q.z_q.reshape(2, 3).T, e[[0, 0, 1]])
    # by hand: N = 0.9 * 1 + 0.1 * (2, 1, 0) = (1.1, 1.0, 0.9); m_0 = 0.1 * (0, 1) = (0,
    # 0.1), m_1 = 0.9 * (4, 0) + 0.1 * (3, 1) = (3.9, 0.1), m_2 = 0.9 * (0, 4) = (0,
    # 3.6)
    N = torch.tensor([1.1, 1.0, 0.9], dtype=F64)
    m = torch.tensor([[0.0, 0.1], [3.9, 0.1], [0.0, 3.6]], dtype=F64)
    smoothed = (N + eps) / (3.0 + 3 * eps) * 3.0
    torch.testing.assert_close(vq.ema_count, N)
    torch.testing.assert_close(vq.ema_sum, m)
    torch.testing.assert_close(vq.codebook, m / smoothed[:, None])
    before = vq.codebook.clone()
    vq.eval()(z.T.reshape(1, 2, 1, 3))
    # no update in eval mode
    assert torch.equal(vq.codebook, before)


def test_dead_code_restart_revives_unused_codes():
    def used_after(restart):
        torch.manual_seed(4)
        vq = VectorQuantizer(16, 2, mode="loss", restart=restart)
        # half the codes far from the data
        vq.codebook.data[8:] += 100.0
        for step in range(3):
            q = vq(torch.randn(4, 2, 8, 8))
        return codes_used(q.indices, 16).item(), vq.codebook.detach()

    used, codebook = used_after(False)
    assert used <= 0.5 and codebook[8:].abs().min() > 50
    used, codebook = used_after(True)
    # every code moved onto the data and chosen
    assert used == 1.0 and codebook.abs().max() < 10


def test_restart_resets_the_ema_statistics():
    torch.manual_seed(5)
    vq = VectorQuantizer(4, 2, mode="ema", restart=True)
    vq.codebook[2:] = 100.0
    vq.ema_sum[2:] = 100.0
    z = torch.randn(1, 2, 4, 4)
    vq(z)
    vq(z)
    assert vq.codebook.abs().max() < 10 and vq.ema_sum.abs().max() < 10


# ----------------------------------------------------------------------------------------
# Perplexity


def test_perplexity_of_uniform_and_one_hot_histograms():
    K = 12
    assert code_perplexity(torch.arange(K).repeat(5), K).item() == pytest.approx(K)
    assert code_perplexity(torch.full((7, 4, 4), 3), K).item() == pytest.approx(1.0)
    assert codes_used(torch.full((7, 4, 4), 3), K).item() == pytest.approx(1 / K)
    g = torch.Generator().manual_seed(6)
    indices = torch.randint(5, (1000,), generator=g)
    probs = torch.bincount(indices, minlength=K).double() / 1000
    expected = Categorical(probs=probs).entropy().exp()
    assert code_perplexity(indices, K).item() == pytest.approx(expected.item(), rel=1e-5)


# ----------------------------------------------------------------------------------------
# The VQ-VAE


def test_vqvae_loss_is_the_sum_of_its_terms_and_rec_is_a_categorical_nll():
    torch.manual_seed(7)
    model = VQVAE(
        levels=17, n_codes=8, code_dim=4, channels=8, mode="loss", restart=False
    ).eval()
    x = torch.randint(17, (5, 1, 8, 8)).float()
    terms = model.loss(x)
    torch.testing.assert_close(
        terms["loss"], terms["rec"] + terms["codebook"] + 0.25 * terms["commitment"]
    )
    logits, _ = model(x)
    expected = (
        -Categorical(logits=logits.permute(0, 2, 3, 1))
        .log_prob(x[:, 0].long())
        .sum((1, 2))
        .mean()
    )
    torch.testing.assert_close(terms["rec"], expected)
    assert model.encode(x).shape == (5, 4, 4)
    assert model.decode_indices(model.encode(x)).shape == (5, 17, 8, 8)
    result = evaluate(model, x)
    assert result["codes"].shape == (5, 4, 4) and 0 < result["used"] <= 1


def test_training_is_deterministic_with_a_seed():
    a = train_vqvae("loss-restart", steps=15, seed=3)[1]
    b = train_vqvae("loss-restart", steps=15, seed=3)[1]
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_pretrained_models_reconstruct_better_than_independent_pixels():
    from lib.data import digits

    x, _ = digits("test")
    model, history = load("vq/ema-restart")
    result = evaluate(model, x)
    # restarts keep (nearly) every code in use
    assert result["rec"] < 80 and result["used"] > 0.9
    assert len(history["rec"]) > 100
    prior, _ = load("vq/prior")
    assert prior.levels == model.n_codes
    assert prior.sample(3, (4, 4), seed=0).shape == (3, 1, 4, 4)


# ----------------------------------------------------------------------------------------
# Bad inputs


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="codebook's are 3"):
        nearest_code(torch.randn(5, 2), torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"z must have shape \(m, D\)"):
        nearest_code(torch.randn(5), torch.randn(4, 3))
    with pytest.raises(TypeError, match="z must be a floating-point"):
        nearest_code(torch.ones(5, 3, dtype=torch.long), torch.randn(4, 3))
    with pytest.raises(ValueError, match="mode must be one of"):
        VectorQuantizer(4, 2, mode="kmeans")
    with pytest.raises(ValueError, match="decay must be in"):
        VectorQuantizer(4, 2, mode="ema", decay=1.0)
    with pytest.raises(ValueError, match=r"z_e must have shape \(n, 2, h, w\)"):
        VectorQuantizer(4, 2)(torch.randn(1, 3, 2, 2))
    with pytest.raises(TypeError, match="indices must be an integer"):
        code_perplexity(torch.rand(10), 4)
    with pytest.raises(ValueError, match="indices must lie in 0..3"):
        code_perplexity(torch.tensor([0, 4]), 4)
    with pytest.raises(ValueError, match=r"x must have shape \(n, 1, 8, 8\)"):
        VQVAE().loss(torch.zeros(2, 1, 6, 6))


# ----------------------------------------------------------------------------------------
# GPU


@pytest.mark.gpu
def test_quantizer_and_loss_on_cuda_match_cpu():
    cuda = torch.device("cuda")
    g = torch.Generator().manual_seed(8)
    z, codebook = torch.randn(300, 8, generator=g), torch.randn(32, 8, generator=g)
    assert torch.equal(
        nearest_code(z.to(cuda), codebook.to(cuda)).cpu(), nearest_code(z, codebook)
    )
    torch.manual_seed(9)
    model = VQVAE(mode="ema", restart=True).eval()
    x = torch.randint(17, (16, 1, 8, 8), generator=g).float()
    cpu = model.loss(x)
    gpu = model.to(cuda).loss(x.to(cuda))
    for key in ("loss", "rec", "commitment", "perplexity"):
        torch.testing.assert_close(gpu[key].cpu(), cpu[key], rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
def test_ema_step_on_cuda_matches_cpu():
    cuda = torch.device("cuda")
    torch.manual_seed(10)
    cpu = VectorQuantizer(16, 4, mode="ema", restart=False)
    gpu = VectorQuantizer(16, 4, mode="ema", restart=False).to(cuda)
    gpu.load_state_dict(cpu.state_dict())
    z = torch.randn(8, 4, 4, 4)
    cpu(z)
    gpu(z.to(cuda))
    for name, buffer in cpu.named_buffers():
        torch.testing.assert_close(
            dict(gpu.named_buffers())[name].cpu(), buffer, rtol=1e-5, atol=1e-6
        )
