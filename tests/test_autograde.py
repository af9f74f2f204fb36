"""Autograding a class that hands in broken and hostile work (course.autograde,
course.sandbox).

A temporary course with one small assignment ("probe": two tasks, 2 points each) is
graded with submissions written here: hostile code runs before the first task's function
is defined, so that task scores 0 and the second one must still be graded. Limits are
shortened in the course's nbgrader_config.py so the whole class grades in about a
minute.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from course import autograde, sandbox
from tests.course_helpers import course_command

ROOT = Path(__file__).resolve().parent.parent
A = "probe"
pytestmark = pytest.mark.slow


def _cell(kind, grade_id, source, *, grade=False, solution=False, points=None):
    cell = (new_code_cell if kind == "code" else new_markdown_cell)(source)
    meta = {
        "grade": grade,
        "grade_id": grade_id,
        "locked": not solution,
        "schema_version": 3,
        "solution": solution,
        "task": False,
    }
    if points:
        meta["points"] = points
    cell.metadata["nbgrader"] = meta
    cell.id = grade_id.replace("_", "-")
    return cell


def probe_notebook(title: str, tasks) -> nbformat.NotebookNode:
    """An assignment in nbgrader's format: a setup cell, then per task ``(name,
    signature, body, visible, hidden, points)`` a solution cell and its test cell."""
    cells = [
        _cell("markdown", "intro", title),
        _cell("code", "setup", "import math"),
    ]
    for name, signature, body, visible, hidden, points in tasks:
        solution = (
            f"def {signature}:\n    ### BEGIN SOLUTION\n    {body}\n    ### END SOLUTION"
        )
        test = f"{visible}\n### BEGIN HIDDEN TESTS\n{hidden}\n### END HIDDEN TESTS"
        cells += [
            _cell("code", name, solution, solution=True),
            _cell("code", f"test_{name}", test, grade=True, points=points),
        ]
    kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return new_notebook(cells=cells, metadata={"kernelspec": kernelspec})


def probe_source():
    return probe_notebook(
        "# Probe\nTwo tasks.",
        [
            (
                "add",
                "add(a, b)",
                "return a + b",
                "assert add(1, 2) == 3",
                "assert add(20, 22) == 42",
                2,
            ),
            (
                "square",
                "square(x)",
                "return x * x",
                "assert square(3) == 9",
                "assert square(-7) == 49",
                2,
            ),
        ],
    )


RIGHT_ADD = "def add(a, b):\n    return a + b"
RIGHT_SQUARE = "def square(x):\n    return x * x"
# Run before `add` is defined: `add` is then missing, so test_add scores 0 and
# test_square 2.
HOSTILE = {
    "sleeper": ("import time\ntime.sleep(10**6)", "CellTimeoutError"),
    "looper": ("while True:\n    pass", "CellTimeoutError"),
    "stubborn": (
        "while True:\n    try:\n        while True:\n            pass\n    except "
        "BaseException:\n        pass",
        "CellTimeoutError",
    ),
    "hog": ("x = bytearray(40 * 2**30)", "MemoryError"),
    # forks may deadlock
    "forker": (
        "import os\nwhile True:\n    os.fork()",
        "DeadKernelError|CellTimeoutError",
    ),
    "writer": (
        "with open('big.bin', 'wb') as f:\n    while True:\n        f.write(b'x' * "
        "2**20)",
        "OSError",
    ),
    "exiter": ("import os\nos._exit(3)", "DeadKernelError"),
    "crasher": ("import ctypes\nctypes.string_at(0)", "DeadKernelError"),
    "asker": ("name = input('your name? ')", "StdinNotImplementedError"),
}


# A function whose result cannot come back to the grader: 0 for its cell, with a message
# that says what happened (the grader's process never unpickles or runs anything of the
# student's).
UNGRADABLE = {
    "opaque": (
        "def add(a, b):\n    return object()",
        "an object of type builtins.object",
    ),
    "subclass": (
        "import torch\nclass Sly(torch.Tensor):\n    pass\n"
        "def add(a, b):\n    return torch.tensor(a + b).as_subclass(Sly)",
        "a tensor subclass (Sly)",
    ),
    "huge": (
        "import torch\ndef add(a, b):\n    return torch.zeros(30_000_000)",
        "tensors of more than 100 MB",
    ),
    "generator": ("def add(a, b):\n    yield a + b", "a generator object"),
    "endless": ("def add(a, b):\n    while True:\n        pass", "did not return within"),
    # each call within the cell's 10 s, the two of test_add together not: the limit is
    # the cell's, however many calls it makes
    "slow": (
        "import time\ndef add(a, b):\n    time.sleep(6)\n    return a + b",
        "did not return within the cell's time limit",
    ),
}


def answers_notebook(root, add=RIGHT_ADD, square=RIGHT_SQUARE):
    nb = nbformat.read(root / "notebooks" / A / f"{A}.ipynb", as_version=4)
    for cell in nb.cells:
        grade_id = cell.metadata["nbgrader"]["grade_id"]
        cell.source = {"add": add, "square": square}.get(grade_id, cell.source)
    return nb


def run(root, *args, check=True):
    done = course_command(root, *args, timeout=900)
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.fixture(scope="module")
def probe_course(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe-course")
    (root / "solutions" / A).mkdir(parents=True)
    nbformat.write(probe_source(), root / "solutions" / A / f"{A}.ipynb")
    config = (ROOT / "nbgrader_config.py").read_text()
    # Short limits keep the hostile probes quick. The cell limit leaves a margin for a
    # cell graded while the fork bomb in the other worker (--jobs 2) holds both CPU
    # cores: at 5 s, the "hog" probe once timed out in CI before its MemoryError.
    (root / "nbgrader_config.py").write_text(
        config + "\nc.Execute.timeout = 10\nc.GradingExecute.notebook_timeout = 60\n"
        "c.Execute.iopub_timeout = 4\n"
    )
    run(root, "release")
    return root


def hand_in(root, student, nb=None, raw=None, name=f"{A}.ipynb", extra=None):
    folder = root / "submitted" / student / A
    folder.mkdir(parents=True)
    if raw is not None:
        (folder / name).write_text(raw)
    else:
        nbformat.write(nb, folder / name)
    if extra:
        (folder / extra).write_text("a,b\n1,2\n")


def edit_test(nb, source=None, points=None, delete=False):
    for cell in list(nb.cells):
        if cell.metadata["nbgrader"]["grade_id"] == "test_add":
            if delete:
                nb.cells.remove(cell)
            if source is not None:
                cell.source = source
            if points is not None:
                cell.metadata["nbgrader"]["points"] = points
    return nb


def processes_in(folder: Path) -> list[int]:
    """Live processes of this course's grading: their working directory, or an
    ancestor's, is inside ``folder`` (nbgrader, the kernel supervisor) or is one of the
    course's private kernel folders (``course.sandbox``)."""
    prefix = sandbox.private_prefix(folder)
    parents, ours = {}, set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cwd = Path(os.readlink(entry / "cwd"))
                parents[int(entry.name)] = int(
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
                )
            except (OSError, IndexError, ValueError):
                continue
            if cwd.is_relative_to(folder) or cwd.name.startswith(prefix):
                ours.add(int(entry.name))
    found = []
    for pid in parents:
        chain, current = 0, pid
        while current in parents and chain < 100:
            if current in ours:
                found.append(pid)
                break
            current, chain = parents[current], chain + 1
    return found


@pytest.fixture(scope="module")
def graded_class(probe_course):
    root = probe_course
    wrong = "def add(a, b):\n    return a - b"
    hand_in(root, "honest", answers_notebook(root), extra="notes.csv")
    hand_in(
        root,
        "blank",
        answers_notebook(
            root,
            add="# YOUR CODE HERE\nraise NotImplementedError()",
            square="# YOUR CODE HERE\nraise NotImplementedError()",
        ),
    )
    for student, (code, _) in HOSTILE.items():
        hand_in(root, student, answers_notebook(root, add=code + "\n" + RIGHT_ADD))
    for student, (code, _) in UNGRADABLE.items():
        hand_in(root, student, answers_notebook(root, add=code))
    hand_in(
        root,
        "flooder",
        answers_notebook(root, add="print(('x' * 99 + '\\n') * 100_000)\n" + RIGHT_ADD),
    )
    hand_in(root, "untester", edit_test(answers_notebook(root, add=wrong), delete=True))
    hand_in(
        root,
        "retester",
        edit_test(answers_notebook(root, add=wrong), source="pass", points=100),
    )
    hand_in(root, "corrupt", raw='{"cells": [')
    hand_in(
        root,
        "ancient",
        raw='{"nbformat": 3, "nbformat_minor": 0, "worksheets": [], "metadata": {}}',
    )
    hand_in(root, "renamer", answers_notebook(root), name="my-probe.ipynb")
    (root / "submitted" / "empty" / A).mkdir(parents=True)
    before = {p: p.read_bytes() for p in (root / "submitted").rglob("*") if p.is_file()}
    done = run(root, "autograde", "--jobs", "2")
    after = {p: p.read_bytes() for p in (root / "submitted").rglob("*") if p.is_file()}
    assert before == after, "autograde must never modify submissions"
    rows = {line.split()[0]: line for line in done.stdout.splitlines()[1:]}
    return root, rows


def scores(root, student):
    with autograde.gradebook(root) as gb:
        submission = gb.find_submission(A, student)
        return {g.cell.name: g.score for nb in submission.notebooks for g in nb.grades}


def test_honest_and_blank_work_is_graded_as_usual(graded_class):
    root, rows = graded_class
    assert scores(root, "honest") == {"test_add": 2, "test_square": 2}
    assert "4/4" in rows["honest"] and "extra files ignored: notes.csv" in rows["honest"]
    assert scores(root, "blank") == {"test_add": 0, "test_square": 0}


@pytest.mark.parametrize("student", sorted(HOSTILE))
def test_hostile_code_costs_only_its_own_cell(graded_class, student):
    root, rows = graded_class
    assert scores(root, student) == {"test_add": 0, "test_square": 2}, rows[student]
    assert any(
        f"add: {error}" in rows[student] for error in HOSTILE[student][1].split("|")
    ), rows[student]


def test_nothing_a_submission_started_is_left_running(graded_class):
    root, _ = graded_class
    time.sleep(1)
    assert processes_in(root) == []


@pytest.mark.parametrize("student", sorted(UNGRADABLE))
def test_a_result_that_cannot_come_back_scores_zero_with_the_reason(
    graded_class, student
):
    root, rows = graded_class
    assert scores(root, student) == {"test_add": 0, "test_square": 2}, rows[student]
    nb = nbformat.read(root / "autograded" / student / A / f"{A}.ipynb", as_version=4)
    errors = [
        o
        for c in nb.cells
        if c.metadata["nbgrader"]["grade_id"] == "test_add"
        for o in c.outputs
        if o.output_type == "error"
    ]
    assert errors and UNGRADABLE[student][1] in errors[0].evalue, errors


def test_big_outputs_and_files_are_cut(graded_class):
    root, rows = graded_class
    assert scores(root, "flooder") == {"test_add": 2, "test_square": 2}
    flooded = root / "autograded" / "flooder" / A / f"{A}.ipynb"
    assert flooded.stat().st_size < 100_000, "10 MB of output are cut to a readable size"
    assert (
        "characters cut" in flooded.read_text()
        or "lines truncated" in flooded.read_text()
    )
    written = root / "autograded" / "writer" / A / "big.bin"
    assert not written.exists() or written.stat().st_size <= 64 * 2**20


def test_deleted_or_edited_tests_are_restored(graded_class):
    root, rows = graded_class
    for student in ("untester", "retester"):
        assert scores(root, student) == {"test_add": 0, "test_square": 2}, rows[student]
        assert "2/4" in rows[student], (
            "points come from the gradebook, not from the submission"
        )


def test_unreadable_missing_and_renamed_notebooks_score_zero_with_a_reason(graded_class):
    root, rows = graded_class
    assert (
        "0/4" in rows["corrupt"]
        and f"{A}.ipynb is not a valid notebook" in rows["corrupt"]
    )
    assert "0/4" in rows["ancient"] and "nbformat 3, expected 4" in rows["ancient"]
    assert (
        "0/4" in rows["renamer"]
        and f"missing {A}.ipynb (found: my-probe.ipynb)" in rows["renamer"]
    )
    assert "0/4" in rows["empty"] and "no notebooks" in rows["empty"]


def test_a_second_run_grades_only_what_changed(graded_class):
    root, rows = graded_class
    shutil.rmtree(root / "submitted" / "blank")
    # the student hands in again, now complete
    hand_in(root, "blank", answers_notebook(root))
    done = run(root, "autograde")
    again = {line.split()[0]: line for line in done.stdout.splitlines()[1:]}
    assert "unchanged, graded before" in again["honest"] and "4/4" in again["honest"]
    assert "unchanged" not in again["blank"] and "4/4" in again["blank"]


def test_a_concurrent_run_is_refused(graded_class):
    root, _ = graded_class
    lock = autograde._lock(root)
    try:
        done = run(root, "autograde", check=False)
    finally:
        lock.close()
    assert done.returncode != 0 and "another autograde is running" in done.stderr


def test_an_interrupted_run_keeps_the_gradebook_consistent_and_resumes(
    probe_course, tmp_path
):
    root = tmp_path / "course"
    shutil.copytree(
        probe_course,
        root,
        ignore=shutil.ignore_patterns("submitted", "autograded", ".autograde"),
    )
    for i in range(4):
        hand_in(root, f"s{i}", answers_notebook(root))
    process = course_command(
        root,
        "autograde",
        popen=True,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    records = root / ".autograde" / "graded"
    deadline = time.monotonic() + 300
    while not list(records.rglob("*.sha256")) and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode != 0 and "interrupted" in err
    graded_before = {p.parent.name for p in records.rglob("*.sha256")}
    assert 1 <= len(graded_before) < 4
    done = run(root, "autograde")
    rows = {line.split()[0]: line for line in done.stdout.splitlines()[1:]}
    for i in range(4):
        assert "4/4" in rows[f"s{i}"], rows
        assert ("unchanged" in rows[f"s{i}"]) == (f"s{i}" in graded_before)
    assert processes_in(root) == []


def test_nbgrader_run_directly_takes_the_same_hardened_path(probe_course):
    """`nbgrader autograde` without `make autograde` (or the formgrader's button) reads
    the same nbgrader_config.py: the test cells still run outside the student's
    kernel."""
    root = probe_course
    silencer = (
        "get_ipython().input_transformers_post.append(\n"
        "    lambda lines: ['pass\\n'] if any('assert' in line for line in lines) else "
        "lines)\n"
        "def add(a, b):\n    return 0"
    )
    hand_in(root, "direct", answers_notebook(root, add=silencer))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "nbgrader"),
            "autograde",
            A,
            "--student",
            "direct",
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert scores(root, "direct") == {"test_add": 0, "test_square": 2}
