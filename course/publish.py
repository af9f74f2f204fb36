"""nbgrader's own steps, wrapped: release the student versions, return feedback, export
grades."""

import subprocess
import sys
from pathlib import Path

from nbgrader.preprocessors import ClearHiddenTests

from course.autograde import BIN, ENV, assignments


def nbgrader(
    root: Path, *args: str, timeout: float | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "nbgrader"), *args],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
    )


def release(root: Path) -> int:
    """Every assignment in one nbgrader process ("*" is its glob over assignment ids):
    starting nbgrader costs seconds, converting a notebook a fraction of one."""
    done = nbgrader(root, "generate_assignment", "*", "--force")
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        return done.returncode
    for a in assignments(root):
        print(f"released {a} -> notebooks/{a}/{a}.ipynb")
    return 0


class RedactHiddenTests(ClearHiddenTests):
    """Feedback preprocessor: drop hidden-test code and the tracebacks that would quote
    it.

    nbgrader's feedback shows the autograded notebook as it ran, hidden tests included.
    Here the hidden region is cut out of each test cell, and an error output keeps only
    its last line (``AssertionError: <what was called, returned, expected, and a
    hint>``).
    """

    enforce_metadata = False

    def preprocess_cell(self, cell, resources, cell_index):
        if cell.cell_type == "code":
            self._remove_hidden_test_region(cell)
            for output in cell.get("outputs", []):
                if output.get("output_type") == "error":
                    output["traceback"] = [
                        f"{output.get('ename', 'Error')}: {output.get('evalue', '')}"
                    ]
        return cell, resources


def feedback(root: Path, only: str | None = None) -> int:
    """Feedback for one assignment, or for all of them in one nbgrader process."""
    done = nbgrader(root, "generate_feedback", only or "*", "--force")
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-2000:] + done.stderr[-2000:])
    return done.returncode


def grades(root: Path) -> int:
    done = nbgrader(root, "export")
    sys.stderr.write(done.stderr[-2000:])
    if done.returncode == 0:
        print("wrote grades.csv")
    return done.returncode
