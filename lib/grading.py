"""Helpers for the exercise notebooks' test cells, on both sides of the grading boundary.

A test cell computes the expected answer with an oracle (a closed form,
``torch.distributions`` or a ``lib`` reference), then calls the student's function
through `check`, which

1. runs it with the shortcuts blocked: the reference functions that would give the answer
   away raise while the student's code runs (`shortcuts_blocked`);
2. checks the type (exactly ``torch.Tensor``: a subclass or an object whose ``__eq__``
   always says True does not pass), the dtype and the shape before any value;
3. compares values with a tolerance, and on failure says what was called, what came back,
   what was expected, and a hint.

A failed check raises ``AssertionError`` (nbgrader then gives the cell no points).

The same test cell runs in two places:

- **In the student's kernel**, when a student runs it: a self-check. The student's
  function is called directly; nothing here is protected from the student, and nothing
  needs to be.
- **In the grader's process** (``course/grader.py``), at grading time. That process
  never runs student code. The student's functions are `Remote`s there: `call` sends
  their inputs to the student's kernel, `serve` runs the function there with the
  shortcuts blocked, and the result comes back as plain data (`encode` on the kernel's
  side, `decode` on the grader's). Oracles, expected values and comparisons stay in the
  grader's process, out of the student's reach.

A `probe` is a test helper that must run next to the student's code (it differentiates
through the student's function, say): `call(probe, ...)` sends its code to the kernel
with the inputs. Probes hold no expected values, and live in the visible part of a test
cell or here. Functions that a test passes to the student's function (an ``f`` to
differentiate) are inputs, and travel the same way.
"""

import base64
import builtins
import importlib
import inspect
import io
import marshal
import numbers
import pickle
import sys
import time
import types
from contextlib import contextmanager

import torch

BLOCKED_PREFIX = "Shortcut blocked while your answer is checked: "
REPLY_MIME = "application/vnd.dgm.grading-reply+json"
REQUEST_KEY = "dgm_grading_request"  # where an execute request carries the grader's call
MAX_REPLY_BYTES = 100 * 2**20  # the largest result a student's function may send back


# ----------------------------------------------------------------------------------------
# Blocking shortcuts


def _resolve(dotted: str):
    """'torch.distributions.kl_divergence' -> (owner object, attribute name, current
    value)."""
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
    attribute is replaced, and a plain Python function also has its code swapped, so an
    alias imported earlier (``from torch.distributions import kl_divergence``) is
    blocked too. Everything is restored on exit.
    """
    undo = []
    try:
        for dotted in names:
            owner, attr, original = _resolve(dotted)
            blocked, blocked_code = _blocker(dotted)
            setattr(owner, attr, blocked)
            undo.append(lambda o=owner, a=attr, v=original: setattr(o, a, v))
            if (
                isinstance(original, types.FunctionType)
                and not original.__code__.co_freevars
            ):
                code = original.__code__
                original.__code__ = blocked_code
                undo.append(lambda f=original, c=code: setattr(f, "__code__", c))
        yield
    finally:
        for restore in reversed(undo):
            restore()


# ----------------------------------------------------------------------------------------
# Calling the student's function and comparing


class Remote:
    """A student's function as the grader's process sees it: calling it runs it in the
    student's kernel (`session.invoke`) and returns the decoded result."""

    def __init__(self, name: str, session):
        self.__name__ = name
        self.session = session

    def __call__(self, *args, **kwargs):
        return self.session.invoke(self, args, kwargs, blocked=())

    def __repr__(self) -> str:
        return f"<your function {self.__name__}>"


class CallFailed(AssertionError):
    """The student's function could not be run or its result could not come back (it never
    returned, returned something that cannot be sent, the kernel stopped answering
    ...)."""


def probe(fn):
    """Mark a test helper that must run in the student's kernel, next to the student's
    code:
    `call(helper, ...)` then sends it there with its inputs (see the module docstring)."""
    fn.__grading_probe__ = True
    return fn


# the grading session, in the grader's process only (set by course/grader.py)
GRADER = None


def _session(fn, args, kwargs):
    """The grading session when this call must run in the student's kernel (the function
    or one of its arguments is the student's, or the function is a probe), else None."""
    for value in (fn, *args, *kwargs.values()):
        if isinstance(value, Remote):
            return value.session
    return GRADER if getattr(fn, "__grading_probe__", False) else None


def _short(value, limit: int = 300) -> str:
    if isinstance(value, torch.Tensor):
        with torch.no_grad():
            text = (
                repr(value.detach())
                if type(value) is torch.Tensor
                else f"<{type(value).__name__}>"
            )
    else:
        try:
            text = repr(value)
        except Exception:  # a hostile __repr__ must not break the message
            text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + " ..."


def describe_call(fn, args, kwargs) -> str:
    shown = [_short(a, 120) for a in args] + [
        f"{k}={_short(v, 120)}" for k, v in kwargs.items()
    ]
    return f"{getattr(fn, '__name__', 'your function')}({', '.join(shown)})"


def _copy(value):
    return value.detach().clone() if isinstance(value, torch.Tensor) else value


def _invoke(fn, args, kwargs, blocked):
    """Run ``fn`` here, or in the student's kernel when a `Remote` is involved."""
    session = _session(fn, args, kwargs)
    if session is not None:
        return session.invoke(fn, args, kwargs, blocked=tuple(blocked))
    with shortcuts_blocked(*blocked):
        return fn(*map(_copy, args), **{k: _copy(v) for k, v in kwargs.items()})


def call(fn, *args, blocked=(), **kwargs):
    """Call the student's ``fn`` on copies of the arguments with ``blocked`` shortcuts
    raising.

    Any exception becomes an ``AssertionError`` that says what was called and what went
    wrong.
    """
    # IPython and pytest leave this frame out of the student's traceback
    __tracebackhide__ = True
    where = describe_call(fn, args, kwargs)
    if not callable(fn):
        raise AssertionError(f"expected a function, got {_short(fn)}")
    try:
        return _invoke(fn, args, kwargs, blocked)
    except CallFailed:
        raise
    except NotImplementedError:
        raise AssertionError(
            f"{where} raised NotImplementedError: replace "
            f"`raise NotImplementedError()` with your code."
        ) from None
    except PermissionError as err:
        if str(err).startswith(BLOCKED_PREFIX):
            raise AssertionError(
                f"{where} called a function that gives the answer away. {err}"
            ) from None
        raise AssertionError(f"{where} raised PermissionError: {err}") from err
    except Exception as err:
        raise AssertionError(f"{where} raised {type(err).__name__}: {err}") from err


def timed_call(fn, *args, blocked=(), **kwargs):
    """`call`, returning ``(result, CPU seconds of the call)``.

    At grading time the seconds are read by the grader from the kernel's process
    accounting (``/proc``), which the student's code cannot change; in a self-check,
    `time.process_time`.
    """
    __tracebackhide__ = True
    session = _session(fn, args, kwargs)
    if session is not None:
        with session.timing() as cpu:
            result = call(fn, *args, blocked=blocked, **kwargs)
        return result, cpu.seconds
    start = time.process_time()
    result = call(fn, *args, blocked=blocked, **kwargs)
    return result, time.process_time() - start


def expect_close(
    got,
    expected: torch.Tensor,
    *,
    what: str = "your function",
    atol: float = 1e-5,
    rtol: float = 1e-4,
    hint: str = "",
) -> None:
    """Assert that ``got`` is a plain float tensor shaped like ``expected`` and close to
    it.

    Infinite expected values must be matched exactly; NaN never passes.
    """
    __tracebackhide__ = True
    hint = f"\nHint: {hint}" if hint else ""
    if type(expected) is not torch.Tensor:
        raise TypeError(
            f"the oracle must be a torch.Tensor, got {type(expected).__name__}"
        )
    if type(got) is not torch.Tensor:
        raise AssertionError(
            f"{what} returned {_short(got)} of type {type(got).__name__}; "
            f"expected a torch.Tensor of shape {tuple(expected.shape)}.{hint}"
        )
    if not got.is_floating_point():
        raise AssertionError(
            f"{what} returned a tensor of dtype {got.dtype}; expected a floating-point "
            f"tensor like {expected.dtype}.{hint}"
        )
    if got.shape != expected.shape:
        raise AssertionError(
            f"{what} returned a tensor of shape {tuple(got.shape)}; expected shape "
            f"{tuple(expected.shape)}.{hint}"
        )
    g = got.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    close = torch.isclose(g, e, atol=atol, rtol=rtol)
    if not bool(close.all()):
        raise AssertionError(
            f"{what} returned\n  {_short(got)}\nbut expected\n  {_short(expected)}\n"
            f"(tolerance atol={atol:g}, rtol={rtol:g}; {int((~close).sum())} of "
            f"{close.numel()} entries differ).{hint}"
        )


def check(
    fn,
    *args,
    expected: torch.Tensor,
    blocked=(),
    atol: float = 1e-5,
    rtol: float = 1e-4,
    hint: str = "",
    **kwargs,
) -> torch.Tensor:
    """`call` the student's function, then `expect_close` its result; return the
    result."""
    __tracebackhide__ = True
    got = call(fn, *args, blocked=blocked, **kwargs)
    expect_close(
        got,
        expected,
        what=describe_call(fn, args, kwargs),
        atol=atol,
        rtol=rtol,
        hint=hint,
    )
    return got


def passed(message: str) -> None:
    """Print a self-check's success line (the only output a passing test cell makes)."""
    print(f"\N{CHECK MARK} {message}")


# ----------------------------------------------------------------------------------------
# Probes: test helpers that run next to the student's code


@probe
def repeated(fn, times: int, *args, **kwargs) -> list:
    """``[fn(*args, **kwargs) for _ in range(times)]``, in one trip to the student's
    kernel."""
    return [fn(*args, **kwargs) for _ in range(times)]


@probe
def sum_gradients(fn, *args, weights=None, **kwargs):
    """``(out, grads)``: the student's ``out = fn(*args, **kwargs)``, with every
    floating-point tensor among ``args`` made a leaf that requires gradients, and the
    gradients of ``(weights * out).sum()`` with respect to those tensors, in order
    (zeros where ``out`` does not depend on one).

    Raises ``AssertionError`` when ``out`` is not a tensor connected to its inputs by
    autograd.
    """
    args = [
        a.detach().clone().requires_grad_()
        if isinstance(a, torch.Tensor) and a.is_floating_point()
        else a
        for a in args
    ]
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    out = fn(*args, **kwargs)
    if type(out) is not torch.Tensor or not out.requires_grad:
        raise AssertionError(
            f"{getattr(fn, '__name__', 'your function')} returned "
            f"{_short(out, 80)}, which autograd does not connect to its inputs: "
            "compute it from them with differentiable torch operations"
        )
    total = (out if weights is None else weights * out).sum()
    grads = torch.autograd.grad(total, leaves, allow_unused=True)
    return out.detach(), tuple(
        torch.zeros_like(x) if g is None else g for x, g in zip(leaves, grads)
    )


@probe
def loss_gradients(loss, model, *args, key: str = "loss"):
    """``(terms, silent)``: the student's ``terms = loss(model, *args)`` (a dict of
    0-dim tensors, detached) and the names of the parameters of ``model`` that
    ``terms[key]`` sends no gradient."""
    terms = loss(model, *args)
    if (
        not isinstance(terms, dict)
        or key not in terms
        or type(terms[key]) is not torch.Tensor
    ):
        return terms, []
    model.zero_grad()
    if terms[key].requires_grad:
        terms[key].backward()
    silent = [
        name
        for name, p in model.named_parameters()
        if p.grad is None or not p.grad.abs().sum() > 0
    ]
    return {
        k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in terms.items()
    }, silent


# ----------------------------------------------------------------------------------------
# The wire: what a student's function may send back, as plain data


class Unsendable(Exception):
    """A result that cannot be sent to the grader; the message says what it was."""


_DTYPES = {
    str(d).removeprefix("torch."): d
    for d in (
        torch.float16,
        torch.bfloat16,
        torch.float32,
        torch.float64,
        torch.complex64,
        torch.complex128,
        torch.uint8,
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.bool,
    )
}


def _plain_config(module: torch.nn.Module) -> dict:
    """The constructor arguments a module keeps as attributes of the same name (ints,
    floats, strings, bools, None, and tuples of them): enough to rebuild it from a
    trusted class."""
    plain = (bool, int, float, str, type(None))
    return {
        k: v
        for k, v in vars(module).items()
        if not k.startswith("_")
        and (
            isinstance(v, plain)
            or isinstance(v, tuple)
            and all(isinstance(x, plain) for x in v)
        )
    }


def encode(value) -> dict | list | str | int | float | bool | None:
    """``value`` as a JSON-able tree: tensors (exactly ``torch.Tensor``), numbers,
    strings, None, lists, tuples and dicts of them, and ``nn.Module``s as (class,
    constructor arguments, ``state_dict``). Anything else raises `Unsendable` with a
    message that names it."""
    budget = [MAX_REPLY_BYTES]

    def tree(v, depth=0):
        if depth > 50:
            raise Unsendable("a structure nested more than 50 levels deep")
        if v is None or isinstance(v, (bool, str)):
            return v
        if isinstance(v, numbers.Integral):
            return int(v)
        if isinstance(v, numbers.Real):
            return float(v)
        if isinstance(v, torch.Tensor):
            if type(v) is not torch.Tensor and type(v) is not torch.nn.Parameter:
                raise Unsendable(
                    f"a tensor subclass ({type(v).__name__}); return a plain torch.Tensor"
                )
            data = v.detach().to("cpu").contiguous()
            size = data.numel() * data.element_size()
            budget[0] -= size
            if budget[0] < 0:
                raise Unsendable(
                    f"tensors of more than {MAX_REPLY_BYTES // 2**20} MB "
                    f"(one of {size / 2**20:.0f} MB)"
                )
            raw = data.reshape(-1).view(torch.uint8).numpy().tobytes() if size else b""
            return {
                "tensor": [
                    str(data.dtype).removeprefix("torch."),
                    list(data.shape),
                    base64.b64encode(raw).decode(),
                ]
            }
        if isinstance(v, torch.Size):
            return {"tuple": [int(x) for x in v]}
        if isinstance(v, (list, tuple)):
            return {
                type(v).__name__ if type(v) in (list, tuple) else "list": [
                    tree(x, depth + 1) for x in v
                ]
            }
        if isinstance(v, dict):
            return {
                "dict": [[tree(k, depth + 1), tree(x, depth + 1)] for k, x in v.items()]
            }
        if isinstance(v, torch.nn.Module):
            classes = [
                f"{c.__module__}.{c.__qualname__}"
                for c in type(v).__mro__
                if issubclass(c, torch.nn.Module)
            ]
            return {
                "module": [
                    classes,
                    tree(_plain_config(v), depth + 1),
                    tree(dict(v.state_dict()), depth + 1),
                ]
            }
        if inspect.isgenerator(v) or inspect.isasyncgen(v):
            raise Unsendable(
                "a generator object (a function with `yield`); return the values "
                "themselves"
            )
        raise Unsendable(f"an object of type {type(v).__module__}.{type(v).__qualname__}")

    return tree(value)


def decode(tree, rebuild=None):
    """The value that `encode` sent, checked node by node; ``rebuild(classes, config,
    state)`` turns an encoded module back into a module of a trusted class (the
    grader's)."""

    def value(node, depth=0):
        if depth > 60:
            raise ValueError("nested too deeply")
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if not (isinstance(node, dict) and len(node) == 1):
            raise ValueError(f"unexpected node of type {type(node).__name__}")
        ((kind, body),) = node.items()
        if kind == "tensor":
            dtype_name, shape, data = body
            dtype = _DTYPES[dtype_name]
            if not (
                isinstance(shape, list)
                and all(isinstance(n, int) and n >= 0 for n in shape)
            ):
                raise ValueError(f"bad tensor shape {shape!r:.80}")
            raw = base64.b64decode(data, validate=True)
            numel = 1
            for n in shape:
                numel *= n
            if len(raw) != numel * torch.empty((), dtype=dtype).element_size():
                raise ValueError("tensor data does not match its shape")
            if not raw:
                return torch.empty(shape, dtype=dtype)
            return torch.frombuffer(bytearray(raw), dtype=dtype).reshape(shape).clone()
        if kind in ("list", "tuple"):
            items = [value(x, depth + 1) for x in body]
            return items if kind == "list" else tuple(items)
        if kind == "dict":
            out = {}
            for k, v in body:
                k = value(k, depth + 1)
                out[k if not isinstance(k, list) else tuple(k)] = value(v, depth + 1)
            return out
        if kind == "module":
            classes, config, state = body
            if rebuild is None:
                raise ValueError("a module, and no way to rebuild it here")
            return rebuild(
                [str(c) for c in classes],
                value(config, depth + 1),
                value(state, depth + 1),
            )
        raise ValueError(f"unknown node {kind!r:.40}")

    return value(tree)


# ----------------------------------------------------------------------------------------
# The kernel's end: run one request, send back one reply


def user_global(name: str):
    """A name in the student's namespace (the kernel's ``__main__``)."""
    return vars(sys.modules["__main__"])[name]


def rebuild_function(code: bytes, name: str, names: dict, defaults, kwdefaults, closure):
    """A test-defined function (a probe, or an ``f`` passed as input), rebuilt from its
    code."""
    env = {"__builtins__": builtins, "__name__": "__main__", **names}
    cells = tuple(types.CellType(v) for v in closure) if closure is not None else None
    fn = types.FunctionType(marshal.loads(code), env, name, defaults, cells)
    fn.__kwdefaults__ = kwdefaults
    return fn


class _Requests(pickle.Unpickler):
    def persistent_load(self, pid):
        kind, name = pid
        if kind != "student":
            raise pickle.UnpicklingError(f"unknown reference {kind!r}")
        return user_global(name)


def _reply(payload: dict) -> None:
    from IPython.display import display

    display({REPLY_MIME: payload}, raw=True)


def serve(request: str | None = None) -> None:
    """Run one request from the grader (a base64 pickle; by default the one in the
    metadata of the execute request that runs this) and display the reply.

    ``("call", fn, args, kwargs, blocked, seed)``: seed torch, run ``fn`` with the
    shortcuts blocked, reply ``{"value": ...}``, ``{"raised": [type, message]}`` or
    ``{"unsendable": why}``. ``("lookup", name)``: is ``name`` defined in the student's
    namespace, and is it callable?
    """
    try:
        if request is None:
            from IPython import get_ipython

            request = get_ipython().kernel.get_parent()["metadata"][REQUEST_KEY]
        op, *rest = _Requests(io.BytesIO(base64.b64decode(request))).load()
    except Exception as err:
        _reply(
            {
                "raised": [
                    type(err).__name__,
                    f"the grader's request could not be read: {err}"[:2000],
                ]
            }
        )
        return
    if op == "lookup":
        (name,) = rest
        namespace = vars(sys.modules["__main__"])
        if name not in namespace:
            _reply({"missing": True})
        elif callable(namespace[name]):
            _reply({"callable": True})
        else:
            _reply_value(namespace[name])
        return
    fn, args, kwargs, blocked, seed = rest
    if seed is not None:
        torch.manual_seed(seed)
    try:
        with shortcuts_blocked(*blocked):
            result = fn(*args, **kwargs)
    except BaseException as err:  # KeyboardInterrupt too: the cell's time limit
        _reply({"raised": [type(err).__name__, _message(err)]})
        return
    _reply_value(result)


def _reply_value(value) -> None:
    """Reply ``{"value": ...}``, or ``{"unsendable": why}`` when it cannot be sent."""
    try:
        _reply({"value": encode(value)})
    except Unsendable as err:
        _reply({"unsendable": str(err)})


def _message(err: BaseException) -> str:
    try:
        return str(err)[:2000]
    except Exception:
        return f"<{type(err).__name__} whose message cannot be read>"


# ----------------------------------------------------------------------------------------
# Tamper evidence (best effort: the student controls the kernel, so this is a courtesy)

_WATCHED = (
    "torch.isclose",
    "torch.allclose",
    "torch.equal",
    "torch.testing.assert_close",
    "torch.Tensor.__eq__",
    "torch.Tensor.__bool__",
    "torch.Tensor.all",
    "torch.Tensor.item",
)
_baseline: dict = {}


def _lib_functions():
    """(dotted name, function) for every function defined in an imported lib module."""
    for name, module in list(sys.modules.items()):
        if name == "lib" or name.startswith("lib."):
            for attr, v in list(vars(module).items()):
                if isinstance(v, types.FunctionType) and v.__module__ == name:
                    yield f"{name}.{attr}", v


def _state() -> dict:
    """What a submission should not change: lib's functions, torch's comparisons,
    builtins and IPython's execution hooks, by identity."""
    state = {}
    for dotted in _WATCHED:
        try:
            state[dotted] = id(_resolve(dotted)[2])
        except Exception:
            state[dotted] = None
    for dotted, v in _lib_functions():
        state[dotted] = (id(v), id(v.__code__))
    # ipykernel sets builtins.input (and getpass) itself before each cell
    state["builtins"] = {
        k: id(v)
        for k, v in vars(builtins).items()
        if not k.startswith("_") and k != "input"
    }
    try:
        shell = get_ipython()  # noqa: F821 (defined in IPython kernels)
    except NameError:
        return state
    state["input transformers"] = len(shell.input_transformers_cleanup) + len(
        shell.input_transformers_post
    )
    state["AST transformers"] = len(shell.ast_transformers)
    state["custom exception handlers"] = bool(shell.custom_exceptions)
    state["showtraceback"] = (
        type(shell).showtraceback is shell.showtraceback.__func__
        if hasattr(shell.showtraceback, "__func__")
        else False
    )
    state["post_run_cell callbacks"] = len(
        shell.events.callbacks.get("post_run_cell", [])
    )
    state["pre_run_cell callbacks"] = len(shell.events.callbacks.get("pre_run_cell", []))
    state["trace function"] = sys.gettrace() is not None or sys.getprofile() is not None
    return state


def tamper_scan(reset: bool = False) -> list[str]:
    """What changed since the last scan (``reset``: only take a new baseline), and
    functions of the student's namespace that carry the code of a ``lib`` function (a
    copied reference)."""
    global _baseline
    now, found = _state(), []
    if not reset:
        for key in sorted(set(now) | set(_baseline), key=str):
            value, old = now.get(key), _baseline.get(key)
            if key == "builtins":
                changed = sorted(
                    k
                    for k in set(value) | set(old or {})
                    if (old or {}).get(k) != value.get(k)
                )
                if changed:
                    found.append(f"builtins changed: {', '.join(changed[:5])}")
            elif key.startswith("lib."):
                # a lib module imported later is no change
                if old is not None and old != value:
                    found.append(f"{key} replaced or rewritten")
            elif old != value:
                found.append(f"{key} changed")
        lib_code = {id(v.__code__): (dotted, id(v)) for dotted, v in _lib_functions()}
        for attr, v in list(vars(sys.modules["__main__"]).items()):
            if isinstance(v, types.FunctionType) and id(v.__code__) in lib_code:
                reference, original = lib_code[id(v.__code__)]
                # not an import: a new function around the reference's code
                if id(v) != original:
                    found.append(
                        f"{attr} runs the code of {reference} (the reference, copied)"
                    )
    _baseline = now
    return found
