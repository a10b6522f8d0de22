# Android targets, included by the top-level Makefile (`include android_demo/android.mk`).
# Uses PY, VENV_STAMP and OUT from it. Everything downloaded is cached in the
# git-ignored android_demo/build/toolchain/.
#
#   make android-toolchain   with $ANDROID_HOME set: that SDK's build-tools and newest android.jar;
#                            else apt tools (aapt2 aapt zipalign apksigner adb, JDK) if missing,
#                            android-23.jar + dx.jar from ../shared/android-sdk/*.deb (or
#                            apt-get download from Debian bullseye). Both: ExecuTorch classes.jar
#                            from npm react-native-executorch@0.9.3. Idempotent. Without apt-get
#                            and without an SDK (macOS) it says the Android checks will be
#                            SKIPPED, and why, and succeeds; the tests then skip with that reason.
#   make android-check       compile + package + sign + verify the app (no Gradle, no phone).
#   make bench-android       benchmark on a phone over adb; results in $(OUT)/device/android/.
#                            ADB=/path/to/adb SERIAL=<serial> ANDROID_ITERATIONS=200 ...

ANDROID_DIR        := android_demo
ANDROID_TOOLCHAIN  ?= $(ANDROID_DIR)/build/toolchain
ANDROID_SHARED_SDK ?= $(CURDIR)/../shared/android-sdk
ADB                ?= adb
SERIAL             ?=
ANDROID_WARMUP     ?= 10
ANDROID_ITERATIONS ?= 100
ANDROID_THREADS    ?= 4
ANDROID_REPEAT     ?= 1
BENCH_ANDROID_ARGS ?=

.PHONY: android-toolchain android-check bench-android

android-toolchain: $(VENV_STAMP)
	$(PY) $(ANDROID_DIR)/toolchain.py ensure --dir $(ANDROID_TOOLCHAIN) --shared-sdk $(ANDROID_SHARED_SDK)

android-check: android-toolchain
	$(PY) $(ANDROID_DIR)/check_build.py --toolchain $(ANDROID_TOOLCHAIN)

bench-android: $(VENV_STAMP)
	$(PY) $(ANDROID_DIR)/benchmark.py --adb $(ADB) --out $(OUT) $(if $(SERIAL),-s $(SERIAL)) \
		--warmup $(ANDROID_WARMUP) --iterations $(ANDROID_ITERATIONS) --threads $(ANDROID_THREADS) \
		--repeat $(ANDROID_REPEAT) $(BENCH_ANDROID_ARGS)
