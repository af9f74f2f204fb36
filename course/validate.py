"""``python -m course validate NB`` (``make validate NB=...``): a student's dry run
before handing in.

Runs the notebook ``NB`` from top to bottom the way the grader will: in the grading kernel
(``dgm-grader``, `course.sandbox`: the same memory, file-size, CPU and process limits,
and as root the same unprivileged user), with the grader's time limits
(``Execute.timeout`` per cell and ``GradingExecute.notebook_timeout`` in all, from
``nbgrader_config.py`` when there is one), no progress bars (``DGM_PROGRESS=0``), and a
fresh kernel after a cell that kills it. Then it prints, for every graded task, whether
its visible self-check passed and, if not, the check's message:
what was called, what came back, what was expected, and a hint. Errors in other cells
(the setup, a solution cell that does not even run) are listed too, since they explain
the tasks that follow.

Only the visible checks can run here: the hidden tests are the grader's. A pass is
therefore a good sign, not a score. A test cell whose code was changed is flagged: the
grader runs the released version whatever the notebook says. The notebook file itself is
never modified.

A notebook that cannot be read (missing, not JSON, not nbformat 4, no graded cells) gets a
one-line reason and exit status 2. Exit status 1 when a task fails, 0 when all pass.
"""

import ast
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from course import sandbox

DEFAULT_CELL_TIMEOUT_S, DEFAULT_NOTEBOOK_TIMEOUT_S = 120.0, 600.0
MAX_KERNEL_RESTARTS = 3
MESSAGE_LINES, MESSAGE_CHARS = 12, 1500
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class Unreadable(Exception):
    """The notebook cannot be validated; the message is the one line the student sees."""


@dataclass
class Task:
    name: str
    points: float
    status: str = "not run"  # "pass", "fail", "not run"
    message: str = ""
    edited: bool = False


@dataclass
class Report:
    path: Path
    tasks: list[Task] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # errors outside the test cells
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return bool(self.tasks) and all(t.status == "pass" for t in self.tasks)


def read(path: Path):
    """The notebook at ``path``, or `Unreadable` with the reason."""
    if not path.exists():
        raise Unreadable(f"{path}: no such file")
    if path.is_dir():
        raise Unreadable(
            f"{path} is a folder: give the notebook, e.g. {path}/{path.name}.ipynb"
        )
    if path.suffix != ".ipynb":
        raise Unreadable(f"{path} is not a notebook (.ipynb)")
    try:
        nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    except Exception as err:  # invalid JSON, unreadable file, not a notebook
        said = str(err).strip()
        reason = said.splitlines()[0][:120] if said else "unreadable"
        raise Unreadable(
            f"{path} is not a valid notebook ({type(err).__name__}: {reason})"
        ) from None
    if not isinstance(nb, dict) or nb.get("nbformat") != 4:
        raise Unreadable(
            f"{path} is nbformat "
            f"{nb.get('nbformat') if isinstance(nb, dict) else '?'}, expected 4: "
            "save it from JupyterLab, or download the exercise again"
        )
    try:
        nbformat.validate(nb)
    except Exception as err:
        raise Unreadable(
            f"{path} is not a valid notebook ({type(err).__name__}: "
            f"{str(err).strip().splitlines()[0][:120]})"
        ) from None
    if not any(_is_test(cell) for cell in nb.cells):
        raise Unreadable(
            f"{path} has no graded test cells: is it one of the exercise notebooks "
            f"(notebooks/NN-topic/)?"
        )
    return nb


def _nbgrader(cell) -> dict:
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return meta if isinstance(meta, dict) else {}


def _is_test(cell) -> bool:
    meta = _nbgrader(cell)
    return (
        cell.get("cell_type") == "code"
        and bool(meta.get("grade"))
        and not meta.get("solution")
    )


def _edited(cell) -> bool:
    from nbgrader.utils import compute_checksum

    meta = _nbgrader(cell)
    return "checksum" in meta and compute_checksum(cell) != meta["checksum"]


def limits(root: Path) -> tuple[float, float]:
    """The grader's (per-cell, whole-notebook) time limits: nbgrader_config.py's, or the
    defaults."""
    if (root / "nbgrader_config.py").exists():
        try:
            from course.autograde import limits as course_limits

            return course_limits(root)
        except Exception:
            pass
    return DEFAULT_CELL_TIMEOUT_S, DEFAULT_NOTEBOOK_TIMEOUT_S


# ----------------------------------------------------------------------------------------
# Messages


def _clean(text: str) -> str:
    return ANSI.sub("", text or "")


def _short(text: str) -> str:
    lines = _clean(text).strip().splitlines()
    cut = "\n".join(lines[:MESSAGE_LINES])
    if len(lines) > MESSAGE_LINES or len(cut) > MESSAGE_CHARS:
        cut = cut[:MESSAGE_CHARS] + " [...]"
    return cut


def _hint_at(source: str, line: int | None) -> str:
    """The literal ``hint="..."`` of the call on ``line`` of a test cell (the check that
    failed)."""
    if line is None:
        return ""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return ""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.lineno <= line <= (
            node.end_lineno or node.lineno
        ):
            for keyword in node.keywords:
                if (
                    keyword.arg == "hint"
                    and isinstance(keyword.value, ast.Constant)
                    and isinstance(keyword.value.value, str)
                ):
                    return keyword.value.value
    return ""


def _failure(cell) -> tuple[str, int | None] | None:
    """(message, line in the cell) of a cell's error output, or None when it ran
    cleanly."""
    for output in cell.get("outputs", []):
        if output.get("output_type") == "error":
            ename, evalue = output.get("ename", "Error"), _clean(output.get("evalue", ""))
            found = re.search(
                r"Cell In\[\d+\], line (\d+)",
                _clean("\n".join(output.get("traceback", []))),
            )
            message = f"{ename}: {evalue}" if evalue else ename
            if ename == "KeyboardInterrupt":
                message = "the cell ran past the grader's time limit and was interrupted"
            if ename == "AssertionError" and evalue:
                message = evalue
            return message, int(found.group(1)) if found else None
    return None


def _success_line(cell) -> str:
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream" and output.get("name") == "stdout":
            for line in output.get("text", "").splitlines():
                if line.startswith("\N{CHECK MARK}"):
                    return line.removeprefix("\N{CHECK MARK}").strip()
    return ""


# ----------------------------------------------------------------------------------------
# Running


def run(nb, folder: Path, cell_timeout: float, notebook_timeout: float) -> list[str]:
    """Execute ``nb`` in place in the grading kernel, cell by cell; return what went
    wrong with the kernel itself (deaths, the overall time limit). A cell that kills the
    kernel gets an error output and the cells after it run in a fresh kernel, after the
    earlier cells again."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    # the kernelspec (and, as root, the unprivileged user), as the grader does
    sandbox.prepare()
    # the grading kernel keeps this one (course.sandbox.KEPT_ENV)
    os.environ["DGM_PROGRESS"] = "0"
    os.environ.setdefault("DGM_COURSE_ROOT", os.getcwd())
    client = NotebookClient(
        nb,
        kernel_name=sandbox.KERNEL_NAME,
        timeout=int(cell_timeout),
        allow_errors=True,
        interrupt_on_timeout=True,
        iopub_timeout=15,
        record_timing=False,
        resources={"metadata": {"path": str(folder)}},
    )
    deadline = time.monotonic() + notebook_timeout
    todo = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"]
    ran, problems, restarts = [], [], 0
    # the kernel's own stderr: kept for its "grading kernel: ..." lines
    log = tempfile.TemporaryFile(mode="w+")
    while todo:
        with client.setup_kernel(stderr=log):
            try:
                # a fresh kernel after a death: the state of the earlier cells
                for i in ran:
                    scratch = nbformat.from_dict(nb.cells[i])
                    client.execute_cell(scratch, i, store_history=False)
            except (DeadKernelError, CellTimeoutError):
                problems.append(
                    "the kernel was lost again while re-running the earlier cells; the "
                    "rest was not run"
                )
                break
            while todo:
                i = todo.pop(0)
                cell = nb.cells[i]
                if time.monotonic() > deadline:
                    problems.append(
                        f"the notebook ran past the grader's {notebook_timeout:g} s "
                        f"limit: "
                        "the cells after that are not run and score 0"
                    )
                    todo = []
                    break
                try:
                    client.execute_cell(cell, i)
                    ran.append(i)
                except (DeadKernelError, CellTimeoutError) as lost:
                    what = (
                        "the kernel died (a crash, os._exit, too much memory or too "
                        "many processes)"
                        if isinstance(lost, DeadKernelError)
                        else f"the cell ran past its {cell_timeout:g} s limit and did "
                        f"not stop when interrupted"
                    )
                    cell.outputs.append(
                        nbformat.v4.new_output(
                            "error", ename=type(lost).__name__, evalue=what, traceback=[]
                        )
                    )
                    restarts += 1
                    if restarts > MAX_KERNEL_RESTARTS:
                        problems.append(
                            f"the kernel died {restarts} times; the rest was not run"
                        )
                        todo = []
                    break
    log.seek(0)
    problems += sorted(
        {line.strip() for line in log if line.startswith("grading kernel:")}
    )
    log.close()
    return problems


def validate(path: Path, root: Path | None = None) -> Report:
    """Run the notebook at ``path`` as the grader will; `Unreadable` if it cannot be."""
    path = Path(path)
    nb = read(path)
    nb = nbformat.convert(nb, 4)
    root = Path.cwd() if root is None else root
    report = Report(path)
    tests = {i: cell for i, cell in enumerate(nb.cells) if _is_test(cell)}
    for cell in tests.values():
        report.tasks.append(
            Task(
                _nbgrader(cell).get("grade_id", "?"),
                float(_nbgrader(cell).get("points", 0)),
                edited=_edited(cell),
            )
        )
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    cell_timeout, notebook_timeout = limits(root)
    start = time.monotonic()
    report.problems += run(nb, path.resolve().parent, cell_timeout, notebook_timeout)
    report.seconds = time.monotonic() - start
    for task, (i, cell) in zip(report.tasks, tests.items()):
        failure = _failure(cell)
        if failure is not None:
            message, line = failure
            hint = _hint_at(cell.source, line)
            if hint and "Hint:" not in message:
                message += f"\nHint: {hint}"
            task.status, task.message = "fail", _short(message)
        elif "execution_count" in cell and cell.get("execution_count") is not None:
            task.status, task.message = "pass", _success_line(cell)
    for i, cell in enumerate(nb.cells):
        if i in tests or cell.cell_type != "code":
            continue
        failure = _failure(cell)
        if failure is not None and "raises-exception" not in cell.metadata.get(
            "tags", []
        ):
            name = _nbgrader(cell).get("grade_id") or f"cell {i + 1}"
            report.problems.append(f"{name}: {_short(failure[0]).splitlines()[0]}")
    return report


def format_report(report: Report) -> str:
    width = max((len(t.name) for t in report.tasks), default=0)
    lines = [
        f"{report.path}: ran in the grading kernel ({sandbox.KERNEL_NAME}) in "
        f"{report.seconds:.0f} s"
    ]
    for problem in report.problems:
        lines.append(f"  error  {problem}")
    for task in report.tasks:
        label = {"pass": "PASS", "fail": "FAIL"}.get(task.status, "NOT RUN")
        points = f"{task.points:g} point{'s' if task.points != 1 else ''}"
        head = f"  {label:<7} {task.name:<{width}}  ({points})"
        if task.status == "pass" and task.message:
            head += f"  {task.message}"
        lines.append(head)
        if task.status == "fail":
            lines += [f"          {line}" for line in task.message.splitlines()]
        if task.edited:
            lines.append(
                "          note: this test cell was changed; the grader runs the "
                "released version"
            )
    passed = sum(t.status == "pass" for t in report.tasks)
    lines.append(
        f"{passed} of {len(report.tasks)} tasks pass their visible checks. Hidden "
        f"tests on other inputs "
        "run when the notebook is graded, so a pass here is a good sign, not a score."
    )
    return "\n".join(lines)


def main(path: str) -> int:
    try:
        report = validate(Path(path))
    except Unreadable as err:
        print(f"cannot validate: {err}")
        return 2
    except KeyboardInterrupt:
        print("validation interrupted")
        return 130
    print(format_report(report))
    return 0 if report.ok else 1
