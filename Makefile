# `make demo`: install into .venv and run the whole DAG on the offline digits dataset (CPU, minutes).
# `make test`: install if needed and run the test suite (what CI runs).
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
CORES ?= all

.PHONY: install demo test lint clean-results

$(VENV)/.installed: pyproject.toml envs/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install -e '.[test]' -c envs/constraints.txt
	touch $@

install: $(VENV)/.installed

demo: install
	snakemake --cores $(CORES) results/digits_linf.json
	@echo "The result is in results/digits_linf.json:"
	@python -c "import json; r = json.load(open('results/digits_linf.json')); print(f\"clean accuracy {r['clean_accuracy']:.1%}, AutoAttack robust accuracy {r['robust_accuracy']:.1%} on {r['n_examples']} test points\")"

test: install
	python -m pytest -ra

lint: install
	snakemake --lint
