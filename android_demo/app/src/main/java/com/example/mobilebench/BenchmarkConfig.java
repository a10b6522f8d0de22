package com.example.mobilebench;

import android.content.Intent;

/**
 * Settings for one run. From intent extras (adb) or the on-screen fields:
 * <pre>
 * am start -W -S -n com.example.mobilebench/.BenchmarkActivity \
 *     --es model_dir /data/local/tmp/com.example.mobilebench/ \
 *     --es model_files a.pte,b.tflite \
 *     --ei warmup 10 --ei iterations 100 --ei threads 4 --es run_id abc --ez autorun true
 * </pre>
 */
final class BenchmarkConfig {

    static final String EXTRA_MODEL_DIR = "model_dir";
    static final String EXTRA_MODEL_FILES = "model_files";
    static final String EXTRA_WARMUP = "warmup";
    static final String EXTRA_ITERATIONS = "iterations";
    static final String EXTRA_THREADS = "threads";
    static final String EXTRA_RUN_ID = "run_id";
    static final String EXTRA_AUTORUN = "autorun";

    static final int DEFAULT_WARMUP = 10;
    static final int DEFAULT_ITERATIONS = 100;

    final String modelDir;   // null: use the models bundled in the APK's assets
    final String[] modelFiles; // null: every .pte/.tflite in the folder
    final int warmup;
    final int iterations;
    final int threads;
    final String runId;

    BenchmarkConfig(String modelDir, String modelFiles, int warmup, int iterations, int threads, String runId) {
        this.modelDir = modelDir == null || modelDir.trim().isEmpty() ? null : modelDir.trim();
        this.modelFiles = modelFiles == null || modelFiles.trim().isEmpty() ? null : modelFiles.trim().split("\\s*,\\s*");
        this.warmup = Math.max(0, warmup);
        this.iterations = Math.max(1, iterations);
        this.threads = Math.max(1, threads);
        this.runId = runId == null || runId.isEmpty() ? "ui-" + System.currentTimeMillis() : runId;
    }

    static int defaultThreads() {
        return Math.min(4, Math.max(1, Runtime.getRuntime().availableProcessors()));
    }

    static BenchmarkConfig fromIntent(Intent intent) {
        return new BenchmarkConfig(
                intent.getStringExtra(EXTRA_MODEL_DIR),
                intent.getStringExtra(EXTRA_MODEL_FILES),
                intent.getIntExtra(EXTRA_WARMUP, DEFAULT_WARMUP),
                intent.getIntExtra(EXTRA_ITERATIONS, DEFAULT_ITERATIONS),
                intent.getIntExtra(EXTRA_THREADS, defaultThreads()),
                intent.getStringExtra(EXTRA_RUN_ID));
    }

    /** True when adb asked for a run: --ez autorun true, or any benchmark extra present. */
    static boolean wantsAutorun(Intent intent) {
        if (intent == null) {
            return false;
        }
        if (intent.hasExtra(EXTRA_AUTORUN)) {
            return intent.getBooleanExtra(EXTRA_AUTORUN, false);
        }
        return intent.hasExtra(EXTRA_MODEL_DIR) || intent.hasExtra(EXTRA_ITERATIONS) || intent.hasExtra(EXTRA_RUN_ID);
    }
}
