# One environment (.venv, from requirements.lock), one CLI (mobile-pipeline), one output folder (OUT).
# Every target bootstraps the venv when it is missing. See README.md.

PYTHON   ?= python3
VENV     := .venv
PY       := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.installed
CLI      := $(VENV)/bin/mobile-pipeline

DATASET  ?= mnist
DATA_DIR ?= data
MODEL    ?= convnet
EPOCHS   ?= 3
OUT      ?= artifacts
ARGS     ?=
SETTINGS  = --dataset $(DATASET) --data-dir $(DATA_DIR) --model $(MODEL) --epochs $(EPOCHS) --out $(OUT) $(ARGS)

.PHONY: setup train qat export export-android export-ios parity bench report test clean distclean

$(VENV_STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $@

setup: $(VENV_STAMP)

train: $(VENV_STAMP)
	$(CLI) train $(SETTINGS)

qat: train
	$(CLI) qat $(SETTINGS)

export: qat
	$(CLI) export $(SETTINGS)

export-android: qat
	$(CLI) export --backends executorch,tflite $(SETTINGS)
	$(CLI) bundle android $(SETTINGS)

export-ios: qat
	$(CLI) export --backends coreml,executorch $(SETTINGS)
	$(CLI) bundle ios $(SETTINGS)

parity: $(VENV_STAMP)
	$(CLI) parity $(SETTINGS)

bench: $(VENV_STAMP)
	$(CLI) bench $(SETTINGS)

report: $(VENV_STAMP)
	$(CLI) report $(SETTINGS)

include android_demo/android.mk
include ios_demo/ios.mk

test: $(VENV_STAMP) android-toolchain
	$(PY) -m pytest -q tests

clean:
	rm -rf $(OUT) .pytest_cache
	find android_demo/app/src/main/assets ios_demo/Resources -mindepth 1 ! -name .gitkeep -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) $(DATA_DIR) android_demo/build
