# `make test` and `make demo` create .venv (with the Python .ci/make_venv.sh finds), then run.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo lint venv clean

$(STAMP): pyproject.toml
	@bash .ci/make_venv.sh $(VENV)
	@touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) experiments/demo.py --out demo_out

lint: $(STAMP)
	$(VENV)/bin/ruff check glcgeo tests experiments
	$(VENV)/bin/ruff format --check glcgeo tests experiments
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) demo_out
