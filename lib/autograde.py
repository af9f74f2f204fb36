"""Autograding a whole class: every submission graded, none lost or altered, nothing leaked.

`autograde` walks ``submitted/<student>/<assignment>/`` and grades each submission in its own
``nbgrader autograde`` process, so a broken one costs only its own score:

- a notebook that cannot be read (invalid JSON, wrong nbformat), is missing or was renamed
  scores 0, with a message that says why; nbgrader is not even started for it;
- students' code runs in the ``dgm-grader`` kernel (`lib.sandbox`): memory, file size, CPU
  time and process count are limited, and nothing it starts outlives it;
- `GradingExecute` runs the notebook: a cell that kills the kernel scores 0 and the cells after
  it run in a fresh kernel; a cell that runs too long is interrupted (``Execute.timeout``), a
  notebook that runs too long is stopped (``GradingExecute.notebook_timeout``), and outputs
  are cut to a readable size;
- nbgrader restores the test cells and their metadata from the gradebook (a deleted or edited
  test earns nothing).

A run holds a lock, so a second ``make autograde`` in the same course refuses to start instead
of writing to the same gradebook. What was graded is remembered (a hash of each submission
folder in ``.autograde/``), so a run that was interrupted is resumed by running it again: it
grades only what is new or changed (``--force`` regrades everything). ``jobs > 1`` grades
several submissions at once; SQLite serialises their short writes to the gradebook.
"""
import copy
import fcntl
import hashlib
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbclient.util import ensure_async, run_sync
from nbgrader.preprocessors import Execute
from traitlets import Integer

from lib import sandbox

BIN = Path(sys.executable).parent
# nbgrader starts helpers (alembic, kernels) by name: put this venv first on PATH.
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
STATE = ".autograde"  # per-course: the lock, the record of what was graded, nbgrader's logs


# ----------------------------------------------------------------------------------------
# Running one notebook: nbgrader's Execute, hardened

def _error(cell, ename: str, evalue: str) -> None:
    """Give a cell an error output: nbgrader scores a test cell with an error as 0."""
    cell.outputs.append(nbformat.v4.new_output("error", ename=ename, evalue=evalue,
                                               traceback=[f"{ename}: {evalue}"]))


LOST = {
    DeadKernelError: "the kernel died while running this cell (a crash, os._exit, too much memory or too many processes)",
    CellTimeoutError: "this cell ran past its time limit and did not stop when interrupted",
}


class GradingExecute(Execute):
    """nbgrader's Execute preprocessor for untrusted notebooks (set in nbgrader_config.py).

    - A cell that kills the kernel, or hangs past its timeout and ignores the interrupt, gets an
      error (so it scores 0); a fresh kernel replays the cells that ran before it, without
      recording their outputs, and grading goes on.
    - After ``notebook_timeout`` seconds the remaining cells are not run and get an error.
    - Each cell keeps at most ``max_outputs`` outputs of at most ``max_output_chars`` characters.
    """

    notebook_timeout = Integer(600, help="Seconds for the whole notebook; cells after it get an error.").tag(config=True)
    max_kernel_restarts = Integer(3, help="Kernel deaths tolerated before the remaining cells are given up.").tag(config=True)
    max_output_chars = Integer(10_000, help="Characters kept of each output.").tag(config=True)
    max_outputs = Integer(50, help="Outputs kept per cell.").tag(config=True)

    def preprocess(self, nb, resources=None, km=None):
        NotebookClient.__init__(self, nb, km)
        self.reset_execution_trackers()
        self._check_assign_resources(resources)
        deadline = time.monotonic() + self.notebook_timeout
        todo = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"]
        ran, restarts = [], 0
        while todo:
            with self.setup_kernel():
                self.wait_for_reply(self.kc.kernel_info())
                try:
                    for i in ran:  # a fresh kernel after a death: restore the state, keep the outputs
                        self.execute_cell(copy.deepcopy(nb.cells[i]), i, store_history=False)
                except (DeadKernelError, CellTimeoutError):
                    self._give_up(todo, "the kernel was lost again while re-running the cells before this one")
                    break
                while todo:
                    i = todo.pop(0)
                    if time.monotonic() > deadline:
                        self._give_up([i, *todo], f"the notebook ran past its {self.notebook_timeout} s limit")
                        todo = []
                        break
                    try:
                        self.preprocess_cell(nb.cells[i], resources, i)
                    except (DeadKernelError, CellTimeoutError) as lost:
                        kind = type(lost) if self._kernel_alive() else DeadKernelError  # a timeout may hide a death
                        _error(nb.cells[i], kind.__name__, LOST[kind] + "; the cells after it ran in a fresh kernel")
                        restarts += 1
                        if restarts > self.max_kernel_restarts:
                            self._give_up(todo, f"the kernel died {restarts} times")
                            todo = []
                        break  # leaving the block cleans up the dead kernel; the loop starts a new one
                    finally:
                        self._truncate(nb.cells[i])
                    ran.append(i)
        self.set_widgets_metadata()
        return self.nb, self.resources

    async def _async_kernel_alive(self) -> bool:
        return bool(await ensure_async(self.km.is_alive()))

    _kernel_alive = run_sync(_async_kernel_alive)

    def _give_up(self, indices, reason: str) -> None:
        for i in indices:
            _error(self.nb.cells[i], "NotRun", f"this cell was not run: {reason}")

    def _truncate(self, cell) -> None:
        limit = self.max_output_chars
        if len(cell.outputs) > self.max_outputs:
            cut = len(cell.outputs) - self.max_outputs
            cell.outputs = cell.outputs[:self.max_outputs] + [
                nbformat.v4.new_output("stream", name="stdout", text=f"\n[... {cut} more outputs cut]\n")]
        for output in cell.outputs:
            if output.get("output_type") == "stream" and len(output.text) > limit:
                output.text = output.text[:limit] + f"\n[... {len(output.text) - limit} characters cut]\n"
            for mime, value in list(output.get("data", {}).items()):
                if isinstance(value, str) and len(value) > limit:
                    output.data[mime] = value[:limit] + f"\n[... {len(value) - limit} characters cut]"
            if output.get("output_type") == "error":
                output.evalue = output.evalue[:limit]
                output.traceback = [line[:limit] for line in output.traceback[-self.max_outputs:]]


# ----------------------------------------------------------------------------------------
# Grading a class

def assignments(root: Path) -> list[str]:
    """Assignment ids: the folders of solutions/ (01-kl, 02-vi, ...)."""
    return sorted(p.name for p in (root / "solutions").iterdir() if (p / f"{p.name}.ipynb").exists())


@dataclass
class Outcome:
    student: str
    assignment: str
    score: float = 0.0
    max_score: float = 0.0
    problems: list[str] = field(default_factory=list)


def limits(root: Path) -> tuple[float, float]:
    """(per-cell timeout, whole-notebook limit) in seconds, as set in nbgrader_config.py."""
    from traitlets.config.loader import PyFileConfigLoader

    config = PyFileConfigLoader("nbgrader_config.py", path=str(root)).load_config()
    return (float(config.Execute.get("timeout", 120)),
            float(config.GradingExecute.get("notebook_timeout", GradingExecute.notebook_timeout.default_value)))


def _read_problem(path: Path) -> str | None:
    """Why a submitted notebook cannot be graded, or None if it can."""
    try:
        nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
        if nb.get("nbformat") != 4:
            return f"{path.name} is nbformat {nb.get('nbformat')}, expected 4"
        nbformat.validate(nb)
    except Exception as err:  # invalid JSON, wrong schema, unreadable file
        return f"{path.name} is not a valid notebook ({type(err).__name__}: {str(err).splitlines()[0][:120]})"
    return None


def gradebook(root: Path):
    from nbgrader.api import Gradebook

    return Gradebook(f"sqlite:///{root / 'gradebook.db'}")


def _scores(root: Path, outcome: Outcome) -> None:
    """Fill in the score and the failing cells from the gradebook."""
    from nbgrader.api import MissingEntry

    with gradebook(root) as gb:
        try:
            submission = gb.find_submission(outcome.assignment, outcome.student)
        except MissingEntry:
            outcome.problems.append("no grades recorded")
            return
        outcome.score, outcome.max_score = submission.score, submission.max_score
        for notebook in submission.notebooks:
            for grade in notebook.grades:
                if grade.score < grade.max_score:
                    outcome.problems.append(f"{grade.cell.name} {grade.score:g}/{grade.max_score:g}")


def _max_score(root: Path, assignment: str) -> float:
    from nbgrader.api import MissingEntry

    with gradebook(root) as gb:
        try:
            return gb.find_assignment(assignment).max_score
        except MissingEntry:
            return 0.0


def fingerprint(folder: Path) -> str:
    """A hash of every file in a submission folder: a changed submission is graded again."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _record(root: Path, student: str, assignment: str) -> Path:
    return root / STATE / "graded" / student / f"{assignment}.sha256"


class Runner:
    """Starts nbgrader processes, each in its own session, and stops them all on request."""

    def __init__(self):
        self.running: set[subprocess.Popen] = set()
        self.stopping = False

    def run(self, root: Path, args: list[str], log: Path, timeout: float) -> int | None:
        """nbgrader's exit status, or None when it ran past ``timeout`` (and was stopped)."""
        if self.stopping:
            raise KeyboardInterrupt
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as out:  # a file, not a pipe: a flood of output costs no memory here
            process = subprocess.Popen([str(BIN / "nbgrader"), *args], cwd=root, env=ENV, stdout=out,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
            self.running.add(process)
            try:
                return process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill(process)
                return None
            finally:
                self.running.discard(process)

    @staticmethod
    def kill(process: subprocess.Popen) -> None:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # nbgrader; its kernel then stops itself (lib.sandbox)
        except ProcessLookupError:
            pass
        process.wait()

    def stop_all(self) -> None:
        self.stopping = True
        for process in list(self.running):
            self.kill(process)


EXPECTED_ERRORS = {"AssertionError", "NotImplementedError"}  # a wrong or missing answer: the score says it


def incidents(notebook: Path) -> list[str]:
    """Cells of an autograded notebook that failed for another reason: timeouts, kernel deaths,
    memory, input(), files too large ... as "<cell>: <error>"."""
    try:
        nb = nbformat.read(notebook, as_version=4)
    except Exception:
        return []
    found = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error" and output.get("ename") not in EXPECTED_ERRORS:
                name = cell.metadata.get("nbgrader", {}).get("grade_id") or f"cell {cell.get('id', '?')}"
                found.append(f"{name}: {output.get('ename')}")
    return found


def _last_error(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace")[-20_000:].splitlines() if line.strip()]
    errors = [line for line in lines if "[AutogradeApp | ERROR]" in line or "Error" in line]
    return (errors or lines or ["no output"])[-1].strip()[:200]


def grade_one(root: Path, student: str, assignment: str, runner: Runner, *, force: bool = False) -> Outcome:
    outcome = Outcome(student, assignment, max_score=_max_score(root, assignment))
    folder = root / "submitted" / student / assignment
    notebook = folder / f"{assignment}.ipynb"
    if not notebook.exists():
        found = sorted(p.name for p in folder.glob("*.ipynb"))
        outcome.problems.append(f"missing {notebook.name} (found: {', '.join(found) or 'no notebooks'})")
        return outcome
    problem = _read_problem(notebook)
    if problem:
        outcome.problems.append(problem)
        return outcome
    extra = sorted(p.name for p in folder.iterdir() if p.name != notebook.name and not p.name.startswith("."))
    record, seen = _record(root, student, assignment), fingerprint(folder)
    if not force and record.exists() and record.read_text() == seen:
        _scores(root, outcome)
        outcome.problems.insert(0, "unchanged, graded before")
        return outcome
    record.unlink(missing_ok=True)
    cell_limit, notebook_limit = limits(root)
    log = root / STATE / "logs" / student / f"{assignment}.log"
    args = ["autograde", assignment, "--student", student, "--force"]
    status = runner.run(root, args, log, timeout=notebook_limit + 2 * cell_limit + 120)
    if status is not None and status != 0 and "database is locked" in log.read_text(errors="replace"):
        status = runner.run(root, args, log, timeout=notebook_limit + 2 * cell_limit + 120)  # once more
    if status is None:
        outcome.problems.append(f"nbgrader stopped: it ran past {notebook_limit:g} s")
        return outcome
    if status != 0:
        outcome.problems.append(f"autograde failed: {_last_error(log)}")
        return outcome
    _scores(root, outcome)
    outcome.problems += incidents(root / "autograded" / student / assignment / notebook.name)
    if extra:
        outcome.problems.append(f"extra files ignored: {', '.join(extra[:5])}")
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(seen)
    return outcome


class Busy(SystemExit):
    pass


def _lock(root: Path):
    """An exclusive lock on the course's grading, held until the process exits."""
    path = root / STATE / "lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise Busy(f"another autograde is running in this course ({holder}); wait for it to finish, then run again")
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    return handle


def autograde(root: Path, only: str | None = None, *, jobs: int = 1, force: bool = False) -> list[Outcome]:
    """Grade every submitted/<student>/<assignment>/ (one assignment if ``only`` is given)."""
    known = assignments(root)
    if only is not None and only not in known:
        raise SystemExit(f"unknown assignment {only!r}; expected one of {', '.join(known)}")
    if not isinstance(jobs, int) or jobs < 1:
        raise SystemExit(f"jobs must be a positive int, got {jobs!r}")
    submitted = root / "submitted"
    if not submitted.is_dir():
        raise SystemExit("no submitted/ folder: collect submissions as submitted/<student>/<assignment>/<assignment>.ipynb")
    lock = _lock(root)
    sandbox.install_kernelspec()
    with gradebook(root) as gb:
        missing = [a for a in known if not any(x.name == a for x in gb.assignments)]
        if missing:
            raise SystemExit(f"assignments {', '.join(missing)} are not in the gradebook: run `make release` first")
        work = []
        for student_dir in sorted(p for p in submitted.iterdir() if p.is_dir() and not p.name.startswith(".")):
            gb.update_or_create_student(student_dir.name)
            work += [(student_dir.name, a) for a in (known if only is None else [only]) if (student_dir / a).is_dir()]
    runner = Runner()
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops cleanly, like Ctrl-C
    try:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(grade_one, root, s, a, runner, force=force) for s, a in work]
            try:
                return [future.result() for future in futures]
            except KeyboardInterrupt:
                runner.stop_all()
                for future in futures:
                    future.cancel()
                raise SystemExit("autograde interrupted: what was graded is kept; run it again to grade the rest")
    finally:
        signal.signal(signal.SIGTERM, previous)
        lock.close()


def summary(outcomes: list[Outcome]) -> str:
    rows = [("student", "assignment", "score", "problems")]
    rows += [(o.student, o.assignment, f"{o.score:g}/{o.max_score:g}", "; ".join(o.problems) or "-")
             for o in outcomes]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}" for r in rows)
