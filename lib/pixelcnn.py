"""Chapter 09: autoregressive image models, PixelCNN and the gated PixelCNN.

An autoregressive model writes the density of an image x with pixels x_1, ..., x_D in
raster order (row by row, left to right) with the chain rule (eq-pixelcnn-chain in
book/09-pixelcnn.md),

    log p(x) = sum_i log p(x_i | x_<i),

and models every conditional with one network that outputs, for each pixel, a categorical
distribution over L levels (grey levels, binary pixels, or the K codes of a VQ-VAE).
Training evaluates all D conditionals in one pass; that needs a network whose output at
pixel i never sees the input at pixels j >= i. Masked convolutions give exactly that:

PixelCNN        a type-A masked convolution (the centre pixel is excluded), then type-B
                masked convolutions (the centre is allowed: it only carries information
                about x_<i). Stacked 3x3 masks grow a receptive field with a blind spot
                to the upper right.
GatedPixelCNN   a vertical stack (everything above the current row) and a horizontal stack
                (the current row, to the left), joined by a down-shift, with gated units
                tanh(a) * sigmoid(b): no blind spot.

Both take integer maps x of shape (n, H, W) or (n, 1, H, W) (long, or float holding whole
numbers, like `lib.data.digits`) with values 0..L-1, embed them, and return logits of
shape (n, L, H, W). Optional conditioning: a class label (``n_classes``, cond of shape
(n,)) or a spatial map (``cond_channels``, cond of shape (n, cond_channels, h, w),
resized to H x W by nearest-neighbour interpolation), e.g. for the prior of a VQ-VAE.

`sample` draws pixels one at a time (one network pass per pixel), skipping the work that
cannot change the result: the gated model's vertical stack runs once per row, and every
pass is cropped to the pixel's receptive field. `dependency_matrix` and
`receptive_field` read a network's causal structure off its input gradients.
The book's digits models are ``lib.zoo.load("pixelcnn/digits17")`` and
``"pixelcnn/digits2"``; their recipe is lib/zoo/pixelcnn.py.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from lib.checks import float_tensor, one_of, positive_int
from lib.data import bits_per_dim
from lib.train import evaluating, show_progress
from lib.zoo import moved

# ----------------------------------------------------------------------------------------
# Causal masks


def causal_mask(kernel_size: int, mask_type: str) -> torch.Tensor:
    """The (k, k) 0/1 mask of a causal convolution in raster order (eq-pixelcnn-mask).

    Entries above the centre row, and left of the centre in the centre row, are 1. Type
    "A" excludes the centre itself (first layer: the output at pixel i must not see
    x_i); type "B" includes it (later layers: the centre only carries information about
    x_<i).
    """
    positive_int("kernel_size", kernel_size)
    if kernel_size % 2 == 0:
        raise ValueError(
            f"kernel_size must be odd (the mask is centred), got {kernel_size}"
        )
    one_of("mask_type", mask_type, ("A", "B"))
    c = kernel_size // 2
    mask = torch.zeros(kernel_size, kernel_size)
    mask[:c] = 1
    mask[c, : c + (mask_type == "B")] = 1
    return mask


def causal_mask_channels(
    kernel_size: int, mask_type: str, in_channels: int, out_channels: int, colors: int = 3
) -> torch.Tensor:
    """The (out_channels, in_channels, k, k) mask of a causal convolution over colour
    images, with the colours of one pixel generated in order (R, then G given R, then B
    given R and G), as in the PixelCNN paper. Both channel counts are split into
    ``colors`` equal groups, group g being colour g. Away from the centre tap the mask
    is ``causal_mask`` for every pair of groups; at the centre, output group g sees
    input group h if h < g (type "A": R sees nothing of the current pixel, G sees R, B
    sees R and G) or h <= g (type "B": each group also sees its own colour's features,
    which by then only carry information about earlier colours). colors=1 gives
    ``causal_mask`` broadcast over the channels.
    """
    base = causal_mask(kernel_size, mask_type)
    positive_int("colors", colors)
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
        positive_int(name, value)
        if value % colors:
            raise ValueError(
                f"{name} must be a multiple of colors = {colors}, got {value}"
            )
    c = kernel_size // 2
    mask = base.clone()
    mask[c, c] = 0
    mask = mask.expand(out_channels, in_channels, kernel_size, kernel_size).clone()
    group_out = torch.arange(out_channels) // (out_channels // colors)
    group_in = torch.arange(in_channels) // (in_channels // colors)
    sees = (
        group_in[None, :] < group_out[:, None]
        if mask_type == "A"
        else group_in[None, :] <= group_out[:, None]
    )
    mask[:, :, c, c] = sees.float()
    return mask


class MaskedConv2d(nn.Conv2d):
    """A k x k convolution whose weights are multiplied by `causal_mask(k, mask_type)`.

    Zero padding of k // 2 keeps the image size. The output at (i, j) depends on inputs at
    rows < i, and in row i on columns < j (type "A") or <= j (type "B").
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        mask_type: str,
        *,
        bias: bool = True,
    ):
        mask = causal_mask(kernel_size, mask_type)
        super().__init__(
            in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias
        )
        self.mask_type = mask_type
        self.register_buffer("mask", mask[None, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", mask_type={self.mask_type!r}"


# ----------------------------------------------------------------------------------------
# The likelihood: a categorical per pixel, summed over the pixels


def categorical_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood in nats per image, shape (n,) (eq-pixelcnn-nll):

        -log p(x) = -sum_{pixels i} log softmax(logits_i)[x_i].

    logits: (n, L, H, W); x: integer map (n, H, W) or (n, 1, H, W) with values 0..L-1.
    Summed over the pixels, not averaged: the chain rule multiplies the conditionals.
    """
    float_tensor("logits", logits, dim=4, shape="(n, L, H, W)")
    x = _as_levels(x, logits.shape[1])
    if x.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(
            f"x must have shape (n, H, W) = {(logits.shape[0], *logits.shape[2:])} "
            f"(or with a channel of 1) to match logits {tuple(logits.shape)}, got "
            f"{tuple(x.shape)}"
        )
    log_p = F.log_softmax(logits, dim=1).gather(1, x[:, None]).squeeze(1)
    return -log_p.flatten(1).sum(1)


def _as_levels(x, levels: int) -> torch.Tensor:
    """Integer map (n, H, W) as long, from (n, H, W) or (n, 1, H, W), long or whole
    floats.

    The values are checked on the CPU only: on an accelerator the check would synchronise
    with the host at every training step (an out-of-range level then fails in the
    embedding).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"x must be a torch.Tensor of integer levels, got {type(x).__name__}"
        )
    if x.dim() == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.dim() != 3:
        raise ValueError(
            f"x must have shape (n, H, W) or (n, 1, H, W), got {tuple(x.shape)}"
        )
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"x must hold integer levels, got dtype {x.dtype}")
    # elsewhere the checks would cost a host sync per step
    check_values = x.device.type == "cpu"
    if check_values and x.is_floating_point() and not torch.equal(x, x.round()):
        raise ValueError(
            "x must hold whole numbers (levels 0..L-1), got fractional values"
        )
    x = x.long()
    if check_values and x.numel() and (x.min() < 0 or x.max() >= levels):
        raise ValueError(
            f"x must hold levels in 0..{levels - 1}, got values in "
            f"{x.min().item()}..{x.max().item()}"
        )
    return x


# ----------------------------------------------------------------------------------------
# Models


class _Autoregressive(nn.Module):
    """What PixelCNN and GatedPixelCNN share: embedding, conditioning, likelihood, loss.

    Subclasses implement `features(e, c)`: logits (n, L, H, W) from the embedded image
    e (n, channels, H, W) and the conditioning map c (or None), and set ``reach`` = (rows
    above, columns either side) that one output pixel can see; `sample` crops to it.
    """

    def __init__(self, levels: int, channels: int, n_classes, cond_channels):
        super().__init__()
        if positive_int("levels", levels) < 2:
            raise ValueError(f"levels must be at least 2, got {levels}")
        positive_int("channels", channels)
        if n_classes is not None and cond_channels is not None:
            raise ValueError(
                "condition on a class label (n_classes) or on a map (cond_channels), "
                "not both"
            )
        self.levels, self.channels = levels, channels
        self.n_classes = (
            None if n_classes is None else positive_int("n_classes", n_classes)
        )
        self.cond_channels = (
            None
            if cond_channels is None
            else positive_int("cond_channels", cond_channels)
        )
        self.embedding = nn.Embedding(levels, channels)

    @property
    def cond_dim(self):
        """Channels of the conditioning map every layer sees (None without
        conditioning)."""
        return self.n_classes or self.cond_channels

    def _cond_projection(self, out_channels: int):
        return (
            None
            if self.cond_dim is None
            else nn.Conv2d(self.cond_dim, out_channels, 1, bias=False)
        )

    def embed(self, x) -> torch.Tensor:
        """Integer map (n, H, W) or (n, 1, H, W) -> embedded image (n, channels, H, W)."""
        return self.embedding(_as_levels(x, self.levels)).permute(0, 3, 1, 2)

    def cond_map(self, cond, n: int, height: int, width: int):
        """The conditioning as a map every layer can add: (n, n_classes, 1, 1) one-hot
        labels, (n, cond_channels, H, W) for a spatial map, or None."""
        if self.cond_dim is None:
            if cond is not None:
                raise ValueError(
                    "this model has no conditioning (n_classes=None, "
                    "cond_channels=None); pass cond=None"
                )
            return None
        if cond is None:
            raise ValueError(
                f"this model is conditional "
                f"({'n_classes' if self.n_classes else 'cond_channels'}="
                f"{self.cond_dim}): pass cond"
            )
        if not isinstance(cond, torch.Tensor):
            raise TypeError(f"cond must be a torch.Tensor, got {type(cond).__name__}")
        if self.n_classes is not None:
            if cond.shape != (n,) or cond.is_floating_point():
                raise ValueError(
                    f"cond must be integer class labels of shape ({n},), got "
                    f"{cond.dtype} {tuple(cond.shape)}"
                )
            if cond.device.type == "cpu" and (
                cond.min() < 0 or cond.max() >= self.n_classes
            ):
                raise ValueError(f"cond must hold labels in 0..{self.n_classes - 1}")
            return F.one_hot(cond.long(), self.n_classes).to(self.embedding.weight.dtype)[
                :, :, None, None
            ]
        float_tensor("cond", cond, dim=4, shape=f"(n, {self.cond_channels}, h, w)")
        if cond.shape[:2] != (n, self.cond_channels):
            raise ValueError(
                f"cond must have shape ({n}, {self.cond_channels}, h, w), got "
                f"{tuple(cond.shape)}"
            )
        if cond.shape[2:] != (height, width):
            cond = F.interpolate(cond, size=(height, width), mode="nearest")
        return cond

    def forward(self, x, cond=None) -> torch.Tensor:
        """Logits (n, L, H, W) of p(x_i | x_<i, cond) for every pixel i, in one pass."""
        e = self.embed(x)
        return self.features(e, self.cond_map(cond, *_nhw(e)))

    def log_prob(self, x, cond=None) -> torch.Tensor:
        """log p(x | cond) in nats, one value per image, shape (n,)
        (eq-pixelcnn-chain)."""
        return -categorical_nll(self(x, cond), x)

    def loss(self, x, y=None) -> dict[str, torch.Tensor]:
        """Mean negative log-likelihood over the batch, in nats per image and in
        bits/dim."""
        nll = -self.log_prob(x, y).mean()
        return {
            "loss": nll,
            "bits_per_dim": bits_per_dim(nll.detach(), x.shape[-1] * x.shape[-2]),
        }

    def sample(self, n: int, shape: tuple[int, int], cond=None, **kwargs) -> torch.Tensor:
        """Draw n images of size shape = (H, W): `lib.pixelcnn.sample` with this model."""
        return sample(self, n, shape, cond, **kwargs)


def _nhw(e):
    return e.shape[0], e.shape[2], e.shape[3]


class PixelCNN(_Autoregressive):
    """The PixelCNN of van den Oord et al. (2016): masked convolutions only
    (eq-pixelcnn-mask).

    embedding -> MaskedConv2d type A (first_kernel) -> `layers` residual blocks
    [ReLU, MaskedConv2d type B (kernel_size)] -> ReLU, 1x1, ReLU, 1x1 -> logits (n, L,
    H, W). Conditioning (when given) is projected by a 1x1 map and added in every block.
    Stacked type-B masks leave a blind spot above-right of each pixel (`receptive_field`
    shows it).
    """

    def __init__(
        self,
        levels: int,
        channels: int = 64,
        layers: int = 6,
        *,
        kernel_size: int = 3,
        first_kernel: int = 5,
        n_classes: int | None = None,
        cond_channels: int | None = None,
    ):
        super().__init__(levels, channels, n_classes, cond_channels)
        self.first = MaskedConv2d(channels, channels, first_kernel, "A")
        self.blocks = nn.ModuleList(
            MaskedConv2d(channels, channels, kernel_size, "B")
            for _ in range(positive_int("layers", layers))
        )
        self.cond = (
            nn.ModuleList(self._cond_projection(channels) for _ in range(layers + 1))
            if self.cond_dim
            else None
        )
        self.head = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, channels, 1),
            nn.ReLU(),
            nn.Conv2d(channels, levels, 1),
        )
        reach = first_kernel // 2 + layers * (kernel_size // 2)
        self.reach = (reach, reach)

    def features(self, e: torch.Tensor, c=None) -> torch.Tensor:
        h = self.first(e)
        if c is not None:
            h = h + self.cond[0](c)
        for k, block in enumerate(self.blocks):
            update = block(F.relu(h))
            h = h + (update if c is None else update + self.cond[k + 1](c))
        return self.head(h)


def down_shift(t: torch.Tensor) -> torch.Tensor:
    """Move a feature map one row down (zeros enter at the top): row i gets row i - 1."""
    return F.pad(t, (0, 0, 1, 0))[:, :, :-1, :]


class GatedLayer(nn.Module):
    """One layer of the gated PixelCNN (eq-pixelcnn-gate), for a vertical stack v and a
    horizontal stack h.

    v: a (k//2 + 1) x k convolution over rows i - k//2 .. i, all within k//2 columns. v
       at row i may see the input's row i; it reaches h only through `down_shift`, one
       row lower.
    h: a 1 x (k//2 + 1) convolution over columns j - k//2 .. j of the current row ("B"),
       or 1 x k//2 over columns j - k//2 .. j - 1 in the first layer ("A"), plus a 1x1
       map of the down-shifted vertical features. Both stacks are gated, tanh(a) *
       sigmoid(b) (with the conditioning added to a and b). Returns the new v and the
       update of h (a 1x1 map of the gated units), which the model adds to h after the
       first layer (a residual).
    """

    def __init__(
        self, channels: int, kernel_size: int, first: bool, cond_dim: int | None
    ):
        super().__init__()
        if kernel_size < 3 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and at least 3, got {kernel_size}")
        p = kernel_size // 2
        self.p, self.first = p, first
        self.vertical = nn.Conv2d(channels, 2 * channels, (p + 1, kernel_size))
        self.horizontal = nn.Conv2d(channels, 2 * channels, (1, p if first else p + 1))
        self.link = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        self.cond_v = (
            None if cond_dim is None else nn.Conv2d(cond_dim, 2 * channels, 1, bias=False)
        )
        self.cond_h = (
            None if cond_dim is None else nn.Conv2d(cond_dim, 2 * channels, 1, bias=False)
        )

    def vertical_step(self, v, c=None):
        """The new vertical stack, and its contribution to the horizontal one (rows
        above only)."""
        # rows i-p..i, columns j-p..j+p
        v_pre = self.vertical(F.pad(v, (self.p, self.p, self.p, 0)))
        link = self.link(down_shift(v_pre))  # rows < i
        if c is not None:
            v_pre = v_pre + self.cond_v(c)
        return _gate(v_pre), link

    def horizontal_step(self, h, link, c=None):
        """The update of the horizontal stack: it mixes nothing across rows, so one row
        at a time gives the same result as the whole image."""
        h_pre = self.horizontal(F.pad(h, (self.p, 0, 0, 0)))
        if self.first:
            # columns j-p..j-1 (type A)
            h_pre = h_pre[..., :-1]
        # else columns j-p..j (type B)
        h_pre = h_pre + link
        if c is not None:
            h_pre = h_pre + self.cond_h(c)
        return self.out(_gate(h_pre))

    def forward(self, v, h, c=None):
        v_new, link = self.vertical_step(v, c)
        return v_new, self.horizontal_step(h, link, c)


def _gate(t: torch.Tensor) -> torch.Tensor:
    a, b = t.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedPixelCNN(_Autoregressive):
    """The gated PixelCNN of van den Oord et al. (2016b), without the blind spot
    (eq-pixelcnn-gate).

    embedding -> `layers` GatedLayers (the first of type A) -> ReLU, 1x1, ReLU, 1x1 on the
    horizontal stack -> logits (n, L, H, W). ``dropout`` (training only) acts on the
    horizontal stack's residual updates, against overfitting on small data.
    """

    def __init__(
        self,
        levels: int,
        channels: int = 64,
        layers: int = 6,
        *,
        kernel_size: int = 3,
        n_classes: int | None = None,
        cond_channels: int | None = None,
        dropout: float = 0.0,
    ):
        super().__init__(levels, channels, n_classes, cond_channels)
        positive_int("layers", layers)
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.layers = nn.ModuleList(
            GatedLayer(channels, kernel_size, k == 0, self.cond_dim)
            for k in range(layers)
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, channels, 1),
            nn.ReLU(),
            nn.Conv2d(channels, levels, 1),
        )
        reach = layers * (kernel_size // 2)
        self.reach = (reach + 1, reach)

    def vertical_links(self, e: torch.Tensor, c=None) -> list[torch.Tensor]:
        """Every layer's contribution from the vertical stack to the horizontal one, (n,
        2C, H, W) each: at row i it depends on rows < i only, so it is fixed once row i
        - 1 is drawn."""
        v, links = e, []
        for layer in self.layers:
            v, link = layer.vertical_step(v, c)
            links.append(link)
        return links

    def horizontal(
        self, e: torch.Tensor, links: list[torch.Tensor], c=None
    ) -> torch.Tensor:
        """Logits from the horizontal stack, given the vertical stack's `links` for the
        same rows."""
        h = e
        for k, (layer, link) in enumerate(zip(self.layers, links)):
            update = layer.horizontal_step(h, link, c)
            h = update if k == 0 else h + self.dropout(update)
        return self.head(h)

    def features(self, e: torch.Tensor, c=None) -> torch.Tensor:
        return self.horizontal(e, self.vertical_links(e, c), c)


# ----------------------------------------------------------------------------------------
# Sampling: one network pass per pixel


def _device(model):
    return next(model.parameters()).device


SAMPLING_BAR_DELAY_S = 2.0  # sampling shows its bar only once it has run this long


def sample(
    model: _Autoregressive,
    n: int,
    shape: tuple[int, int],
    cond=None,
    *,
    argmax: bool = False,
    seed: int | None = None,
    naive: bool = False,
    progress=None,
) -> torch.Tensor:
    """Draw n images of size ``shape`` = (H, W), pixel by pixel in raster order
    (eq-pixelcnn-sampling).

    Returns a long tensor (n, 1, H, W) with levels 0..L-1 on the model's device.
    cond:   labels (n,) or a map (n, cond_channels, h, w), as the model was built for.
    argmax: take the most probable level instead of sampling (deterministic; for tests).
    seed:   seed of the sampling generator (on the model's device); None uses torch's
            global one.
    naive:  run the whole network on the whole image for every pixel (H * W full
            passes). By default the work that cannot change the result is skipped, with
            the same logits:
            GatedPixelCNN runs its vertical stack once per row (it only sees rows above)
            and its horizontal stack on the current row; PixelCNN runs on the pixel's
            causal window. Both crop to the receptive field, so the cost per pixel stops
            growing with the image.
    progress: a tqdm bar over the pixels, for a run that lasts more than
            `SAMPLING_BAR_DELAY_S` (None: as `lib.train.show_progress` decides, so in a
            notebook or a terminal only).
    """
    positive_int("n", n)
    if not (isinstance(shape, (tuple, list)) and len(shape) == 2):
        raise ValueError(f"shape must be (H, W), got {shape!r}")
    H, W = positive_int("shape[0]", shape[0]), positive_int("shape[1]", shape[1])
    device = _device(model)
    generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)
    with evaluating(model), torch.no_grad():
        c = model.cond_map(cond, n, H, W)
        x = torch.zeros(n, H, W, dtype=torch.long, device=device)
        row_cache = not naive and isinstance(model, GatedPixelCNN)
        bar = tqdm(
            total=H * W,
            desc="sampling pixels",
            disable=not show_progress(progress),
            leave=False,
            delay=SAMPLING_BAR_DELAY_S,
        )
        for i in range(H):
            if row_cache:
                links, c_row = _row_links(model, x, c, i)
            for j in range(W):
                if naive:
                    logits = model.features(_embed(model, x), c)[:, :, i, j]
                elif row_cache:
                    logits = _logits_in_row(model, x, links, c_row, i, j)
                else:
                    logits = _logits_in_window(model, x, c, i, j)
                if argmax:
                    x[:, i, j] = logits.argmax(1)
                else:
                    x[:, i, j] = torch.multinomial(
                        torch.softmax(logits.float(), 1), 1, generator=generator
                    )[:, 0]
                bar.update()
        bar.close()
    return x[:, None]


def _embed(model, x):
    # the sampler's levels are valid: no checks, no host sync
    return model.embedding(x).permute(0, 3, 1, 2)


def _crop_rows(c, top, bottom):
    return c[:, :, top:bottom] if c is not None and c.shape[2] > 1 else c


def _row_links(model, x, c, i):
    """The vertical stack's links at row i (fixed once rows < i are drawn), over the
    rows it can see."""
    top = max(0, i - model.reach[0])
    links = model.vertical_links(
        _embed(model, x[:, top : i + 1]), _crop_rows(c, top, i + 1)
    )
    return [link[:, :, -1:] for link in links], _crop_rows(c, i, i + 1)


def _logits_in_row(model, x, links, c_row, i, j):
    """Logits (n, L) at (i, j) from the horizontal stack on row i, columns j -
    reach..j."""
    left = max(0, j - model.reach[1])
    links = [link[..., left : j + 1] for link in links]
    c_row = (
        c_row[..., left : j + 1] if c_row is not None and c_row.shape[-1] > 1 else c_row
    )
    return model.horizontal(_embed(model, x[:, i : i + 1, left : j + 1]), links, c_row)[
        :, :, 0, -1
    ]


def _logits_in_window(model, x, c, i, j):
    """Logits (n, L) at (i, j) from rows i - reach..i and columns within reach of j: the
    output at (i, j) depends on nothing outside, and zero padding at the window's edges
    only changes features that (i, j) never uses."""
    rows, cols = model.reach
    top, left, right = max(0, i - rows), max(0, j - cols), min(x.shape[2], j + cols + 1)
    c = _crop_rows(c, top, i + 1)
    c = c[..., left:right] if c is not None and c.shape[-1] > 1 else c
    return model.features(_embed(model, x[:, top : i + 1, left:right]), c)[
        :, :, i - top, j - left
    ]


def sampling_time(
    model: _Autoregressive,
    n: int,
    shape: tuple[int, int],
    *,
    naive: bool = False,
    repeats: int = 1,
) -> float:
    """Wall-clock seconds of `sample` for n images (the best of ``repeats`` runs; CUDA
    synchronised)."""
    best = math.inf
    for _ in range(positive_int("repeats", repeats)):
        if _device(model).type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        sample(model, n, shape, naive=naive, seed=0)
        if _device(model).type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


# ----------------------------------------------------------------------------------------
# Causality, read off input gradients


def dependency_matrix(f, x: torch.Tensor) -> torch.Tensor:
    """Which inputs each output pixel depends on, from input gradients
    (eq-pixelcnn-causal).

    f: a function from a float tensor (1, C, H, W) to outputs (1, K, H, W); x: the point
    where the gradients are taken. Returns a bool tensor (H*W, H*W), pixels in raster
    order:
    D[i, j] is True when d(sum_k f(x)[0, k, pixel i]) / d x[0, :, pixel j] is not all
    zero. A causal network has D[i, j] False for every j >= i (D is strictly lower
    triangular).
    """
    float_tensor("x", x, dim=4, shape="(1, C, H, W)")
    if x.shape[0] != 1:
        raise ValueError(
            f"x must hold one input, shape (1, C, H, W), got {tuple(x.shape)}"
        )
    H, W = x.shape[2:]
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = f(x)
        if (
            not isinstance(out, torch.Tensor)
            or out.dim() != 4
            or out.shape[0] != 1
            or out.shape[2:] != (H, W)
        ):
            raise ValueError(
                f"f(x) must return a tensor (1, K, {H}, {W}), got "
                f"{getattr(out, 'shape', type(out).__name__)}"
            )
        per_pixel = out.sum(1).flatten()
        rows = [
            torch.autograd.grad(per_pixel[i], x, retain_graph=True)[0]
            for i in range(H * W)
        ]
    return torch.stack([(g != 0).any(1).flatten() for g in rows])


def receptive_field(
    model: _Autoregressive,
    pixel: tuple[int, int],
    shape: tuple[int, int] = (8, 8),
    cond=None,
    *,
    n: int = 4,
    seed: int = 0,
) -> torch.Tensor:
    """The input pixels that the model's logits at ``pixel`` = (i, j) depend on, a bool
    map (H, W).

    Gradients of the summed logits at (i, j) with respect to the embedded input, for ``n``
    random images; a pixel is in the receptive field when any of its gradients is not
    zero.
    """
    H, W = shape
    i, j = pixel
    if not (0 <= i < H and 0 <= j < W):
        raise ValueError(f"pixel must lie in the {H}x{W} image, got {pixel!r}")
    device = _device(model)
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(model.levels, (n, H, W), generator=g).to(device)
    e = model.embed(x).detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model.features(e, model.cond_map(cond, n, H, W))
        (grad,) = torch.autograd.grad(logits[:, :, i, j].sum(), e)
    return (grad != 0).any(1).any(0).cpu()


# ----------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def nll(model: _Autoregressive, x, cond=None, *, batch_size: int = 500) -> torch.Tensor:
    """Mean negative log-likelihood of a data set, in nats per image (a 0-dim tensor)."""
    with evaluating(model):
        total = torch.zeros((), device=_device(model))
        for start in range(0, len(x), batch_size):
            c = None if cond is None else cond[start : start + batch_size]
            total = total - model.log_prob(x[start : start + batch_size], c).sum()
    return total / len(x)


# ----------------------------------------------------------------------------------------
# The book's trained models and their recipe: lib.zoo ("pixelcnn/<name>",
# lib/zoo/pixelcnn.py).

__getattr__ = moved("pixelcnn", ("CONFIGS", "train_digits"))
