"""The book's figures: one style, labelled axes, and helpers each chapter shares."""

import matplotlib.pyplot as plt
import torch

STYLE = {
    "figure.figsize": (6.0, 4.0),
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "font.size": 10,
    "axes.titlesize": 11,
    "legend.frameon": False,
    "image.cmap": "Greys",
}


def use_style() -> None:
    """Apply the course's matplotlib style (`page_setup` does, at the top of each
    chapter)."""
    plt.rcParams.update(STYLE)


def page_setup(seed: int = 0) -> list:
    """What every page of the book starts with: the course's figure style, torch on one
    thread (the models are small: more threads only add overhead, and the book builds on
    a shared 2-core CPU), torch's global generator seeded with ``seed`` (the page's own
    draws repeat build after build), and the empty list in which the page collects its
    measured numbers for the table at its end (`results_table`)."""
    use_style()
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    return []


def image_grid(
    x: torch.Tensor,
    *,
    nrow: int = 8,
    ax=None,
    title: str | None = None,
    vmax: float | None = None,
):
    """Show images of shape (n, 1, H, W) (or (n, H, W)) as one grid, ``nrow`` per row."""
    x = torch.as_tensor(x).detach().float().cpu()
    if x.dim() == 4:
        if x.shape[1] != 1:
            raise ValueError(f"x must have one channel, got shape {tuple(x.shape)}")
        x = x[:, 0]
    if x.dim() != 3:
        raise ValueError(
            f"x must have shape (n, 1, H, W) or (n, H, W), got {tuple(x.shape)}"
        )
    n, h, w = x.shape
    ncol = -(-n // nrow)
    canvas = torch.full((ncol * (h + 1) + 1, nrow * (w + 1) + 1), float("nan"))
    for i in range(n):
        r, c = divmod(i, nrow)
        canvas[
            1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w
        ] = x[i]
    ax = ax or plt.gca()
    ax.imshow(
        canvas.numpy(),
        cmap="Greys",
        vmin=0,
        vmax=vmax if vmax is not None else float(x.max()),
        interpolation="nearest",
    )
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def _plane(ax, title: str | None):
    """Equal axes labelled x_1 and x_2, for points and densities in the plane."""
    ax.set_aspect("equal")
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    if title:
        ax.set_title(title)
    return ax


def scatter_2d(x: torch.Tensor, *, ax=None, title: str | None = None, **kwargs):
    """Scatter plot of points of shape (n, 2)."""
    x = torch.as_tensor(x).detach().cpu()
    if x.dim() != 2 or x.shape[1] != 2:
        raise ValueError(f"x must have shape (n, 2), got {tuple(x.shape)}")
    x = x.numpy()
    ax = ax or plt.gca()
    ax.scatter(
        x[:, 0], x[:, 1], s=kwargs.pop("s", 4), alpha=kwargs.pop("alpha", 0.5), **kwargs
    )
    return _plane(ax, title)


def density_2d(
    log_prob,
    *,
    xlim=(-3, 3),
    ylim=(-3, 3),
    n: int = 150,
    ax=None,
    title: str | None = None,
    filled: bool = False,
    **kwargs,
):
    """Contours of a 2-D density given by ``log_prob(points of shape (m, 2)) -> (m,)``."""
    xs, ys = torch.linspace(*xlim, n), torch.linspace(*ylim, n)
    grid = torch.cartesian_prod(xs, ys)
    with torch.no_grad():
        density = log_prob(grid).exp().reshape(n, n).T
    ax = ax or plt.gca()
    (ax.contourf if filled else ax.contour)(
        xs.numpy(), ys.numpy(), density.numpy(), **kwargs
    )
    return _plane(ax, title)


def curves(
    history: dict,
    *,
    keys=None,
    ax=None,
    smooth: int = 1,
    xlabel: str = "step",
    ylabel: str = "nats",
    title: str | None = None,
):
    """Plot named per-step terms from a training history, optionally with a moving
    average."""
    keys = list(history) if keys is None else list(keys)
    ax = ax or plt.gca()
    for key in keys:
        values = torch.as_tensor(history[key]).float()
        if smooth > 1 and len(values) >= smooth:
            values = values.unfold(0, smooth, 1).mean(1)
        ax.plot(values.numpy(), label=key)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if len(keys) > 1:
        ax.legend()
    if title:
        ax.set_title(title)
    return ax


def latent_manifold(decode, *, n: int = 15, ax=None, title: str | None = None):
    """Decode a 2-D latent grid spaced by the standard Gaussian's quantiles.

    The grid points are Phi^{-1}(u) for u evenly spaced in (0, 1), so equal areas of the
    grid carry equal prior mass (Kingma & Welling's manifold figure). ``decode(z of
    shape (m, 2))`` returns images of shape (m, 1, H, W).
    """
    u = torch.linspace(0.5 / n, 1 - 0.5 / n, n)
    z1 = torch.distributions.Normal(0.0, 1.0).icdf(u)
    z = torch.cartesian_prod(z1.flip(0), z1)[:, [1, 0]]  # rows: z2 from high to low
    with torch.no_grad():
        images = decode(z)
    return image_grid(images, nrow=n, ax=ax, title=title)


def results_table(rows: list[dict], *, digits: int = 4):
    """A Markdown table of measured results for a chapter page (rendered by MyST-NB)."""
    from IPython.display import Markdown

    if not rows:
        raise ValueError("rows must be a non-empty list of dicts")
    columns = list(rows[0])

    def cell(value):
        if isinstance(value, torch.Tensor):
            value = value.item()
        text = f"{value:.{digits}g}" if isinstance(value, float) else str(value)
        # a bare | would split the cell ("|mean|", "p(x|z)")
        return text.replace("|", "\\|")

    lines = [
        "| " + " | ".join(cell(c) for c in columns) + " |",
        "|" + "---|" * len(columns),
    ]
    lines += ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in rows]
    return Markdown("\n".join(lines))
