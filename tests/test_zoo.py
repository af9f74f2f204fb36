"""lib.zoo: every checkpoint the book uses loads, strictly, into the model its recipe
builds; save and load round-trip bit for bit in the documented precision; a missing
checkpoint names the command that trains it; the command line; the names that moved
to lib.zoo still resolve from the chapter modules and can be blocked."""

import importlib
import re

import pytest
import torch
from torch import nn

from lib import zoo
from lib.diffusion import Diffusion
from lib.gan import GAN
from lib.grading import shortcuts_blocked
from lib.pixelcnn import GatedPixelCNN
from lib.vae import VAE
from lib.vq import VQVAE
from lib.zoo import Model
from lib.zoo.__main__ import main

KIND = {
    "vae": VAE,  # and its subclasses Autoencoder, CVAE
    "collapse": VAE,
    "vq": (VQVAE, GatedPixelCNN),
    "gan": GAN,
    "pixelcnn": GatedPixelCNN,
    "diffusion": Diffusion,
}


@pytest.mark.parametrize("name", zoo.names())
def test_every_checkpoint_the_book_uses_loads(name):
    file = zoo.path(name)
    assert file == zoo.CHECKPOINTS / f"{name}.pt" and file.stat().st_size < 2 * 2**20
    stored = torch.load(file, weights_only=True)
    assert set(stored) == {"state", "history"}
    assert {str(v.dtype) for v in stored["state"].values()} <= {
        "torch.float16",
        "torch.float32",
        "torch.int64",
    }
    model, history = zoo.load(name)  # load_state_dict is strict: every key, every shape
    assert isinstance(model, KIND[name.split("/")[0]]) and not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert isinstance(history, dict) and history
    assert all(isinstance(v, (torch.Tensor, dict)) for v in history.values())


def test_the_registry_follows_one_naming_rule_and_has_no_orphan_files():
    every = zoo.names()
    assert len(every) == len(set(every))
    for name in every:
        assert re.fullmatch(r"[a-z]+/[a-z0-9][a-z0-9.\-]*", name), name
        assert name.split("/")[0] in zoo.CHAPTERS
    on_disk = {
        str(p.relative_to(zoo.CHECKPOINTS).with_suffix(""))
        for p in zoo.CHECKPOINTS.rglob("*.pt")
    }
    assert on_disk == set(every)


def test_names_selects_by_name_chapter_or_pattern():
    assert zoo.names("vq") == [
        "vq/ema-restart",
        "vq/ema",
        "vq/loss-restart",
        "vq/loss",
        "vq/prior",
    ]
    assert zoo.names("gan/ring-*") == [
        f"gan/ring-pack{p}-seed{s}" for p in (1, 2) for s in (0, 1, 2)
    ]
    assert zoo.names("vae/cvae", "pixelcnn") == [
        "vae/cvae",
        "pixelcnn/digits17",
        "pixelcnn/digits2",
    ]
    with pytest.raises(ValueError, match="no model is named 'vae/mnist'"):
        zoo.names("vae/mnist")
    # the prior is trained on the codes of the VQ-VAE: retrained after it
    assert zoo.after(["vq/ema-restart"]) == ["vq/ema-restart", "vq/prior"]
    assert zoo.after(["vq/prior"]) == ["vq/prior"]


def test_bad_names_get_clear_errors():
    with pytest.raises(ValueError, match="'<chapter>/<model>'"):
        zoo.load("plain")
    with pytest.raises(ValueError, match="chapter must be one of"):
        zoo.load("vqvae/ema")
    with pytest.raises(ValueError, match=r"name must be one of \['collapse/factorised'"):
        zoo.load("collapse/free_bits")


def test_a_missing_checkpoint_names_the_command_that_trains_it(tmp_path, monkeypatch):
    monkeypatch.setattr(zoo, "CHECKPOINTS", tmp_path)
    with pytest.raises(FileNotFoundError) as error:
        zoo.load("vq/prior")
    assert "python -m lib.zoo --retrain vq/prior" in str(error.value)
    assert str(tmp_path / "vq" / "prior.pt") in str(error.value)


class Tiny(nn.Module):
    """Parameters, a float32 buffer that float16 cannot hold, an integer buffer and a
    submodule (the part a GAN stores)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.generator = nn.Linear(3, 2)
        self.head = nn.BatchNorm1d(2)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        self.head.running_mean.copy_(torch.tensor([0.1, 1 / 3]))
        self.head.num_batches_tracked.fill_(7)


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """Three tiny models registered in chapter 4's recipe, checkpoints in tmp_path."""
    monkeypatch.setattr(zoo, "CHECKPOINTS", tmp_path)
    recipe = importlib.import_module("lib.zoo.vae")
    trained = Tiny()
    train = lambda progress=None: (trained, {"loss": torch.arange(3.0)})
    for name, kwargs in (
        ("tiny", {}),
        ("tiny-half", {"half": True}),
        ("tiny-part", {"part": "generator"}),
    ):
        monkeypatch.setitem(recipe.MODELS, name, Model(Tiny, train, **kwargs))
    return trained


def test_save_and_load_round_trip_bit_for_bit(tiny):
    model = tiny
    file = zoo.save("vae/tiny", model, {"loss": torch.tensor([2.5, 1.0]), "s": {0: 1}})
    assert file == zoo.CHECKPOINTS / "vae" / "tiny.pt"
    loaded, history = zoo.load("vae/tiny")
    assert not loaded.training and isinstance(loaded, Tiny)
    for key, value in model.state_dict().items():
        got = loaded.state_dict()[key]
        assert got.dtype == value.dtype and torch.equal(got, value), key
    assert torch.equal(history["loss"], torch.tensor([2.5, 1.0]))
    assert history["s"] == {0: 1}
    # stored compactly where that loses nothing: 0.1 and 1/3 are not float16 numbers
    stored = torch.load(file, weights_only=True)["state"]
    assert stored["head.running_var"].dtype == torch.float16  # ones
    assert stored["head.running_mean"].dtype == torch.float32
    assert stored["head.num_batches_tracked"].dtype == torch.int64


def test_a_half_recipe_stores_its_parameters_in_float16_and_buffers_exactly(tiny):
    zoo.save("vae/tiny-half", tiny, {})
    stored = torch.load(zoo.path("vae/tiny-half"), weights_only=True)["state"]
    assert stored["generator.weight"].dtype == torch.float16
    assert stored["head.running_mean"].dtype == torch.float32
    loaded, _ = zoo.load("vae/tiny-half")
    assert torch.equal(loaded.generator.weight, tiny.generator.weight.half().float())
    assert torch.equal(loaded.head.running_mean, tiny.head.running_mean)
    # saving the loaded model again changes nothing
    zoo.save("vae/tiny-half", loaded, {})
    again, _ = zoo.load("vae/tiny-half")
    assert all(
        torch.equal(v, again.state_dict()[k]) for k, v in loaded.state_dict().items()
    )


def test_a_part_is_stored_alone_and_loaded_into_a_fresh_model(tiny):
    zoo.save("vae/tiny-part", tiny, {})
    stored = torch.load(zoo.path("vae/tiny-part"), weights_only=True)["state"]
    assert set(stored) == {"weight", "bias"}
    loaded, _ = zoo.load("vae/tiny-part")
    assert torch.equal(loaded.generator.weight, tiny.generator.weight)


def test_the_command_line(tiny, capsys):
    for argv in ([], ["vae/tiny"], ["--list", "--retrain"], ["--retrain", "vae/mnist"]):
        with pytest.raises(SystemExit):
            main(argv)
    threads = torch.get_num_threads()
    try:
        main(["--retrain", "vae/tiny*"])  # on one thread
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "vae/tiny:" in out and "vae/tiny-half:" in out and "vae/tiny-part:" in out
    assert zoo.path("vae/tiny").exists() and zoo.path("vae/tiny-half").exists()
    main(["--list", "vae"])
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == zoo.names("vae")
    assert "missing" in listed[0] and "KiB" in listed[-1]  # vae/bernoulli: not in tmp


def test_the_recipes_that_moved_still_resolve_from_their_chapter_modules():
    import lib.collapse
    import lib.diffusion
    import lib.gan
    import lib.pixelcnn
    import lib.vae
    import lib.vq

    for chapter, names in {
        "vae": ("RECIPE", "REFERENCE_MODELS", "reference_data", "train_reference"),
        "collapse": ("RECIPE", "VARIANTS", "train_variant"),
        "vq": ("CONFIGS", "RECIPE", "PRIOR", "train_vqvae", "make_prior", "train_prior"),
        "gan": ("TOY_EXPERIMENTS", "TOY_SEEDS", "toy_gan", "digits_gan"),
        "pixelcnn": ("CONFIGS", "train_digits"),
        "diffusion": ("TOY_SEEDS", "CONFIGS", "build", "train_reference"),
    }.items():
        module = importlib.import_module(f"lib.{chapter}")
        recipe = importlib.import_module(f"lib.zoo.{chapter}")
        for name in names:
            assert getattr(module, name) is getattr(recipe, name), (chapter, name)
    with pytest.raises(AttributeError, match="has no attribute 'pretrained'"):
        lib.pixelcnn.pretrained
    from lib.collapse import train_variant  # the exercises' dotted paths

    assert train_variant is importlib.import_module("lib.zoo.collapse").train_variant


def test_the_trained_models_can_be_blocked_while_a_student_function_runs():
    from lib.zoo import load as alias
    from lib.zoo.collapse import train_variant

    with shortcuts_blocked("lib.zoo.load", "lib.collapse.train_variant"):
        with pytest.raises(PermissionError, match="lib.zoo.load"):
            alias("collapse/plain")
        with pytest.raises(PermissionError, match="lib.collapse.train_variant"):
            train_variant("plain", steps=1)
    assert alias("collapse/plain")[0].latent_dim == 16
