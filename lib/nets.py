"""Networks shared by the chapters' models."""

from torch import nn


def mlp(sizes, activation=nn.LeakyReLU, *, batch_norm: bool = False) -> nn.Sequential:
    """Linear layers of the given sizes with an activation between them (none after the
    last); ``batch_norm`` puts a BatchNorm1d before each activation."""
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers += [nn.BatchNorm1d(b), activation()] if batch_norm else [activation()]
    return nn.Sequential(*layers)
