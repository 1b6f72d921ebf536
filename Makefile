# The course's commands. Each target installs what it needs first (into .venv).
#   make lab     set up, then open JupyterLab on chapters/
#   make test    set up, then run the whole test suite (what CI runs)
#   make build   regenerate chapters/ and mechlab/reference/ from solutions/*.py
#   make grade FILE=submission.ipynb (or a folder, or a .zip of a class)
#   make bench   time the chapters, the grader and SAE training; results go to benchmarks/RESULTS.md

PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: setup lab test build check grade bench constraints clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (mechlab)" >/dev/null
	touch $@

lab: setup  # (--allow-root only where make runs as root: containers, VMs)
	$(VENV)/bin/jupyter lab chapters/ $(if $(filter 0,$(shell id -u)),--allow-root)

test: setup
	$(PY) -m pytest -n 2 --durations=15

build: setup
	$(PY) -m autograder build

check: setup
	$(PY) -m autograder build --check

grade: setup
	@test -n "$(FILE)" || (echo "usage: make grade FILE=submission.ipynb|folder|class.zip" >&2; exit 2)
	$(PY) -m autograder grade "$(FILE)"

bench: setup
	$(PY) benchmarks/run.py
	$(PY) benchmarks/grading_throughput.py
	$(PY) benchmarks/sae_throughput.py   # makes benchmarks/.venv-saelens for the SAELens side

constraints: setup
	{ sed -n '1,3p' constraints.txt; $(PY) -m pip freeze --exclude-editable | sed 's/+cpu//'; } > constraints.tmp
	mv constraints.tmp constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache benchmarks/.venv-saelens
