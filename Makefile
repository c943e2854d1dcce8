# Every target creates .venv itself: a fresh checkout needs only `make demo` or `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test docs bench lint format clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# The CPU build first: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,docs]'
	touch $(STAMP)

# The main job: the quick study on the embedded corpus (resumable), ending with the report;
# two one-thread jobs at a time: 9.4 min from scratch on a 2-core Intel Xeon with AMX
# (benchmarks/bench_study.py --jobs 2); the AbsTopK version took 16.2 on a 2-core AVX2 one.
demo: $(STAMP)
	$(BIN)/sparsecircuits study --preset quick --out runs/demo --resume --jobs 2

test: $(STAMP)
	$(BIN)/python -m pytest -q
	$(MAKE) --no-print-directory docs

# The documentation site (mkdocs.yml) into site/, offline; --strict fails on a broken link,
# a missing page or an unreadable docstring. NO_MKDOCS_2_WARNING: the theme's banner.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy src

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) runs site .pytest_cache
