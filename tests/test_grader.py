"""course.grader's pieces that need no kernel: what the test cells' namespace takes from
the student's kernel, what a request carries, and how a returned model is rebuilt."""

import base64
import contextlib
import io
import pickle
import subprocess
import sys
import types

import pytest
import torch

from course import autograde, grader
from lib import grading

grader._import_science()  # as GradingExecute.preprocess does


def test_nbgrader_loads_the_grader_without_importing_torch():
    """torch (over a second) is imported by the setup thread while the kernel starts,
    not on the way to it."""
    code = "import sys, course.grader; print(sorted({'torch', 'lib'} & set(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


class FakeSession:
    """Answers lookups as a student's kernel would, and records them."""

    def __init__(self, kernel_names):
        self.kernel_names, self.asked = kernel_names, []

    def lookup(self, name):
        self.asked.append(name)
        if name not in self.kernel_names:
            raise KeyError(name)
        return grading.Remote(name, self)


def test_bound_names_cover_every_way_a_cell_binds_one():
    source = (
        "import torch\nfrom lib.grading import check as c\nx, (y, z) = 1, (2, 3)\n"
        "def helper(a, *b, k=1, **kw):\n    local = a\nclass Model:\n    pass\n"
        "for i in range(3):\n    pass\ntry:\n    pass\nexcept Exception as err:\n    "
        "pass\n"
        "with open('f') as handle:\n    pass\n[w for w in ()]\n"
    )
    assert {
        "torch",
        "c",
        "x",
        "y",
        "z",
        "helper",
        "a",
        "b",
        "k",
        "kw",
        "local",
        "Model",
        "i",
        "err",
        "handle",
        "w",
    } <= grader.bound_names(source)


def test_only_names_no_instructor_cell_binds_come_from_the_kernel():
    session = FakeSession({"kl_categorical", "test_neg_elbo", "x_test"})
    namespace = grader.Namespace({"test_neg_elbo", "x_test", "oracle"}, session)
    exec("f = kl_categorical\nn = len([1])", namespace)
    assert isinstance(namespace["f"], grading.Remote) and namespace["n"] == 1
    # a student who deleted the setup cell and defined the grader's estimator gets a
    # NameError, never their own version
    with pytest.raises(NameError):
        exec("test_neg_elbo(None, x_test)", namespace)
    assert session.asked == ["kl_categorical"]
    namespace.forget_kernel_values()
    assert "kl_categorical" not in namespace


def test_a_request_carries_inputs_and_names_never_the_test_source():
    session = FakeSession({"reparameterize"})
    namespace = grader.Namespace({"w", "probe_fn", "expected_text"}, session)
    exec(
        "import torch\nw = torch.ones(2)\nexpected_text = 'THE-EXPECTED-VALUE'\n"
        "def probe_fn(mu):\n    return reparameterize(mu, w), 'PROBE-CONSTANT'\n",
        namespace,
    )
    buffer = io.BytesIO()
    grader._Request(buffer, namespace).dump(
        ("call", namespace["probe_fn"], (torch.zeros(2),), {}, (), 0)
    )
    payload = buffer.getvalue()
    assert b"reparameterize" in payload  # the student's function, by name
    assert b"PROBE-CONSTANT" in payload  # the probe's own code travels ...
    assert b"THE-EXPECTED-VALUE" not in payload  # ... but not the test's other globals
    assert b"def probe_fn" not in payload  # nor any source text


def test_the_kernel_rebuilds_a_test_function_from_its_code(monkeypatch):
    session = FakeSession({"double"})
    namespace = grader.Namespace({"offset", "probe_fn"}, session)
    exec("offset = 10\ndef probe_fn(x):\n    return double(x) + offset\n", namespace)
    buffer = io.BytesIO()
    grader._Request(buffer, namespace).dump(
        ("call", namespace["probe_fn"], (1,), {}, (), 0)
    )
    student = types.ModuleType("__main__")
    student.double = lambda x: 2 * x
    monkeypatch.setitem(__import__("sys").modules, "__main__", student)
    replies = []
    monkeypatch.setattr(grading, "_reply", replies.append)
    grading.serve(base64.b64encode(buffer.getvalue()).decode())
    assert replies == [{"value": 12}]


class Tiny(torch.nn.Module):
    def __init__(self, hidden=4):
        super().__init__()
        self.hidden = hidden
        self.layer = torch.nn.Linear(3, hidden)


def test_a_returned_model_is_rebuilt_from_the_trusted_class_only():
    session = grader.Session(client=None)
    session.namespace = grader.Namespace({"Tiny"}, FakeSession(set()))
    dict.__setitem__(session.namespace, "Tiny", Tiny)
    model = Tiny(hidden=5)
    tree = grading.encode(model)
    tree["module"][0] = ["__main__.Tiny"]  # as the kernel names a class of the setup cell
    got = grading.decode(tree, session._rebuild)
    assert (
        type(got) is Tiny
        and got.hidden == 5
        and torch.equal(got.layer.weight, model.layer.weight)
    )
    forged = grading.encode(model)
    forged["module"][0] = ["__main__.Tiny"]
    # a config that would exhaust memory
    forged["module"][1] = grading.encode({"hidden": 10**9})
    with pytest.raises(grading.CallFailed, match="do not match"):
        grading.decode(forged, session._rebuild)
    unknown = grading.encode(model)
    unknown["module"][0] = ["__main__.MyOwnModel", "torch.nn.modules.module.Module"]
    with pytest.raises(grading.CallFailed, match="cannot rebuild"):
        grading.decode(unknown, session._rebuild)


def test_a_student_exception_comes_back_as_its_builtin_type_or_a_named_one():
    assert grader._exception_type("ValueError") is ValueError
    assert grader._exception_type("NotImplementedError") is NotImplementedError
    custom = grader._exception_type("MyError")
    assert issubclass(custom, Exception) and custom.__name__ == "MyError"
    assert grader._exception_type("CallFailed") is not grading.CallFailed
    with pytest.raises(pickle.UnpicklingError):
        grading._Requests(io.BytesIO(pickle.dumps(None))).persistent_load(("other", "x"))


class FlakyStart(grader.GradingExecute):
    """A grader whose kernel fails to start the first ``failures`` times (as when two
    graders' kernels race for the same ports); the kernel itself is a stand-in."""

    def __init__(self, failures, **kwargs):
        super().__init__(**kwargs)
        self.failures, self.starts = failures, 0

    @contextlib.contextmanager
    def setup_kernel(self, **kwargs):
        self.starts += 1
        if self.starts <= self.failures:
            raise RuntimeError("Kernel died before replying to kernel_info")
        self.kc = types.SimpleNamespace(kernel_info=lambda: "msg-id")
        yield

    def wait_for_reply(self, msg_id, cell=None):
        return {"content": {"status": "ok"}}


def test_a_kernel_that_fails_to_start_is_started_again_then_the_notebook_fails_with_why(
    monkeypatch,
):
    monkeypatch.setattr(grader.time, "sleep", lambda s: None)
    flaky = FlakyStart(failures=2, start_tries=3)
    with flaky._started_kernel():
        pass
    assert flaky.starts == 3
    broken = FlakyStart(failures=3, start_tries=3)
    with pytest.raises(
        RuntimeError, match=r"did not start \(3 tries; last: RuntimeError: Kernel died"
    ):
        with broken._started_kernel():
            pytest.fail("graded without a kernel")


def test_a_failed_run_reports_the_exception_not_nbgraders_last_words(tmp_path):
    log = tmp_path / "probe.log"
    log.write_text(
        "[AutogradeApp | ERROR] There was an error processing assignment: probe\n"
        "[AutogradeApp | ERROR] Traceback (most recent call last):\n"
        '  File "grader.py", line 1, in preprocess\n'
        "RuntimeError: the grading kernel did not start (3 tries)\n"
        "[AutogradeApp | ERROR] Please see the the above traceback for details\n"
    )
    assert (
        autograde._last_error(log)
        == "RuntimeError: the grading kernel did not start (3 tries)"
    )


def test_while_the_setup_runs_beside_the_kernel_no_name_is_fetched_from_it():
    """The setup cells run in a thread while the main one talks to the kernel
    (`GradingExecute._run_setup`): a lookup from there would cross that conversation."""
    session = FakeSession({"kl_categorical"})
    namespace = grader.Namespace(set(), session)
    namespace.offline = True
    with pytest.raises(NameError):
        exec("kl_categorical", namespace)
    assert session.asked == []
    namespace.offline = False
    exec("found = kl_categorical", namespace)
    assert session.asked == ["kl_categorical"] and isinstance(
        namespace["found"], grading.Remote
    )
