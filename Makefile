# Two entry points, both from a fresh clone with only Python >= 3.10 and make:
#   make run    set up .venv, run notebooks 01-05 top to bottom on data/ -> outputs/
#   make test   set up .venv, run the whole test suite (library tests + pytest --nbval) on
#               TensorFlow and on JAX, and the series again on the GPU path (PCAM_MODE=gpu)
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
	PCAM_SMOKE=0 TF_CPP_MIN_LOG_LEVEL=3 $(BIN)/python notebooks/series.py

# Library and series on TensorFlow (Colab's default); the series again on the GPU path
# (pcam-gpu, bfloat16, augmentation in the model); then library and GPU-path series on JAX,
# which GPU hosts without TensorFlow run.
test: setup
	$(BIN)/python -m pytest --nbval
	PCAM_MODE=gpu $(BIN)/python -m pytest --nbval notebooks
	KERAS_BACKEND=jax $(BIN)/python -m pytest tests
	KERAS_BACKEND=jax PCAM_MODE=gpu $(BIN)/python -m pytest --nbval notebooks

# After editing [project.urls] Repository in pyproject.toml (a fork): set-up cells and badges.
sync: setup
	$(BIN)/python notebooks/series.py --sync

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
