"""The course end to end: exercise metadata, solution notebooks, release, autograde, feedback,
grades, and the book's execution cache. Autograding runs in a temporary copy of the course."""
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from lib import autograde, course
from tests.course_helpers import (ROOT, assignments, secret_lines, solution_answers, source,
                                  submission, visible_text)

pytestmark = pytest.mark.slow
ASSIGNMENTS = assignments()

# Plausible wrong answers, one submission per assignment: grade_id of a solution cell -> the
# student's code, and the test cells that must lose points because of it.
WRONG = {
    "01-kl": {
        "answers": {
            "kl_categorical": "def kl_categorical(p, q):\n    return (torch.xlogy(q, q) - torch.xlogy(q, p)).sum(-1)",
            "kl_diag_gaussian": "def kl_diag_gaussian(mu_p, var_p, mu_q, var_q):\n"
                                "    return (var_p / var_q + (mu_q - mu_p) ** 2 / var_q - 1 + var_q.log() - var_p.log()).sum(-1)",
            "kl_monte_carlo": "def kl_monte_carlo(p, q, n):\n    x = q.sample((n,))\n    return (p.log_prob(x) - q.log_prob(x)).mean(0)",
            "factorised_fit_variances": "def factorised_fit_variances(Sigma, direction):\n"
                                        "    d = Sigma.diagonal() if direction == 'reverse' else 1 / torch.linalg.inv(Sigma).diagonal()\n"
                                        "    return d.clone()",
        },
        "lose": ["test_kl_categorical", "test_kl_diag_gaussian", "test_kl_monte_carlo", "test_factorised_fit_variances"],
    },
    "02-vi": {
        "answers": {
            "update_q_tau": "def update_q_tau(x, m, lam, mu0, lam0, a0, b0):\n    n = len(x)\n"
                            "    expected_squares = ((x - m) ** 2).sum() + n / lam + lam0 * ((m - mu0) ** 2 + 1 / lam)\n"
                            "    return torch.stack([a0 + n / 2, b0 + 0.5 * expected_squares])",
            "ising_elbo": "def ising_elbo(m, J, h):\n"
                          "    return J * ((m[1:, :] * m[:-1, :]).sum() + (m[:, 1:] * m[:, :-1]).sum()) + h * m.sum()",
            "largest_decrease": "def largest_decrease(elbos):\n    return (elbos[1:] - elbos[:-1]).clamp(min=0).max()",
        },
        "lose": ["test_update_q_tau", "test_ising_elbo", "test_largest_decrease"],
    },
    "03-elbo": {
        "answers": {
            "responsibilities": "def responsibilities(x, weights, means, covs):\n"
                                "    return (weights.log() + MultivariateNormal(means, covariance_matrix=covs).log_prob(x[:, None, :])).exp()",
            "gmm_elbo": "def gmm_elbo(x, weights, means, covs, resp):\n"
                        "    return (resp * (weights.log() + MultivariateNormal(means, covariance_matrix=covs).log_prob(x[:, None, :]))).sum()",
            "m_step": "def m_step(x, resp):\n    N = resp.sum(0)\n    means = resp.T @ x / N[:, None]\n"
                      "    diff = x[None, :, :] - means[:, None, :]\n"
                      "    return N / len(x), means, torch.einsum('nk,kni,knj->kij', resp, diff, diff) / (N - 1)[:, None, None]",
        },
        "lose": ["test_responsibilities", "test_gmm_elbo", "test_m_step"],
    },
}
# Calling the reference instead of implementing it: every task must score 0.
CHEAT = {
    "01-kl": {
        "kl_categorical": "from torch.distributions import kl_divergence, Categorical\n"
                          "def kl_categorical(p, q):\n    return kl_divergence(Categorical(probs=p), Categorical(probs=q))",
        "kl_diag_gaussian": "import lib.kl\ndef kl_diag_gaussian(mu_p, var_p, mu_q, var_q):\n"
                            "    return lib.kl.kl_gaussian(mu_p, var_p, mu_q, var_q)",
        "kl_monte_carlo": "def kl_monte_carlo(p, q, n):\n    return torch.distributions.kl_divergence(p, q)",
    },
}


# ---------------------------------------------------------------------------- exercise sources

def grade_cells(nb):
    return [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_exercise_metadata_is_valid(assignment):
    nb = source(assignment)
    nbformat.validate(nb)
    ids = [c.metadata["nbgrader"]["grade_id"] for c in nb.cells if "nbgrader" in c.metadata]
    assert len(ids) == len(set(ids)) == len(nb.cells), "every cell has nbgrader metadata and a unique grade_id"
    tests = grade_cells(nb)
    assert len(tests) >= 3, "at least three graded tasks"
    for cell in tests:
        meta = cell.metadata["nbgrader"]
        assert meta["locked"] and not meta["solution"] and meta["points"] > 0, meta["grade_id"]
        assert "raises-exception" in cell.metadata.get("tags", []), f"{meta['grade_id']} needs the raises-exception tag"
        assert "### BEGIN HIDDEN TESTS" in cell.source, f"{meta['grade_id']} has no hidden tests"
        assert "from lib.grading import" in cell.source, f"{meta['grade_id']} should check through lib.grading"
    for cell in nb.cells:
        meta = cell.metadata["nbgrader"]
        if meta["solution"]:
            assert cell.cell_type == "code" and "### BEGIN SOLUTION" in cell.source and "### END SOLUTION" in cell.source


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_solution_notebook_executes(assignment, tmp_path):
    nb = source(assignment)
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    passed = [o for c in grade_cells(nb) for o in c.outputs if o.get("name") == "stdout" and "\N{CHECK MARK}" in o.text]
    assert len(passed) >= len(grade_cells(nb)), "every visible self-check prints its success line"


# ---------------------------------------------------------------------------- a course in a temporary folder

def run_course(root: Path, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "lib.course", *args], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.fixture(scope="module")
def course_copy(tmp_path_factory):
    root = tmp_path_factory.mktemp("course")
    shutil.copytree(ROOT / "solutions", root / "solutions")
    shutil.copy(ROOT / "nbgrader_config.py", root)
    run_course(root, "release")
    return root


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_committed_release_equals_a_fresh_release(course_copy, assignment):
    fresh = (course_copy / "notebooks" / assignment / f"{assignment}.ipynb").read_text()
    committed = (ROOT / "notebooks" / assignment / f"{assignment}.ipynb").read_text()
    assert fresh == committed, f"notebooks/{assignment} is stale: run `make release` and commit it"


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_release_has_no_solutions_or_hidden_tests(assignment):
    text = (ROOT / "notebooks" / assignment / f"{assignment}.ipynb").read_text()
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS"):
        assert marker not in text
    leaked = [line for line in secret_lines(assignment) if line in text]
    assert not leaked, f"solution or hidden-test lines in the release: {leaked[:3]}"
    assert "# YOUR CODE HERE" in text


@pytest.fixture(scope="module")
def graded(course_copy):
    """Autograde a small class: right, blank, wrong, cheating, corrupt and missing submissions."""
    def hand_in(student, assignment, nb=None, raw=None, name=None):
        folder = course_copy / "submitted" / student / assignment
        folder.mkdir(parents=True)
        path = folder / (name or f"{assignment}.ipynb")
        if raw is not None:
            path.write_text(raw)
        else:
            nbformat.write(nb, path)

    for a in ASSIGNMENTS:
        hand_in("right", a, submission(a, solution_answers(a), course_copy))
        hand_in("blank", a, submission(a, {}, course_copy))
        hand_in("wrong", a, submission(a, WRONG[a]["answers"], course_copy))
        if a in CHEAT:
            hand_in("cheat", a, submission(a, CHEAT[a], course_copy))
        hand_in("corrupt", a, raw='{"cells": [')
        hand_in("renamed", a, submission(a, solution_answers(a), course_copy), name="my-work.ipynb")
    before = {p: p.read_bytes() for p in (course_copy / "submitted").rglob("*") if p.is_file()}
    done = run_course(course_copy, "autograde", "--jobs", "2")
    after = {p: p.read_bytes() for p in (course_copy / "submitted").rglob("*") if p.is_file()}
    assert before == after, "autograde must never modify submissions"
    return course_copy, done.stdout


def cell_scores(root, student, assignment):
    with autograde.gradebook(root) as gb:
        submission_ = gb.find_submission(assignment, student)
        return {g.cell.name: (g.score, g.max_score) for nb in submission_.notebooks for g in nb.grades}


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_solutions_score_full_marks(graded, assignment):
    root, _ = graded
    scores = cell_scores(root, "right", assignment)
    assert scores and all(score == top for score, top in scores.values()), scores


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_untouched_release_scores_zero_on_every_graded_cell(graded, assignment):
    root, _ = graded
    scores = cell_scores(root, "blank", assignment)
    assert scores and all(score == 0 for score, _ in scores.values()), scores


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_wrong_answers_lose_points(graded, assignment):
    root, _ = graded
    scores = cell_scores(root, "wrong", assignment)
    for cell in WRONG[assignment]["lose"]:
        assert scores[cell][0] < scores[cell][1], f"{cell} gave points to a wrong answer"


@pytest.mark.parametrize("assignment", sorted(CHEAT))
def test_calling_the_reference_scores_nothing(graded, assignment):
    root, _ = graded
    scores = cell_scores(root, "cheat", assignment)
    cheated = {f"test_{grade_id}" for grade_id in CHEAT[assignment]}
    assert all(scores[cell][0] == 0 for cell in cheated), scores


def test_broken_submissions_are_reported_by_name_and_score_zero(graded):
    root, summary = graded
    rows = {tuple(line.split()[:2]): line for line in summary.splitlines()[1:]}
    for a in ASSIGNMENTS:
        corrupt, renamed = rows[("corrupt", a)], rows[("renamed", a)]
        assert corrupt.split()[2].startswith("0/") and "01-kl.ipynb is not a valid notebook".replace("01-kl", a) in corrupt
        assert renamed.split()[2].startswith("0/") and f"missing {a}.ipynb (found: my-work.ipynb)" in renamed
        assert rows[("right", a)].split()[2].split("/")[0] == rows[("right", a)].split()[2].split("/")[1]


def test_feedback_shows_no_hidden_tests(graded):
    root, _ = graded
    run_course(root, "feedback")
    pages = list((root / "feedback").rglob("*.html"))
    assert pages, "feedback was generated"
    for page in pages:
        text = visible_text(page.read_text())
        assert "BEGIN HIDDEN TESTS" not in text
        assignment = page.parent.name
        leaked = [line for line in secret_lines(assignment, solutions=False) if line in text]
        assert not leaked, f"{page.relative_to(root)} shows hidden-test lines: {leaked[:3]}"


def test_grades_export(graded):
    root, _ = graded
    run_course(root, "grades")
    rows = (root / "grades.csv").read_text().splitlines()
    students = {row.split(",")[3] for row in rows[1:]}
    assert {"right", "blank", "wrong", "corrupt", "renamed"} <= students


# ---------------------------------------------------------------------------- the book's cache

def test_book_cache_is_cleared_when_lib_changes(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "kl.py").write_text("x = 1\n")
    (tmp_path / "constraints.txt").write_text("torch==2.13.0\n")
    cache = tmp_path / "_build" / ".jupyter_cache"
    cache.mkdir(parents=True)
    assert course.invalidate_stale_cache(tmp_path) and not cache.exists()  # no record: assume stale
    cache.mkdir()
    assert not course.invalidate_stale_cache(tmp_path) and cache.exists()  # unchanged lib: keep
    (tmp_path / "lib" / "kl.py").write_text("x = 2\n")
    assert course.invalidate_stale_cache(tmp_path) and not cache.exists()  # edited lib: clear
