"""benchmarks/RESULTS.md: one section per benchmark script, each stamped with when and
where it ran.

A script calls `write_section("Training throughput", lines)`; the section of that title is
replaced (or appended), and the other sections are kept, so the scripts can be rerun one
at a time.
"""

import datetime
import os
import platform
import re
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = (
    "# Benchmarks\n\nEach section is written by one script in `benchmarks/` (see its "
    "docstring), "
    "with the date, machine and versions it ran with. Timing goals live here, never in "
    "tests.\n"
)


def machine(device: torch.device | str = "cpu") -> str:
    """One line: date, CPU cores (or the GPU), Python, torch."""
    device = torch.device(device)
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.machine()} CPU, {os.cpu_count()} cores, torch threads: "
        f"{torch.get_num_threads()}"
    )
    return (
        f"Measured {datetime.datetime.now():%Y-%m-%d %H:%M} on {where}; "
        f"Python {platform.python_version()}, torch {torch.__version__}."
    )


def table(header: list[str], rows: list[list]) -> list[str]:
    """A Markdown table: floats with 3 significant digits."""

    def cell(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(cell(v) for v in row) + " |" for row in rows
    ]


def write_section(title: str, lines: list[str]) -> str:
    """Replace the section ``## title`` of RESULTS.md by ``lines`` (or append it); print
    and return it."""
    text = "\n".join([f"## {title}", "", *lines]).rstrip() + "\n"
    old = RESULTS.read_text() if RESULTS.exists() else HEADER
    if not old.startswith("# Benchmarks"):
        old = HEADER
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    new = (
        pattern.sub(lambda _: text + "\n", old)
        if pattern.search(old)
        else old.rstrip() + "\n\n" + text
    )
    RESULTS.write_text(new.rstrip() + "\n")
    print(text)
    return text
