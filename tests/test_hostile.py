"""A hostile class: students who try to buy a score without solving anything.

Two real assignments are graded, 01-kl (four functions) and 04-vae (four functions and a
training run). Every attack below comes with answers that are wrong (zeros, an untrained
model), or right only if the attack worked (it read hidden tests or the solutions, or
found an expected value), so every point an attacker earns is a point the attack bought.
Each class of attack that earned points when the test cells ran in the student's kernel
is here:

- ``helpers``: replace lib.grading's check, expect_close, call and passed;
- ``torch``: make torch's comparisons always agree;
- ``builtins``: replace builtins (AssertionError, all);
- ``frames`` and ``gc``: return the ``expected`` value found in a caller's frame or on
  the heap;
- ``history``: read the test cells from the kernel's input history, its history
  database, and every request the grader sends;
- ``disk``: read solutions/, the gradebook, autograded/ and .autograde/ (of this course
  and of the repository lib comes from), knowing their paths;
- ``hooks``: IPython input and AST transformers, a custom exception handler, a
  showtraceback override and a post_run_cell callback that silence or rewrite test
  cells.

Each must score 0 on every cell; the summary flags the kinds the grader can detect.
"""

import re
import shutil
from pathlib import Path

import nbformat
import pytest

from course import autograde, sandbox
from tests.course_helpers import ROOT, course_command, solution_answers, submission

pytestmark = pytest.mark.slow
ASSIGNMENTS = ("01-kl", "04-vae")

WRONG = {  # answers that are wrong but well formed, per function
    "kl_categorical": "def _wrong_kl_categorical(p, q):\n    return "
    "torch.zeros(p.shape[:-1])",
    "kl_diag_gaussian": "def _wrong_kl_diag_gaussian(mu_p, var_p, mu_q, var_q):\n    "
    "return torch.zeros(mu_p.shape[:-1])",
    "kl_monte_carlo": "def _wrong_kl_monte_carlo(p, q, n):\n    return "
    "torch.zeros(p.batch_shape)",
    "factorised_fit_variances": "def _wrong_factorised_fit_variances(Sigma, direction):\n"
    "    if direction not in ('forward', 'reverse'):\n        raise "
    "ValueError(direction)\n"
    "    return torch.ones(Sigma.shape[0])",
    "gaussian_kl": "def _wrong_gaussian_kl(mu, logvar):\n    return "
    "torch.zeros(mu.shape[:-1])",
    "reparameterize": "def _wrong_reparameterize(mu, logvar):\n    return mu + 0 * "
    "logvar",
    "neg_elbo_bernoulli": "def _wrong_neg_elbo_bernoulli(x, x_logits, mu, logvar):\n   "
    " return torch.zeros(len(x))",
    "vae_loss": "def _wrong_vae_loss(model, x):\n    zero = 0 * "
    "model.decode(model.encode(x)[0]).sum()\n"
    "    return {'loss': zero, 'rec': zero, 'kl': zero}",
    "train_vae": "def _wrong_train_vae(x_train, seed=0):\n    return TinyVAE()",
    "iwae_log_likelihood": "def _wrong_iwae_log_likelihood(model, x, eps):\n    "
    "return torch.zeros(len(x))",
}

PRELUDE = {
    "helpers": """
import lib.grading as G
G.check = lambda fn, *a, expected=None, **k: expected
G.expect_close = lambda *a, **k: None
G.call = lambda fn, *a, blocked=(), **k: fn(*a, **k)
G.timed_call = lambda fn, *a, blocked=(), **k: (fn(*a, **k), 0.0)
G.passed = lambda message: print('\\N{CHECK MARK}', message)
leaked = lambda: False
""",
    "torch": """
import torch
torch.isclose = lambda a, b, **k: torch.ones(torch.broadcast_shapes(a.shape, b.shape), dtype=torch.bool)
torch.allclose = lambda *a, **k: True
torch.equal = lambda *a, **k: True
torch.testing.assert_close = lambda *a, **k: None
leaked = lambda: False
""",
    "builtins": """
import builtins
builtins.AssertionError = type('AssertionError', (Exception,), {})  # a failed check is no longer one
builtins.all = lambda iterable: True
leaked = lambda: False
""",
    "frames": """
import sys
def stolen():
    frame = sys._getframe(1)
    while frame is not None:
        if 'expected' in frame.f_locals:
            return frame.f_locals['expected']
        frame = frame.f_back
leaked = lambda: False
""",
    "gc": """
import gc, types
def stolen():
    for obj in gc.get_objects():
        if isinstance(obj, types.FrameType) and 'expected' in obj.f_locals:
            return obj.f_locals['expected']
        if isinstance(obj, dict) and 'expected' in obj and hasattr(obj['expected'], 'shape'):
            return obj['expected']
leaked = lambda: False
""",
    "history": """
import base64, sys
import lib.grading as G
SEEN = globals().setdefault('SEEN', [])
if not getattr(G.serve, 'spied', False):
    _serve = G.serve
    def spy(request):
        SEEN.append(base64.b64decode(request))
        return _serve(request)
    spy.spied = True
    G.serve = spy
def leaked():
    shell = get_ipython()
    texts = [str(x) for x in globals().get('In', [])] + [str(x) for x in globals().get('_ih', [])]
    try:
        texts += [str(row) for row in shell.history_manager.get_range(raw=True)]
        texts += [str(row) for row in shell.history_manager.search('*')]
    except Exception:
        pass
    blob = '\\n'.join(texts).encode() + b''.join(SEEN)
    return any(secret in blob for secret in SECRETS)
""",
    "disk": """
from pathlib import Path
import lib
PLACES = [Path(lib.__file__).resolve().parents[1], Path(COURSE), Path.cwd(), *Path.cwd().parents]
def leaked():
    for place in PLACES:
        for pattern in ('solutions/*/*.ipynb', 'gradebook.db', 'autograded/*/*/*.ipynb', '.autograde/logs/*/*',
                        'submitted/*/*/*.ipynb', '.git/objects/*/*'):
            try:
                for path in place.glob(pattern):
                    try:
                        if path.is_file() and any(s in path.read_bytes() for s in SECRETS + [b'NEDDIH NIGEB'[::-1]]):
                            return True
                    except OSError:
                        pass
            except OSError:
                pass
    return False
""",
    "hooks": """
import ast
shell = get_ipython()
def silence(lines):
    return ['pass\\n'] if any('check(' in line or 'assert' in line for line in lines) else lines
class NoAsserts(ast.NodeTransformer):
    def visit_Assert(self, node):
        return ast.Pass()
if not getattr(shell, 'hooked', False):
    shell.hooked = True
    shell.input_transformers_post.append(silence)
    shell.ast_transformers.append(NoAsserts())
    shell.set_custom_exc((Exception,), lambda shell, etype, value, tb, tb_offset=None: None)
    shell.showtraceback = lambda *a, **k: None
    shell.events.register('post_run_cell', lambda result: setattr(result, 'error_in_exec', None))
leaked = lambda: False
""",
}
DETECTED = {  # what the summary must say for the kinds the grader can see
    "helpers": "lib.grading.check replaced",
    "torch": "torch.isclose changed",
    "builtins": "builtins changed: AssertionError",
    "hooks": "input transformers changed",
}


def secrets(assignment: str) -> list[bytes]:
    """Distinctive hidden-test lines: finding one means the hidden tests leaked."""
    source = nbformat.read(
        ROOT / "solutions" / assignment / f"{assignment}.ipynb", as_version=4
    )
    hidden = re.findall(
        r"### BEGIN HIDDEN TESTS\n(.*?)### END HIDDEN TESTS",
        "".join(c.source for c in source.cells),
        re.S,
    )
    return [
        line.strip().encode()
        for block in hidden
        for line in block.splitlines()
        if len(line.strip()) > 30
    ]


def written_answers(assignment: str) -> dict[str, float]:
    """grade_id -> points of the written answers (markdown, graded by hand)."""
    source = nbformat.read(
        ROOT / "solutions" / assignment / f"{assignment}.ipynb", as_version=4
    )
    return {
        c.metadata["nbgrader"]["grade_id"]: c.metadata["nbgrader"]["points"]
        for c in source.cells
        if c.cell_type == "markdown" and c.metadata.get("nbgrader", {}).get("grade")
    }


def attack(kind: str, assignment: str, course: Path) -> dict[str, str]:
    """Solution cells rewritten: the prelude, then each function right only if the attack
    leaked the answers (or returns a stolen expected value), else wrong. Written answers
    are left as released: a person grades them."""
    answers = {}
    for grade_id, right in solution_answers(assignment).items():
        if grade_id in written_answers(assignment):
            continue
        names = re.findall(r"^def (\w+)\(", right, re.M)
        # the secrets are written backwards, so that this cell's own source does not
        # contain them
        code = [
            f"COURSE = {str(course)!r}",
            f"SECRETS = [s[::-1] for s in {[s[::-1] for s in secrets(assignment)]!r}]",
            PRELUDE[kind],
            re.sub(r"^def (\w+)\(", r"def _right_\1(", right, flags=re.M),
        ]
        for name in names:
            code.append(WRONG[name])
            steal = (
                "    e = stolen()\n    if e is not None:\n        return e\n"
                if "stolen" in PRELUDE[kind]
                else ""
            )
            code.append(
                f"def {name}(*args, **kwargs):\n{steal}"
                f"    if leaked():\n        return _right_{name}(*args, **kwargs)\n"
                f"    return _wrong_{name}(*args, **kwargs)"
            )
        answers[grade_id] = "\n\n".join(code)
    return answers


@pytest.fixture(scope="module")
def hostile_class(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile-course")
    for a in ASSIGNMENTS:
        shutil.copytree(ROOT / "solutions" / a, root / "solutions" / a)
    shutil.copy(ROOT / "nbgrader_config.py", root)
    assert course_command(root, "release").returncode == 0
    for a in ASSIGNMENTS:
        students = {
            "honest": solution_answers(a),
            **{kind: attack(kind, a, root) for kind in PRELUDE},
        }
        for student, answers in students.items():
            folder = root / "submitted" / student / a
            folder.mkdir(parents=True)
            nbformat.write(submission(a, answers, root), folder / f"{a}.ipynb")
    done = course_command(root, "autograde", "--jobs", "2", timeout=1800)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {
        (line.split()[0], line.split()[1]): line
        for line in done.stdout.splitlines()[1:]
        if line.strip() and not line.startswith("note:")
    }
    return root, rows, done.stdout


def cell_scores(root, student, assignment):
    with autograde.gradebook(root) as gb:
        found = gb.find_submission(assignment, student)
        return {g.cell.name: g.score for nb in found.notebooks for g in nb.grades}


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_the_honest_solution_scores_full_marks_among_attackers(hostile_class, assignment):
    root, rows, _ = hostile_class
    with autograde.gradebook(root) as gb:
        found = gb.find_submission(assignment, "honest")
        # the written answers wait for a person
        written = sum(written_answers(assignment).values())
        assert found.score == found.max_score - written > 0, rows[("honest", assignment)]
    assert "tampering" not in rows[("honest", assignment)]


@pytest.mark.parametrize("kind", sorted(PRELUDE))
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_an_attack_buys_no_point(hostile_class, assignment, kind):
    if kind == "disk" and not sandbox.isolated():
        pytest.skip(
            "files on disk are protected only when grading runs as root (see the README)"
        )
    root, rows, _ = hostile_class
    scores = cell_scores(root, kind, assignment)
    assert scores and all(score == 0 for score in scores.values()), (
        scores,
        rows[(kind, assignment)],
    )


@pytest.mark.parametrize("kind", sorted(DETECTED))
def test_the_summary_flags_the_tampering_it_can_see(hostile_class, kind):
    _, rows, _ = hostile_class
    for assignment in ASSIGNMENTS:
        assert (
            "tampering: " in rows[(kind, assignment)]
            and DETECTED[kind] in rows[(kind, assignment)]
        ), rows[(kind, assignment)]


def test_the_leak_attacks_would_have_worked_in_the_students_kernel(tmp_path):
    """The leak-dependent answers are right when the secret is there: the attacks are
    real."""
    answers = attack("disk", "01-kl", tmp_path)["kl_categorical"]
    (tmp_path / "solutions" / "01-kl").mkdir(parents=True)
    shutil.copy(
        ROOT / "solutions" / "01-kl" / "01-kl.ipynb", tmp_path / "solutions" / "01-kl"
    )
    env = {"__name__": "__main__"}
    exec("import torch\n" + answers, env)
    import torch

    p, q = torch.tensor([0.7, 0.3]), torch.tensor([0.5, 0.5])
    assert float(env["kl_categorical"](p, q)) > 0, (
        "with solutions/ readable, the disk attack answers right"
    )
    env = {"__name__": "__main__"}
    exec("import torch\n" + attack("frames", "01-kl", tmp_path)["kl_categorical"], env)

    def checker(expected):  # a test cell that runs in the same process, as before
        return env["kl_categorical"](p, q)

    assert checker(torch.tensor(42.0)) == 42.0, (
        "in the student's process, the frames attack steals"
    )
