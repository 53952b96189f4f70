# Robolake: `make demo` runs the main job end to end on the embedded default;
# `make test` sets up and runs the tests. Both create .venv on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# a fixed day: re-running the demo is a no-op (dataset versions are immutable)
DEMO_DATE ?= 2026-11-27
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export ROBOLAKE_LANDING ?= $(CURDIR)/landing
export ROBOLAKE_LAKE ?= $(CURDIR)/lake

.PHONY: install test demo ui mlflow lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# constraints.txt pins the tested set (torch==2.13.0: the CPU wheel, no CUDA download)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]' 2> $(VENV)/pip.log \
	  || { grep -v '^WARNING: Location' $(VENV)/pip.log; exit 1; }
	touch $(STAMP)

install: $(STAMP)

test: install
	@# two processes, whole files each (module fixtures stay shared), in collection order
	@# (tests/conftest.py starts the slowest files first); -n 0 runs serially
	$(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder --durations=15

# the instance config follows the shipped one when that changes (a newer local edit is kept)
$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	@mkdir -p $(DAGSTER_HOME) && cp dagster.yaml $@

demo: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/robolake simulate --out $(ROBOLAKE_LANDING)/fleet-$(DEMO_DATE) --robots 6 \
	  --date $(DEMO_DATE) --minutes 2 --seed 7 --faults truncated,no_identity,duplicate_messages
	$(BIN)/robolake ingest --through models

# started from DAGSTER_HOME: `dagster dev` warns about a dagster.yaml in its working folder
# that is not DAGSTER_HOME's; specs and training configs are named since the folder changed
UI_PORT ?= 3000
ui: install $(DAGSTER_HOME)/dagster.yaml
	cd $(DAGSTER_HOME) && ROBOLAKE_SPECS=$${ROBOLAKE_SPECS:-$(CURDIR)/specs} \
	  ROBOLAKE_TRAINING_CONFIGS=$${ROBOLAKE_TRAINING_CONFIGS:-$(CURDIR)/configs/training} \
	  $(CURDIR)/$(BIN)/dagster dev -w $(CURDIR)/workspace.yaml -h 127.0.0.1 -p $(UI_PORT)

mlflow: install  # the demo's runs and registered models (embedded SQLite store in the lake)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(ROBOLAKE_LAKE)/mlflow/mlflow.db \
	  -h 127.0.0.1 -p 5000

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python benchmarks/ingest_raw.py
	$(BIN)/python benchmarks/align.py
	$(BIN)/python benchmarks/camera_black.py
	$(BIN)/python benchmarks/loader.py
	$(BIN)/python benchmarks/train_step.py
	$(BIN)/python benchmarks/fuzz_formats.py
	$(BIN)/python benchmarks/spark_scale.py
	$(BIN)/python benchmarks/gateway.py
	$(BIN)/python benchmarks/restore_instance.py

clean:
	rm -rf $(VENV) lake landing .dagster_home
