"""The house: science in lib/, the instructor's tooling in course/, and lib needs none
of it."""

import subprocess
import sys
import tomllib

from tests.course_helpers import ROOT

COURSE_ONLY = (
    "nbgrader",
    "nbclient",
    "nbconvert",
    "nbformat",
    "traitlets",
    "jupyter_book",
    "jupyter_client",
    "course",
)


def test_every_lib_module_imports_without_the_course_tooling():
    # every module and package under lib/: lib.vae, ..., lib.zoo, lib.zoo.vae, ...
    modules = sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for p in (ROOT / "lib").rglob("*.py")
        if p.stem != "__main__"
    )
    code = (
        "import sys\n"
        f"for name in {COURSE_ONLY!r}:\n    sys.modules[name] = None  # importing it "
        f"raises ImportError\n"
        f"for module in {modules!r}:\n    __import__(module)\n"
        "print('ok')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT / "tests", capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_only_lib_is_installed_and_its_dependencies_are_the_science_stack():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["tool"]["setuptools"]["packages"]["find"]["include"] == [
        "lib",
        "lib.*",
    ]
    assert not any(
        name.split("=")[0].strip().lower() in ("nbgrader", "nbclient", "jupyter-book")
        for name in project["project"]["dependencies"]
    )


def test_the_books_cache_key_ignores_the_course_tooling(tmp_path):
    from course.book import lib_fingerprint

    for folder in ("lib", "course"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x.py").write_text("a = 1\n")
    (tmp_path / "constraints.txt").write_text("torch==2.13.0\n")
    before = lib_fingerprint(tmp_path)
    (tmp_path / "course" / "x.py").write_text("a = 2\n")
    assert lib_fingerprint(tmp_path) == before, (
        "editing the grader must not re-run the book"
    )
    (tmp_path / "lib" / "x.py").write_text("a = 2\n")
    assert lib_fingerprint(tmp_path) != before
