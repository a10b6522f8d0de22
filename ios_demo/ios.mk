# iOS demo targets. The top-level Makefile includes this file after it defines
# PY, VENV_STAMP and OUT:   include ios_demo/ios.mk
#
#   make ios-check                  Swift syntax (tree-sitter) + project.yml; runs anywhere
#   make ios-check-resources        also checks what `make export-ios` put in ios_demo/Resources
#   make bench-ios DESTINATION=...  xcodebuild test on an iPhone or a simulator (macOS + Xcode only)

IOS_DEMO_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
PY ?= .venv/bin/python
OUT ?= out
# An iPhone:    DESTINATION='platform=iOS,id=<UDID>'   (xcrun xctrace list devices)
# A simulator:  DESTINATION='platform=iOS Simulator,name=iPhone 16'   (results say is_simulator: true)
DESTINATION ?= platform=iOS Simulator,name=iPhone 16
BENCH_IOS_ARGS ?=

.PHONY: ios-check ios-check-resources bench-ios

ios-check: $(VENV_STAMP)
	$(PY) $(IOS_DEMO_DIR)/check_swift.py

ios-check-resources: $(VENV_STAMP)
	$(PY) $(IOS_DEMO_DIR)/check_swift.py --require-resources

bench-ios: $(VENV_STAMP)
	$(PY) $(IOS_DEMO_DIR)/benchmark.py --destination "$(DESTINATION)" --out "$(OUT)" $(BENCH_IOS_ARGS)
