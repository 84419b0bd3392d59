# Two entry points, each doing all the set-up on a fresh machine:
#   make run    reproduce the study for the active config (snakemake --cores all)
#   make test   run the test suite (pytest-xdist: one worker per core, at most 4)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint setup clean-results

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# --unlock first: a killed snakemake leaves its lock behind; two writers of one training run are stopped by the
# run directory's own lock (ect.guard.RunLock). --rerun-incomplete: jobs it was running resume from their checkpoints.
# A run that did something ends with report.html and the summary (the Snakefile's onsuccess; `ect summary` reprints it).
run: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --unlock --quiet
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores all --rerun-incomplete

test: $(STAMP)
	$(BIN)/ruff check .
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest --numprocesses auto --maxprocesses 4

lint: $(STAMP)
	$(BIN)/ruff check .

clean-results:
	rm -rf results figures report.html
