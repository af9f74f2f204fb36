"""The book's HTML: MathJax served from the book itself (offline) or from a CDN, and
launch buttons that open what each page really is.

Loaded by ``_config.yml`` (``sphinx: local_extensions: {dgm_html: book/_ext}``).

MathJax. ``sphinx: config: dgm_mathjax: local`` (the default) serves MathJax 3 from
``book/_static/mathjax/`` -> ``_build/html/_static/mathjax/``, so the built book
typesets its equations with no internet: in a lab, on a plane, from ``file://``. That
folder is not in git (it carries its own ``.gitignore``); it is filled from the npm
registry by ``make mathjax`` (``make book`` does it first), i.e. by ::

    python book/_ext/dgm_html.py fetch     # npm pack mathjax@VERSION, check, unpack

If it is missing, the build warns, says that command, and loads MathJax from the CDN
instead; ``make book`` treats warnings as errors, so there the missing copy stops the
build. ``dgm_mathjax: cdn`` loads the same MathJax version from the jsDelivr CDN
(smaller build, needs the internet to read equations).

Launch buttons. sphinx-book-theme offers Colab on every notebook page, but Colab opens
only ``.ipynb`` files: the chapter pages are MyST text notebooks (``book/NN-topic.md``),
so their Colab button would lead to an error page. It is removed there; chapter pages
keep Binder, JupyterHub (both open the page in JupyterLab, where jupytext reads it as a
notebook) and the ``.ipynb`` download of the executed page. Exercise pages
(``notebooks/*/*.ipynb``) keep all three.

The ``.ipynb`` download of a chapter is ``_build/jupyter_execute/<page>.ipynb``. myst-nb
1.4 writes that file without outputs when a page is re-read but its outputs come from
the execution cache (its parser writes the notebook it read, not the one merged with the
cache), so after editing a chapter's prose the download lost every output. The outputs
are merged back from the cache here.

An empty bar across the top of every page, holding only a second search button (the
sidebar has one), is dropped: pydata-sphinx-theme 0.17 fills ``navbar_persistent`` with
a search button unless it is set (sphinx-book-theme issue #986); it is set to ``[]``
unless ``html_theme_options`` sets it.

Console errors, found by tests/test_browser.py, fixed here:

- Inline scripts registered after the builder started (sphinx-thebe's ``const
  THEBE_JS_URL ...``, sphinx-togglebutton's selector) were written twice into every
  notebook page with Sphinx 7.4, and the second ``const`` threw "Identifier
  'THEBE_JS_URL' has already been declared". Exact duplicate scripts are dropped from
  each page.
- pydata-sphinx-theme logged "Got invalid theme mode" on a reader's first visit because
  its ``default_mode`` (an ``html_context`` value) was empty; it is set to ``auto``
  (what the theme fell back to anyway: follow the reader's light/dark setting) unless
  ``html_context`` already sets it.
"""

import base64
import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

MATHJAX_VERSION = "3.2.2"
# npm's `dist.integrity` of mathjax@3.2.2 (`npm view mathjax@3.2.2 dist.integrity`)
MATHJAX_INTEGRITY = (
    "sha512-Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/"
    "O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw=="
)
# the component Sphinx loads by default: TeX and MathML in, HTML-CSS out
MATHJAX_ENTRY = "tex-mml-chtml.js"
MATHJAX_CDN = (
    f"https://cdn.jsdelivr.net/npm/mathjax@{MATHJAX_VERSION}/es5/{MATHJAX_ENTRY}"
)
# book/_static (an html_static_path)
STATIC = Path(__file__).resolve().parent.parent / "_static"
MATHJAX_DIR = STATIC / "mathjax"
FETCH = "`make mathjax` (or `python book/_ext/dgm_html.py fetch`)"
MODES = ("local", "cdn")


def local_version() -> str | None:
    """The version of the MathJax copy in book/_static/mathjax, or None when there is
    none."""
    stamp = MATHJAX_DIR / "VERSION"
    if not (MATHJAX_DIR / MATHJAX_ENTRY).is_file() or not stamp.is_file():
        return None
    return stamp.read_text().strip()


# ----------------------------------------------------------------------------------------
# Sphinx


def configure_mathjax(app, config) -> None:
    from sphinx.errors import ConfigError
    from sphinx.util import logging

    mode = config.dgm_mathjax
    if mode not in MODES:
        raise ConfigError(
            f"dgm_mathjax must be one of {MODES} (in _config.yml, sphinx: config:), "
            f"got {mode!r}"
        )
    if mode == "cdn":
        config.mathjax_path = MATHJAX_CDN
        return
    version = local_version()
    if version != MATHJAX_VERSION:
        found = f"version {version}" if version else "nothing"
        logging.getLogger(__name__).warning(
            f"dgm_mathjax: local MathJax {MATHJAX_VERSION} is not in {MATHJAX_DIR} "
            f"(found {found}); "
            f"this build loads it from the CDN and needs the internet to show equations. "
            f"Fetch it with {FETCH}, or set `dgm_mathjax: cdn` in _config.yml."
        )
        config.mathjax_path = MATHJAX_CDN
        return
    if str(STATIC) not in map(str, config.html_static_path):
        config.html_static_path = [*config.html_static_path, str(STATIC)]
    config.mathjax_path = f"mathjax/{MATHJAX_ENTRY}"  # relative to _static/


def theme_defaults(app, config) -> None:
    config.html_context = {"default_mode": "auto", **config.html_context}
    config.html_theme_options.setdefault("navbar_persistent", [])
    if str(STATIC) not in map(str, config.html_static_path):
        config.html_static_path = [*config.html_static_path, str(STATIC)]
    app.add_css_file(STYLE)


# book/_static/dgm.css: code cells sized so that 90 characters fit the column
STYLE = "dgm.css"


def drop_duplicate_scripts(app, pagename, templatename, context, doctree) -> None:
    """Keep the first of scripts that are the same file or the same inline body with the
    same attributes."""
    seen, unique = set(), []
    for script in context.get("script_files", []):
        attributes = getattr(script, "attributes", {}) or {}
        key = (
            getattr(script, "filename", script) or "",
            tuple(sorted((k, str(v)) for k, v in attributes.items())),
        )
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def restore_cached_outputs(app, doctree) -> None:
    """Rewrite jupyter_execute/<page>.ipynb with the cached outputs when myst-nb left
    them out."""
    config = getattr(app.env, "mystnb_config", None)
    if config is None or config.execution_mode != "cache" or not config.output_folder:
        return
    path = Path(config.output_folder) / f"{app.env.docname}.ipynb"
    if not path.is_file():
        return
    import nbformat
    from jupyter_cache import get_cache

    notebook = nbformat.read(path, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    if not code or any(cell.get("outputs") for cell in code):
        return
    try:
        _, merged = get_cache(config.execution_cache_path).merge_match_into_notebook(
            notebook
        )
    except KeyError:  # not in the cache: the page was not executed
        return
    nbformat.write(merged, path)


def drop_colab_from_text_notebooks(app, pagename, templatename, context, doctree) -> None:
    """Colab opens .ipynb only: no Colab button on pages whose source is a text
    notebook."""
    if context.get("page_source_suffix") == ".ipynb":
        return
    for group in context.get("header_buttons", []):
        if group.get("label") == "launch-buttons":
            group["buttons"] = [b for b in group["buttons"] if b.get("text") != "Colab"]


def setup(app):
    app.add_config_value("dgm_mathjax", "local", "html", types=[str])
    app.connect("config-inited", configure_mathjax)
    app.connect("config-inited", theme_defaults)
    app.connect("doctree-read", restore_cached_outputs)
    # after sphinx-book-theme's add_launch_buttons (501) and the scripts added per page
    # (500)
    app.connect("html-page-context", drop_colab_from_text_notebooks, priority=900)
    app.connect("html-page-context", drop_duplicate_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


# ----------------------------------------------------------------------------------------
# Fetching MathJax from the npm registry


def wanted(member: str) -> str | None:
    """Where a file of the npm package goes under book/_static/mathjax, or None to leave
    it out.

    Kept: es5/ (the loader's root) without the other combined components, and the licence.
    """
    if member == "package/LICENSE":
        return "LICENSE"
    if not member.startswith("package/es5/"):
        return None
    rel = member.removeprefix("package/es5/")
    if ".." in rel.split("/"):
        return None
    if "/" not in rel and rel.endswith(".js") and rel != MATHJAX_ENTRY:
        # tex-svg.js, mml-chtml.js, ...: other combined components, never loaded here
        return None
    return rel


def check_integrity(tarball: Path) -> None:
    algorithm, expected = MATHJAX_INTEGRITY.split("-", 1)
    digest = base64.b64encode(
        hashlib.new(algorithm, tarball.read_bytes()).digest()
    ).decode()
    if digest != expected:
        raise SystemExit(
            f"{tarball.name}: {algorithm} is {digest}, expected {expected}: not "
            f"unpacking it"
        )


def configured_mode(config_file: Path = Path("_config.yml")) -> str:
    """dgm_mathjax as _config.yml sets it (local when unset or unreadable)."""
    try:
        import yaml

        config = yaml.safe_load(config_file.read_text()) or {}
        return (config.get("sphinx") or {}).get("config", {}).get("dgm_mathjax", "local")
    except (ImportError, OSError, AttributeError):
        return "local"


def fetch(force: bool = False) -> int:
    if configured_mode() == "cdn" and not force:
        print(
            "dgm_mathjax is cdn in _config.yml: the book loads MathJax from the CDN, "
            "nothing to fetch"
        )
        return 0
    if local_version() == MATHJAX_VERSION and not force:
        print(f"MathJax {MATHJAX_VERSION} is already in {MATHJAX_DIR}")
        return 0
    npm = shutil.which("npm")
    if npm is None:
        sys.stderr.write(
            "npm is not installed, so MathJax cannot be fetched for the offline book.\n"
            "Install Node.js/npm (Debian: apt-get install npm; conda: nodejs), or set "
            "`dgm_mathjax: cdn`\n"
            "under `sphinx: config:` in _config.yml to load MathJax from the internet "
            "instead.\n"
        )
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            [npm, "pack", f"mathjax@{MATHJAX_VERSION}", "--silent"],
            cwd=tmp,
            capture_output=True,
            text=True,
        )
        tarballs = list(Path(tmp).glob("mathjax-*.tgz"))
        if done.returncode != 0 or len(tarballs) != 1:
            sys.stderr.write(done.stdout[-2000:] + done.stderr[-2000:])
            sys.stderr.write(
                f"`npm pack mathjax@{MATHJAX_VERSION}` failed (is the npm registry "
                f"reachable?). "
                "Or set `dgm_mathjax: cdn` in _config.yml.\n"
            )
            return 1
        check_integrity(tarballs[0])
        staging = Path(tmp) / "mathjax"
        with tarfile.open(tarballs[0]) as archive:
            for member in archive.getmembers():
                target = wanted(member.name)
                if member.isfile() and target:
                    (staging / target).parent.mkdir(parents=True, exist_ok=True)
                    (staging / target).write_bytes(archive.extractfile(member).read())
        (staging / "VERSION").write_text(MATHJAX_VERSION + "\n")
        (staging / ".gitignore").write_text(
            "# fetched by `make mathjax`, never committed\n*\n"
        )
        shutil.rmtree(MATHJAX_DIR, ignore_errors=True)
        MATHJAX_DIR.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(staging, MATHJAX_DIR)
    size = sum(p.stat().st_size for p in MATHJAX_DIR.rglob("*") if p.is_file())
    print(
        f"fetched MathJax {MATHJAX_VERSION} from the npm registry into {MATHJAX_DIR} "
        f"({size / 1e6:.1f} MB)"
    )
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["fetch"]:
        sys.exit(f"usage: python {Path(__file__).name} fetch [--force]\n\n{__doc__}")
    sys.exit(fetch(force="--force" in sys.argv))
