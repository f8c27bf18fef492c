# ScaleRec — two commands do all set-up on a fresh machine:
#   make demo   the whole pipeline on embedded backends, with a report
#   make test   unit, contract, integration and end-to-end tests
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SERVICES := collector preprocessor trainer ranker evaluator
PYPROJECTS := libs/pyproject.toml $(foreach s,$(SERVICES),services/$(s)/pyproject.toml) cli/pyproject.toml requirements-dev.txt
# The stamp is remade only when a pyproject changes, so torch (a few GB) is installed once and reused.
STAMP := $(VENV)/.scalerec-installed

.PHONY: venv demo test test-unit test-fast lint clean

venv: $(STAMP)

$(STAMP): $(PYPROJECTS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip wheel
	$(BIN)/pip install -q -r requirements-dev.txt \
		-e 'libs[ml,serving,kafka,hbase,memcached,triton]' \
		$(foreach s,$(SERVICES),-e services/$(s)) -e cli
	@touch $@

demo: venv
	$(BIN)/scalerec demo

test: venv
	$(BIN)/pytest tests

test-fast: venv
	$(BIN)/pytest tests/unit tests/contract -x -q

lint: venv
	$(BIN)/ruff check libs services cli tests
	$(BIN)/ruff format --check libs services cli tests

clean:
	rm -rf var .pytest_cache
