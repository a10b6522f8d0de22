package com.example.mobilebench;

/**
 * One model's answers on the phone against the host runtime's on the same images
 * (golden_outputs.json): top-1 agreement and the largest |Δlogit|. Uses java.lang
 * only, so the tests run it on the host JVM with the vectors the Swift twin and
 * the Python report are tested with.
 */
final class Agreement {

    /** How many disagreeing image indices are kept for the results file. */
    static final int MAX_LISTED = 10;

    private int images;
    private int agreeing;
    private double maxAbsDiff;
    private int worstImage = -1;
    private final int[] disagreeing = new int[MAX_LISTED];
    private int listed;

    /** Adds image {@code image}: the device's logits and the host's for it. */
    void add(int image, float[] device, float[] host) {
        if (device.length != host.length) {
            throw new IllegalArgumentException("image " + image + ": the device gave " + device.length
                    + " logits, the host " + host.length);
        }
        images++;
        if (argmax(device) == argmax(host)) {
            agreeing++;
        } else if (listed < MAX_LISTED) {
            disagreeing[listed++] = image;
        }
        for (int k = 0; k < device.length; k++) {
            double d = Math.abs((double) device[k] - (double) host[k]);
            if (Double.isNaN(d)) {
                d = Double.POSITIVE_INFINITY;
            }
            if (d > maxAbsDiff || worstImage < 0) {
                maxAbsDiff = d;
                worstImage = image;
            }
        }
    }

    int images() {
        return images;
    }

    /** Share of images whose top-1 class is the host's; NaN before any image. */
    double top1Agreement() {
        return images == 0 ? Double.NaN : (double) agreeing / images;
    }

    /** Largest |device - host| over every logit of every image; infinity if the device gave NaN. */
    double maxAbsLogitDiff() {
        return maxAbsDiff;
    }

    /** The image holding the largest |Δlogit| (-1 before any image). */
    int worstImage() {
        return worstImage;
    }

    /** The first {@link #MAX_LISTED} images whose top-1 class differs from the host's. */
    int[] disagreeingImages() {
        int[] out = new int[listed];
        System.arraycopy(disagreeing, 0, out, 0, listed);
        return out;
    }

    /** Index of the largest value, the first one on a tie (as numpy's argmax). */
    static int argmax(float[] v) {
        int best = 0;
        for (int i = 1; i < v.length; i++) {
            if (v[i] > v[best]) {
                best = i;
            }
        }
        return best;
    }
}
