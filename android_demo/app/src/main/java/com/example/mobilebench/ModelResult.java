package com.example.mobilebench;

import org.json.JSONException;
import org.json.JSONObject;

/** One row of benchmark_results.json: the metrics of one model, or why it failed. */
final class ModelResult {

    final String model;
    final String runtime;
    final String quant;
    final String error;        // null when ok
    final JSONObject metrics;  // null when failed
    final JSONObject row;      // host_agreement and accelerator; null when failed

    private ModelResult(String model, String runtime, String quant, String error, JSONObject metrics,
                        JSONObject row) {
        this.model = model;
        this.runtime = runtime;
        this.quant = quant;
        this.error = error;
        this.metrics = metrics;
        this.row = row;
    }

    static ModelResult ok(String model, String runtime, String quant, JSONObject metrics, JSONObject row) {
        return new ModelResult(model, runtime, quant, null, metrics, row);
    }

    static ModelResult failed(String model, String runtime, String quant, String error) {
        String message = error == null || error.trim().isEmpty() ? "unknown error" : error.trim();
        return new ModelResult(model, runtime, quant, message, null, null);
    }

    boolean isOk() {
        return error == null;
    }

    double metric(String key) {
        return metrics == null ? Double.NaN : metrics.optDouble(key, Double.NaN);
    }

    JSONObject toJson() throws JSONException {
        JSONObject o = new JSONObject();
        o.put("model", model);
        o.put("runtime", runtime);
        o.put("compute_units", JSONObject.NULL);
        o.put("status", isOk() ? "ok" : "error");
        o.put("error", isOk() ? JSONObject.NULL : error);
        if (quant != null && !quant.isEmpty()) {
            o.put("quant", quant);
        }
        if (metrics != null) {
            o.put("metrics", metrics);
        }
        if (row != null) {
            o.put("host_agreement", row.opt("host_agreement"));
            o.put("accelerator", row.opt("accelerator"));
        }
        return o;
    }
}
