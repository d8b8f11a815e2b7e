# `make demo`: install into .venv and run the whole DAG on the offline digits dataset (CPU, minutes).
# `make test`: install if needed and run the test suite (what CI runs).
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
CORES ?= all

.PHONY: install demo test lint share pull grids code-deps report

$(VENV)/.installed: pyproject.toml envs/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install -e '.[test]' -c envs/constraints.txt
	touch $@

install: $(VENV)/.installed

demo: install
	snakemake --profile workflow/profiles/default --cores $(CORES) results/digits_linf.json --configfile workflow/demo.yaml
	@echo "The result is in results/digits_linf.json:"
	@python -c "import json; r = json.load(open('results/digits_linf.json')); print(f\"clean accuracy {r['clean_accuracy']:.1%}, AutoAttack robust accuracy {r['robust_accuracy']:.1%} on {r['n_examples']} test points\")"
	@python -c "import json; q = json.load(open('data/digits/generated/edm/quality.json')); print(f\"generated digits: the classifier agrees with their class on {q['class_agreement']['overall']:.1%}; ARC {q['arc']['value']:.3f}, classifier FD {q['classifier_fd']['value']:.1f} (data/digits/generated/edm/quality.json)\")"

test: install
	python -m pytest -ra --durations=25

lint: install
	snakemake --lint

# After editing grids or pipeline.grids in params.yaml: the cell list that dvc.yaml's grid stages iterate over.
grids: install
	python -m genrobust grid_cells --out workflow/grid_cells.yaml

# After changing what a stage imports: every dvc.yaml stage's src/ dependencies, from its real import closure
# (the Snakemake rules read the same lists from dvc.yaml).
code-deps: install
	python -m genrobust.code_deps --write dvc.yaml

# The summary table, figures and scaling fit of every result under results/ (Snakemake: results/summary.csv).
report: install
	python -m genrobust report --results results --summary-csv results/summary.csv --summary-md results/summary.md \
		--scaling results/scaling.json --plots results/plots

# Sharing through DVC (README, "Sharing and scaling"); needs an installed .venv. TARGETS: what Snakemake built.
TARGETS ?= results/digits_linf.json
DVC_STAGES ?= evaluate

# Record what Snakemake built in dvc.lock and upload it (run after Snakemake, never inside its jobs).
# remote_check first: one line naming the remote when it cannot be reached or written (DVC's own words do not).
# dvc commit re-links every file it caches, which gives them new mtimes: the touch puts Snakemake's view back.
share:
	python -m genrobust.remote_check --write
	dvc commit --force --with-deps $(DVC_STAGES)
	dvc push --with-deps $(DVC_STAGES)
	snakemake --touch --forceall --cores 1 $(TARGETS)

# On another machine: download, then mark the pulled files up to date for Snakemake (and record its metadata).
pull:
	python -m genrobust.remote_check
	dvc pull --with-deps $(DVC_STAGES)
	snakemake --touch --forceall --cores 1 $(TARGETS)
