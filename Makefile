# Two commands do all set-up on a fresh machine:
#   make demo   - the main job (creates .venv with pinned versions first)
#   make test   - the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo

.PHONY: demo test bench clean venv

venv: $(STAMP)

$(STAMP): constraints.txt setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) -m posesynth demo --out $(DEMO_DIR)

bench: $(STAMP)
	$(PY) benchmarks/bench_posemaps.py
	$(PY) benchmarks/bench_synthetic.py
	$(PY) benchmarks/bench_gan.py
	$(PY) benchmarks/bench_posenet.py
	$(PY) benchmarks/bench_mixing.py
	$(PY) benchmarks/bench_generate.py

clean:
	rm -rf $(VENV) runs .pytest_cache
