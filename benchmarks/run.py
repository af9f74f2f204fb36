"""Execution time of every chapter page and every solution notebook (budget: 60 s each on 2 CPU cores).

    .venv/bin/python benchmarks/run.py          # or: make bench

Prints a table and writes benchmarks/RESULTS.md with the date, machine and versions.
"""
import datetime
import os
import platform
import time
from pathlib import Path

import jupytext
import nbformat
import torch
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
BUDGET_S = 60


def execute(nb, cwd: Path) -> float:
    start = time.perf_counter()
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return time.perf_counter() - start


def main() -> None:
    rows = []
    for page in sorted((ROOT / "book").glob("[0-9][0-9]-*.md")):
        rows.append((f"book/{page.name}", execute(jupytext.read(page), page.parent)))
    for nb_path in sorted((ROOT / "solutions").glob("*/*.ipynb")):
        rows.append((str(nb_path.relative_to(ROOT)), execute(nbformat.read(nb_path, as_version=4), nb_path.parent)))
    lines = [
        "# Benchmarks",
        "",
        f"Measured {datetime.date.today()} on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU cores, Python {platform.python_version()}, torch {torch.__version__}.",
        "",
        "| notebook | seconds | within 60 s |",
        "|---|---|---|",
    ] + [f"| {name} | {seconds:.1f} | {'yes' if seconds <= BUDGET_S else 'NO'} |" for name, seconds in rows]
    text = "\n".join(lines) + "\n"
    (ROOT / "benchmarks" / "RESULTS.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
