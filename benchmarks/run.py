"""Execution time of every chapter page and every solution notebook (budget: 60 s each
on 2 CPU cores), with the CPU seconds its kernel used, and, with ``--book``, of a cold
and a warm `make book` (goals: 6 min and 30 s).

    .venv/bin/python benchmarks/run.py [--book]      # or: make bench

Prints a table and writes the section "Pages and notebooks" of benchmarks/RESULTS.md.
"""

import argparse
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.results import machine, table, write_section  # noqa: E402

BUDGET_S = 60


def _children_cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def execute(nb, cwd: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the kernel): the kernel is reaped when execute()
    shuts it down, so its CPU time is then among this process's children's."""
    start, cpu = time.perf_counter(), _children_cpu()
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    ).execute()
    return time.perf_counter() - start, _children_cpu() - cpu


def make_book() -> float:
    start = time.perf_counter()
    subprocess.run(["make", "book"], cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--book", action="store_true", help="also time a cold and a warm `make book`"
    )
    args = parser.parse_args(argv)
    rows = []
    pages = sorted((ROOT / "book").glob("[0-9][0-9]-*.md")) + [ROOT / "book/results.md"]
    for page in pages:
        rows.append((f"book/{page.name}", *execute(jupytext.read(page), page.parent)))
    for nb_path in sorted((ROOT / "solutions").glob("*/*.ipynb")):
        rows.append(
            (
                str(nb_path.relative_to(ROOT)),
                *execute(nbformat.read(nb_path, as_version=4), nb_path.parent),
            )
        )
    lines = [
        machine(),
        "",
        *table(
            ["notebook", "seconds", "CPU seconds (kernel)", f"within {BUDGET_S} s"],
            [[name, s, cpu, "yes" if s <= BUDGET_S else "NO"] for name, s, cpu in rows],
        ),
    ]
    if args.book:
        shutil.rmtree(ROOT / "_build", ignore_errors=True)
        cold = make_book()
        warm = make_book()
        lines += [
            "",
            *table(
                ["make book", "seconds", "goal"],
                [
                    ["cold (no _build)", cold, "≤ 360"],
                    ["warm (nothing changed)", warm, "≤ 30"],
                ],
            ),
        ]
    write_section("Pages and notebooks", lines)


if __name__ == "__main__":
    main()
