"""Helpers for the exercise notebooks' test cells.

A test cell computes the expected answer with an oracle (a closed form, ``torch.distributions``
or a ``lib`` reference), then calls the student's function through `check`, which

1. runs it with the shortcuts blocked: the reference functions that would give the answer
   away raise while the student's code runs (`shortcuts_blocked`);
2. checks the type (exactly ``torch.Tensor``: a subclass or an object whose ``__eq__``
   always says True does not pass), the dtype and the shape before any value;
3. compares values with a tolerance, and on failure says what was called, what came back,
   what was expected, and a hint.

A failed check raises ``AssertionError`` (nbgrader then gives the cell no points).
"""
import importlib
import types
from contextlib import contextmanager

import torch

BLOCKED_PREFIX = "Shortcut blocked while your answer is checked: "


# ----------------------------------------------------------------------------------------
# Blocking shortcuts

def _resolve(dotted: str):
    """'torch.distributions.kl_divergence' -> (owner object, attribute name, current value)."""
    parts = dotted.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            owner = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attr in parts[split:-1]:
            owner = getattr(owner, attr)
        return owner, parts[-1], getattr(owner, parts[-1])
    raise ValueError(f"cannot resolve {dotted!r} to a module attribute")


def _blocked_template(*args, **kwargs):
    raise PermissionError("__MESSAGE__")


def _blocker(dotted: str):
    message = f"{BLOCKED_PREFIX}{dotted} (implement it yourself)"

    def blocked(*args, **kwargs):
        raise PermissionError(message)

    code = _blocked_template.__code__
    consts = tuple(message if c == "__MESSAGE__" else c for c in code.co_consts)
    return blocked, code.replace(co_consts=consts)


@contextmanager
def shortcuts_blocked(*names: str):
    """Make the named functions raise while the block is active.

    Each name is a dotted path such as ``"torch.distributions.kl_divergence"``. The module
    attribute is replaced, and a plain Python function also has its code swapped, so an alias
    imported earlier (``from torch.distributions import kl_divergence``) is blocked too.
    Everything is restored on exit.
    """
    undo = []
    try:
        for dotted in names:
            owner, attr, original = _resolve(dotted)
            blocked, blocked_code = _blocker(dotted)
            setattr(owner, attr, blocked)
            undo.append(lambda o=owner, a=attr, v=original: setattr(o, a, v))
            if isinstance(original, types.FunctionType) and not original.__code__.co_freevars:
                code = original.__code__
                original.__code__ = blocked_code
                undo.append(lambda f=original, c=code: setattr(f, "__code__", c))
        yield
    finally:
        for restore in reversed(undo):
            restore()


# ----------------------------------------------------------------------------------------
# Calling the student's function and comparing

def _short(value, limit: int = 300) -> str:
    if isinstance(value, torch.Tensor):
        with torch.no_grad():
            text = repr(value.detach()) if type(value) is torch.Tensor else f"<{type(value).__name__}>"
    else:
        try:
            text = repr(value)
        except Exception:  # a hostile __repr__ must not break the message
            text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + " ..."


def describe_call(fn, args, kwargs) -> str:
    shown = [_short(a, 120) for a in args] + [f"{k}={_short(v, 120)}" for k, v in kwargs.items()]
    return f"{getattr(fn, '__name__', 'your function')}({', '.join(shown)})"


def _copy(value):
    return value.detach().clone() if isinstance(value, torch.Tensor) else value


def call(fn, *args, blocked=(), **kwargs):
    """Call the student's ``fn`` on copies of the arguments with ``blocked`` shortcuts raising.

    Any exception becomes an ``AssertionError`` that says what was called and what went wrong.
    """
    __tracebackhide__ = True  # IPython and pytest leave this frame out of the student's traceback
    where = describe_call(fn, args, kwargs)
    if not callable(fn):
        raise AssertionError(f"expected a function, got {_short(fn)}")
    try:
        with shortcuts_blocked(*blocked):
            return fn(*map(_copy, args), **{k: _copy(v) for k, v in kwargs.items()})
    except NotImplementedError:
        raise AssertionError(f"{where} raised NotImplementedError: replace "
                             f"`raise NotImplementedError()` with your code.") from None
    except PermissionError as err:
        if str(err).startswith(BLOCKED_PREFIX):
            raise AssertionError(f"{where} called a function that gives the answer away. {err}") from None
        raise AssertionError(f"{where} raised PermissionError: {err}") from err
    except Exception as err:
        raise AssertionError(f"{where} raised {type(err).__name__}: {err}") from err


def expect_close(got, expected: torch.Tensor, *, what: str = "your function", atol: float = 1e-5,
                 rtol: float = 1e-4, hint: str = "") -> None:
    """Assert that ``got`` is a plain float tensor shaped like ``expected`` and close to it.

    Infinite expected values must be matched exactly; NaN never passes.
    """
    __tracebackhide__ = True
    hint = f"\nHint: {hint}" if hint else ""
    if type(expected) is not torch.Tensor:
        raise TypeError(f"the oracle must be a torch.Tensor, got {type(expected).__name__}")
    if type(got) is not torch.Tensor:
        raise AssertionError(f"{what} returned {_short(got)} of type {type(got).__name__}; "
                             f"expected a torch.Tensor of shape {tuple(expected.shape)}.{hint}")
    if not got.is_floating_point():
        raise AssertionError(f"{what} returned a tensor of dtype {got.dtype}; expected a floating-point "
                             f"tensor like {expected.dtype}.{hint}")
    if got.shape != expected.shape:
        raise AssertionError(f"{what} returned a tensor of shape {tuple(got.shape)}; expected shape "
                             f"{tuple(expected.shape)}.{hint}")
    g = got.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    close = torch.isclose(g, e, atol=atol, rtol=rtol)
    if not bool(close.all()):
        raise AssertionError(f"{what} returned\n  {_short(got)}\nbut expected\n  {_short(expected)}\n"
                             f"(tolerance atol={atol:g}, rtol={rtol:g}; {int((~close).sum())} of "
                             f"{close.numel()} entries differ).{hint}")


def check(fn, *args, expected: torch.Tensor, blocked=(), atol: float = 1e-5, rtol: float = 1e-4,
          hint: str = "", **kwargs) -> torch.Tensor:
    """`call` the student's function, then `expect_close` its result; return the result."""
    __tracebackhide__ = True
    got = call(fn, *args, blocked=blocked, **kwargs)
    expect_close(got, expected, what=describe_call(fn, args, kwargs), atol=atol, rtol=rtol, hint=hint)
    return got


def passed(message: str) -> None:
    """Print a self-check's success line (the only output a passing test cell makes)."""
    print(f"\N{CHECK MARK} {message}")
