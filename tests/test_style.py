"""Code a reader sees is at most `MAX_LINE` characters a line: the book's code cells, the
solution notebooks and the released exercise notebooks. At that width a cell fits the text
column at 1280 px (book/_static/dgm.css; tests/test_browser.py looks at the rendered
page).

The same limit is ruff's ``line-length`` (pyproject.toml), which ``make test`` checks on
the notebooks; the book's pages are MyST text, which ruff does not read, so they are
checked here.
"""

import re
from pathlib import Path

import nbformat
import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent
MAX_LINE = 90
CODE_CELL = re.compile(r"^```\{code-cell\}[^\n]*\n(.*?)^```$", re.S | re.M)
PAGES = sorted((ROOT / "book").glob("*.md"))
NOTEBOOKS = sorted(
    [*(ROOT / "solutions").glob("*/*.ipynb"), *(ROOT / "notebooks").glob("*/*.ipynb")]
)


def long_lines(code: str, where: str, first_line: int = 1) -> list[str]:
    return [
        f"{where}:{first_line + i}: {len(line)} characters: {line.strip()[:60]}"
        for i, line in enumerate(code.splitlines())
        if len(line) > MAX_LINE
    ]


def test_the_limit_is_ruffs_line_length():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert config["tool"]["ruff"]["line-length"] == MAX_LINE


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_code_cell_of_a_page_has_a_line_wider_than_the_column(page):
    text = page.read_text()
    found = []
    for cell in CODE_CELL.finditer(text):
        found += long_lines(
            cell.group(1), page.relative_to(ROOT), text[: cell.start(1)].count("\n") + 1
        )
    assert not found, found[:10]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_code_cell_of_a_notebook_has_a_line_wider_than_the_column(notebook):
    nb = nbformat.read(notebook, as_version=4)
    found = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            found += long_lines(cell.source, f"{notebook.relative_to(ROOT)} cell {i}")
    assert not found, found[:10]


def test_a_long_line_is_found():
    page = "```{code-cell} ipython3\nx = 1\n" + "y = '" + "a" * MAX_LINE + "'\n```\n"
    cells = [m.group(1) for m in CODE_CELL.finditer(page)]
    assert len(cells) == 1 and long_lines(cells[0], "page", 2) == [
        f"page:3: {MAX_LINE + 6} characters: y = '{'a' * 55}"
    ]
