# segbench: `make demo` runs the first question's BN vs no-BN comparison; `make test` runs the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PHANTOM := data/brain_phantom
DEMO_RUNS := runs/demo
DEMO_REPORT := reports/demo

.DEFAULT_GOAL := help
.PHONY: help install demo data test test-all lint bench reproduce clean panoptica-env

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  %-10s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv and install segbench with its test extras

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch and torchvision first, pinned: these versions install from a local package index where one is set up.
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

data: $(PHANTOM)/.complete ## write the brain-MRI phantom (BraTS layout) to data/brain_phantom

$(PHANTOM)/.complete: $(STAMP)
	$(BIN)/segbench make-data brain-phantom --out $(PHANTOM)
	touch $@

demo: $(STAMP) data ## no BN vs PyTorch BN vs BN with TF1's defaults, 3 paired seeds; curves, summary and the diagnosis
	@if [ -d $(DEMO_RUNS) ]; then rm -rf $(DEMO_RUNS).previous && mv $(DEMO_RUNS) $(DEMO_RUNS).previous && \
		echo "make demo: the previous demo runs are kept in $(DEMO_RUNS).previous (the one before that is replaced)"; fi
	$(BIN)/segbench train -m experiment=seed_bn_vs_nobn norm=none,batch,batch_tf1 seed=0,1,2 trainer.progress=false \
		trainer.threads=1 hydra/launcher=parallel hydra.launcher.n_jobs=2 hydra.sweep.dir=$(DEMO_RUNS)
	$(BIN)/segbench compare $(DEMO_RUNS) --out $(DEMO_REPORT)
	@echo "what BN with TF1's defaults did to the statistics (segbench diagnose, seed 0, test split):"
	@$(BIN)/segbench diagnose $$(ls -d $(DEMO_RUNS)/*norm=batch_tf1*seed=0) --split test | grep -E '^(cause|- )'
	@echo "report: $(DEMO_REPORT)/summary.md and $(DEMO_REPORT)/curves.png; TensorBoard: $(BIN)/tensorboard --logdir $(DEMO_RUNS)"

lint: $(STAMP) ## ruff: the formatter's check and the linter (line length 120, pyproject.toml)
	$(BIN)/ruff format --check segbench tests scripts hydra_plugins
	$(BIN)/ruff check segbench tests scripts hydra_plugins

test: $(STAMP) lint ## lint, then the fast tests (slow ones excluded), one worker per core (pytest-xdist; a file stays on one worker)
	$(BIN)/python -m pytest -m "not slow" -n auto --dist loadfile --durations=10

test-all: $(STAMP) ## every test, slow ones included
	$(BIN)/python -m pytest

panoptica-env: ## panoptica (the BraTS challenge's metrics) in .venv-panoptica, for tests/test_panoptica.py; its pins conflict with .venv's
	test -x .venv-panoptica/bin/python || $(PYTHON) -m venv .venv-panoptica
	.venv-panoptica/bin/python -m pip install -q 'panoptica>=2.1'

bench: $(STAMP) ## training images/s vs a bare loop, loader images/s, images/s per norm
	$(BIN)/segbench bench

clean: ## remove runs, reports, generated data and the preprocessing cache (keeps .venv)
	rm -rf runs reports outputs multirun $(PHANTOM)
	rm -rf "$${SEGBENCH_CACHE:-$${XDG_CACHE_HOME:-$$HOME/.cache}/segbench}"

reproduce: $(STAMP) data ## CPU versions of the studies, 5 paired seeds -> reports/REPORT.md (see docs/REPORT.md for its run time)
	test -f data/voc_phantom/.complete || ($(BIN)/segbench make-data voc-phantom --out data/voc_phantom && touch data/voc_phantom/.complete)
	test -f data/voc_phantom_300/.complete || ($(BIN)/segbench make-data voc-phantom --images 300 --out data/voc_phantom_300 && touch data/voc_phantom_300/.complete)
	$(BIN)/python scripts/reproduce.py --out reports
