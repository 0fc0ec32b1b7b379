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

# The dashboard listens on 127.0.0.1 (.streamlit/config.toml); `make app ADDRESS=0.0.0.0` exposes it
# to the network on purpose (anyone who reaches the port can run experiments: see the README).
ADDRESS ?=

app: setup
	bash scripts/system-deps.sh
	$(BIN)/streamlit run app.py --server.headless true $(if $(ADDRESS),--server.address $(ADDRESS))

test: setup
	bash scripts/system-deps.sh
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python bench/run_all.py

lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

# Everything the README says the cache holds, where it is ($PAI_CACHE_DIR or cache/): every artefact
# folder and the results store (results.sqlite with its -wal/-shm files), so Results lists no run
# whose artefacts are gone. A store elsewhere ($PAI_RESULTS_DB) is yours and is left alone.
clean-cache:
	@dir="$${PAI_CACHE_DIR:-cache}"; \
	if [ -e "$$dir" ] && [ ! -d "$$dir" ]; then echo "PAI_CACHE_DIR=$$dir is not a folder" >&2; exit 2; fi; \
	echo "emptying $$dir"; \
	rm -rf "$$dir"/*/ "$$dir"/results.sqlite "$$dir"/results.sqlite-wal "$$dir"/results.sqlite-shm
