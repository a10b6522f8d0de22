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
# NPROC > 1: train and qat run under torchrun (DistributedDataParallel, one process per GPU or CPU share).
# TORCHRUN_ARGS: --standalone on one machine; several machines: see docs/training.md.
NPROC    ?= 1
TORCHRUN_ARGS ?= --standalone
LAUNCH    = $(if $(filter-out 1,$(NPROC)),$(PY) -m torch.distributed.run $(TORCHRUN_ARGS) --nproc-per-node $(NPROC) -m pipeline.cli,$(CLI))
BENCH_TRAIN_ARGS  ?=
BENCH_STREAM_ARGS ?=

.PHONY: test-cpus test-slow test-all coverage setup train qat export export-android export-ios parity bench bench-train bench-stream report bench-models zoo recovery fashion-mnist-data study test clean distclean

$(VENV_STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $@

setup: $(VENV_STAMP)

train: $(VENV_STAMP) $(if $(filter fashion-mnist,$(DATASET)),fashion-mnist-data)
	$(LAUNCH) train $(SETTINGS)

qat: train
	$(LAUNCH) qat $(SETTINGS)

export: qat
	$(CLI) export $(SETTINGS)

export-android: qat
	$(CLI) export --backends executorch,tflite $(SETTINGS)
	$(CLI) bundle android $(SETTINGS) $(BUNDLE_ARGS)

export-ios: qat
	$(CLI) export --backends coreml,executorch $(SETTINGS)
	$(CLI) bundle ios $(SETTINGS) $(BUNDLE_ARGS)

parity: $(VENV_STAMP)
	$(CLI) parity $(SETTINGS)

bench: $(VENV_STAMP)
	$(CLI) bench $(SETTINGS) $(if $(COMPARE),--compare $(COMPARE))

bench-train: $(VENV_STAMP)
	$(PY) -m benchmarks.distributed --out $(OUT) $(BENCH_TRAIN_ARGS)

bench-stream: $(VENV_STAMP)
	$(PY) -m benchmarks.streaming --out $(OUT) --data-root $(DATA_DIR)/bench-stream $(BENCH_STREAM_ARGS)

report: $(VENV_STAMP)
	$(CLI) report $(SETTINGS)

# The quantization study of the trained model (writes OUT/study/); study flags go in ARGS.
study: qat
	$(CLI) study $(SETTINGS)

# Models x schemes x runtimes, one run each, one table (OUT/models/models.md and .json).
MODELS  ?= convnet
SCHEMES ?= int8
bench-models: $(VENV_STAMP) fashion-mnist-data
	$(PY) -m benchmarks.models --models $(MODELS) --dataset $(DATASET) --schemes "$(SCHEMES)" \
		--args "--data-dir $(DATA_DIR) --epochs $(EPOCHS) $(ARGS)" --root $(OUT)/models --bench

# Conformance of torchvision's and timm's mobile networks in every runtime (benchmarks/zoo.py):
# one OUT per network under $(OUT)/zoo, the table in $(OUT)/zoo/zoo.md and benchmarks/results/zoo.md.
# ZOO_NETWORKS=timm:NAME,torchvision:NAME picks networks; finished networks are reused (ZOO_ARGS=--rerun).
ZOO_NETWORKS ?=
ZOO_ARGS ?=
zoo: $(VENV_STAMP)
	$(PY) -m benchmarks.zoo --root $(OUT)/zoo --results benchmarks/results $(if $(ZOO_NETWORKS),--networks $(ZOO_NETWORKS)) $(ZOO_ARGS)

# What quantization costs and what wins it back (benchmarks/recovery.py, issue 29): per model, one trained fp32 model,
# then PTQ, QAT, QAT+distill and QAT+distill+keep-float (RECOVERY_KEEP_FLOAT), each int8 file run in its runtime, and
# Core ML palettes pal4 / pal8 / auto (RECOVERY_NBITS_AUTO); every comparison paired on the same test images.
# One OUT per variant under $(OUT)/recovery/<model>_<dataset>/ (finished ones are reused; RECOVERY_OPTS=--rerun),
# tables in benchmarks/results/recovery_<model>_<dataset>.md and .json. ConvNet at its 28 px, mobilenet_v3_small at
# RECOVERY_SIZE px; full Fashion-MNIST unless ARGS limits it (e.g. ARGS="--limit-train 10000").
RECOVERY_DATASET ?= fashion-mnist
RECOVERY_SIZE ?= 64
RECOVERY_KEEP_FLOAT ?= auto:0.2
RECOVERY_NBITS_AUTO ?= auto:0.5
RECOVERY_OPTS ?=
RECOVERY = $(PY) -m benchmarks.recovery --dataset $(RECOVERY_DATASET) --root $(OUT)/recovery --results benchmarks/results \
	--keep-float $(RECOVERY_KEEP_FLOAT) --nbits-auto $(RECOVERY_NBITS_AUTO) $(RECOVERY_OPTS)
recovery: $(VENV_STAMP) $(if $(filter fashion-mnist,$(RECOVERY_DATASET)),fashion-mnist-data)
	rc=0; \
	$(RECOVERY) --model convnet --args "--data-dir $(DATA_DIR) --epochs $(EPOCHS) $(ARGS)" || rc=$$?; \
	$(RECOVERY) --model torchvision:mobilenet_v3_small \
		--args "--data-dir $(DATA_DIR) --image-size $(RECOVERY_SIZE) --epochs $(EPOCHS) $(ARGS)" || rc=$$?; \
	exit $$rc

# Full Fashion-MNIST, offline: Debian's dataset-fashion-mnist (read from /usr/share/datasets/fashion-mnist).
fashion-mnist-data:
	@if [ -d /usr/share/datasets/fashion-mnist ] || [ -d $(DATA_DIR)/FashionMNIST/raw ]; then :; \
	elif command -v apt-get >/dev/null; then \
		$$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y -q dataset-fashion-mnist >/dev/null; \
	else echo "fashion-mnist-data: no apt-get: put the four Fashion-MNIST IDX files in $(DATA_DIR)"; fi

include android_demo/android.mk
include ios_demo/ios.mk

# Two tiers (README "Tests"): `make test` is every test not marked slow, on TEST_WORKERS pytest-xdist workers
# (tests that share a fixture broader than one test stay on one worker: tests/conftest.py, --dist loadgroup);
# `make test-slow` the long end-to-end runs (marked slow), one at a time; `make test-all` both.
TEST_WORKERS ?= 2
FAST_TESTS  = -m "not slow" -n $(TEST_WORKERS) --dist loadgroup
SLOW_TESTS  = -m slow
test: $(VENV_STAMP) android-toolchain
	$(PY) -m pytest -q $(FAST_TESTS) --durations=25 tests

test-slow: $(VENV_STAMP) android-toolchain
	$(PY) -m pytest -q $(SLOW_TESTS) --durations=10 tests

test-all: test test-slow

# coverage.py line coverage of the packages ([tool.coverage] in pyproject.toml), per tier and for both together;
# xdist workers and the tests' subprocesses (CLI runs, torchrun ranks, make) are measured too (patch = subprocess).
COVERAGE_DIR := .coverage-data
COVERAGE      = $(PY) -m coverage
coverage: $(VENV_STAMP) android-toolchain
	rm -rf $(COVERAGE_DIR) && mkdir -p $(COVERAGE_DIR)/fast $(COVERAGE_DIR)/slow $(COVERAGE_DIR)/all
	COVERAGE_FILE=$(CURDIR)/$(COVERAGE_DIR)/fast/cov $(COVERAGE) run -m pytest -q $(FAST_TESTS) tests
	COVERAGE_FILE=$(CURDIR)/$(COVERAGE_DIR)/slow/cov $(COVERAGE) run -m pytest -q $(SLOW_TESTS) tests
	$(COVERAGE) combine -q --keep --data-file=$(COVERAGE_DIR)/fast/cov $(COVERAGE_DIR)/fast/cov.*
	$(COVERAGE) combine -q --keep --data-file=$(COVERAGE_DIR)/all/cov $(COVERAGE_DIR)/fast/cov.* $(COVERAGE_DIR)/slow/cov.*
	$(COVERAGE) report --data-file=$(COVERAGE_DIR)/all/cov > $(COVERAGE_DIR)/all.txt
	$(COVERAGE) report --data-file=$(COVERAGE_DIR)/fast/cov > $(COVERAGE_DIR)/fast.txt
	@echo "line coverage: make test $$($(COVERAGE) report --data-file=$(COVERAGE_DIR)/fast/cov --format=total)%," \
		"make test-all $$($(COVERAGE) report --data-file=$(COVERAGE_DIR)/all/cov --format=total)%" \
		"(per file: $(COVERAGE_DIR)/fast.txt, $(COVERAGE_DIR)/all.txt)"

# The verdicts another CPU could move (tests marked cpu_sensitive), once per forced ATen CPU capability:
# results must not depend on AVX2 vs AVX-512. ATen ignores a capability the CPU lacks (it falls back to its best).
CPU_CAPABILITIES ?= avx2 default
test-cpus: $(VENV_STAMP)
	@set -e; for cap in $(CPU_CAPABILITIES); do \
		echo "== ATEN_CPU_CAPABILITY=$$cap: tests marked cpu_sensitive"; \
		ATEN_CPU_CAPABILITY=$$cap $(PY) -m pytest -q -m cpu_sensitive tests; \
	done

clean:
	rm -rf $(OUT) .pytest_cache
	find android_demo/app/src/main/assets ios_demo/Resources -mindepth 1 ! -name .gitkeep -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) $(DATA_DIR) android_demo/build
