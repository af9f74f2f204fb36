"""Autograde throughput: a synthetic class graded serially and with parallel jobs.

    .venv/bin/python benchmarks/autograde.py [--students 30] [--jobs 2] [--assignments
    01-kl,02-vi]

In a temporary copy of the course, every student hands in every released assignment,
cycling through four kinds of submission: correct (the solutions), blank (the release),
wrong (one task answered wrongly) and broken (invalid JSON). The class is graded once
with ``--jobs 1`` and once with ``--jobs N`` (each from a fresh gradebook), then serially
with nbgrader's own Execute in place of ``course.grader.GradingExecute`` (the test cells
in the student's kernel, as before; what the new design adds is the difference); the
script prints seconds per notebook for each assignment and the speed-up, checks that
both runs give the same scores, and writes the section "Autograde throughput" of
benchmarks/RESULTS.md. It also executes every submitted notebook alone (nbclient, the
plain python3 kernel, no grading): the grading overhead per notebook is the serial
grading time minus that.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.results import machine, table, write_section  # noqa: E402
from tests.course_helpers import solution_answers, submission  # noqa: E402

from course.autograde import assignments, gradebook  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}  # course/ runs from the repository root

KINDS = ("correct", "blank", "wrong", "broken")
GRADER, STOCK = "course.grader.GradingExecute", "nbgrader.preprocessors.Execute"


def hand_in(root: Path, students: int, chosen: list[str]) -> dict[str, str]:
    kinds = {}
    for i in range(students):
        student, kind = f"student{i:02d}", KINDS[i % len(KINDS)]
        kinds[student] = kind
        for a in chosen:
            folder = root / "submitted" / student / a
            folder.mkdir(parents=True)
            path = folder / f"{a}.ipynb"
            if kind == "broken":
                path.write_text('{"cells": [')
                continue
            answers = solution_answers(a) if kind != "blank" else {}
            if kind == "wrong":
                first = next(iter(answers))
                answers[first] = answers[first].replace("return", "return 0 *", 1)
            nbformat.write(submission(a, answers, root), path)
    return kinds


def reset(root: Path) -> None:
    """A fresh gradebook: nothing graded yet."""
    for state in ("autograded", ".autograde", "gradebook.db"):
        target = root / state
        shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(
            missing_ok=True
        )
    subprocess.run(
        [sys.executable, "-m", "course", "release"],
        cwd=root,
        check=True,
        capture_output=True,
        env=ENV,
    )


def grade(root: Path, jobs: int, only: str | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "course",
            "autograde",
            *([only] if only else []),
            "--jobs",
            str(jobs),
        ],
        cwd=root,
        capture_output=True,
        text=True,
        env=ENV,
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(done.stdout + done.stderr)
    return seconds


def execute_alone(root: Path) -> float:
    """Seconds to run every submitted notebook (except the broken ones) in a plain
    kernel."""
    from nbclient import NotebookClient

    start = time.perf_counter()
    for path in sorted((root / "submitted").glob("*/*/*.ipynb")):
        try:
            nb = nbformat.read(path, as_version=4)
        except Exception:
            continue
        NotebookClient(
            nb,
            timeout=600,
            kernel_name="python3",
            allow_errors=True,
            resources={"metadata": {"path": str(path.parent)}},
        ).execute()
    return time.perf_counter() - start


def scores(root: Path) -> dict[tuple[str, str], float]:
    with gradebook(root) as gb:
        return {
            (s.student.id, s.assignment.name): s.score
            for a in gb.assignments
            for s in a.submissions
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=30)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument(
        "--assignments", default=None, help="comma-separated; default: all released"
    )
    args = parser.parse_args()
    chosen = args.assignments.split(",") if args.assignments else assignments(ROOT)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "course"
        root.mkdir()
        shutil.copytree(ROOT / "solutions", root / "solutions")
        shutil.copytree(ROOT / "notebooks", root / "notebooks")
        shutil.copy(ROOT / "nbgrader_config.py", root)
        kinds = hand_in(root, args.students, chosen)
        notebooks = sum(kind != "broken" for kind in kinds.values()) * len(chosen)
        reset(root)
        # serial, one assignment at a time
        per_assignment = {a: grade(root, 1, a) for a in chosen}
        serial, serial_scores = sum(per_assignment.values()), scores(root)
        reset(root)
        parallel = grade(root, args.jobs)
        assert scores(root) == serial_scores, "parallel grading must give the same scores"
        # the design before the grader's process ran the test cells: nbgrader's own
        # Execute, test cells in the same resource-limited kernel as the student's code
        config = root / "nbgrader_config.py"
        ours = config.read_text()
        config.write_text(ours.replace(f'"{GRADER}"', f'"{STOCK}"'))
        reset(root)
        in_kernel = grade(root, 1)
        config.write_text(ours)
        alone = execute_alone(root)
    executed = notebooks // len(chosen)
    rows = [[f"serial, {a}", t, t / executed] for a, t in per_assignment.items()] + [
        ["serial (jobs=1), all", serial, serial / notebooks],
        [f"parallel (jobs={args.jobs})", parallel, parallel / notebooks],
        [
            "serial, test cells in the kernel (nbgrader's Execute)",
            in_kernel,
            in_kernel / notebooks,
        ],
        ["executed alone (no grading)", alone, alone / notebooks],
    ]
    write_section(
        "Autograde throughput",
        [
            machine(),
            "",
            f"{args.students} students x {len(chosen)} assignments "
            f"({', '.join(chosen)}): {notebooks} notebooks "
            f"executed per run ({len(kinds) * len(chosen)} submissions; a quarter are "
            f"broken JSON, not executed).",
            "",
            *table(["run", "seconds", "seconds per executed notebook"], rows),
            "",
            f"Speed-up: {serial / parallel:.2f}x. Both runs gave identical scores. "
            f"Grading overhead: "
            f"{(serial - alone) / notebooks:.1f} s per notebook (serial grading minus "
            f"executing alone); the test cells in the grader's process add "
            f"{(serial - in_kernel) / notebooks:+.2f} s per notebook to running them in "
            f"the student's kernel.",
        ],
    )


if __name__ == "__main__":
    main()
