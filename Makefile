# The two quick-start commands (see README):
#   make quickstart   set up .venv, then run the main job on the embedded default
#   make test         set up .venv, then run the test suite
#
# Set-up installs torch first, on its own: a resolver that meets "torch" as a
# dependency on a machine without it pulls a multi-GB CUDA build. Override
# TORCH for your platform, e.g. TORCH="torch==2.13.0 --index-url ..." .

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
EXTRAS ?= dev
PYTEST_ARGS ?= -n 2

STAMP := $(VENV)/.prefpool-installed

.PHONY: setup quickstart test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade "pip>=24"
	$(VENV)/bin/python -m pip install --quiet $(TORCH)
	$(VENV)/bin/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

quickstart: $(STAMP)
	$(VENV)/bin/prefpool quickstart

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info
