package com.example.mobilebench;

import java.io.File;
import java.io.IOException;

import org.json.JSONArray;
import org.json.JSONException;
import org.json.JSONObject;

/**
 * The labelled images bundled by `make export-android`: test_sample.json names a raw
 * file of count*C*H*W uint8 pixels (NCHW, image after image) and lists the labels.
 */
final class TestSample {

    final int count;
    final int channels;
    final int height;
    final int width;
    final int[] labels;
    private final byte[] pixels;

    private TestSample(int count, int channels, int height, int width, byte[] pixels, int[] labels) {
        this.count = count;
        this.channels = channels;
        this.height = height;
        this.width = width;
        this.pixels = pixels;
        this.labels = labels;
    }

    static TestSample load(File json) throws IOException, JSONException {
        JSONObject o = new JSONObject(IoUtil.readText(json));
        if (!"uint8".equals(o.optString("dtype", "uint8"))) {
            throw new JSONException("test sample dtype must be uint8");
        }
        int count = o.getInt("count");
        JSONArray shape = o.getJSONArray("shape");
        if (shape.length() != 3) {
            throw new JSONException("test sample shape must be [C, H, W]");
        }
        int c = shape.getInt(0);
        int h = shape.getInt(1);
        int w = shape.getInt(2);
        JSONArray l = o.getJSONArray("labels");
        if (count < 1 || l.length() != count) {
            throw new JSONException("count " + count + " but " + l.length() + " labels");
        }
        int[] labels = new int[count];
        for (int i = 0; i < count; i++) {
            labels[i] = l.getInt(i);
        }
        File raw = new File(json.getParentFile(), o.getString("pixels"));
        byte[] pixels = IoUtil.readBytes(raw);
        long expected = (long) count * c * h * w;
        if (pixels.length != expected) {
            throw new IOException(raw.getName() + " has " + pixels.length + " bytes, expected " + expected);
        }
        return new TestSample(count, c, h, w, pixels, labels);
    }

    /** Pixel value 0..255 of image {@code i} at channel c, row y, column x. */
    int pixel(int i, int c, int y, int x) {
        return pixels[((i * channels + c) * height + y) * width + x] & 0xff;
    }
}
