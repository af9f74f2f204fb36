"""``python -m lib.zoo --list [names]`` and ``python -m lib.zoo --retrain [names]``.

A name may be a model (``vq/prior``), a chapter (``vq``: all of its models) or a shell
pattern (``'gan/ring-*'``); none means every model. Retraining a model also retrains
the models trained on it (the VQ-VAE prior), and runs on one CPU thread: the models are
small, and one thread is the fastest for them and kind to a shared machine. The whole
zoo takes a few hours of one core (the toy GANs most of it).
"""

from __future__ import annotations

import argparse
import time

import torch

from lib import zoo


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m lib.zoo", description="The book's trained models."
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--list", action="store_true", help="list the models")
    action.add_argument(
        "--retrain",
        action="store_true",
        help="train the models again and overwrite their checkpoints",
    )
    parser.add_argument(
        "names", nargs="*", help="models, chapters or patterns (default: all)"
    )
    args = parser.parse_args(argv)
    try:
        chosen = zoo.names(*args.names)
    except ValueError as error:
        parser.error(str(error))
    if args.list:
        for name in chosen:
            file = zoo.path(name)
            size = (
                f"{file.stat().st_size / 2**10:7.0f} KiB" if file.exists() else "missing"
            )
            print(f"{name:28s} {size}  {file.relative_to(zoo.CHECKPOINTS.parents[2])}")
        return
    torch.set_num_threads(1)
    for name in zoo.after(chosen):
        start = time.perf_counter()
        file = zoo.retrain(name)
        print(f"{name}: {time.perf_counter() - start:.0f} s -> {file}", flush=True)


if __name__ == "__main__":
    main()
