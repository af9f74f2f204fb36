"""Chapter 08: generative adversarial networks.

A GAN's generator is an implicit model: x = G(z) with z ~ p(z). It can be sampled but
has no density to evaluate. A discriminator D(x) = sigmoid(logit(x)) is trained to tell
data from samples; the generator is trained to fool it (eq-gan-minimax in
book/08-gan.md):

    min_G max_D  V(D, G) = E_{p_data}[log D(x)] + E_{p(z)}[log(1 - D(G(z)))].

Everything is computed from the discriminator's logits, never from probabilities: with
log sigmoid(l) = -softplus(-l) and log(1 - sigmoid(l)) = -softplus(l), the losses stay
finite for logits of any size (`discriminator_loss`, `generator_loss`, `gan_losses`).

For a fixed G the best discriminator is D*(x) = p_data(x) / (p_data(x) + p_g(x))
(`optimal_discriminator`), and V(D*, G) = -log 4 + 2 JSD(p_data || p_g) (`js_divergence`).

`GAN` holds a generator and a discriminator (MLPs), optionally with PacGAN packing: the
discriminator judges ``pack`` samples at once, all real or all generated, which makes a
generator that drops modes much easier to catch (eq-gan-pack). `train_gan` alternates
discriminator and generator steps; `mode_coverage` counts the modes of the ring / grid
toy sets a set of samples covers, and the fraction of high-quality samples (within 3
standard deviations of the nearest mode), as in the PacGAN and VEEGAN evaluations.
The book's trained GANs are ``lib.zoo.load("gan/<name>")``; their recipes are
lib/zoo/gan.py.
"""

import math
from collections import defaultdict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lib.checks import float_tensor, nonnegative_int, one_of, positive_int, same_shape
from lib.data import TOY2D_STD, toy2d_modes
from lib.device import seeded
from lib.train import show_progress
from lib.nets import mlp
from lib.zoo import moved

GENERATOR_LOSSES = ("non-saturating", "saturating")

# ----------------------------------------------------------------------------------------
# Losses from logits


def _logits(name: str, value) -> torch.Tensor:
    shape = "(n,) with n >= 1 (one logit per example)"
    return float_tensor(name, value, dim=1, shape=shape, nonempty=True)


def discriminator_loss(
    real_logits: torch.Tensor, fake_logits: torch.Tensor
) -> torch.Tensor:
    """Minus the value V(D, G), estimated on a minibatch (eq-gan-d-loss in
    book/08-gan.md):

        -E_data[log D(x)] - E_z[log(1 - D(G(z)))] = mean softplus(-real_logits) + mean
        softplus(fake_logits),

    the binary cross-entropy of "real" = 1, "fake" = 0. Finite for logits of any size.
    """
    _logits("real_logits", real_logits)
    _logits("fake_logits", fake_logits)
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_loss(
    fake_logits: torch.Tensor, kind: str = "non-saturating"
) -> torch.Tensor:
    """The generator's loss on a minibatch of generated samples (eq-gan-g-losses in
    book/08-gan.md):

        saturating       E_z[log(1 - D(G(z)))] = -mean softplus(fake_logits) (the
                         minimax game)
        non-saturating  -E_z[log D(G(z))] = mean softplus(-fake_logits) (Goodfellow et
                        al.'s fix)

    Both are minimised by making D(G(z)) large; only the non-saturating one has a large
    gradient where D confidently rejects the samples, i.e. at the start of training.
    """
    _logits("fake_logits", fake_logits)
    one_of("kind", kind, GENERATOR_LOSSES)
    if kind == "saturating":
        return -F.softplus(fake_logits).mean()
    return F.softplus(-fake_logits).mean()


def gan_losses(
    real_logits: torch.Tensor, fake_logits: torch.Tensor, *, kind: str = "non-saturating"
) -> dict:
    """``{"d_loss": discriminator_loss, "g_loss": generator_loss(kind)}`` from the same
    logits."""
    return {
        "d_loss": discriminator_loss(real_logits, fake_logits),
        "g_loss": generator_loss(fake_logits, kind),
    }


# ----------------------------------------------------------------------------------------
# The optimal discriminator and the Jensen-Shannon divergence


def _log_density(name: str, p, x: torch.Tensor) -> torch.Tensor:
    if hasattr(p, "log_prob"):
        return p.log_prob(x)
    if callable(p):
        return p(x)
    raise TypeError(
        f"{name} must be a torch.distributions.Distribution or a function x -> log "
        f"density, "
        f"got {type(p).__name__}"
    )


def optimal_discriminator(x: torch.Tensor, p_data, p_g) -> torch.Tensor:
    """D*(x) = p_data(x) / (p_data(x) + p_g(x)) = sigmoid(log p_data(x) - log p_g(x)),
    eq-gan-optimal-d in book/08-gan.md.

    p_data, p_g: distributions with ``log_prob`` (or functions returning log densities).
    Computed from the log-density ratio, so it stays defined where both densities
    underflow.
    """
    float_tensor("x", x)
    return torch.sigmoid(_log_density("p_data", p_data, x) - _log_density("p_g", p_g, x))


def js_divergence(log_p: torch.Tensor, log_q: torch.Tensor, dx: float) -> torch.Tensor:
    """JSD(p || q) = 1/2 KL(p || m) + 1/2 KL(q || m), m = (p + q) / 2, by the trapezoid
    rule on a regular grid with spacing ``dx``, from the log densities on that grid
    (eq-gan-value-at-optimum)."""
    float_tensor("log_p", log_p, dim=1, shape="(n,) on a regular grid")
    float_tensor("log_q", log_q, dim=1, shape="(n,) on a regular grid")
    same_shape("log_q", log_q, "log_p", log_p)  # the same grid
    log_m = torch.logaddexp(log_p, log_q) - math.log(2)

    # a (log a - log m), with 0 log 0 = 0 where a = 0
    def p_log_ratio(log_a):
        return torch.where(log_a > -math.inf, log_a.exp() * (log_a - log_m), 0.0)

    return torch.trapezoid(0.5 * p_log_ratio(log_p) + 0.5 * p_log_ratio(log_q), dx=dx)


# ----------------------------------------------------------------------------------------
# Networks


def leaky_relu() -> torch.nn.Module:
    """The GAN literature's LeakyReLU, with slope 0.2 for negative inputs."""
    return torch.nn.LeakyReLU(0.2)


class GAN(torch.nn.Module):
    """A generator G: z -> x and a discriminator x -> logit, both MLPs with LeakyReLU.

    The generator is a VAE decoder made deterministic (eq-gan-generator in
    book/08-gan.md):
    x = G(z), z ~ N(0, I), with no noise model p(x | z) around it, hence no likelihood to
    evaluate. It has ``depth`` hidden layers of
    ``hidden`` units; the discriminator has ``d_depth`` layers of ``d_hidden`` units (by
    default the same). ``pack = m > 1`` makes the discriminator a PacGAN_m (Lin et al.
    2018): it reads m samples concatenated, ``(n, d) -> (n / m, m d)``, all real or all
    generated, and returns one logit per pack (eq-gan-pack). ``out="tanh"`` squashes
    samples into (-1, 1) (images); the default output is linear (toy data). ``scale`` is
    a fixed change of units: the generator's output is multiplied by it and the
    discriminator's input divided by it, so that both networks work with data of size
    about 1 (the grid spans [-4, 4]). ``batch_norm=True`` gives the generator BatchNorm
    and ReLU after each hidden linear layer, as in the PacGAN paper's toy generators;
    the model must then be in eval mode to sample with the running statistics.
    """

    def __init__(
        self,
        data_dim: int,
        *,
        latent_dim: int = 2,
        hidden: int = 128,
        depth: int = 2,
        d_hidden: int | None = None,
        d_depth: int | None = None,
        pack: int = 1,
        out: str = "linear",
        scale: float = 1.0,
        batch_norm: bool = False,
        seed: int = 0,
    ):
        super().__init__()
        for name, value in (
            ("data_dim", data_dim),
            ("latent_dim", latent_dim),
            ("hidden", hidden),
            ("depth", depth),
            ("pack", pack),
        ):
            positive_int(name, value)
        d_hidden = hidden if d_hidden is None else positive_int("d_hidden", d_hidden)
        d_depth = depth if d_depth is None else positive_int("d_depth", d_depth)
        one_of("out", out, ("linear", "tanh"))
        if not (isinstance(scale, (int, float)) and scale > 0):
            raise ValueError(f"scale must be a positive number, got {scale!r}")
        self.data_dim, self.latent_dim, self.pack, self.out, self.scale = (
            data_dim,
            latent_dim,
            pack,
            out,
            float(scale),
        )
        with seeded(seed):
            self.generator = mlp(
                [latent_dim] + [hidden] * depth + [data_dim],
                activation=torch.nn.ReLU if batch_norm else leaky_relu,
                batch_norm=batch_norm,
            )
            self.discriminator = mlp(
                [data_dim * pack] + [d_hidden] * d_depth + [1], activation=leaky_relu
            )

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """x = G(z) for z of shape (n, latent_dim)."""
        x = self.generator(z)
        return self.scale * (torch.tanh(x) if self.out == "tanh" else x)

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """n samples G(z), z ~ N(0, I), of shape (n, data_dim); no gradient."""
        positive_int("n", n)
        device = next(self.parameters()).device
        with torch.no_grad():
            z = torch.randn(n, self.latent_dim, device=device, generator=generator)
            return self.generate(z)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The discriminator's logits, one per pack of ``self.pack`` consecutive rows of
        x: shape (n / pack,)."""
        if x.dim() != 2 or x.shape[1] != self.data_dim or len(x) % self.pack:
            raise ValueError(
                f"x must have shape (n, {self.data_dim}) with n a multiple of pack = "
                f"{self.pack}, "
                f"got {tuple(x.shape)}"
            )
        return self.discriminator(
            x.reshape(-1, self.pack * self.data_dim) / self.scale
        ).squeeze(-1)


# ----------------------------------------------------------------------------------------
# Training: alternating discriminator and generator steps


@dataclass(frozen=True)
class Training:
    """How `train_gan` trains (the configuration of a run, as nanoGPT's GPTConfig is of a
    model).

    steps:      generator steps; each follows ``d_steps`` discriminator steps
    batch_size: (packed) discriminator examples of each class per step, i.e.
                ``batch_size * model.pack`` rows of data and as many samples
    lr, d_lr:   the Adam learning rates of the generator and the discriminator (``d_lr``
                defaults to ``lr``), with Adam's ``betas``
    kind:       the generator loss (eq-gan-g-losses), one of `GENERATOR_LOSSES`
    schedule:   ``"constant"``, or ``"cosine"``, which decays both rates to zero over the
                run
    """

    steps: int
    batch_size: int = 100
    lr: float = 1e-3
    d_lr: float | None = None
    d_steps: int = 1
    betas: tuple[float, float] = (0.5, 0.999)
    kind: str = "non-saturating"
    schedule: str = "constant"

    def __post_init__(self):
        nonnegative_int("steps", self.steps)
        positive_int("batch_size", self.batch_size)
        positive_int("d_steps", self.d_steps)
        one_of("kind", self.kind, GENERATOR_LOSSES)
        one_of("schedule", self.schedule, ("constant", "cosine"))


def _optimisers(model: GAN, training: Training):
    """Adam for each player, and the schedulers that decay both rates (none for a
    constant rate): ``(opt_d, opt_g, schedulers)``."""
    d_lr = training.lr if training.d_lr is None else training.d_lr
    opt_d = torch.optim.Adam(
        model.discriminator.parameters(), lr=d_lr, betas=training.betas, foreach=True
    )
    opt_g = torch.optim.Adam(
        model.generator.parameters(), lr=training.lr, betas=training.betas, foreach=True
    )
    if training.schedule == "constant":
        return opt_d, opt_g, []
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR
    return opt_d, opt_g, [cosine(opt, max(training.steps, 1)) for opt in (opt_d, opt_g)]


def train_gan(
    model: GAN,
    x: torch.Tensor,
    training: Training,
    *,
    seed: int = 0,
    snapshots=(),
    n_snapshot: int = 500,
    progress=None,
    desc: str | None = None,
) -> dict:
    """Train ``model`` on the rows of ``x`` (shape (n, data_dim), on the model's device)
    as ``training`` says.

    Each step alternates the two players: ``d_steps`` Adam steps on the discriminator loss
    (eq-gan-d-loss) with the generated batch detached, then one Adam step on the
    generator loss ``kind`` (eq-gan-g-losses) through a fresh batch of samples. Minibatch
    indices and noise are drawn on the device from one generator seeded with ``seed``
    (no host synchronisation, and the global generators are left alone).

    snapshots: steps (0..steps) at which to record ``n_snapshot`` samples on a fixed
    noise batch. Returns the history, like `lib.train.minimise`: "d_loss" (the last
    discriminator step's), "g_loss", "d_real" and "d_fake" (mean D on the data and on
    the samples of that step), each a 1-D CPU tensor with one entry per step; plus
    "snapshots", a dict step -> (n_snapshot, data_dim) CPU tensor, when asked for.
    """
    if not isinstance(training, Training):
        raise TypeError(
            f"training must be a lib.gan.Training, got {type(training).__name__}"
        )
    float_tensor("x", x, dim=2, shape=f"(n, {model.data_dim})")
    if x.shape[1] != model.data_dim:
        raise ValueError(f"x must have shape (n, {model.data_dim}), got {tuple(x.shape)}")
    steps, kind = training.steps, training.kind
    device, m = x.device, training.batch_size * model.pack
    g = torch.Generator(device=device).manual_seed(seed)
    z_fixed = torch.randn(n_snapshot, model.latent_dim, device=device, generator=g)
    opt_d, opt_g, decay = _optimisers(model, training)
    records, shots = defaultdict(list), {}

    def noise():
        return torch.randn(m, model.latent_dim, device=device, generator=g)

    def snapshot(step):
        if step in snapshots:
            # what sampling will show (BatchNorm's running statistics)
            model.eval()
            with torch.no_grad():
                shots[step] = model.generate(z_fixed)
            model.train()

    model.train()
    for step in tqdm(
        range(steps), desc=desc, disable=not show_progress(progress), leave=False
    ):
        snapshot(step)
        for _ in range(training.d_steps):  # the discriminator, with G fixed
            real = x[torch.randint(len(x), (m,), device=device, generator=g)]
            real_logits, fake_logits = (
                model.logits(real),
                model.logits(model.generate(noise()).detach()),
            )
            d_loss = discriminator_loss(real_logits, fake_logits)
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
        # the generator, with D fixed
        g_loss = generator_loss(model.logits(model.generate(noise())), kind)
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        for scheduler in decay:
            scheduler.step()
        records["d_loss"].append(d_loss.detach())
        records["g_loss"].append(g_loss.detach())
        records["d_real"].append(torch.sigmoid(real_logits.detach()).mean())
        records["d_fake"].append(torch.sigmoid(fake_logits.detach()).mean())
    snapshot(steps)
    model.eval()
    history = {
        name: torch.stack(values).float().cpu() for name, values in records.items()
    }
    if shots:
        history["snapshots"] = {
            step: value.cpu() for step, value in sorted(shots.items())
        }
    return history


# ----------------------------------------------------------------------------------------
# Evaluation: modes covered and high-quality samples


def mode_coverage(
    samples: torch.Tensor, name: str, *, threshold: float = 3.0, min_count: int = 1
) -> dict:
    """How well samples cover the modes of a toy set, ``name`` = "ring" (8 modes) or
    "grid" (25).

    A sample is *high quality* if it lies within ``threshold`` standard deviations
    (``lib.data.TOY2D_STD[name]``) of its nearest mode centre; a mode is *covered* if at
    least ``min_count`` high-quality samples are nearest to it (the PacGAN/VEEGAN
    evaluation, on 2500 samples there). Returns ``{"modes": covered count,
    "high_quality": fraction in [0, 1], "counts": high-quality samples per mode (tensor
    of shape (n_modes,))}``.
    """
    float_tensor("samples", samples, dim=2, shape="(n, 2) with n >= 1", nonempty=True)
    if samples.shape[1] != 2:
        raise ValueError(
            f"samples must have shape (n, 2) with n >= 1, got {tuple(samples.shape)}"
        )
    modes = toy2d_modes(name).to(samples.device, samples.dtype)
    positive_int("min_count", min_count)
    distance, nearest = torch.cdist(samples, modes).min(1)
    good = distance < threshold * TOY2D_STD[name]
    counts = torch.bincount(nearest[good], minlength=len(modes))
    return {
        "modes": int((counts >= min_count).sum()),
        "high_quality": good.float().mean().item(),
        "counts": counts,
    }


# ----------------------------------------------------------------------------------------
# The digits scaled to [-1, 1], for a tanh generator


def digits_to_unit(x: torch.Tensor) -> torch.Tensor:
    """Grey levels 0..16 of shape (n, 1, 8, 8) -> (n, 64) in [-1, 1]; `unit_to_digits`
    inverts it."""
    return x.flatten(1) / 8 - 1


def unit_to_digits(x: torch.Tensor) -> torch.Tensor:
    """(n, 64) in [-1, 1] -> grey levels in [0, 16] of shape (n, 1, 8, 8)."""
    return ((x + 1) * 8).reshape(-1, 1, 8, 8)


# ----------------------------------------------------------------------------------------
# The book's trained models and their recipes: lib.zoo ("gan/<name>", lib/zoo/gan.py).

__getattr__ = moved(
    "gan",
    (
        "TOY_SEEDS",
        "TOY_PACKS",
        "TOY_SCALE",
        "TOY_EXPERIMENTS",
        "TOY_SNAPSHOTS",
        "TOY_HISTORY_EVERY",
        "toy_gan",
        "DIGITS_MODEL",
        "DIGITS_TRAINING",
        "digits_gan",
    ),
)
