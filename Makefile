# One command per task. Every target sets up .venv first if it is missing or stale.
#   make book        build the book into _build/html (chapter pages executed, cached; MathJax offline)
#   make test        the whole test suite (lint and the book first; installs chromium for the browser
#                    tests and PostgreSQL for the sharded-grading tests)
#   make lint        ruff: lint and format check of the code, notebooks included (pyproject.toml)
#   make lab         JupyterLab on the exercise notebooks
#   make release     solutions/ -> notebooks/ (student versions, committed)
#   make validate NB=notebooks/04-vae/04-vae.ipynb
#                    students: run a notebook as the grader will and say which visible checks pass
#   make autograde   grade new or changed submitted/<student>/<assignment>/
#                    (ASSIGNMENT=01-kl to limit, JOBS=2 in parallel, FORCE=1 to regrade all,
#                    SHARD=i/n for shard i of n (i from 0), DB_URL=postgresql://... for a shared gradebook)
#   make feedback    feedback/<student>/<assignment>/*.html
#   make grades      grades.csv
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
COURSE := $(BIN)/python -m course
JOBS   ?= 1

.PHONY: install lint book test lab release validate autograde feedback grades bench clean mathjax browser postgres

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[course]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (dgm course)"
	touch $(STAMP)

book: $(STAMP) mathjax
	$(COURSE) book

# The tests never touch a real gradebook: DB_URL is cleared (tests/test_shards.py starts its own server).
test: export DB_URL =
test: lint book browser postgres
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Lines of at most 90 characters, the width of a code cell in the book's column (the book's
# MyST pages, which ruff does not read, are checked by tests/test_style.py).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

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

# PostgreSQL for tests/test_shards.py, which starts a throwaway server of its own (as an unprivileged
# user, on a socket in a temporary folder): Debian's postgresql, installed only when missing, as root,
# with apt-get. Never fatal: without it the sharded-grading tests skip and say why.
postgres:
	@if command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "installing postgresql for tests/test_shards.py (apt-get, a minute or two)"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } \
	    >/dev/null 2>&1 || echo "warning: apt-get could not install postgresql: the sharded-grading tests will be skipped"; \
	else echo "note: PostgreSQL (initdb) not found and no root apt-get: the sharded-grading tests will be skipped"; fi

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

release: $(STAMP)
	$(COURSE) release

# One notebook, run in the grader's resource-limited kernel: which visible self-checks pass.
validate: $(STAMP)
	@if [ -z "$(NB)" ]; then echo "usage: make validate NB=notebooks/04-vae/04-vae.ipynb"; exit 2; fi
	$(COURSE) validate "$(NB)"

# Executed runs show no tqdm bars (lib.train.show_progress); the book build and the grader set it too.
bench: export DGM_PROGRESS = 0

# DB_URL (from the environment or the command line, passed on verbatim): the gradebook; default SQLite.
autograde grades: export DB_URL := $(value DB_URL)

autograde: $(STAMP)
	$(COURSE) autograde $(ASSIGNMENT) --jobs $(JOBS) $(if $(FORCE),--force) $(if $(SHARD),--shard $(SHARD))

feedback: $(STAMP)
	$(COURSE) feedback $(ASSIGNMENT)

grades: $(STAMP)
	$(COURSE) grades

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf _build
