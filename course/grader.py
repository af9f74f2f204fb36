"""Grading one notebook: the student's cells run in their kernel, the test cells run here.

`GradingExecute` is nbgrader's Execute preprocessor for untrusted notebooks (named in
nbgrader_config.py, so ``make autograde``, ``nbgrader autograde`` and the formgrader all
take this path). It runs the submission cell by cell:

- **The student's cells** (solutions, cells they added, the setup cell) run in the
  student's kernel, the resource-limited ``dgm-grader`` kernel of `course.sandbox`.
- **The test cells and the demo cells after them** never go to the kernel. Their source is
  taken from the gradebook (what the instructor released, hidden tests included,
  whatever the submission says), and they run in this process, in a namespace of their
  own. The setup cell runs here too, so the test cells find the same data and classes as
  the student's code. A name that no instructor cell defines (the student's functions)
  is looked up in the student's kernel and becomes a `lib.grading.Remote`: calling it
  sends the inputs there, runs the function under the blocked shortcuts, and brings the
  result back as plain data, which `lib.grading.decode` checks node by node. Oracles,
  expected values and comparisons stay here. This process never runs student code, so
  nothing the student's code does in its kernel (patching helpers or torch, reading
  frames or history, IPython hooks) changes a verdict.
- A test cell's outputs are written here, so nbgrader scores the grader's verdict.

Kernel deaths and hangs cost only the cell they happen in (a fresh kernel replays the
student's earlier cells); a notebook that runs too long is stopped; outputs are cut to a
readable size. What a submission changed that grading relies on (torch's comparisons,
``lib``, builtins, IPython's hooks) is reported by the kernel after each student cell
and written to ``.autograde/findings/``: a courtesy to the instructor, never what a
score relies on.
"""

import ast
import base64
import builtins
import copy
import dis
import hashlib
import importlib
import inspect
import io
import json
import linecache
import marshal
import math
import os
import pickle
import threading
import time
import traceback
import types
from contextlib import ExitStack, contextmanager, redirect_stdout
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbclient.util import ensure_async, run_sync
from nbgrader.api import Gradebook
from nbgrader.preprocessors import Execute
from traitlets import Integer

from course import sandbox

# torch and lib.grading take over a second to import. They are imported when a notebook's
# grading starts, by the thread that runs its setup cells while the kernel starts
# (`GradingExecute.preprocess`), not when nbgrader loads this module.
torch = grading = None


def _import_science() -> None:
    """Bind `torch` and `grading` (safe from two threads at once: the second import
    waits for the first)."""
    global torch, grading
    import torch
    from lib import grading


# per student and assignment: what the kernel reported
FINDINGS = Path(".autograde") / "findings"
LOST = {
    DeadKernelError: "the kernel died while running this cell (a crash, os._exit, too "
    "much memory "
    "or too many processes)",
    CellTimeoutError: "this cell ran past its time limit and did not stop when "
    "interrupted",
}


class KernelLost(BaseException):
    """The kernel died or hung during a call from a test cell. A BaseException, so that
    a test cell's ``except Exception`` does not swallow it: the cell scores 0 and the
    kernel is replaced."""

    def __init__(self, kind):
        super().__init__(LOST[kind])
        self.kind = kind


def _error(cell, ename: str, evalue: str, traceback_lines=None) -> None:
    """Give a cell an error output: nbgrader scores a test cell with an error as 0."""
    cell.outputs.append(
        nbformat.v4.new_output(
            "error",
            ename=ename,
            evalue=evalue,
            traceback=traceback_lines or [f"{ename}: {evalue}"],
        )
    )


# ----------------------------------------------------------------------------------------
# The instructor's cells


def bound_names(source: str) -> set[str]:
    """Every name a cell binds anywhere (assignments, defs, imports, loop targets,
    parameters)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.alias):
            names.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
    return names


class Trusted:
    """The instructor's code cells of one notebook, in the release's order, with the
    sources the gradebook holds: ``setup`` (locked cells before the first test),
    ``tests`` and ``demos`` (locked cells after it)."""

    def __init__(self, resources: dict, release_directory: str):
        info = resources["nbgrader"]
        assignment, notebook = info["assignment"], info["notebook"]
        with Gradebook(info["db_url"]) as gb:
            nb = gb.find_notebook(notebook, assignment)
            sources = {c.name: (c.cell_type, c.locked, c.source) for c in nb.source_cells}
            solutions = {c.name for c in nb.solution_cells}
            graded = {c.name for c in nb.grade_cells} - solutions
        release = Path(release_directory) / assignment / f"{notebook}.ipynb"
        if release.exists():
            order = [
                c.metadata.get("nbgrader", {}).get("grade_id")
                for c in nbformat.read(release, as_version=4).cells
            ]
        else:  # graded without the release at hand: the gradebook's own order
            order = list(sources)
        self.setup, self.tests, self.demos = {}, {}, {}
        for name in order:
            kind, locked, source = sources.get(name, (None, False, ""))
            if kind != "code" or name in solutions:
                continue
            if name in graded:
                self.tests[name] = source
            elif locked:
                (self.demos if self.tests else self.setup)[name] = source
        self.names = set().union(*(bound_names(s) for s in self.all_sources().values()))

    def all_sources(self) -> dict[str, str]:
        return {**self.setup, **self.tests, **self.demos}


class Namespace(dict):
    """The test cells' globals. A name that no instructor cell binds and that is not a
    builtin is looked up in the student's kernel (`Session.lookup`); nothing else ever
    comes from there."""

    def __init__(self, trusted_names: set[str], session: "Session"):
        super().__init__(__name__="__main__", __builtins__=builtins)
        self.trusted_names = trusted_names
        self.session = session
        self.from_kernel: set[str] = set()
        self.offline = False  # while the setup cells run: nothing comes from the kernel

    def __missing__(self, name):
        if (
            self.offline
            or name in vars(builtins)
            or name in self.trusted_names
            or name.startswith("__")
        ):
            raise KeyError(name)
        # raises KeyError when the kernel has no such name
        value = self.session.lookup(name)
        self[name] = value
        self.from_kernel.add(name)
        return value

    def forget_kernel_values(self) -> None:
        """Drop what was fetched from the kernel: the next test cell sees the kernel as
        it is then."""
        for name in self.from_kernel:
            self.pop(name, None)
        self.from_kernel.clear()


# ----------------------------------------------------------------------------------------
# Requests to the student's kernel


def _global_loads(code: types.CodeType) -> set[str]:
    names = {
        i.argval
        for i in dis.get_instructions(code)
        if i.opname in ("LOAD_GLOBAL", "LOAD_NAME")
    }
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_loads(const)
    return names


class _Request(pickle.Pickler):
    """Pickles a call for the kernel: the student's functions by name, modules by name,
    and the functions and classes of the test cells by their code and the globals they
    read."""

    def __init__(self, file, namespace: Namespace):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.namespace = namespace

    def persistent_id(self, obj):
        return ("student", obj.__name__) if isinstance(obj, grading.Remote) else None

    def reducer_override(self, obj):
        if isinstance(obj, types.ModuleType):
            return importlib.import_module, (obj.__name__,)
        if getattr(obj, "__module__", None) != "__main__":
            return NotImplemented
        # a class of the setup cell: the kernel has the same one
        if isinstance(obj, type):
            return grading.user_global, (obj.__qualname__,)
        if isinstance(obj, types.FunctionType):
            names = {}
            for name in sorted(_global_loads(obj.__code__)):
                try:
                    names[name] = self.namespace[name]
                except KeyError:
                    continue
            closure = (
                [c.cell_contents for c in obj.__closure__] if obj.__closure__ else None
            )
            return grading.rebuild_function, (
                marshal.dumps(obj.__code__),
                obj.__name__,
                names,
                obj.__defaults__,
                obj.__kwdefaults__,
                closure,
            )
        return NotImplemented


class Session:
    """The grader's end of the conversation with one student's kernel."""

    def __init__(self, client: "GradingExecute"):
        self.client = client
        self.namespace: Namespace | None = None
        self.calls = 0
        # what the student's functions printed, for the test cell's output
        self.streams: list = []

    def _send(self, request: tuple) -> dict:
        buffer = io.BytesIO()
        _Request(buffer, self.namespace).dump(request)
        return self.client.request(buffer.getvalue(), self.streams)

    def lookup(self, name: str):
        reply = self._send(("lookup", name))
        if reply.get("missing"):
            raise KeyError(name)
        if reply.get("callable"):
            return grading.Remote(name, self)
        if "unsendable" in reply:
            raise grading.CallFailed(
                f"`{name}` in your notebook is {reply['unsendable']}, which "
                "cannot be sent to the grader"
            )
        return self._decode(reply, name)

    def _seed(self) -> int:
        """A seed for the call from the grader's torch state, without drawing from it:
        the same test cell seeds the same calls, and the test's own draws are left as
        they were."""
        self.calls += 1
        state = torch.random.get_rng_state().numpy().tobytes() + self.calls.to_bytes(
            8, "little"
        )
        return int.from_bytes(hashlib.sha256(state).digest()[:7], "little")

    def invoke(self, fn, args, kwargs, blocked=(), seed: int | None = -1):
        """Run ``fn(*args, **kwargs)`` in the kernel with ``blocked`` shortcuts raising,
        torch seeded from the grader's state (``seed=None``: not seeded)."""
        where = grading.describe_call(fn, args, kwargs)
        seed = self._seed() if seed == -1 else seed
        try:
            reply = self._send(
                ("call", fn, tuple(args), dict(kwargs), tuple(blocked), seed)
            )
        except (pickle.PicklingError, TypeError, AttributeError) as err:
            raise grading.CallFailed(
                f"the grader could not send the inputs of {where}: {err}"
            ) from None
        if "raised" in reply:
            name, message = reply["raised"]
            if name == "KeyboardInterrupt":
                raise grading.CallFailed(
                    f"{where} did not return within the cell's time limit "
                    f"({self.client.timeout} s for the whole cell)"
                )
            raise _exception_type(str(name))(str(message))
        if "unsendable" in reply:
            raise grading.CallFailed(
                f"{where} returned {reply['unsendable']}, which cannot be sent "
                "to the grader: return torch tensors, numbers, strings, or "
                "lists, tuples and dicts of them"
            )
        return self._decode(reply, where)

    def _decode(self, reply: dict, where: str):
        try:
            return grading.decode(reply["value"], self._rebuild)
        except grading.CallFailed:
            raise
        except Exception as err:
            raise grading.CallFailed(
                f"the result of {where} could not be read "
                f"({type(err).__name__}: {str(err)[:200]})"
            ) from None

    def _rebuild(
        self, classes: list[str], config: dict, state: dict
    ) -> "torch.nn.Module":
        """A module that came back as (classes, config, state_dict), rebuilt from the
        nearest class in its hierarchy that the instructor's cells or ``lib`` define."""
        for qualified in classes:
            module_name, _, qualname = qualified.rpartition(".")
            cls = None
            if module_name == "__main__" and qualname in self.namespace.trusted_names:
                cls = dict.get(self.namespace, qualname)
            elif (
                module_name == "lib" or module_name.startswith("lib.")
            ) and "." not in qualname:
                cls = getattr(importlib.import_module(module_name), qualname, None)
            if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
                continue
            wanted = inspect.signature(cls).parameters
            kwargs = {k: v for k, v in config.items() if k in wanted}
            # the shapes first: a forged config cannot exhaust memory
            with torch.device("meta"):
                shapes = {
                    k: tuple(v.shape) for k, v in cls(**kwargs).state_dict().items()
                }
            got = {
                k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)
            }
            if shapes != got:
                raise grading.CallFailed(
                    f"returned a {qualname} whose weights do not match "
                    f"{qualname}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
                )
            model = cls(**kwargs)
            model.load_state_dict(state, strict=True)
            return model
        raise grading.CallFailed(
            f"returned a model of class {classes[0]}, which the grader cannot "
            "rebuild: return a model of a class that the notebook's setup or "
            "lib defines"
        )

    @contextmanager
    def timing(self):
        """CPU seconds of the kernel and everything it started, read from /proc."""
        box = types.SimpleNamespace(seconds=0.0)
        start = self.client.kernel_cpu_seconds()
        yield box
        box.seconds = self.client.kernel_cpu_seconds() - start


_EXCEPTIONS: dict[str, type] = {}


def _exception_type(name: str) -> type:
    """The builtin exception of that name, or an Exception subclass named like the
    student's."""
    found = getattr(builtins, name, None)
    if (
        isinstance(found, type)
        and issubclass(found, Exception)
        and found is not grading.CallFailed
    ):
        return found
    return _EXCEPTIONS.setdefault(
        name, type(name if name.isidentifier() else "Error", (Exception,), {})
    )


# ----------------------------------------------------------------------------------------
# The preprocessor


class GradingExecute(Execute):
    """nbgrader's Execute for untrusted notebooks: see the module docstring."""

    notebook_timeout = Integer(
        600, help="Seconds for the whole notebook; cells after it get an error."
    ).tag(config=True)
    max_kernel_restarts = Integer(
        3, help="Kernel deaths tolerated before the remaining cells are given up."
    ).tag(config=True)
    max_output_chars = Integer(10_000, help="Characters kept of each output.").tag(
        config=True
    )
    max_outputs = Integer(50, help="Outputs kept per cell.").tag(config=True)

    def preprocess(self, nb, resources=None, km=None):
        NotebookClient.__init__(self, nb, km)
        self.reset_execution_trackers()
        self._check_assign_resources(resources)
        sandbox.prepare()  # the kernelspec and, as root, the unprivileged user
        # the kernel's launcher hides its secrets
        os.environ["DGM_COURSE_ROOT"] = os.getcwd()
        # no progress bars in graded notebooks (lib.train.show_progress)
        os.environ["DGM_PROGRESS"] = "0"
        release_directory = self.config.CourseDirectory.get(
            "release_directory", "release"
        )
        self.trusted = Trusted(self.resources, release_directory)
        self.session = Session(self)
        self.session.namespace = Namespace(self.trusted.names, self.session)
        self.findings: list[str] = []
        deadline = self._deadline = time.monotonic() + self.notebook_timeout
        self._cell_deadline = None  # while an instructor cell runs here (`_run_here`)
        # The setup cells run here while the kernel starts and runs the student's first
        # cells: importing lib and loading data would otherwise be seconds of waiting at
        # the first test cell.
        self._setup = threading.Thread(target=self._run_setup, daemon=True)
        self._setup.start()
        todo = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"]
        ran, restarts = [], 0
        while todo:
            with self._started_kernel():
                _import_science()  # done by now in the setup thread, unless it failed
                # probes called from the test cells run in the kernel
                grading.GRADER = self.session
                try:
                    self._kernel_request_report(reset=True)
                    # a fresh kernel after a death: restore the state (from copies:
                    # the outputs written stay)
                    if ran:
                        for i in ran:
                            self.execute_cell(
                                copy.deepcopy(nb.cells[i]), i, store_history=False
                            )
                        self._kernel_request_report(reset=True)
                except (DeadKernelError, CellTimeoutError, KernelLost):
                    self._give_up(
                        todo,
                        "the kernel was lost again while re-running the cells before "
                        "this one",
                    )
                    break
                while todo:
                    i = todo.pop(0)
                    cell = nb.cells[i]
                    if time.monotonic() > deadline:
                        self._give_up(
                            [i, *todo],
                            f"the notebook ran past its {self.notebook_timeout} s limit",
                        )
                        todo = []
                        break
                    name = cell.metadata.get("nbgrader", {}).get("grade_id")
                    try:
                        if name in self.trusted.tests or name in self.trusted.demos:
                            self._run_here(cell, name)
                        else:
                            self.preprocess_cell(cell, resources, i)
                            ran.append(i)
                            self._kernel_request_report(
                                reset=name in self.trusted.setup,
                                cell_name=name or f"cell {i}",
                            )
                    except (DeadKernelError, CellTimeoutError, KernelLost) as lost:
                        kind = lost.kind if isinstance(lost, KernelLost) else type(lost)
                        # a timeout may hide a death
                        kind = kind if self._kernel_alive() else DeadKernelError
                        _error(
                            cell,
                            kind.__name__,
                            LOST[kind] + "; the cells after it ran in a fresh kernel",
                        )
                        restarts += 1
                        if restarts > self.max_kernel_restarts:
                            self._give_up(todo, f"the kernel died {restarts} times")
                            todo = []
                        # leaving the block cleans up the dead kernel; the loop starts a
                        # new one
                        break
                    finally:
                        self._truncate(cell)
        self.set_widgets_metadata()
        self._write_findings()
        return self.nb, self.resources

    start_tries = Integer(
        3, help="Tries to start a kernel before the notebook's grading fails."
    ).tag(config=True)

    @contextmanager
    def _started_kernel(self):
        """`setup_kernel`, tried `start_tries` times: a start can fail for reasons that
        are not the student's (two graders' kernels racing for the same ports, a busy
        machine). If every try fails, the grading of this notebook fails with the
        reason, and is not recorded as done, so the next ``autograde`` grades it again;
        no student's cell is scored for it."""
        for attempt in range(1, self.start_tries + 1):
            stack = ExitStack()
            try:
                stack.enter_context(self.setup_kernel())
                if self.wait_for_reply(self.kc.kernel_info()) is None:
                    raise RuntimeError("no reply to kernel_info")
                break
            except Exception as err:
                stack.close()
                if attempt == self.start_tries:
                    raise RuntimeError(
                        f"the grading kernel did not start ({attempt} tries; last: "
                        f"{type(err).__name__}: {err})"
                    ) from err
                self.log.warning(
                    "the grading kernel did not start (%s); trying again", err
                )
                time.sleep(attempt)
        with stack:
            yield

    # -- the kernel's side
    # -------------------------------------------------------------------

    def request(self, payload: bytes, streams: list) -> dict:
        """Send one pickled request to the kernel's `lib.grading.serve`; return its
        reply."""
        now = time.monotonic()
        if now > self._deadline:
            raise grading.CallFailed(
                f"the notebook ran past its {self.notebook_timeout} s limit"
            )
        # A cell's time limit holds for the whole cell, however many calls it makes:
        # each call gets what the cell has left.
        limit = self.timeout
        if self._cell_deadline is not None:
            left = self._cell_deadline - now
            if left <= 0:
                raise grading.CallFailed(
                    f"the cell ran past its time limit ({limit} s for the whole cell)"
                )
            self.timeout = max(1, min(limit, math.ceil(left)))
        # The payload rides in the request's metadata, not in the code: IPython reads a
        # cell's source through its input transformers, about 0.4 s per MB.
        cell = nbformat.v4.new_code_cell("__import__('lib.grading').grading.serve()")
        request = base64.b64encode(payload).decode()

        def execute(code, **options):
            content = dict(code=code, silent=False, store_history=False)
            content.update(options, user_expressions={}, allow_stdin=False)
            message = self.kc.session.msg("execute_request", content)
            message["metadata"][grading.REQUEST_KEY] = request
            self.kc.shell_channel.send(message)
            return message["header"]["msg_id"]

        # nbclient writes it back
        notebook, self.nb = self.nb, nbformat.v4.new_notebook(cells=[cell])
        self.kc.execute = execute
        try:
            self.execute_cell(cell, 0, store_history=False)
        except (DeadKernelError, CellTimeoutError) as lost:
            raise KernelLost(type(lost)) from None
        finally:
            self.nb, self.timeout = notebook, limit
            del self.kc.execute  # the client's own again
        reply, errors = None, []
        for output in cell.outputs:
            if output.get("output_type") == "stream":
                streams.append(output)
            elif output.get("output_type") == "error":
                errors.append(f"{output.get('ename')}: {str(output.get('evalue'))[:200]}")
                if output.get("ename") == "CellTimeoutError":
                    raise grading.CallFailed(
                        "your code did not return within the cell's time limit "
                        f"({self.timeout} s for the whole cell)"
                    )
            elif isinstance(output.get("data", {}).get(grading.REPLY_MIME), dict):
                reply = output["data"][grading.REPLY_MIME]
        if reply is None:
            raise grading.CallFailed(
                "your kernel sent no answer to the grader's call"
                + (f" ({'; '.join(errors)})" if errors else "")
                + ": has code in your notebook changed how cells run?"
            )
        return reply

    def _kernel_request_report(self, reset: bool, cell_name: str = "") -> None:
        """Ask the kernel what changed that grading relies on (best effort: it may
        lie)."""
        try:
            found = self.session.invoke(grading.tamper_scan, (reset,), {}, seed=None)
        except Exception:
            found = [
                "the kernel no longer answers the grader (were IPython's execution "
                "hooks changed?)"
            ]
        if not reset and isinstance(found, list):
            for what in found[:10]:
                if not any(f.endswith(f": {what}") for f in self.findings):
                    self.findings.append(f"{cell_name}: {str(what)[:200]}")

    async def _async_kernel_alive(self) -> bool:
        return bool(await ensure_async(self.km.is_alive()))

    _kernel_alive = run_sync(_async_kernel_alive)

    def kernel_cpu_seconds(self) -> float:
        """CPU seconds used by the kernel and every process below the supervisor,
        including those it reaped (a student's code that forks the work out is counted
        too)."""
        supervisor = getattr(self.km.provisioner, "pid", None) if self.km else None
        if supervisor is None:
            return 0.0
        ticks = os.sysconf("SC_CLK_TCK")
        total = sandbox.cpu_ticks(supervisor, own=False)
        for pid in sandbox.descendants(supervisor):
            total += sandbox.cpu_ticks(pid)
        return total / ticks

    # -- the grader's side
    # -------------------------------------------------------------------

    def _run_here(self, cell, name: str) -> None:
        """Run an instructor cell in this process (the setup first, once); write its
        outputs."""
        namespace = self.session.namespace
        self._setup.join(max(0.0, self._deadline - time.monotonic()))
        namespace.forget_kernel_values()
        outputs = []
        self._cell_deadline = time.monotonic() + self.timeout
        try:
            self._exec(self.trusted.all_sources()[name], name, outputs)
        finally:
            self._cell_deadline = None
        cell.outputs = outputs

    def _run_setup(self) -> None:
        """The setup cells, in this process, in a thread of their own (`preprocess`).
        While they run, a name they do not bind is not looked up in the kernel (the
        main thread is talking to it); what they print or raise is dropped."""
        namespace = self.session.namespace
        namespace.offline = True
        try:
            _import_science()
            for name, source in self.trusted.setup.items():
                filename = f"<grader: {name}>"
                lines = source.splitlines(True)
                linecache.cache[filename] = (len(source), None, lines, filename)
                try:
                    exec(compile(source, filename, "exec"), namespace)
                except BaseException as err:
                    self.log.warning("the setup cell %s failed here: %r", name, err)
        finally:
            namespace.offline = False

    def _exec(self, source: str, name: str, outputs: list) -> None:
        filename = f"<grader: {name}>"
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        printed = io.StringIO()
        streams = self.session.streams = []
        try:
            with redirect_stdout(printed):
                exec(compile(source, filename, "exec"), self.session.namespace)
        except KernelLost:
            raise
        # a failed check, or any error in the test: the cell scores 0
        except BaseException as err:
            frames = [
                f
                for f in traceback.extract_tb(err.__traceback__)
                if f.filename == filename
            ]
            lines = traceback.format_list(frames) + [f"{type(err).__name__}: {err}"]
            error = nbformat.v4.new_output(
                "error", ename=type(err).__name__, evalue=str(err), traceback=lines
            )
        else:
            error = None
        finally:
            import matplotlib.pyplot as plt

            plt.close("all")
        outputs.extend(streams[: self.max_outputs])
        if printed.getvalue():
            outputs.append(
                nbformat.v4.new_output("stream", name="stdout", text=printed.getvalue())
            )
        if error is not None:
            outputs.append(error)

    # -- limits
    # ------------------------------------------------------------------------------

    def _give_up(self, indices, reason: str) -> None:
        for i in indices:
            _error(self.nb.cells[i], "NotRun", f"this cell was not run: {reason}")

    def _truncate(self, cell) -> None:
        limit = self.max_output_chars
        if len(cell.outputs) > self.max_outputs:
            cut = len(cell.outputs) - self.max_outputs
            cell.outputs = cell.outputs[: self.max_outputs] + [
                nbformat.v4.new_output(
                    "stream", name="stdout", text=f"\n[... {cut} more outputs cut]\n"
                )
            ]
        for output in cell.outputs:
            if output.get("output_type") == "stream" and len(output.text) > limit:
                output.text = (
                    output.text[:limit]
                    + f"\n[... {len(output.text) - limit} characters cut]\n"
                )
            for mime, value in list(output.get("data", {}).items()):
                if isinstance(value, str) and len(value) > limit:
                    output.data[mime] = (
                        value[:limit] + f"\n[... {len(value) - limit} characters cut]"
                    )
            if output.get("output_type") == "error":
                output.evalue = output.evalue[:limit]
                output.traceback = [
                    line[:limit] for line in output.traceback[-self.max_outputs :]
                ]

    def _write_findings(self) -> None:
        info = self.resources.get("nbgrader", {})
        if not info.get("student"):
            return
        path = FINDINGS / info["student"] / f"{info['assignment']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps({"tampering": self.findings, "unprotected": os.geteuid() != 0})
        )
