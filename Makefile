# Every target creates .venv on first use and installs what it needs, at the
# versions in requirements/constraints.txt (what the suite was last run on).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
CONSTRAINTS := requirements/constraints.txt

# torch comes from a local CPU wheel or PyTorch's CPU index, never as PyPI's
# CUDA build (tools/install_torch.py). On CI (CI set) it must be had.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
INSTALL_TORCH = tools/install_torch.py --index $(TORCH_INDEX)

.PHONY: help demo test test-min torch lint fuzz soak bench accuracy-8bit golden test-tensorflow docs dist constraints clean

help:
	@echo "make demo             RMSprop vs AdaGrad, SGD and Adam on real data; writes demo_output/ (the main job)"
	@echo "make test             run the test suite (doctests included)"
	@echo "make test-min         the test suite on the declared minimum jax, jaxlib, optax and numpy (.venv-min)"
	@echo "make torch            install torch's CPU build into .venv (make test tries this itself)"
	@echo "make lint             ruff (lint + format check) and mypy"
	@echo "make fuzz             the hypothesis properties and fuzz tests with many more examples"
	@echo "make soak             100,000-step soak runs (under a minute)"
	@echo "make bench            step time vs optax, torch, torch.compile and the bandwidth floor; fusion, flat parameters (about 26 min; --quick about 9)"
	@echo "make accuracy-8bit    8-bit state against float32 state and bitsandbytes: digits, DQN, a char-LM (4-8 min)"
	@echo "make golden           regenerate tests/golden_hlo/ (the compiled update, for the golden-HLO test)"
	@echo "make test-tensorflow  TensorFlow 1 parity (installs tensorflow-cpu into .venv-tf, 2.4 GB)"
	@echo "make docs             the documentation site, offline, warnings as errors: docs/_build/html/index.html"
	@echo "make dist             build the sdist and wheel into dist/ and check them with twine"
	@echo "make constraints      rewrite requirements/constraints.txt from what .venv holds now"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# One stamp per set of extras, redone when pyproject.toml or the constraints change.
$(VENV)/.installed-%: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(PIP) install --quiet -c $(CONSTRAINTS) -e ".[$(subst +,$(comma),$*)]"
	@touch $@

comma := ,

demo: $(VENV)/.installed-examples
	$(BIN)/python examples/demo.py

# Without a CPU build of torch (and off CI) the torch parity tests are skipped
# with a reason; everything else runs.
test: $(VENV)/.installed-test+examples
	$(BIN)/python $(INSTALL_TORCH) -c $(CONSTRAINTS) $(if $(CI),--required)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

torch: | $(BIN)/python
	$(BIN)/python $(INSTALL_TORCH) -c $(CONSTRAINTS) --required

# The declared minimums, exactly (tools/minimums.py reads them from
# pyproject.toml); flax, Keras, Orbax and the rest at the newest versions pip
# finds compatible with them. Only the `test` extra: `examples` asks for a flax
# that needs a newer jax, and the tests of what needs it skip, saying so.
.venv-min/.installed: pyproject.toml tools/minimums.py
	test -x .venv-min/bin/python || $(PYTHON) -m venv .venv-min
	.venv-min/bin/python -m pip install --quiet --upgrade pip
	.venv-min/bin/python tools/minimums.py > .venv-min/minimums.txt
	.venv-min/bin/python -m pip install --quiet -c .venv-min/minimums.txt -e ".[test]"
	@touch $@

test-min: .venv-min/.installed
	.venv-min/bin/python $(INSTALL_TORCH) -c .venv-min/minimums.txt $(if $(CI),--required)
	@echo "declared minimums: $$(tr '\n' ' ' < .venv-min/minimums.txt)"
	.venv-min/bin/python -c "import jax, jaxlib, optax, numpy; print('installed: jax', jax.__version__, 'jaxlib', jaxlib.__version__, 'optax', optax.__version__, 'numpy', numpy.__version__)"
	.venv-min/bin/python -m pytest -q -rs

lint: $(VENV)/.installed-lint
	$(BIN)/ruff check rmsprop_jax tests examples benchmarks tools conftest.py
	$(BIN)/ruff format --check rmsprop_jax tests examples benchmarks tools conftest.py
	$(BIN)/mypy

bench: $(VENV)/.installed-bench+examples
	$(BIN)/python $(INSTALL_TORCH) -c $(CONSTRAINTS) --required
	$(BIN)/python benchmarks/bench.py

# The bench extra holds bitsandbytes, which depends on torch: torch's CPU build
# goes in first, so that pip does not fetch PyPI's CUDA build to satisfy it.
$(VENV)/.installed-bench+examples: | $(VENV)/.installed-torch
$(VENV)/.installed-torch: $(CONSTRAINTS) | $(BIN)/python
	$(BIN)/python $(INSTALL_TORCH) -c $(CONSTRAINTS) --required
	@touch $@

# Writes benchmarks/results_eight_bit_accuracy.md and docs/eight_bit_accuracy.png.
accuracy-8bit: $(VENV)/.installed-bench+examples
	$(BIN)/python $(INSTALL_TORCH) -c $(CONSTRAINTS) --required
	$(BIN)/python benchmarks/eight_bit_accuracy.py

soak: $(VENV)/.installed-test+examples
	$(BIN)/python -m pytest -q -m soak tests/test_soak.py

fuzz: $(VENV)/.installed-test+examples
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -q tests/test_properties.py tests/test_differential.py

# After a deliberate change to the compiled step: commit the new files with it.
golden: $(VENV)/.installed-test+examples
	$(BIN)/python tests/golden_hlo.py

# TensorFlow (.venv-tf is 2.4 GB with its dependencies) gets a venv of its own, without the
# constraints file (tensorflow-cpu 2.21.0 needs h5py < 3.15).
.venv-tf/.installed: pyproject.toml
	test -x .venv-tf/bin/python || $(PYTHON) -m venv .venv-tf
	.venv-tf/bin/python -m pip install --quiet --upgrade pip
	.venv-tf/bin/python -m pip install --quiet -e ".[test,tensorflow]"
	@touch $@

test-tensorflow: .venv-tf/.installed
	.venv-tf/bin/python -m pytest -q -rs -m tensorflow tests/test_tensorflow.py tests/peers/test_tf_rmsprop.py

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

# Build tools in a venv of their own, so that .venv stays what the tests ran on.
.venv-dist/.installed: requirements/dist.txt
	test -x .venv-dist/bin/python || $(PYTHON) -m venv .venv-dist
	.venv-dist/bin/python -m pip install --quiet --upgrade pip
	.venv-dist/bin/python -m pip install --quiet -r requirements/dist.txt
	@touch $@

dist: .venv-dist/.installed
	rm -rf dist
	.venv-dist/bin/python -m build
	.venv-dist/bin/twine check --strict dist/*

# After deliberately moving .venv to other versions (see the file's header).
constraints: | $(BIN)/python
	{ grep '^#' $(CONSTRAINTS); $(PIP) freeze --exclude-editable | sed 's/+cpu$$//' | LC_ALL=C sort -f; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)

clean:
	rm -rf $(VENV) .venv-min .venv-tf .venv-dist .venv-docs docs/_build dist demo_output .pytest_cache .ruff_cache .mypy_cache
