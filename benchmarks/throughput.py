"""Training throughput of `lib.train.fit` against the textbook loop, and PixelCNN
sampling speed.

    .venv/bin/python benchmarks/throughput.py                  # CPU, 8x8 digits
    .venv/bin/python benchmarks/throughput.py --device cuda    # the same on a GPU
    .venv/bin/python benchmarks/throughput.py --size mnist     # 28x28 images
                                                               (MNIST-sized)
    .venv/bin/python benchmarks/throughput.py --size mnist --mnist train-images-idx3-ubyte

The textbook loop is what most course notebooks do: a `DataLoader` over a
`TensorDataset` on the CPU, a `.to(device)` per batch and `loss.item()` every step.
`lib.train.fit` keeps the data on the device, draws minibatches by indexing, and keeps
the loss history there until the end. Both train the same model (same initial weights,
same batch size, same number of steps) on the same data; the table reports samples per
second and their ratio. Each is run once to warm up, then timed. A second table measures
`fit`'s options against plain `fit`: a per-step ``.item()`` (the host sync that `fit`
avoids), bfloat16 autocast (``autocast=True``) and ``torch.compile``
(``compiled=True``).

Models: the digits VAE of chapter 04 (Bernoulli, MLP) and the gated PixelCNN of chapter
09. With ``--size mnist`` the images are 28x28: the local MNIST images when ``--mnist``
names an IDX file (nothing is downloaded), otherwise the digits upsampled to 28x28
(synthetic, same cost).

Also measured: PixelCNN sampling (64 images, images/s) of `lib.pixelcnn.sample` against
naive sampling (recompute the whole image for every pixel), at 8x8 and 28x28. Writes the
sections "Training throughput" and "PixelCNN sampling" of benchmarks/RESULTS.md.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.results import machine, table, write_section  # noqa: E402
from lib.data import digits  # noqa: E402
from lib.pixelcnn import GatedPixelCNN, sampling_time  # noqa: E402
from lib.train import fit  # noqa: E402
from lib.nets import mlp  # noqa: E402
from lib.vae import VAE, BernoulliDecoder, GaussianEncoder  # noqa: E402


def read_idx(path: Path) -> torch.Tensor:
    """Images from an MNIST IDX file (``train-images-idx3-ubyte``), as floats in [0, 1],
    (n, 1, 28, 28)."""
    raw = path.read_bytes()
    if raw[:4] != b"\x00\x00\x08\x03":
        raise ValueError(
            f"{path} is not an IDX file of uint8 images (magic {raw[:4].hex()})"
        )
    n, h, w = np.frombuffer(raw[4:16], dtype=">u4")
    images = np.frombuffer(raw[16 : 16 + n * h * w], dtype=np.uint8).reshape(n, 1, h, w)
    return torch.from_numpy(images.astype(np.float32) / 255)


def images(size: str, mnist: Path | None) -> torch.Tensor:
    """Binary training images: the 1000 8x8 digits, or 28x28 ones (MNIST, or digits
    upsampled)."""
    x, _ = digits("train")
    if size == "digits":
        return (x > 8).float()
    if mnist is not None:
        return (read_idx(mnist)[:10_000] > 0.5).float()
    return (
        F.interpolate(x / 16, size=(28, 28), mode="bilinear", align_corners=False) > 0.5
    ).float()


def vae(side: int) -> VAE:
    if side == 8:
        return VAE("bernoulli", latent_dim=16, seed=0)
    torch.manual_seed(0)
    pixels = side * side
    return VAE(
        latent_dim=16,
        encoder=GaussianEncoder(mlp([pixels, 400, 400, 32])),
        decoder=BernoulliDecoder(
            mlp([16, 400, 400, pixels]), event_shape=(1, side, side)
        ),
    )


def pixelcnn(side: int) -> GatedPixelCNN:
    torch.manual_seed(0)
    return GatedPixelCNN(levels=2, channels=32, layers=6 if side == 8 else 8)


def textbook_loop(
    model, x: torch.Tensor, *, steps: int, batch_size: int, device: torch.device
) -> list[float]:
    """The usual notebook loop: DataLoader on the CPU, .to(device) per batch, .item()
    every step."""
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x.cpu()),
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses, step = [], 0
    model.train()
    while step < steps:
        for (batch,) in loader:
            batch = batch.to(device)
            loss = model.loss(batch)["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step += 1
            if step == steps:
                break
    return losses


def timed(run, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


# name in the tables -> how the model is trained
LOOPS = {
    "textbook": "the textbook loop",
    "fit": "lib.train.fit",
    "item": "fit + .item() per step",
    "bf16": "fit(autocast=True)",
    "compile": "fit(compiled=True)",
}


def synced(model):
    """``model.loss`` followed by a ``.item()``: the host sync of a loop that logs every
    step."""

    def loss(*batch):
        terms = model.loss(*batch)
        terms["loss"].item()
        return terms

    return loss


def throughput(
    make, x: torch.Tensor, *, steps: int, batch_size: int, device: torch.device
) -> dict:
    """Samples per second of every loop in LOOPS, each from the same initial weights."""
    x_device = x.to(device)
    model = make().to(device)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    rate = {}
    for loop in LOOPS:

        def run(n):
            model.load_state_dict(initial)
            if loop == "textbook":
                textbook_loop(model, x, steps=n, batch_size=batch_size, device=device)
            else:
                fit(
                    model,
                    x_device,
                    steps=n,
                    batch_size=batch_size,
                    loss=synced(model) if loop == "item" else None,
                    autocast=loop == "bf16",
                    compiled=loop == "compile",
                )

        # warm-up: allocator, kernels, caches, compilation
        run(min(steps, 20))
        rate[loop] = steps * batch_size / timed(lambda: run(steps), device)
    return rate


def sampling(device: torch.device) -> list[list]:
    rows = []
    for side in (8, 28):
        model = pixelcnn(side).to(device).eval()
        naive = sampling_time(model, 64, (side, side), naive=True)
        fast = sampling_time(model, 64, (side, side))
        rows.append([f"{side}x{side}", 64 / naive, 64 / fast, naive / fast])
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)"
    )
    parser.add_argument("--size", choices=("digits", "mnist"), default="digits")
    parser.add_argument(
        "--mnist", type=Path, help="a local MNIST IDX image file for --size mnist"
    )
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument(
        "--no-sampling", action="store_true", help="skip the PixelCNN sampling benchmark"
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        # the models are small: one thread is the fastest setting here
        torch.set_num_threads(1)
    x = images(args.size, args.mnist)
    side = x.shape[-1]
    models = {
        "VAE (ch. 04)": (lambda: vae(side), args.steps, 100),
        "gated PixelCNN (ch. 09)": (
            lambda: pixelcnn(side),
            max(args.steps // 5, 20),
            64 if side == 8 else 32,
        ),
    }
    goal, options = [], []
    for name, (make, steps, batch_size) in models.items():
        rate = throughput(make, x, steps=steps, batch_size=batch_size, device=device)
        goal.append(
            [
                name,
                f"{tuple(x.shape[1:])}",
                steps,
                batch_size,
                rate["textbook"],
                rate["fit"],
                rate["fit"] / rate["textbook"],
            ]
        )
        options.append(
            [
                name,
                rate["fit"],
                *(
                    f"{rate[k]:.3g} ({rate[k] / rate['fit']:.2f}x)"
                    for k in ("item", "bf16", "compile")
                ),
            ]
        )
    write_section(
        f"Training throughput, {device.type}, {args.size}",
        [
            machine(device),
            "",
            *table(
                [
                    "model",
                    "image",
                    "steps",
                    "batch",
                    f"{LOOPS['textbook']} (samples/s)",
                    f"{LOOPS['fit']} (samples/s)",
                    "ratio",
                ],
                goal,
            ),
            "",
            "Goal on the CPU: lib.train.fit at least 2x the textbook loop.",
            "",
            *table(
                [
                    "model",
                    f"{LOOPS['fit']} (samples/s)",
                    *(
                        f"{LOOPS[k]} (samples/s, vs fit)"
                        for k in ("item", "bf16", "compile")
                    ),
                ],
                options,
            ),
            "",
            "The same steps as above. `.item()` per step: the cost of one host sync "
            "per step. "
            "autocast: bfloat16 autocast; compiled: torch.compile (compilation "
            "excluded: it happens in the warm-up).",
        ],
    )
    if not args.no_sampling:
        write_section(
            f"PixelCNN sampling, {device.type}",
            [
                machine(device),
                "",
                *table(
                    [
                        "image",
                        "naive (images/s)",
                        "lib.pixelcnn.sample (images/s)",
                        "speed-up",
                    ],
                    sampling(device),
                ),
                "",
                "64 images from an untrained gated PixelCNN (the cost does not depend "
                "on the weights).",
            ],
        )


if __name__ == "__main__":
    main()
