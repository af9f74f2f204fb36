"""Chapter 04: variational autoencoders.

The model (book/04-vae.md): a prior p(z) = N(0, I) over a latent z in R^L, a decoder
p_theta(x | z) whose parameters a network computes from z, and an encoder
q_phi(z | x) = N(mu_phi(x), diag exp(logvar_phi(x))). Training maximises the ELBO
(eq-vae-loss),

    ELBO(x) = E_{q_phi(z|x)}[log p_theta(x | z)] - KL(q_phi(z | x) || N(0, I)),

with the KL in closed form (`gaussian_kl_to_standard`, eq-vae-kl) and the expectation
estimated with reparameterised samples z = mu + exp(logvar / 2) * eps (`reparameterize`,
eq-vae-reparam). `log_likelihood_is` estimates log p_theta(x) itself by importance
sampling with the encoder as proposal (eq-vae-is).

The interface (what other chapters plug into)
---------------------------------------------
encoder   any nn.Module with ``encoder(x, context=None) -> (mu, logvar)``, each (n, L).
          `GaussianEncoder` wraps a network that outputs 2L numbers per image.
decoder   any nn.Module with
              ``log_prob(x, z, context=None)``  log p(x | z), summed over the pixels of
                                                one image:
                                                z is (..., n, L), x is (n, *event_shape),
                                                the result has shape z.shape[:-1];
              ``sample(z, context=None)``       x ~ p(x | z);
              ``mean(z, context=None)``         E[x | z] (what the figures show).
          `Decoder` subclasses only define ``distribution(z, context)``, a
          torch.distributions object over one image (`BernoulliDecoder`,
          `CategoricalDecoder`, `GaussianDecoder`). A decoder that is not factorised
          given z (an autoregressive one, chapter 06) overrides ``log_prob`` and
          ``sample`` instead.
model     `neg_elbo`, `elbo_terms` and `log_likelihood_is` need only
              ``model.encode(x, *cond) -> (mu, logvar)`` and
              ``model.log_px_given_z(x, z, *cond) -> log p(x | z)`` (shape z.shape[:-1]),
          so they work for `VAE`, `CVAE` (cond = the labels y) and any VAE built from
          the two pieces above: ``VAE(encoder=my_encoder, decoder=my_decoder,
          latent_dim=L)``.

Data: digits from `lib.data.digits`, x of shape (n, 1, 8, 8). The Bernoulli decoder models
binarised images (x in {0, 1}), the categorical one the 17 grey levels (x in {0, ..., 16},
kept as floats), the Gaussian one real values with a fixed standard deviation (the L2
loss). Likelihoods are in nats per image; `lib.data.bits_per_dim` converts.

The book's trained models are ``lib.zoo.load("vae/<name>")``; their recipe is
lib/zoo/vae.py.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import Bernoulli, Categorical, Independent, Normal

from lib.checks import float_tensor, gaussian_parameters, one_of, positive_int
from lib.data import IMAGE_SHAPE, LEVELS, PIXELS
from lib.device import drawing_from, seeded
from lib.nets import mlp  # noqa: F401 (re-exported: pages and notebooks use lib.vae.mlp)
from lib.zoo import moved

LOG_2PI = math.log(2 * math.pi)
LIKELIHOODS = ("bernoulli", "categorical", "gaussian")
ARCHS = ("mlp", "conv")

# ----------------------------------------------------------------------------------------
# The two formulas every VAE needs


def gaussian_kl_to_standard(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) for every coordinate, same shape as mu
    (eq-vae-kl):

        KL_j = 1/2 (mu_j^2 + exp(logvar_j) - 1 - logvar_j).

    Sum over the last dimension for the KL of a diagonal Gaussian q(z | x) to N(0, I);
    keep the coordinates apart to see which latent dimensions are in use (chapter 06).
    """
    gaussian_parameters(mu, logvar)
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def reparameterize(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    samples: int | None = None,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """z = mu + exp(logvar / 2) * eps with eps ~ N(0, I) (eq-vae-reparam).

    The noise is drawn independently of mu and logvar, so z is a differentiable function
    of both: gradients of any f(z) reach the encoder. Shape mu.shape, or (samples,
    *mu.shape). generator: a torch.Generator on mu's device, for repeatable draws.
    """
    gaussian_parameters(mu, logvar)
    shape = mu.shape if samples is None else (positive_int("samples", samples), *mu.shape)
    eps = torch.randn(shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + (0.5 * logvar).exp() * eps


# ----------------------------------------------------------------------------------------
# Encoders and decoders: networks that output the parameters of a distribution


class GaussianEncoder(nn.Module):
    """q_phi(z | x) = N(mu, diag exp(logvar)) with (mu, logvar) = net(x): the encoder as a
    distribution parameterisation (eq-vae-encoder).

    net: maps the (scaled) input to 2L numbers; the first L are mu, the last L logvar.
    scale: multiplies x first (1/16 puts grey levels 0..16 in [0, 1]).
    flatten: flatten each image to a vector first (MLPs); ``context`` (e.g. a one-hot
             label) is then appended to it (the CVAE).
    """

    def __init__(self, net: nn.Module, *, scale: float = 1.0, flatten: bool = True):
        super().__init__()
        self.net, self.scale, self.flatten = net, scale, flatten

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None):
        h = x * self.scale
        if self.flatten:
            h = h.flatten(1)
        if context is not None:
            if not self.flatten:
                raise ValueError("a context input needs flatten=True (an MLP encoder)")
            h = torch.cat([h, context.to(h.dtype)], 1)
        mu, logvar = self.net(h).chunk(2, dim=-1)
        return mu, logvar


class Decoder(nn.Module):
    """p_theta(x | z): ``net`` maps z (with the context appended, if any) to the
    parameters of a distribution over one image. Subclasses say which distribution
    (`distribution`).

    net: maps (m, L [+ context]) to (m, event_numel * per_pixel) numbers; leading sample
         dimensions of z are flattened before and restored after.
    """

    per_pixel = 1  # numbers the network outputs for each pixel

    def __init__(self, net: nn.Module, *, event_shape=IMAGE_SHAPE):
        super().__init__()
        self.net, self.event_shape = net, tuple(event_shape)

    def params(
        self, z: torch.Tensor, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The network's output for each z, shape (*z.shape[:-1], *event_shape[,
        per_pixel])."""
        if context is not None:
            z = torch.cat(
                [z, context.to(z.dtype).expand(*z.shape[:-1], context.shape[-1])], -1
            )
        lead = z.shape[:-1]
        out = self.net(z.reshape(-1, z.shape[-1]))
        tail = self.event_shape + ((self.per_pixel,) if self.per_pixel > 1 else ())
        return out.reshape(*lead, *tail)

    def distribution(self, z, context=None):
        raise NotImplementedError

    def log_prob(
        self, x: torch.Tensor, z: torch.Tensor, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        """log p(x | z) summed over the pixels of each image, shape z.shape[:-1]."""
        return self.distribution(z, context).log_prob(x)

    def sample(
        self, z: torch.Tensor, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One image x ~ p(x | z) per z."""
        return self.distribution(z, context).sample().to(z.dtype)

    def mean(self, z: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """E[x | z] per z: the picture of a decoded latent."""
        return self.distribution(z, context).mean.to(z.dtype)


class BernoulliDecoder(Decoder):
    """Each pixel is an independent Bernoulli with logit given by the network (binary
    images):
    -log p(x | z) is the binary cross-entropy, summed over the pixels
    (eq-vae-likelihoods)."""

    def distribution(self, z, context=None):
        logits = self.params(z, context)
        return Independent(
            Bernoulli(logits=logits, validate_args=False), len(self.event_shape)
        )


class CategoricalDecoder(Decoder):
    """Each pixel is an independent categorical over ``levels`` grey levels (softmax of
    the network's ``levels`` logits; eq-vae-likelihoods): a likelihood for discrete
    images that needs no rescaling."""

    def __init__(self, net: nn.Module, *, levels: int = LEVELS, event_shape=IMAGE_SHAPE):
        super().__init__(net, event_shape=event_shape)
        self.levels = self.per_pixel = positive_int("levels", levels)

    def distribution(self, z, context=None):
        logits = self.params(z, context)
        return Independent(
            Categorical(logits=logits, validate_args=False), len(self.event_shape)
        )

    def log_prob(
        self, x: torch.Tensor, z: torch.Tensor, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        """sum_i log softmax(logits_i)[x_i], as `distribution(z).log_prob(x)` but
        through the fused cross-entropy kernel (importance sampling evaluates it for
        millions of pixels)."""
        logits = self.params(z, context)
        target = x.long().expand(logits.shape[:-1]).reshape(-1)
        nll = nn.functional.cross_entropy(
            logits.reshape(-1, self.levels), target, reduction="none"
        )
        return -nll.view(*logits.shape[: -1 - len(self.event_shape)], -1).sum(-1)

    def mean(self, z, context=None):
        probs = self.params(z, context).softmax(-1)
        return (
            probs * torch.arange(self.levels, device=z.device, dtype=probs.dtype)
        ).sum(-1)


class GaussianDecoder(Decoder):
    """Each pixel is N(net(z), std^2) with a fixed std: -log p(x | z) is the squared error
    ||x - net(z)||^2 / (2 std^2) plus a constant (eq-vae-likelihoods): the L2 loss."""

    def __init__(self, net: nn.Module, *, std: float = 0.1, event_shape=IMAGE_SHAPE):
        super().__init__(net, event_shape=event_shape)
        if not std > 0:
            raise ValueError(f"std must be positive, got {std!r}")
        self.std = float(std)

    def distribution(self, z, context=None):
        mean = self.params(z, context)
        return Independent(
            Normal(mean, self.std, validate_args=False), len(self.event_shape)
        )


class PixelHead(nn.Module):
    """The last decoder layer, shared by all pixels (a 1x1 convolution): the
    ``features`` numbers of each pixel pass a LeakyReLU and become ``per_pixel`` outputs
    (logits) through one small weight matrix, plus a bias of each pixel's own. (m,
    pixels * features) -> (m, pixels * per_pixel). Sharing cuts the last layer from
    hidden * pixels * per_pixel weights to features * per_pixel."""

    def __init__(self, features: int, per_pixel: int, pixels: int = PIXELS):
        super().__init__()
        self.features, self.pixels = features, pixels
        self.linear = nn.Linear(features, per_pixel, bias=False)
        self.bias = nn.Parameter(torch.zeros(pixels, per_pixel))

    def forward(self, h):
        h = nn.functional.leaky_relu(h.reshape(len(h), self.pixels, self.features))
        return (self.linear(h) + self.bias).flatten(1)


class _ChannelsLast(nn.Module):
    """(m, C, H, W) -> (m, H * W * C): a conv decoder's output in the MLP decoder's
    layout."""

    def forward(self, h):
        return h.permute(0, 2, 3, 1).flatten(1)


def mlp_encoder_net(in_dim: int, latent_dim: int, hidden: int) -> nn.Module:
    """in_dim -> hidden -> hidden -> 2L."""
    return mlp([in_dim, hidden, hidden, 2 * latent_dim])


def mlp_decoder_net(
    in_dim: int, per_pixel: int, hidden: int, pixel_features: int
) -> nn.Module:
    """in_dim -> hidden -> 64 * pixel_features -> `PixelHead` -> 64 * per_pixel outputs,
    or, with ``pixel_features=0``, a dense last layer: in_dim -> hidden -> hidden -> 64
    * per_pixel."""
    if pixel_features:
        return nn.Sequential(
            mlp([in_dim, hidden, PIXELS * pixel_features]),
            PixelHead(pixel_features, per_pixel),
        )
    return mlp([in_dim, hidden, hidden, PIXELS * per_pixel])


def conv_encoder_net(latent_dim: int, hidden: int, channels: int) -> nn.Module:
    """(1, 8, 8) -conv3x3-> (c, 8, 8) -conv3x3, stride 2-> (2c, 4, 4) -> hidden -> 2L."""
    c = channels
    return nn.Sequential(
        nn.Conv2d(1, c, 3, padding=1),
        nn.LeakyReLU(),
        nn.Conv2d(c, 2 * c, 3, stride=2, padding=1),
        nn.LeakyReLU(),
        nn.Flatten(),
        nn.Linear(2 * c * 16, hidden),
        nn.LeakyReLU(),
        nn.Linear(hidden, 2 * latent_dim),
    )


def conv_decoder_net(
    in_dim: int, per_pixel: int, hidden: int, channels: int
) -> nn.Module:
    """in_dim -> hidden -> (2c, 4, 4) -transposed conv, stride 2-> (c, 8, 8) -conv1x1->
    per_pixel."""
    c = channels
    return nn.Sequential(
        nn.Linear(in_dim, hidden),
        nn.LeakyReLU(),
        nn.Linear(hidden, 2 * c * 16),
        nn.LeakyReLU(),
        nn.Unflatten(1, (2 * c, 4, 4)),
        nn.ConvTranspose2d(2 * c, c, 4, stride=2, padding=1),
        nn.LeakyReLU(),
        nn.Conv2d(c, per_pixel, 1),
        _ChannelsLast(),
    )


def make_decoder(
    likelihood: str,
    in_dim: int,
    *,
    arch: str = "mlp",
    hidden: int = 128,
    pixel_features: int = 8,
    channels: int = 8,
    levels: int = LEVELS,
    std: float = 0.1,
) -> Decoder:
    """A decoder for 8x8 digits with the named likelihood; ``in_dim`` = L (+ the context
    size)."""
    one_of("likelihood", likelihood, LIKELIHOODS)
    one_of("arch", arch, ARCHS)
    per_pixel = levels if likelihood == "categorical" else 1
    if arch == "mlp":
        net = mlp_decoder_net(in_dim, per_pixel, hidden, pixel_features)
    else:
        net = conv_decoder_net(in_dim, per_pixel, hidden, channels)
    if likelihood == "bernoulli":
        return BernoulliDecoder(net)
    if likelihood == "categorical":
        return CategoricalDecoder(net, levels=levels)
    return GaussianDecoder(net, std=std)


# ----------------------------------------------------------------------------------------
# The models


class VAE(nn.Module):
    """A variational autoencoder: prior N(0, I), a `GaussianEncoder` and a `Decoder`.

    likelihood:  "bernoulli" (binary x), "categorical" (grey levels 0..levels-1, as
                 floats) or "gaussian" (real x, fixed ``std``): the decoder's
                 distribution (eq-vae-likelihoods).
    arch:        "mlp": encoder 64 -> hidden -> hidden -> 2L; decoder L -> hidden ->
                 64 * pixel_features -> a `PixelHead` shared by all pixels
                 (``pixel_features=0``:
                 a dense last layer instead, L -> hidden -> hidden -> 64 * outputs).
                 "conv": two convolutions each way around one hidden layer (``channels``).
    beta:        weight of the KL in `loss` (1: the ELBO).
    encoder, decoder: your own modules instead of the built-in ones (see the module
    docstring).
    seed:        seeds the initial weights; the global random state is left untouched.

    ``loss(x)`` is the one-sample AEVB objective (minus the ELBO, averaged over the
    batch); ``sample(n)`` draws z ~ p(z), then x ~ p(x | z) (``mean=True``: E[x | z]
    instead).
    """

    def __init__(
        self,
        likelihood: str = "bernoulli",
        *,
        latent_dim: int = 16,
        arch: str = "mlp",
        hidden: int = 128,
        pixel_features: int = 8,
        channels: int = 8,
        levels: int = LEVELS,
        std: float = 0.1,
        beta: float = 1.0,
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
        context_dim: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        self.latent_dim = positive_int("latent_dim", latent_dim)
        self.likelihood = (
            one_of("likelihood", likelihood, LIKELIHOODS) if decoder is None else "custom"
        )
        one_of("arch", arch, ARCHS)
        positive_int("hidden", hidden)
        self.beta = float(beta)
        with seeded(seed):
            if encoder is None:
                scale = 1.0 / (levels - 1) if likelihood == "categorical" else 1.0
                if arch == "mlp":
                    encoder = GaussianEncoder(
                        mlp_encoder_net(PIXELS + context_dim, latent_dim, hidden),
                        scale=scale,
                    )
                elif context_dim:
                    raise ValueError(
                        "the conv encoder takes no context; use arch='mlp' for a CVAE"
                    )
                else:
                    encoder = GaussianEncoder(
                        conv_encoder_net(latent_dim, hidden, channels),
                        scale=scale,
                        flatten=False,
                    )
            if decoder is None:
                decoder = make_decoder(
                    likelihood,
                    latent_dim + context_dim,
                    arch=arch,
                    hidden=hidden,
                    pixel_features=pixel_features,
                    channels=channels,
                    levels=levels,
                    std=std,
                )
        self.encoder, self.decoder = encoder, decoder

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def _check_x(self, x: torch.Tensor) -> torch.Tensor:
        float_tensor("x", x)
        shape = getattr(self.decoder, "event_shape", None)
        if shape is not None and tuple(x.shape[1:]) != tuple(shape):
            raise ValueError(
                f"x must have shape (n, {', '.join(map(str, shape))}), got "
                f"{tuple(x.shape)}"
            )
        return x

    def encode(self, x: torch.Tensor):
        """(mu, logvar) of q_phi(z | x), each (n, L)."""
        return self.encoder(self._check_x(x))

    def log_px_given_z(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p_theta(x | z) per image, shape z.shape[:-1]."""
        return self.decoder.log_prob(x, z)

    def loss(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The AEVB minibatch objective (eq-vae-aevb): rec + beta * kl averaged over the
        batch, with rec = -log p(x | z) at one z ~ q(z | x) and the KL in closed
        form."""
        rec, kl = elbo_terms(self, x)
        kl = kl.sum(-1)
        return {"loss": (rec + self.beta * kl).mean(), "rec": rec.mean(), "kl": kl.mean()}

    def prior_sample(
        self, n: int, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """z ~ N(0, I), shape (n, L)."""
        return torch.randn(
            positive_int("n", n), self.latent_dim, generator=generator, device=self.device
        )

    def decode(
        self,
        z: torch.Tensor,
        *,
        mean: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Images for latents z: the decoder's mean E[x | z], or a sample x ~ p(x | z)
        (drawn with ``generator`` when given)."""
        with torch.no_grad():
            if mean:
                return self.decoder.mean(z)
            with drawing_from(generator):
                return self.decoder.sample(z)

    def sample(
        self, n: int, *, mean: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """n new images: z ~ p(z), then x ~ p(x | z) (or E[x | z] with ``mean=True``),
        every draw from ``generator`` when given."""
        z = self.prior_sample(n, generator=generator)
        return self.decode(z, mean=mean, generator=generator)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """E[x | z = mu(x)]: the decoder's mean at the encoder's mean."""
        with torch.no_grad():
            return self.decoder.mean(self.encode(x)[0])


class Autoencoder(VAE):
    """The same networks trained as a plain autoencoder: the code is z = mu(x), with no
    noise and no KL, and the loss is -log p(x | z = mu(x)) (the reconstruction error).
    ``logvar`` is computed but unused. Compare with a `VAE` to answer the three
    questions of the chapter."""

    def loss(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        rec = -self.log_px_given_z(x, self.encode(x)[0]).mean()
        return {"loss": rec, "rec": rec}


class CVAE(VAE):
    """A conditional VAE (eq-vae-cvae): encoder q(z | x, y) and decoder p(x | z, y) both
    see the class y (one-hot), so z is left to carry what the label does not say (the
    style).

    ``loss(x, y)``; ``sample(n, y)`` draws n images of each class in y (default: all
    classes). MLP networks only.
    """

    def __init__(
        self,
        likelihood: str = "bernoulli",
        *,
        classes: int = 10,
        latent_dim: int = 16,
        **kwargs,
    ):
        if kwargs.get("arch", "mlp") != "mlp":
            raise ValueError("CVAE supports arch='mlp' only")
        super().__init__(
            likelihood,
            latent_dim=latent_dim,
            context_dim=positive_int("classes", classes),
            **kwargs,
        )
        self.classes = classes

    def _one_hot(self, y: torch.Tensor) -> torch.Tensor:
        if not isinstance(y, torch.Tensor) or y.dtype != torch.long or y.dim() != 1:
            raise TypeError(
                f"y must be a 1-D long tensor of class labels, got "
                f"{getattr(y, 'dtype', type(y).__name__)}"
            )
        # no sync on GPUs
        if y.device.type == "cpu" and len(y) and (y.min() < 0 or y.max() >= self.classes):
            raise ValueError(
                f"labels must lie in 0..{self.classes - 1}, got "
                f"{y.min().item()}..{y.max().item()}"
            )
        return nn.functional.one_hot(y, self.classes).float()

    def encode(self, x: torch.Tensor, y: torch.Tensor):
        return self.encoder(self._check_x(x), self._one_hot(y))

    def log_px_given_z(
        self, x: torch.Tensor, z: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        return self.decoder.log_prob(x, z, self._one_hot(y))

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        rec, kl = elbo_terms(self, x, y)
        kl = kl.sum(-1)
        return {"loss": (rec + self.beta * kl).mean(), "rec": rec.mean(), "kl": kl.mean()}

    def decode(
        self,
        z: torch.Tensor,
        y: torch.Tensor,
        *,
        mean: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        with torch.no_grad():
            c = self._one_hot(y)
            if mean:
                return self.decoder.mean(z, c)
            with drawing_from(generator):
                return self.decoder.sample(z, c)

    def sample(
        self,
        n: int,
        y: torch.Tensor | None = None,
        *,
        mean: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """n images per label in y (default 0..classes-1), grouped by label: (n *
        len(y), 1, 8, 8)."""
        y = (
            torch.arange(self.classes, device=self.device)
            if y is None
            else y.to(self.device)
        )
        z = self.prior_sample(n * len(y), generator=generator)
        return self.decode(z, y.repeat_interleave(n), mean=mean, generator=generator)

    def reconstruct(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.decoder.mean(self.encode(x, y)[0], self._one_hot(y))


# ----------------------------------------------------------------------------------------
# The ELBO and the marginal likelihood, for any model with encode / log_px_given_z


def elbo_terms(model, x: torch.Tensor, *cond, samples: int = 1, generator=None):
    """The two terms of minus the ELBO per image (eq-vae-loss), as a tuple:

        rec  (n,)    -1/S sum_s log p(x | z_s), z_s = reparameterised draws from q(z | x)
        kl   (n, L)  KL(q(z | x) || N(0, I)) per latent coordinate, in closed form.

    Gradients flow to the encoder through both terms.
    """
    mu, logvar = model.encode(x, *cond)
    z = reparameterize(mu, logvar, positive_int("samples", samples), generator=generator)
    rec = -model.log_px_given_z(x, z, *cond).mean(0)
    return rec, gaussian_kl_to_standard(mu, logvar)


def neg_elbo(
    model, x: torch.Tensor, *cond, samples: int = 1, generator=None
) -> torch.Tensor:
    """Minus the ELBO of each image, shape (n,), in nats (eq-vae-loss): -E_q[log p(x | z)]
    estimated with ``samples`` reparameterised draws, plus KL(q(z | x) || N(0, I)) in
    closed form. An upper bound on -log p(x) in expectation."""
    rec, kl = elbo_terms(model, x, *cond, samples=samples, generator=generator)
    return rec + kl.sum(-1)


def _log_standard_normal(z):
    return -0.5 * (z.pow(2) + LOG_2PI).sum(-1)


def log_normal_diag(z, mu, logvar):
    """log N(z; mu, diag exp(logvar)), summed over the last dimension (broadcasting)."""
    return -0.5 * ((z - mu).pow(2) / logvar.exp() + logvar + LOG_2PI).sum(-1)


def log_likelihood_is(
    model,
    x: torch.Tensor,
    *cond,
    K: int = 500,
    chunk: int = 5,
    batch_size: int = 512,
    seed: int = 0,
) -> torch.Tensor:
    """Importance-sampled estimate of log p_theta(x) per image, shape (n,) (eq-vae-is):

        log p(x) ~ log 1/K sum_k p(x | z_k) p(z_k) / q(z_k | x),   z_k ~ q(z | x).

    The estimate is a stochastic lower bound (the IWAE bound L_K) that rises to log p(x)
    as K grows. Samples are drawn ``chunk`` at a time for ``batch_size`` images at a
    time and combined with a running log-sum-exp, so memory stays at chunk * batch_size
    decoder outputs (small chunks stay in a CPU's cache; on a GPU, raise ``chunk`` to
    K). seed: seeds a generator on x's device (repeatable on one device; CPU and CUDA
    differ).
    """
    float_tensor("x", x)
    positive_int("K", K)
    positive_int("chunk", chunk)
    positive_int("batch_size", batch_size)
    generator = torch.Generator(device=x.device).manual_seed(seed)
    out = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            xb = x[start : start + batch_size]
            cb = [c[start : start + batch_size] for c in cond]
            mu, logvar = model.encode(xb, *cb)
            total = torch.full((len(xb),), -math.inf, device=x.device, dtype=mu.dtype)
            for first in range(0, K, chunk):
                z = reparameterize(mu, logvar, min(chunk, K - first), generator=generator)
                log_w = (
                    model.log_px_given_z(xb, z, *cb)
                    + _log_standard_normal(z)
                    - log_normal_diag(z, mu, logvar)
                )
                total = torch.logaddexp(total, torch.logsumexp(log_w, 0))
            out.append(total - math.log(K))
    return torch.cat(out)


def validation_neg_elbo(
    model, x, *cond, samples: int = 10, seed: int = 0
) -> torch.Tensor:
    """The mean of `neg_elbo` over the images, with a fixed seed so that scores are
    comparable."""
    generator = torch.Generator(device=x.device).manual_seed(seed)
    return neg_elbo(model, x, *cond, samples=samples, generator=generator).mean()


# ----------------------------------------------------------------------------------------
# The book's trained models and their recipe: lib.zoo ("vae/<name>", lib/zoo/vae.py).

__getattr__ = moved(
    "vae", ("RECIPE", "REFERENCE_MODELS", "reference_data", "train_reference")
)
