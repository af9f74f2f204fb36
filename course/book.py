"""Building the book: jupyter-book, with the execution cache reset when lib/ changes."""

import hashlib
import shutil
import subprocess
from pathlib import Path

from course.autograde import BIN, ENV


def lib_fingerprint(root: Path) -> str:
    """A hash of every file under lib/ (names and contents) and of the pinned versions.

    The execution cache (jupyter-cache) keys pages on their own code only; it would
    happily serve outputs computed with an older lib. The book build wipes the cache
    when this changes.
    """
    digest = hashlib.sha256()
    files = sorted(
        p
        for p in (root / "lib").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )
    for path in files + [root / "constraints.txt"]:
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def invalidate_stale_cache(root: Path) -> bool:
    """Remove _build/.jupyter_cache when lib/ changed since it was filled; return
    whether it did."""
    cache = root / "_build" / ".jupyter_cache"
    stamp = root / "_build" / "lib-fingerprint.txt"
    fingerprint = lib_fingerprint(root)
    stale = (
        stamp.exists()
        and stamp.read_text().strip() != fingerprint
        or not stamp.exists()
        and cache.exists()
    )
    if stale:
        shutil.rmtree(cache, ignore_errors=True)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(fingerprint + "\n")
    return stale


def build_book(root: Path) -> int:
    """jupyter-book build, with lib's progress bars off. After a change to lib/, every
    page is re-read (``--all``) as well: with an empty cache alone, Sphinx would still
    keep the old output of every unchanged page."""
    stale = invalidate_stale_cache(root)
    if stale:
        print(
            "lib/ changed since the last build: cleared the execution cache and "
            "re-executing every page"
        )
    command = [
        str(BIN / "jupyter-book"),
        "build",
        str(root),
        "--builder",
        "html",
        "--warningiserror",
        "--keep-going",
        *(["--all"] if stale else []),
    ]
    # no progress bars in pages
    return subprocess.call(command, cwd=root, env={**ENV, "DGM_PROGRESS": "0"})
