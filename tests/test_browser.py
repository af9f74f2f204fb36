"""The built book as readers get it: static checks of the HTML, then every page of the
table of contents in headless Chromium.

The browser tests serve the build on http://127.0.0.1 and make every other host
unreachable (the book must work with no internet), load each page in a 1280-pixel-wide
window, and check: no JavaScript errors in the console, every equation typeset by
MathJax (no raw ``$$``/``\\begin`` left, no MathJax error boxes, no display equation
wider than the text column), every image loaded, exercise pages showing ``# YOUR CODE
HERE`` and no solution; and that search finds the chapters. A chapter is also opened
from ``file://``, as ``open _build/html/index.html`` does. Screenshots go to
``tests/artifacts/browser/`` (git-ignored): ``<page>.png`` is the first screen a reader
sees, ``<page>-full.png`` the whole page.

They read an existing build: ``DGM_BOOK_HTML`` (default ``_build/html``; ``make test``
builds it first). Chromium is Debian's ``chromium`` + ``chromium-driver`` (``make test``
installs them with apt-get when it runs as root on Debian;
``DGM_CHROMIUM``/``DGM_CHROMEDRIVER`` point elsewhere), driven by the ``selenium``
package; nothing is downloaded at run time. When the build, selenium, the browser or its
driver is missing, the tests are skipped and say which.
"""

import base64
import functools
import html
import json
import os
import re
import shutil
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

import nbformat
import pytest
import yaml

from tests.course_helpers import ROOT, assignments, secret_lines, toc_files, visible_text

HTML = Path(os.environ.get("DGM_BOOK_HTML", ROOT / "_build" / "html")).resolve()
ARTIFACTS = ROOT / "tests" / "artifacts" / "browser"
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
WIDTH, HEIGHT, MAX_FULL_HEIGHT = 1280, 900, 16000


PAGES = toc_files()
CHAPTERS = [p for p in PAGES if re.fullmatch(r"book/\d\d-[\w-]+", p)]
EXERCISES = [p for p in PAGES if re.fullmatch(r"notebooks/(\d\d-[\w-]+)/\1", p)]


@pytest.fixture(scope="module")
def built() -> Path:
    if not (HTML / "index.html").exists():
        pytest.skip(
            f"no book build in {HTML}: run `make book` (`make test` builds it first), "
            "or point DGM_BOOK_HTML at a build"
        )
    return HTML


def page_html(page: str) -> str:
    path = HTML / f"{page}.html"
    assert path.exists(), f"{page}.html was not built (is it in _toc.yml?)"
    return path.read_text()


# ----------------------------------------------------------------------------------------
# Static checks of the HTML (no browser)

WIDGET_JUNK = re.compile(
    r"HBox\(|VBox\(|IntProgress|FloatProgress|HTMLMath\(|Output\(\)|application/vnd\.jupyter\.widget"
    r"|\d+%\|[█▏▎▍▌▋▊▉ #]*\|"  # a tqdm bar: ' 40%|████      | 4/10'
    r"|\d+(?:\.\d+)?(?:it|s)/(?:s|it)\]"
)  # tqdm's rate: '12.3it/s]'


@pytest.mark.parametrize("page", CHAPTERS + EXERCISES)
def test_static_pages_show_no_widget_or_progress_bar_junk(built, page):
    raw = page_html(page)
    junk = sorted(
        {m.group(0) for m in WIDGET_JUNK.finditer(visible_text(raw))}
        | {
            m.group(0)
            for m in re.finditer(r"application/vnd\.jupyter\.widget[\w.+-]*", raw)
        }
    )
    assert not junk, (
        f"{page}.html shows interactive-only output {junk}: progress bars must be off "
        "in executed builds (DGM_PROGRESS=0, which `make book` sets; "
        "lib.train.show_progress) and no widget "
        "output saved"
    )


# What an executed blank exercise would show: IPython's tracebacks and the build
# machine's paths.
TRACEBACK = re.compile(
    r"Traceback \(most recent call last\)|Cell In\[\d+\], line \d+|File \"[^\"]+\", "
    r"line \d+"
    r"|\b\w+(?:Error|Exception)\s+Traceback\b|^-{20,}$",
    re.M,
)
MACHINE_PATH = re.compile(
    r"(?<![\w.~])(?:/(?:home|root|work|tmp|usr|opt|var|srv|private|Users|mnt)/[\w.@+-]+"
    r"|[A-Za-z]:\\[\w .-]+\\|site-packages|dist-packages|\.venv/)"
)


def traceback_or_path_junk(raw: str) -> list[str]:
    """Tracebacks and filesystem paths in a page's visible text, and error outputs in
    its HTML."""
    text = visible_text(raw)
    found = {
        m.group(0).strip()
        for pattern in (TRACEBACK, MACHINE_PATH)
        for m in pattern.finditer(text)
    }
    found |= {
        f'<div class="{m.group(1)}">'
        for m in re.finditer(r'class="([^"]*\b(?:traceback|output error)\b[^"]*)"', raw)
    }
    return sorted(found)


@pytest.mark.parametrize("page", EXERCISES)
def test_static_exercise_pages_show_no_traceback_or_machine_path(built, page):
    """An exercise page shows each task, the function to write and its visible
    self-check as released; executing the blank notebook would show NotImplementedError
    tracebacks with the build machine's paths (the book does not execute notebooks/:
    _config.yml execute.exclude_patterns)."""
    raw = page_html(page)
    junk = traceback_or_path_junk(raw)
    assert not junk, (
        f"{page}.html shows tracebacks or paths of the machine that built it: {junk[:6]}"
    )
    text = visible_text(raw)
    release = nbformat.read(ROOT / f"{page}.ipynb", as_version=4)
    tests = [
        c
        for c in release.cells
        if c.metadata.get("nbgrader", {}).get("grade") and c.cell_type == "code"
    ]
    solutions = [
        c for c in release.cells if c.metadata.get("nbgrader", {}).get("solution")
    ]
    # the function to write and the visible check, every task
    for cell in tests + solutions:
        first = next(line for line in cell.source.splitlines() if line.strip())
        assert first.strip() in text, (
            f"{page}.html lacks the cell {cell.metadata['nbgrader']['grade_id']} "
            f"({first!r})"
        )


def launch_settings():
    repo = CONFIG["repository"]["url"].rstrip("/")
    org, name = repo.split("github.com/")[1].split("/")[:2]
    return (
        repo,
        org,
        name,
        CONFIG["repository"].get("branch", "main"),
        CONFIG.get("launch_buttons", {}),
    )


def links(raw: str) -> set[str]:
    return {html.unescape(h) for h in re.findall(r'href="([^"]+)"', raw)}


@pytest.mark.parametrize("page", CHAPTERS + EXERCISES)
def test_launch_and_download_buttons(built, page):
    repo, org, name, branch, launch = launch_settings()
    raw = page_html(page)
    hrefs = links(raw)
    source = f"{page}.md" if page.startswith("book/") else f"{page}.ipynb"
    ui = "lab/tree" if launch.get("notebook_interface") == "jupyterlab" else "tree"
    assert repo in hrefs, f"{page}: no repository button linking {repo}"
    if launch.get("binderhub_url"):
        binder = f"{launch['binderhub_url'].rstrip('/')}/v2/gh/{org}/{name}/{branch}?urlpath={ui}/{source}"
        assert binder in hrefs, f"{page}: no Binder button {binder}"
    if launch.get("jupyterhub_url"):
        hub = [
            h
            for h in hrefs
            if h.startswith(
                launch["jupyterhub_url"].rstrip("/") + "/hub/user-redirect/git-pull?"
            )
        ]
        assert (
            hub
            and f"urlpath={ui}/{name}/{source}" in hub[0]
            and f"repo={quote(repo, safe='/')}" in hub[0]
        ), f"{page}: JupyterHub button {hub} does not pull {repo} and open {source}"
    colab = [
        h
        for h in hrefs
        if launch.get("colab_url") and h.startswith(launch["colab_url"].rstrip("/"))
    ]
    if source.endswith(".ipynb") and launch.get("colab_url"):
        assert colab == [
            f"{launch['colab_url'].rstrip('/')}/github/{org}/{name}/blob/{branch}/{source}"
        ], f"{page}: Colab button {colab}"
    else:
        assert not colab, (
            f"{page}: a Colab button on a text notebook ({source}) would open an error "
            f"page"
        )
    # the .ipynb download: the executed chapter, or the exercise notebook as released
    depth = page.count("/")
    ipynb = [
        h
        for h in hrefs
        if h.endswith(".ipynb") and h.startswith("../" * depth + "_sources/")
    ]
    assert ipynb, f"{page}: no .ipynb download button"
    notebook = nbformat.read(HTML / ipynb[0].removeprefix("../" * depth), as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    if page.startswith("book/"):
        assert any(c.outputs for c in code), (
            f"{page}: the downloadable .ipynb has no outputs"
        )
    else:
        assert any("# YOUR CODE HERE" in c.source for c in code), (
            f"{page}: the downloadable .ipynb is not the student version"
        )


def mathjax_script(page: str) -> str | None:
    found = re.search(
        r'<script[^>]*src="([^"]*tex-mml-chtml\.js)(?:\?[^"]*)?"', page_html(page)
    )
    return found and found.group(1)


def test_mathjax_is_served_as_configured(built):
    mode = CONFIG.get("sphinx", {}).get("config", {}).get("dgm_mathjax", "local")
    for page in CHAPTERS:
        src = mathjax_script(page)
        assert src, f"{page}: loads no MathJax"
        if mode == "local":
            assert not src.startswith(("http:", "https:", "//")), (
                f"{page} loads MathJax from {src}: the local copy was missing at build "
                f"time (`make mathjax`)"
            )
            assert (HTML / page).parent.joinpath(src).resolve().is_file(), (
                f"{page}: {src} is not in the build"
            )
        else:
            assert src.startswith("https://"), (
                f"{page}: dgm_mathjax is cdn but MathJax comes from {src}"
            )


# ----------------------------------------------------------------------------------------
# In the browser


def find_browser() -> tuple[str, str]:
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip(
            "the selenium package is not installed: `make install` installs it (pinned "
            "in constraints.txt)"
        )
    chromium = (
        os.environ.get("DGM_CHROMIUM")
        or shutil.which("chromium")
        or shutil.which("chromium-browser")
    )
    driver = os.environ.get("DGM_CHROMEDRIVER") or shutil.which("chromedriver")
    missing = [
        what
        for what, path in (("chromium", chromium), ("chromedriver", driver))
        if not path or not Path(path).is_file()
    ]
    if missing:
        pytest.skip(
            f"{' and '.join(missing)} not found: `apt-get install chromium "
            f"chromium-driver` "
            "(`make test` does it when run as root on Debian), or set "
            "DGM_CHROMIUM/DGM_CHROMEDRIVER"
        )
    return chromium, driver


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(built):
    httpd = ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(built))
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}/"
    httpd.shutdown()
    httpd.server_close()


def offline() -> bool:
    """Whether the book should read with no internet: MathJax is served from the build."""
    src = mathjax_script(CHAPTERS[0]) if CHAPTERS else None
    return not (src or "").startswith(("http:", "https:", "//"))


@pytest.fixture(scope="module")
def browser(built):
    chromium, driver_path = find_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        # no calls home: the only traffic is the book's
        "--disable-sync",
        "--disable-quic",
        f"--window-size={WIDTH},{HEIGHT}",
        "--hide-scrollbars",
        "--force-color-profile=srgb",
    ):
        options.add_argument(argument)
    if offline():  # every host but this machine is unreachable, as on a plane
        options.add_argument("--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(
        options=options, service=Service(executable_path=driver_path)
    )
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


# Waits for MathJax's first typesetting and for every image, then reports what a reader
# sees.
INSPECT = r"""
const done = arguments[arguments.length - 1];
const sleep = ms => new Promise(r => setTimeout(r, ms));
const within = (promise, ms) => Promise.race([promise, sleep(ms)]);
(async () => {
  let mathjax = "not on this page";
  if (document.querySelector('script[src*="tex-mml-chtml"]')) {
    const t0 = Date.now();
    while (!(window.MathJax && MathJax.startup && MathJax.startup.promise) && Date.now() - t0 < 20000) await sleep(50);
    if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
      try { await MathJax.startup.promise; mathjax = "typeset"; } catch (e) { mathjax = "failed: " + e; }
    } else mathjax = "did not load";
  }
  const images = Array.from(document.images);
  images.forEach(img => { img.loading = "eager"; });
  await within(Promise.all(images.map(img => img.complete ? null : new Promise(r => {
    img.addEventListener("load", r); img.addEventListener("error", r); }))), 15000);
  // the text a reader sees: visible, not code, not typeset math
  const skip = "pre, code, script, style, textarea, mjx-container, .highlight";
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const prose = [];
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const parent = node.parentElement;
    if (!parent || parent.closest(skip) || !parent.checkVisibility()) continue;
    prose.push(node.textContent);
  }
  const math = Array.from(document.querySelectorAll(".math"));
  // display equations wider than the column: cut off, readable only by scrolling sideways
  const too_wide = [];
  for (const c of document.querySelectorAll('mjx-container[display="true"]')) {
    if (c.scrollWidth <= c.clientWidth + 1) continue;
    const block = c.closest(".math") || c.parentElement;
    let tex = "";
    try { tex = MathJax.startup.document.getMathItemsWithin(block)[0].math; } catch (e) { tex = c.textContent; }
    too_wide.push(`${block.id || "(no label)"}: ${c.scrollWidth - c.clientWidth}px too wide: ${tex.trim().replace(/\s+/g, " ").slice(0, 90)}`);
  }
  // code cells a reader must scroll sideways to read at this width
  const code_too_wide = [];
  const cells = Array.from(document.querySelectorAll("div.cell"));
  for (const pre of document.querySelectorAll("div.cell div.cell_input pre")) {
    if (pre.scrollWidth <= pre.clientWidth + 1) continue;
    const longest = pre.textContent.split("\n").reduce((a, b) => (b.length > a.length ? b : a), "");
    code_too_wide.push(`cell ${cells.indexOf(pre.closest("div.cell")) + 1}: ${pre.scrollWidth - pre.clientWidth}px ` +
                       `too wide (${longest.length} chars): ${longest.trim().slice(0, 80)}`);
  }
  done({
    mathjax,
    code_too_wide,
    equations: math.length,
    typeset: document.querySelectorAll("mjx-container").length,
    untypeset: math.filter(m => !m.querySelector("mjx-container")).map(m => m.textContent.trim().slice(0, 80)),
    mathjax_errors: Array.from(document.querySelectorAll("mjx-merror")).map(
      e => (e.getAttribute("data-mjx-error") || e.textContent).slice(0, 120)),
    too_wide,
    images: images.length,
    broken_images: images.filter(img => !img.complete || img.naturalWidth === 0).map(img => img.currentSrc || img.src),
    external: performance.getEntriesByType("resource").map(e => e.name)
      .filter(n => !n.startsWith(location.origin) && !n.startsWith("data:") && !n.startsWith("file:")),
    prose: prose.join(" "),
    text: document.body.innerText,
    height: Math.max(document.documentElement.scrollHeight, document.body.scrollHeight),
  });
})().catch(e => done({error: String(e)}));
"""

RAW_TEX = re.compile(
    r"\$\$|\\begin\{|\\end\{|\\\(|\\\)|\\\[|\\\]"
    r"|\\(?:frac|mathbb|mathcal|mathrm|operatorname|sum|prod|int|log|mid|left|right|sim)\b"
    r"|\$[^$\n]{0,80}[\\^_][^$\n]{0,80}\$"
)


def console_errors(driver) -> list[str]:
    """SEVERE console entries: uncaught exceptions, console.error, failed loads.

    /favicon.ico is left out: browsers ask the server root for it, which is the web
    host's business, not the book's (the book is often served from a sub-path).
    """
    return [
        entry["message"]
        for entry in driver.get_log("browser")
        if entry["level"] == "SEVERE" and "/favicon.ico" not in entry["message"]
    ]


def screenshots(driver, slug: str, height: int) -> None:
    """The first screen, then the whole page (the viewport stretched to the page's
    height)."""
    driver.save_screenshot(str(ARTIFACTS / f"{slug}.png"))
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {
            "width": WIDTH,
            "height": min(height, MAX_FULL_HEIGHT),
            "deviceScaleFactor": 1,
            "mobile": False,
        },
    )
    try:
        full = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png"})
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    (ARTIFACTS / f"{slug}-full.png").write_bytes(base64.b64decode(full["data"]))


def load(driver, url: str) -> dict:
    driver.get_log("browser")  # drop what earlier pages left
    driver.get(url)
    seen = driver.execute_async_script(INSPECT)
    assert "error" not in seen, f"{url}: inspecting the page failed: {seen['error']}"
    seen["console"] = console_errors(driver)
    return seen


def check_reads_well(page: str, seen: dict, *, expect_math: bool) -> None:
    assert not seen["console"], (
        f"{page}: JavaScript errors in the console: {seen['console']}"
    )
    assert not seen["broken_images"], (
        f"{page}: images that did not load: {seen['broken_images']}"
    )
    if expect_math or seen["equations"]:
        assert seen["mathjax"] == "typeset", (
            f"{page}: MathJax {seen['mathjax']} ({seen['equations']} equations)"
        )
        assert seen["equations"] and not seen["untypeset"], (
            f"{page}: equations not typeset: {seen['untypeset'][:5]}"
        )
        assert seen["typeset"] >= seen["equations"]
    assert not seen["mathjax_errors"], (
        f"{page}: MathJax could not typeset: {seen['mathjax_errors'][:5]}"
    )
    assert not seen["too_wide"], (
        f"{page}: display equations wider than the text column at {WIDTH}px, cut off "
        f"on screen "
        f"(break them over lines with \\begin{{aligned}} or \\begin{{gathered}}): "
        f"{seen['too_wide']}"
    )
    raw = sorted({m.group(0) for m in RAW_TEX.finditer(seen["prose"])})
    assert not raw, f"{page}: raw TeX in the text a reader sees: {raw[:10]}"


# what test_page_reads_well_in_a_browser saw, for the checks after it
SEEN: dict[str, dict] = {}


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_page_reads_well_in_a_browser(browser, server, page):
    seen = SEEN[page] = load(browser, server + page + ".html")
    slug = page.replace("/", "__")
    screenshots(browser, slug, seen["height"])
    (ARTIFACTS / f"{slug}.json").write_text(
        json.dumps(
            {k: v for k, v in seen.items() if k not in ("prose", "text")}, indent=1
        )
    )
    check_reads_well(page, seen, expect_math=page in CHAPTERS)
    if offline():
        assert not seen["external"], f"{page} needs the internet for {seen['external']}"
    if page in CHAPTERS:
        assert seen["images"] and seen["equations"], (
            f"{page}: a chapter without figures or equations?"
        )
    if page in EXERCISES:
        assignment = page.split("/")[1]
        assert "# YOUR CODE HERE" in seen["text"], (
            f"{page}: the exercise shows no `# YOUR CODE HERE`"
        )
        assert (
            "BEGIN SOLUTION" not in seen["text"]
            and "BEGIN HIDDEN TESTS" not in seen["text"]
        )
        junk = traceback_or_path_junk(html.escape(seen["text"]))
        assert not junk, (
            f"{page} shows tracebacks or paths of the machine that built it: {junk[:6]}"
        )
        if assignment in assignments():
            leaked = [line for line in secret_lines(assignment) if line in seen["text"]]
            assert not leaked, f"{page} shows solution or hidden-test code: {leaked[:3]}"


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_no_code_cell_scrolls_sideways(browser, server, page):
    """At 1280 px every line of a code cell fits in the text column: lines are at most 90
    characters (tests/test_style.py), and book/_static/dgm.css sizes the code font so that
    90 fit (the theme's size fits about 78). A reader never scrolls a cell sideways."""
    seen = SEEN.get(page) or load(browser, server + page + ".html")
    message = (
        f"{page}: {len(seen['code_too_wide'])} code cells wider than the column at "
        f"{WIDTH}px (break the lines): {seen['code_too_wide'][:8]}"
    )
    assert not seen["code_too_wide"], message


@pytest.mark.slow
@pytest.mark.parametrize(
    "query, chapter", [("divergence", "book/01-kl"), ("ELBO", "book/03-elbo")]
)
def test_search_finds_the_chapters(browser, server, query, chapter):
    if chapter not in PAGES:
        pytest.skip(f"{chapter} is not in _toc.yml")
    browser.get_log("browser")
    browser.get(f"{server}search.html?q={quote(query)}")
    deadline, results = time.time() + 30, []
    while time.time() < deadline:
        results = browser.execute_script(
            "return Array.from(document.querySelectorAll('#search-results ul.search li "
            "a'))"
            ".map(a => a.getAttribute('href'))"
        )
        summary = browser.execute_script(
            "const s = document.querySelector('#search-results .search-summary'); "
            "return s ? s.innerText : ''"
        )
        if summary:
            break
        time.sleep(0.2)
    browser.save_screenshot(str(ARTIFACTS / f"search-{query}.png"))
    assert not console_errors(browser), (
        f"search for {query!r}: JavaScript errors {console_errors(browser)}"
    )
    assert any(
        href.split("#")[0].split("?")[0] == f"{chapter}.html" for href in results
    ), f"search for {query!r} found {results}, not {chapter}.html"


@pytest.mark.slow
def test_a_chapter_reads_well_from_the_file_system(browser, built):
    """`open _build/html/index.html`: the book also works without a web server."""
    if not CHAPTERS:
        pytest.skip("no chapter in _toc.yml")
    page = CHAPTERS[0]
    seen = load(browser, (built / f"{page}.html").as_uri())
    browser.save_screenshot(str(ARTIFACTS / "file-url.png"))
    check_reads_well(f"file://…/{page}.html", seen, expect_math=True)
