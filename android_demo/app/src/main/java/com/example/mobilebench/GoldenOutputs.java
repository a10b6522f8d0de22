package com.example.mobilebench;

import java.util.LinkedHashMap;
import java.util.Map;

import org.json.JSONArray;
import org.json.JSONException;
import org.json.JSONObject;

/**
 * golden_outputs.json (written by `bundle` beside models.json): per model, the logits
 * the host runtime produced on every bundled test image, through the same
 * preprocessing this app uses.
 */
final class GoldenOutputs {

    static final String FILE = "golden_outputs.json";

    /** One model's host outputs. */
    static final class Entry {
        final String file;
        final String method;
        final double tolerance;
        final double outputStep;   // NaN for a float output
        final float[][] logits;

        Entry(JSONObject o, int count) throws JSONException {
            file = o.getString("file");
            method = o.optString("method", "");
            tolerance = o.getDouble("tolerance");
            outputStep = o.isNull("output_step") ? Double.NaN : o.getDouble("output_step");
            JSONArray rows = o.getJSONArray("logits");
            if (rows.length() != count) {
                throw new JSONException(file + ": " + rows.length() + " golden rows for " + count + " test images");
            }
            logits = new float[count][];
            for (int i = 0; i < count; i++) {
                JSONArray row = rows.getJSONArray(i);
                logits[i] = new float[row.length()];
                for (int k = 0; k < row.length(); k++) {
                    logits[i][k] = (float) row.getDouble(k);
                }
            }
        }
    }

    final String runId;
    final Map<String, Entry> entries;

    private GoldenOutputs(String runId, Map<String, Entry> entries) {
        this.runId = runId;
        this.entries = entries;
    }

    /** Parses golden_outputs.json; {@code count} is the test sample's image count, which it must match. */
    static GoldenOutputs parse(String json, int count) throws JSONException {
        JSONObject root = new JSONObject(json);
        int version = root.optInt("schema_version", -1);
        if (version != 1) {
            throw new JSONException(FILE + " schema_version " + version + ", this app reads 1");
        }
        if (root.getInt("count") != count) {
            throw new JSONException(FILE + " holds " + root.getInt("count") + " images, the test sample "
                    + count + ": bundle them together (`make export-android`)");
        }
        JSONArray models = root.getJSONArray("models");
        Map<String, Entry> entries = new LinkedHashMap<String, Entry>();
        for (int i = 0; i < models.length(); i++) {
            Entry e = new Entry(models.getJSONObject(i), count);
            entries.put(e.file, e);
        }
        return new GoldenOutputs(root.optString("run_id", ""), entries);
    }
}
