# Every target creates .venv itself: a fresh checkout needs only `make demo` or `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint format clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# The CPU build first: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# Until the study exists: train the quick weight-sparse model (resuming if interrupted), then
# find its quote-closing circuit. The 5-minute model is weak, hence the 0.3 target; the
# leading '-' keeps the demo going if this machine's stdlib yields a model that misses it.
demo: $(STAMP)
	$(BIN)/sparsecircuits train --preset quick --out runs/demo --resume
	-$(BIN)/sparsecircuits prune runs/demo --task single_double_quote --target-loss 0.3 --out runs/demo/circuits/single_double_quote

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
