package com.example.mobilebench;

import java.util.LinkedHashMap;
import java.util.Map;

import org.json.JSONArray;
import org.json.JSONException;
import org.json.JSONObject;

/** One entry of models.json (written by `make export-android`): how to feed and read a model. */
final class ModelSpec {

    final String file;
    final String backend;
    final String quant;
    final TensorSpec input;
    final TensorSpec output;

    private ModelSpec(JSONObject o) throws JSONException {
        file = o.getString("file");
        backend = o.optString("backend", "");
        quant = o.optString("quant", "");
        input = new TensorSpec(o.getJSONObject("input"), true);
        output = new TensorSpec(o.getJSONObject("output"), false);
    }

    /** Parses models.json into file name -> spec. */
    static Map<String, ModelSpec> parseManifest(String json) throws JSONException {
        JSONObject root = new JSONObject(json);
        int version = root.optInt("schema_version", -1);
        if (version != 1) {
            throw new JSONException("models.json schema_version " + version + ", this app reads 1");
        }
        JSONArray models = root.getJSONArray("models");
        Map<String, ModelSpec> specs = new LinkedHashMap<String, ModelSpec>();
        for (int i = 0; i < models.length(); i++) {
            ModelSpec spec = new ModelSpec(models.getJSONObject(i));
            specs.put(spec.file, spec);
        }
        return specs;
    }

    /** "executorch" for .pte, "litert" for .tflite (models.json says "tflite"). */
    static String runtimeFor(String fileName) {
        return fileName.endsWith(".pte") ? "executorch" : "litert";
    }

    /** Shape, layout, dtype, normalization and quantization of one tensor. */
    static final class TensorSpec {
        final long[] shape;
        final String layout;
        final String dtype;
        final float[] mean;
        final float[] std;
        final float scale;       // NaN when models.json has null
        final int zeroPoint;

        TensorSpec(JSONObject o, boolean isInput) throws JSONException {
            JSONArray s = o.getJSONArray("shape");
            shape = new long[s.length()];
            for (int i = 0; i < shape.length; i++) {
                shape[i] = s.getLong(i);
            }
            layout = o.optString("layout", "NCHW");
            dtype = o.optString("dtype", "float32");
            mean = isInput ? floats(o.optJSONArray("mean")) : new float[0];
            std = isInput ? floats(o.optJSONArray("std")) : new float[0];
            scale = o.isNull("scale") ? Float.NaN : (float) o.getDouble("scale");
            zeroPoint = o.isNull("zero_point") ? 0 : o.getInt("zero_point");
            if (!"NCHW".equals(layout) && !"NHWC".equals(layout)) {
                throw new JSONException("layout must be NCHW or NHWC, got " + layout);
            }
            if (isInt8() && !hasQuantization()) {
                throw new JSONException("int8 tensor without scale");
            }
        }

        boolean isInt8() {
            return "int8".equals(dtype);
        }

        boolean hasQuantization() {
            return !Float.isNaN(scale) && scale > 0f;
        }

        int numElements() {
            long n = 1;
            for (long d : shape) {
                n *= d;
            }
            return (int) n;
        }

        /**
         * x = (pixel / 255 - mean[c]) / std[c] for image {@code index}, in this tensor's
         * layout (NCHW as stored in the sample, or transposed to NHWC).
         */
        float[] normalize(TestSample sample, int index) {
            int c = sample.channels;
            int h = sample.height;
            int w = sample.width;
            if (numElements() != c * h * w) {
                throw new IllegalArgumentException("input shape has " + numElements()
                        + " elements, the test sample image has " + (c * h * w));
            }
            boolean nhwc = "NHWC".equals(layout);
            float[] x = new float[c * h * w];
            for (int ch = 0; ch < c; ch++) {
                float m = pick(mean, ch, 0f);
                float sd = pick(std, ch, 1f);
                for (int y = 0; y < h; y++) {
                    for (int xx = 0; xx < w; xx++) {
                        float v = (sample.pixel(index, ch, y, xx) / 255f - m) / sd;
                        int dst = nhwc ? (y * w + xx) * c + ch : (ch * h + y) * w + xx;
                        x[dst] = v;
                    }
                }
            }
            return x;
        }

        private static float pick(float[] values, int channel, float fallback) {
            if (values.length == 0) {
                return fallback;
            }
            return values.length == 1 ? values[0] : values[channel];
        }

        private static float[] floats(JSONArray a) throws JSONException {
            if (a == null) {
                return new float[0];
            }
            float[] out = new float[a.length()];
            for (int i = 0; i < out.length; i++) {
                out[i] = (float) a.getDouble(i);
            }
            return out;
        }
    }
}
