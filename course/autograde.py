"""Autograding a whole class: every submission graded, none lost or altered, nothing
leaked.

`autograde` walks ``submitted/<student>/<assignment>/`` and grades each submission in
its own ``nbgrader autograde`` process, so a broken one costs only its own score:

- a notebook that cannot be read (invalid JSON, wrong nbformat), is missing or was renamed
  scores 0, with a message that says why; nbgrader is not even started for it;
- students' code runs in the ``dgm-grader`` kernel (`course.sandbox`): memory, file
  size, CPU time and process count are limited, nothing it starts outlives it, and (as
  root) it runs as an unprivileged user that sees none of the course's secrets;
- `course.grader.GradingExecute` runs the notebook: the test cells run in nbgrader's
  process, never in the student's kernel, and call the student's functions from there; a
  cell that kills the kernel scores 0 and the cells after it run in a fresh kernel; a
  cell that runs too long is interrupted (``Execute.timeout``), a notebook that runs too
  long is stopped (``GradingExecute.notebook_timeout``), and outputs are cut to a
  readable size;
- nbgrader restores the test cells and their metadata from the gradebook (a deleted or
  edited test earns nothing).

Each submission is locked while it is graded (`submission_locks`), and what was graded is
remembered (a hash of each submission folder in ``.autograde/``, checked under that
lock), so a run that was interrupted is resumed by running it again: it grades only what
is new or changed (``--force`` regrades everything), and no two runs grade the same
submission at once. With the default SQLite gradebook the locks are files, and a whole
run also holds a lock on the course, so a second ``make autograde`` in the same course
refuses to start. With a PostgreSQL gradebook (``DB_URL``, see `db_url`) they are
PostgreSQL advisory locks, which the server drops when a grader's connection goes, so
graders on different machines cannot collide. ``shard=(i, n)`` grades one n-th of the
class (`in_shard`: a stable hash of student and assignment), for a Kubernetes Indexed
Job or a Slurm array; ``jobs > 1`` grades several submissions at once.
"""

import fcntl
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from course import sandbox
from course.grader import FINDINGS, GradingExecute

BIN = Path(sys.executable).parent
# nbgrader starts helpers (alembic, kernels) by name: put this venv first on PATH.
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
# per-course: the lock, the record of what was graded, nbgrader's logs
STATE = ".autograde"


# ----------------------------------------------------------------------------------------
# Grading a class


def assignments(root: Path) -> list[str]:
    """Assignment ids: the folders of solutions/ (01-kl, 02-vi, ...)."""
    return sorted(
        p.name for p in (root / "solutions").iterdir() if (p / f"{p.name}.ipynb").exists()
    )


@dataclass
class Outcome:
    student: str
    assignment: str
    score: float = 0.0
    max_score: float = 0.0
    problems: list[str] = field(default_factory=list)


def limits(root: Path) -> tuple[float, float]:
    """(per-cell timeout, whole-notebook limit) in seconds, as set in
    nbgrader_config.py."""
    from traitlets.config.loader import PyFileConfigLoader

    config = PyFileConfigLoader("nbgrader_config.py", path=str(root)).load_config()
    return (
        float(config.Execute.get("timeout", 120)),
        float(
            config.GradingExecute.get(
                "notebook_timeout", GradingExecute.notebook_timeout.default_value
            )
        ),
    )


def _read_problem(path: Path) -> str | None:
    """Why a submitted notebook cannot be graded, or None if it can."""
    try:
        nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
        if nb.get("nbformat") != 4:
            return f"{path.name} is nbformat {nb.get('nbformat')}, expected 4"
        nbformat.validate(nb)
    except Exception as err:  # invalid JSON, wrong schema, unreadable file
        first = str(err).splitlines()[0][:120]
        return f"{path.name} is not a valid notebook ({type(err).__name__}: {first})"
    return None


def db_url(root: Path) -> str:
    """The gradebook's SQLAlchemy URL: ``DB_URL`` from the environment (as
    nbgrader_config.py reads it, e.g.
    ``postgresql://grader:PASSWORD@db.example.org/dgm``), else the course's SQLite file
    ``gradebook.db``."""
    return os.environ.get("DB_URL") or f"sqlite:///{root / 'gradebook.db'}"


def is_postgres(url: str) -> bool:
    return url.split(":", 1)[0].split("+", 1)[0] == "postgresql"


def gradebook(root: Path):
    from nbgrader.api import Gradebook

    return Gradebook(db_url(root))


def _scores(root: Path, outcome: Outcome) -> None:
    """Fill in the score and the failing cells from the gradebook.

    A manually graded answer (a written answer cell, nbgrader's "manually graded
    answer") that nobody has graded yet is listed as ``<cell> needs manual grading (N
    points)``, not as a failure: its points enter the score once a grader sets them in
    the formgrader. An answer left exactly as released is scored 0 by nbgrader itself
    and listed like a failing cell.
    """
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
                if grade.needs_manual_grade and grade.manual_score is None:
                    outcome.problems.append(
                        f"{grade.cell.name} needs manual grading ({grade.max_score:g} "
                        f"points)"
                    )
                elif grade.score < grade.max_score:
                    outcome.problems.append(
                        f"{grade.cell.name} {grade.score:g}/{grade.max_score:g}"
                    )


def _max_score(root: Path, assignment: str) -> float:
    from nbgrader.api import MissingEntry

    with gradebook(root) as gb:
        try:
            return gb.find_assignment(assignment).max_score
        except MissingEntry:
            return 0.0


def fingerprint(folder: Path) -> str:
    """A hash of every file in a submission folder: a changed submission is graded
    again."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _record(root: Path, student: str, assignment: str) -> Path:
    return root / STATE / "graded" / student / f"{assignment}.sha256"


# ----------------------------------------------------------------------------------------
# Shards: one n-th of the class per grader


def parse_shard(spec: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n), with i from 0 to n - 1: a Kubernetes Indexed Job's
    ``JOB_COMPLETION_INDEX`` (or ``SLURM_ARRAY_TASK_ID`` with ``--array=0-<n-1>``) is
    i."""
    try:
        index, count = (int(part) for part in spec.split("/"))
    except ValueError:
        raise SystemExit(f"--shard takes i/n (for example 0/3), got {spec!r}") from None
    if count < 1:
        raise SystemExit(f"--shard {spec}: n, the number of shards, is at least 1")
    if not 0 <= index < count:
        raise SystemExit(
            f"--shard {spec}: the index runs from 0 to {count - 1} (0/{count} is the "
            f"first of {count}), "
            "as JOB_COMPLETION_INDEX does"
        )
    return index, count


def shard_of(student: str, assignment: str, count: int) -> int:
    """The shard (0 to count - 1) that grades a submission: a hash of its student and
    assignment, the same on every machine and in every run, whatever else was handed
    in."""
    digest = hashlib.sha256(f"{student}\0{assignment}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % count


def in_shard(student: str, assignment: str, shard: tuple[int, int] | None) -> bool:
    return shard is None or shard_of(student, assignment, shard[1]) == shard[0]


# ----------------------------------------------------------------------------------------
# Locks: one per submission while it is graded, so two graders never grade it at once


def whoami(shard: tuple[int, int] | None = None) -> str:
    """This grader, as other graders see it when it holds a lock they want."""
    where = f"pid {os.getpid()} on {socket.gethostname()[:24]}"
    return where + (f", shard {shard[0]}/{shard[1]}" if shard else "")


def _flock(path: Path, me: str, *, shared: bool = False):
    """Lock ``path`` with flock(2), without waiting, and write ``me`` into it: ``(the open
    file, None)`` when this process now holds the lock (until it closes the file or
    ends), else ``(None, what the file says of its holder)``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        return None, holder
    handle.seek(0)
    handle.truncate()
    handle.write(me)
    handle.flush()
    return handle, None


class FileLocks:
    """``.autograde/locks/<student>/<assignment>.lock``, held with flock(2): the kernel
    drops it when the process that holds it ends, however it ends. For graders on one
    machine (the default SQLite gradebook): flock is not reliable across machines on a
    network filesystem."""

    def __init__(self, root: Path, me: str):
        self.root, self.me, self.held = root, me, {}

    def acquire(self, student: str, assignment: str) -> str | None:
        """None when this grader now holds the lock, else who holds it."""
        path = self.root / STATE / "locks" / student / f"{assignment}.lock"
        handle, holder = _flock(path, self.me)
        if handle is None:
            return holder or "another grader"
        self.held[student, assignment] = handle
        return None

    def release(self, student: str, assignment: str) -> None:
        handle = self.held.pop((student, assignment), None)
        if handle is not None:
            handle.close()

    def close(self) -> None:
        for key in list(self.held):
            self.release(*key)


class PostgresLocks:
    """PostgreSQL session-level advisory locks, one per submission, on one connection
    that this grader keeps for the whole run. The server drops them when that connection
    ends: at exit, when the grader is killed (its socket closes), or when TCP keepalives
    find its machine gone (about a minute), so a grader that dies holds nothing. The
    connection names its grader (``application_name``), so a busy lock says who holds
    it."""

    KEEPALIVES = {
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
    }

    def __init__(self, url: str, me: str):
        from sqlalchemy import create_engine
        from sqlalchemy.engine import make_url
        from sqlalchemy.pool import NullPool

        args = {"application_name": f"dgm-autograde {me}"[:63]}
        if make_url(url).get_driver_name() in ("psycopg2", "psycopg"):
            args.update(self.KEEPALIVES)
        self.engine = create_engine(url, poolclass=NullPool, connect_args=args)
        self.connection = self.engine.connect().execution_options(
            isolation_level="AUTOCOMMIT"
        )
        self.mutex = threading.Lock()  # one connection, used by every --jobs thread

    @staticmethod
    def key(student: str, assignment: str) -> int:
        """A signed 64-bit advisory-lock key (a collision would only make two
        submissions wait for each other)."""
        digest = hashlib.sha256(
            f"dgm-autograde\0{student}\0{assignment}".encode()
        ).digest()
        return int.from_bytes(digest[:8], "big", signed=True)

    def acquire(self, student: str, assignment: str) -> str | None:
        from sqlalchemy import text

        key = self.key(student, assignment)
        with self.mutex:
            if self.connection.execute(
                text("SELECT pg_try_advisory_lock(:key)"), {"key": key}
            ).scalar():
                return None
            # a bigint key shows in pg_locks as classid (high half), objid (low half),
            # objsubid 1
            holder = self.connection.execute(
                text(
                    "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a "
                    "ON a.pid = l.pid "
                    "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
                    "AND l.classid::bigint = :high AND l.objid::bigint = :low"
                ),
                {"high": (key >> 32) & 0xFFFFFFFF, "low": key & 0xFFFFFFFF},
            ).scalar()
        return (holder or "another grader").removeprefix("dgm-autograde ")

    def release(self, student: str, assignment: str) -> None:
        from sqlalchemy import text

        with self.mutex:
            self.connection.execute(
                text("SELECT pg_advisory_unlock(:key)"),
                {"key": self.key(student, assignment)},
            )

    def close(self) -> None:
        self.connection.close()
        self.engine.dispose()


def submission_locks(root: Path, shard: tuple[int, int] | None = None):
    """The per-submission locks for this course's gradebook: PostgreSQL advisory locks
    when the gradebook is on PostgreSQL, files in ``.autograde/locks/`` otherwise."""
    url = db_url(root)
    return (
        PostgresLocks(url, whoami(shard))
        if is_postgres(url)
        else FileLocks(root, whoami(shard))
    )


def _runs(root: Path, student: str, assignment: str) -> Path:
    """``.autograde/logs/<student>/<assignment>.runs``: one JSON line when an nbgrader
    run starts, one when it ends (written under the submission's lock, so by one grader
    at a time)."""
    return root / STATE / "logs" / student / f"{assignment}.runs"


def _note_run(root: Path, student: str, assignment: str, **event) -> None:
    path = _runs(root, student, assignment)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as out:
        out.write(json.dumps({"time": round(time.time(), 3), **event}) + "\n")


# Starts nbgrader so that it is killed if the grader that started it dies, even by
# SIGKILL (PR_SET_PDEATHSIG, kept across exec): a killed shard leaves no nbgrader
# grading behind its back once its lock is gone. argv: the grader's pid, then nbgrader's
# command line.
_ORPHAN_GUARD = (
    "import ctypes, os, sys\n"
    "if sys.platform == 'linux':\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, 9, 0, 0, 0)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(70)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


class Runner:
    """Starts nbgrader processes, each in its own session, and stops them all on
    request; each dies with this process, however it ends (`_ORPHAN_GUARD`)."""

    def __init__(self):
        self.running: set[subprocess.Popen] = set()
        self.stopping = False

    def run(self, root: Path, args: list[str], log: Path, timeout: float) -> int | None:
        """nbgrader's exit status, or None when it ran past ``timeout`` (and was
        stopped)."""
        if self.stopping:
            raise KeyboardInterrupt
        log.parent.mkdir(parents=True, exist_ok=True)
        # a file, not a pipe: a flood of output costs no memory here
        with open(log, "wb") as out:
            command = [
                sys.executable,
                "-c",
                _ORPHAN_GUARD,
                str(os.getpid()),
                str(BIN / "nbgrader"),
                *args,
            ]
            process = subprocess.Popen(
                command,
                cwd=root,
                env=ENV,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
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
            # nbgrader; its kernel then stops itself (course.sandbox)
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()

    def stop_all(self) -> None:
        self.stopping = True
        for process in list(self.running):
            self.kill(process)


# a wrong or missing answer: the score says it
EXPECTED_ERRORS = {"AssertionError", "NotImplementedError"}


def incidents(notebook: Path) -> list[str]:
    """Cells of an autograded notebook that failed for another reason: timeouts, kernel
    deaths, memory, input(), files too large ... as "<cell>: <error>"."""
    try:
        nb = nbformat.read(notebook, as_version=4)
    except Exception:
        return []
    found = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if (
                output.get("output_type") == "error"
                and output.get("ename") not in EXPECTED_ERRORS
            ):
                name = (
                    cell.metadata.get("nbgrader", {}).get("grade_id")
                    or f"cell {cell.get('id', '?')}"
                )
                found.append(f"{name}: {output.get('ename')}")
    return found


def tampering(root: Path, student: str, assignment: str) -> list[str]:
    """What the student's kernel reported changing (`course.grader`): "tampering:
    <cell>: <what>"."""
    path = root / FINDINGS / student / f"{assignment}.json"
    try:
        found = json.loads(path.read_text()).get("tampering", [])
    except (OSError, ValueError):
        return []
    return [f"tampering: {what}" for what in found]


def _last_error(log: Path) -> str:
    """The reason in nbgrader's log: the exception its last traceback ends with, else
    its last error line (nbgrader ends with "Please see the above traceback", which says
    nothing)."""
    lines = [
        line
        for line in log.read_text(errors="replace")[-20_000:].splitlines()
        if line.strip()
    ]
    raised = [line for line in lines if EXCEPTION_LINE.match(line)]
    errors = [
        line for line in lines if "[AutogradeApp | ERROR]" in line or "Error" in line
    ]
    return (raised or errors or lines or ["no output"])[-1].strip()[:300]


EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit): ")


def grade_one(
    root: Path,
    student: str,
    assignment: str,
    runner: Runner,
    *,
    force: bool = False,
    locks: "FileLocks | PostgresLocks | None" = None,
    me: str = "",
) -> Outcome:
    """Grade one submission, holding its lock in ``locks`` (if given) from before its
    record is read until after it is written: a submission another grader holds is
    skipped, and says so."""
    if locks is None:
        return _grade(root, student, assignment, runner, force=force, me=me)
    holder = locks.acquire(student, assignment)
    if holder is not None:
        outcome = Outcome(student, assignment, max_score=_max_score(root, assignment))
        outcome.problems.append(f"skipped: another grader is grading it ({holder})")
        return outcome
    try:
        return _grade(root, student, assignment, runner, force=force, me=me)
    finally:
        locks.release(student, assignment)


def _grade(
    root: Path, student: str, assignment: str, runner: Runner, *, force: bool, me: str
) -> Outcome:
    outcome = Outcome(student, assignment, max_score=_max_score(root, assignment))
    folder = root / "submitted" / student / assignment
    notebook = folder / f"{assignment}.ipynb"
    if not notebook.exists():
        found = sorted(p.name for p in folder.glob("*.ipynb"))
        outcome.problems.append(
            f"missing {notebook.name} (found: {', '.join(found) or 'no notebooks'})"
        )
        return outcome
    problem = _read_problem(notebook)
    if problem:
        outcome.problems.append(problem)
        return outcome
    extra = sorted(
        p.name
        for p in folder.iterdir()
        if p.name != notebook.name and not p.name.startswith(".")
    )
    record, seen = _record(root, student, assignment), fingerprint(folder)
    if not force and record.exists() and record.read_text() == seen:
        _scores(root, outcome)
        outcome.problems.insert(0, "unchanged, graded before")
        return outcome
    record.unlink(missing_ok=True)
    cell_limit, notebook_limit = limits(root)
    log = root / STATE / "logs" / student / f"{assignment}.log"
    args = ["autograde", assignment, "--student", student, "--force"]

    def attempt() -> int | None:
        run = os.urandom(8).hex()
        _note_run(root, student, assignment, event="start", run=run, by=me)
        status = runner.run(
            root, args, log, timeout=notebook_limit + 2 * cell_limit + 120
        )
        _note_run(root, student, assignment, event="end", run=run, by=me, status=status)
        return status

    status = attempt()
    if (
        status is not None
        and status != 0
        and "database is locked" in log.read_text(errors="replace")
    ):
        status = attempt()  # once more
    if status is None:
        outcome.problems.append(f"nbgrader stopped: it ran past {notebook_limit:g} s")
        return outcome
    if status != 0:
        outcome.problems.append(f"autograde failed: {_last_error(log)}")
        return outcome
    _scores(root, outcome)
    outcome.problems += incidents(
        root / "autograded" / student / assignment / notebook.name
    )
    outcome.problems += tampering(root, student, assignment)
    if extra:
        outcome.problems.append(f"extra files ignored: {', '.join(extra[:5])}")
    record.parent.mkdir(parents=True, exist_ok=True)
    partial = record.with_name(f".{record.name}.{os.getpid()}.{threading.get_ident()}")
    partial.write_text(seen)
    # whole or absent, also for a grader reading it on another machine
    os.replace(partial, record)
    return outcome


class Busy(SystemExit):
    pass


def _lock(root: Path, *, shared: bool = False):
    """A lock on the course's grading, held until the process exits: exclusive for a
    whole run, shared by the shards of one (which then lock each submission). Only with
    a gradebook that is not on PostgreSQL: there the submissions' advisory locks are
    enough, on any machine."""
    handle, holder = _flock(root / STATE / "lock", f"pid {os.getpid()}", shared=shared)
    if handle is None:
        raise Busy(
            f"another autograde is running in this course ({holder or 'another process'}"
            "); wait for it to finish, then run again"
        )
    return handle


def _add_student(gb, student: str) -> None:
    from nbgrader.api import InvalidEntry

    try:
        gb.update_or_create_student(student)
    # another shard added them at the same moment (nbgrader rolled back)
    except InvalidEntry:
        gb.find_student(student)


def autograde(
    root: Path,
    only: str | None = None,
    *,
    jobs: int = 1,
    force: bool = False,
    shard: tuple[int, int] | None = None,
) -> list[Outcome]:
    """Grade every submitted/<student>/<assignment>/ (one assignment if ``only`` is
    given; only the submissions of shard ``(i, n)`` if given, see `in_shard`)."""
    known = assignments(root)
    if only is not None and only not in known:
        raise SystemExit(
            f"unknown assignment {only!r}; expected one of {', '.join(known)}"
        )
    if not isinstance(jobs, int) or jobs < 1:
        raise SystemExit(f"jobs must be a positive int, got {jobs!r}")
    submitted = root / "submitted"
    if not submitted.is_dir():
        raise SystemExit(
            "no submitted/ folder: collect submissions as "
            "submitted/<student>/<assignment>/<assignment>.ipynb"
        )
    if shard is not None and not (
        isinstance(shard, tuple) and len(shard) == 2 and 0 <= shard[0] < shard[1]
    ):
        raise SystemExit(f"shard must be (i, n) with 0 <= i < n, got {shard!r}")
    lock = None if is_postgres(db_url(root)) else _lock(root, shared=shard is not None)
    sandbox.prepare()
    with gradebook(root) as gb:
        missing = [a for a in known if not any(x.name == a for x in gb.assignments)]
        if missing:
            raise SystemExit(
                f"assignments {', '.join(missing)} are not in the gradebook: run `make "
                f"release` first"
            )
        everything = [
            (student_dir.name, a)
            for student_dir in sorted(
                p
                for p in submitted.iterdir()
                if p.is_dir() and not p.name.startswith(".")
            )
            for a in (known if only is None else [only])
            if (student_dir / a).is_dir()
        ]
        work = [(s, a) for s, a in everything if in_shard(s, a, shard)]
        for student in sorted({s for s, _ in work}):
            _add_student(gb, student)
    if shard is not None:
        print(
            f"shard {shard[0]}/{shard[1]}: {len(work)} of the class's "
            f"{len(everything)} submissions",
            file=sys.stderr,
        )
    me = whoami(shard)
    locks = submission_locks(root, shard)
    runner = Runner()
    # SIGTERM stops cleanly, like Ctrl-C
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = [
                pool.submit(
                    grade_one, root, s, a, runner, force=force, locks=locks, me=me
                )
                for s, a in work
            ]
            try:
                return [future.result() for future in futures]
            except KeyboardInterrupt:
                runner.stop_all()
                for future in futures:
                    future.cancel()
                raise SystemExit(
                    "autograde interrupted: what was graded is kept; run it again to "
                    "grade the rest"
                )
    finally:
        signal.signal(signal.SIGTERM, previous)
        locks.close()
        if lock is not None:
            lock.close()


UNPROTECTED = (
    "note: grading did not run as root, so students' code ran as this user and could "
    "read the course's files (solutions/, gradebook.db ...); see the README, "
    '"What the autograder withstands"'
)


def summary(outcomes: list[Outcome]) -> str:
    rows = [("student", "assignment", "score", "problems")]
    rows += [
        (
            o.student,
            o.assignment,
            f"{o.score:g}/{o.max_score:g}",
            "; ".join(o.problems) or "-",
        )
        for o in outcomes
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [
        f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}"
        for r in rows
    ]
    return "\n".join(lines + ([] if sandbox.isolated() else [UNPROTECTED]))
