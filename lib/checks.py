"""Argument checks shared by every module: a bad input gets an error that names the
argument and says what was expected, before it turns into an obscure shape error deep
inside torch."""

from __future__ import annotations

import torch


def float_tensor(
    name: str,
    value,
    *,
    dim: int | None = None,
    shape: str | None = None,
    nonempty: bool = False,
) -> torch.Tensor:
    """Return `value` if it is a floating-point torch.Tensor (with `dim` dimensions, if
    given; with at least one row, if `nonempty`).

    `shape` is how the error message describes the expected shape, e.g. "(n, d) with
    n >= 1".
    """
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"{name} must be a floating-point torch.Tensor, got {type(value).__name__}"
        )
    if not value.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point torch.Tensor, got dtype {value.dtype}"
        )
    wrong_dim = dim is not None and value.dim() != dim
    empty = nonempty and (value.dim() == 0 or len(value) == 0)
    if wrong_dim or empty:
        expected = (
            f"shape {shape}"
            if shape
            else (f"{dim} dimensions" if wrong_dim else "at least one row")
        )
        raise ValueError(f"{name} must have {expected}, got {tuple(value.shape)}")
    return value


def same_shape(name: str, value: torch.Tensor, like_name: str, like: torch.Tensor):
    """Return `value` if it has the shape of `like` (the argument called `like_name`)."""
    if value.shape != like.shape:
        raise ValueError(
            f"{name} must have {like_name}'s shape {tuple(like.shape)}, got "
            f"{tuple(value.shape)}"
        )
    return value


def is_int(value) -> bool:
    """Whether `value` is an int and not a bool (``True`` is not a step count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(name: str, value) -> int:
    """Return `value` if it is an int >= 1 (bools are rejected)."""
    if not is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def nonnegative_int(name: str, value) -> int:
    """Return `value` if it is an int >= 0 (bools are rejected)."""
    if not is_int(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return value


def int_in(name: str, value, low: int, high: int, why: str = "") -> int:
    """Return `value` if it is an int in low..high (bools are rejected); ``why`` says what
    the bound is, e.g. " (the number of points)"."""
    if not is_int(value) or not low <= value <= high:
        raise ValueError(f"{name} must be an int in {low}..{high}{why}, got {value!r}")
    return value


def one_of(name: str, value, options) -> str:
    """Return `value` if it is one of `options`."""
    if value not in options:
        raise ValueError(f"{name} must be one of {sorted(options)}, got {value!r}")
    return value


def gaussian_parameters(
    mu, logvar=None, *, dim: int | None = None, shape: str | None = None
) -> None:
    """Check the parameters of a diagonal Gaussian N(mu, exp(logvar)): floating-point
    tensors of the same shape (mu with ``dim`` dimensions, described as ``shape``, if
    given)."""
    float_tensor("mu", mu, dim=dim, shape=shape)
    if logvar is not None:
        same_shape("logvar", float_tensor("logvar", logvar), "mu", mu)
