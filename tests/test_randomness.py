"""One rule for randomness (`lib.device.seeded`): a public function of `lib` that draws
random numbers takes a ``seed`` or a ``generator``, and leaves torch's global generators
as it found them, on the CPU and on CUDA.

Each call below is one of those functions at its smallest size, given a seed or a
generator. The test seeds the global generators with a value no call uses, runs the
call, and compares the global states before and after. A second run with the same
seed must give the same result: the seed, not what was drawn before, decides it.
"""

import pytest
import torch
from torch.distributions import Independent, Normal

from lib import collapse, data, diffusion, elbo, gan, kl, pixelcnn, reparam, train, vae

X = data.digits("train", binarize=True)[0][:40]
POINTS = data.toy2d("ring", 64, seed=1)


def g():
    return torch.Generator().manual_seed(5)


def small_vae(seed=0):
    return vae.VAE(likelihood="bernoulli", latent_dim=2, hidden=16, seed=seed)


def small_gan(seed=0):
    return gan.GAN(2, hidden=8, seed=seed)


def small_diffusion(seed=0):
    return diffusion.Diffusion((2,), steps=10, hidden=8, seed=seed)


# built once, outside the calls: building a torch module draws its initial weights
PIXELCNN = pixelcnn.GatedPixelCNN(3, channels=4, layers=1).eval()
DIFFUSION = small_diffusion().eval()


CALLS = {
    "data.toy2d": lambda: data.toy2d("grid", 10, seed=3),
    "train.fit": lambda: train.fit(small_vae(), X, steps=3, batch_size=10, seed=3),
    "train.fit_early_stopping": lambda: train.fit_early_stopping(
        small_vae(),
        (X,),
        (X,),
        vae.validation_neg_elbo,
        steps=2,
        every=1,
        batch_size=10,
        seed=3,
    ),
    "kl.fit_gaussian": lambda: kl.fit_gaussian(
        Independent(Normal(torch.zeros(2), torch.ones(2)), 1), "reverse", steps=2, n=4
    ),
    "elbo.importance_log_weights": lambda: elbo.importance_log_weights(
        lambda z: -(z**2).sum(-1), Independent(Normal(torch.zeros(3, 2), 1.0), 1), 4
    ),
    "elbo.gmm_init": lambda: elbo.gmm_init(POINTS, 3, seed=2),
    "reparam.pathwise_grad": lambda: reparam.pathwise_grad(
        lambda z: z**2,
        lambda mu: mu + torch.randn(8),
        (torch.tensor(0.5, requires_grad=True),),
        8,
        seed=2,
    ),
    "reparam.score_function_grad": lambda: reparam.score_function_grad(
        lambda z: z**2,
        lambda mu: Normal(mu, 1.0),
        (torch.tensor(0.5, requires_grad=True),),
        8,
        seed=2,
    ),
    "vae.VAE": lambda: small_vae(seed=4).state_dict(),
    "vae.VAE.sample": lambda: small_vae().sample(3, generator=g()),
    "vae.elbo_terms": lambda: vae.elbo_terms(small_vae(), X[:4], generator=g()),
    "collapse.make_vae": lambda: collapse.make_vae(
        "autoregressive", latent_dim=2, hidden=8, decoder_hidden=16, seed=4
    ).state_dict(),
    "collapse.MaskedDecoder.sample": lambda: (
        collapse.make_vae("autoregressive", latent_dim=2, hidden=8, decoder_hidden=16)
        .eval()
        .decoder.sample(torch.zeros(2, 2), generator=g())
    ),
    "collapse.fit_aggressive": lambda: collapse.fit_aggressive(
        collapse.make_vae("factorised", latent_dim=2, hidden=8),
        X,
        X[:10],
        steps=2,
        batch_size=10,
        inner_max=2,
        seed=3,
    ),
    "gan.GAN": lambda: small_gan(seed=4).state_dict(),
    "gan.GAN.sample": lambda: small_gan().sample(5, generator=g()),
    "gan.train_gan": lambda: train_gan(),
    "pixelcnn.sample": lambda: pixelcnn.sample(PIXELCNN, 2, (3, 3), seed=2),
    "diffusion.Diffusion": lambda: small_diffusion(seed=4).state_dict(),
    "diffusion.q_sample": lambda: diffusion.q_sample(
        POINTS[:4], torch.tensor([1, 2, 3, 4]), DIFFUSION.alpha_bar, generator=g()
    ),
    "diffusion.Diffusion.sample": lambda: DIFFUSION.sample(3, generator=g()),
    "diffusion.train_diffusion": lambda: train_diffusion(),
}


def train_gan():
    model = small_gan()
    gan.train_gan(model, POINTS, gan.Training(steps=2, batch_size=16), seed=3)
    return model  # the history also holds timings


def train_diffusion():
    model = small_diffusion()
    diffusion.train_diffusion(model, POINTS, steps=2, batch_size=16, seed=3)
    return model


def flat(value) -> list[torch.Tensor]:
    """Every tensor in a result (tensors, models, and tuples, lists, dicts of them)."""
    if isinstance(value, torch.Tensor):
        return [value.detach()]
    if isinstance(value, torch.nn.Module):
        return [v.detach() for v in value.state_dict().values()]
    if isinstance(value, dict):
        return [t for v in value.values() for t in flat(v)]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in flat(v)]
    if hasattr(value, "mean") and hasattr(value, "stddev"):  # a distribution
        return [value.mean.detach(), value.stddev.detach()]
    return []


@pytest.mark.parametrize("name", sorted(CALLS))
def test_a_seeded_call_leaves_the_global_generator_alone(name):
    torch.manual_seed(12345)
    before = torch.random.get_rng_state()
    first = flat(CALLS[name]())
    assert torch.equal(torch.random.get_rng_state(), before), (
        f"{name} changed torch's global random state"
    )
    torch.manual_seed(999)  # another global state: the seed alone decides the result
    again = flat(CALLS[name]())
    assert first and len(first) == len(again)
    assert all(torch.equal(a, b) for a, b in zip(first, again)), (
        f"{name} gave another result with the same seed"
    )


@pytest.mark.gpu
@pytest.mark.parametrize(
    "name", ["train.fit", "gan.train_gan", "diffusion.train_diffusion", "vae.VAE"]
)
def test_a_seeded_call_leaves_every_cuda_generator_alone(name):
    states = torch.cuda.get_rng_state_all()
    CALLS[name]()
    assert all(map(torch.equal, torch.cuda.get_rng_state_all(), states)), name
