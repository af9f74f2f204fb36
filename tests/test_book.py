"""The built book (``make test`` builds it first with -W): every toc page rendered,
chapter pages executed, and no solution code or hidden test anywhere in the HTML."""

import re

import pytest

from tests.course_helpers import (
    ROOT,
    assignments,
    release,
    secret_lines,
    toc_files,
    visible_text,
)

HTML = ROOT / "_build" / "html"


@pytest.fixture(scope="module")
def pages():
    if not (HTML / "index.html").exists():
        pytest.fail(
            "_build/html is missing: `make test` builds the book first (or run `make "
            "book`)"
        )
    return {f: (HTML / f"{f}.html").read_text() for f in toc_files()}


def test_every_toc_file_is_built(pages):
    assert all(pages.values())


def test_every_chapter_and_exercise_is_listed_in_the_toc():
    files = set(toc_files())
    chapters = {f"book/{p.stem}" for p in (ROOT / "book").glob("[0-9][0-9]-*.md")}
    assert chapters and chapters <= files
    assert {f"notebooks/{a}/{a}" for a in assignments()} <= files


def test_chapter_pages_were_executed(pages):
    for name, page in pages.items():
        if re.match(r"book/\d\d-", name):
            assert "cell_output" in page and "<img" in page, (
                f"{name} shows no executed output or figure"
            )
            assert "Traceback" not in visible_text(page), f"{name} shows an error"


def test_exercise_pages_show_the_student_version(pages):
    for a in assignments():
        text = visible_text(pages[f"notebooks/{a}/{a}"])
        assert "# YOUR CODE HERE" in text and "NotImplementedError" in text


def test_no_solutions_or_hidden_tests_in_the_html():
    # a hidden line of one assignment that another one's release or a chapter page prints
    # anyway (a common oracle, `x_val = digits(...)`, or chapter 1's
    # `mixture = MixtureSameFamily(`) gives nothing away
    released = "\n".join(
        [c.source for a in assignments() for c in release(a).cells]
        + [page.read_text() for page in sorted((ROOT / "book").glob("*.md"))]
    )
    secrets = {
        line: a for a in assignments() for line in secret_lines(a) if line not in released
    }
    for path in list(HTML.rglob("*.html")) + list((HTML / "_sources").rglob("*")):
        if path.is_file() and path.suffix in (".html", ".ipynb", ".md", ".txt"):
            text = visible_text(path.read_text(errors="ignore"))
            assert "BEGIN HIDDEN TESTS" not in text and "BEGIN SOLUTION" not in text, path
            leaked = [line for line in secrets if line in text]
            assert not leaked, f"{path.relative_to(ROOT)} leaks: {leaked[:3]}"


def test_pages_executed_before_the_build_are_found_by_it(tmp_path):
    """`course.book.execute_pages` caches each page as myst-nb's jupyter-cache reader
    reads it; the build looks pages up as read with the book's MyST settings. The two keys
    must agree, or every page is executed twice."""
    import yaml
    from jupyter_cache import get_cache
    from myst_nb.core.read import myst_nb_reader_plugin, read_myst_markdown_notebook
    from myst_parser.config.main import MdParserConfig

    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    myst = MdParserConfig(
        enable_extensions=set(config["parse"]["myst_enable_extensions"])
    )
    cache = get_cache(str(tmp_path))
    pages = sorted((ROOT / "book").glob("[0-9][0-9]-*.md")) + [ROOT / "book/results.md"]
    for page in pages:
        ours = myst_nb_reader_plugin(str(page))
        build = read_myst_markdown_notebook(page.read_text(), myst, path=page)
        assert any(c.cell_type == "code" for c in ours.cells), page
        assert (
            cache.create_hashed_notebook(ours)[1]
            == cache.create_hashed_notebook(build)[1]
        ), page
