"""Every exercise notebook runs, with nbval (``pytest --nbval-lax``), as a student would
run it.

- ``solutions/NN-topic/NN-topic.ipynb``, the instructor's versions, must run from top to
  bottom without an error: every visible self-check (and the hidden tests, which are in
  the same cells) passes. Their test cells carry the ``raises-exception`` tag for the
  release, which nbval reads as "an error here is fine", so the notebooks run from a
  copy without that tag.
- ``notebooks/NN-topic/NN-topic.ipynb``, the blank releases, as they are: the setup and
  the function stubs run; the test cells (tagged ``raises-exception``) fail with
  ``NotImplementedError`` messages, as they should before a student writes anything.

Each notebook runs in its own ``pytest --nbval-lax`` process (its own kernel, in the
notebook's folder, with this environment: ``DGM_PROGRESS=0`` from tests/conftest.py, so
no progress bars). nbval reports a failing cell with its traceback; this test shows that
report. A solution notebook takes 5-40 s on a 2-core CPU, a blank one a few seconds;
two run at a time.
"""

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import nbformat
import pytest

from tests.course_helpers import ROOT, assignments

pytestmark = pytest.mark.slow
CELL_TIMEOUT_S = 300  # nbval's own default is 2000 s


def nbval(notebook, cwd) -> subprocess.CompletedProcess:
    """``pytest --nbval-lax notebook`` in a fresh process, outside this repository's
    pytest set-up."""
    command = [
        sys.executable,
        "-m",
        "pytest",
        "--nbval-lax",
        "--nbval-current-env",
        f"--nbval-cell-timeout={CELL_TIMEOUT_S}",
        "-p",
        "no:cacheprovider",
        "-q",
        "--no-header",
        "-o",
        "addopts=",
        "--rootdir",
        str(cwd),
        str(notebook),
    ]
    env = {**os.environ, "DGM_PROGRESS": "0"}
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200
    )


def without_raises_exception(src, dst):
    nb = nbformat.read(src, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.get("tags")
        if tags and "raises-exception" in tags:
            cell.metadata["tags"] = [t for t in tags if t != "raises-exception"]
    dst.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, dst)
    return dst


def report(done) -> str:
    return (done.stdout[-6000:] + done.stderr[-2000:]).strip()


def released_copy(src, dst):
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(src.read_bytes())
    return dst


@pytest.fixture(scope="module")
def nbval_runs(tmp_path_factory):
    """Every notebook's nbval run, two at a time (a kernel runs on one thread, and this
    machine may have two cores): ``(kind, assignment) -> Future`` of its result."""
    pool = ThreadPoolExecutor(max_workers=2)
    runs = {}
    for assignment in assignments():
        for kind, prepare, folder in (
            ("solution", without_raises_exception, "solutions"),
            ("release", released_copy, "notebooks"),
        ):
            where = tmp_path_factory.mktemp(f"{kind}-{assignment}")
            notebook = prepare(
                ROOT / folder / assignment / f"{assignment}.ipynb",
                where / assignment / f"{assignment}.ipynb",
            )
            runs[kind, assignment] = pool.submit(nbval, notebook, where)
    yield runs
    pool.shutdown(cancel_futures=True)


@pytest.mark.parametrize("assignment", assignments())
def test_solution_notebook_runs_without_an_error(assignment, nbval_runs):
    done = nbval_runs["solution", assignment].result()
    assert done.returncode == 0 and " passed" in done.stdout, (
        f"solutions/{assignment} does not run cleanly under nbval:\n{report(done)}"
    )


@pytest.mark.parametrize("assignment", assignments())
def test_released_notebook_runs_with_only_its_test_cells_failing(assignment, nbval_runs):
    done = nbval_runs["release", assignment].result()
    assert done.returncode == 0 and " passed" in done.stdout, (
        f"notebooks/{assignment} fails outside its test cells under "
        f"nbval:\n{report(done)}"
    )
