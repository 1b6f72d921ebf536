# The course's commands. Each target installs what it needs first (into .venv).
#   make lab     set up, then open JupyterLab on chapters/
#   make test    set up, then run the whole test suite (what CI runs; installs bubblewrap and chromium where it can)
#   make build   regenerate chapters/ and mechlab/*/reference.py from solutions/*.py
#   make grade FILE=submission.ipynb (or a folder, or a .zip of a class)
#   make test-browser  run chapter 1, and every chapter's widgets and circuitsvis pictures, in JupyterLab in headless Chromium (installs chromium)
#   make test-colab    run every chapter's setup cell and the chapter in a Colab-like fresh runtime
#   make bench   time the chapters, the grader and SAE training; results go to benchmarks/RESULTS.md
#   make retrain retrain the zoo's models, an SAE and a transcoder from scratch and compare with the committed ones (about 20 minutes)

PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: setup lab test system-deps test-browser test-colab retrain build check grade bench constraints clean

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

test: setup system-deps
	$(PY) -m pytest -n 2 --dist load --maxschedchunk 1 --durations=25

# Debian's bubblewrap (the sandbox each submission's kernel runs in) and chromium with
# chromium-driver (the browser tests), installed with apt where make runs as root or with
# password-less sudo (CI, containers); elsewhere this says what to install and goes on:
# grading then warns that it runs without a sandbox, and the browser tests are skipped.
SYSTEM_PACKAGES = bubblewrap chromium chromium-driver
system-deps:
	@if [ -x /usr/bin/bwrap ] && [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO=sudo; \
	else echo "sudo apt-get install $(SYSTEM_PACKAGES) for the sandbox and the browser tests" >&2; exit 0; fi; \
	if command -v apt-get >/dev/null; then \
	  ($$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null) \
	  || echo "could not install $(SYSTEM_PACKAGES): no sandbox, and the browser tests will be skipped" >&2; \
	else echo "no apt-get: install bubblewrap, chromium and chromedriver" >&2; fi

# Only the browser tests (they need chromium; `make test` runs them too when it is there).
test-browser: setup system-deps
	@test -x /usr/bin/chromium && test -x /usr/bin/chromedriver || \
	  (echo "test-browser needs chromium and chromium-driver: sudo apt-get install chromium chromium-driver" >&2; exit 1)
	$(PY) -m pytest -m browser -n 2 --durations=0 tests/test_browser.py

# A fresh virtual environment like a Colab runtime (built once into build/colab-runtime/,
# about 1.5 minutes and 1.4 GB), then each chapter's setup cell and the chapter in a copy of it.
test-colab: setup
	MECHLAB_TEST_COLAB=1 $(PY) -m pytest -m colab -n 2 --durations=0 tests/test_colab.py

# The whole retrains that `make test` replaces by a replay of each training's first steps.
retrain: setup
	MECHLAB_TEST_RETRAIN=1 $(PY) -m pytest -m retrain -n 2 --durations=0

build: setup
	$(PY) -m autograder build

check: setup
	$(PY) -m autograder build --check

grade: setup system-deps
	@test -n "$(FILE)" || (echo "usage: make grade FILE=submission.ipynb|folder|class.zip" >&2; exit 2)
	$(PY) -m autograder grade "$(FILE)"

bench: setup
	$(PY) benchmarks/run.py
	$(PY) benchmarks/grading_throughput.py --workers 2
	$(PY) benchmarks/catch_rate.py --record
	$(PY) benchmarks/sandbox_cost.py
	$(PY) benchmarks/sae_throughput.py   # makes benchmarks/.venv-saelens for the SAELens side

constraints: setup
	{ sed -n '1,3p' constraints.txt; $(PY) -m pip freeze --exclude-editable | sed 's/+cpu//'; } > constraints.tmp
	mv constraints.tmp constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache benchmarks/.venv-saelens build/colab-runtime artifacts
