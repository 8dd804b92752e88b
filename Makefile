# immunomood: two commands for a fresh machine.
#   make demo   create .venv, install, run the end-to-end analysis on the embedded example
#   make test   create .venv, install with test extras, run the whole test suite
#
# torch: we pin the CPU build that this machine kind provides (torch==2.13.0) so that pip never
# pulls the multi-GB CUDA stack on a CPU machine. If torch is already importable in .venv (for
# example a CUDA build you installed yourself), it is left alone. Override with TORCH_SPEC=...
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.immunomood-installed
OUTDIR ?= demo_output
PYTEST_ARGS ?=

.PHONY: demo test test-newest install docs bench lint clean

$(PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; set PYTHON=/path/to/python3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	@if $(PY) -c "import torch" >/dev/null 2>&1; then \
		echo "torch already installed in $(VENV): $$($(PY) -c 'import torch;print(torch.__version__)')"; \
		$(PY) -m pip install -q -e ".[test,docs]"; \
	else \
		$(PY) -m pip install -q "$(TORCH_SPEC)" -e ".[test,docs]"; \
	fi
	@$(PY) -c "import torch, immunomood; print('installed immunomood', immunomood.__version__, 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/immunomood demo --outdir $(OUTDIR)

# The whole suite, in two steps: the fast tests, then the slow statistical simulations (marked `slow`).
test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile -m "not slow" $(PYTEST_ARGS)
	$(PY) -m pytest -n 2 --dist loadfile -m slow $(PYTEST_ARGS)

# The same fast suite on the newest release of every dependency (torch held at TORCH_SPEC, so no
# CUDA stack is pulled on a CPU machine): catches the next upstream break early. Used by .ci/run.
NEWEST_VENV ?= .venv-newest
test-newest:
	rm -rf $(NEWEST_VENV)
	$(PYTHON) -m venv $(NEWEST_VENV)
	echo "$(TORCH_SPEC)" > $(NEWEST_VENV)/torch-constraint.txt
	$(NEWEST_VENV)/bin/python -m pip install -q "$(TORCH_SPEC)"
	PIP_CONSTRAINT=$(NEWEST_VENV)/torch-constraint.txt $(NEWEST_VENV)/bin/python -m pip install -q --upgrade \
		--upgrade-strategy eager -e ".[test]"
	$(NEWEST_VENV)/bin/python -m pip list --format=freeze > $(NEWEST_VENV)/versions.txt
	@echo "newest dependencies:"; grep -iE "^(anndata|scanpy|scvi-tools|scipy|numpy|pandas|pynndescent|pydeseq2|mudata|scikit-learn|numba|torch)==" $(NEWEST_VENV)/versions.txt
	$(NEWEST_VENV)/bin/python -m pytest -n 2 --dist loadfile -m "not slow" $(PYTEST_ARGS)

docs: $(STAMP)
	$(VENV)/bin/sphinx-build -W --keep-going -b html docs docs/_build/html

# ruff check + ruff format --check over the tree (rules in pyproject.toml); changes nothing
lint:
	.ci/lint

bench: $(STAMP)
	$(PY) benchmarks/run.py --suite quick

clean:
	rm -rf $(VENV) $(NEWEST_VENV) docs/_build $(OUTDIR)
