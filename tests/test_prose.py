"""The chapter pages' prose: every number an experiment on the page computes is glued in
from the code that computes it (myst-nb's ``{glue:text}``), never typed by hand.

Two kinds of check:

* on the sources (no build needed): every chapter page glues numbers into its prose and
  asserts the comparisons its prose makes, and every ``{glue:text}`key``` it uses is
  glued by one of its own code cells;
* on the built book (``make test`` builds it first, like tests/test_book.py): no number
  that a page's executed cells print in a table (its results table and the other
  measured tables) appears typed in that page's prose. A typed copy is a sentence that a
  retrain can make false.

A number in the prose counts as a copy of a table entry when it is the entry rounded to
the digits the prose shows: "0.74" copies 0.7412 and "4.5" copies 4.50. Only numbers
with at least two significant digits, and percentages of at least 10 %, are compared (a
lone "2" or "0.5" says too little to be a copy). A number that is also typed as a
literal in one of the page's code cells is a setting of the experiment (a learning rate,
beta = 0.25), not a result, and may be typed. Set DGM_BOOK_HTML to a folder of other
builds (single-page builds included) to check those instead of _build/html.
"""

import os
import re
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path

import jupytext
import pytest

from tests.course_helpers import ROOT

CHAPTERS = sorted((ROOT / "book").glob("[0-9][0-9]-*.md"))
GLUE_ROLE = re.compile(r"\{glue(?::text)?\}`([^`]+)`")
GLUED = re.compile(r"""\bglue\(\s*(?:f?["'])([^"']+)["']""")
# roles and markup whose text is not prose: references, citations, link targets, labels
NOT_PROSE = [
    GLUE_ROLE,
    re.compile(r"\{(?:eq|cite|cite:p|cite:t|numref|ref|doc|download)\}`[^`]*`"),
    re.compile(r"\]\([^)]*\)"),  # link targets
    re.compile(r"^\(\S+\)=\s*$", re.M),  # (label)=
    re.compile(r"\$\$\s*\(eq-[^)]*\)"),  # $$ (eq-label)
    re.compile(r"^:[\w-]+:.*$", re.M),  # directive options (:class:, :label:)
    re.compile(r"<!--.*?-->", re.S),
    re.compile(r"`[^`\n]*`"),  # inline code (names, not numbers)
]
DECIMAL = re.compile(r"(?<![\w.])(\d+\.\d+)(?![\w.])")
PERCENT = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)\s*(?:\\?%|\\,\\%)")


def cells(page: Path):
    nb = jupytext.read(page)
    return (
        [c.source for c in nb.cells if c.cell_type == "markdown"],
        [c.source for c in nb.cells if c.cell_type == "code"],
    )


def prose(page: Path) -> str:
    text = "\n".join(cells(page)[0])
    for pattern in NOT_PROSE:
        text = pattern.sub(" ", text)
    return text


def significant_digits(number: str) -> int:
    return len(number.replace(".", "").lstrip("0"))


def prose_numbers(page: Path) -> set[tuple[str, str]]:
    """(kind, number) for the numbers typed in a page's prose that are worth comparing."""
    text = prose(page).replace("−", "-")
    code = "\n".join(cells(page)[1])
    literals = set(re.findall(r"\d+\.\d+|\d+", code))
    found = {("decimal", n) for n in DECIMAL.findall(text) if significant_digits(n) >= 2}
    found |= {("percent", n) for n in PERCENT.findall(text) if float(n) >= 10}
    return {(kind, n) for kind, n in found if n not in literals}


class _OutputTables(HTMLParser):
    """Text of the table cells inside executed cell outputs (not the prose's own
    tables)."""

    def __init__(self):
        super().__init__()
        self.stack, self.cells, self.current = [], [], None

    def handle_starttag(self, tag, attrs):
        if tag == "div":
            classes = dict(attrs).get("class") or ""
            self.stack.append("cell_output" in classes.split())
        elif tag in ("td", "th") and any(self.stack):
            self.current = []

    def handle_endtag(self, tag):
        if tag == "div" and self.stack:
            self.stack.pop()
        elif tag in ("td", "th") and self.current is not None:
            self.cells.append("".join(self.current))
            self.current = None

    def handle_data(self, data):
        if self.current is not None:
            self.current.append(data)


def table_numbers(html: str) -> list[str]:
    parser = _OutputTables()
    parser.feed(html)
    return [
        n
        for cell in parser.cells
        for n in re.findall(r"\d+(?:\.\d+)?(?:e[-+]?\d+)?", cell)
    ]


def _rounds_to(value: Decimal, x: Decimal, exponent: int) -> bool:
    try:
        return value.quantize(Decimal(1).scaleb(exponent)) == x
    except ArithmeticError:
        return False


def copies(page_numbers: set[tuple[str, str]], table: list[str]) -> list[str]:
    """The prose numbers that equal a table entry rounded to the digits the prose
    shows."""
    values = []
    for t in table:
        try:
            values.append(Decimal(t))
        except ArithmeticError:
            continue
    found = []
    for kind, n in sorted(page_numbers):
        x = Decimal(n)
        exponent = x.as_tuple().exponent
        if kind == "percent":
            candidates = [v for v in values] + [v * 100 for v in values if v < 1]
        else:
            candidates = values
        if any(_rounds_to(v, x, exponent) for v in candidates):
            found.append(n + (" %" if kind == "percent" else ""))
    return found


def built_html(stem: str) -> str:
    override = os.environ.get("DGM_BOOK_HTML")
    if override:
        hits = sorted(Path(override).rglob(f"{stem}.html"))
        if not hits:
            pytest.skip(f"no {stem}.html under DGM_BOOK_HTML={override}")
        return hits[0].read_text()
    path = ROOT / "_build" / "html" / "book" / f"{stem}.html"
    if not path.exists():
        pytest.fail(
            "_build/html is missing: `make test` builds the book first (or run `make "
            "book`)"
        )
    return path.read_text()


def test_there_are_chapter_pages():
    assert len(CHAPTERS) >= 9


@pytest.mark.parametrize("page", CHAPTERS, ids=lambda p: p.stem)
def test_every_chapter_glues_its_numbers_and_asserts_its_comparisons(page):
    markdown, code = cells(page)
    used = set(GLUE_ROLE.findall("\n".join(markdown)))
    defined = set(GLUED.findall("\n".join(code)))
    assert used, f"{page.name}: its prose glues no number ({{glue:text}}`key`)"
    # an f-string key (glue(f"gap_{name}", ...)) matches any key with text in place of
    # {name}
    patterns = [
        re.compile(
            "".join(
                ".+" if part.startswith("{") else re.escape(part)
                for part in re.split(r"(\{[^}]*\})", key)
            )
            + "$"
        )
        for key in defined
    ]
    missing = sorted(
        k
        for k in {key.split(":")[0] for key in used}
        if not any(p.match(k) for p in patterns)
    )
    assert not missing, (
        f"{page.name}: the prose uses glue keys no code cell glues: {missing}"
    )
    asserts = sum(bool(re.search(r"^\s*assert\b", c, re.M)) for c in code)
    assert asserts, f"{page.name}: no code cell asserts the comparisons its prose draws"


@pytest.mark.parametrize("page", CHAPTERS, ids=lambda p: p.stem)
def test_prose_has_no_typed_copy_of_a_table_number(page):
    typed = copies(prose_numbers(page), table_numbers(built_html(page.stem)))
    assert not typed, (
        f"{page.name}: the prose types numbers that its executed tables print: {typed}. "
        "Glue them from the cell that computes them (myst_nb.glue + "
        "{glue:text}`key:.2f`)."
    )


def test_the_checker_catches_a_typed_copy(tmp_path):
    """Positive control: a rounded copy is flagged; settings and one-digit numbers are
    not compared."""
    html = (
        '<div class="cell_output docutils container"><table><tr><td>gap</td>'
        "<td>0.7412</td><td>80</td></tr></table></div><table><tr><td>0.33</td></tr></table>"
    )
    table = table_numbers(html)
    assert table == ["0.7412", "80"]
    assert copies(
        {("decimal", "0.74"), ("decimal", "0.33"), ("percent", "80")}, table
    ) == ["0.74", "80 %"]
    assert copies({("decimal", "0.75"), ("percent", "81")}, table) == []
    page = tmp_path / "00-demo.md"
    page.write_text(
        "The gap is 0.74 nats, the rate 0.02, the floor 0.5, and 81 % of it.\n\n"
        "```{code-cell} ipython3\nfit(lr=0.02)\n```\n"
    )
    assert prose_numbers(page) == {("decimal", "0.74"), ("percent", "81")}
