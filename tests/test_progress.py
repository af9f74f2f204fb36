"""Progress bars: shown where someone watches (a notebook kernel, a terminal), never in
executed builds. The switch is `lib.train.show_progress`: the ``progress`` argument,
else the environment variable ``DGM_PROGRESS`` (``0`` hides, ``1`` shows), else whether
the code runs in a Jupyter kernel or on a terminal. The tests set ``DGM_PROGRESS=0`` for
every kernel they start (tests/conftest.py), ``make book`` and the grading kernels do
the same."""

import re

import nbformat
import pytest
import torch
from nbclient import NotebookClient

from lib import collapse, gan, pixelcnn, train
from lib.zoo import collapse as collapse_recipe
from tests.course_helpers import ROOT

# ' 40%|████  | 4/10 [00:01<..., 3.2it/s]'
BAR = re.compile(r"\d+%\||\d+(?:\.\d+)?(?:it|s)/(?:s|it)\]|\d+/\d+ \[")
WIDGET = "application/vnd.jupyter.widget-view+json"


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(3))

    def loss(self, x):
        return {"loss": ((x - self.w) ** 2).mean()}


def long_work(name):
    """Each of lib's long-running loops, made short."""
    x = torch.randn(40, 3)
    if name == "fit":
        train.fit(Tiny(), x, steps=5, batch_size=10)
    elif name == "fit_early_stopping":
        train.fit_early_stopping(
            Tiny(),
            (x,),
            (x,),
            lambda m, v: m.loss(v)["loss"],
            steps=6,
            every=2,
            batch_size=10,
        )
    elif name == "train_gan":
        gan.train_gan(
            gan.GAN(2, hidden=8), torch.randn(50, 2), gan.Training(steps=3, batch_size=10)
        )
    elif name == "zoo.collapse.train_variant":
        collapse_recipe.train_variant(
            "plain",
            steps=collapse_recipe.RECIPE["every"],
            x=torch.bernoulli(torch.rand(200, 1, 8, 8)),
            x_val=torch.bernoulli(torch.rand(50, 1, 8, 8)),
        )
    elif name == "collapse.fit_aggressive":
        x = torch.bernoulli(torch.rand(200, 1, 8, 8))
        collapse.fit_aggressive(
            collapse.make_vae("autoregressive", latent_dim=4),
            x,
            x[:50],
            steps=12,
            batch_size=20,
        )
    elif name == "pixelcnn.sample":
        pixelcnn.sample(pixelcnn.PixelCNN(4, channels=8, layers=2), 2, (4, 4), seed=0)


LOOPS = [
    "fit",
    "fit_early_stopping",
    "train_gan",
    "zoo.collapse.train_variant",
    "collapse.fit_aggressive",
    "pixelcnn.sample",
]


@pytest.mark.parametrize("name", LOOPS)
def test_a_bar_appears_when_the_switch_says_interactive(name, monkeypatch, capsys):
    monkeypatch.setenv("DGM_PROGRESS", "1")
    # a real run shows it after 2 s
    monkeypatch.setattr(pixelcnn, "SAMPLING_BAR_DELAY_S", 0.0)
    long_work(name)
    err = capsys.readouterr().err
    assert BAR.search(err), (
        f"{name} showed no tqdm bar with DGM_PROGRESS=1; stderr: {err[-300:]!r}"
    )


@pytest.mark.parametrize("name", LOOPS)
def test_no_bar_when_the_switch_says_executed(name, monkeypatch, capsys):
    monkeypatch.setenv("DGM_PROGRESS", "0")
    monkeypatch.setattr(pixelcnn, "SAMPLING_BAR_DELAY_S", 0.0, raising=False)
    long_work(name)
    captured = capsys.readouterr()
    assert not BAR.search(captured.err + captured.out), (
        f"{name} showed a bar with DGM_PROGRESS=0: {captured.err[-300:]!r}"
    )


def test_pixelcnn_sampling_shows_its_bar_only_when_it_takes_a_while(monkeypatch, capsys):
    monkeypatch.setenv("DGM_PROGRESS", "1")
    # milliseconds
    pixelcnn.sample(pixelcnn.PixelCNN(4, channels=8, layers=2), 2, (4, 4), seed=0)
    assert not BAR.search(capsys.readouterr().err)


def test_the_switch(monkeypatch):
    for value, shown in (
        ("0", False),
        ("false", False),
        ("off", False),
        ("1", True),
        ("yes", True),
        ("on", True),
    ):
        monkeypatch.setenv("DGM_PROGRESS", value)
        assert train.show_progress() is shown, value
        assert train.show_progress(not shown) is (not shown), (
            "the argument wins over the switch"
        )
    monkeypatch.delenv("DGM_PROGRESS")
    monkeypatch.setattr(train, "interactive", lambda: False)
    assert train.show_progress() is False, "unset, not interactive: no bar"
    monkeypatch.setattr(train, "interactive", lambda: True)
    assert train.show_progress() is True, "unset, interactive: a bar"


def test_the_tests_switch_bars_off_for_the_kernels_they_start():
    import os

    assert os.environ.get("DGM_PROGRESS") == "0"


@pytest.mark.slow
def test_in_a_jupyter_kernel_bars_show_by_default_and_the_switch_hides_them(monkeypatch):
    """A kernel started without DGM_PROGRESS, as JupyterLab or Colab starts one: the
    default is to show (a tqdm widget); DGM_PROGRESS=0, as the executed builds set it,
    hides every bar."""
    # the kernel inherits this environment
    monkeypatch.delenv("DGM_PROGRESS", raising=False)
    setup = (
        "import os, torch\n"
        "from lib import train\n"
        "class Tiny(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__(); self.w = torch.nn.Parameter(torch.zeros(3))\n"
        "    def loss(self, x):\n"
        "        return {'loss': ((x - self.w) ** 2).mean()}\n"
        "print('DGM_PROGRESS' in os.environ, train.show_progress())"
    )
    run = "train.fit(Tiny(), torch.randn(40, 3), steps=5, batch_size=10); None"
    hidden = "os.environ['DGM_PROGRESS'] = '0'\nprint(train.show_progress())\n" + run
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(s) for s in (setup, run, hidden)]
    )
    NotebookClient(
        nb,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(ROOT)}},
    ).execute()
    first, shown, off = (cell.outputs for cell in nb.cells)
    assert [o.get("text") for o in first if o.output_type == "stream"] == [
        "False True\n"
    ], first
    assert any(WIDGET in o.get("data", {}) for o in shown), (
        f"no tqdm widget in a kernel by default: {shown}"
    )
    assert not any(WIDGET in o.get("data", {}) for o in off), (
        f"a widget with DGM_PROGRESS=0: {off}"
    )
    assert [o.text for o in off if o.output_type == "stream"] == ["False\n"]
