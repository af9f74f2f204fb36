"""``python -m course validate NB`` (``make validate NB=...``): a student's notebook run
as the grader runs it, in the resource-limited ``dgm-grader`` kernel, with one line per
task."""

import nbformat
import pytest

from course import sandbox
from tests.course_helpers import (
    ROOT,
    course_command,
    release,
    solution_answers,
    submission,
)

pytestmark = pytest.mark.slow
ASSIGNMENT = "01-kl"  # the quickest notebook: about 15 s solved, 5 s blank


def tasks(assignment):
    return [
        c.metadata["nbgrader"]["grade_id"]
        for c in release(assignment).cells
        if c.metadata.get("nbgrader", {}).get("grade") and c.cell_type == "code"
    ]


def validate(path):
    return course_command(ROOT, "validate", str(path), timeout=600)


def task_lines(stdout: str) -> dict[str, str]:
    """grade_id -> its PASS/FAIL line and the indented message below it."""
    found, current = {}, None
    for line in stdout.splitlines():
        words = line.split()
        if (
            line.startswith("  ")
            and words
            and words[0] in ("PASS", "FAIL", "NOT")
            and len(words) > 1
        ):
            current = words[2] if words[0] == "NOT" else words[1]
            found[current] = line
        elif current and line.startswith("          "):
            found[current] += "\n" + line
        else:
            current = None
    return found


def test_a_solved_notebook_passes_every_task_in_the_grading_kernel(tmp_path):
    nb = submission(ASSIGNMENT, solution_answers(ASSIGNMENT))
    # a cell a student might add: it fails unless it runs in the grading kernel, as the
    # grader will
    nb.cells.insert(
        2,
        nbformat.v4.new_code_cell(
            "import os, resource\n"
            f"assert resource.getrlimit(resource.RLIMIT_AS)[0] == "
            f"{sandbox.MEMORY_BYTES}, 'not the grading kernel'\n"
            "assert os.environ.get('DGM_PROGRESS') == '0', 'progress bars on'"
        ),
    )
    path = tmp_path / f"{ASSIGNMENT}.ipynb"
    nbformat.write(nb, path)
    done = validate(path)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = task_lines(done.stdout)
    assert sorted(lines) == sorted(tasks(ASSIGNMENT)), done.stdout
    assert all(line.split()[0] == "PASS" for line in lines.values()), done.stdout
    assert " error " not in done.stdout, done.stdout
    assert f"{len(lines)} of {len(lines)} tasks pass" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


def test_a_blank_notebook_fails_every_task_with_its_message_and_hint():
    path = ROOT / "notebooks" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
    before = path.read_bytes()
    done = validate(path.relative_to(ROOT))
    assert path.read_bytes() == before, "validate must not modify the notebook"
    assert done.returncode == 1, done.stdout + done.stderr
    lines = task_lines(done.stdout)
    assert sorted(lines) == sorted(tasks(ASSIGNMENT)), done.stdout
    for name, text in lines.items():
        assert text.split()[0] == "FAIL", text
        assert (
            "raised NotImplementedError: replace `raise NotImplementedError()` with "
            "your code" in text
        ), text
        assert "\n          Hint: " in text, f"{name}: no hint\n{text}"
    assert f"0 of {len(lines)} tasks pass" in done.stdout
    assert (
        "Traceback" not in done.stdout + done.stderr
        and "site-packages" not in done.stdout
    )


@pytest.mark.parametrize(
    "content, reason",
    [
        ('{"cells": [', "is not a valid notebook (NotJSONError"),
        (
            '{"nbformat": 3, "nbformat_minor": 0, "metadata": {}, "worksheets": []}',
            "is nbformat 3, expected 4",
        ),
        (None, "no such file"),
        (nbformat.writes(nbformat.v4.new_notebook()), "has no graded test cells"),
    ],
)
def test_a_broken_notebook_gets_one_line(tmp_path, capsys, content, reason):
    from course.validate import main

    path = tmp_path / "mine.ipynb"
    if content is not None:
        path.write_text(content)
    assert main(str(path)) == 2
    out = capsys.readouterr()
    assert not out.err and len(out.out.strip().splitlines()) == 1, out
    assert reason in out.out and str(path) in out.out, out.out


def test_a_corrupt_notebook_gets_one_line_from_the_command_line(tmp_path):
    path = tmp_path / "mine.ipynb"
    path.write_text('{"cells": [')
    done = validate(path)
    assert done.returncode == 2
    out = (done.stdout + done.stderr).strip()
    assert (
        out == f"cannot validate: {path} is not a valid notebook (NotJSONError: Notebook "
        f"does not appear "
        """to be JSON: '{"cells": [')"""
    ), out
