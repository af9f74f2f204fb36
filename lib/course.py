"""The builder's and instructor's commands, run from the course root as ``python -m lib.course``.

    book                  build the book into _build/html (pages executed; cache reset when lib/ changes)
    release               solutions/<a>/<a>.ipynb -> notebooks/<a>/<a>.ipynb (nbgrader generate_assignment)
    autograde [a] [--jobs N] [--force]
                          grade every new or changed submitted/<student>/<a>/ (lib.autograde);
                          print a summary table
    feedback [a]          feedback/<student>/<a>/<a>.html for every graded submission
    grades                grades.csv (nbgrader export)

The Makefile wraps each one (``make book``, ``make release`` ...). Grading is in `lib.autograde`:
each submission in its own nbgrader process and resource-limited kernel, so a broken or hostile
submission costs only its own score: it gets 0 and a message in the summary, and the others are
graded as usual.
"""
import argparse
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

from nbgrader.preprocessors import ClearHiddenTests

from lib.autograde import BIN, ENV, assignments, autograde, summary


# ----------------------------------------------------------------------------------------
# The book

def lib_fingerprint(root: Path) -> str:
    """A hash of every file under lib/ (names and contents) and of the pinned versions.

    The execution cache (jupyter-cache) keys pages on their own code only; it would happily
    serve outputs computed with an older lib. The book build wipes the cache when this changes.
    """
    digest = hashlib.sha256()
    files = sorted(p for p in (root / "lib").rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for path in files + [root / "constraints.txt"]:
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def invalidate_stale_cache(root: Path) -> bool:
    """Remove _build/.jupyter_cache when lib/ changed since it was filled; return whether it did."""
    cache = root / "_build" / ".jupyter_cache"
    stamp = root / "_build" / "lib-fingerprint.txt"
    fingerprint = lib_fingerprint(root)
    stale = stamp.exists() and stamp.read_text().strip() != fingerprint or not stamp.exists() and cache.exists()
    if stale:
        shutil.rmtree(cache, ignore_errors=True)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(fingerprint + "\n")
    return stale


def build_book(root: Path) -> int:
    """jupyter-book build. After a change to lib/, every page is re-read (``--all``) as well:
    with an empty cache alone, Sphinx would still keep the old output of every unchanged page."""
    stale = invalidate_stale_cache(root)
    if stale:
        print("lib/ changed since the last build: cleared the execution cache and re-executing every page")
    command = [str(BIN / "jupyter-book"), "build", str(root), "--builder", "html",
               "--warningiserror", "--keep-going", *(["--all"] if stale else [])]
    return subprocess.call(command, cwd=root, env=ENV)


# ----------------------------------------------------------------------------------------
# Releasing and grading with nbgrader

def nbgrader(root: Path, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "nbgrader"), *args], cwd=root, capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def release(root: Path) -> int:
    for a in assignments(root):
        done = nbgrader(root, "generate_assignment", a, "--force")
        if done.returncode != 0:
            sys.stderr.write(done.stdout + done.stderr)
            return done.returncode
        print(f"released {a} -> notebooks/{a}/{a}.ipynb")
    return 0


class RedactHiddenTests(ClearHiddenTests):
    """Feedback preprocessor: drop hidden-test code and the tracebacks that would quote it.

    nbgrader's feedback shows the autograded notebook as it ran, hidden tests included. Here the
    hidden region is cut out of each test cell, and an error output keeps only its last line
    (``AssertionError: <what was called, returned, expected, and a hint>``).
    """

    enforce_metadata = False

    def preprocess_cell(self, cell, resources, cell_index):
        if cell.cell_type == "code":
            self._remove_hidden_test_region(cell)
            for output in cell.get("outputs", []):
                if output.get("output_type") == "error":
                    output["traceback"] = [f"{output.get('ename', 'Error')}: {output.get('evalue', '')}"]
        return cell, resources


def feedback(root: Path, only: str | None = None) -> int:
    status = 0
    for a in assignments(root) if only is None else [only]:
        done = nbgrader(root, "generate_feedback", a, "--force")
        if done.returncode != 0:
            sys.stderr.write(done.stdout[-2000:] + done.stderr[-2000:])
            status = done.returncode
    return status


def main(argv: list[str]) -> int:
    root = Path.cwd()
    parser = argparse.ArgumentParser(prog="python -m lib.course", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["book", "release", "autograde", "feedback", "grades", "help"])
    parser.add_argument("assignment", nargs="?", default=None, help="limit autograde/feedback to one assignment")
    parser.add_argument("--jobs", type=int, default=1, help="autograde: submissions graded at once")
    parser.add_argument("--force", action="store_true", help="autograde: regrade unchanged submissions too")
    args = parser.parse_args(argv or ["help"])
    only = args.assignment or None
    if args.command == "book":
        return build_book(root)
    if args.command == "release":
        return release(root)
    if args.command == "autograde":
        print(summary(autograde(root, only, jobs=args.jobs, force=args.force)))
        return 0
    if args.command == "feedback":
        return feedback(root, only)
    if args.command == "grades":
        done = nbgrader(root, "export")
        sys.stderr.write(done.stderr[-2000:])
        if done.returncode == 0:
            print("wrote grades.csv")
        return done.returncode
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
