# Every target creates .venv on first use and installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip

.PHONY: help demo test lint fuzz soak bench golden test-tensorflow docs clean

help:
	@echo "make demo             RMSprop vs AdaGrad, SGD and Adam on real data; writes demo_output/ (the main job)"
	@echo "make test             run the test suite (doctests included)"
	@echo "make lint             ruff (lint + format check) and mypy"
	@echo "make fuzz             the hypothesis properties and fuzz tests with many more examples"
	@echo "make soak             100,000-step soak runs (a few minutes)"
	@echo "make bench            step time vs optax, torch and the bandwidth floor (~15 min)"
	@echo "make golden           regenerate tests/golden_hlo/ (the compiled update, for the golden-HLO test)"
	@echo "make test-tensorflow  TensorFlow 1 parity (installs tensorflow-cpu, ~1.5 GB)"
	@echo "make docs             the documentation site, offline, warnings as errors: docs/_build/html/index.html"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# One stamp per set of extras, redone when pyproject.toml changes.
$(VENV)/.installed-%: pyproject.toml | $(BIN)/python
	$(PIP) install --quiet -e ".[$(subst +,$(comma),$*)]"
	@touch $@

comma := ,

demo: $(VENV)/.installed-examples
	$(BIN)/python examples/demo.py

test: $(VENV)/.installed-test+examples
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed-lint
	$(BIN)/ruff check rmsprop_jax tests examples benchmarks
	$(BIN)/ruff format --check rmsprop_jax tests examples benchmarks
	$(BIN)/mypy

bench: $(VENV)/.installed-bench+examples
	$(BIN)/python benchmarks/bench.py

soak: $(VENV)/.installed-test+examples
	$(BIN)/python -m pytest -q -m soak tests/test_soak.py

fuzz: $(VENV)/.installed-test+examples
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -q tests/test_properties.py tests/test_fuzz.py

# After a deliberate change to the compiled step: commit the new files with it.
golden: $(VENV)/.installed-test+examples
	$(BIN)/python tests/golden_hlo.py

# TensorFlow (~3 GB with its dependencies) gets a venv of its own.
.venv-tf/.installed: pyproject.toml
	test -x .venv-tf/bin/python || $(PYTHON) -m venv .venv-tf
	.venv-tf/bin/python -m pip install --quiet --upgrade pip
	.venv-tf/bin/python -m pip install --quiet -e ".[test,tensorflow]"
	@touch $@

test-tensorflow: .venv-tf/.installed
	.venv-tf/bin/python -m pytest -q -m tensorflow tests/test_tensorflow.py

# The documentation (Sphinx and its theme) gets a venv of its own too. Both
# builders share one doctree cache; the doctest builder runs the examples the
# pages show (the docstrings' examples also run in `make test`).
.venv-docs/.installed: pyproject.toml
	test -x .venv-docs/bin/python || $(PYTHON) -m venv .venv-docs
	.venv-docs/bin/python -m pip install --quiet --upgrade pip
	.venv-docs/bin/python -m pip install --quiet -e ".[docs]"
	@touch $@

SPHINX := .venv-docs/bin/sphinx-build -W --keep-going -d docs/_build/doctrees

docs: .venv-docs/.installed
	$(SPHINX) -b html docs docs/_build/html
	$(SPHINX) -b doctest docs docs/_build/doctest
	@echo "Open docs/_build/html/index.html"

clean:
	rm -rf $(VENV) .venv-tf .venv-docs docs/_build demo_output .pytest_cache .ruff_cache .mypy_cache
