# One command per task. Every target sets up .venv first if it is missing or stale.
#   make book        build the book into _build/html (chapter pages executed, cached)
#   make test        the whole test suite (builds the book first)
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

.PHONY: install book test lab release autograde feedback grades bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[course]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (dgm course)"
	touch $(STAMP)

book: $(STAMP)
	$(COURSE) book

test: book
	$(BIN)/python -m pytest $(PYTEST_ARGS)

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
