# Two entry points, both from a fresh clone with only Python >= 3.10 and make:
#   make run    set up .venv, run notebooks 01-05 top to bottom on data/ -> outputs/
#   make test   set up .venv, run the whole test suite (library tests + pytest --nbval)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: setup run test lint sync clean-outputs

$(BIN)/pcam: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[notebooks,test]"
	touch $@

setup: $(BIN)/pcam

# Executes the series in place (outputs stored in the notebooks) and writes artefacts to outputs/.
run: setup
	PCAM_SMOKE=0 TF_CPP_MIN_LOG_LEVEL=3 $(BIN)/python -m pcamlib.run_series notebooks

test: setup
	$(BIN)/python -m pytest --nbval

# After editing [project.urls] Repository in pyproject.toml (a fork): set-up cells and badges.
sync: setup
	$(BIN)/python -m pcamlib.run_series --sync notebooks

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
