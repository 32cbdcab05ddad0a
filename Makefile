PY := .venv/bin/python
STAMP := .venv/.installed

.PHONY: demo test test-fast lint bench reproduce figs clean

$(STAMP): requirements.txt
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	touch $(STAMP)

# The demo starts over each time; `make demo ARGS="--load demo --resume -1 --epochs 20"` continues it.
ARGS ?= --reset

demo: $(STAMP)
	cd src && ../$(PY) main.py --template demo --dir_data ../dataset --save_dir ../experiment $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks Figs

# TEST_JOBS test processes (pytest-xdist), each module's tests in one of them so that its shared runs are made
# once; one thread each, so that they share the cores instead of fighting over them.
TEST_JOBS ?= 2
PYTEST := OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_JOBS) --dist loadscope

test: lint
	$(PYTEST) tests

# The tests not marked slow: no end-to-end training runs or multi-process runs.
test-fast: lint
	$(PYTEST) -m "not slow" tests

# OFFICIAL_SRC=/path/to/LCoAN/src and NLSN_SRC=/path/to/NLSN/src add the official code as same-run baselines.
bench: $(STAMP)
	$(PY) benchmarks/run_all.py $(if $(OFFICIAL_SRC),--official_src $(OFFICIAL_SRC)) $(if $(NLSN_SRC),--nlsn_src $(NLSN_SRC))

# Small LCoAN, EDSR and NLSN trained x2 on T91 + General100 at the same budget (about an hour on 2 cores);
# RARGS="--device cuda --steps 100000" for a GPU. Reads ../shared/data (or RARGS="--dir_data DIR").
RARGS ?=
reproduce: $(STAMP)
	$(PY) benchmarks/reproduce.py $(RARGS)

figs: $(STAMP)
	$(PY) Figs/draw_architecture.py
	$(PY) Figs/draw_efficiency.py
	$(PY) Figs/draw_layout.py

clean:
	rm -rf .venv .pytest_cache .ruff_cache
