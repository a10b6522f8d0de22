package com.example.mobilebench;

import android.content.Context;
import android.content.pm.PackageInfo;
import android.content.pm.PackageManager;
import android.util.Log;

import java.io.File;
import java.io.IOException;
import java.text.SimpleDateFormat;
import java.util.Date;
import java.util.List;
import java.util.Locale;
import java.util.TimeZone;

import org.json.JSONArray;
import org.json.JSONException;
import org.json.JSONObject;

/**
 * Builds benchmark_results.json (pipeline/schemas/device_results.schema.json, version 1)
 * and writes it atomically to the app's files dir, where
 * `adb shell run-as com.example.mobilebench cat files/benchmark_results.json` reads it.
 */
final class ResultsWriter {

    static final String FILE_NAME = "benchmark_results.json";
    static final String APP_NAME = "MobileBench";

    private ResultsWriter() {
    }

    static File resultsFile(Context context) {
        return new File(context.getFilesDir(), FILE_NAME);
    }

    static String now() {
        SimpleDateFormat f = new SimpleDateFormat("yyyy-MM-dd'T'HH:mm:ss'Z'", Locale.US);
        f.setTimeZone(TimeZone.getTimeZone("UTC"));
        return f.format(new Date());
    }

    static JSONObject document(Context context, BenchmarkConfig config, String startedAt,
                               List<ModelResult> results, List<String> errors) throws JSONException {
        JSONObject doc = new JSONObject();
        doc.put("schema_version", 1);
        doc.put("platform", "android");
        JSONObject app = new JSONObject();
        app.put("name", APP_NAME);
        app.put("version", appVersion(context));
        doc.put("app", app);
        JSONObject device = DeviceInfo.collect(context);
        List<String> unknown = DeviceInfo.defaultsLeft(device);
        if (!unknown.isEmpty()) {
            Log.w(BenchmarkActivity.TAG, "device fields left at defaults: " + unknown);
            errors.add("device fields left unknown/0: " + unknown);
        }
        doc.put("device", device);
        JSONObject settings = new JSONObject();
        settings.put("warmup", config.warmup);
        settings.put("iterations", config.iterations);
        settings.put("threads", config.threads);
        settings.put("model_dir", config.modelDir == null ? "assets" : config.modelDir);
        doc.put("settings", settings);
        doc.put("started_at", startedAt);
        doc.put("finished_at", now());
        doc.put("memory_kind", "pss");
        doc.put("run_id", config.runId);
        JSONArray errs = new JSONArray();
        for (String e : errors) {
            errs.put(e);
        }
        doc.put("errors", errs);
        JSONArray rows = new JSONArray();
        for (ModelResult r : results) {
            rows.put(r.toJson());
        }
        doc.put("results", rows);
        return doc;
    }

    static void write(File target, JSONObject doc) throws IOException, JSONException {
        IoUtil.writeAtomically(target, doc.toString(2) + "\n");
    }

    private static String appVersion(Context context) {
        try {
            PackageInfo info = context.getPackageManager().getPackageInfo(context.getPackageName(), 0);
            return info.versionName == null ? String.valueOf(info.versionCode) : info.versionName;
        } catch (PackageManager.NameNotFoundException e) {
            return "unknown";
        }
    }
}
