"""Reading nbgrader notebooks in tests: solution and hidden-test text, and making
submissions."""

import html
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
SOLUTION = re.compile(r"### BEGIN SOLUTION\n(.*?)### END SOLUTION", re.S)
HIDDEN = re.compile(r"### BEGIN HIDDEN TESTS\n(.*?)### END HIDDEN TESTS", re.S)


def course_command(root: Path, *args: str, popen: bool = False, **kwargs):
    """``python -m course ARGS`` in the course ``root`` (a temporary copy, say), with this
    repository's ``course/`` importable there, as ``make`` runs it from the repository
    root."""
    command = [sys.executable, "-m", "course", *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if popen:
        return subprocess.Popen(command, cwd=root, env=env, **kwargs)
    return subprocess.run(
        command, cwd=root, env=env, capture_output=True, text=True, **kwargs
    )


def assignments() -> list[str]:
    return sorted(
        p.name for p in (ROOT / "solutions").iterdir() if (p / f"{p.name}.ipynb").exists()
    )


def source(assignment: str, root: Path = ROOT):
    return nbformat.read(
        root / "solutions" / assignment / f"{assignment}.ipynb", as_version=4
    )


def release(assignment: str, root: Path = ROOT):
    return nbformat.read(
        root / "notebooks" / assignment / f"{assignment}.ipynb", as_version=4
    )


def secret_lines(assignment: str, *, solutions: bool = True) -> set[str]:
    """Distinctive lines of hidden tests (and of solution code): none may reach a student.

    Feedback shows a student their own code, so it is checked with ``solutions=False``.
    """
    lines, public = set(), set()
    for cell in source(assignment).cells:
        blocks = HIDDEN.findall(cell.source) + (
            SOLUTION.findall(cell.source) if solutions else []
        )
        for block in blocks:
            lines |= {
                line.strip() for line in block.splitlines() if len(line.strip()) >= 25
            }
        visible = HIDDEN.sub("", SOLUTION.sub("", cell.source))
        public |= {line.strip() for line in visible.splitlines()}
    # a line that also stands in the visible part (or inside a visible line) gives
    # nothing away
    return {line for line in lines if not any(line in seen for seen in public)}


def visible_text(page: str) -> str:
    """The text of an HTML page, tags stripped (syntax highlighting splits code into
    spans)."""
    return html.unescape(re.sub(r"<[^>]+>", "", page))


def solution_answers(assignment: str) -> dict[str, str]:
    """grade_id -> the solution cell's code without the markers, as a student would
    write it."""
    answers = {}
    for cell in source(assignment).cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution"):
            answers[meta["grade_id"]] = "\n".join(
                line
                for line in cell.source.splitlines()
                if "### BEGIN SOLUTION" not in line and "### END SOLUTION" not in line
            )
    return answers


def submission(assignment: str, answers: dict[str, str], root: Path = ROOT):
    """The released notebook with some solution cells filled in, as a student hands it
    in."""
    nb = release(assignment, root)
    for cell in nb.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id in answers:
            cell.source = answers[grade_id]
    return nb


def toc_files() -> list[str]:
    """The book's pages in _toc.yml order (paths without suffix), the root first."""
    import yaml

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [chapter["file"] for chapter in part["chapters"]]
    return files
