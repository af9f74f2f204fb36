# One command per task. Every target sets up .venv first if it is missing or stale.
#   make book        build the book into _build/html (chapter pages executed, cached; MathJax offline)
#   make test        the whole test suite (builds the book first; installs chromium for the browser tests)
#   make lab         JupyterLab on the exercise notebooks
#   make release     solutions/ -> notebooks/ (student versions, committed)
#   make autograde   grade new or changed submitted/<student>/<assignment>/
#                    (ASSIGNMENT=01-kl to limit, JOBS=2 in parallel, FORCE=1 to regrade all)
#   make feedback    feedback/<student>/<assignment>/*.html
#   make grades      grades.csv
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
COURSE := $(BIN)/python -m lib.course
JOBS   ?= 1

.PHONY: install book test lab release autograde feedback grades bench clean mathjax browser

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[course]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (dgm course)"
	touch $(STAMP)

book: $(STAMP) mathjax
	$(COURSE) book

test: book browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# MathJax for the offline book: `npm pack mathjax@3.2.2` from the npm registry, checked against
# its pinned sha512, unpacked into book/_static/mathjax/ (git-ignored). A no-op once it is there,
# or when _config.yml says `dgm_mathjax: cdn`. Needs Node.js/npm the first time only.
mathjax: $(STAMP)
	$(BIN)/python book/_ext/dgm_html.py fetch

# Headless Chromium for tests/test_browser.py: Debian's chromium + chromium-driver, installed only
# when missing, as root, with apt-get. Never fatal: without them the browser tests skip and say why.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "installing chromium and chromium-driver for tests/test_browser.py (apt-get, a minute or two)"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } \
	    >/dev/null 2>&1 || echo "warning: apt-get could not install chromium/chromium-driver: the browser tests will be skipped"; \
	else echo "note: chromium/chromedriver not found and no root apt-get: the browser tests will be skipped"; fi

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

release: $(STAMP)
	$(COURSE) release

autograde: $(STAMP)
	$(COURSE) autograde $(ASSIGNMENT) --jobs $(JOBS) $(if $(FORCE),--force)

feedback: $(STAMP)
	$(COURSE) feedback $(ASSIGNMENT)

grades: $(STAMP)
	$(COURSE) grades

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf _build
