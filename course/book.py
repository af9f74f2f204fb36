"""Building the book: jupyter-book, with the execution cache reset when lib/ changes and
the pages that need executing run two at a time before it."""

import hashlib
import logging
import os
import shutil
import subprocess
from pathlib import Path

import yaml

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


def execute_pages(root: Path) -> int:
    """Execute the chapter pages that the cache lacks, in parallel (one process per CPU),
    and store them in the execution cache, where jupyter-book finds them.

    jupyter-book executes pages one after another, each on one core (the pages use one
    torch thread); on a 2-core machine that leaves a core idle for the whole cold build.
    A page here is read by myst-nb's own reader, so it is cached under the same key
    (its code and kernelspec) that the build looks up. A page that fails is left out of
    the cache: the build then executes it itself and reports the error as usual.
    Returns how many pages were executed.
    """
    from jupyter_cache import get_cache
    from jupyter_cache.executors import load_executor

    config = yaml.safe_load((root / "_config.yml").read_text())
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    files = [toc["root"]] + [
        chapter["file"] for part in toc["parts"] for chapter in part["chapters"]
    ]
    pages = [
        root / f"{file}.md"
        for file in files
        if (root / f"{file}.md").exists()
        and "```{code-cell}" in (root / f"{file}.md").read_text()
    ]
    cache = get_cache(str(root / "_build" / ".jupyter_cache"))
    records = [
        cache.add_nb_to_project(
            str(page), read_data={"name": "myst_nb_md", "type": "plugin"}
        )
        for page in pages
    ]
    todo = [r.pk for r in cache.list_unexecuted([str(p) for p in pages])]
    if not todo:
        return 0
    print(f"executing {len(todo)} of {len(records)} pages, {os.cpu_count()} at a time")
    logger = logging.getLogger("course.book")
    result = load_executor("local-parallel", cache, logger=logger).run_and_cache(
        filter_pks=todo,
        timeout=config.get("execute", {}).get("timeout", 120),
        allow_errors=False,
    )
    for uri in result.excepted + result.errored:
        print(f"{Path(uri).relative_to(root)} failed here; the build runs it again")
    return len(result.succeeded)


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
    # no progress bars in pages (the kernels started here and by jupyter-book)
    os.environ["DGM_PROGRESS"] = "0"
    execute_pages(root)
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
