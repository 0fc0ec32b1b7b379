# Two entry points, as in the README: `make app` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup app test bench lint clean-cache

$(STAMP): requirements.txt requirements-nodeps.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -r requirements-nodeps.txt
	touch $(STAMP)

setup: $(STAMP)

app: setup
	bash scripts/system-deps.sh
	$(BIN)/streamlit run app.py --server.headless true

test: setup
	bash scripts/system-deps.sh
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python bench/run_all.py

lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

clean-cache:
	rm -rf cache/*/
