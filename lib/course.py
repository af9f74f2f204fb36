"""The builder's and instructor's commands, run from the course root as ``python -m lib.course``.

    book                  build the book into _build/html (pages executed; cache reset when lib/ changes)
    release               solutions/<a>/<a>.ipynb -> notebooks/<a>/<a>.ipynb (nbgrader generate_assignment)
    autograde [a]         grade every submitted/<student>/<a>/, one at a time; print a summary table
    feedback [a]          feedback/<student>/<a>/<a>.html for every graded submission
    grades                grades.csv (nbgrader export)

The Makefile wraps each one (``make book``, ``make release`` ...). Grading goes one submission at
a time in its own nbgrader process, so a broken submission costs only its own score: it gets 0 and
a message in the summary, and the others are graded as usual.
"""
import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbgrader.preprocessors import ClearHiddenTests

BIN = Path(sys.executable).parent
# nbgrader and jupyter-book start helpers (alembic, kernels) by name: put this venv first on PATH.
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
WHOLE_NOTEBOOK_LIMIT_S = 600  # an autograde run of one submission is stopped after this long


def assignments(root: Path) -> list[str]:
    """Assignment ids: the folders of solutions/ (01-kl, 02-vi, ...)."""
    return sorted(p.name for p in (root / "solutions").iterdir() if (p / f"{p.name}.ipynb").exists())


# ----------------------------------------------------------------------------------------
# The book

def lib_fingerprint(root: Path) -> str:
    """A hash of every file under lib/ (names and contents) and of the pinned versions.

    The execution cache (jupyter-cache) keys pages on their own code only; it would happily
    serve outputs computed with an older lib. The book build wipes the cache when this changes.
    """
    digest = hashlib.sha256()
    files = sorted(p for p in (root / "lib").rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for path in files + [root / "constraints.txt"]:
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def invalidate_stale_cache(root: Path) -> bool:
    """Remove _build/.jupyter_cache when lib/ changed since it was filled; return whether it did."""
    cache = root / "_build" / ".jupyter_cache"
    stamp = root / "_build" / "lib-fingerprint.txt"
    fingerprint = lib_fingerprint(root)
    stale = stamp.exists() and stamp.read_text().strip() != fingerprint or not stamp.exists() and cache.exists()
    if stale:
        shutil.rmtree(cache, ignore_errors=True)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(fingerprint + "\n")
    return stale


def build_book(root: Path) -> int:
    if invalidate_stale_cache(root):
        print("lib/ changed since the last build: cleared the execution cache")
    command = [str(BIN / "jupyter-book"), "build", str(root), "--builder", "html",
               "--warningiserror", "--keep-going"]
    return subprocess.call(command, cwd=root, env=ENV)


# ----------------------------------------------------------------------------------------
# Releasing and grading with nbgrader

def nbgrader(root: Path, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "nbgrader"), *args], cwd=root, capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def release(root: Path) -> int:
    for a in assignments(root):
        done = nbgrader(root, "generate_assignment", a, "--force")
        if done.returncode != 0:
            sys.stderr.write(done.stdout + done.stderr)
            return done.returncode
        print(f"released {a} -> notebooks/{a}/{a}.ipynb")
    return 0


@dataclass
class Outcome:
    student: str
    assignment: str
    score: float = 0.0
    max_score: float = 0.0
    problems: list[str] = field(default_factory=list)


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


def _gradebook(root: Path):
    from nbgrader.api import Gradebook

    return Gradebook(f"sqlite:///{root / 'gradebook.db'}")


def _scores(root: Path, outcome: Outcome) -> None:
    """Fill in the score and the failing cells from the gradebook."""
    from nbgrader.api import MissingEntry

    with _gradebook(root) as gb:
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

    with _gradebook(root) as gb:
        try:
            return gb.find_assignment(assignment).max_score
        except MissingEntry:
            return 0.0


def grade_one(root: Path, student: str, assignment: str) -> Outcome:
    outcome = Outcome(student, assignment, max_score=_max_score(root, assignment))
    notebook = root / "submitted" / student / assignment / f"{assignment}.ipynb"
    if not notebook.exists():
        found = sorted(p.name for p in notebook.parent.glob("*.ipynb"))
        outcome.problems.append(f"missing {notebook.name} (found: {', '.join(found) or 'no notebooks'})")
        return outcome
    problem = _read_problem(notebook)
    if problem:
        outcome.problems.append(problem)
        return outcome
    try:
        done = nbgrader(root, "autograde", assignment, "--student", student, "--force",
                        timeout=WHOLE_NOTEBOOK_LIMIT_S)
    except subprocess.TimeoutExpired:
        outcome.problems.append(f"stopped after the whole-notebook limit of {WHOLE_NOTEBOOK_LIMIT_S} s")
        return outcome
    if done.returncode != 0:
        last = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()][-1:]
        outcome.problems.append(f"autograde failed: {last[0][:200] if last else 'no output'}")
    _scores(root, outcome)
    return outcome


def autograde(root: Path, only: str | None = None) -> list[Outcome]:
    """Grade every submitted/<student>/<assignment>/ (for one assignment if ``only`` is given)."""
    known = assignments(root)
    if only is not None and only not in known:
        raise SystemExit(f"unknown assignment {only!r}; expected one of {', '.join(known)}")
    submitted = root / "submitted"
    if not submitted.is_dir():
        raise SystemExit("no submitted/ folder: collect submissions as submitted/<student>/<assignment>/<assignment>.ipynb")
    with _gradebook(root) as gb:
        for a in known:
            if not any(x.name == a for x in gb.assignments):
                raise SystemExit(f"assignment {a} is not in the gradebook: run `make release` first")
    outcomes = []
    for student_dir in sorted(p for p in submitted.iterdir() if p.is_dir()):
        with _gradebook(root) as gb:
            gb.update_or_create_student(student_dir.name)
        for a in known if only is None else [only]:
            if (student_dir / a).is_dir():
                outcomes.append(grade_one(root, student_dir.name, a))
    return outcomes


def summary(outcomes: list[Outcome]) -> str:
    rows = [("student", "assignment", "score", "problems")]
    rows += [(o.student, o.assignment, f"{o.score:g}/{o.max_score:g}", "; ".join(o.problems) or "-")
             for o in outcomes]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}" for r in rows)


class RedactHiddenTests(ClearHiddenTests):
    """Feedback preprocessor: drop hidden-test code and the tracebacks that would quote it.

    nbgrader's feedback shows the autograded notebook as it ran, hidden tests included. Here the
    hidden region is cut out of each test cell, and an error output keeps only its last line
    (``AssertionError: <what was called, returned, expected, and a hint>``).
    """

    enforce_metadata = False

    def preprocess_cell(self, cell, resources, cell_index):
        if cell.cell_type == "code":
            self._remove_hidden_test_region(cell)
            for output in cell.get("outputs", []):
                if output.get("output_type") == "error":
                    output["traceback"] = [f"{output.get('ename', 'Error')}: {output.get('evalue', '')}"]
        return cell, resources


def feedback(root: Path, only: str | None = None) -> int:
    status = 0
    for a in assignments(root) if only is None else [only]:
        done = nbgrader(root, "generate_feedback", a, "--force")
        if done.returncode != 0:
            sys.stderr.write(done.stdout[-2000:] + done.stderr[-2000:])
            status = done.returncode
    return status


def main(argv: list[str]) -> int:
    root = Path.cwd()
    command, args = (argv[0], argv[1:]) if argv else ("help", [])
    only = args[0] if args and args[0] else None
    if command == "book":
        return build_book(root)
    if command == "release":
        return release(root)
    if command == "autograde":
        print(summary(autograde(root, only)))
        return 0
    if command == "feedback":
        return feedback(root, only)
    if command == "grades":
        done = nbgrader(root, "export")
        sys.stderr.write(done.stderr[-2000:])
        if done.returncode == 0:
            print("wrote grades.csv")
        return done.returncode
    print(__doc__)
    return 0 if command == "help" else 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
